//! The offline engine: where a feature view's SQL runs over its sources (the batch lane) and
//! where training sets are joined. [`OfflineEngine`] is the seam; [`DataFusionEngine`] runs
//! everything in-process with DataFusion (the default); `larder-offline-spark` runs it on Spark.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::execution::object_store::ObjectStoreUrl;
use url::Url;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{
    CsvReadOptions, DataFrame, ParquetReadOptions, SessionConfig, SessionContext, col, lit,
};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use larder_core::{
    DataSource, DataSourceKind, FeatureView, FileFormat, S3Config, Timestamp, is_object_store_path,
};

use crate::OfflineError;
use crate::input_files::{InputFile, list_input_files, row_local_source};
use crate::object_storage::{S3Location, s3_store};
use crate::training::TrainingSetRequest;

/// Lets deltalake read tables under `s3://` through the object store the engine registered
/// for the bucket. Larder only reads Delta tables, so the default log store (which is not
/// safe for concurrent writers on S3) is all it needs; registered once per process.
fn register_s3_delta_log_store() {
    struct ReadOnlyLogStoreFactory;
    impl deltalake::logstore::LogStoreFactory for ReadOnlyLogStoreFactory {
        fn with_options(
            &self,
            prefixed_store: deltalake::logstore::ObjectStoreRef,
            root_store: deltalake::logstore::ObjectStoreRef,
            location: &Url,
            options: &deltalake::logstore::StorageConfig,
        ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
            Ok(deltalake::logstore::default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        if let Ok(scheme) = Url::parse("s3://") {
            let factories = deltalake::logstore::logstore_factories();
            if !factories.contains_key(&scheme) {
                factories.insert(scheme, Arc::new(ReadOnlyLogStoreFactory));
            }
        }
    });
}

/// The extension of a format's files in a directory or prefix.
fn default_extension(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Parquet | FileFormat::Delta => ".parquet",
        FileFormat::Csv => ".csv",
    }
}

/// A half-open event-time window `[start, end)`; an open side is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    /// Inclusive lower bound.
    pub start: Option<Timestamp>,
    /// Exclusive upper bound.
    pub end: Option<Timestamp>,
}

/// Runs the offline compute of the batch lane and of training sets.
///
/// # Specification
///
/// * **Transformations.** A view's rows are its SQL (or its whole source) over the sources it
///   was created with, each a table named after the source. [`OfflineEngine::output_columns`]
///   plans it without reading rows (`larder apply` checks them against the declared
///   features); [`OfflineEngine::execute_view`] streams its rows restricted to a
///   [`TimeWindow`] of the view's timestamp field, as Arrow record batches (any engine can
///   produce the stream with DataFusion's `RecordBatchStreamAdapter`).
/// * **Queries over a view's output.** [`OfflineEngine::view_output_table`] makes the rows of
///   `execute_view` queryable by SQL under a temporary table name for the life of the
///   returned [`ViewOutputTable`] (data-quality checks are such queries: counts, `MAX`,
///   `GROUP BY ... HAVING`, `LIMIT`).
/// * **Training sets.** [`OfflineEngine::training_set`] joins a [`TrainingSetRequest`] point
///   in time: one output row per entity row, in order, with the semantics documented in
///   [`crate::training`] (TTL, ties, nulls); sorts spill beyond `memory_limit_bytes`.
#[async_trait::async_trait]
pub trait OfflineEngine: Send + Sync + std::fmt::Debug {
    /// A short name for messages (`datafusion`).
    fn engine_name(&self) -> &'static str;

    /// The output columns of a view's transformation, planned without reading any rows.
    async fn output_columns(
        &self,
        view: &FeatureView,
    ) -> Result<Vec<(String, DataType)>, OfflineError>;

