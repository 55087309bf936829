//! `larder init`: a sample feature repo with deterministic generated data.
//!
//! The demo has one entity (`user`), two sources and two feature views with 26 features of
//! mixed types: `user_profile` reads its source as it is; `user_activity` derives rates from
//! raw counters with SQL. Values come from a seeded generator, so the same seed and anchor
//! always give the same data; timestamps lie in the days before the anchor (by default the
//! start of the current UTC day), so the demo is fresh when it is made.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, Int64Builder,
    ListBuilder, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Options of `larder init`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of users.
    pub entities: u64,
    /// Generator seed.
    pub seed: u64,
    /// Microseconds since the epoch that the data's timestamps lead up to.
    pub anchor_micros: i64,
}

/// A small, fast, seeded generator (SplitMix64): the demo must not depend on a random crate's
/// algorithm staying the same.
pub struct DemoRandom(u64);

impl DemoRandom {
    /// A generator for a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// A number in `[0, bound)`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const COUNTRIES: [&str; 8] = ["US", "FR", "DE", "IN", "BR", "JP", "GB", "NG"];
const CHANNELS: [&str; 4] = ["organic", "ads", "referral", "partner"];
const CATEGORIES: [&str; 6] = ["books", "music", "garden", "toys", "tools", "games"];
const MICROS_PER_DAY: i64 = 86_400_000_000;

const LARDER_YAML: &str = r#"# Larder feature repo configuration.
project: demo
# Where `larder apply` records the definitions.
registry: data/registry.json
# The online store serves the latest values. `embedded` needs no server.
online_store:
  type: embedded
  path: data/online.redb
# The offline store keeps every materialized row, as Parquet partitioned by date.
offline_store:
  type: parquet
  path: data/offline
serving:
  host: 127.0.0.1
  port: 6566
  max_entities_per_request: 10000
"#;

const FEATURES_YAML: &str = r#"# The demo's definitions: one entity, two sources, two feature views, one feature service.
entities:
  - name: user
    join_keys:
      - name: user_id
        dtype: int64
    description: A customer of the shop
    owner: growth@example.com

sources:
  - name: user_profiles
    type: file
    path: data/sources/profiles.parquet
    timestamp_field: event_timestamp
    description: Daily snapshot of the customer table
  - name: activity_events
    type: file
    path: data/sources/activity.parquet
    timestamp_field: event_timestamp
    description: Daily activity counters per user

feature_views:
  - name: user_profile
    version: 1
    entities: [user]
    source: user_profiles
    ttl: 365d
    owner: growth@example.com
    tier: tier1
    freshness_sla: 2d
    tags: {team: growth, pii: "false"}
    description: Who the user is
    features:
      - {name: age, dtype: int64}
      - {name: country, dtype: string}
      - {name: account_age_days, dtype: int32}
      - {name: is_premium, dtype: bool}
      - {name: lifetime_value, dtype: float64}
      - {name: avg_order_value, dtype: float64}
      - {name: orders_total, dtype: int64}
      - {name: days_since_last_order, dtype: int32}
      - {name: credit_score, dtype: float64}
      - {name: email_verified, dtype: bool}
      - {name: signup_channel, dtype: string}
      - {name: loyalty_points, dtype: int64}
      - {name: churn_risk, dtype: float32}

