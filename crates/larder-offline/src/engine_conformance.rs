//! The conformance suite of [`OfflineEngine`]: one set of checks that every engine runs
//! unchanged (DataFusion, and Spark in `larder-offline-spark`), on the same source file and
//! the same requests, so engines must agree row for row.
//!
//! ```no_run
//! # async fn example() {
//! use std::sync::Arc;
//! use larder_offline::{DataFusionEngine, SharedOfflineEngine, engine_conformance};
//!
//! let folder = tempfile::tempdir().unwrap();
//! engine_conformance::run_all(folder.path(), |root, sources| {
//!     Box::pin(async move {
//!         let engine = DataFusionEngine::new(&root, &Default::default(), 1024, &sources).await?;
//!         Ok(Arc::new(engine) as SharedOfflineEngine)
//!     })
//! })
//! .await;
//! # }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use futures::StreamExt;
use larder_core::{DataSource, DataSourceKind, FeatureView, FileFormat, Timestamp, TtlDuration};

use crate::OfflineError;
use crate::columns::ViewBatch;
use crate::engine::{SharedOfflineEngine, TimeWindow};
use crate::training::{MemoryRows, TieBreak, TrainingSetRequest, ViewRequest};

const HOUR: i64 = 3_600_000_000;
/// 2026-01-01T00:00:00Z.
const START: i64 = 20_454 * 24 * HOUR;

/// The source rows: (user, event time, amount); user 3 has a null amount.
fn source_rows() -> Vec<(i64, i64, Option<f64>)> {
    vec![
        (1, START, Some(1.0)),
        (1, START + HOUR, Some(2.0)),
        (2, START + 2 * HOUR, Some(5.0)),
        (1, START + 3 * HOUR, Some(4.0)),
        (3, START + 4 * HOUR, None),
    ]
}

/// Runs every check against the engine that `make` builds over the suite's source, a
/// Parquet file it writes into `folder` (local paths are relative to it).
pub async fn run_all(folder: &Path, make: impl Fn(PathBuf, Vec<DataSource>) -> EngineFuture) {
    write_source(folder.join("payments.parquet"));
    let source = DataSource {
        name: "payments".to_string(),
        kind: DataSourceKind::File {
            path: "payments.parquet".to_string(),
            format: FileFormat::Parquet,
        },
        timestamp_field: "ts".to_string(),
        description: String::new(),
        owner: String::new(),
        tags: Default::default(),
    };
    let engine = make(folder.to_path_buf(), vec![source])
        .await
        .unwrap_or_else(|error| panic!("creating the engine: {error}"));
    check_transformations_plan_and_run_in_windows(&engine).await;
    check_input_files_list_the_source_and_a_subset_reads_only_them(&engine).await;
    check_queries_over_a_view_output(&engine).await;
    check_training_sets_join_point_in_time(&engine).await;
    check_training_set_ties_nulls_and_ttl_boundaries(&engine).await;
}

/// The engine a factory of [`run_all`] builds.
pub type EngineFuture =
    Pin<Box<dyn Future<Output = Result<SharedOfflineEngine, OfflineError>> + Send>>;

fn write_source(path: PathBuf) {
    let rows = source_rows();
    let batch = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| row.0))) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|row| row.1))
                    .with_timezone("UTC"),
            ),
        ),
        (
            "amount",
            Arc::new(Float64Array::from(
                rows.iter().map(|row| row.2).collect::<Vec<_>>(),
            )),
        ),
    ])
    .unwrap_or_else(|error| panic!("source batch: {error}"));
    let file = std::fs::File::create(&path).unwrap_or_else(|error| panic!("source file: {error}"));
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
        .unwrap_or_else(|error| panic!("parquet writer: {error}"));
    writer
        .write(&batch)
        .unwrap_or_else(|error| panic!("parquet write: {error}"));
    writer
        .close()
        .unwrap_or_else(|error| panic!("parquet close: {error}"));
}

