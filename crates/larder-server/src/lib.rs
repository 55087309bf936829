//! Online serving: resolve feature references against an in-memory registry snapshot, read
//! every feature view of a request from the online store concurrently, and answer in
//! Feast's shapes.
//!
//! [`FeatureServer`] is the protocol-agnostic core of online reads; [`push::PushService`]
//! takes direct writes and [`training::TrainingService`] builds training sets. [`Services`]
//! bundles them, and [`http`] (HTTP/JSON, with Prometheus metrics and overload protection)
//! and [`grpc`] put the same services on the wire.

pub mod apply;
pub mod arrow_http;
pub mod audit;
pub mod auth;
pub mod catalog;
mod discovery;
pub mod documents;
mod error;
pub mod forget;
pub mod grpc;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod grpc_tests;
pub mod http;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod http_tests;
pub mod json;
pub mod materialize;
pub mod metrics;
pub mod push;
mod registry_handle;
mod serving;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod serving_tests;
pub mod status;
#[cfg(test)]
mod test_views;
pub mod training;
pub mod ui;

use std::sync::Arc;

pub use error::{ErrorKind, FeastErrorClass, ServingError};
pub use registry_handle::RegistryHandle;
pub use serving::{
    Cell, FeatureColumn, FeatureSelection, FeatureServer, FieldStatus, OnlineFeaturesRequest,
    OnlineFeaturesResponse, OnlineFeaturesResult, ResponseMetadata, ServingLimits,
};

/// What a transport serves: online reads always; direct writes and training sets when the
/// process was given them (otherwise their routes answer that they are not enabled).
#[derive(Debug, Clone)]
pub struct Services {
    /// Online feature reads.
    pub features: Arc<FeatureServer>,
    /// Direct writes (`/push`, `/write-to-online-store`, gRPC `Push`).
    pub push: Option<Arc<push::PushService>>,
    /// Training sets (`/get-historical-features`, gRPC `GetHistoricalFeatures`).
    pub training: Option<Arc<training::TrainingService>>,
    /// The batch lane on request (`/materialize`, `/materialize-incremental`).
    pub materialize: Option<Arc<dyn materialize::Materializer>>,
    /// Erasure of entities (`/forget`).
    pub forget: Option<Arc<forget::ForgetService>>,
    /// Apply over the API (`/api/v1/apply`).
    pub apply: Option<Arc<dyn apply::Applier>>,
    /// Who may do what; [`auth::Authenticator::disabled`] lets everyone do everything.
    pub auth: Arc<auth::Authenticator>,
    /// The audit log of direct writes; `None`: metrics only.
    pub write_audit: Option<Arc<audit::WriteAudit>>,
    /// The batch lane's run history, for the registry API and the UI; `None`: no runs shown.
    pub runs: Option<larder_ingest::RunHistory>,
    /// Nearest-neighbour search (`/retrieve-online-documents`, gRPC
    /// `RetrieveOnlineDocuments`).
    pub documents: Option<Arc<documents::DocumentSearch>>,
}

impl Services {
    /// Online reads only.
    pub fn reads_only(features: Arc<FeatureServer>) -> Self {
        Self {
            features,
            push: None,
            training: None,
            materialize: None,
            forget: None,
            apply: None,
            auth: Arc::new(auth::Authenticator::disabled()),
            write_audit: None,
            runs: None,
            documents: None,
        }
    }

    /// The direct-write service, or the error a transport answers without it.
    pub fn push_service(&self) -> Result<&Arc<push::PushService>, ServingError> {
        self.push.as_ref().ok_or_else(|| {
            ServingError::new(
                ErrorKind::NotFound,
                "direct writes are not enabled on this server",
            )
        })
    }

    /// A direct write by `principal` over `transport`: checked against the token's views,
    /// written, then counted and audited under the token id.
    pub async fn push_as(
        &self,
        principal: &auth::Principal,
        transport: &str,
        request: push::PushRequest,
    ) -> Result<Vec<push::PushedView>, ServingError> {
        let push_service = self.push_service()?;
        principal.check_views(
            push_service
                .target_views(&request.target)
                .iter()
                .map(String::as_str),
        )?;
        let pushed = push_service.push(request).await?;
        audit::record_write(self.write_audit.as_deref(), principal, transport, &pushed);
        Ok(pushed)
    }

    /// The search service, or the error a transport answers without it.
    pub fn document_search(&self) -> Result<&Arc<documents::DocumentSearch>, ServingError> {
        self.documents.as_ref().ok_or_else(|| {
            ServingError::new(
                ErrorKind::NotFound,
                "nearest-neighbour search is not enabled on this server",
            )
        })
    }

    /// A nearest-neighbour search by `principal`: checked against the token's views.
    pub async fn retrieve_documents_as(
        &self,
        principal: &auth::Principal,
        request: documents::DocumentsRequest,
    ) -> Result<OnlineFeaturesResult, ServingError> {
        let search = self.document_search()?;
        principal.check_selection(&self.features.registry().snapshot(), &request.selection)?;
        search.search(request).await
    }

    /// The erasure service, or the error a transport answers without it.
    pub fn forget_service(&self) -> Result<&Arc<forget::ForgetService>, ServingError> {
        self.forget.as_ref().ok_or_else(|| {
            ServingError::new(ErrorKind::NotFound, "erasure is not enabled on this server")
        })
    }

    /// The materializer, or the error a transport answers without it.
    pub fn materializer(&self) -> Result<&Arc<dyn materialize::Materializer>, ServingError> {
        self.materialize.as_ref().ok_or_else(|| {
            ServingError::new(
                ErrorKind::NotFound,
                "materialization is not enabled on this server",
            )
        })
    }

    /// The training-set service, or the error a transport answers without it.
    pub fn training_service(&self) -> Result<&Arc<training::TrainingService>, ServingError> {
        self.training.as_ref().ok_or_else(|| {
            ServingError::new(
                ErrorKind::Unavailable,
                "this server has no offline store configured",
            )
        })
    }
}