  - name: user_activity
    version: 1
    entities: [user]
    source: activity_events
    transformation: user_activity.sql
    ttl: 7d
    owner: ranking@example.com
    tier: tier1
    freshness_sla: 1d
    tags: {team: ranking}
    description: What the user did recently
    features:
      - {name: clicks_1d, dtype: int64}
      - {name: clicks_7d, dtype: int64}
      - {name: clicks_30d, dtype: int64}
      - {name: impressions_7d, dtype: int64}
      - {name: ctr_7d, dtype: float64, description: clicks_7d / impressions_7d}
      - {name: sessions_7d, dtype: int32}
      - {name: avg_session_minutes, dtype: float32}
      - {name: purchases_30d, dtype: int64}
      - {name: conversion_rate_30d, dtype: float64, description: purchases_30d / clicks_30d}
      - {name: dwell_seconds_7d, dtype: float64}
      - {name: last_category, dtype: string}
      - {name: recent_item_ids, dtype: list<int64>}
      - {name: is_active_7d, dtype: bool}

feature_services:
  - name: ranking_model
    description: Everything the ranking model reads
    owner: ranking@example.com
    features: [user_profile, user_activity]
"#;

const ACTIVITY_SQL: &str = r#"-- Derives rates from the raw activity counters.
SELECT
  user_id,
  event_timestamp,
  clicks_1d,
  clicks_7d,
  clicks_30d,
  impressions_7d,
  CASE WHEN impressions_7d > 0 THEN CAST(clicks_7d AS DOUBLE) / CAST(impressions_7d AS DOUBLE) ELSE 0.0 END AS ctr_7d,
  sessions_7d,
  CAST(CASE WHEN sessions_7d > 0 THEN CAST(session_minutes_7d AS DOUBLE) / CAST(sessions_7d AS DOUBLE) ELSE 0.0 END AS FLOAT) AS avg_session_minutes,
  purchases_30d,
  CASE WHEN clicks_30d > 0 THEN CAST(purchases_30d AS DOUBLE) / CAST(clicks_30d AS DOUBLE) ELSE 0.0 END AS conversion_rate_30d,
  dwell_seconds_7d,
  last_category,
  recent_item_ids,
  sessions_7d > 0 AS is_active_7d
FROM activity_events
"#;

/// Writes the demo repo into `path` (which must not exist or be empty).
pub fn write_demo_repo(path: &Path, options: &DemoOptions) -> Result<()> {
    if path.exists()
        && fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .next()
            .is_some()
    {
        bail!("{} already exists and is not empty", path.display());
    }
    fs::create_dir_all(path.join("features"))
        .with_context(|| format!("creating {}", path.display()))?;
    fs::create_dir_all(path.join("data/sources"))
        .with_context(|| format!("creating {}/data/sources", path.display()))?;
    fs::write(path.join("larder.yaml"), LARDER_YAML).context("writing larder.yaml")?;
    fs::write(path.join("features/users.yaml"), FEATURES_YAML)
        .context("writing features/users.yaml")?;
    fs::write(path.join("features/user_activity.sql"), ACTIVITY_SQL)
        .context("writing features/user_activity.sql")?;
    fs::write(
        path.join(".gitignore"),
        "data/registry.json\ndata/online.redb\ndata/offline/\n",
    )
    .context("writing .gitignore")?;
    write_parquet(
        &path.join("data/sources/profiles.parquet"),
        &profile_batches(options)?,
    )?;
    write_parquet(
        &path.join("data/sources/activity.parquet"),
        &activity_batches(options)?,
    )?;
    Ok(())
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let Some(first) = batches.first() else {
        bail!("no rows to write to {}", path.display())
    };
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file, first.schema(), Some(properties))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(())
}

fn timestamp_field() -> Field {
    Field::new(
        "event_timestamp",
        DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
        false,
    )
}

const CHUNK: u64 = 65_536;

