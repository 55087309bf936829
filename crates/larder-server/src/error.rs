//! Serving errors, each with a kind that says whose fault it is.

/// Whose fault an error is, and so which status a protocol answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something wrong (HTTP 400).
    InvalidArgument,
    /// No such route or resource (HTTP 404).
    NotFound,
    /// The request carries no valid API token (HTTP 401).
    Unauthenticated,
    /// The token lacks the scope or the views the request needs (HTTP 403).
    PermissionDenied,
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
    /// A batch run (materialization) that failed: a check, a source, a store; its message
    /// is for the caller (HTTP 500).
    RunFailed,
    /// A bug or corrupt data (HTTP 500); the client sees what failed and a request id, the
    /// details go to the server log.
    Internal,
}

impl ErrorKind {
    /// The stable code sent to clients.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::NotFound => "NOT_FOUND",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::Conflict => "CONFLICT",
            Self::Unavailable => "UNAVAILABLE",
            Self::Overloaded => "RESOURCE_EXHAUSTED",
            Self::RunFailed => "RUN_FAILED",
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
    /// What only the server log gets: backend messages, file paths (internal errors).
    pub detail: Option<String>,
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
            detail: None,
        }
    }

    /// An internal error: `message` says what failed in words a client may read; `detail`
    /// (a backend's message, a path) goes to the server log only.
    pub fn internal(message: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        let mut error = Self::new(ErrorKind::Internal, message);
        error.detail = Some(detail.to_string());
        error
    }

    /// The message a client sees. For an internal error it is what failed and a request id;
    /// the details are logged under that id, never sent (the one place that decides it, for
    /// every transport).
    pub fn public_message(&self) -> String {
        if self.kind != ErrorKind::Internal {
            return self.message.clone();
        }
        let request_id = next_request_id();
        tracing::error!(%request_id, message = %self.message, detail = ?self.detail, "internal error");
        format!(
            "{} (internal error, request id {request_id}: the server log has the details)",
            self.message
        )
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
            "message": self.public_message(),
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
                Self::internal("the online store failed", error)
            }
        }
    }
}

/// A request id for the log: this process's start time and a counter, in hex.
fn next_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
    });
    format!("{started:x}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}
