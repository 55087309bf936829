//! The offline store seam: where every materialized (and pushed) row of every feature view
//! version is kept for training sets and backfills.
//!
//! [`OfflineStore`] is the contract every backend implements and [`crate::conformance`]
//! checks; [`crate::ParquetOfflineStore`] (local Parquet files) is the reference backend.

use std::sync::Arc;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use larder_core::{EntityKey, FeatureView};

use crate::OfflineError;
use crate::columns::ViewBatch;
use crate::engine::TimeWindow;

/// What one offline write stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OfflineWriteSummary {
    /// Rows written.
    pub rows: u64,
    /// Parquet files written.
    pub files: u64,
    /// Date partitions written.
    pub partitions: u64,
}

/// Receives the rows of one materialization of one view version. Nothing is visible to
/// readers until [`OfflineWriter::commit`]; dropping the writer abandons the write.
pub trait OfflineWriter: Send {
    /// Adds a batch of rows (in the view's canonical schema).
    fn write(&mut self, batch: &ViewBatch) -> Result<(), OfflineError>;
    /// Makes the written rows visible, replacing the view version's previous rows.
    fn commit(self: Box<Self>) -> Result<OfflineWriteSummary, OfflineError>;
    /// A folder where an offline engine may write this write's rows itself, instead of
    /// handing them to [`OfflineWriter::write`]: Parquet files under `date=YYYY-MM-DD/`
    /// folders (the UTC day of each row's event time) with the view's canonical columns
    /// (types may differ where a cast is lossless, e.g. a list's item name). `commit`
    /// publishes them like rows written through `write`; dropping the writer discards them.
    /// `None` (the default, and for windowed writes): rows come through `write` only.
    fn engine_folder(&self) -> Option<std::path::PathBuf> {
        None
    }
}

/// What one deletion of entities removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OfflineDeleteSummary {
    /// Rows removed.
    pub rows: u64,
    /// Files (or other storage units) rewritten or removed; the others were not touched.
    pub files_rewritten: u64,
    /// Files read to look for the entities.
    pub files_scanned: u64,
    /// Files not read because their join keys' bloom filters rule every entity out.
    pub files_pruned: u64,
    /// Bytes written by the rewrites (the new files' sizes).
    pub bytes_written: u64,
}

/// A fixed set of a view version's rows, as they were when it was taken: every read streams
/// them in the same order, whatever is written meanwhile (a training set's as-of join reads
/// its feature rows twice and refers to a row by its position).
#[async_trait::async_trait]
pub trait OfflineRows: Send + Sync + std::fmt::Debug {
    /// Streams the named columns (in that order) of every row. A column the view does not
    /// have is [`OfflineError::InvalidRequest`].
    async fn read(&self, columns: &[String]) -> Result<SendableRecordBatchStream, OfflineError>;
}

/// Where feature rows are kept for training and backfills.
///
/// Every backend behaves as follows; [`crate::conformance::run_all`] checks each point.
///
/// * **View versions.** Rows live per feature view version (a new version starts empty),
///   in the view's canonical schema ([`ViewBatch::schema_of`]): join keys, event timestamp
///   (UTC microseconds), features.
/// * **Replace.** [`OfflineStore::begin_write`] starts a write that, on
///   [`OfflineWriter::commit`], replaces all of the version's rows; a windowed write
///   ([`OfflineStore::begin_window_write`]) replaces only the rows whose event time lies in
///   the window. Readers see the old rows or the new ones, never a mix; an abandoned write
///   (dropped without commit) changes nothing.
/// * **Append.** [`OfflineStore::append`] adds rows without replacing any; readers see all
///   of them or none. Rows appended later come later in reads, after the materialized rows.
/// * **Ordered reads.** [`OfflineStore::rows`] takes the version's rows as they are now;
///   reading them twice gives the same rows in the same order.
/// * **Deletion of entities.** [`OfflineStore::delete_entities`] removes every row of the
///   given entities and rewrites only the storage that holds one; each unit is swapped
///   atomically, so a reader sees it before or after, never torn. Other entities' rows keep
///   their values and order.
/// * **Unsupported operations** answer [`OfflineError::Unsupported`] (the defaults below), so
///   callers can tell "cannot here" from "failed".
#[async_trait::async_trait]
pub trait OfflineStore: Send + Sync + std::fmt::Debug {
    /// A short backend name for messages (`parquet`).
    fn backend_name(&self) -> &'static str;

    /// Starts replacing the rows of a view version.
    fn begin_write(&self, view: &FeatureView) -> Result<Box<dyn OfflineWriter>, OfflineError>;

    /// Starts replacing the rows of a view version whose event time falls in `window`; rows
    /// outside the window are kept. An unbounded window is [`OfflineStore::begin_write`].
    fn begin_window_write(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<Box<dyn OfflineWriter>, OfflineError> {
        if window.start.is_none() && window.end.is_none() {
            return self.begin_write(view);
        }
        Err(OfflineError::Unsupported(format!(
            "the {} offline store cannot replace an event-time window of feature view '{}'",
            self.backend_name(),
            view.name
        )))
    }

    /// Starts adding rows to a view version's history without replacing any, one file per
    /// date partition named after `tag` (a writer started again with the same tag replaces
    /// what an earlier one published): the batch lane's write of the rows of new source
    /// files. `None` (the default): this store cannot, and the run rewrites all rows instead.
    fn begin_append_write(
        &self,
        view: &FeatureView,
        tag: &str,
    ) -> Result<Option<Box<dyn OfflineWriter>>, OfflineError> {
        let _ = (view, tag);
        Ok(None)
    }

    /// Adds rows to a view version's history without replacing any: the direct-write lane's
    /// offline copy. Readers see all of the rows or none of them.
    fn append(
        &self,
        view: &FeatureView,
        batch: &ViewBatch,
    ) -> Result<OfflineWriteSummary, OfflineError> {
        let _ = batch;
        Err(OfflineError::Unsupported(format!(
            "the {} offline store cannot append rows to feature view '{}'",
            self.backend_name(),
            view.name
        )))
    }

    /// The rows of a view version as they are now (see [`OfflineRows`]), or `None` when the
    /// version has never been written.
    fn rows(&self, view: &FeatureView) -> Result<Option<Arc<dyn OfflineRows>>, OfflineError>;

    /// Removes every row of the entities `keys` from a view version, rewriting only what
    /// holds one of them (see the trait docs).
    fn delete_entities(
        &self,
        view: &FeatureView,
        keys: &[EntityKey],
    ) -> Result<OfflineDeleteSummary, OfflineError> {
        let _ = keys;
        Err(OfflineError::Unsupported(format!(
            "the {} offline store cannot delete entities of feature view '{}'",
            self.backend_name(),
            view.name
        )))
    }

    /// Registers a view version's rows as a DataFusion table; returns `false` if the view has
    /// never been materialized.
    async fn register_view(
        &self,
        context: &SessionContext,
        view: &FeatureView,
        table_name: &str,
    ) -> Result<bool, OfflineError>;
}

/// A shared handle to any offline store.
pub type SharedOfflineStore = Arc<dyn OfflineStore>;
