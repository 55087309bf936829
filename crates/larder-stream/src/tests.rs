//! The engine against a naive model, state round trips, and online = offline.

use std::collections::BTreeMap;
use std::sync::Arc;

use larder_core::stream::tile_size_seconds;
use larder_core::{
    Aggregation, AggregationFunction, DataSource, DataSourceKind, EntityKey, Feature, FeatureView,
    JoinKey, StreamAggregations, StreamField, StreamPayload, Timestamp, TimestampUnit, TtlDuration,
    Value, ValueType,
};
use larder_ingest::WritePath;
use larder_online::{MemoryOnlineStore, OnlineStore};
use proptest::prelude::*;

use crate::engine::{AggregationPlan, EventOutcome, StreamEvent, ViewAggregator};
use crate::processor::{StreamMessage, StreamProcessor};
use crate::state::StreamStateStore;

const SECOND: i64 = 1_000_000;

fn aggregation(
    feature: &str,
    function: AggregationFunction,
    column: Option<(&str, ValueType)>,
    window_seconds: u64,
) -> Aggregation {
    Aggregation {
        feature: feature.to_string(),
        function,
        column: column.as_ref().map(|(name, _)| name.to_string()),
        input_dtype: column.map(|(_, dtype)| dtype),
        window: TtlDuration::from_seconds(window_seconds),
    }
}

/// A view over `user_id` with one aggregation of each kind over windows of 60 s, 300 s and
/// 3600 s (tiles of 1 s, 5 s and 60 s).
fn test_view(allowed_lateness_seconds: u64) -> (FeatureView, StreamAggregations) {
    use AggregationFunction::*;
    let amount = || Some(("amount", ValueType::Float64));
    let units = || Some(("units", ValueType::Int64));
    let aggregations = vec![
        aggregation("count_60s", Count, None, 60),
        aggregation("units_sum_300s", Sum, units(), 300),
        aggregation("amount_sum_1h", Sum, amount(), 3_600),
        aggregation("amount_mean_300s", Mean, amount(), 300),
        aggregation("units_min_1h", Min, units(), 3_600),
        aggregation("amount_max_60s", Max, amount(), 60),
        aggregation("units_last_300s", Last, units(), 300),
        aggregation("units_last3_1h", LastN { n: 3 }, units(), 3_600),
        aggregation("units_count_1h", Count, units(), 3_600),
    ];
    let features = aggregations
        .iter()
        .map(|aggregation| Feature {
            name: aggregation.feature.clone(),
            dtype: aggregation
                .function
                .output_type(aggregation.input_dtype.as_ref())
                .unwrap(),
            description: String::new(),
        })
        .collect();
    let view = FeatureView {
        name: "user_stream".into(),
        version: 1,
        entities: vec!["user".into()],
        join_keys: vec![JoinKey {
            name: "user_id".into(),
            dtype: ValueType::Int64,
        }],
        source: "events".into(),
        transformation: None,
        transformation_path: None,
        timestamp_field: "ts".into(),
        features,
        ttl: None,
        online: true,
        offline: true,
        owner: String::new(),
        tier: None,
        tags: BTreeMap::new(),
        description: String::new(),
        freshness_sla: None,
        checks: Vec::new(),
    };
    let spec = StreamAggregations {
        aggregations,
        allowed_lateness: TtlDuration::from_seconds(allowed_lateness_seconds),
    };
    (view, spec)
}

fn test_source() -> DataSource {
    DataSource {
        name: "events".into(),
        kind: DataSourceKind::Nats {
            url: "nats://127.0.0.1:4222".into(),
            stream: "EVENTS".into(),
            subject: "events".into(),
            durable: None,
            payload: StreamPayload {
                timestamp_unit: TimestampUnit::Milliseconds,
                fields: vec![
                    StreamField {
                        name: "user_id".into(),
                        path: vec!["user".into(), "id".into()],
                        dtype: ValueType::Int64,
                    },
                    StreamField {
                        name: "amount".into(),
                        path: vec!["amount".into()],
                        dtype: ValueType::Float64,
                    },
                    StreamField {
                        name: "units".into(),
                        path: vec!["units".into()],
                        dtype: ValueType::Int64,
                    },
                ],
                ..StreamPayload::default()
            },
        },
        timestamp_field: "ts".into(),
        description: String::new(),
        owner: String::new(),
        tags: BTreeMap::new(),
    }
}

