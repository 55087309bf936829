//! The training set join against a naive nested-loop model, on random small inputs.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use futures::TryStreamExt;
use larder_core::{Feature, FeatureView, JoinKey, TtlDuration, ValueType};
use proptest::prelude::*;

use super::*;

const SECOND: i64 = 1_000_000;

fn view(
    name: &str,
    keys: &[(&str, ValueType)],
    features: &[(&str, ValueType)],
    ttl_seconds: Option<u64>,
) -> FeatureView {
    FeatureView {
        name: name.to_string(),
        version: 1,
        entities: vec![],
        join_keys: keys
            .iter()
            .map(|(name, dtype)| JoinKey {
                name: name.to_string(),
                dtype: dtype.clone(),
            })
            .collect(),
        source: "source".to_string(),
        transformation: None,
        transformation_path: None,
        timestamp_field: "ts".to_string(),
        features: features
            .iter()
            .map(|(name, dtype)| Feature {
                name: name.to_string(),
                dtype: dtype.clone(),
                description: String::new(),
                vector_index: None,
            })
            .collect(),
        ttl: ttl_seconds.map(TtlDuration::from_seconds),
        online: true,
        offline: true,
        owner: String::new(),
        tier: None,
        tags: Default::default(),
        description: String::new(),
        freshness_sla: None,
        checks: Vec::new(),
        ..larder_core::FeatureView::default()
    }
}

/// One feature row of the two-key view: (a, b, event second, value).
type PairRow = (i64, String, i64, i64);
/// One feature row of the one-key view: (a, event second, value).
type SingleRow = (i64, i64, f64);
/// One entity row: (a, b, second); a null second is an entity row without a point in time.
type EntityRow = (i64, String, Option<i64>);

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
}

/// `batch` as batches of `chunk` rows, each with buffers of its own (as a file reader makes
/// them).
fn chunked(schema: Arc<Schema>, batch: RecordBatch, chunk: usize) -> MemoryRows {
    let mut batches = Vec::new();
    let mut offset = 0;
    while offset < batch.num_rows() {
        let length = chunk.min(batch.num_rows() - offset);
        let indices =
            arrow::array::UInt32Array::from_iter_values(offset as u32..(offset + length) as u32);
        batches.push(
            arrow::compute::take_record_batch(&batch, &indices)
                .unwrap_or_else(|error| panic!("{error}")),
        );
        offset += length;
    }
    MemoryRows::new(schema, batches)
}

fn pair_rows(rows: &[PairRow], chunk: usize) -> MemoryRows {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Utf8, true),
        Field::new("ts", utc(), true),
        Field::new("f", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| row.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|row| row.1.clone()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|row| row.2 * SECOND))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| row.3))),
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    chunked(schema, batch, chunk)
}

fn single_rows(rows: &[SingleRow], chunk: usize) -> MemoryRows {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("ts", utc(), true),
        Field::new("g", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| row.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|row| row.1 * SECOND))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|row| row.2))),
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    chunked(schema, batch, chunk)
}

/// The entity table, its timestamps in one of several units and zones (same instants).
fn entity_rows(rows: &[EntityRow], timestamp_style: usize, chunk: usize) -> MemoryRows {
    let seconds = rows.iter().map(|row| row.2);
    let (timestamps, data_type): (ArrayRef, DataType) = match timestamp_style % 4 {
        // Null slots hold a late time (as Arrow allows): a join that reads a null's slot
        // would leak future rows.
        0 => (
            Arc::new(TimestampMicrosecondArray::new(
                seconds.map(|s| s.unwrap_or(1_000) * SECOND).collect(),
                Some(rows.iter().map(|row| row.2.is_some()).collect()),
            )),
            DataType::Timestamp(TimeUnit::Microsecond, None),
        ),
        1 => (
            Arc::new(
                TimestampMillisecondArray::from_iter(seconds.map(|s| s.map(|s| s * 1000)))
                    .with_timezone("+05:30"),
            ),
            DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("+05:30"))),
        ),
        2 => (
            Arc::new(
                TimestampNanosecondArray::from_iter(seconds.map(|s| s.map(|s| s * 1000 * SECOND)))
                    .with_timezone("America/New_York"),
            ),
            DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from("America/New_York"))),
        ),
        _ => (
            Arc::new(StringArray::from_iter(seconds.map(|s| {
                s.and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                    .map(|datetime| datetime.to_rfc3339())
            }))),
            DataType::Utf8,
        ),
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("label", DataType::Int64, false),
        Field::new("a", DataType::Int64, true),
        Field::new("event_timestamp", data_type, true),
        Field::new("b", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|row| row.0))),
            timestamps,
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|row| row.1.clone()),
            )),
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    chunked(schema, batch, chunk)
}

