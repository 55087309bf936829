//! Errors of the data model.

/// An error raised while interpreting user-supplied names, types or values.
///
/// Every variant is the caller's fault (bad input), never an internal bug.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// A dtype string that is not one of the supported types.
    #[error(
        "unknown dtype '{0}' (expected bool, int32, int64, float32, float64, string, bytes, timestamp, list<T> or vector<N>)"
    )]
    UnknownType(String),
    /// A duration string that could not be parsed.
    #[error(
        "invalid duration '{0}' (expected a number followed by s, m, h, d or w, e.g. 30d or 1h30m)"
    )]
    InvalidDuration(String),
    /// A feature reference that is not `view:feature`.
    #[error("invalid feature reference '{0}' (expected 'feature_view:feature')")]
    InvalidFeatureRef(String),
    /// A value whose type does not match the declared type.
    #[error("expected a value of type {expected}, got {got}")]
    TypeMismatch {
        /// The declared type.
        expected: String,
        /// What was supplied instead.
        got: String,
    },
    /// A type that cannot be used as an entity join key.
    #[error("type {0} cannot be used as a join key (use int32, int64 or string)")]
    UnsupportedJoinKeyType(String),
    /// Encoded bytes that do not decode (a corrupt or foreign row).
    #[error("corrupt encoded value: {0}")]
    Corrupt(&'static str),
}
