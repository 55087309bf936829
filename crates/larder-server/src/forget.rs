//! Erasure over the API (`POST /forget`, gRPC `Forget`): forgets entities in every store
//! through [`larder_ingest::Eraser`], against the registry snapshot being served.

use crate::auth::Principal;
use std::sync::Arc;

use larder_core::FeatureView;
use larder_ingest::{Eraser, ErasureError, ErasureReport, VerifyReport};

use crate::error::{ErrorKind, ServingError};
use crate::json::ForgetRequest;
use crate::registry_handle::RegistryHandle;

/// What `/forget` answers.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum ForgetOutcome {
    /// The entities were erased.
    Erased(ErasureReport),
    /// What a verification found still present.
    Verified(VerifyReport),
}

/// Erasure against the served registry.
#[derive(Debug)]
pub struct ForgetService {
    registry: Arc<RegistryHandle>,
    eraser: Eraser,
}

impl ForgetService {
    /// A service erasing through `eraser` the views of `registry`.
    pub fn new(registry: Arc<RegistryHandle>, eraser: Eraser) -> Self {
        Self { registry, eraser }
    }

    /// Erases (or, with `verify`, counts) the request's entities from the views `principal`
    /// may touch (every view when access control is off); the audit record names the
    /// `transport` and the principal's token id.
    pub async fn forget(
        &self,
        request: ForgetRequest,
        principal: &Principal,
        transport: &str,
    ) -> Result<ForgetOutcome, ServingError> {
        let registry = self.registry.snapshot();
        let requested_by = principal.requested_by(transport);
        let requested_by = requested_by.as_str();
        let views: Vec<FeatureView> = registry
            .feature_views
            .values()
            .filter(|view| principal.allows_view(&view.name))
            .cloned()
            .collect();
        if request.verify {
            let report = self
                .eraser
                .verify(&views, &request.entities)
                .await
                .map_err(erasure_error)?;
            return Ok(ForgetOutcome::Verified(report));
        }
        let report = self
            .eraser
            .forget(&views, &request.entities, requested_by)
            .await
            .map_err(erasure_error)?;
        Ok(ForgetOutcome::Erased(report))
    }
}

/// Bad requests are the caller's to fix (400); a store that failed leaves the job pending
/// (503: the next resume or retry finishes it); state files are the server's (500).
fn erasure_error(error: ErasureError) -> ServingError {
    match error {
        ErasureError::InvalidRequest(_)
        | ErasureError::UnknownJoinKey { .. }
        | ErasureError::InvalidValue { .. } => ServingError::invalid(error.to_string()),
        ErasureError::Store { .. } => ServingError::new(
            ErrorKind::Unavailable,
            format!("{error}; retry, or it finishes when the server restarts"),
        ),
        ErasureError::State { .. } => {
            ServingError::internal("the erasure's job or audit file failed", error)
        }
    }
}
