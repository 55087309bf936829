//! Serving errors, each with a kind that says whose fault it is.

/// Whose fault an error is, and so which status a protocol answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something wrong (HTTP 400).
    InvalidArgument,
    /// No such route or resource (HTTP 404).
    NotFound,
    /// The request is larger than the configured limits (HTTP 413).
    PayloadTooLarge,
    /// A backend is down; retrying later may work (HTTP 503).
    Unavailable,
    /// The server is overloaded (HTTP 503 with Retry-After).
    Overloaded,
    /// A bug or corrupt data (HTTP 500).
    Internal,
}

impl ErrorKind {
    /// The stable code sent to clients.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Unavailable => "UNAVAILABLE",
            Self::Overloaded => "RESOURCE_EXHAUSTED",
            Self::Internal => "INTERNAL",
        }
    }
}

/// A serving error: a kind and a message that is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServingError {
    /// Whose fault it is.
    pub kind: ErrorKind,
    /// What went wrong, for the client.
    pub message: String,
}

impl ServingError {
    /// A client error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidArgument,
            message: message.into(),
        }
    }

    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl From<larder_registry::ResolveError> for ServingError {
    fn from(error: larder_registry::ResolveError) -> Self {
        Self::invalid(error.to_string())
    }
}

impl From<larder_online::OnlineStoreError> for ServingError {
    fn from(error: larder_online::OnlineStoreError) -> Self {
        use larder_online::OnlineStoreError;
        match &error {
            OnlineStoreError::Unavailable { .. } | OnlineStoreError::Locked { .. } => {
                Self::new(ErrorKind::Unavailable, error.to_string())
            }
            OnlineStoreError::Corrupt { .. } | OnlineStoreError::Internal { .. } => {
                Self::new(ErrorKind::Internal, error.to_string())
            }
        }
    }
}
