//! The batch lane: run a feature view's transformation over its sources, write every row to
//! the offline store and the newest row per entity to the online store.

use std::time::{Duration, Instant};

use futures::StreamExt;
use larder_core::fault::crash_point;
use larder_core::{FeatureView, Timestamp, WriteLane};
use larder_offline::{
    OfflineEngine, OfflineError, OfflineStore, OfflineWriteSummary, OfflineWriter, TimeWindow,
    ViewBatch,
};
use larder_online::DigestStore;

use crate::inputs::{InputManifest, InputManifestError, InputManifests, InputPlan};
use crate::run_winners::RunWinners;
use crate::write_path::{ChangeSummary, DigestRule, EncodedRows, WriteError, WritePath};

/// Receives progress while a view is materialized (a progress bar, metrics).
pub trait MaterializeProgress: Send + Sync {
    /// `rows` more rows were processed.
    fn rows_processed(&self, rows: u64);
}

/// Ignores progress.
impl MaterializeProgress for () {
    fn rows_processed(&self, _rows: u64) {}
}

/// How one run of the batch lane goes.
#[derive(Debug, Clone, Default)]
pub struct MaterializeOptions {
    /// The event-time window of source rows to materialize; an open window is everything.
    pub window: TimeWindow,
    /// Ignore the stored digests and write every row online (digests are saved afresh).
    pub full_refresh: bool,
    /// The row count of the view version's last successful run (for `row_count` checks).
    pub previous_row_count: Option<u64>,
    /// Entities erased earlier (`larder forget`): the run counts those its sources still
    /// hold and warns, since erasure must also reach the sources.
    pub forgotten: Option<std::sync::Arc<crate::erasure::ForgottenEntities>>,
    /// Which source files each view version was last computed from. With them, a full run of
    /// a view whose rows come file by file from one source
    /// ([`OfflineEngine::view_input_files`]) reads only the files added since its last run,
    /// and nothing when there are none; a window run forgets the view's manifest. `None`:
    /// every run reads all of its sources.
    pub inputs: Option<InputManifests>,
    /// The watermark of the view version's last successful run, which a run that reads only
    /// added files (or none) carries on.
    pub previous_watermark: Option<Timestamp>,
}

/// What one run of the batch lane for one view did: the record kept in the run history,
/// shown by the CLI and exported as metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunReport {
    /// Feature view name.
    pub view: String,
    /// Feature view version.
    pub version: u32,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// `succeeded` or `failed`.
    pub status: String,
    /// Why a failed run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Inclusive start of the event-time window, if any (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    /// Exclusive end of the event-time window, if any (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    /// The newest event time among the scanned rows (the next incremental run starts there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Rows produced by the transformation (of the files read, when only added source files
    /// were read).
    pub rows_scanned: u64,
    /// Entities that were new or changed, by content (so written online).
    pub rows_changed: u64,
    /// Rows the online store applied.
    pub rows_written: u64,
    /// Rows not written online: unchanged, older than the stored row, or outranked by another
    /// row of the same entity in the same run (newer, or as new with a larger content hash).
    pub rows_skipped: u64,
    /// Of the skipped rows, entities whose content and event time equal the last run's.
    pub rows_unchanged: u64,
    /// Entities deleted online because they left the view's output (`on_missing: delete`,
    /// full runs only).
    pub rows_deleted: u64,
    /// Rows written offline.
    pub offline_rows: u64,
    /// Offline date partitions written.
    pub offline_partitions: u64,
    /// Source files read, when the view's files are tracked (see
    /// [`MaterializeOptions::inputs`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_read: u64,
    /// Source files not read: the last run read them and they have not changed since.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_unchanged: u64,
    /// Data-quality warnings (checks with `severity: warn` that failed), and entities erased
    /// earlier that the sources brought back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Entities erased earlier (`larder forget`) that this run read from the sources again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forgotten_reintroduced: u64,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

fn is_zero(number: &u64) -> bool {
    *number == 0
}

impl RunReport {
    /// A report of a run that has just started.
    pub fn started(view: &FeatureView, options: &MaterializeOptions) -> Self {
        Self {
            view: view.name.clone(),
            version: view.version,
            started_at: Timestamp::now().to_rfc3339(),
            status: "running".to_string(),
            window_start: options.window.start.map(Timestamp::to_rfc3339),
            window_end: options.window.end.map(Timestamp::to_rfc3339),
            ..Self::default()
        }
    }

