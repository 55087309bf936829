//! Batch runs of several views at once, as `larder materialize`, `POST /materialize` and the
//! scheduler start them: each view claimed (runs of one view never overlap, across
//! processes), its window picked from the run history, materialized, and its report recorded.

use futures::StreamExt;
use larder_core::{FeatureView, Timestamp};
use larder_offline::{OfflineEngine, SharedOfflineStore, TimeWindow};
use larder_online::DigestStore;

use crate::batch::{
    MaterializeError, MaterializeOptions, MaterializeProgress, RunReport, materialize_view,
};
use crate::history::{RunHistory, RunHistoryError};
use crate::lineage::{LineageEmitter, LineageRun};
use crate::write_path::WritePath;

/// Which rows a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunWindow {
    /// A fixed event-time window (open sides unbounded).
    Fixed(TimeWindow),
    /// From each view's last watermark (the newest event time its last successful run of the
    /// current version materialized; everything on a first run) to `end` (exclusive; `None`:
    /// now).
    Incremental {
        /// Where the window ends.
        end: Option<Timestamp>,
    },
}

/// What one batch run of several views asks for.
#[derive(Debug, Clone, Copy)]
pub struct RunRequest {
    /// Which rows each view reads.
    pub window: RunWindow,
    /// Ignore change detection and write every row.
    pub full_refresh: bool,
}

/// Why one view's run did not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another run of the view holds its claim.
    #[error(
        "a run of feature view '{view}' is in progress (another `larder materialize`, or a scheduled run of `larder serve`); runs of one view never overlap"
    )]
    InProgress {
        /// The view.
        view: String,
    },
    /// The run history could not be read or locked.
    #[error(transparent)]
    History(#[from] RunHistoryError),
    /// The materialization failed (recorded as a failed run).
    #[error("materializing '{view}': {error}")]
    Materialize {
        /// The view.
        view: String,
        /// What went wrong.
        error: MaterializeError,
    },
}

/// Follows a batch run: hands out each view's progress receiver and sees each report.
pub trait RunObserver: Send + Sync {
    /// The progress receiver for `view`'s run, created as the run starts.
    fn start(&self, view: &FeatureView) -> Box<dyn MaterializeProgress>;
    /// `view`'s run ended (successfully or not; `report` is recorded either way).
    fn finish(&self, view: &FeatureView, report: &RunReport);
}

/// Observes nothing.
impl RunObserver for () {
    fn start(&self, _view: &FeatureView) -> Box<dyn MaterializeProgress> {
        Box::new(())
    }

    fn finish(&self, _view: &FeatureView, _report: &RunReport) {}
}

/// The parts every view's run of one batch shares: the engine, the stores and the history.
pub struct BatchRunner<'a> {
    /// Runs the views' transformations.
    pub engine: &'a dyn OfflineEngine,
    /// Receives the offline rows.
    pub offline_store: SharedOfflineStore,
    /// Receives the online rows.
    pub write_path: WritePath,
    /// Change detection's digests.
    pub digests: &'a dyn DigestStore,
    /// Claims and records runs.
    pub history: RunHistory,
    /// Entities erased earlier, which each run looks for in its sources.
    pub forgotten: Option<std::sync::Arc<crate::erasure::ForgottenEntities>>,
    /// Sends each view's run to a lineage catalog (OpenLineage `START`, then `COMPLETE` or
    /// `FAIL`); `None`: no lineage.
    pub lineage: Option<std::sync::Arc<LineageEmitter>>,
}

impl BatchRunner<'_> {
    /// Runs `views` side by side (up to the number of cores, at most 4); every view runs even
    /// when another fails. The outcomes come in the order the runs finish.
    pub async fn run_views(
        &self,
        views: &[&FeatureView],
        request: &RunRequest,
        observer: &dyn RunObserver,
    ) -> Vec<Result<RunReport, RunError>> {
        let concurrency = std::thread::available_parallelism()
            .map_or(2, std::num::NonZeroUsize::get)
            .clamp(1, 4);
        let runs: Vec<_> = views
            .iter()
            .map(|view| self.run_view(view, request, observer))
            .collect();
        futures::stream::iter(runs)
            .buffer_unordered(concurrency)
            .collect()
            .await
    }

    /// Runs one view: claims it, picks its window, materializes and records the run.
    pub async fn run_view(
        &self,
        view: &FeatureView,
        request: &RunRequest,
        observer: &dyn RunObserver,
    ) -> Result<RunReport, RunError> {
        let history = &self.history;
        let Some(_claim) = history.try_lock_view(&view.name)? else {
            return Err(RunError::InProgress {
                view: view.name.clone(),
            });
        };
        let last_success = history.last_successful_run(&view.name, view.version)?;
        let window = match request.window {
            RunWindow::Fixed(window) => window,
            RunWindow::Incremental { end } => TimeWindow {
                start: last_success
                    .as_ref()
                    .and_then(RunReport::watermark_timestamp),
                end,
            },
        };
        let options = MaterializeOptions {
            window,
            full_refresh: request.full_refresh,
            previous_row_count: last_success.as_ref().map(|report| report.rows_scanned),
            forgotten: self.forgotten.clone(),
            inputs: Some(self.history.input_manifests()),
            previous_watermark: last_success
                .as_ref()
                .and_then(RunReport::watermark_timestamp),
        };
        let lineage = self
            .lineage
            .as_ref()
            .map(|emitter| emitter.start_materialize(view));
        let progress = observer.start(view);
        let outcome = materialize_view(
            self.engine,
            self.offline_store.as_ref(),
            &self.write_path,
            self.digests,
            view,
            &options,
            progress.as_ref(),
        )
        .await;
        match outcome {
            Ok(report) => {
                self.conclude(view, &report, observer, lineage);
                Ok(report)
            }
            Err(error) => {
                let mut failed = RunReport::started(view, &options);
                failed.status = "failed".to_string();
                failed.error = Some(error.to_string());
                self.conclude(view, &failed, observer, lineage);
                Err(RunError::Materialize {
                    view: view.name.clone(),
                    error,
                })
            }
        }
    }

    /// Exports, records and reports the end of a run (to the lineage catalog too).
    fn conclude(
        &self,
        view: &FeatureView,
        report: &RunReport,
        observer: &dyn RunObserver,
        lineage: Option<LineageRun>,
    ) {
        report.export_metrics();
        if let Err(error) = self.history.append(report) {
            tracing::warn!(%error, "cannot record the run in the run history");
        }
        if let Some(lineage) = lineage {
            lineage.finish_materialize(report);
        }
        observer.finish(view, report);
    }
}