/// The content hash of a one-feature row: the batch lane's tie-break.
fn tie_of(value: larder_core::Value) -> u64 {
    larder_core::codec::content_hash(&larder_core::codec::encode_row_to_vec(&[value]))
}

/// The model: nested loops; at equal event times the larger content hash wins.
fn naive_latest<R>(
    entity_second: i64,
    ttl_seconds: Option<u64>,
    rows: &[R],
    matches_key: impl Fn(&R) -> bool,
    second_of: impl Fn(&R) -> i64,
    tie_of: impl Fn(&R) -> u64,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (index, row) in rows.iter().enumerate() {
        let second = second_of(row);
        let fresh = match ttl_seconds.filter(|ttl| *ttl > 0) {
            Some(ttl) => second > entity_second - ttl as i64,
            None => true,
        };
        if !matches_key(row) || second > entity_second || !fresh {
            continue;
        }
        let rank = (second, tie_of(row));
        let best_rank =
            best.map(|best_index| (second_of(&rows[best_index]), tie_of(&rows[best_index])));
        if best_rank.is_none_or(|best_rank| rank > best_rank) {
            best = Some(index);
        }
    }
    best
}

fn run(session: &SessionContext, request: &TrainingSetRequest) -> Result<Vec<RecordBatch>, String> {
    run_with_budget(session, request, in_memory_join_budget(session))
}

/// Runs a training set whose in-process as-of joins hold at most `in_memory_budget` bytes of
/// entity rows in memory (0: every join sorts and merges).
fn run_with_budget(
    session: &SessionContext,
    request: &TrainingSetRequest,
    in_memory_budget: usize,
) -> Result<Vec<RecordBatch>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async {
        let stream = build_training_set_with(session, request, None, in_memory_budget)
            .await
            .map_err(|error| error.to_string())?;
        stream
            .try_collect()
            .await
            .map_err(|error| error.to_string())
    })
}

fn column<T: Clone + 'static>(batch: &RecordBatch, name: &str) -> T {
    batch
        .column_by_name(name)
        .and_then(|column| column.as_any().downcast_ref::<T>().cloned())
        .unwrap_or_else(|| panic!("column {name}"))
}

