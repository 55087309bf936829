//! Online serving: resolve feature references against an in-memory registry snapshot, read
//! every feature view of a request from the online store concurrently, and answer in
//! Feast's shapes.
//!
//! [`FeatureServer`] is the protocol-agnostic core; [`http`] puts it on HTTP/JSON, with
//! Prometheus metrics and overload protection.

mod error;
pub mod grpc;
pub mod http;
pub mod json;
pub mod metrics;
pub mod push;
mod registry_handle;
mod serving;
pub mod training;

pub use error::{ErrorKind, ServingError};
pub use registry_handle::RegistryHandle;
pub use serving::{
    Cell, FeatureColumn, FeatureSelection, FeatureServer, FieldStatus, OnlineFeaturesRequest,
    OnlineFeaturesResponse, OnlineFeaturesResult, ResponseMetadata, ServingLimits,
};
