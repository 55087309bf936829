//! Row sources that a training set reads: entity files, offline view rows, memory batches.
//! Every source reads its rows in the same order each time it is opened, which is what lets
//! the as-of join refer to a feature row by its ordinal and fetch it in a second pass.

use std::fs::File;
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
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::OfflineError;
use crate::columns::ViewBatch;
use crate::parquet_store::ParquetOfflineStore;

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
        let batches: Vec<_> = self
            .batches
            .iter()
            .map(|batch| {
                batch
                    .project(&indices)
                    .map_err(datafusion::error::DataFusionError::from)
            })
            .collect();
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
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
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

/// The offline rows of one feature view version: its Parquet files in path order (dates
/// ascending), each file's rows in file order.
#[derive(Debug, Clone)]
pub struct OfflineViewRows {
    files: Vec<PathBuf>,
    schema: SchemaRef,
}

fn collect_parquet_files(folder: &Path, files: &mut Vec<PathBuf>) -> Result<(), OfflineError> {
    let entries = std::fs::read_dir(folder).map_err(|source| OfflineError::Io {
        context: format!("listing {}", folder.display()),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| OfflineError::Io {
            context: format!("listing {}", folder.display()),
            source,
        })?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_parquet_files(&path, files)?;
        } else if path
            .extension()
            .is_some_and(|extension| extension == "parquet")
        {
            files.push(path);
        }
    }
    Ok(())
}

impl OfflineViewRows {
    /// The rows of `view` in `store`, or `None` when the view version was never materialized.
    pub fn of_view(
        store: &ParquetOfflineStore,
        view: &FeatureView,
    ) -> Result<Option<Self>, OfflineError> {
        let folder = store.view_path(view);
        if !folder.is_dir() {
            return Ok(None);
        }
        let mut files = Vec::new();
        collect_parquet_files(&folder, &mut files)?;
        files.sort();
        Ok(Some(Self {
            files,
            schema: ViewBatch::schema_of(view),
        }))
    }
}

fn read_parquet_files(
    files: &[PathBuf],
    columns: &[String],
    sender: &tokio::sync::mpsc::Sender<Result<RecordBatch, datafusion::error::DataFusionError>>,
) -> Result<(), OfflineError> {
    for path in files {
        let parquet_error = |source| OfflineError::Parquet {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(|source| OfflineError::Io {
            context: format!("opening {}", path.display()),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
        let file_schema = Arc::clone(builder.schema());
        let file_indices = column_indices(&file_schema, columns).map_err(|_| {
            OfflineError::Schema(format!(
                "offline file {} lacks some of the columns {columns:?}",
                path.display()
            ))
        })?;
        let mut sorted_indices = file_indices.clone();
        sorted_indices.sort_unstable();
        // The reader returns columns in file order; this maps them back to the asked order.
        let reorder: Vec<usize> = file_indices
            .iter()
            .filter_map(|index| sorted_indices.iter().position(|sorted| sorted == index))
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), sorted_indices);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(8192)
            .build()
            .map_err(parquet_error)?;
        for batch in reader {
            let batch = batch
                .and_then(|batch| batch.project(&reorder))
                .map_err(|source| OfflineError::Arrow {
                    context: format!("reading {}", path.display()),
                    source,
                })?;
            if sender.blocking_send(Ok(batch)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl RowSource for OfflineViewRows {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn open(&self, columns: &[String]) -> Result<SendableRecordBatchStream, OfflineError> {
        let projected_schema = project_schema(&self.schema, columns)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let files = self.files.clone();
        let columns = columns.to_vec();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = read_parquet_files(&files, &columns, &sender) {
                let _ = sender.blocking_send(Err(datafusion::error::DataFusionError::External(
                    Box::new(error),
                )));
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            projected_schema,
            stream,
        )))
    }
}