#[allow(clippy::too_many_arguments)]
fn check_against_model(
    entities: &[EntityRow],
    pairs: &[PairRow],
    singles: &[SingleRow],
    pair_ttl: Option<u64>,
    single_ttl: Option<u64>,
    timestamp_style: usize,
    chunk: usize,
    memory_limit: usize,
    in_memory_budget: usize,
) -> Result<(), TestCaseError> {
    let pair_view = view(
        "pair",
        &[("a", ValueType::Int64), ("b", ValueType::String)],
        &[("f", ValueType::Int64)],
        pair_ttl,
    );
    let single_view = view(
        "single",
        &[("a", ValueType::Int64)],
        &[("g", ValueType::Float64)],
        single_ttl,
    );
    let request = TrainingSetRequest {
        entities: Arc::new(entity_rows(entities, timestamp_style, chunk)),
        entity_timestamp_column: "event_timestamp".to_string(),
        views: vec![
            ViewRequest {
                view: pair_view,
                features: vec!["f".to_string()],
                rows: Arc::new(pair_rows(pairs, chunk)),
                ties: TieBreak::ContentHash,
            },
            ViewRequest {
                view: single_view,
                features: vec!["g".to_string()],
                rows: Arc::new(single_rows(singles, chunk + 1)),
                ties: TieBreak::ContentHash,
            },
        ],
        full_feature_names: true,
    };
    let session =
        training_session(memory_limit).map_err(|error| TestCaseError::fail(error.to_string()))?;
    let batches =
        run_with_budget(&session, &request, in_memory_budget).map_err(TestCaseError::fail)?;
    let mut labels = Vec::new();
    let mut f_values = Vec::new();
    let mut g_values = Vec::new();
    for batch in &batches {
        let label: Int64Array = column(batch, "label");
        let f: Int64Array = column(batch, "pair__f");
        let g: Float64Array = column(batch, "single__g");
        for row in 0..batch.num_rows() {
            labels.push(label.value(row));
            f_values.push(f.is_valid(row).then(|| f.value(row)));
            g_values.push(g.is_valid(row).then(|| g.value(row)));
        }
    }
    prop_assert_eq!(labels, (0..entities.len() as i64).collect::<Vec<_>>());
    for (index, (a, b, second)) in entities.iter().enumerate() {
        // A null entity time gets null features (and keeps its row).
        let Some(second) = second else {
            prop_assert_eq!(f_values[index], None, "entity row {} has no time", index);
            prop_assert_eq!(g_values[index], None, "entity row {} has no time", index);
            continue;
        };
        let expected_f = naive_latest(
            *second,
            pair_ttl,
            pairs,
            |row| row.0 == *a && row.1 == *b,
            |row| row.2,
            |row| tie_of(larder_core::Value::Int64(row.3)),
        )
        .map(|best| pairs[best].3);
        let expected_g = naive_latest(
            *second,
            single_ttl,
            singles,
            |row| row.0 == *a,
            |row| row.1,
            |row| tie_of(larder_core::Value::Float64(row.2)),
        )
        .map(|best| singles[best].2);
        prop_assert_eq!(
            f_values[index],
            expected_f,
            "entity row {} {:?}",
            index,
            entities[index]
        );
        prop_assert_eq!(
            g_values[index],
            expected_g,
            "entity row {} {:?}",
            index,
            entities[index]
        );
    }
    Ok(())
}

fn key_b() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x".to_string()),
        Just("y".to_string()),
        Just("".to_string())
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn training_set_matches_the_nested_loop_model(
        entities in prop::collection::vec((0i64..4, key_b(), prop::option::weighted(0.85, 0i64..30)), 0..40),
        pair_seeds in prop::collection::vec((0i64..4, key_b(), 0i64..25), 0..60),
        singles_seeds in prop::collection::vec((0i64..5, 0i64..25), 0..40),
        pair_ttl in prop::option::of(0u64..12),
        single_ttl in prop::option::of(1u64..12),
        timestamp_style in 0usize..4,
        chunk in 1usize..9,
        // Sort-merge, in memory until the entity rows outgrow a few batches, in memory.
        in_memory_budget in prop_oneof![Just(0usize), Just(4096usize), Just(usize::MAX)],
    ) {
        // Unique values, so the row that won a tie is visible; rows are in random order.
        let pairs: Vec<PairRow> = pair_seeds
            .into_iter()
            .enumerate()
            .map(|(index, (a, b, second))| (a, b, second, index as i64))
            .collect();
        let singles: Vec<SingleRow> = singles_seeds
            .into_iter()
            .enumerate()
            .map(|(index, (a, second))| (a, second, index as f64))
            .collect();
        check_against_model(&entities, &pairs, &singles, pair_ttl, single_ttl, timestamp_style, chunk, 64 << 20, in_memory_budget)?;
    }
}

