//! The offline store: every materialized row of every feature view version, as Parquet files
//! partitioned by event date.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use larder_core::fault::crash_point;
use larder_core::{EntityKey, FeatureView};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::OfflineError;
use crate::columns::ViewBatch;
use crate::engine::TimeWindow;
use crate::store::{
    OfflineDeleteSummary, OfflineRows, OfflineStore, OfflineWriteSummary, OfflineWriter,
};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The offline store on local Parquet files: `{root}/{view}/v{version}/date=YYYY-MM-DD/*.parquet`.
#[derive(Debug, Clone)]
pub struct ParquetOfflineStore {
    root: PathBuf,
}

impl ParquetOfflineStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder of a view version's rows.
    fn view_path(&self, view: &FeatureView) -> PathBuf {
        self.root
            .join(&view.name)
            .join(format!("v{}", view.version))
    }

    /// The folder readers read: the view version's folder, or, when a commit was killed
    /// between moving the previous rows aside and publishing the new ones, the rows moved
    /// aside (the last committed ones) until the next write puts them back.
    fn committed_view_path(&self, view: &FeatureView) -> PathBuf {
        let final_path = self.view_path(view);
        let aside = aside_path(&final_path, view.version);
        if !final_path.exists() && aside.is_dir() {
            aside
        } else {
            final_path
        }
    }
}

/// Where a commit moves a view version's previous rows while it publishes the new ones.
fn aside_path(final_path: &Path, version: u32) -> PathBuf {
    final_path.with_file_name(format!(".v{version}.old"))
}

