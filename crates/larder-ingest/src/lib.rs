//! Ingestion: the one write path that every lane goes through, and the batch lane.
//!
//! Batch materialization, streaming and direct writes all hand rows to [`WritePath`], which
//! validates them against the feature view, stamps the write time and the lane, and writes
//! them to the online store, whose conditional write keeps the newest event time. So an older
//! value from any lane never overwrites a newer one, and every stored row carries the same
//! metadata whatever produced it.

pub mod batch;
mod checks;
pub mod erasure;
mod freshness;
mod history;
pub mod inputs;
pub mod lineage;
mod run_winners;
mod runs;
mod scheduler;
mod write_path;

pub use batch::{
    MaterializeError, MaterializeOptions, MaterializeProgress, RunReport, materialize_view,
};
pub use checks::{CheckFailure, evaluate_checks};
pub use erasure::{
    EntityStateStore, Eraser, ErasureError, ErasureReport, ForgottenEntities, VerifyReport,
};
pub use freshness::{FreshnessBoard, ViewFreshness};
pub use history::{RunHistory, RunHistoryError, ViewRunLock};
pub use lineage::{LineageEmitter, LineageRun, LineageSink};
pub use run_winners::RunWinners;
pub use runs::{BatchRunner, RunError, RunObserver, RunRequest, RunWindow};
pub use scheduler::{ScheduledRuns, is_scheduled, spawn_scheduler};
pub use write_path::{
    ChangeSummary, DigestRule, EncodedRows, FeatureRow, WriteError, WritePath, row_digest,
};
