//! `larder training-set`: point-in-time correct training sets from the offline store.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::Array;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::{SessionContext, ident, lit};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use larder_core::Timestamp;
use larder_offline::OfflineStore;
use larder_offline::training::{
    DEFAULT_ENTITY_TIMESTAMP_COLUMN, EntityFile, EntityFileFormat, TrainingSetRequest, ViewRequest,
};
use larder_registry::{Registry, ResolvedFeature};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::context::RepoContext;

/// Arguments of `larder training-set`.
#[derive(Debug, clap::Args)]
pub struct TrainingSetArgs {
    /// The entity table (Parquet, or CSV with a header): join keys, a timestamp column and
    /// any other columns (labels), which are carried through.
    #[arg(long, conflicts_with_all = ["start", "end"])]
    entities: Option<PathBuf>,
    /// The entity table's timestamp column.
    #[arg(long, default_value = DEFAULT_ENTITY_TIMESTAMP_COLUMN)]
    timestamp_column: String,
    /// Features as `view:feature`, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "feature_service")]
    features: Vec<String>,
    /// A feature service instead of a feature list.
    #[arg(long)]
    feature_service: Option<String>,
    /// Name output columns `view__feature`.
    #[arg(long)]
    full_feature_names: bool,
    /// Time-range mode (no entity table): every (entity, event time) of the views' offline
    /// rows with start <= time < end (RFC 3339 or YYYY-MM-DD).
    #[arg(long, requires = "end")]
    start: Option<String>,
    /// End of the time range (exclusive).
    #[arg(long, requires = "start")]
    end: Option<String>,
    /// Where to write the training set (Parquet).
    #[arg(long)]
    output: PathBuf,
    /// Memory for sorting, in MiB (at least 16); sorts spill to the temporary folder beyond it.
    #[arg(long, default_value_t = 1024)]
    memory_mb: usize,
}

fn resolved_features<'registry>(
    registry: &'registry Registry,
    args: &TrainingSetArgs,
) -> Result<Vec<ResolvedFeature<'registry>>> {
    if let Some(service) = &args.feature_service {
        return Ok(registry.resolve_feature_service(service)?);
    }
    if args.features.is_empty() {
        bail!("give --features view:feature,... or --feature-service NAME");
    }
    Ok(registry.resolve_feature_refs(&args.features)?)
}

