//! The Spark offline engine: a feature view's SQL and a training set's point-in-time join run
//! on Apache Spark, reached through Spark Connect (gRPC), for data that outgrows one machine.
//!
//! [`SparkEngine`] implements Larder's [`OfflineEngine`] seam, so the batch lane, data-quality
//! checks, `larder apply`'s schema check and training sets use it exactly as they use the
//! in-process DataFusion engine, and the same conformance suite
//! ([`larder_offline::engine_conformance`]) holds both to identical rows.
//!
//! * **Sources** are registered as temporary views of the Spark session, read by Spark's own
//!   data sources from paths the Spark cluster sees (`parquet`, `csv` with a header; a Delta
//!   table as the Parquet files of its current version, listed by Larder; `s3://` paths are
//!   read as `s3a://`, which needs `hadoop-aws` on the Spark side).
//! * **Transformations** are sent as SQL (Spark's dialect, with ANSI double-quoted identifiers
//!   so that `"column"` means a column as in DataFusion); the session runs in UTC. Their rows
//!   come back as Arrow record batches into Larder's one write path (change detection, the
//!   offline store, the online store).
//! * **Training sets**: Larder reads each view's offline rows and the entity rows once, ships
//!   the narrow join columns (keys, times, row numbers, a content hash for ties) to Spark,
//!   which runs the as-of join and returns the winning feature row of each entity row; Larder
//!   then gathers the feature values and writes the result, sharing that code with the
//!   DataFusion engine.
//!
//! Why a client of our own rather than a crate: `spark-connect-rs` 0.0.2 has had no release
//! since 2025-02 and calls itself highly experimental; `spark-connect` 0.3.0 (2026-09) is a
//! few months old with one maintainer; `apache-spark-connect` 4.2.0 builds on
//! arrow 58, which would put a second Arrow into Larder's build (DataFusion 55 uses arrow 59)
//! and hand every batch over as IPC bytes anyway. The protocol subset Larder needs (SQL and
//! read relations, local relations, temporary views, Arrow results) is ~100 lines of proto
//! compiled with the tonic Larder already uses.

mod client;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use larder_core::{
    DataSource, DataSourceKind, FeatureView, FileFormat, ValueType, is_object_store_path,
};
use larder_offline::training::{RemoteAsOfJoin, TrainingSetRequest};
use larder_offline::{DataFusionEngine, OfflineEngine, OfflineError, TimeWindow, ViewOutputTable};

pub use client::{SparkSession, endpoint_of};

/// How long connecting to the Spark Connect server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the Spark client.
#[derive(Debug, thiserror::Error)]
pub enum SparkError {
    /// The configuration cannot work (a malformed `sc://` remote).
    #[error("{0}")]
    Config(String),
    /// The server could not be reached or went away.
    #[error("Spark Connect server {remote} is unreachable: {message}")]
    Unreachable {
        /// The `sc://` remote.
        remote: String,
        /// The transport's message.
        message: String,
    },
    /// Spark refused the request (SQL it cannot parse or analyse, a missing file, ...).
    #[error("Spark: {0}")]
    Rejected(String),
    /// A response Larder could not read.
    #[error("Spark Connect protocol: {0}")]
    Protocol(String),
}

impl SparkError {
    fn in_context(self, context: impl Into<String>) -> OfflineError {
        OfflineError::Engine {
            context: context.into(),
            message: self.to_string(),
        }
    }
}

/// Runs views and training-set joins on Spark (see the crate documentation).
#[derive(Debug, Clone)]
pub struct SparkEngine {
    session: SparkSession,
    batch_rows: usize,
}

