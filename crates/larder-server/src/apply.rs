//! `POST /api/v1/apply` (scope `admin`): apply the feature repo the server runs from, as it is
//! on disk now, with the same validation and refusals as `larder apply`. Body (optional):
//! `{"dry_run": true}` plans only. The server's registry snapshot follows within a second.

use serde::{Deserialize, Serialize};

use crate::error::ServingError;

/// What an apply over the API did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyAnswer {
    /// The plan, as `larder apply` prints it (warnings included).
    pub plan: String,
    /// Whether the registry was recorded.
    pub recorded: bool,
    /// Feature views in the registry afterwards.
    pub feature_views: usize,
}

/// Applies the repo for the server.
#[async_trait::async_trait]
pub trait Applier: Send + Sync + std::fmt::Debug {
    /// Validates, plans and (unless `dry_run`) records; an invalid repo or a refused change
    /// is [`crate::ErrorKind::InvalidArgument`] with apply's diagnostics.
    async fn apply(&self, dry_run: bool) -> Result<ApplyAnswer, ServingError>;
}

/// The body of `POST /api/v1/apply`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonApply {
    #[serde(default)]
    dry_run: bool,
}

/// Whether the body (empty: `{}`) asks for a dry run.
pub fn parse_apply(bytes: &[u8]) -> Result<bool, ServingError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let body: JsonApply = crate::json::parse_body(bytes)?;
    Ok(body.dry_run)
}
