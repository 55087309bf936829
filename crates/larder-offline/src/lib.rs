//! The offline side of Larder: batch transformations with DataFusion over Parquet and CSV
//! sources, the Parquet offline store, and the conversions between Arrow columns and
//! Larder values that every batch path shares.

mod arrow_types;
mod columns;
pub mod conformance;
mod engine;
pub mod engine_conformance;
mod input_files;
mod object_storage;
mod parquet_store;
mod store;
pub mod training;

pub use arrow_types::{arrow_type_of, value_type_of};
pub use columns::{CanonicalColumn, ViewBatch, array_of_values};
pub use engine::{
    DataFusionEngine, OfflineEngine, RoutedEngine, SharedOfflineEngine, TimeWindow, ViewOutputTable,
};
pub use input_files::InputFile;
pub use parquet_store::ParquetOfflineStore;
pub use store::{
    OfflineDeleteSummary, OfflineRows, OfflineStore, OfflineWriteSummary, OfflineWriter,
    SharedOfflineStore,
};

/// Errors of the offline side.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A SQL transformation or a source that DataFusion refused (the user's to fix).
    #[error("{context}: {source}")]
    Query {
        /// What was being done, e.g. `feature view 'user_activity' (user_activity.sql)`.
        context: String,
        /// DataFusion's error.
        source: datafusion::error::DataFusionError,
    },
    /// A request that cannot be answered as asked: a missing column, a type mismatch, an
    /// unknown feature (the caller's to fix).
    #[error("{0}")]
    InvalidRequest(String),
    /// Output that does not fit the declared schema.
    #[error("{0}")]
    Schema(String),
    /// Rows that changed while they were read (a write replaced them meanwhile): reading
    /// again sees the new rows.
    #[error("{0}")]
    Changed(String),
    /// An operation this backend does not offer (e.g. appending to a store that only
    /// replaces).
    #[error("{0}")]
    Unsupported(String),
    /// An external engine (Spark) that refused a query or could not be reached.
    #[error("{context}: {message}")]
    Engine {
        /// What was being done, e.g. `feature view 'user_activity' (user_activity.sql)`.
        context: String,
        /// The engine's message.
        message: String,
    },
    /// A file that could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Parquet encoding failed.
    #[error("writing parquet {path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// The Parquet error.
        source: parquet::errors::ParquetError,
    },
    /// An Arrow kernel failed.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The Arrow error.
        source: arrow::error::ArrowError,
    },
}