fn profile_batches(options: &DemoOptions) -> Result<Vec<RecordBatch>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        timestamp_field(),
        Field::new("age", DataType::Int64, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("account_age_days", DataType::Int32, true),
        Field::new("is_premium", DataType::Boolean, true),
        Field::new("lifetime_value", DataType::Float64, true),
        Field::new("avg_order_value", DataType::Float64, true),
        Field::new("orders_total", DataType::Int64, true),
        Field::new("days_since_last_order", DataType::Int32, true),
        Field::new("credit_score", DataType::Float64, true),
        Field::new("email_verified", DataType::Boolean, true),
        Field::new("signup_channel", DataType::Utf8, true),
        Field::new("loyalty_points", DataType::Int64, true),
        Field::new("churn_risk", DataType::Float32, true),
    ]));
    let mut random = DemoRandom::new(options.seed);
    let mut batches = Vec::new();
    let mut start = 0;
    while start < options.entities {
        let end = (start + CHUNK).min(options.entities);
        let count = (end - start) as usize;
        let mut columns: Vec<Vec<f64>> = (0..13).map(|_| Vec::with_capacity(count)).collect();
        let mut countries = Vec::with_capacity(count);
        let mut channels = Vec::with_capacity(count);
        let mut timestamps = Vec::with_capacity(count);
        for _ in start..end {
            timestamps.push(
                options.anchor_micros - 3 * MICROS_PER_DAY
                    + random.below(MICROS_PER_DAY as u64) as i64,
            );
            columns[0].push((18 + random.below(62)) as f64);
            countries.push(COUNTRIES[random.below(COUNTRIES.len() as u64) as usize]);
            columns[2].push(random.below(3_650) as f64);
            columns[3].push(random.below(5) as f64);
            columns[4].push((random.unit() * 5_000.0 * 100.0).round() / 100.0);
            columns[5].push((random.unit() * 200.0 * 100.0).round() / 100.0);
            columns[6].push(random.below(400) as f64);
            columns[7].push(random.below(365) as f64);
            columns[8].push(300.0 + random.unit() * 550.0);
            columns[9].push(random.below(10) as f64);
            channels.push(CHANNELS[random.below(CHANNELS.len() as u64) as usize]);
            columns[11].push(random.below(100_000) as f64);
            columns[12].push(random.unit());
        }
        let ids: Vec<i64> = (start as i64..end as i64).collect();
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(timestamps).with_timezone("UTC")),
            Arc::new(Int64Array::from_iter_values(
                columns[0].iter().map(|value| *value as i64),
            )),
            Arc::new(StringArray::from(countries)),
            Arc::new(Int32Array::from_iter_values(
                columns[2].iter().map(|value| *value as i32),
            )),
            Arc::new(BooleanArray::from_iter(
                columns[3].iter().map(|value| Some(*value == 0.0)),
            )),
            Arc::new(Float64Array::from(columns[4].clone())),
            Arc::new(Float64Array::from(columns[5].clone())),
            Arc::new(Int64Array::from_iter_values(
                columns[6].iter().map(|value| *value as i64),
            )),
            Arc::new(Int32Array::from_iter_values(
                columns[7].iter().map(|value| *value as i32),
            )),
            Arc::new(Float64Array::from(columns[8].clone())),
            Arc::new(BooleanArray::from_iter(
                columns[9].iter().map(|value| Some(*value != 0.0)),
            )),
            Arc::new(StringArray::from(channels)),
            Arc::new(Int64Array::from_iter_values(
                columns[11].iter().map(|value| *value as i64),
            )),
            Arc::new(Float32Array::from_iter_values(
                columns[12].iter().map(|value| *value as f32),
            )),
        ];
        batches.push(RecordBatch::try_new(Arc::clone(&schema), arrays)?);
        start = end;
    }
    Ok(batches)
}