/// Numbers the engine's temporary views, which share one Spark session.
static VIEW_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temporary_name(prefix: &str, label: &str) -> String {
    let label: String = label
        .to_lowercase()
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "__larder_{prefix}_{label}_{}",
        VIEW_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Backquotes an identifier for Spark SQL.
fn quoted(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl SparkEngine {
    /// Connects to `remote` (`sc://host:port`) and registers every batch (file) source as a
    /// temporary view named after it; local paths are relative to `repo_root` and must be
    /// readable by the Spark cluster at the same path. Results come in batches of up to
    /// `batch_rows` rows.
    pub async fn connect<'a>(
        remote: &str,
        repo_root: &Path,
        batch_rows: usize,
        sources: impl IntoIterator<Item = &'a DataSource>,
    ) -> Result<Self, OfflineError> {
        let session = SparkSession::connect(remote, CONNECT_TIMEOUT)
            .await
            .map_err(|error| error.in_context("connecting to Spark"))?;
        session
            .collect_sql(&format!(
                "SET spark.sql.execution.arrow.maxRecordsPerBatch={}",
                batch_rows.max(1)
            ))
            .await
            .map_err(|error| error.in_context("configuring the Spark session"))?;
        let engine = Self {
            session,
            batch_rows,
        };
        // Spark resolves paths in its own working folder: hand it absolute ones.
        let repo_root = std::path::absolute(repo_root).map_err(|source| OfflineError::Io {
            context: format!("resolving {}", repo_root.display()),
            source,
        })?;
        for source in sources {
            engine.register_source(&repo_root, source).await?;
        }
        Ok(engine)
    }

    /// The Spark session (for tests and tools that query it directly).
    pub fn session(&self) -> &SparkSession {
        &self.session
    }

    /// Ends the Spark session; its temporary views go with it.
    pub async fn close(&self) -> Result<(), OfflineError> {
        self.session
            .release()
            .await
            .map_err(|error| error.in_context("releasing the Spark session"))
    }

    async fn register_source(
        &self,
        repo_root: &Path,
        source: &DataSource,
    ) -> Result<(), OfflineError> {
        let DataSourceKind::File { path, format } = &source.kind else {
            return Ok(());
        };
        let context = format!("source '{}' ({path})", source.name);
        let location = if is_object_store_path(path) {
            format!("s3a://{}", path.trim_start_matches("s3://"))
        } else if Path::new(path).is_absolute() {
            path.clone()
        } else {
            repo_root.join(path).to_string_lossy().to_string()
        };
        let is_glob = path.contains(['*', '?', '[']);
        if !is_object_store_path(path) && !is_glob && !Path::new(&location).exists() {
            return Err(OfflineError::Io {
                context: format!("{context}: reading {location}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
        let mut options = HashMap::new();
        let (spark_format, paths) = match format {
            FileFormat::Parquet => ("parquet", vec![location]),
            FileFormat::Csv => {
                options.insert("header".to_string(), "true".to_string());
                options.insert("inferSchema".to_string(), "true".to_string());
                ("csv", vec![location])
            }
            FileFormat::Delta => {
                // Partition columns live in the files' folder names (`region=eu/`): Spark
                // discovers them below the table's root.
                options.insert("basePath".to_string(), location.clone());
                ("parquet", delta_files(&location, &context).await?)
            }
        };
        let mut names = vec![source.name.clone()];
        if source.name.to_lowercase() != source.name {
            names.push(source.name.to_lowercase());
        }
        for name in names {
            self.session
                .create_file_view(&name, spark_format, paths.clone(), options.clone())
                .await
                .map_err(|error| error.in_context(context.clone()))?;
        }
        Ok(())
    }

    fn view_context(view: &FeatureView) -> String {
        match &view.transformation_path {
            Some(path) => format!("feature view '{}' ({path})", view.name),
            None => format!("feature view '{}'", view.name),
        }
    }

    /// Where in the view's SQL file Spark's `line L pos P` points (Spark counts in the query
    /// Larder sent: the view's SQL, trimmed, after [`PLAN_PREFIX`] on its first line).
    fn plan_error_context(view: &FeatureView, error: &SparkError) -> String {
        let (Some(path), Some(original), SparkError::Rejected(message)) =
            (&view.transformation_path, &view.transformation, error)
        else {
            return Self::view_context(view);
        };
        let Some((line, position)) = spark_error_position(message) else {
            return Self::view_context(view);
        };
        let leading_lines = original.len() - original.trim_start().len();
        let skipped_newlines = original[..leading_lines].matches('\n').count();
        let column = if line == 1 {
            position.saturating_sub(PLAN_PREFIX.len()) + 1
        } else {
            position + 1
        };
        format!(
            "feature view '{}' ({path}:{}:{column})",
            view.name,
            line + skipped_newlines
        )
    }

    /// A view's SQL restricted to an event-time window.
    fn windowed_sql(view: &FeatureView, window: TimeWindow) -> String {
        let mut conditions = Vec::new();
        let column = quoted(&view.timestamp_field);
        if let Some(start) = window.start {
            conditions.push(format!(
                "{column} >= timestamp_micros({})",
                start.as_micros()
            ));
        }
        if let Some(end) = window.end {
            conditions.push(format!("{column} < timestamp_micros({})", end.as_micros()));
        }
        let sql = DataFusionEngine::view_sql(view);
        if conditions.is_empty() {
            sql
        } else {
            format!(
                "SELECT * FROM ({sql}) AS __larder_view WHERE {}",
                conditions.join(" AND ")
            )
        }
    }

    async fn stream(
        &self,
        sql: &str,
        context: String,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        let stream = self
            .session
            .stream_sql(sql)
            .await
            .map_err(|error| error.in_context(context.clone()))?;
        let batches = stream.batches.map(move |batch| {
            batch.map_err(|error| {
                DataFusionError::External(Box::new(error.in_context(context.clone())))
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            stream.schema,
            batches,
        )))
    }
}

/// What `output_columns` sends before a view's SQL.
const PLAN_PREFIX: &str = "SELECT * FROM (";

/// The `line L pos P` (1-based line, 0-based position) of a Spark parse or analysis error.
fn spark_error_position(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("line ")? + "line ".len()..];
    let (line, rest) = rest.split_once(" pos ")?;
    let position: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, position.parse().ok()?))
}

/// Spark SQL's name of a Larder type, as Spark writes it to Parquet and Larder reads it back
/// without loss; `None` for vectors (Spark has no fixed-size list).
fn spark_type(value_type: &ValueType) -> Option<String> {
    Some(match value_type {
        ValueType::Bool => "BOOLEAN".to_string(),
        ValueType::Int32 => "INT".to_string(),
        ValueType::Int64 => "BIGINT".to_string(),
        ValueType::Float32 => "FLOAT".to_string(),
        ValueType::Float64 => "DOUBLE".to_string(),
        ValueType::String => "STRING".to_string(),
        ValueType::Bytes => "BINARY".to_string(),
        ValueType::Timestamp => "TIMESTAMP".to_string(),
        ValueType::List(element) => format!("ARRAY<{}>", spark_type(element)?),
        ValueType::Vector(_) => return None,
    })
}

/// A view's canonical columns (join keys, event time, features) with their Spark types;
/// `None` when Spark cannot write one as Larder reads it, or a column is named `date` (the
/// partition column), in which case the rows go through Larder's own writer.
fn canonical_spark_columns(view: &FeatureView) -> Option<Vec<(String, String)>> {
    let mut columns = Vec::new();
    for join_key in &view.join_keys {
        columns.push((join_key.name.clone(), spark_type(&join_key.dtype)?));
    }
    columns.push((view.timestamp_field.clone(), "TIMESTAMP".to_string()));
    for feature in &view.features {
        columns.push((feature.name.clone(), spark_type(&feature.dtype)?));
    }
    if columns
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("date"))
    {
        return None;
    }
    Some(columns)
}

/// The Parquet files of a Delta table's current version (Spark reads them as Parquet, so a
/// Spark without the delta-spark package still reads Delta sources).
async fn delta_files(location: &str, context: &str) -> Result<Vec<String>, OfflineError> {
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        OfflineError::InvalidRequest(format!("{context}: {what} the Delta table: {error}"))
    };
    let url = if location.starts_with("s3a://") {
        url::Url::parse(&location.replacen("s3a://", "s3://", 1))
            .map_err(|error| failed("locating", &error))?
    } else {
        url::Url::from_directory_path(location)
            .map_err(|()| failed("locating", &"not an absolute path"))?
    };
    let table = deltalake::open_table(url)
        .await
        .map_err(|error| failed("reading", &error))?;
    let files: Vec<String> = table
        .get_file_uris()
        .map_err(|error| failed("listing", &error))?
        .map(|uri| uri.replacen("s3://", "s3a://", 1))
        .collect();
    if files.is_empty() {
        return Err(failed("reading", &"it has no data files"));
    }
    Ok(files)
}

#[async_trait::async_trait]
impl OfflineEngine for SparkEngine {
    fn engine_name(&self) -> &'static str {
        "spark"
    }

    async fn output_columns(
        &self,
        view: &FeatureView,
    ) -> Result<Vec<(String, DataType)>, OfflineError> {
        let sql = format!(
            "{PLAN_PREFIX}{}) AS __larder_view LIMIT 0",
            DataFusionEngine::view_sql(view)
        );
        let (schema, _) = self.session.collect_sql(&sql).await.map_err(|error| {
            let context = Self::plan_error_context(view, &error);
            error.in_context(context)
        })?;
        Ok(schema
            .fields()
            .iter()
            .map(|field| (field.name().clone(), field.data_type().clone()))
            .collect())
    }

    async fn execute_view(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        self.stream(&Self::windowed_sql(view, window), Self::view_context(view))
            .await
    }

    async fn view_output_table(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<Box<dyn ViewOutputTable>, OfflineError> {
        let name = temporary_name("view_output", &view.name);
        let context = format!("queries over feature view '{}'", view.name);
        self.session
            .create_sql_view(&name, &Self::windowed_sql(view, window))
            .await
            .map_err(|error| error.in_context(context.clone()))?;
        Ok(Box::new(SparkViewTable {
            session: self.session.clone(),
            name,
            context,
        }))
    }

    async fn write_view_files(
        &self,
        view: &FeatureView,
        window: TimeWindow,
        folder: &Path,
    ) -> Result<Option<SendableRecordBatchStream>, OfflineError> {
        let Some(columns) = canonical_spark_columns(view) else {
            return Ok(None);
        };
        let context = Self::view_context(view);
        let folder_text = std::path::absolute(folder)
            .map_err(|source| OfflineError::Io {
                context: format!("resolving {}", folder.display()),
                source,
            })?
            .to_string_lossy()
            .to_string();
        let projection: Vec<String> = columns
            .iter()
            .map(|(name, spark_type)| format!("CAST({0} AS {spark_type}) AS {0}", quoted(name)))
            .collect();
        let sql = format!(
            "SELECT {}, date_format({}, 'yyyy-MM-dd') AS `date` FROM ({}) AS __larder_rows",
            projection.join(", "),
            quoted(&view.timestamp_field),
            Self::windowed_sql(view, window)
        );
        let mut options = HashMap::new();
        for join_key in &view.join_keys {
            options.insert(
                format!("parquet.bloom.filter.enabled#{}", join_key.name),
                "true".to_string(),
            );
            options.insert(
                format!("parquet.bloom.filter.expected.ndv#{}", join_key.name),
                "262144".to_string(),
            );
        }
        self.session
            .write_parquet(&sql, &folder_text, &["date".to_string()], options)
            .await
            .map_err(|error| error.in_context(format!("{context}: writing offline files")))?;
        let written = folder.is_dir()
            && std::fs::read_dir(folder)
                .map_err(|source| OfflineError::Io {
                    context: format!("listing {}", folder.display()),
                    source,
                })?
                .filter_map(Result::ok)
                .any(|entry| entry.file_name().to_string_lossy().starts_with("date="));
        if !written {
            // No rows: Spark wrote no partition, and there is nothing to read back.
            let schema = larder_offline::ViewBatch::schema_of(view);
            return Ok(Some(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            ))));
        }
        let names: Vec<String> = columns.iter().map(|(name, _)| quoted(name)).collect();
        let read_back = format!(
            "SELECT {} FROM parquet.{}",
            names.join(", "),
            quoted(&folder_text)
        );
        self.stream(&read_back, context).await.map(Some)
    }

    async fn training_set(
        &self,
        request: &TrainingSetRequest,
        memory_limit_bytes: usize,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        // A session of its own: a long-lived server (`larder serve`) would otherwise keep one
        // session past Spark's idle timeout, after which Spark refuses it.
        let joiner =
            Self::connect(self.session.remote(), Path::new("."), self.batch_rows, []).await?;
        let session = larder_offline::training::training_session(memory_limit_bytes)?;
        larder_offline::training::build_training_set_joined_by(&session, request, Some(&joiner))
            .await
    }
}