    /// Whether the run succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == "succeeded"
    }

    /// The watermark as a timestamp.
    pub fn watermark_timestamp(&self) -> Option<Timestamp> {
        self.watermark.as_deref().and_then(Timestamp::parse)
    }

    /// The wall time.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }

    /// Adds this run to the process's `metrics` recorder (a no-op without one): counters
    /// `larder_materialize_rows_{scanned,changed,written,skipped}_total`,
    /// `larder_materialize_runs_total{status}` and the histogram
    /// `larder_materialize_duration_seconds`, each labelled by `view`.
    pub fn export_metrics(&self) {
        let view = self.view.clone();
        metrics::counter!("larder_materialize_rows_scanned_total", "view" => view.clone())
            .increment(self.rows_scanned);
        metrics::counter!("larder_materialize_rows_changed_total", "view" => view.clone())
            .increment(self.rows_changed);
        metrics::counter!("larder_materialize_rows_written_total", "view" => view.clone())
            .increment(self.rows_written);
        metrics::counter!("larder_materialize_rows_skipped_total", "view" => view.clone())
            .increment(self.rows_skipped);
        metrics::counter!("larder_materialize_rows_deleted_total", "view" => view.clone())
            .increment(self.rows_deleted);
        metrics::counter!("larder_materialize_runs_total", "view" => view.clone(), "status" => self.status.clone())
            .increment(1);
        metrics::histogram!("larder_materialize_duration_seconds", "view" => view)
            .record(self.duration_ms as f64 / 1000.0);
    }
}