/// One generated event: (user, event second, amount in halves, units or null).
type RawEvent = (i64, i64, i64, Option<i64>);

fn to_event(plan: &AggregationPlan, raw: &RawEvent) -> StreamEvent {
    let (user, second, halves, units) = *raw;
    let inputs = plan
        .input_columns()
        .iter()
        .map(|column| match column.as_str() {
            "amount" => Value::Float64(halves as f64 / 2.0),
            "units" => units.map_or(Value::Null, Value::Int64),
            other => panic!("unexpected column {other}"),
        })
        .collect();
    StreamEvent {
        entity_key: EntityKey::from_int(user),
        event_timestamp: Timestamp(second * SECOND),
        inputs,
    }
}

fn to_message(raw: &RawEvent) -> Vec<u8> {
    let (user, second, halves, units) = *raw;
    serde_json::json!({
        "user": {"id": user},
        "ts": second * 1_000,
        "amount": halves as f64 / 2.0,
        "units": units,
    })
    .to_string()
    .into_bytes()
}

/// The naive model: every accepted event kept; a window value recomputed from them.
fn naive_values(
    spec: &StreamAggregations,
    accepted: &[(RawEvent, usize)],
    user: i64,
) -> (i64, Vec<Value>) {
    let own: Vec<&(RawEvent, usize)> = accepted
        .iter()
        .filter(|((event_user, ..), _)| *event_user == user)
        .collect();
    let newest = own
        .iter()
        .map(|((_, second, ..), _)| *second)
        .max()
        .unwrap();
    let values = spec
        .aggregations
        .iter()
        .map(|aggregation| {
            let tile = tile_size_seconds(aggregation.window) as i64;
            let window = aggregation.window.as_seconds() as i64;
            let current = newest.div_euclid(tile) * tile;
            // Events in the window, ordered by (event time, arrival).
            let mut inside: Vec<&(RawEvent, usize)> = own
                .iter()
                .copied()
                .filter(|((_, second, ..), _)| {
                    let start = second.div_euclid(tile) * tile;
                    start > current - window && start <= current
                })
                .collect();
            inside.sort_by_key(|((_, second, ..), arrival)| (*second, *arrival));
            let amounts: Vec<f64> = inside
                .iter()
                .map(|((_, _, halves, _), _)| *halves as f64 / 2.0)
                .collect();
            let units: Vec<i64> = inside
                .iter()
                .filter_map(|((.., units), _)| *units)
                .collect();
            let column = aggregation.column.as_deref();
            use AggregationFunction::*;
            match (aggregation.function, column) {
                (Count, None) => Value::Int64(inside.len() as i64),
                (Count, Some("units")) => Value::Int64(units.len() as i64),
                (Sum, Some("units")) => Value::Int64(units.iter().sum()),
                (Sum, Some("amount")) => Value::Float64(amounts.iter().sum()),
                (Mean, Some("amount")) if amounts.is_empty() => Value::Null,
                (Mean, Some("amount")) => {
                    Value::Float64(amounts.iter().sum::<f64>() / amounts.len() as f64)
                }
                (Min, Some("units")) => {
                    units.iter().min().map_or(Value::Null, |v| Value::Int64(*v))
                }
                (Max, Some("amount")) => amounts
                    .iter()
                    .copied()
                    .reduce(f64::max)
                    .map_or(Value::Null, Value::Float64),
                (Last, Some("units")) => units.last().map_or(Value::Null, |v| Value::Int64(*v)),
                (LastN { n }, Some("units")) => Value::List(
                    units
                        .iter()
                        .rev()
                        .take(n as usize)
                        .map(|v| Value::Int64(*v))
                        .collect(),
                ),
                other => panic!("no model for {other:?}"),
            }
        })
        .collect();
    (newest, values)
}