/// A view's output as a temporary view of the Spark session; dropped with it.
struct SparkViewTable {
    session: SparkSession,
    name: String,
    context: String,
}

#[async_trait::async_trait]
impl ViewOutputTable for SparkViewTable {
    fn name(&self) -> &str {
        &self.name
    }

    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, OfflineError> {
        self.session
            .collect_sql(sql)
            .await
            .map(|(_, batches)| batches)
            .map_err(|error| error.in_context(self.context.clone()))
    }
}

impl Drop for SparkViewTable {
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let session = self.session.clone();
            let name = std::mem::take(&mut self.name);
            runtime.spawn(async move {
                let _ = session.drop_view(&name).await;
            });
        }
    }
}

/// Spark reads no unsigned Arrow integers: row numbers and ordinals (below 2^63) go as
/// `Int64`, and content hashes with their top bit flipped, which keeps their unsigned order
/// under Spark's signed comparison.
fn to_spark_columns(
    batch: &RecordBatch,
    tie_column: Option<usize>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (index, (field, column)) in batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .enumerate()
    {
        let converted: ArrayRef = if Some(index) == tie_column {
            let hashes = column.as_primitive::<UInt64Type>();
            Arc::new(Int64Array::from_iter(
                hashes
                    .iter()
                    .map(|hash| hash.map(|hash| (hash ^ (1 << 63)) as i64)),
            ))
        } else if matches!(field.data_type(), DataType::UInt64) {
            cast(column, &DataType::Int64)?
        } else if matches!(field.data_type(), DataType::Utf8View | DataType::LargeUtf8) {
            cast(column, &DataType::Utf8)?
        } else {
            Arc::clone(column)
        };
        fields.push(Field::new(
            field.name(),
            converted.data_type().clone(),
            true,
        ));
        columns.push(converted);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

impl SparkEngine {
    /// Uploads a narrow stream as a temporary view; returns its column names.
    async fn upload_narrow(
        &self,
        name: &str,
        input: SendableRecordBatchStream,
    ) -> Result<Vec<String>, OfflineError> {
        let input_schema = input.schema();
        let tie_column = input_schema
            .index_of(larder_offline::training::asof::TIE_COLUMN)
            .ok();
        let names: Vec<String> = input_schema
            .fields()
            .iter()
            .map(|field| field.name().clone())
            .collect();
        let empty = to_spark_columns(
            &RecordBatch::new_empty(Arc::clone(&input_schema)),
            tie_column,
        )
        .map_err(|source| OfflineError::Arrow {
            context: "preparing rows for Spark".to_string(),
            source,
        })?;
        let schema: SchemaRef = empty.schema();
        let converted = input.map(move |batch| {
            let batch =
                batch.map_err(|error| SparkError::Protocol(format!("reading rows: {error}")))?;
            to_spark_columns(&batch, tie_column)
                .map_err(|error| SparkError::Protocol(format!("preparing rows for Spark: {error}")))
        });
        self.session
            .upload_view(name, &schema, converted)
            .await
            .map_err(|error| error.in_context("uploading join columns to Spark"))?;
        Ok(names)
    }
}

#[async_trait::async_trait]
impl RemoteAsOfJoin for SparkEngine {
    async fn join(
        &self,
        entities: SendableRecordBatchStream,
        features: SendableRecordBatchStream,
        key_count: usize,
        ttl_micros: Option<i64>,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        use larder_offline::training::asof::{
            ORDINAL_COLUMN, ROW_COLUMN, TIE_COLUMN, TIMESTAMP_COLUMN,
        };
        let entity_view = temporary_name("entities", "join");
        let feature_view = temporary_name("features", "join");
        let entity_columns = self.upload_narrow(&entity_view, entities).await?;
        let feature_columns = self.upload_narrow(&feature_view, features).await?;
        let has_ties = feature_columns.iter().any(|name| name == TIE_COLUMN);
        let mut conditions: Vec<String> = entity_columns[..key_count]
            .iter()
            .zip(&feature_columns[..key_count])
            .map(|(entity, feature)| format!("e.{} = f.{}", quoted(entity), quoted(feature)))
            .collect();
        let ts = quoted(TIMESTAMP_COLUMN);
        conditions.push(format!("f.{ts} <= e.{ts}"));
        if let Some(ttl) = ttl_micros {
            conditions.push(format!("f.{ts} > e.{ts} - {ttl}"));
        }
        let tie = if has_ties {
            format!("f.{}", quoted(TIE_COLUMN))
        } else {
            "0".to_string()
        };
        let row = quoted(ROW_COLUMN);
        let ordinal = quoted(ORDINAL_COLUMN);
        // The winner of each entity row is its greatest (time, tie, ordinal): one hash
        // aggregate over the join, not a window sort.
        let sql = format!(
            "SELECT {row}, best.o AS {ordinal} FROM ( \
               SELECT e.{row} AS {row}, max(named_struct('t', f.{ts}, 'h', {tie}, 'o', f.{ordinal})) AS best \
               FROM {entities} e JOIN {features} f ON {on} \
               GROUP BY e.{row} \
             ) ORDER BY {ordinal}, {row}",
            entities = quoted(&entity_view),
            features = quoted(&feature_view),
            on = conditions.join(" AND "),
        );
        let stream = self
            .session
            .stream_sql(&sql)
            .await
            .map_err(|error| error.in_context("joining feature rows on Spark"))?;
        let schema = larder_offline::training::asof::match_schema();
        let output_schema = Arc::clone(&schema);
        let session = self.session.clone();
        let batches = stream.batches.map(move |batch| {
            let batch = batch.map_err(|error| {
                DataFusionError::External(Box::new(
                    error.in_context("joining feature rows on Spark"),
                ))
            })?;
            let columns: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|column| {
                    Ok(Arc::new(
                        cast(column, &DataType::UInt64)?
                            .as_primitive::<UInt64Type>()
                            .clone(),
                    ) as ArrayRef)
                })
                .collect::<Result<_, arrow::error::ArrowError>>()?;
            Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
        });
        // The uploaded rows go once the result is read (an empty batch ends the stream).
        let batches = batches.chain(futures::stream::once(async move {
            let _ = session.drop_view(&entity_view).await;
            let _ = session.drop_view(&feature_view).await;
            Ok(RecordBatch::new_empty(
                larder_offline::training::asof::match_schema(),
            ))
        }));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            output_schema,
            batches,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder_offline::SharedOfflineEngine;
    use larder_testing::SparkConnectServer;

    #[test]
    fn spark_error_positions_are_read_from_its_messages() {
        assert_eq!(
            spark_error_position(
                "[UNRESOLVED_COLUMN] ... SQLSTATE: 42703; line 3 pos 2;\n'Project"
            ),
            Some((3, 2))
        );
        assert_eq!(
            spark_error_position("[PARSE_SYNTAX_ERROR] no position"),
            None
        );
        assert_eq!(spark_error_position("line x pos 2"), None);
    }

    #[test]
    fn views_spark_cannot_write_as_larder_reads_them_use_larder_s_writer() {
        let mut view = larder_offline::conformance::check_view("spark_types");
        let columns = canonical_spark_columns(&view)
            .unwrap_or_else(|| panic!("a scalar view must be writable by Spark"));
        assert_eq!(
            columns.len(),
            view.join_keys.len() + 1 + view.features.len()
        );
        assert_eq!(
            spark_type(&ValueType::List(Box::new(ValueType::Int32))).as_deref(),
            Some("ARRAY<INT>")
        );
        view.features[0].dtype = ValueType::Vector(8);
        assert!(canonical_spark_columns(&view).is_none(), "vectors");
        let mut view = larder_offline::conformance::check_view("spark_types");
        view.features[0].name = "Date".to_string();
        assert!(
            canonical_spark_columns(&view).is_none(),
            "a column named like the partition"
        );
    }

    /// One Spark server for every check (a JVM takes ~20 s to start): the engine
    /// conformance suite, then the errors a user meets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spark_engine_passes_the_conformance_suite_and_reports_bad_input() {
        let Some(server) = SparkConnectServer::start() else {
            return;
        };
        let remote = server.remote();
        let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let conformance_remote = remote.clone();
        larder_offline::engine_conformance::run_all(folder.path(), move |root, sources| {
            let remote = conformance_remote.clone();
            Box::pin(async move {
                let engine = SparkEngine::connect(&remote, &root, 1024, &sources).await?;
                Ok(Arc::new(engine) as SharedOfflineEngine)
            })
        })
        .await;

        // SQL that Spark rejects names the view and Spark's reason.
        let engine = SparkEngine::connect(&remote, folder.path(), 1024, &[])
            .await
            .unwrap_or_else(|error| panic!("connecting: {error}"));
        let mut view = larder_offline::conformance::check_view("broken");
        view.transformation = Some("SELECT FROM WHERE".to_string());
        view.transformation_path = Some("views/broken.sql".to_string());
        let error = engine
            .output_columns(&view)
            .await
            .err()
            .unwrap_or_else(|| panic!("Spark accepted broken SQL"))
            .to_string();
        assert!(error.contains("(views/broken.sql:"), "{error}");
        // A mistake on the third line of a file that starts with a blank line.
        view.transformation = Some(
            "\nSELECT id AS user_id,\n  id AS ts,\n  no_such_column\nFROM range(3)".to_string(),
        );
        let error = SparkEngine::connect(&remote, folder.path(), 1024, &[])
            .await
            .unwrap_or_else(|error| panic!("connecting: {error}"))
            .output_columns(&view)
            .await
            .err()
            .unwrap_or_else(|| panic!("Spark accepted an unknown column"))
            .to_string();
        assert!(error.contains("(views/broken.sql:4:3): Spark: "), "{error}");
        engine
            .close()
            .await
            .unwrap_or_else(|error| panic!("releasing the session: {error}"));

        // A missing source file is refused before Spark is asked.
        let missing = DataSource {
            name: "missing".to_string(),
            kind: DataSourceKind::File {
                path: "no/such/file.parquet".to_string(),
                format: FileFormat::Parquet,
            },
            timestamp_field: "ts".to_string(),
            description: String::new(),
            owner: String::new(),
            tags: Default::default(),
        };
        let error = SparkEngine::connect(&remote, folder.path(), 1024, [&missing])
            .await
            .err()
            .unwrap_or_else(|| panic!("a missing source was accepted"))
            .to_string();
        assert!(error.contains("source 'missing'"), "{error}");

        // An unreachable server is an error naming it, not a hang.
        drop(server);
        let started = std::time::Instant::now();
        let error = SparkEngine::connect(&remote, folder.path(), 1024, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("connected to a stopped server"))
            .to_string();
        assert!(
            error.contains("unreachable") && error.contains(&remote),
            "{error}"
        );
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(5));
    }
}
