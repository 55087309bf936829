//! `larder materialize`, `larder materialize-incremental` and `larder runs`: the batch lane
//! and its run history.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures::future::BoxFuture;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use larder_core::{FeatureView, Timestamp};
pub use larder_ingest::RunWindow;
use larder_ingest::{
    BatchRunner, MaterializeProgress, RunError, RunObserver, RunReport, RunRequest, ScheduledRuns,
    WritePath,
};
use larder_offline::TimeWindow;
use larder_online::{SharedDigestStore, SharedOnlineStore};
use larder_server::materialize::{MaterializeCall, MaterializeWindow, Materializer};
use larder_server::{ErrorKind, RegistryHandle, ServingError};

use crate::context::RepoContext;

/// One view's spinner; cleared when its run ends.
struct Bar(ProgressBar);

impl MaterializeProgress for Bar {
    fn rows_processed(&self, rows: u64) {
        self.0.inc(rows);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// What to materialize and how.
#[derive(Debug, Clone)]
pub struct MaterializeRequest {
    /// Only these views; empty: every batch view.
    pub only_views: Vec<String>,
    /// The event-time window.
    pub window: RunWindow,
    /// Ignore digests and rewrite every row online.
    pub full_refresh: bool,
    /// Show progress bars.
    pub show_progress: bool,
}

/// Parses a `--start`/`--end` bound.
pub fn parse_bound(flag: &str, text: Option<&str>) -> Result<Option<Timestamp>> {
    text.map(|text| {
        Timestamp::parse(text).ok_or_else(|| {
            anyhow!("{flag} '{text}' is not a date (YYYY-MM-DD) or an RFC 3339 time")
        })
    })
    .transpose()
}

/// Opens the configured store and materializes.
pub async fn run(root: &Path, request: &MaterializeRequest) -> Result<()> {
    let context = RepoContext::load(root)?;
    let stores = context.open_online_stores().await?;
    let outcome = run_with_stores(&context, stores.store, stores.digests, request).await;
    // Save the graphs the run grew, so the next process loads them instead of replaying.
    if let Err(error) = stores.vectors.flush().await {
        eprintln!(
            "warning: saving the vector indexes failed ({error}); the next open replays their recent changes"
        );
    }
    // The process exits next: let the lineage events of the runs reach the catalog first.
    context.flush_lineage();
    print_total(&outcome?);
    Ok(())
}

/// Prints the last line of a `materialize` run.
pub fn print_total(reports: &[RunReport]) {
    let scanned: u64 = reports.iter().map(|report| report.rows_scanned).sum();
    let written: u64 = reports.iter().map(|report| report.rows_written).sum();
    println!("Materialized {scanned} rows ({written} written online).");
}

/// The batch lane of a running `larder serve`: its scheduler and `POST /materialize` run
/// views through it, with the server's online store.
#[derive(Clone)]
pub struct ServeMaterializer {
    context: Arc<RepoContext>,
    store: SharedOnlineStore,
    /// Reaches the change detection's digests for each run ([`RepoContext::digest_opener`]).
    digests: larder_ingest::erasure::DigestOpener,
}

impl std::fmt::Debug for ServeMaterializer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServeMaterializer")
            .field("store", &self.store.backend_name())
            .finish_non_exhaustive()
    }
}

impl ServeMaterializer {
    /// A materializer writing to `store`, reaching the digests through `digests`.
    pub fn new(
        context: Arc<RepoContext>,
        store: SharedOnlineStore,
        digests: larder_ingest::erasure::DigestOpener,
    ) -> Self {
        Self {
            context,
            store,
            digests,
        }
    }

    /// Runs `request` (quietly: no progress bars).
    pub async fn run(&self, request: &MaterializeRequest) -> Result<Vec<RunReport>> {
        let digests = (self.digests)().map_err(|message| anyhow!(message))?;
        run_with_stores(&self.context, Arc::clone(&self.store), digests, request).await
    }
}

#[async_trait::async_trait]
impl Materializer for ServeMaterializer {
    fn is_running(&self, view: &str) -> Result<bool, ServingError> {
        match self.context.run_history().try_lock_view(view) {
            Ok(claim) => Ok(claim.is_none()),
            Err(error) => Err(ServingError::new(ErrorKind::Internal, error.to_string())),
        }
    }

    async fn materialize(&self, call: MaterializeCall) -> Result<Vec<RunReport>, ServingError> {
        for view in &call.feature_views {
            if self.is_running(view)? {
                return Err(ServingError::new(
                    ErrorKind::Conflict,
                    format!("a run of feature view '{view}' is in progress"),
                ));
            }
        }
        let window = match call.window {
            MaterializeWindow::Range { start, end } => RunWindow::Fixed(TimeWindow { start, end }),
            MaterializeWindow::Incremental { end } => RunWindow::Incremental { end: Some(end) },
        };
        let request = MaterializeRequest {
            only_views: call.feature_views,
            window,
            full_refresh: false,
            show_progress: false,
        };
        // A failed run is about the definitions or the data (a check, a source), which the
        // caller must see: its message goes back, as `larder materialize` prints it.
        self.run(&request)
            .await
            .map_err(|error| ServingError::new(run_error_kind(&error), format!("{error:#}")))
    }
}

/// How a failed batch run is answered: a view claimed by another run (one that started
/// between the check above and this run's claim) is a conflict like the checked case, not a
/// failed run.
fn run_error_kind(error: &anyhow::Error) -> ErrorKind {
    match error.downcast_ref::<RunError>() {
        Some(RunError::InProgress { .. }) => ErrorKind::Conflict,
        _ => ErrorKind::RunFailed,
    }
}

