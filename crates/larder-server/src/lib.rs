//! Online serving: resolve feature references against an in-memory registry snapshot, read
//! every feature view of a request from the online store concurrently, and answer in
//! Feast's shapes over HTTP.
//!
//! [`FeatureServer`] is the protocol-agnostic core; [`http`] puts it on HTTP/JSON.

mod error;
pub mod http;
mod registry_handle;
mod serving;
pub mod training;

pub use error::{ErrorKind, ServingError};
pub use registry_handle::RegistryHandle;
pub use serving::{
    FeatureColumn, FeatureServer, FieldStatus, OnlineFeaturesRequest, OnlineFeaturesResponse,
    ResponseMetadata, ServingLimits,
};