    /// Runs a view's transformation and streams its rows, restricted to an event-time window.
    async fn execute_view(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<SendableRecordBatchStream, OfflineError>;

    /// Makes a view's rows in `window` queryable by SQL (see the trait docs).
    async fn view_output_table(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<Box<dyn ViewOutputTable>, OfflineError>;

    /// Writes a view's rows in `window` itself, as the Parquet files an offline writer's
    /// [`crate::OfflineWriter::engine_folder`] takes, and streams the rows it wrote (read
    /// back, not computed again) for the online store. `None` (the default): this engine
    /// does not write files, so the rows go through [`OfflineEngine::execute_view`] and the
    /// writer. An engine on a cluster writes from where the rows are computed.
    async fn write_view_files(
        &self,
        view: &FeatureView,
        window: TimeWindow,
        folder: &Path,
    ) -> Result<Option<SendableRecordBatchStream>, OfflineError> {
        let _ = (view, window, folder);
        Ok(None)
    }

    /// The files a view's rows come from, when the view's output is the union of what each
    /// file gives on its own (its SQL only projects and filters rows of one file source with
    /// deterministic expressions), so that a run may read only the files added since the
    /// last one. `None` (the default): the view is not such a view, or this engine cannot
    /// tell.
    async fn view_input_files(
        &self,
        view: &FeatureView,
    ) -> Result<Option<Vec<InputFile>>, OfflineError> {
        let _ = view;
        Ok(None)
    }

    /// An engine that runs `view` as this one does, except that its source reads only
    /// `files` (some of those [`OfflineEngine::view_input_files`] listed).
    async fn over_input_files(
        &self,
        view: &FeatureView,
        files: &[InputFile],
    ) -> Result<Box<dyn OfflineEngine>, OfflineError> {
        let _ = files;
        Err(OfflineError::Unsupported(format!(
            "the {} engine cannot read a subset of the files of feature view '{}'",
            self.engine_name(),
            view.name
        )))
    }

    /// Builds a point-in-time correct training set (see the trait docs).
    async fn training_set(
        &self,
        request: &TrainingSetRequest,
        memory_limit_bytes: usize,
    ) -> Result<SendableRecordBatchStream, OfflineError>;
}

/// A shared handle to any offline engine.
pub type SharedOfflineEngine = Arc<dyn OfflineEngine>;

/// A view's output, queryable by SQL under [`ViewOutputTable::name`] until dropped.
#[async_trait::async_trait]
pub trait ViewOutputTable: Send + Sync {
    /// The table's name in queries.
    fn name(&self) -> &str;

    /// Runs `sql` and collects its rows.
    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, OfflineError>;
}

/// The in-process engine: DataFusion over local and S3 files and Delta tables. Every batch
/// (file) source it is created with is a table named after the source, so a view's SQL may
/// read and join any of them.
pub struct DataFusionEngine {
    context: SessionContext,
    repo_root: PathBuf,
    s3: S3Config,
    /// Buckets whose object store is registered with the session.
    registered_buckets: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Each registered source's path, to name the files behind a failed read.
    source_paths: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// The Parquet and CSV sources, by every name a query may use, with where their files are.
    file_sources: std::sync::Mutex<std::collections::BTreeMap<String, FileSource>>,
}

/// Where a registered Parquet or CSV source's files are, and how to read them.
#[derive(Debug, Clone)]
struct FileSource {
    /// The source's own name.
    name: String,
    /// The listing location (a file, a folder or prefix, a glob).
    location: String,
    /// The extension of its files (`.parquet`).
    extension: String,
    format: FileFormat,
    /// The schema of the whole source, so that a subset of its files reads the same columns.
    schema: arrow::datatypes::SchemaRef,
}

impl std::fmt::Debug for DataFusionEngine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DataFusionEngine")
            .field("repo_root", &self.repo_root)
            .finish_non_exhaustive()
    }
}

