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
    /// The client did not send its request in time (HTTP 408).
    RequestTimeout,
    /// The request conflicts with work in progress, e.g. a materialization of the same view
    /// (HTTP 409).
    Conflict,
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
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::Conflict => "CONFLICT",
            Self::Unavailable => "UNAVAILABLE",
            Self::Overloaded => "RESOURCE_EXHAUSTED",
            Self::Internal => "INTERNAL",
        }
    }
}

/// The class of `feast.errors` that Feast's own feature server would raise for an error, so
/// that Feast's Python client (which rebuilds the exception from the error body) raises the
/// same exception against Larder as against Feast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeastErrorClass {
    /// `FeastError`, the base class: every error without a more precise class.
    FeastError,
    /// `FeatureViewNotFoundException`.
    FeatureViewNotFound,
    /// `FeatureServiceNotFoundException`.
    FeatureServiceNotFound,
    /// `PushSourceNotFoundException`.
    PushSourceNotFound,
    /// `FeastObjectNotFoundException`: another named object is missing.
    ObjectNotFound,
}

impl FeastErrorClass {
    /// The class name in `feast.errors`.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::FeastError => "FeastError",
            Self::FeatureViewNotFound => "FeatureViewNotFoundException",
            Self::FeatureServiceNotFound => "FeatureServiceNotFoundException",
            Self::PushSourceNotFound => "PushSourceNotFoundException",
            Self::ObjectNotFound => "FeastObjectNotFoundException",
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
    /// The exception Feast's feature server would raise (HTTP error bodies name it).
    pub feast_class: FeastErrorClass,
}

impl ServingError {
    /// A client error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let feast_class = match kind {
            ErrorKind::NotFound => FeastErrorClass::ObjectNotFound,
            _ => FeastErrorClass::FeastError,
        };
        Self {
            kind,
            message: message.into(),
            feast_class,
        }
    }

    /// The same error, named as Feast's `feast_class`.
    pub fn with_feast_class(mut self, feast_class: FeastErrorClass) -> Self {
        self.feast_class = feast_class;
        self
    }

    /// The HTTP error body: Feast's error detail (what Feast's feature server sends and its
    /// client turns back into a `feast.errors` exception), a JSON *string* holding
    /// `{"module": "feast.errors", "class": ..., "message": ..., "code": ...}`, where `code`
    /// is Larder's stable error code.
    pub fn feast_error_detail(&self) -> String {
        let detail = serde_json::json!({
            "module": "feast.errors",
            "class": self.feast_class.class_name(),
            "message": self.message,
            "code": self.kind.code(),
        });
        serde_json::Value::String(detail.to_string()).to_string()
    }
}

impl From<larder_registry::ResolveError> for ServingError {
    fn from(error: larder_registry::ResolveError) -> Self {
        use larder_registry::ResolveError;
        let feast_class = match &error {
            ResolveError::UnknownFeatureView(_) => FeastErrorClass::FeatureViewNotFound,
            ResolveError::UnknownFeatureService(_) => FeastErrorClass::FeatureServiceNotFound,
            _ => FeastErrorClass::FeastError,
        };
        Self::invalid(error.to_string()).with_feast_class(feast_class)
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