/// A view over the source: `total` = amount × 10 as float64, per user.
fn payments_view() -> FeatureView {
    let mut view = crate::conformance::check_view("engine");
    view.source = "payments".to_string();
    view.features[0].name = "total".to_string();
    view.transformation =
        Some("SELECT user_id, ts, amount * 10 AS total FROM payments".to_string());
    view
}

async fn collect(
    engine: &SharedOfflineEngine,
    view: &FeatureView,
    window: TimeWindow,
) -> Vec<(i64, i64, Option<f64>)> {
    let name = engine.engine_name();
    let mut stream = engine
        .execute_view(view, window)
        .await
        .unwrap_or_else(|error| panic!("{name}: execute_view: {error}"));
    let mut rows = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap_or_else(|error| panic!("{name}: a batch failed: {error}"));
        let users = batch.column(0).as_primitive::<Int64Type>();
        let times = arrow::compute::cast(
            batch.column(1),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )
        .unwrap_or_else(|error| panic!("{name}: times: {error}"));
        let times = times.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let totals = batch.column(2).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            rows.push((
                users.value(row),
                times.value(row),
                (!totals.is_null(row)).then(|| totals.value(row)),
            ));
        }
    }
    rows.sort_by_key(|row| (row.1, row.0));
    rows
}

/// A view's SQL plans to its output columns without reading rows, and runs to exactly the
/// source rows transformed, within any event-time window `[start, end)`.
pub async fn check_transformations_plan_and_run_in_windows(engine: &SharedOfflineEngine) {
    let name = engine.engine_name();
    let view = payments_view();
    let columns = engine
        .output_columns(&view)
        .await
        .unwrap_or_else(|error| panic!("{name}: output_columns: {error}"));
    let column_names: Vec<&str> = columns.iter().map(|(column, _)| column.as_str()).collect();
    assert_eq!(
        column_names,
        ["user_id", "ts", "total"],
        "{name}: output columns"
    );
    assert_eq!(columns[2].1, DataType::Float64, "{name}: the type of total");

    let expected: Vec<(i64, i64, Option<f64>)> = source_rows()
        .into_iter()
        .map(|(user, time, amount)| (user, time, amount.map(|amount| amount * 10.0)))
        .collect();
    assert_eq!(
        collect(engine, &view, TimeWindow::default()).await,
        expected,
        "{name}: every row"
    );
    let window = TimeWindow {
        start: Some(Timestamp(START + HOUR)),
        end: Some(Timestamp(START + 3 * HOUR)),
    };
    assert_eq!(
        collect(engine, &view, window).await,
        expected[1..3].to_vec(),
        "{name}: the rows of [start + 1h, start + 3h)"
    );
    let broken = FeatureView {
        transformation: Some("SELECT no_such_column FROM payments".to_string()),
        ..payments_view()
    };
    assert!(
        engine.output_columns(&broken).await.is_err(),
        "{name}: planning SQL over an unknown column must fail"
    );
}

/// An engine that lists a view's input files lists the source's one file, only for a view
/// that maps rows one by one; an engine over all of them reads every row, over none of them
/// no row. An engine that cannot list (`None`) passes.
pub async fn check_input_files_list_the_source_and_a_subset_reads_only_them(
    engine: &SharedOfflineEngine,
) {
    let name = engine.engine_name();
    let view = payments_view();
    let Some(files) = engine
        .view_input_files(&view)
        .await
        .unwrap_or_else(|error| panic!("{name}: view_input_files: {error}"))
    else {
        return;
    };
    assert_eq!(files.len(), 1, "{name}: the source's files: {files:?}");
    assert!(
        files[0].url.ends_with("/payments.parquet") && files[0].size > 0,
        "{name}: the source's file: {files:?}"
    );
    let every_row = collect(engine, &view, TimeWindow::default()).await;
    let over = |files: Vec<crate::InputFile>| {
        let view = view.clone();
        async move {
            let scoped: SharedOfflineEngine = Arc::from(
                engine
                    .over_input_files(&view, &files)
                    .await
                    .unwrap_or_else(|error| panic!("{name}: over_input_files: {error}")),
            );
            collect(&scoped, &view, TimeWindow::default()).await
        }
    };
    assert_eq!(over(files).await, every_row, "{name}: over every file");
    assert_eq!(over(Vec::new()).await, Vec::new(), "{name}: over no file");
    let aggregate = FeatureView {
        transformation: Some(
            "SELECT user_id, max(ts) AS ts, sum(amount) AS total FROM payments GROUP BY user_id"
                .to_string(),
        ),
        ..payments_view()
    };
    assert_eq!(
        engine
            .view_input_files(&aggregate)
            .await
            .unwrap_or_else(|error| panic!("{name}: view_input_files: {error}")),
        None,
        "{name}: an aggregate's rows do not come file by file"
    );
}