/// Finishes what a writer killed mid-commit left (`kill -9`, a power cut): previous rows
/// moved aside but nothing published go back into place; previous rows left aside after a
/// publish are removed; the staging folders of writer processes that are gone are removed.
fn recover_interrupted_writes(final_path: &Path, version: u32) -> Result<(), OfflineError> {
    let aside = aside_path(final_path, version);
    if aside.is_dir() {
        if final_path.exists() {
            std::fs::remove_dir_all(&aside)
                .map_err(io_error(format!("removing {}", aside.display())))?;
        } else {
            std::fs::rename(&aside, final_path).map_err(io_error(format!(
                "restoring {} from {}",
                final_path.display(),
                aside.display()
            )))?;
        }
    }
    let Some(parent) = final_path.parent() else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    let prefix = format!(".v{version}.staging-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(writer_pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        // Linux: a writer whose /proc entry is gone died without cleaning up.
        if Path::new("/proc/self").exists() && !Path::new("/proc").join(writer_pid).exists() {
            let path = entry.path();
            std::fs::remove_dir_all(&path)
                .map_err(io_error(format!("removing {}", path.display())))?;
        }
    }
    Ok(())
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OfflineError {
    let context = context.into();
    move |source| OfflineError::Io { context, source }
}

#[async_trait::async_trait]
impl OfflineStore for ParquetOfflineStore {
    fn backend_name(&self) -> &'static str {
        "parquet"
    }

    fn rows(&self, view: &FeatureView) -> Result<Option<Arc<dyn OfflineRows>>, OfflineError> {
        let folder = self.committed_view_path(view);
        if !folder.is_dir() {
            return Ok(None);
        }
        let files = view_files(&folder)?
            .into_iter()
            .map(|path| {
                let identity = std::fs::metadata(&path)
                    .map(|metadata| FileIdentity::of(&metadata))
                    .map_err(io_error(format!("reading {}", path.display())))?;
                Ok((path, identity))
            })
            .collect::<Result<Vec<_>, OfflineError>>()?;
        Ok(Some(Arc::new(ParquetFileRows {
            view: view.name.clone(),
            files,
            schema: ViewBatch::schema_of(view),
        })))
    }

    /// Reads the join keys of every file of the view version; a file that holds one of the
    /// entities is rewritten without its rows (to a hidden temporary file, synced, then
    /// renamed over the original, so readers see the old file or the new one) or removed
    /// when nothing is left. Files without the entities are not touched.
    fn delete_entities(
        &self,
        view: &FeatureView,
        keys: &[EntityKey],
    ) -> Result<OfflineDeleteSummary, OfflineError> {
        let folder = self.committed_view_path(view);
        let mut summary = OfflineDeleteSummary::default();
        if !folder.is_dir() || keys.is_empty() {
            return Ok(summary);
        }
        let doomed: std::collections::HashSet<&[u8]> =
            keys.iter().map(EntityKey::as_bytes).collect();
        let probes = KeyProbes::new(view, keys)?;
        for path in view_files(&folder)? {
            if !probes.may_hold_any(&path)? {
                summary.files_pruned += 1;
                continue;
            }
            summary.files_scanned += 1;
            let (kept, deleted) = rows_without_entities(view, &path, &doomed)?;
            if deleted == 0 {
                continue;
            }
            summary.rows += deleted;
            summary.files_rewritten += 1;
            if kept.iter().all(|batch| batch.num_rows() == 0) {
                std::fs::remove_file(&path)
                    .map_err(io_error(format!("removing {}", path.display())))?;
                continue;
            }
            let file_name = path
                .file_name()
                .map(|name| name.to_string_lossy().to_string())
                .unwrap_or_default();
            let temporary = path.with_file_name(format!(".{file_name}.rewrite.partial"));
            let schema = kept
                .first()
                .map_or_else(|| ViewBatch::schema_of(view), RecordBatch::schema);
            write_parquet_file(&temporary, &schema, view, &kept)?;
            summary.bytes_written += std::fs::metadata(&temporary)
                .map_err(io_error(format!("reading {}", temporary.display())))?
                .len();
            std::fs::rename(&temporary, &path)
                .map_err(io_error(format!("replacing {}", path.display())))?;
        }
        Ok(summary)
    }

    fn begin_write(&self, view: &FeatureView) -> Result<Box<dyn OfflineWriter>, OfflineError> {
        self.begin_window_write(view, TimeWindow::default())
    }

    fn begin_window_write(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<Box<dyn OfflineWriter>, OfflineError> {
        let is_bounded = window.start.is_some() || window.end.is_some();
        let writer = self.staged_writer(view, is_bounded.then_some(window), None)?;
        Ok(Box::new(writer))
    }

    fn begin_append_write(
        &self,
        view: &FeatureView,
        tag: &str,
    ) -> Result<Option<Box<dyn OfflineWriter>>, OfflineError> {
        let name = format!("part-add-{tag}.parquet");
        let writer = self.staged_writer(view, None, Some(name))?;
        Ok(Some(Box::new(writer)))
    }

    /// Writes each day's rows to a new file beside the partition's existing ones: a hidden
    /// temporary name first, renamed into place once synced, so a reader never sees half a
    /// file. Appended files sort after the materialized `part-*` files and after earlier
    /// appends, so at equal event times the later write wins in training sets.
    fn append(
        &self,
        view: &FeatureView,
        batch: &ViewBatch,
    ) -> Result<OfflineWriteSummary, OfflineError> {
        let final_path = self.view_path(view);
        let unique = format!(
            "push-{:020}-{}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            std::process::id()
        );
        let schema = ViewBatch::schema_of(view);
        let mut summary = OfflineWriteSummary::default();
        for (day, rows) in rows_by_day(batch)? {
            let folder = final_path.join(partition_folder_name(day));
            std::fs::create_dir_all(&folder)
                .map_err(io_error(format!("creating {}", folder.display())))?;
            let temporary = folder.join(format!(".{unique}.parquet.partial"));
            let published = folder.join(format!("{unique}.parquet"));
            write_parquet_file(&temporary, &schema, view, std::slice::from_ref(&rows))?;
            std::fs::rename(&temporary, &published)
                .map_err(io_error(format!("publishing {}", published.display())))?;
            summary.rows += rows.num_rows() as u64;
            summary.files += 1;
            summary.partitions += 1;
        }
        Ok(summary)
    }

    async fn register_view(
        &self,
        context: &SessionContext,
        view: &FeatureView,
        table_name: &str,
    ) -> Result<bool, OfflineError> {
        let path = self.committed_view_path(view);
        if !path.exists() {
            return Ok(false);
        }
        let schema = ViewBatch::schema_of(view);
        let options = ParquetReadOptions {
            schema: Some(schema.as_ref()),
            ..ParquetReadOptions::default()
        };
        context
            .register_parquet(table_name, path.to_string_lossy().as_ref(), options)
            .await
            .map_err(|source| OfflineError::Query {
                context: format!("offline rows of feature view '{}'", view.name),
                source,
            })?;
        Ok(true)
    }
}

impl ParquetOfflineStore {
    /// A writer that stages a view version's files in a hidden folder beside its rows:
    /// replacing all of them (`window: None`), those of an event-time window, or, with an
    /// `append_name`, adding one file of that name to each day's partition.
    fn staged_writer(
        &self,
        view: &FeatureView,
        window: Option<TimeWindow>,
        append_name: Option<String>,
    ) -> Result<ParquetViewWriter, OfflineError> {
        let final_path = self.view_path(view);
        let parent = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        std::fs::create_dir_all(&parent)
            .map_err(io_error(format!("creating {}", parent.display())))?;
        recover_interrupted_writes(&final_path, view.version)?;
        let unique = format!(
            "{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let staging_path = parent.join(format!(".v{}.staging-{unique}", view.version));
        std::fs::create_dir_all(&staging_path)
            .map_err(io_error(format!("creating {}", staging_path.display())))?;
        Ok(ParquetViewWriter {
            view: view.clone(),
            window,
            append_name,
            schema: ViewBatch::schema_of(view),
            staging_path,
            final_path,
            writers: BTreeMap::new(),
            rows: 0,
            committed: false,
        })
    }
}

struct ParquetViewWriter {
    view: FeatureView,
    /// `Some` for a windowed write: only the window's rows are replaced.
    window: Option<TimeWindow>,
    /// `Some` for an append: each day's file is added to its partition under this name.
    append_name: Option<String>,
    schema: arrow::datatypes::SchemaRef,
    staging_path: PathBuf,
    final_path: PathBuf,
    writers: BTreeMap<i64, (PathBuf, ArrowWriter<File>)>,
    rows: u64,
    committed: bool,
}

impl ParquetViewWriter {
    fn write_day(&mut self, day: i64, batch: &RecordBatch) -> Result<(), OfflineError> {
        if !self.writers.contains_key(&day) {
            let date = chrono::DateTime::from_timestamp_micros(day * MICROS_PER_DAY)
                .map(|datetime| datetime.format("%Y-%m-%d").to_string())
                .unwrap_or_else(|| format!("day{day}"));
            let folder = self.staging_path.join(format!("date={date}"));
            std::fs::create_dir_all(&folder)
                .map_err(io_error(format!("creating {}", folder.display())))?;
            let path = folder.join("part-00000.parquet");
            let file =
                File::create(&path).map_err(io_error(format!("creating {}", path.display())))?;
            let writer = ArrowWriter::try_new(
                file,
                Arc::clone(&self.schema),
                Some(writer_properties(&self.schema, &self.view)),
            )
            .map_err(|source| OfflineError::Parquet {
                path: path.display().to_string(),
                source,
            })?;
            self.writers.insert(day, (path, writer));
        }
        if let Some((path, writer)) = self.writers.get_mut(&day) {
            writer
                .write(batch)
                .map_err(|source| OfflineError::Parquet {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        Ok(())
    }
}

impl OfflineWriter for ParquetViewWriter {
    fn write(&mut self, batch: &ViewBatch) -> Result<(), OfflineError> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        self.rows += rows as u64;
        for (day, rows) in rows_by_day(batch)? {
            self.write_day(day, &rows)?;
        }
        Ok(())
    }

    fn engine_folder(&self) -> Option<PathBuf> {
        (self.window.is_none() && self.append_name.is_none()).then(|| self.staging_path.clone())
    }

    fn commit(mut self: Box<Self>) -> Result<OfflineWriteSummary, OfflineError> {
        if let Some(window) = self.window {
            return self.commit_window(window);
        }
        if let Some(name) = self.append_name.take() {
            return self.commit_append(&name);
        }
        let writers = std::mem::take(&mut self.writers);
        let mut partitions = writers.len() as u64;
        if writers.is_empty() {
            // Rows an engine wrote into the staging folder itself (`engine_folder`).
            let (rows, days) = staged_files_summary(&self.staging_path)?;
            self.rows = rows;
            partitions = days;
        }
        for (_, (path, writer)) in writers {
            finish_staged_file(&path, writer)?;
        }
        let old_path = aside_path(&self.final_path, self.view.version);
        if self.final_path.exists() {
            std::fs::rename(&self.final_path, &old_path).map_err(io_error(format!(
                "moving {} aside",
                self.final_path.display()
            )))?;
        }
        crash_point("offline.commit.after_move_aside");
        std::fs::rename(&self.staging_path, &self.final_path).map_err(io_error(format!(
            "publishing {}",
            self.final_path.display()
        )))?;
        self.committed = true;
        crash_point("offline.commit.after_publish");
        if old_path.exists() {
            std::fs::remove_dir_all(&old_path)
                .map_err(io_error(format!("removing {}", old_path.display())))?;
        }
        Ok(OfflineWriteSummary {
            rows: self.rows,
            files: partitions,
            partitions,
        })
    }
}

/// The rows (from the Parquet footers) and date partitions of the files an engine wrote into
/// a staging folder.
fn staged_files_summary(staging: &Path) -> Result<(u64, u64), OfflineError> {
    if !staging.is_dir() {
        return Ok((0, 0));
    }
    let files = view_files(staging)?;
    let mut rows = 0u64;
    let mut days = std::collections::BTreeSet::new();
    for path in &files {
        let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| {
            OfflineError::Parquet {
                path: path.display().to_string(),
                source,
            }
        })?;
        rows += u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or_default();
        if let Some(parent) = path.parent() {
            days.insert(parent.to_path_buf());
        }
    }
    Ok((rows, days.len() as u64))
}

/// A batch read from an offline file in the canonical (projected) schema: columns another
/// writer typed differently but compatibly (Spark names a list's item `element`, say) are
/// cast; the batch then carries the canonical field names and types.
fn conform_to(
    batch: RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// Writes `batches` to a new Parquet file at `path` and syncs it.
fn write_parquet_file(
    path: &Path,
    schema: &arrow::datatypes::SchemaRef,
    view: &FeatureView,
    batches: &[RecordBatch],
) -> Result<(), OfflineError> {
    let file = File::create(path).map_err(io_error(format!("creating {}", path.display())))?;
    let parquet_error = |source| OfflineError::Parquet {
        path: path.display().to_string(),
        source,
    };
    let mut writer = ArrowWriter::try_new(
        file,
        Arc::clone(schema),
        Some(writer_properties(schema, view)),
    )
    .map_err(parquet_error)?;
    for batch in batches {
        writer.write(batch).map_err(parquet_error)?;
    }
    let file = writer.into_inner().map_err(parquet_error)?;
    file.sync_all()
        .map_err(io_error(format!("syncing {}", path.display())))
}

/// Closes a staged Parquet file (its footer written) and syncs it to disk.
fn finish_staged_file(path: &Path, writer: ArrowWriter<File>) -> Result<(), OfflineError> {
    let file = writer
        .into_inner()
        .map_err(|source| OfflineError::Parquet {
            path: path.display().to_string(),
            source,
        })?;
    file.sync_all()
        .map_err(io_error(format!("syncing {}", path.display())))
}

/// The rows of a file without those of the `doomed` entities, and how many were dropped.
/// The join key values of the entities to delete, per join key column, as the bloom filters
/// of the files hash them.
struct KeyProbes {
    /// Per entity, one probe per join key (in the view's order).
    entities: Vec<Vec<Probe>>,
    /// The join key column names, in the view's order.
    columns: Vec<String>,
}

/// One join key value as written to Parquet.
enum Probe {
    Integer(i64),
    Text(String),
}

impl KeyProbes {
    fn new(view: &FeatureView, keys: &[EntityKey]) -> Result<Self, OfflineError> {
        let entities = keys
            .iter()
            .map(|key| {
                let values = key
                    .values()
                    .map_err(|error| OfflineError::InvalidRequest(error.to_string()))?;
                if values.len() != view.join_keys.len() {
                    return Err(OfflineError::InvalidRequest(format!(
                        "an entity key of {} values for feature view '{}', which has {} join keys",
                        values.len(),
                        view.name,
                        view.join_keys.len()
                    )));
                }
                values
                    .into_iter()
                    .map(|value| match value {
                        larder_core::Value::Int64(number) => Ok(Probe::Integer(number)),
                        larder_core::Value::Int32(number) => Ok(Probe::Integer(number.into())),
                        larder_core::Value::String(text) => Ok(Probe::Text(text)),
                        other => Err(OfflineError::InvalidRequest(format!(
                            "a {} cannot be a join key value",
                            other.kind_name()
                        ))),
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            entities,
            columns: view.join_keys.iter().map(|key| key.name.clone()).collect(),
        })
    }

    /// Whether a row group of the file may hold one of the entities, by the join keys'
    /// bloom filters; `true` when a join key has no filter (files written before they
    /// existed) or is not in the file.
    fn may_hold_any(&self, path: &Path) -> Result<bool, OfflineError> {
        use parquet::basic::Type as PhysicalType;
        let parquet_error = |source| OfflineError::Parquet {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
        let descriptor = builder.parquet_schema();
        let mut columns = Vec::with_capacity(self.columns.len());
        for name in &self.columns {
            let Some(index) = descriptor
                .columns()
                .iter()
                .position(|column| column.path().string() == *name)
            else {
                return Ok(true);
            };
            columns.push((index, descriptor.column(index).physical_type()));
        }
        for row_group in 0..builder.metadata().num_row_groups() {
            let mut filters = Vec::with_capacity(columns.len());
            for (index, physical_type) in &columns {
                match builder
                    .get_row_group_column_bloom_filter(row_group, *index)
                    .map_err(parquet_error)?
                {
                    Some(filter) => filters.push((filter, *physical_type)),
                    None => return Ok(true),
                }
            }
            let holds = |entity: &Vec<Probe>| {
                entity
                    .iter()
                    .zip(&filters)
                    .all(
                        |(probe, (filter, physical_type))| match (probe, physical_type) {
                            (Probe::Integer(number), PhysicalType::INT32) => {
                                i32::try_from(*number).is_ok_and(|number| filter.check(&number))
                            }
                            (Probe::Integer(number), _) => filter.check(number),
                            (Probe::Text(text), _) => filter.check(text.as_str()),
                        },
                    )
            };
            if self.entities.iter().any(holds) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn rows_without_entities(
    view: &FeatureView,
    path: &Path,
    doomed: &std::collections::HashSet<&[u8]>,
) -> Result<(Vec<RecordBatch>, u64), OfflineError> {
    // Only the join keys and the event time are decoded, so a file of an older version of
    // the view (other features) is read as it is and rewritten in its own schema.
    let keys_only = FeatureView {
        features: Vec::new(),
        ..view.clone()
    };
    let mut kept_batches = Vec::new();
    let mut deleted = 0;
    let mut key = Vec::new();
    for batch in read_file(path)? {
        let view_batch = ViewBatch::from_batch(&keys_only, &batch)?;
        let mut kept = Vec::with_capacity(view_batch.num_rows());
        for row in 0..view_batch.num_rows() {
            key.clear();
            view_batch
                .write_entity_key(row, &mut key)
                .map_err(|error| OfflineError::Schema(error.to_string()))?;
            if doomed.contains(key.as_slice()) {
                deleted += 1;
            } else {
                kept.push(row as u32);
            }
        }
        let kept_rows = take_record_batch(&batch, &UInt32Array::from(kept)).map_err(|source| {
            OfflineError::Arrow {
                context: format!("dropping rows of {}", path.display()),
                source,
            }
        })?;
        kept_batches.push(kept_rows);
    }
    Ok((kept_batches, deleted))
}

/// Every record batch of one Parquet file.
fn read_file(path: &Path) -> Result<Vec<RecordBatch>, OfflineError> {
    let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
    let parquet_error = |source| OfflineError::Parquet {
        path: path.display().to_string(),
        source,
    };
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_error)?
        .build()
        .map_err(parquet_error)?
        .map(|batch| {
            batch.map_err(|source| OfflineError::Arrow {
                context: format!("reading {}", path.display()),
                source,
            })
        })
        .collect()
}

/// The Parquet files of a view version's folder, in path order (dates ascending; in a date,
/// the materialized `part-*` files, then appended `push-*` files oldest first). Hidden files
/// (writes in progress) are skipped.
fn view_files(folder: &Path) -> Result<Vec<PathBuf>, OfflineError> {
    fn collect(folder: &Path, files: &mut Vec<PathBuf>) -> Result<(), OfflineError> {
        let entries =
            std::fs::read_dir(folder).map_err(io_error(format!("listing {}", folder.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_error(format!("listing {}", folder.display())))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                collect(&path, files)?;
            } else if path
                .extension()
                .is_some_and(|extension| extension == "parquet")
            {
                files.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    collect(folder, &mut files)?;
    files.sort();
    Ok(files)
}

/// What tells one version of a file from another: a rewrite (renamed over the old file)
/// has a new inode, and a new modification time and usually length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    inode: u64,
    length: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileIdentity {
    fn of(metadata: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            inode,
            length: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

/// A view version's Parquet files as they were when the rows were taken, read in path
/// order, each file's rows in file order. A file replaced or removed since is an error
/// ([`OfflineError::Changed`] or I/O), never other rows.
#[derive(Debug, Clone)]
struct ParquetFileRows {
    view: String,
    files: Vec<(PathBuf, FileIdentity)>,
    schema: arrow::datatypes::SchemaRef,
}

#[async_trait::async_trait]
impl OfflineRows for ParquetFileRows {
    async fn read(&self, columns: &[String]) -> Result<SendableRecordBatchStream, OfflineError> {
        let indices = columns
            .iter()
            .map(|column| {
                self.schema
                    .index_of(column)
                    .map_err(|_| OfflineError::InvalidRequest(format!("no column '{column}'")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let projected_schema =
            Arc::new(
                self.schema
                    .project(&indices)
                    .map_err(|source| OfflineError::Arrow {
                        context: "projecting columns".to_string(),
                        source,
                    })?,
            );
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let files = self.files.clone();
        let columns = columns.to_vec();
        let view = self.view.clone();
        let reader_schema = Arc::clone(&projected_schema);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = read_parquet_files(&view, &files, &columns, &reader_schema, &sender)
            {
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

/// Streams the named columns of `files`, in order, into `sender`; a file that is not the one
/// listed any more is an error.
fn read_parquet_files(
    view: &str,
    files: &[(PathBuf, FileIdentity)],
    columns: &[String],
    schema: &arrow::datatypes::SchemaRef,
    sender: &tokio::sync::mpsc::Sender<Result<RecordBatch, datafusion::error::DataFusionError>>,
) -> Result<(), OfflineError> {
    for (path, identity) in files {
        let parquet_error = |source| OfflineError::Parquet {
            path: path.display().to_string(),
            source,
        };
        let changed = || {
            OfflineError::Changed(format!(
                "the offline rows of feature view '{view}' changed while they were read (a \
                 materialization or deletion ran meanwhile): run the request again"
            ))
        };
        let file = File::open(path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => changed(),
            _ => io_error(format!("opening {}", path.display()))(error),
        })?;
        let metadata = file
            .metadata()
            .map_err(io_error(format!("reading {}", path.display())))?;
        if FileIdentity::of(&metadata) != *identity {
            return Err(changed());
        }
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
        let file_schema = Arc::clone(builder.schema());
        let file_indices = columns
            .iter()
            .map(|column| file_schema.index_of(column))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
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
                .and_then(|batch| conform_to(batch, schema))
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

/// Rows per row group of every offline file.
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// False-positive rate of the join keys' bloom filters: about 1 row group in 100 without
/// the entity is read anyway by an erasure.
const KEY_BLOOM_FILTER_FPP: f64 = 0.01;

/// How every offline Parquet file is written. Floating-point and timestamp columns rarely
/// repeat, so they skip dictionary encoding (which would intern every value only to fall
/// back to plain encoding); every other column keeps it. The view's join keys get a bloom
/// filter per row group, so that erasing an entity reads only the row groups that may hold
/// it ([`OfflineStore::delete_entities`]); the filter is sized for a full row group and
/// folded down to what the row group holds.
fn writer_properties(schema: &arrow::datatypes::Schema, view: &FeatureView) -> WriterProperties {
    use arrow::datatypes::DataType;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for join_key in &view.join_keys {
        if schema.field_with_name(&join_key.name).is_ok() {
            let column = parquet::schema::types::ColumnPath::from(join_key.name.as_str());
            builder = builder
                .set_column_bloom_filter_fpp(column.clone(), KEY_BLOOM_FILTER_FPP)
                .set_column_bloom_filter_max_ndv(column, ROW_GROUP_ROWS as u64);
        }
    }
    for field in schema.fields() {
        if matches!(
            field.data_type(),
            DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Timestamp(_, _)
        ) {
            builder = builder.set_column_dictionary_enabled(field.name().as_str().into(), false);
        }
    }
    builder.build()
}

/// A batch's rows split by the UTC day of their event time (one slice when all share a day).
fn rows_by_day(batch: &ViewBatch) -> Result<Vec<(i64, RecordBatch)>, OfflineError> {
    let days: Vec<i64> = (0..batch.num_rows())
        .map(|row| {
            batch
                .event_timestamp(row)
                .as_micros()
                .div_euclid(MICROS_PER_DAY)
        })
        .collect();
    let record_batch = batch.record_batch();
    match days.first() {
        None => return Ok(Vec::new()),
        Some(first) if days.iter().all(|day| day == first) => {
            return Ok(vec![(*first, record_batch.clone())]);
        }
        Some(_) => {}
    }
    let mut indices_by_day: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (row, day) in days.iter().enumerate() {
        indices_by_day.entry(*day).or_default().push(row as u32);
    }
    indices_by_day
        .into_iter()
        .map(|(day, indices)| {
            take_record_batch(record_batch, &UInt32Array::from(indices))
                .map(|rows| (day, rows))
                .map_err(|source| OfflineError::Arrow {
                    context: "splitting rows by date".to_string(),
                    source,
                })
        })
        .collect()
}

/// The day index of a partition folder named `date=YYYY-MM-DD`.
fn partition_day(folder_name: &str) -> Option<i64> {
    let date = folder_name.strip_prefix("date=")?;
    let parsed = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some(
        parsed
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp_micros()
            .div_euclid(MICROS_PER_DAY),
    )
}

/// The folder name of a day's partition.
fn partition_folder_name(day: i64) -> String {
    chrono::DateTime::from_timestamp_micros(day * MICROS_PER_DAY)
        .map(|datetime| format!("date={}", datetime.format("%Y-%m-%d")))
        .unwrap_or_else(|| format!("date=day{day}"))
}

fn window_contains(window: &TimeWindow, micros: i64) -> bool {
    window.start.is_none_or(|start| micros >= start.as_micros())
        && window.end.is_none_or(|end| micros < end.as_micros())
}

fn day_overlaps_window(window: &TimeWindow, day: i64) -> bool {
    let day_start = day * MICROS_PER_DAY;
    let day_end = day_start + MICROS_PER_DAY;
    window.start.is_none_or(|start| day_end > start.as_micros())
        && window.end.is_none_or(|end| day_start < end.as_micros())
}

impl ParquetViewWriter {
    /// Commits a windowed write: every existing date partition that overlaps the window is
    /// rebuilt from its rows outside the window plus the new rows, then swapped in by rename
    /// (partition by partition); partitions outside the window are untouched.
    fn commit_window(
        mut self: Box<Self>,
        window: TimeWindow,
    ) -> Result<OfflineWriteSummary, OfflineError> {
        let new_rows = self.rows;
        std::fs::create_dir_all(&self.final_path)
            .map_err(io_error(format!("creating {}", self.final_path.display())))?;
        let mut overlapping_days = Vec::new();
        let entries = std::fs::read_dir(&self.final_path)
            .map_err(io_error(format!("listing {}", self.final_path.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(io_error(format!("listing {}", self.final_path.display())))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(day) = partition_day(&name)
                && day_overlaps_window(&window, day)
            {
                overlapping_days.push((day, entry.path()));
            }
        }
        for (day, folder) in &overlapping_days {
            self.keep_rows_outside_window(*day, folder, &window)?;
        }
        let writers = std::mem::take(&mut self.writers);
        let partitions = writers.len() as u64;
        let mut staged_days = Vec::new();
        for (day, (path, writer)) in writers {
            finish_staged_file(&path, writer)?;
            staged_days.push(day);
        }
        for day in &staged_days {
            let name = partition_folder_name(*day);
            let staged = self.staging_path.join(&name);
            let published = self.final_path.join(&name);
            let aside = self.staging_path.join(format!("{name}.old"));
            if published.exists() {
                std::fs::rename(&published, &aside)
                    .map_err(io_error(format!("moving {} aside", published.display())))?;
            }
            std::fs::rename(&staged, &published)
                .map_err(io_error(format!("publishing {}", published.display())))?;
        }
        for (day, folder) in &overlapping_days {
            if !staged_days.contains(day) && folder.exists() {
                std::fs::remove_dir_all(folder)
                    .map_err(io_error(format!("removing {}", folder.display())))?;
            }
        }
        // The staging folder (with the partitions moved aside) is removed on drop.
        Ok(OfflineWriteSummary {
            rows: new_rows,
            files: partitions,
            partitions,
        })
    }

    /// Adds each staged day's file to its partition as `name` (replacing a file of that
    /// name).
    fn commit_append(mut self: Box<Self>, name: &str) -> Result<OfflineWriteSummary, OfflineError> {
        let writers = std::mem::take(&mut self.writers);
        let partitions = writers.len() as u64;
        for (day, (path, writer)) in writers {
            finish_staged_file(&path, writer)?;
            let folder = self.final_path.join(partition_folder_name(day));
            std::fs::create_dir_all(&folder)
                .map_err(io_error(format!("creating {}", folder.display())))?;
            let published = folder.join(name);
            std::fs::rename(&path, &published)
                .map_err(io_error(format!("publishing {}", published.display())))?;
            crash_point("offline.append.after_partition");
        }
        // The staging folder is removed on drop.
        Ok(OfflineWriteSummary {
            rows: self.rows,
            files: partitions,
            partitions,
        })
    }

    /// Copies the rows of an existing partition that lie outside the window into staging.
    fn keep_rows_outside_window(
        &mut self,
        day: i64,
        folder: &Path,
        window: &TimeWindow,
    ) -> Result<(), OfflineError> {
        let entries =
            std::fs::read_dir(folder).map_err(io_error(format!("listing {}", folder.display())))?;
        for entry in entries {
            let path = entry
                .map_err(io_error(format!("listing {}", folder.display())))?
                .path();
            if path
                .extension()
                .is_none_or(|extension| extension != "parquet")
            {
                continue;
            }
            let file =
                File::open(&path).map_err(io_error(format!("opening {}", path.display())))?;
            let parquet_error = |source| OfflineError::Parquet {
                path: path.display().to_string(),
                source,
            };
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(parquet_error)?
                    .build()
                    .map_err(parquet_error)?;
            for batch in reader {
                let batch = batch.map_err(|source| OfflineError::Arrow {
                    context: format!("reading {}", path.display()),
                    source,
                })?;
                let view_batch = ViewBatch::from_batch(&self.view, &batch)?;
                let kept: Vec<u32> = (0..view_batch.num_rows())
                    .filter(|row| {
                        !window_contains(window, view_batch.event_timestamp(*row).as_micros())
                    })
                    .map(|row| row as u32)
                    .collect();
                if kept.is_empty() {
                    continue;
                }
                let taken = take_record_batch(view_batch.record_batch(), &UInt32Array::from(kept))
                    .map_err(|source| OfflineError::Arrow {
                        context: "keeping rows outside the window".to_string(),
                        source,
                    })?;
                self.write_day(day, &taken)?;
            }
        }
        Ok(())
    }
}

impl Drop for ParquetViewWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Abandoned: nothing was published, so the staging folder is garbage.
            let _ = std::fs::remove_dir_all(&self.staging_path);
        }
    }
}

#[cfg(test)]
mod conformance_tests {
    use super::*;

    /// Users 1..=30, user `u` on day `u % 3`: three files of ten users each.
    fn three_day_files(store: &ParquetOfflineStore, view: &FeatureView) {
        let rows: Vec<(
            Vec<larder_core::Value>,
            larder_core::Timestamp,
            Vec<larder_core::Value>,
        )> = (1..=30_i64)
            .map(|user| {
                (
                    vec![larder_core::Value::Int64(user)],
                    larder_core::Timestamp(
                        1_767_225_600_000_000 + (user % 3) * MICROS_PER_DAY + user,
                    ),
                    vec![larder_core::Value::Float64(user as f64)],
                )
            })
            .collect();
        let batch = ViewBatch::from_rows(
            view,
            rows.iter()
                .map(|(keys, time, features)| (keys.as_slice(), *time, features.as_slice())),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        let mut writer = store
            .begin_write(view)
            .unwrap_or_else(|error| panic!("{error}"));
        writer
            .write(&batch)
            .unwrap_or_else(|error| panic!("{error}"));
        writer.commit().unwrap_or_else(|error| panic!("{error}"));
    }

    /// Erasure reads only the files whose join-key bloom filters may hold an entity: one
    /// entity is one file read and rewritten, the others pruned unread; an entity in no file
    /// reads nothing.
    #[test]
    fn erasure_reads_only_files_whose_bloom_filters_may_hold_the_entity() {
        let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        let store = ParquetOfflineStore::new(folder.path());
        let view = crate::conformance::check_view("bloom_pruning");
        three_day_files(&store, &view);
        let summary = store
            .delete_entities(&view, &[EntityKey::from_int(7)])
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            (
                summary.rows,
                summary.files_scanned,
                summary.files_rewritten,
                summary.files_pruned
            ),
            (1, 1, 1, 2),
            "{summary:?}"
        );
        let absent = store
            .delete_entities(&view, &[EntityKey::from_int(1_000)])
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            (absent.rows, absent.files_scanned, absent.files_pruned),
            (0, 0, 3)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn parquet_store_passes_the_conformance_suite() {
        let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
        crate::conformance::run_all(&ParquetOfflineStore::new(folder.path())).await;
    }
}
