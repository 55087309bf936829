//! The offline store: every materialized row of every feature view version, as Parquet files
//! partitioned by event date.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use larder_core::FeatureView;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::OfflineError;
use crate::columns::ViewBatch;
use crate::engine::TimeWindow;

const MICROS_PER_DAY: i64 = 86_400_000_000;

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
}

/// Where feature rows are kept for training and backfills.
#[async_trait::async_trait]
pub trait OfflineStore: Send + Sync + std::fmt::Debug {
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
        Err(OfflineError::Schema(format!(
            "this offline store cannot replace an event-time window of feature view '{}'",
            view.name
        )))
    }

    /// Adds rows to a view version's history without replacing any: the direct-write lane's
    /// offline copy. Readers see all of the rows or none of them.
    fn append(
        &self,
        view: &FeatureView,
        batch: &ViewBatch,
    ) -> Result<OfflineWriteSummary, OfflineError> {
        let _ = batch;
        Err(OfflineError::Schema(format!(
            "this offline store cannot append rows to feature view '{}'",
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
    pub fn view_path(&self, view: &FeatureView) -> PathBuf {
        self.root
            .join(&view.name)
            .join(format!("v{}", view.version))
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OfflineError {
    let context = context.into();
    move |source| OfflineError::Io { context, source }
}

#[async_trait::async_trait]
impl OfflineStore for ParquetOfflineStore {
    fn begin_write(&self, view: &FeatureView) -> Result<Box<dyn OfflineWriter>, OfflineError> {
        self.begin_window_write(view, TimeWindow::default())
    }

    fn begin_window_write(
        &self,
        view: &FeatureView,
        window: TimeWindow,
    ) -> Result<Box<dyn OfflineWriter>, OfflineError> {
        let final_path = self.view_path(view);
        let parent = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        std::fs::create_dir_all(&parent)
            .map_err(io_error(format!("creating {}", parent.display())))?;
        let unique = format!(
            "{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let staging_path = parent.join(format!(".v{}.staging-{unique}", view.version));
        std::fs::create_dir_all(&staging_path)
            .map_err(io_error(format!("creating {}", staging_path.display())))?;
        let is_bounded = window.start.is_some() || window.end.is_some();
        Ok(Box::new(ParquetViewWriter {
            view: view.clone(),
            window: is_bounded.then_some(window),
            schema: ViewBatch::schema_of(view),
            staging_path,
            final_path,
            writers: BTreeMap::new(),
            rows: 0,
            committed: false,
        }))
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
            let file = File::create(&temporary)
                .map_err(io_error(format!("creating {}", temporary.display())))?;
            let parquet_error = |source| OfflineError::Parquet {
                path: temporary.display().to_string(),
                source,
            };
            let mut writer =
                ArrowWriter::try_new(file, Arc::clone(&schema), Some(writer_properties(&schema)))
                    .map_err(parquet_error)?;
            writer.write(&rows).map_err(parquet_error)?;
            let file = writer.into_inner().map_err(parquet_error)?;
            file.sync_all()
                .map_err(io_error(format!("syncing {}", temporary.display())))?;
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
        let path = self.view_path(view);
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

struct ParquetViewWriter {
    view: FeatureView,
    /// `Some` for a windowed write: only the window's rows are replaced.
    window: Option<TimeWindow>,
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
                Some(writer_properties(&self.schema)),
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

    fn commit(mut self: Box<Self>) -> Result<OfflineWriteSummary, OfflineError> {
        if let Some(window) = self.window {
            return self.commit_window(window);
        }
        let writers = std::mem::take(&mut self.writers);
        let partitions = writers.len() as u64;
        for (_, (path, writer)) in writers {
            let file = writer
                .into_inner()
                .map_err(|source| OfflineError::Parquet {
                    path: path.display().to_string(),
                    source,
                })?;
            file.sync_all()
                .map_err(io_error(format!("syncing {}", path.display())))?;
        }
        let old_path = self.staging_path.with_extension("old");
        if self.final_path.exists() {
            std::fs::rename(&self.final_path, &old_path).map_err(io_error(format!(
                "moving {} aside",
                self.final_path.display()
            )))?;
        }
        std::fs::rename(&self.staging_path, &self.final_path).map_err(io_error(format!(
            "publishing {}",
            self.final_path.display()
        )))?;
        self.committed = true;
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

/// How every offline Parquet file is written. Floating-point and timestamp columns rarely
/// repeat, so they skip dictionary encoding (which would intern every value only to fall
/// back to plain encoding); every other column keeps it.
fn writer_properties(schema: &arrow::datatypes::Schema) -> WriterProperties {
    use arrow::datatypes::DataType;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(256 * 1024));
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
            let file = writer
                .into_inner()
                .map_err(|source| OfflineError::Parquet {
                    path: path.display().to_string(),
                    source,
                })?;
            file.sync_all()
                .map_err(io_error(format!("syncing {}", path.display())))?;
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