/// SQL over a view's output (what data-quality checks run) sees exactly the window's rows.
pub async fn check_queries_over_a_view_output(engine: &SharedOfflineEngine) {
    let name = engine.engine_name();
    let view = payments_view();
    let window = TimeWindow {
        start: Some(Timestamp(START)),
        end: Some(Timestamp(START + 4 * HOUR)),
    };
    let table = engine
        .view_output_table(&view, window)
        .await
        .unwrap_or_else(|error| panic!("{name}: view_output_table: {error}"));
    let first_number = |batches: Vec<RecordBatch>| -> i64 {
        let batch = batches
            .into_iter()
            .find(|batch| batch.num_rows() > 0)
            .unwrap_or_else(|| panic!("{name}: a query answered no rows"));
        let column = arrow::compute::cast(batch.column(0), &DataType::Int64)
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        column.as_primitive::<Int64Type>().value(0)
    };
    let query = |sql: String| {
        let table = &table;
        async move {
            table
                .query(&sql)
                .await
                .unwrap_or_else(|error| panic!("{name}: {sql}: {error}"))
        }
    };
    let table_name = table.name().to_string();
    assert_eq!(
        first_number(query(format!("SELECT COUNT(*) FROM {table_name}")).await),
        4,
        "{name}: rows in the window"
    );
    assert_eq!(
        first_number(
            query(format!(
                "SELECT COUNT(*) FROM (SELECT user_id FROM {table_name} GROUP BY user_id \
                 HAVING COUNT(*) > 1) AS repeated"
            ))
            .await
        ),
        1,
        "{name}: users with several rows"
    );
    assert_eq!(
        first_number(
            query(format!(
                "SELECT SUM(total) FROM {table_name} WHERE total > 15"
            ))
            .await
        ),
        110,
        "{name}: the sum of totals above 15 (20 + 50 + 40)"
    );
}

/// A training set takes, per entity row, the latest row at or before its time within the
/// view's TTL; no such row gives nulls, and the output keeps the entity table's order.
pub async fn check_training_sets_join_point_in_time(engine: &SharedOfflineEngine) {
    let name = engine.engine_name();
    // (user, entity time, expected amount)
    let cases: [(i64, i64, Option<f64>); 6] = [
        (1, START + 2 * HOUR, Some(2.0)), // latest at or before
        (1, START + 3 * HOUR, Some(4.0)), // an exact time matches
        (2, START + HOUR, None),          // before the user's first row
        (2, START + 5 * HOUR, None),      // older than the 2 h TTL
        (9, START + 5 * HOUR, None),      // an unknown user
        (1, START - 1, None),             // before everything
    ];
    let entities: Vec<(Option<i64>, Option<i64>)> = cases
        .iter()
        .map(|case| (Some(case.0), Some(case.1)))
        .collect();
    let expected: Vec<Option<f64>> = cases.iter().map(|case| case.2).collect();
    assert_eq!(
        training_totals(engine, &source_rows(), &entities, TieBreak::ContentHash).await,
        expected,
        "{name}: the training set, in entity order"
    );
}

