//! Row sources that a training set reads: entity files, offline view rows, memory batches.
//! Every source reads its rows in the same order each time it is opened, which is what lets
//! the as-of join refer to a feature row by its ordinal and fetch it in a second pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{
    CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext, ident,
};
use larder_core::FeatureView;

use crate::OfflineError;
use crate::columns::ViewBatch;
use crate::store::{OfflineRows, OfflineStore};

/// Rows that can be read several times, always in the same order.
#[async_trait::async_trait]
pub trait RowSource: Send + Sync + std::fmt::Debug {
    /// The schema of all columns.
    fn schema(&self) -> SchemaRef;

    /// Streams the named columns (in that order) of every row, in the source's fixed order.
    async fn open(&self, columns: &[String]) -> Result<SendableRecordBatchStream, OfflineError>;
}

fn project_schema(schema: &Schema, columns: &[String]) -> Result<SchemaRef, OfflineError> {
    let indices = column_indices(schema, columns)?;
    schema
        .project(&indices)
        .map(Arc::new)
        .map_err(|source| OfflineError::Arrow {
            context: "projecting columns".to_string(),
            source,
        })
}

fn column_indices(schema: &Schema, columns: &[String]) -> Result<Vec<usize>, OfflineError> {
    columns
        .iter()
        .map(|column| {
            schema
                .index_of(column)
                .map_err(|_| OfflineError::InvalidRequest(format!("no column '{column}'")))
        })
        .collect()
}

/// The most rows in one batch that [`MemoryRows`] streams.
const MEMORY_BATCH_ROWS: usize = 8192;

/// A large batch as batches of at most [`MEMORY_BATCH_ROWS`] rows, each with buffers of its
/// own: a sort accounts for a batch's whole buffers, so slices of one large batch would each
/// count as all of it and exhaust a small memory pool.
fn compact_chunks(batch: &RecordBatch) -> Result<Vec<RecordBatch>, OfflineError> {
    if batch.num_rows() <= MEMORY_BATCH_ROWS {
        return Ok(vec![batch.clone()]);
    }
    (0..batch.num_rows())
        .step_by(MEMORY_BATCH_ROWS)
        .map(|start| {
            let end = (start + MEMORY_BATCH_ROWS).min(batch.num_rows());
            let indices = arrow::array::UInt32Array::from_iter_values(start as u32..end as u32);
            arrow::compute::take_record_batch(batch, &indices).map_err(|source| {
                OfflineError::Arrow {
                    context: "splitting rows into batches".to_string(),
                    source,
                }
            })
        })
        .collect()
}

/// Record batches held in memory (tests, small requests, HTTP bodies).
#[derive(Debug, Clone)]
pub struct MemoryRows {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl MemoryRows {
    /// Rows of the given batches, which must all have `schema`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        Self { schema, batches }
    }
}

#[async_trait::async_trait]
impl RowSource for MemoryRows {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn open(&self, columns: &[String]) -> Result<SendableRecordBatchStream, OfflineError> {
        let indices = column_indices(&self.schema, columns)?;
        let projected_schema = project_schema(&self.schema, columns)?;
        let mut batches = Vec::new();
        for batch in &self.batches {
            let projected = batch
                .project(&indices)
                .map_err(|source| OfflineError::Arrow {
                    context: "projecting columns".to_string(),
                    source,
                })?;
            batches.extend(compact_chunks(&projected)?.into_iter().map(Ok));
        }
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            projected_schema,
            futures::stream::iter(batches),
        )))
    }
}

/// The format of an entity file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityFileFormat {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
}

impl EntityFileFormat {
    /// The format a path's extension names (`.csv` is CSV, anything else Parquet).
    pub fn of_path(path: &Path) -> Self {
        let is_csv = path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"));
        if is_csv { Self::Csv } else { Self::Parquet }
    }
}

/// An entity table in a Parquet or CSV file, read on one partition so that row order is kept.
#[derive(Debug, Clone)]
pub struct EntityFile {
    path: PathBuf,
    format: EntityFileFormat,
    schema: SchemaRef,
}

impl EntityFile {
    async fn register(
        path: &Path,
        format: EntityFileFormat,
    ) -> Result<SessionContext, OfflineError> {
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        // Entity columns come back as they are: text stays `Utf8`, not DataFusion's view type.
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let context = SessionContext::new_with_config(config);
        let location = path.to_string_lossy().to_string();
        let extension = path
            .extension()
            .map(|extension| format!(".{}", extension.to_string_lossy()))
            .unwrap_or_default();
        let result = match format {
            EntityFileFormat::Parquet => {
                let options = ParquetReadOptions {
                    file_extension: &extension,
                    ..ParquetReadOptions::default()
                };
                context
                    .register_parquet("entities", &location, options)
                    .await
            }
            EntityFileFormat::Csv => {
                let options = CsvReadOptions::new()
                    .has_header(true)
                    .file_extension(&extension);
                context.register_csv("entities", &location, options).await
            }
        };
        result.map_err(|source| OfflineError::Query {
            context: format!("entity file {}", path.display()),
            source,
        })?;
        Ok(context)
    }

    /// Opens an entity file (its schema is read now; a missing file is an error).
    pub async fn open_file(path: &Path, format: EntityFileFormat) -> Result<Self, OfflineError> {
        if !path.is_file() {
            return Err(OfflineError::InvalidRequest(format!(
                "entity file {} does not exist",
                path.display()
            )));
        }
        let context = Self::register(path, format).await?;
        let frame = context
            .table("entities")
            .await
            .map_err(|source| OfflineError::Query {
                context: format!("entity file {}", path.display()),
                source,
            })?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        Ok(Self {
            path: path.to_path_buf(),
            format,
            schema,
        })
    }
}

#[async_trait::async_trait]
impl RowSource for EntityFile {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn open(&self, columns: &[String]) -> Result<SendableRecordBatchStream, OfflineError> {
        let context = Self::register(&self.path, self.format).await?;
        let query_error = |source| OfflineError::Query {
            context: format!("entity file {}", self.path.display()),
            source,
        };
        let frame = context.table("entities").await.map_err(query_error)?;
        let frame = frame
            .select(columns.iter().map(ident).collect::<Vec<_>>())
            .map_err(query_error)?;
        frame.execute_stream().await.map_err(query_error)
    }
}

/// The offline rows of one feature view version as a training set reads them: the rows the
/// offline store held when they were taken, in the store's fixed order.
#[derive(Debug, Clone)]
pub struct OfflineViewRows {
    rows: Arc<dyn OfflineRows>,
    schema: SchemaRef,
}

impl OfflineViewRows {
    /// The rows of `view` in `store`, or `None` when the view version was never materialized.
    pub fn of_view(
        store: &dyn OfflineStore,
        view: &FeatureView,
    ) -> Result<Option<Self>, OfflineError> {
        Ok(store.rows(view)?.map(|rows| Self {
            rows,
            schema: ViewBatch::schema_of(view),
        }))
    }
}

#[async_trait::async_trait]
impl RowSource for OfflineViewRows {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn open(&self, columns: &[String]) -> Result<SendableRecordBatchStream, OfflineError> {
        self.rows.read(columns).await
    }
}