/// `larder serve`'s scheduled runs: the views of the registry it serves (so `larder apply`
/// changes schedules without a restart), each run through its [`ServeMaterializer`].
pub struct ServeSchedule {
    /// The registry being served.
    pub registry: Arc<RegistryHandle>,
    /// Runs the views.
    pub materializer: Arc<ServeMaterializer>,
}

impl ScheduledRuns for ServeSchedule {
    fn views(&self) -> Vec<FeatureView> {
        self.registry
            .snapshot()
            .feature_views
            .values()
            .filter(|view| larder_ingest::is_scheduled(view))
            .cloned()
            .collect()
    }

    fn run_view(&self, view: String) -> BoxFuture<'static, ()> {
        let materializer = Arc::clone(&self.materializer);
        Box::pin(async move {
            let request = MaterializeRequest {
                only_views: vec![view.clone()],
                window: RunWindow::Fixed(TimeWindow::default()),
                full_refresh: false,
                show_progress: false,
            };
            if let Err(error) = materializer.run(&request).await {
                println!("Scheduled run of feature view '{view}' failed: {error:#}");
            }
        })
    }

    fn notice(&self, message: &str) {
        println!("{message}");
    }
}

/// Materializes the selected batch views into `store` and the offline store, recording each
/// run (successful or not) in the run history. Views run side by side; every view runs even
/// when another fails, and the first failure is returned (the others are printed).
pub async fn run_with_stores(
    context: &RepoContext,
    store: SharedOnlineStore,
    digests: SharedDigestStore,
    request: &MaterializeRequest,
) -> Result<Vec<RunReport>> {
    let registry = context.applied_registry()?;
    let views = registry.batch_views(&request.only_views)?;
    let engine = crate::context::open_offline_engine(
        &context.root,
        &context.config,
        registry.sources.values().cloned().collect(),
    )
    .await?;
    let runner = BatchRunner {
        engine: engine.as_ref(),
        offline_store: context.offline_store(),
        write_path: WritePath::new(store),
        digests: digests.as_ref(),
        history: context.run_history(),
        forgotten: larder_ingest::ForgottenEntities::load(&context.erasure_folder())?.map(Arc::new),
        lineage: context.lineage_emitter(&registry),
    };
    let bars = Bars(if request.show_progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    });
    let run_request = RunRequest {
        window: request.window,
        full_refresh: request.full_refresh,
    };
    let outcomes = runner.run_views(&views, &run_request, &bars).await;
    let mut reports = Vec::new();
    let mut first_error = None;
    for outcome in outcomes {
        match outcome {
            Ok(report) => reports.push(report),
            Err(error) => {
                if first_error.is_none() {
                    first_error = Some(error);
                } else {
                    eprintln!("Error: {error}");
                }
            }
        }
    }
    match first_error {
        Some(error) => Err(error.into()),
        None => Ok(reports),
    }
}

/// A spinner per running view, and a summary line per finished one.
struct Bars(MultiProgress);

impl RunObserver for Bars {
    fn start(&self, view: &FeatureView) -> Box<dyn MaterializeProgress> {
        let bar = self.0.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:20} {human_pos:>12} rows  {per_sec:>14}  {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(view.id().to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Box::new(Bar(bar))
    }

    fn finish(&self, _view: &FeatureView, report: &RunReport) {
        if report.status == "failed" {
            return;
        }
        self.0.suspend(|| {
            println!("{}", summary_line(report));
            for warning in &report.warnings {
                println!("  warning: {warning}");
            }
        });
    }
}

/// One line per run: what was scanned, changed, written and skipped.
pub fn summary_line(report: &RunReport) -> String {
    let seconds = report.duration().as_secs_f64().max(1e-9);
    format!(
        "{:<20} {:>10} rows scanned in {:>6.2}s ({:>9.0} rows/s): {} changed, {} written online, {} skipped ({} unchanged), {} deleted; offline {} rows in {} date partitions",
        format!("{}:v{}", report.view, report.version),
        report.rows_scanned,
        seconds,
        report.rows_scanned as f64 / seconds,
        report.rows_changed,
        report.rows_written,
        report.rows_skipped,
        report.rows_unchanged,
        report.rows_deleted,
        report.offline_rows,
        report.offline_partitions
    ) + &files_note(report)
}

/// What a run of a view whose source files are tracked read: `; source files: 1 read, 3
/// unchanged`, or nothing for a run that reads its sources whole.
fn files_note(report: &RunReport) -> String {
    if report.files_read == 0 && report.files_unchanged == 0 {
        return String::new();
    }
    format!(
        "; source files: {} read, {} unchanged",
        report.files_read, report.files_unchanged
    )
}

/// `larder runs [VIEW]`: the run history, oldest first.
pub fn show_runs(root: &Path, view: Option<&str>, limit: usize) -> Result<()> {
    let context = RepoContext::load(root)?;
    let runs = context.run_history().runs(view)?;
    if runs.is_empty() {
        println!("No runs recorded yet.");
        return Ok(());
    }
    println!(
        "{:<25} {:<20} {:<9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9}  watermark",
        "started",
        "view",
        "status",
        "scanned",
        "changed",
        "written",
        "skipped",
        "deleted",
        "seconds"
    );
    let skip = runs.len().saturating_sub(limit);
    for run in runs.iter().skip(skip) {
        println!(
            "{:<25} {:<20} {:<9} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9.2}  {}",
            run.started_at,
            format!("{}:v{}", run.view, run.version),
            run.status,
            run.rows_scanned,
            run.rows_changed,
            run.rows_written,
            run.rows_skipped,
            run.rows_deleted,
            run.duration().as_secs_f64(),
            run.watermark.as_deref().unwrap_or("-")
        );
        if let Some(error) = &run.error {
            println!("    error: {error}");
        }
        for warning in &run.warnings {
            println!("    warning: {warning}");
        }
    }
    Ok(())
}