/// Runs a one-view training set of `total` over `rows` (user, time, total) for `entities`
/// (user, entity time; either may be null) and returns each output row's total.
async fn training_totals(
    engine: &SharedOfflineEngine,
    rows: &[(i64, i64, Option<f64>)],
    entities: &[(Option<i64>, Option<i64>)],
    ties: TieBreak,
) -> Vec<Option<f64>> {
    let name = engine.engine_name();
    let mut view = payments_view();
    view.ttl = Some(TtlDuration::from_seconds(2 * 3_600));
    let values: Vec<(Vec<larder_core::Value>, Timestamp, Vec<larder_core::Value>)> = rows
        .iter()
        .map(|(user, time, total)| {
            (
                vec![larder_core::Value::Int64(*user)],
                Timestamp(*time),
                vec![total.map_or(larder_core::Value::Null, larder_core::Value::Float64)],
            )
        })
        .collect();
    let view_rows = ViewBatch::from_rows(
        &view,
        values
            .iter()
            .map(|(keys, time, features)| (keys.as_slice(), *time, features.as_slice())),
    )
    .unwrap_or_else(|error| panic!("view rows: {error}"));
    let entity_batch = RecordBatch::try_from_iter([
        (
            "user_id",
            Arc::new(Int64Array::from(
                entities.iter().map(|entity| entity.0).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(
                TimestampMicrosecondArray::from(
                    entities.iter().map(|entity| entity.1).collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ),
    ])
    .unwrap_or_else(|error| panic!("entity batch: {error}"));
    let request = TrainingSetRequest {
        entities: Arc::new(MemoryRows::new(entity_batch.schema(), vec![entity_batch])),
        entity_timestamp_column: "event_timestamp".to_string(),
        views: vec![ViewRequest {
            features: vec!["total".to_string()],
            rows: Arc::new(MemoryRows::new(
                ViewBatch::schema_of(&view),
                vec![view_rows.record_batch().clone()],
            )),
            view,
            ties,
        }],
        full_feature_names: false,
    };
    let mut stream = engine
        .training_set(&request, 64 << 20)
        .await
        .unwrap_or_else(|error| panic!("{name}: training_set: {error}"));
    let mut totals = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap_or_else(|error| panic!("{name}: a batch failed: {error}"));
        let column = batch
            .column_by_name("total")
            .unwrap_or_else(|| panic!("{name}: no column total"))
            .as_primitive::<Float64Type>();
        totals.extend(
            (0..batch.num_rows()).map(|row| (!column.is_null(row)).then(|| column.value(row))),
        );
    }
    totals
}

/// Ties at one key and time go to the larger content hash (or the later row), the TTL's
/// lower bound is exclusive, and null entity keys or times (and null feature values) come
/// out as nulls, row for row.
pub async fn check_training_set_ties_nulls_and_ttl_boundaries(engine: &SharedOfflineEngine) {
    let name = engine.engine_name();
    let hash = |total: f64| {
        larder_core::codec::content_hash(&larder_core::codec::encode_row_to_vec(&[
            larder_core::Value::Float64(total),
        ]))
    };
    let by_hash = if hash(7.0) > hash(8.0) { 7.0 } else { 8.0 };
    let rows = [
        (5, START + HOUR, Some(7.0)),
        (5, START + HOUR, Some(8.0)),
        (2, START + 2 * HOUR, Some(5.0)),
        (3, START + 4 * HOUR, None),
    ];
    let entities = [
        (Some(5), Some(START + HOUR)),         // a tie
        (Some(2), Some(START + 4 * HOUR - 1)), // just inside the 2 h TTL
        (Some(2), Some(START + 4 * HOUR)),     // exactly at its bound: excluded
        (Some(2), None),                       // no entity time
        (None, Some(START + 3 * HOUR)),        // no entity key
        (Some(3), Some(START + 4 * HOUR)),     // a null feature value
        (Some(5), Some(START + HOUR - 1)),     // just before the tie
    ];
    assert_eq!(
        training_totals(engine, &rows, &entities, TieBreak::ContentHash).await,
        vec![Some(by_hash), Some(5.0), None, None, None, None, None],
        "{name}: content-hash ties, TTL bounds and nulls"
    );
    assert_eq!(
        training_totals(engine, &rows, &entities, TieBreak::LaterWrite).await,
        vec![Some(8.0), Some(5.0), None, None, None, None, None],
        "{name}: later-write ties, TTL bounds and nulls"
    );
}