impl DataFusionEngine {
    /// Creates an engine and registers the given sources; local paths are relative to
    /// `repo_root`, `s3://` paths are read with `s3`. Sources that are not batch sources
    /// (streams, push) are skipped. Query results come in batches of up to `batch_rows`
    /// rows (the repo's `materialize.batch_rows`, 64k by default: the batch lane's per-batch
    /// costs, a digest read and an online write transaction, are paid 8 times less often
    /// than with DataFusion's default 8k).
    pub async fn new<'a>(
        repo_root: &Path,
        s3: &S3Config,
        batch_rows: usize,
        sources: impl IntoIterator<Item = &'a DataSource>,
    ) -> Result<Self, OfflineError> {
        let config = SessionConfig::new()
            .with_information_schema(false)
            .with_batch_size(batch_rows.max(1));
        let engine = Self {
            context: SessionContext::new_with_config(config),
            repo_root: repo_root.to_path_buf(),
            s3: s3.clone(),
            registered_buckets: std::sync::Mutex::default(),
            source_paths: std::sync::Mutex::default(),
            file_sources: std::sync::Mutex::default(),
        };
        for source in sources {
            engine.register_source(source).await?;
        }
        Ok(engine)
    }

    /// An engine with no sources, for training sets (which read the offline store, not the
    /// sources).
    pub fn without_sources() -> Self {
        Self {
            context: SessionContext::new(),
            repo_root: PathBuf::new(),
            s3: S3Config::default(),
            registered_buckets: std::sync::Mutex::default(),
            source_paths: std::sync::Mutex::default(),
            file_sources: std::sync::Mutex::default(),
        }
    }

    async fn register_source(&self, source: &DataSource) -> Result<(), OfflineError> {
        let DataSourceKind::File { path, format } = &source.kind else {
            return Ok(());
        };
        let (location, extension) = if is_object_store_path(path) {
            self.remote_location(source, path, *format)?
        } else {
            self.local_location(source, path, *format)?
        };
        let mut names = vec![source.name.clone()];
        if source.name.to_lowercase() != source.name {
            // Unquoted identifiers in SQL are lower-cased by DataFusion.
            names.push(source.name.to_lowercase());
        }
        self.source_paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(source.name.clone(), path.clone());
        let query_error = |source_error| OfflineError::Query {
            context: format!("source '{}' ({})", source.name, path),
            source: source_error,
        };
        let table: Arc<dyn TableProvider> = match format {
            FileFormat::Delta => self.delta_table(source, path, &location).await?,
            FileFormat::Parquet => {
                let options = ParquetReadOptions {
                    file_extension: &extension,
                    ..ParquetReadOptions::default()
                };
                self.context
                    .read_parquet(location.as_str(), options)
                    .await
                    .map_err(query_error)?
                    .into_view()
            }
            FileFormat::Csv => {
                let options = CsvReadOptions::new()
                    .has_header(true)
                    .file_extension(&extension);
                self.context
                    .read_csv(location.as_str(), options)
                    .await
                    .map_err(query_error)?
                    .into_view()
            }
        };
        if *format != FileFormat::Delta {
            let file_source = FileSource {
                name: source.name.clone(),
                location: location.clone(),
                extension: extension.clone(),
                format: *format,
                schema: table.schema(),
            };
            let mut file_sources = self
                .file_sources
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in &names {
                file_sources.insert(name.clone(), file_source.clone());
            }
        }
        for name in names {
            self.context
                .register_table(name.as_str(), Arc::clone(&table))
                .map_err(query_error)?;
        }
        Ok(())
    }

    /// The file source a view's plan reads, when the plan is row-local over it.
    async fn row_local_file_source(
        &self,
        view: &FeatureView,
    ) -> Result<Option<FileSource>, OfflineError> {
        let frame = self.view_frame(view).await?;
        let Some(table) = row_local_source(frame.logical_plan()) else {
            return Ok(None);
        };
        Ok(self
            .file_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&table)
            .cloned())
    }

    /// Opens a Delta table at its latest version as a DataFusion table; `location` is its
    /// root (a local path or an `s3://` URL whose bucket is registered with the session).
    async fn delta_table(
        &self,
        source: &DataSource,
        path: &str,
        location: &str,
    ) -> Result<Arc<dyn TableProvider>, OfflineError> {
        let failed = |what: &str, error: &dyn std::fmt::Display| {
            OfflineError::InvalidRequest(format!(
                "source '{}': {what} Delta table {path}: {error}",
                source.name
            ))
        };
        let url = if is_object_store_path(path) {
            Url::parse(location.trim_end_matches('/'))
                .map_err(|error| failed("locating", &error))?
        } else {
            Url::from_directory_path(location)
                .map_err(|()| failed("locating", &"not an absolute path"))?
        };
        let mut builder = deltalake::DeltaTableBuilder::from_url(url.clone())
            .map_err(|error| failed("opening", &error))?;
        if is_object_store_path(path) {
            register_s3_delta_log_store();
            let bucket = S3Location::parse(path, &format!("source '{}'", source.name))?;
            let store = self
                .context
                .runtime_env()
                .object_store(
                    ObjectStoreUrl::parse(bucket.bucket_url()?.as_str())
                        .map_err(|error| failed("locating", &error))?,
                )
                .map_err(|error| failed("locating", &error))?;
            builder = builder.with_storage_backend(store, url);
        }
        let table = builder
            .load()
            .await
            .map_err(|error| failed("reading", &error))?;
        table
            .update_datafusion_session(&self.context.state())
            .map_err(|error| failed("reading", &error))?;
        table
            .table_provider()
            .await
            .map_err(|error| failed("reading", &error))
    }

    /// The listing location and file extension of a local path (relative to the repo).
    fn local_location(
        &self,
        source: &DataSource,
        path: &str,
        format: FileFormat,
    ) -> Result<(String, String), OfflineError> {
        let resolved = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.repo_root.join(path)
        };
        let is_glob = path.contains(['*', '?', '[']);
        if !is_glob && !resolved.exists() {
            return Err(OfflineError::Io {
                context: format!("source '{}': reading {}", source.name, resolved.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
        let extension = if resolved.is_file() || is_glob {
            resolved
                .extension()
                .map(|extension| format!(".{}", extension.to_string_lossy()))
                .unwrap_or_default()
        } else {
            default_extension(format).to_string()
        };
        Ok((resolved.to_string_lossy().to_string(), extension))
    }

    /// The listing location and file extension of an `s3://` path (a key, a prefix ending
    /// in `/`); registers the bucket's object store with the session on first use.
    fn remote_location(
        &self,
        source: &DataSource,
        path: &str,
        format: FileFormat,
    ) -> Result<(String, String), OfflineError> {
        let location = S3Location::parse(path, &format!("source '{}'", source.name))?;
        let newly_seen = self
            .registered_buckets
            .lock()
            .map_err(|_| OfflineError::InvalidRequest("bucket registry poisoned".to_string()))?
            .insert(location.bucket.clone());
        if newly_seen {
            let store = s3_store(&self.s3, &location.bucket)?;
            self.context
                .register_object_store(&location.bucket_url()?, store);
        }
        let last_segment = path.rsplit('/').next().unwrap_or_default();
        let extension = match Path::new(last_segment).extension() {
            Some(extension) => format!(".{}", extension.to_string_lossy()),
            None => default_extension(format).to_string(),
        };
        Ok((location.url.to_string(), extension))
    }

    /// The SQL that produces a view's rows: its transformation, or the whole source.
    pub fn view_sql(view: &FeatureView) -> String {
        match &view.transformation {
            Some(sql) => sql.trim().trim_end_matches(';').to_string(),
            None => format!("SELECT * FROM \"{}\"", view.source),
        }
    }

    /// The sources a view reads (its source and those its SQL names), with their paths.
    fn inputs_of(&self, view: &FeatureView) -> String {
        let sql = Self::view_sql(view).to_lowercase();
        let paths = self
            .source_paths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let read: Vec<String> = paths
            .iter()
            .filter(|(name, _)| *name == &view.source || sql.contains(&name.to_lowercase()))
            .map(|(name, path)| format!("source '{name}' ({path})"))
            .collect();
        if read.is_empty() {
            format!("the sources of feature view '{}'", view.name)
        } else {
            read.join(", ")
        }
    }

    fn view_context(view: &FeatureView) -> String {
        match &view.transformation_path {
            Some(path) => format!("feature view '{}' ({path})", view.name),
            None => format!("feature view '{}'", view.name),
        }
    }

    async fn view_frame(&self, view: &FeatureView) -> Result<DataFrame, OfflineError> {
        self.context
            .sql(&Self::view_sql(view))
            .await
            .map_err(|source| OfflineError::Query {
                context: Self::view_context(view),
                source,
            })
    }

    async fn planned_output_columns(
        &self,
        view: &FeatureView,
    ) -> Result<Vec<(String, DataType)>, OfflineError> {
        let frame = self.view_frame(view).await?;
        Ok(frame
            .schema()
            .fields()
            .iter()
            .map(|field| (field.name().clone(), field.data_type().clone()))
            .collect())
    }

    async fn execute_view_frame(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        let frame = self.view_frame_in_window(view, window).await?;
        let stream = frame
            .execute_stream()
            .await
            .map_err(|source| OfflineError::Query {
                context: Self::view_context(view),
                source,
            })?;
        // A file that fails mid-read (corrupt pages) is reported by DataFusion without its
        // path: name the files the view reads.
        let inputs = self.inputs_of(view);
        let schema = stream.schema();
        let named = stream.map(move |batch| {
            batch.map_err(|error| {
                DataFusionError::Context(format!("reading {inputs}"), Box::new(error))
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, named)))
    }

    /// A view's transformation restricted to an event-time window, as a DataFrame (planned,
    /// not run).
    async fn view_frame_in_window(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<DataFrame, OfflineError> {
        let mut frame = self.view_frame(view).await?;
        let bound = |timestamp: Timestamp| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(timestamp.as_micros()),
                Some("UTC".into()),
            ))
        };
        if let Some(start) = window.start {
            frame = frame
                .filter(col(format!("\"{}\"", view.timestamp_field)).gt_eq(bound(start)))
                .map_err(|source| OfflineError::Query {
                    context: Self::view_context(view),
                    source,
                })?;
        }
        if let Some(end) = window.end {
            frame = frame
                .filter(col(format!("\"{}\"", view.timestamp_field)).lt(bound(end)))
                .map_err(|source| OfflineError::Query {
                    context: Self::view_context(view),
                    source,
                })?;
        }
        Ok(frame)
    }
}

#[async_trait::async_trait]
impl OfflineEngine for DataFusionEngine {
    fn engine_name(&self) -> &'static str {
        "datafusion"
    }

    async fn output_columns(
        &self,
        view: &FeatureView,
    ) -> Result<Vec<(String, DataType)>, OfflineError> {
        self.planned_output_columns(view).await
    }

    async fn execute_view(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        self.execute_view_frame(view, window).await
    }

    async fn view_input_files(
        &self,
        view: &FeatureView,
    ) -> Result<Option<Vec<InputFile>>, OfflineError> {
        let Some(source) = self.row_local_file_source(view).await? else {
            return Ok(None);
        };
        list_input_files(&self.context, &source.location, &source.extension)
            .await
            .map(Some)
    }

    async fn over_input_files(
        &self,
        view: &FeatureView,
        files: &[InputFile],
    ) -> Result<Box<dyn OfflineEngine>, OfflineError> {
        let Some(source) = self.row_local_file_source(view).await? else {
            return Err(OfflineError::Unsupported(format!(
                "feature view '{}' does not read one file source row by row",
                view.name
            )));
        };
        // The same configuration and object stores, and only this source, over `files`.
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(self.context.copied_config())
            .with_runtime_env(self.context.runtime_env())
            .with_default_features()
            .build();
        let context = SessionContext::new_with_state(state);
        let query_error = |source_error| OfflineError::Query {
            context: format!("source '{}' ({})", source.name, source.location),
            source: source_error,
        };
        let urls: Vec<String> = files.iter().map(|file| file.url.clone()).collect();
        let table: Arc<dyn TableProvider> = if urls.is_empty() {
            Arc::new(
                datafusion::datasource::MemTable::try_new(Arc::clone(&source.schema), vec![vec![]])
                    .map_err(query_error)?,
            )
        } else {
            match source.format {
                FileFormat::Csv => {
                    let options = CsvReadOptions::new()
                        .has_header(true)
                        .file_extension(&source.extension)
                        .schema(source.schema.as_ref());
                    context.read_csv(urls, options).await
                }
                FileFormat::Parquet | FileFormat::Delta => {
                    let options = ParquetReadOptions {
                        file_extension: &source.extension,
                        schema: Some(source.schema.as_ref()),
                        ..ParquetReadOptions::default()
                    };
                    context.read_parquet(urls, options).await
                }
            }
            .map_err(query_error)?
            .into_view()
        };
        let mut names = vec![source.name.clone()];
        if source.name.to_lowercase() != source.name {
            names.push(source.name.to_lowercase());
        }
        for name in &names {
            context
                .register_table(name.as_str(), Arc::clone(&table))
                .map_err(query_error)?;
        }
        let source_paths = std::collections::BTreeMap::from([(
            source.name.clone(),
            format!("{} of {} files", files.len(), source.location),
        )]);
        Ok(Box::new(Self {
            context,
            repo_root: self.repo_root.clone(),
            s3: self.s3.clone(),
            registered_buckets: std::sync::Mutex::default(),
            source_paths: std::sync::Mutex::new(source_paths),
            file_sources: std::sync::Mutex::new(
                names
                    .into_iter()
                    .map(|name| (name, source.clone()))
                    .collect(),
            ),
        }))
    }

    async fn view_output_table(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<Box<dyn ViewOutputTable>, OfflineError> {
        static TABLE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let frame = self.view_frame_in_window(view, window).await?;
        let name = format!(
            "__larder_view_output_{}_{}",
            view.name
                .to_lowercase()
                .replace(|character: char| !character.is_ascii_alphanumeric(), "_"),
            TABLE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let context = format!("queries over feature view '{}'", view.name);
        self.context
            .register_table(name.as_str(), frame.into_view())
            .map_err(|source| OfflineError::Query {
                context: context.clone(),
                source,
            })?;
        Ok(Box::new(DataFusionViewTable {
            session: self.context.clone(),
            name,
            context,
        }))
    }

    async fn training_set(
        &self,
        request: &TrainingSetRequest,
        memory_limit_bytes: usize,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        let session = crate::training::training_session(memory_limit_bytes)?;
        crate::training::build_training_set(&session, request).await
    }
}

/// Runs some feature views on one engine and the rest on another (`offline_engine.views`:
/// the large views on Spark, the small ones in process). A training set runs on the routed
/// engine when any of its views is routed there.
#[derive(Debug)]
pub struct RoutedEngine {
    default: SharedOfflineEngine,
    routed: SharedOfflineEngine,
    routed_views: std::collections::HashSet<String>,
}

impl RoutedEngine {
    /// Views named in `routed_views` run on `routed`, every other view on `default`.
    pub fn new(
        default: SharedOfflineEngine,
        routed: SharedOfflineEngine,
        routed_views: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            default,
            routed,
            routed_views: routed_views.into_iter().collect(),
        }
    }

    fn engine_of(&self, view: &FeatureView) -> &SharedOfflineEngine {
        if self.routed_views.contains(&view.name) {
            &self.routed
        } else {
            &self.default
        }
    }
}

#[async_trait::async_trait]
impl OfflineEngine for RoutedEngine {
    fn engine_name(&self) -> &'static str {
        "routed"
    }

    async fn output_columns(
        &self,
        view: &FeatureView,
    ) -> Result<Vec<(String, DataType)>, OfflineError> {
        self.engine_of(view).output_columns(view).await
    }

    async fn execute_view(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        self.engine_of(view).execute_view(view, window).await
    }

    async fn view_output_table(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<Box<dyn ViewOutputTable>, OfflineError> {
        self.engine_of(view).view_output_table(view, window).await
    }

    async fn write_view_files(
        &self,
        view: &FeatureView,
        window: TimeWindow,
        folder: &Path,
    ) -> Result<Option<SendableRecordBatchStream>, OfflineError> {
        self.engine_of(view)
            .write_view_files(view, window, folder)
            .await
    }

    async fn view_input_files(
        &self,
        view: &FeatureView,
    ) -> Result<Option<Vec<InputFile>>, OfflineError> {
        self.engine_of(view).view_input_files(view).await
    }

    async fn over_input_files(
        &self,
        view: &FeatureView,
        files: &[InputFile],
    ) -> Result<Box<dyn OfflineEngine>, OfflineError> {
        self.engine_of(view).over_input_files(view, files).await
    }

    async fn training_set(
        &self,
        request: &TrainingSetRequest,
        memory_limit_bytes: usize,
    ) -> Result<SendableRecordBatchStream, OfflineError> {
        let routed = request
            .views
            .iter()
            .any(|view_request| self.routed_views.contains(&view_request.view.name));
        let engine = if routed { &self.routed } else { &self.default };
        engine.training_set(request, memory_limit_bytes).await
    }
}

/// A view's output registered with the engine's session; deregistered when dropped.
struct DataFusionViewTable {
    session: SessionContext,
    name: String,
    context: String,
}

#[async_trait::async_trait]
impl ViewOutputTable for DataFusionViewTable {
    fn name(&self) -> &str {
        &self.name
    }

    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, OfflineError> {
        let error = |source| OfflineError::Query {
            context: self.context.clone(),
            source,
        };
        self.session
            .sql(sql)
            .await
            .map_err(error)?
            .collect()
            .await
            .map_err(error)
    }
}

impl Drop for DataFusionViewTable {
    fn drop(&mut self) {
        let _ = self.session.deregister_table(self.name.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn datafusion_engine_passes_the_conformance_suite() {
        let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        crate::engine_conformance::run_all(folder.path(), |root, sources| {
            Box::pin(async move {
                let engine =
                    DataFusionEngine::new(&root, &S3Config::default(), 1024, &sources).await?;
                Ok(Arc::new(engine) as SharedOfflineEngine)
            })
        })
        .await;
    }
}