fn parse_time(text: &str, flag: &str) -> Result<Timestamp> {
    Timestamp::parse(text)
        .ok_or_else(|| anyhow!("{flag} '{text}' is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

/// Writes the distinct (join keys, event time) rows of the views' offline rows in
/// `[start, end)` to a Parquet file, ordered by time then keys: the entity table of the
/// time-range mode.
async fn time_range_entities(
    store: &dyn OfflineStore,
    views: &[ViewRequest],
    start: Timestamp,
    end: Timestamp,
    folder: &Path,
) -> Result<PathBuf> {
    let Some(first) = views.first() else {
        bail!("no feature views requested");
    };
    let key_names: Vec<String> = first
        .view
        .join_keys
        .iter()
        .map(|key| key.name.clone())
        .collect();
    for view_request in views {
        let names: Vec<String> = view_request
            .view
            .join_keys
            .iter()
            .map(|key| key.name.clone())
            .collect();
        if names != key_names {
            bail!(
                "the time-range mode needs views with the same join keys: '{}' joins on {:?}, '{}' on {:?}",
                first.view.name,
                key_names,
                view_request.view.name,
                names
            );
        }
    }
    let context = SessionContext::new();
    let bound = |timestamp: Timestamp| {
        lit(ScalarValue::TimestampMicrosecond(
            Some(timestamp.as_micros()),
            Some("UTC".into()),
        ))
    };
    let mut union: Option<datafusion::dataframe::DataFrame> = None;
    for (index, view_request) in views.iter().enumerate() {
        let table = format!("view_{index}");
        store
            .register_view(&context, &view_request.view, &table)
            .await?;
        let timestamp = ident(&view_request.view.timestamp_field);
        let mut columns: Vec<_> = key_names.iter().map(ident).collect();
        columns.push(timestamp.clone().alias(DEFAULT_ENTITY_TIMESTAMP_COLUMN));
        let frame = context
            .table(table.as_str())
            .await?
            .filter(
                timestamp
                    .clone()
                    .gt_eq(bound(start))
                    .and(timestamp.lt(bound(end))),
            )?
            .select(columns)?;
        union = Some(match union {
            Some(previous) => previous.union(frame)?,
            None => frame,
        });
    }
    let Some(union) = union else {
        bail!("no feature views requested");
    };
    let mut order = vec![ident(DEFAULT_ENTITY_TIMESTAMP_COLUMN).sort(true, true)];
    order.extend(key_names.iter().map(|name| ident(name).sort(true, true)));
    let path = folder.join("time_range_entities.parquet");
    union
        .distinct()?
        .sort(order)?
        .write_parquet(
            path.to_string_lossy().as_ref(),
            datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await?;
    Ok(path)
}

fn parquet_row_count(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let reader = parquet::file::reader::SerializedFileReader::new(file).ok()?;
    let metadata = parquet::file::reader::FileReader::metadata(&reader);
    u64::try_from(metadata.file_metadata().num_rows()).ok()
}

/// Runs `larder training-set`.
pub async fn run(root: &Path, args: &TrainingSetArgs) -> Result<()> {
    let started = Instant::now();
    let context = RepoContext::load(root)?;
    let registry = context.applied_registry()?;
    let store = context.offline_store();
    let resolved = resolved_features(&registry, args)?;
    let views = larder_server::training::view_requests(&registry, &resolved, store.as_ref())?;
    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    let (entity_path, timestamp_column) = match (&args.entities, &args.start, &args.end) {
        (Some(path), _, _) => (path.clone(), args.timestamp_column.clone()),
        (None, Some(start), Some(end)) => {
            let start = parse_time(start, "--start")?;
            let end = parse_time(end, "--end")?;
            let path =
                time_range_entities(store.as_ref(), &views, start, end, scratch.path()).await?;
            (path, DEFAULT_ENTITY_TIMESTAMP_COLUMN.to_string())
        }
        _ => bail!("give --entities FILE, or --start and --end for the time-range mode"),
    };
    let format = EntityFileFormat::of_path(&entity_path);
    let entities = EntityFile::open_file(&entity_path, format).await?;
    let total_rows = if format == EntityFileFormat::Parquet {
        parquet_row_count(&entity_path)
    } else {
        None
    };
    let request = TrainingSetRequest {
        entities: Arc::new(entities),
        entity_timestamp_column: timestamp_column,
        views,
        full_feature_names: args.full_feature_names,
    };
    let engine =
        crate::context::open_offline_engine(&context.root, &context.config, Vec::new()).await?;
    let mut stream = engine
        .training_set(&request, args.memory_mb.saturating_mul(1 << 20))
        .await?;
    let schema: SchemaRef = stream.schema();
    let file = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    // Dictionaries pay off for text only; for numeric features they cost ~8% of the run
    // (parquet's interner, measured at 1M rows) and rarely shrink the file.
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false);
    for field in schema.fields() {
        if matches!(
            field.data_type(),
            arrow::datatypes::DataType::Utf8 | arrow::datatypes::DataType::LargeUtf8
        ) {
            properties = properties.set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::from(field.name().as_str()),
                true,
            );
        }
    }
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties.build()))?;
    let bar = match total_rows {
        Some(total) => ProgressBar::new(total).with_style(ProgressStyle::with_template(
            "{bar:30} {human_pos:>12}/{human_len} entity rows  {elapsed}",
        )?),
        None => ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
            "{spinner} {human_pos:>12} entity rows  {elapsed}",
        )?),
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut rows: u64 = 0;
    let mut rows_with_all_features: u64 = 0;
    let entity_column_count = request.entities.schema().fields().len();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        let feature_columns = &batch.columns()[entity_column_count..];
        rows_with_all_features += (0..batch.num_rows())
            .filter(|row| feature_columns.iter().all(|column| column.is_valid(*row)))
            .count() as u64;
        writer.write(&batch)?;
        bar.set_position(rows);
    }
    writer.close()?;
    bar.finish_and_clear();
    println!(
        "Wrote {} rows ({} with every feature, {} with some feature missing) to {} in {:.1}s",
        rows,
        rows_with_all_features,
        rows - rows_with_all_features,
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