#[test]
fn sorts_spill_to_disk_and_still_match_the_model() {
    // 200k feature rows under a small (16 MiB) pool shared by six sorts: the sorts must spill.
    let pairs: Vec<PairRow> = (0..200_000i64)
        .map(|index| {
            (
                (index * 7919) % 50,
                if index % 3 == 0 { "x" } else { "y" }.to_string(),
                (index * 31) % 1000,
                index,
            )
        })
        .collect();
    let singles: Vec<SingleRow> = (0..1000i64)
        .map(|index| (index % 50, index % 700, index as f64))
        .collect();
    let entities: Vec<EntityRow> = (0..300i64)
        .map(|index| {
            (
                (index * 13) % 50,
                if index % 2 == 0 { "x" } else { "y" }.to_string(),
                (index % 29 != 0).then_some((index * 17) % 1100),
            )
        })
        .collect();
    let result = check_against_model(
        &entities,
        &pairs,
        &singles,
        Some(40),
        None,
        0,
        8192,
        16 << 20,
        0,
    );
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn errors_name_the_missing_column_the_type_mismatch_and_the_unknown_feature() {
    let pair_view = view(
        "pair",
        &[("a", ValueType::Int64), ("b", ValueType::String)],
        &[("f", ValueType::Int64)],
        None,
    );
    let request =
        |features: Vec<String>, timestamp_column: &str, view: FeatureView| TrainingSetRequest {
            entities: Arc::new(entity_rows(&[(1, "x".to_string(), Some(3))], 0, 8)),
            entity_timestamp_column: timestamp_column.to_string(),
            views: vec![ViewRequest {
                view,
                features,
                rows: Arc::new(pair_rows(&[], 8)),
                ties: TieBreak::ContentHash,
            }],
            full_feature_names: false,
        };
    let session = training_session(16 << 20).unwrap_or_else(|error| panic!("{error}"));
    let unknown = run(
        &session,
        &request(
            vec!["nope".to_string()],
            "event_timestamp",
            pair_view.clone(),
        ),
    );
    assert_eq!(
        unknown.err().as_deref(),
        Some("feature view 'pair' has no feature 'nope'")
    );
    let missing_timestamp = run(
        &session,
        &request(vec!["f".to_string()], "when", pair_view.clone()),
    );
    assert!(
        missing_timestamp
            .err()
            .is_some_and(|message| message.contains("no timestamp column 'when'")),
    );
    let mut mismatched = pair_view.clone();
    mismatched.join_keys[0].dtype = ValueType::String;
    let mismatch = run(
        &session,
        &request(vec!["f".to_string()], "event_timestamp", mismatched),
    );
    assert_eq!(
        mismatch.err().as_deref(),
        Some("entity column 'a' has type Int64, but feature view 'pair' joins on it as string")
    );
    let mut missing_key = pair_view;
    missing_key.join_keys[1].name = "c".to_string();
    let missing = run(
        &session,
        &request(vec!["f".to_string()], "event_timestamp", missing_key),
    );
    assert!(
        missing
            .err()
            .is_some_and(|message| message.contains("no column 'c'"))
    );
}

#[test]
fn a_label_column_named_like_a_feature_is_refused_without_full_names() {
    let session = training_session(16 << 20).unwrap_or_else(|error| panic!("{error}"));
    let request = TrainingSetRequest {
        entities: Arc::new(entity_rows(&[(1, "x".to_string(), Some(3))], 0, 8)),
        entity_timestamp_column: "event_timestamp".to_string(),
        views: vec![ViewRequest {
            view: view(
                "pair",
                &[("a", ValueType::Int64), ("b", ValueType::String)],
                &[("label", ValueType::Int64)],
                None,
            ),
            features: vec!["label".to_string()],
            rows: Arc::new(pair_rows(&[], 8)),
            ties: TieBreak::ContentHash,
        }],
        full_feature_names: false,
    };
    let result = run(&session, &request);
    assert!(
        result
            .err()
            .is_some_and(|message| message.contains("output column 'label' would appear twice"))
    );
}

/// A null entity time at the start, middle and end of one key's rows: those rows get null
/// features, and the other rows of the key still get exactly their point in time (the null
/// must not move the merge past rows that later entity rows may not see).
#[test]
fn null_entity_times_get_nulls_and_leak_nothing_to_other_rows() {
    // A row at the epoch too: a null's slot read as a time (0, or the late time the builder
    // leaves there) would match it or a later row.
    let pairs: Vec<PairRow> = vec![
        (1, "x".to_string(), 0, 50),
        (1, "x".to_string(), 10, 100),
        (1, "x".to_string(), 20, 200),
        (1, "x".to_string(), 30, 300),
    ];
    let entities: Vec<EntityRow> = vec![
        (1, "x".to_string(), None),
        (1, "x".to_string(), Some(5)),
        (1, "x".to_string(), Some(10)),
        (1, "x".to_string(), None),
        (1, "x".to_string(), Some(19)),
        (1, "x".to_string(), Some(25)),
        (1, "x".to_string(), None),
    ];
    for timestamp_style in 0..4 {
        for chunk in [1, 3, 8] {
            for in_memory_budget in [0, usize::MAX] {
                let result = check_against_model(
                    &entities,
                    &pairs,
                    &[],
                    None,
                    None,
                    timestamp_style,
                    chunk,
                    16 << 20,
                    in_memory_budget,
                );
                assert!(
                    result.is_ok(),
                    "style {timestamp_style}, chunk {chunk}, budget {in_memory_budget}: {result:?}"
                );
            }
        }
    }
}

/// An entity time 1.5 µs before 1970, in nanoseconds, is at or after -2 µs and before -1 µs:
/// it sees the feature row at -2 µs, never the one at -1 µs (its future).
#[test]
fn entity_times_before_1970_round_toward_the_past() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        ),
    ]));
    let entities = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 1])),
            Arc::new(TimestampNanosecondArray::from(vec![-1_500, -2_500])),
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let single_view = view(
        "single",
        &[("a", ValueType::Int64)],
        &[("g", ValueType::Float64)],
        None,
    );
    let feature_schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("ts", utc(), true),
        Field::new("g", DataType::Float64, true),
    ]));
    let features = RecordBatch::try_new(
        Arc::clone(&feature_schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 1])),
            Arc::new(TimestampMicrosecondArray::from(vec![-2, -1]).with_timezone("UTC")),
            Arc::new(Float64Array::from(vec![2.0, 1.0])),
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let request = TrainingSetRequest {
        entities: Arc::new(MemoryRows::new(schema, vec![entities])),
        entity_timestamp_column: "event_timestamp".to_string(),
        views: vec![ViewRequest {
            view: single_view,
            features: vec!["g".to_string()],
            rows: Arc::new(MemoryRows::new(feature_schema, vec![features])),
            ties: TieBreak::ContentHash,
        }],
        full_feature_names: false,
    };
    let session = training_session(16 << 20).unwrap_or_else(|error| panic!("{error}"));
    let batches = run(&session, &request).unwrap_or_else(|error| panic!("{error}"));
    let values: Vec<Option<f64>> = batches
        .iter()
        .flat_map(|batch| {
            column::<Float64Array>(batch, "g")
                .iter()
                .collect::<Vec<_>>()
        })
        .collect();
    // -1.5 µs sees -2 µs; -2.5 µs (floored to -3 µs) sees nothing.
    assert_eq!(values, vec![Some(2.0), None]);
}