fn raw_events() -> impl Strategy<Value = Vec<RawEvent>> {
    prop::collection::vec(
        (
            0..4i64,
            0..8_000i64,
            -40..40i64,
            prop::option::weighted(0.8, -50..50i64),
        ),
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// After every event, the entity's values equal the naive model's, and late events are
    /// exactly those older than the newest event time seen minus the allowed lateness.
    #[test]
    fn engine_matches_the_naive_model(events in raw_events(), lateness in 0..4_000u64) {
        let (view, spec) = test_view(lateness);
        let plan = AggregationPlan::new(&view, &spec).unwrap();
        let mut aggregator = ViewAggregator::new(plan.clone());
        let mut accepted: Vec<(RawEvent, usize)> = Vec::new();
        let mut max_seen: Option<i64> = None;
        for (arrival, raw) in events.iter().enumerate() {
            let outcome = aggregator.apply(&to_event(&plan, raw));
            let is_late = max_seen.is_some_and(|seen| raw.1 < seen - lateness as i64);
            prop_assert_eq!(outcome == EventOutcome::Late, is_late);
            if is_late {
                continue;
            }
            max_seen = Some(max_seen.map_or(raw.1, |seen| seen.max(raw.1)));
            accepted.push((*raw, arrival));
            let (newest, expected) = naive_values(&spec, &accepted, raw.0);
            let (timestamp, actual) = aggregator.values_of(&EntityKey::from_int(raw.0)).unwrap();
            prop_assert_eq!(timestamp, Timestamp(newest * SECOND));
            prop_assert_eq!(actual, expected);
        }
    }

    /// State restored from its encoding behaves exactly like the original.
    #[test]
    fn state_round_trips(events in raw_events(), split in 0..120usize) {
        let (view, spec) = test_view(600);
        let plan = AggregationPlan::new(&view, &spec).unwrap();
        let split = split.min(events.len());
        let mut original = ViewAggregator::new(plan.clone());
        for raw in &events[..split] {
            original.apply(&to_event(&plan, raw));
        }
        let changes = original.take_changes();
        let mut restored = ViewAggregator::new(plan.clone());
        restored.set_max_seen(original.max_seen());
        for (key, state) in &changes.states {
            restored.restore_entity(key.clone(), state).unwrap();
        }
        for raw in &events[split..] {
            prop_assert_eq!(original.apply(&to_event(&plan, raw)), restored.apply(&to_event(&plan, raw)));
        }
        for user in 0..4 {
            let key = EntityKey::from_int(user);
            prop_assert_eq!(original.values_of(&key), restored.values_of(&key));
        }
    }
}

#[test]
fn tiles_outside_every_window_are_dropped() {
    let (view, spec) = test_view(0);
    let plan = AggregationPlan::new(&view, &spec).unwrap();
    let mut aggregator = ViewAggregator::new(plan.clone());
    for second in (0..100_000).step_by(7) {
        aggregator.apply(&to_event(&plan, &(1, second, 2, Some(1))));
    }
    let changes = aggregator.take_changes();
    // 60 + 60 + 60 tiles at most, a few dozen bytes each.
    assert!(
        changes.states[0].1.len() < 20_000,
        "{}",
        changes.states[0].1.len()
    );
}

/// Deterministic pseudo-random events with late arrivals.
fn recorded_stream(count: usize) -> Vec<RawEvent> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|index| {
            let jitter = (next() % 900) as i64;
            let second = 1_700_000_000 + index as i64 * 3 - jitter;
            let units = (next() % 10 != 0).then(|| (next() % 100) as i64);
            (
                (next() % 25) as i64,
                second,
                (next() % 200) as i64 - 100,
                units,
            )
        })
        .collect()
}