/// Why a materialization failed. Online rows written before the failure stay (each is a
/// valid value); the offline store keeps its previous rows, since its write is published only
/// at the end.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// The transformation, a source or the offline store failed.
    #[error(transparent)]
    Offline(#[from] OfflineError),
    /// The online write failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A background task died.
    #[error("materialization task failed: {0}")]
    Task(String),
    /// A data-quality check with `severity: error` failed; nothing was written.
    #[error("feature view '{view}': {failures}; nothing was written")]
    CheckFailed {
        /// The view.
        view: String,
        /// The failing checks with example rows.
        failures: String,
    },
    /// The record of which source files were read could not be read or saved.
    #[error(transparent)]
    Inputs(#[from] InputManifestError),
    /// The view cannot be materialized in batch.
    #[error("feature view '{view}' cannot be materialized: {reason}")]
    NotMaterializable {
        /// The view.
        view: String,
        /// Why.
        reason: String,
    },
}

/// Materializes one feature view: streams its transformation's rows, writes them all to the
/// offline store (replacing the view version's previous rows when the run completes), and
/// writes online, through [`WritePath::write_changed`], only the entities whose row is new
/// or changed since the last run (by content, against `digests`).
///
/// An entity that disappears from the source keeps its last online row (like Feast); the
/// view's `ttl` is what ages it out of serving. A new view version has no digests, so its
/// first run writes every row.
///
/// With [`MaterializeOptions::inputs`], a full run of a view whose rows come file by file
/// from one source reads only what changed: nothing when its files are those of the last
/// run; only the added files when every file of the last run is unchanged, whose rows are
/// appended offline and compared online as [`DigestRule::Merge`]; every file otherwise.
/// Either way the result is the one a run over every file gives.
pub async fn materialize_view(
    engine: &dyn OfflineEngine,
    offline_store: &dyn OfflineStore,
    write_path: &WritePath,
    digests: &dyn DigestStore,
    view: &FeatureView,
    options: &MaterializeOptions,
    progress: &dyn MaterializeProgress,
) -> Result<RunReport, MaterializeError> {
    if !view.online && !view.offline {
        return Err(MaterializeError::NotMaterializable {
            view: view.name.clone(),
            reason: "it is neither online nor offline".to_string(),
        });
    }
    let started = Instant::now();
    let mut report = RunReport::started(view, options);
    let full_run = options.window.start.is_none() && options.window.end.is_none();
    let (inputs, append_writer) =
        select_inputs(engine, offline_store, view, options, full_run).await?;
    let scoped_engine = match &inputs {
        Some(selected) => match &selected.read {
            InputRead::Nothing => {
                report.status = "succeeded".to_string();
                report.files_unchanged = selected.listed.len() as u64;
                report.watermark = options.previous_watermark.map(Timestamp::to_rfc3339);
                report.duration_ms = started.elapsed().as_millis() as u64;
                return Ok(report);
            }
            InputRead::Every => Some(engine.over_input_files(view, &selected.listed).await?),
            InputRead::Added(files) => Some(engine.over_input_files(view, files).await?),
        },
        None => None,
    };
    let engine: &dyn OfflineEngine = scoped_engine.as_deref().unwrap_or(engine);
    let appending = matches!(
        inputs.as_ref().map(|selected| &selected.read),
        Some(InputRead::Added(_))
    );
    let digest_rule = if options.full_refresh {
        DigestRule::Ignore
    } else if appending {
        DigestRule::Merge
    } else {
        DigestRule::Replace
    };
    // Checks run over the transformation output before anything is written anywhere.
    let failures = crate::checks::evaluate_checks(
        engine,
        view,
        options.window,
        options.previous_row_count,
        Timestamp::now(),
    )
    .await?;
    let (blocking, warnings): (Vec<_>, Vec<_>) = failures
        .into_iter()
        .partition(|failure| failure.severity == larder_core::CheckSeverity::Error);
    if !blocking.is_empty() {
        return Err(MaterializeError::CheckFailed {
            view: view.name.clone(),
            failures: blocking
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    report.warnings = warnings.iter().map(ToString::to_string).collect();
    crash_point("materialize.after_checks");
    let offline_writer: Option<Box<dyn OfflineWriter>> = if !view.offline {
        None
    } else if appending {
        append_writer
    } else {
        Some(offline_store.begin_window_write(view, options.window)?)
    };
    // An engine that writes the offline files itself (Spark, from its executors) streams back
    // the rows it wrote; otherwise the rows stream here and the offline stage writes them.
    let engine_written = match offline_writer
        .as_ref()
        .and_then(|writer| writer.engine_folder())
    {
        Some(folder) => {
            engine
                .write_view_files(view, options.window, &folder)
                .await?
        }
        None => None,
    };
    let offline_by_engine = engine_written.is_some();
    let mut stream = match engine_written {
        Some(stream) => stream,
        None => engine.execute_view(view, options.window).await?,
    };
    let mut rows_scanned = 0u64;
    let mut changes = ChangeSummary::default();
    let mut watermark: Option<Timestamp> = None;
    // The best row of every entity so far: which row wins among rows of one entity at one
    // event time, and, for a full run of a view whose missing entities are deleted, every
    // entity the run saw.
    let mut winners = RunWinners::new();
    // Three stages run side by side: the producer scans batch N+2 and encodes its rows for
    // the online comparison, the offline stage writes batch N+1's Parquet, and the consumer
    // compares and writes batch N online.
    let (converted_sender, mut converted) = tokio::sync::mpsc::channel::<ConvertedRows>(2);
    let (offline_sender, mut offline_batches) =
        tokio::sync::mpsc::channel::<std::sync::Arc<ViewBatch>>(2);
    let producer = async move {
        while let Some(next) = stream.next().await {
            let record_batch = next.map_err(|source| OfflineError::Query {
                context: format!("feature view '{}'", view.name),
                source,
            })?;
            if record_batch.num_rows() == 0 {
                continue;
            }
            let view_for_task = view.clone();
            // Arrow casting and row encoding are CPU work: keep them off the async workers.
            let (view_batch, rows) =
                tokio::task::spawn_blocking(move || convert_batch(&view_for_task, &record_batch))
                    .await
                    .map_err(|error| MaterializeError::Task(error.to_string()))??;
            if view.offline && !offline_by_engine && offline_sender.send(view_batch).await.is_err()
            {
                break;
            }
            if converted_sender.send(rows).await.is_err() {
                break;
            }
        }
        Ok::<_, MaterializeError>(())
    };
    let offline_stage = async move {
        let mut writer = offline_writer;
        while let Some(view_batch) = offline_batches.recv().await {
            let Some(mut writer_for_task) = writer.take() else {
                continue;
            };
            writer = Some(
                tokio::task::spawn_blocking(move || {
                    let written = writer_for_task.write(&view_batch);
                    crash_point("materialize.after_offline_batch");
                    written.map(|()| writer_for_task)
                })
                .await
                .map_err(|error| MaterializeError::Task(error.to_string()))??,
            );
        }
        Ok::<_, MaterializeError>(writer)
    };
    let consumer = async {
        while let Some(feature_rows) = converted.recv().await {
            let scanned = feature_rows.len() as u64;
            rows_scanned += scanned;
            watermark = watermark.max(feature_rows.newest_event_timestamp);
            if view.online {
                changes.add(
                    write_path
                        .write_changed_encoded(
                            view,
                            WriteLane::Batch,
                            &feature_rows.rows,
                            digests,
                            digest_rule,
                            &mut winners,
                        )
                        .await?,
                );
                crash_point("materialize.after_online_batch");
            }
            progress.rows_processed(scanned);
        }
        Ok::<_, MaterializeError>(())
    };
    let ((), offline_writer, ()) = tokio::try_join!(producer, offline_stage, consumer)?;
    crash_point("materialize.before_digest_sync");
    if view.online {
        // One fsync for the run's digests instead of one per batch.
        digests.sync().await.map_err(WriteError::Store)?;
    }
    if view.online && full_run && !appending && view.on_missing == larder_core::OnMissing::Delete {
        report.rows_deleted = delete_missing(write_path, digests, view, &winners).await?;
    }
    if let Some(forgotten) = &options.forgotten {
        let back = forgotten.count_among(winners.keys());
        if back > 0 {
            report.forgotten_reintroduced = back;
            report.warnings.push(format!(
                "{back} entities erased earlier (larder forget) are in the sources again and were written back: erase them in the sources too"
            ));
        }
    }
    crash_point("materialize.before_offline_commit");
    let offline = match offline_writer {
        Some(writer) => tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|error| MaterializeError::Task(error.to_string()))??,
        None => OfflineWriteSummary::default(),
    };
    crash_point("materialize.after_offline_commit");
    if let Some(selected) = &inputs {
        let manifest = InputManifest::new(view, selected.listed.clone(), selected.erased_entities);
        selected.manifests.save(view, &manifest)?;
        let read = match &selected.read {
            InputRead::Added(files) => files.len(),
            _ => selected.listed.len(),
        };
        report.files_read = read as u64;
        report.files_unchanged = (selected.listed.len() - read) as u64;
        if appending {
            watermark = watermark.max(options.previous_watermark);
        }
    }
    report.status = "succeeded".to_string();
    report.rows_scanned = rows_scanned;
    report.rows_changed = changes.new + changes.changed;
    report.rows_written = changes.online.written;
    report.rows_unchanged = changes.unchanged;
    report.rows_skipped = if view.online {
        rows_scanned.saturating_sub(report.rows_changed)
    } else {
        0
    };
    report.watermark = watermark.map(Timestamp::to_rfc3339);
    report.offline_rows = offline.rows;
    report.offline_partitions = offline.partitions;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The source files a run reads, when the view's files are tracked.
struct SelectedInputs {
    /// Where the run saves its manifest when it succeeds.
    manifests: InputManifests,
    /// Every file of the view's source now: the manifest the run saves.
    listed: Vec<larder_offline::InputFile>,
    read: InputRead,
    /// Entities erased when the run started.
    erased_entities: u64,
}

/// Which of the listed files a run reads.
enum InputRead {
    /// All of them.
    Every,
    /// Only these, added since the last run (their offline rows are appended).
    Added(Vec<larder_offline::InputFile>),
    /// None: they are the files of the last run.
    Nothing,
}

/// What a run reads, and the offline writer that appends the rows of added files.
type InputSelection = (Option<SelectedInputs>, Option<Box<dyn OfflineWriter>>);

/// Lists the view's source files and decides which the run reads, for a full run with
/// manifests (`None` otherwise: the run reads its sources as they are). A run that writes
/// anything removes the view's manifest first and saves a new one only once it has
/// committed, so after a crash (or a window run, which rewrites rows of files the manifest
/// would call read) the next run reads every file.
async fn select_inputs(
    engine: &dyn OfflineEngine,
    offline_store: &dyn OfflineStore,
    view: &FeatureView,
    options: &MaterializeOptions,
    full_run: bool,
) -> Result<InputSelection, MaterializeError> {
    let Some(manifests) = &options.inputs else {
        return Ok((None, None));
    };
    // Checks over the whole output (uniqueness, row count, freshness) need every row.
    let row_checks_only = view.checks.iter().all(|check| {
        matches!(
            check.rule,
            larder_core::CheckRule::NotNull { .. }
                | larder_core::CheckRule::Range { .. }
                | larder_core::CheckRule::AllowedValues { .. }
        )
    });
    let listed = if full_run && row_checks_only {
        engine.view_input_files(view).await?
    } else {
        None
    };
    let Some(listed) = listed else {
        manifests.remove(view)?;
        return Ok((None, None));
    };
    let previous = manifests.load(view)?;
    let erased_entities = options
        .forgotten
        .as_ref()
        .map_or(0, |forgotten| forgotten.len() as u64);
    let plan = match previous {
        Some(manifest) if !options.full_refresh => manifest.plan(view, &listed, erased_entities),
        _ => InputPlan::All,
    };
    let mut writer = None;
    let read = match plan {
        InputPlan::Unchanged => InputRead::Nothing,
        InputPlan::All => InputRead::Every,
        InputPlan::Added(files) => {
            if view.offline {
                writer = offline_store.begin_append_write(view, &append_tag(&files))?;
            }
            if view.offline && writer.is_none() {
                // This store only replaces: the run rewrites every row.
                InputRead::Every
            } else {
                InputRead::Added(files)
            }
        }
    };
    if !matches!(read, InputRead::Nothing) {
        manifests.remove(view)?;
    }
    Ok((
        Some(SelectedInputs {
            manifests: manifests.clone(),
            listed,
            read,
            erased_entities,
        }),
        writer,
    ))
}

/// A name for the offline files of the rows of `files`, from the files' identities.
fn append_tag(files: &[larder_offline::InputFile]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for file in files {
        hasher.update(file.url.as_bytes());
        hasher.update(file.size.to_le_bytes());
        hasher.update(file.modified_micros.to_le_bytes());
        hasher.update(file.e_tag.as_deref().unwrap_or_default().as_bytes());
    }
    hex::encode(&hasher.finalize()[..12])
}

/// Deletes online every entity that has a digest (was materialized before) and is not in
/// `seen`, then its digest; returns how many rows existed. The row goes first: a crash in
/// between leaves a digest without a row, which the next full run deletes again.
async fn delete_missing(
    write_path: &WritePath,
    digests: &dyn DigestStore,
    view: &FeatureView,
    seen: &RunWinners,
) -> Result<u64, MaterializeError> {
    let table = view.id();
    let known = digests.list_keys(&table).await.map_err(WriteError::Store)?;
    let missing: Vec<larder_core::EntityKey> = known
        .into_iter()
        .filter(|key| !seen.contains(key.as_bytes()))
        .collect();
    let mut deleted = 0;
    for chunk in missing.chunks(10_000) {
        deleted += write_path
            .store()
            .delete_rows(&table, chunk)
            .await
            .map_err(WriteError::Store)?;
        digests
            .delete_digests(&table, chunk)
            .await
            .map_err(WriteError::Store)?;
    }
    Ok(deleted)
}

struct ConvertedRows {
    /// The rows to compare and write online (none for an offline-only view).
    rows: EncodedRows,
    scanned: usize,
    newest_event_timestamp: Option<Timestamp>,
}

impl ConvertedRows {
    fn len(&self) -> usize {
        self.scanned
    }
}

/// Converts a transformation batch to the view's canonical columns and encodes its rows for
/// the online comparison (none for an offline-only view).
fn convert_batch(
    view: &FeatureView,
    record_batch: &arrow::array::RecordBatch,
) -> Result<(std::sync::Arc<ViewBatch>, ConvertedRows), MaterializeError> {
    let view_batch = ViewBatch::from_batch(view, record_batch)?;
    let scanned = view_batch.num_rows();
    let newest_event_timestamp = (0..scanned)
        .map(|row| view_batch.event_timestamp(row))
        .max();
    let mut rows = EncodedRows::default();
    if view.online {
        // Room for every row's values at a typical ~9 bytes per feature (at most 64 MiB up
        // front, whatever the batch size and feature count); the buffer grows as needed.
        let expected_bytes = scanned.saturating_mul(view.features.len() * 9 + 2);
        rows = EncodedRows::with_capacity(scanned, expected_bytes.min(64 << 20));
        for row in 0..scanned {
            rows.push_with(
                view_batch.event_timestamp(row),
                |out| view_batch.write_entity_key(row, out),
                |out| view_batch.write_encoded_feature_values(row, out),
            )
            .map_err(|error| {
                OfflineError::Schema(format!("feature view '{}': {error}", view.name))
            })?;
        }
    }
    Ok((
        std::sync::Arc::new(view_batch),
        ConvertedRows {
            rows,
            scanned,
            newest_event_timestamp,
        },
    ))
}