#[test]
fn less_sort_memory_than_the_minimum_is_a_clear_error() {
    let error = training_session(8 << 20)
        .err()
        .map(|error| error.to_string());
    assert_eq!(
        error.as_deref(),
        Some(
            "a training set needs at least 16 MiB of sort memory (it spills to disk beyond it), not 8 MiB"
        )
    );
    assert!(training_session(MIN_TRAINING_MEMORY_BYTES).is_ok());
}

/// 600k entity rows that all match a few feature rows in one feature batch, under the
/// minimum pool: the gathered values reach the last sort in small batches, so it spills
/// instead of failing on one batch larger than its share of the pool.
#[test]
fn many_entity_rows_matching_one_feature_batch_fit_the_minimum_pool() {
    let pairs: Vec<PairRow> = (0..60i64)
        .map(|index| (index % 30, "x".to_string(), index % 7, index))
        .collect();
    let singles: Vec<SingleRow> = (0..60i64)
        .map(|index| (index % 30, index % 5, index as f64))
        .collect();
    let entities: Vec<EntityRow> = (0..600_000i64)
        .map(|index| (index % 30, "x".to_string(), Some(10 + index % 3)))
        .collect();
    let result = check_against_model(
        &entities,
        &pairs,
        &singles,
        None,
        None,
        0,
        8192,
        MIN_TRAINING_MEMORY_BYTES,
        // The minimum pool's in-memory budget: far less than 600k entity rows take.
        MIN_TRAINING_MEMORY_BYTES / 4,
    );
    assert!(result.is_ok(), "{result:?}");
}

