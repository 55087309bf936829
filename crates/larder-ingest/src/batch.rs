//! The batch lane: run a feature view's transformation over its sources, write every row to
//! the offline store and the newest row per entity to the online store.

use std::time::{Duration, Instant};

use futures::StreamExt;
use larder_core::{FeatureView, FeatureViewId, WriteLane};
use larder_offline::{
    OfflineError, OfflineStore, OfflineWriteSummary, OfflineWriter, TimeWindow, TransformEngine,
    ViewBatch,
};
use larder_online::WriteSummary;

use crate::write_path::{FeatureRow, WriteError, WritePath};

/// Receives progress while a view is materialized (a progress bar, metrics).
pub trait MaterializeProgress: Send + Sync {
    /// `rows` more rows were processed.
    fn rows_processed(&self, rows: u64);
}

/// Ignores progress.
impl MaterializeProgress for () {
    fn rows_processed(&self, _rows: u64) {}
}

/// What materializing one view did.
#[derive(Debug, Clone, PartialEq)]
pub struct MaterializeReport {
    /// The view version.
    pub view: FeatureViewId,
    /// Rows produced by the transformation.
    pub rows_scanned: u64,
    /// Online writes: rows stored and rows skipped as older than the stored value.
    pub online: WriteSummary,
    /// Offline writes.
    pub offline: OfflineWriteSummary,
    /// Wall time.
    pub duration: Duration,
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
/// writes them online through the write path, which keeps the newest row per entity.
pub async fn materialize_view(
    engine: &TransformEngine,
    offline_store: &dyn OfflineStore,
    write_path: &WritePath,
    view: &FeatureView,
    window: TimeWindow,
    progress: &dyn MaterializeProgress,
) -> Result<MaterializeReport, MaterializeError> {
    if !view.online && !view.offline {
        return Err(MaterializeError::NotMaterializable {
            view: view.name.clone(),
            reason: "it is neither online nor offline".to_string(),
        });
    }
    let started = Instant::now();
    let mut stream = engine.execute_view(view, window).await?;
    let mut offline_writer: Option<Box<dyn OfflineWriter>> = if view.offline {
        Some(offline_store.begin_write(view)?)
    } else {
        None
    };
    let mut rows_scanned = 0u64;
    let mut online = WriteSummary::default();
    while let Some(next) = stream.next().await {
        let record_batch = next.map_err(|source| OfflineError::Query {
            context: format!("feature view '{}'", view.name),
            source,
        })?;
        if record_batch.num_rows() == 0 {
            continue;
        }
        let view_for_task = view.clone();
        let writer_for_task = offline_writer.take();
        // Arrow casting, Parquet encoding and row conversion are CPU work: keep them off the
        // async workers.
        let (writer_back, feature_rows) = tokio::task::spawn_blocking(move || {
            convert_batch(&view_for_task, &record_batch, writer_for_task)
        })
        .await
        .map_err(|error| MaterializeError::Task(error.to_string()))??;
        offline_writer = writer_back;
        let scanned = feature_rows.len() as u64;
        rows_scanned += scanned;
        if view.online {
            online.add(
                write_path
                    .write(view, WriteLane::Batch, feature_rows.rows)
                    .await?,
            );
        }
        progress.rows_processed(scanned);
    }
    let offline = match offline_writer {
        Some(writer) => tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|error| MaterializeError::Task(error.to_string()))??,
        None => OfflineWriteSummary::default(),
    };
    Ok(MaterializeReport {
        view: view.id(),
        rows_scanned,
        online,
        offline,
        duration: started.elapsed(),
    })
}

struct ConvertedRows {
    rows: Vec<FeatureRow>,
    scanned: usize,
}

impl ConvertedRows {
    fn len(&self) -> usize {
        self.scanned
    }
}

type ConvertOutput = (Option<Box<dyn OfflineWriter>>, ConvertedRows);

fn convert_batch(
    view: &FeatureView,
    record_batch: &arrow::array::RecordBatch,
    mut offline_writer: Option<Box<dyn OfflineWriter>>,
) -> Result<ConvertOutput, MaterializeError> {
    let view_batch = ViewBatch::from_batch(view, record_batch)?;
    if let Some(writer) = offline_writer.as_mut() {
        writer.write(&view_batch)?;
    }
    let scanned = view_batch.num_rows();
    let mut rows = Vec::new();
    if view.online {
        rows.reserve(scanned);
        for row in 0..scanned {
            let entity_key = view_batch.entity_key(row).map_err(|error| {
                OfflineError::Schema(format!("feature view '{}': {error}", view.name))
            })?;
            rows.push(FeatureRow {
                entity_key,
                event_timestamp: view_batch.event_timestamp(row),
                values: view_batch.feature_values(row),
            });
        }
    }
    Ok((offline_writer, ConvertedRows { rows, scanned }))
}