/// Two rows per user: yesterday's counters and today's; the newer one is what serving shows.
fn activity_batches(options: &DemoOptions) -> Result<Vec<RecordBatch>> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        timestamp_field(),
        Field::new("clicks_1d", DataType::Int64, true),
        Field::new("clicks_7d", DataType::Int64, true),
        Field::new("clicks_30d", DataType::Int64, true),
        Field::new("impressions_7d", DataType::Int64, true),
        Field::new("sessions_7d", DataType::Int32, true),
        Field::new("session_minutes_7d", DataType::Float32, true),
        Field::new("purchases_30d", DataType::Int64, true),
        Field::new("dwell_seconds_7d", DataType::Float64, true),
        Field::new("last_category", DataType::Utf8, true),
        Field::new(
            "recent_item_ids",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        ),
    ]));
    let mut random = DemoRandom::new(options.seed ^ 0xA5A5_A5A5);
    let mut batches = Vec::new();
    let total_rows = options.entities * 2;
    let mut start = 0;
    while start < total_rows {
        let end = (start + CHUNK).min(total_rows);
        let count = (end - start) as usize;
        let mut ids = Vec::with_capacity(count);
        let mut timestamps = Vec::with_capacity(count);
        let (mut clicks_1d, mut clicks_7d, mut clicks_30d, mut impressions) =
            (vec![], vec![], vec![], vec![]);
        let (mut sessions, mut minutes, mut purchases, mut dwell, mut categories) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut items = ListBuilder::new(Int64Builder::new());
        for row in start..end {
            let user = (row / 2) as i64;
            let days_back = if row % 2 == 0 { 2 } else { 1 };
            ids.push(user);
            timestamps.push(
                options.anchor_micros - days_back * MICROS_PER_DAY
                    + random.below(3_600_000_000) as i64,
            );
            let weekly = random.below(200) as i64;
            clicks_1d.push(weekly / 7);
            clicks_7d.push(weekly);
            clicks_30d.push(weekly * 4 + random.below(50) as i64);
            impressions.push(if random.below(20) == 0 {
                0
            } else {
                weekly * 10 + random.below(500) as i64
            });
            let session_count = if random.below(10) == 0 {
                0
            } else {
                1 + random.below(30) as i32
            };
            sessions.push(session_count);
            minutes.push((random.unit() * 600.0) as f32);
            purchases.push(random.below(12) as i64);
            dwell.push(random.unit() * 10_000.0);
            categories.push(CATEGORIES[random.below(CATEGORIES.len() as u64) as usize]);
            let item_count = random.below(4);
            for _ in 0..item_count {
                items.values().append_value(random.below(1_000_000) as i64);
            }
            items.append(true);
        }
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(timestamps).with_timezone("UTC")),
            Arc::new(Int64Array::from(clicks_1d)),
            Arc::new(Int64Array::from(clicks_7d)),
            Arc::new(Int64Array::from(clicks_30d)),
            Arc::new(Int64Array::from(impressions)),
            Arc::new(Int32Array::from(sessions)),
            Arc::new(Float32Array::from(minutes)),
            Arc::new(Int64Array::from(purchases)),
            Arc::new(Float64Array::from(dwell)),
            Arc::new(StringArray::from(categories)),
            Arc::new(items.finish()),
        ];
        batches.push(RecordBatch::try_new(Arc::clone(&schema), arrays)?);
        start = end;
    }
    Ok(batches)
}

/// The event times of a demo source batch (column `index`).
fn event_times(batch: &RecordBatch, index: usize) -> Result<&TimestampMicrosecondArray> {
    batch
        .column(index)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .context("event_timestamp is not a microsecond timestamp")
}