/// Entity columns of a Parquet entity file come back with their own types (text as `Utf8`,
/// not DataFusion's `Utf8View`), in the file's order.
#[test]
fn entity_file_columns_come_back_unchanged() {
    let folder = tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"));
    let path = folder.path().join("entities.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("note", DataType::Utf8, true),
        Field::new("a", DataType::Int64, true),
        Field::new("event_timestamp", utc(), true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec![Some("first"), None])),
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![5 * SECOND, 5 * SECOND]).with_timezone("UTC"),
            ),
        ],
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let file = std::fs::File::create(&path).unwrap_or_else(|error| panic!("{error}"));
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None)
        .unwrap_or_else(|error| panic!("{error}"));
    writer
        .write(&batch)
        .unwrap_or_else(|error| panic!("{error}"));
    writer.close().unwrap_or_else(|error| panic!("{error}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("{error}"));
    let entities = runtime
        .block_on(EntityFile::open_file(&path, EntityFileFormat::Parquet))
        .unwrap_or_else(|error| panic!("{error}"));
    let request = TrainingSetRequest {
        entities: Arc::new(entities),
        entity_timestamp_column: "event_timestamp".to_string(),
        views: vec![ViewRequest {
            view: view(
                "single",
                &[("a", ValueType::Int64)],
                &[("g", ValueType::Float64)],
                None,
            ),
            features: vec!["g".to_string()],
            rows: Arc::new(single_rows(&[(1, 4, 0.5)], 8)),
            ties: TieBreak::ContentHash,
        }],
        full_feature_names: false,
    };
    let session =
        training_session(MIN_TRAINING_MEMORY_BYTES).unwrap_or_else(|error| panic!("{error}"));
    let batches = run(&session, &request).unwrap_or_else(|error| panic!("{error}"));
    let output = batches.first().unwrap_or_else(|| panic!("no output"));
    let types: Vec<(String, DataType)> = output
        .schema()
        .fields()
        .iter()
        .map(|field| (field.name().clone(), field.data_type().clone()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("note".to_string(), DataType::Utf8),
            ("a".to_string(), DataType::Int64),
            ("event_timestamp".to_string(), utc()),
            ("g".to_string(), DataType::Float64),
        ]
    );
    let notes: StringArray = column(output, "note");
    assert_eq!(notes.iter().collect::<Vec<_>>(), vec![Some("first"), None]);
}

/// Two rows of one key at one time: a batch view takes the larger content hash, whichever
/// is stored first; a push view takes the one stored later.
#[test]
fn ties_follow_the_view_rule() {
    let entities: Vec<EntityRow> = vec![(1, "x".to_string(), Some(9))];
    let pick = |rows: &[SingleRow], ties: TieBreak, in_memory_budget: usize| -> Option<f64> {
        let request = TrainingSetRequest {
            entities: Arc::new(entity_rows(&entities, 0, 8)),
            entity_timestamp_column: "event_timestamp".to_string(),
            views: vec![ViewRequest {
                view: view(
                    "single",
                    &[("a", ValueType::Int64)],
                    &[("g", ValueType::Float64)],
                    None,
                ),
                features: vec!["g".to_string()],
                rows: Arc::new(single_rows(rows, 8)),
                ties,
            }],
            full_feature_names: false,
        };
        let session =
            training_session(MIN_TRAINING_MEMORY_BYTES).unwrap_or_else(|error| panic!("{error}"));
        let batches = run_with_budget(&session, &request, in_memory_budget)
            .unwrap_or_else(|error| panic!("{error}"));
        let values: Float64Array = column(&batches[0], "g");
        values.is_valid(0).then(|| values.value(0))
    };
    let (one, two) = ((1, 5, 1.0), (1, 5, 2.0));
    let by_hash =
        if tie_of(larder_core::Value::Float64(1.0)) > tie_of(larder_core::Value::Float64(2.0)) {
            1.0
        } else {
            2.0
        };
    // Sort-merge (budget 0), then in memory.
    for budget in [0, usize::MAX] {
        assert_eq!(
            pick(&[one, two], TieBreak::ContentHash, budget),
            Some(by_hash)
        );
        assert_eq!(
            pick(&[two, one], TieBreak::ContentHash, budget),
            Some(by_hash)
        );
        assert_eq!(pick(&[one, two], TieBreak::LaterWrite, budget), Some(2.0));
        assert_eq!(pick(&[two, one], TieBreak::LaterWrite, budget), Some(1.0));
    }
}