/// The stream consumed in batches of varying size (and replayed twice, as after a crash)
/// leaves in the online store exactly the values that the offline backfill of the same
/// recorded stream gives at each entity's newest event time, through a real training set.
#[tokio::test]
async fn online_values_equal_offline_values_at_the_same_instant() {
    use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use futures::TryStreamExt;
    use larder_offline::training::{
        MemoryRows, OfflineViewRows, TrainingSetRequest, ViewRequest, build_training_set,
        training_session,
    };

    let (view, spec) = test_view(600);
    let source = test_source();
    let events = recorded_stream(3_000);
    let messages: Vec<Vec<u8>> = events.iter().map(to_message).collect();

    // Online: the consumer's processor over a memory store, batches of 1..=97 messages; the
    // first 1000 messages are delivered twice (a replay after a crash).
    let directory = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryOnlineStore::new());
    let write_path = Arc::new(WritePath::new(store.clone()));
    let state = StreamStateStore::open(&directory.path().join("stream.redb")).unwrap();
    let mut processor = StreamProcessor::open(
        view.clone(),
        &source,
        Some(&spec),
        Arc::clone(&write_path),
        state.clone(),
    )
    .await
    .unwrap();
    let as_message = |index: usize| StreamMessage {
        partition: "0".into(),
        sequence: index as u64 + 1,
        payload: messages[index].clone(),
    };
    let mut position = 0;
    let mut batch_size = 1;
    let mut totals = crate::processor::BatchReport::default();
    while position < messages.len() {
        let end = (position + batch_size).min(messages.len());
        let batch: Vec<StreamMessage> = (position..end).map(as_message).collect();
        let report = processor.process(&batch).await.unwrap();
        totals.applied += report.applied;
        totals.late += report.late;
        position = end;
        batch_size = batch_size % 97 + 13;
        if position == 1_500 {
            // Restart from the persisted state, and redeliver from the beginning.
            processor = StreamProcessor::open(
                view.clone(),
                &source,
                Some(&spec),
                Arc::clone(&write_path),
                state.clone(),
            )
            .await
            .unwrap();
            let replay: Vec<StreamMessage> = (0..1_000).map(as_message).collect();
            let report = processor.process(&replay).await.unwrap();
            assert_eq!(report.duplicates, 1_000);
            assert_eq!(report.applied, 0);
        }
    }
    assert!(
        totals.late > 0,
        "the recorded stream should have late events"
    );
    assert_eq!(totals.applied + totals.late, messages.len() as u64);

    // Offline: the backfill of the same recorded stream, through a real training set.
    let (rows, report) =
        crate::backfill::backfill_rows(&view, &source, &spec, messages.iter().map(Vec::as_slice))
            .unwrap();
    assert_eq!(report.applied, totals.applied);
    assert_eq!(report.late, totals.late);
    let offline = larder_offline::ParquetOfflineStore::new(directory.path().join("offline"));
    crate::backfill::write_offline(&offline, &view, &rows).unwrap();

    let users: Vec<i64> = (0..25).collect();
    let keys: Vec<EntityKey> = users
        .iter()
        .map(|user| EntityKey::from_int(*user))
        .collect();
    let online_rows = store.read_rows(&view.id(), &keys).await.unwrap();
    let online: Vec<(Timestamp, Vec<Value>)> = online_rows
        .into_iter()
        .map(|row| {
            let row = row.unwrap();
            (
                row.event_timestamp,
                larder_core::codec::decode_row(&row.values).unwrap(),
            )
        })
        .collect();

    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let entity_batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(users.clone())),
            Arc::new(
                TimestampMicrosecondArray::from(
                    online
                        .iter()
                        .map(|(time, _)| time.as_micros())
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        ],
    )
    .unwrap();
    let request = TrainingSetRequest {
        entities: Arc::new(MemoryRows::new(schema, vec![entity_batch])),
        entity_timestamp_column: "event_timestamp".into(),
        views: vec![ViewRequest {
            view: view.clone(),
            features: view
                .features
                .iter()
                .map(|feature| feature.name.clone())
                .collect(),
            rows: Arc::new(OfflineViewRows::of_view(&offline, &view).unwrap().unwrap()),
        }],
        full_feature_names: false,
    };
    let session = training_session(64 << 20).unwrap();
    let batches: Vec<RecordBatch> = build_training_set(&session, &request)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let training = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(training.num_rows(), users.len());
    for (index, feature) in view.features.iter().enumerate() {
        let column = training.column_by_name(&feature.name).unwrap();
        let offline_values =
            larder_offline::CanonicalColumn::from_array(column, &feature.dtype, &feature.name)
                .unwrap();
        for (row, (_, online_values)) in online.iter().enumerate() {
            assert_eq!(
                offline_values.value(row),
                online_values[index],
                "user {row}, feature {}",
                feature.name
            );
        }
    }
}