/// Whether the demo mutation selects a user: a seeded hash below `fraction`.
fn is_mutated_user(user_id: i64, fraction: f64, seed: u64) -> bool {
    let mut random = DemoRandom::new(seed ^ (user_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    random.unit() < fraction
}

/// How `larder demo-mutate` changes the demo's sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Rewrites every source file with the changed values, keeping every event time: a
    /// correction that change detection must see.
    Correct,
    /// Leaves the source files as they are and adds one file per source with the changed
    /// users' rows as new events, moved past the source's newest event time (the source must
    /// be a folder): new data arriving in a lake.
    AppendEvents,
}

/// Changes one integer feature (`loyalty_points` of the profiles, `clicks_1d` of the
/// activity) of a seeded `fraction` of the demo users, in every source row of those users, as
/// `mutation` says. Each source is `data/sources/profiles.parquet` (`activity.parquet`) or a
/// folder of Parquet files in its place (`data/sources/profiles/`). Benchmarks use it
/// (`larder demo-mutate`). Returns the number of users changed.
pub fn mutate_demo_sources(
    repo: &Path,
    fraction: f64,
    seed: u64,
    mutation: Mutation,
) -> Result<u64> {
    let mut changed_users = std::collections::HashSet::new();
    for (base, column) in [
        ("data/sources/profiles", "loyalty_points"),
        ("data/sources/activity", "clicks_1d"),
    ] {
        let single = repo.join(format!("{base}.parquet"));
        let folder = repo.join(base);
        let files: Vec<std::path::PathBuf> = if single.is_file() {
            vec![single]
        } else if folder.is_dir() {
            let mut files: Vec<_> = fs::read_dir(&folder)
                .with_context(|| format!("listing {}", folder.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    path.extension()
                        .is_some_and(|extension| extension == "parquet")
                })
                .collect();
            files.sort();
            files
        } else {
            bail!(
                "neither {} nor the folder {} exists",
                single.display(),
                folder.display()
            );
        };
        if mutation == Mutation::AppendEvents && !folder.is_dir() {
            bail!(
                "appending events needs the source as a folder: move {base}.parquet into {base}/ and point the source's path at the folder"
            );
        }
        let mut appended = Vec::new();
        let (mut oldest, mut newest) = (i64::MAX, i64::MIN);
        for path in &files {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            )?
            .build()?;
            let mut batches = Vec::new();
            for batch in reader {
                let batch = batch?;
                let schema = batch.schema();
                let (Ok(id_index), Ok(column_index), Ok(time_index)) = (
                    schema.index_of("user_id"),
                    schema.index_of(column),
                    schema.index_of("event_timestamp"),
                ) else {
                    bail!(
                        "{} has no user_id, {column} or event_timestamp column",
                        path.display()
                    );
                };
                let ids = batch
                    .column(id_index)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .context("user_id is not int64")?;
                let values = batch
                    .column(column_index)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .with_context(|| format!("{column} is not int64"))?;
                let times = event_times(&batch, time_index)?;
                for time in times.iter().flatten() {
                    oldest = oldest.min(time);
                    newest = newest.max(time);
                }
                let selected: BooleanArray = ids
                    .iter()
                    .map(|id| Some(id.is_some_and(|id| is_mutated_user(id, fraction, seed))))
                    .collect();
                let mutated: Int64Array = ids
                    .iter()
                    .zip(values.iter())
                    .zip(selected.values().iter())
                    .map(|((id, value), chosen)| match (id, value) {
                        (Some(id), Some(value)) if chosen => {
                            changed_users.insert(id);
                            Some(value + 1)
                        }
                        (_, value) => value,
                    })
                    .collect();
                let mut columns = batch.columns().to_vec();
                columns[column_index] = Arc::new(mutated);
                let mutated_batch = RecordBatch::try_new(schema, columns)?;
                match mutation {
                    Mutation::Correct => batches.push(mutated_batch),
                    Mutation::AppendEvents => appended.push(arrow::compute::filter_record_batch(
                        &mutated_batch,
                        &selected,
                    )?),
                }
            }
            if mutation == Mutation::Correct {
                write_parquet(path, &batches)?;
            }
        }
        if mutation == Mutation::AppendEvents {
            // Every new event lies past the newest one, in the same order as before.
            let shift = newest.saturating_sub(oldest) + 3_600_000_000;
            let mut shifted = Vec::with_capacity(appended.len());
            for batch in appended {
                let schema = batch.schema();
                let time_index = schema.index_of("event_timestamp")?;
                let times = event_times(&batch, time_index)?;
                let moved = times
                    .unary::<_, arrow::datatypes::TimestampMicrosecondType>(|time| time + shift)
                    .with_timezone_opt(times.timezone().map(str::to_string));
                let mut columns = batch.columns().to_vec();
                columns[time_index] = Arc::new(moved);
                shifted.push(RecordBatch::try_new(schema, columns)?);
            }
            write_parquet(&folder.join(format!("events-{seed}.parquet")), &shifted)?;
        }
    }
    Ok(changed_users.len() as u64)
}
