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
            vector_index: None,
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
        ..larder_core::FeatureView::default()
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
        // The tile count kept while applying equals the one rebuilt from the encoding.
        prop_assert_eq!(original.tile_count(), restored.tile_count());
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
    // One entity: at most 60 + 60 + 60 tiles (and at least the newest of each resolution).
    let tiles = aggregator.tile_count();
    assert!((3..=180).contains(&tiles), "{tiles} tiles");
    let changes = aggregator.take_changes();
    // A few dozen bytes each.
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
        "0",
        Arc::clone(&write_path),
        state.clone(),
    )
    .await
    .unwrap();
    let as_message = |index: usize| StreamMessage {
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
                "0",
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
            ties: larder_offline::training::TieBreak::LaterWrite,
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

/// Consumers that take a partition over from each other, replaying the stretch they did not
/// see into their state without writing it (as the Kafka consumer does after a rebalance),
/// leave in the online store the values one consumer that read everything leaves.
#[tokio::test]
async fn takeovers_with_replayed_gaps_equal_a_single_consumer() {
    let (view, spec) = test_view(600);
    let source = test_source();
    let messages: Vec<StreamMessage> = recorded_stream(3_000)
        .iter()
        .map(to_message)
        .enumerate()
        .map(|(index, payload)| StreamMessage {
            sequence: index as u64,
            payload,
        })
        .collect();
    let directory = tempfile::tempdir().unwrap();
    let state_of = |name: &str| StreamStateStore::open(&directory.path().join(name)).unwrap();
    let open = |state: StreamStateStore, store: &Arc<MemoryOnlineStore>| {
        StreamProcessor::open(
            view.clone(),
            &source,
            Some(&spec),
            "3",
            Arc::new(WritePath::new(store.clone())),
            state,
        )
    };

    let single_store = Arc::new(MemoryOnlineStore::new());
    let mut single = open(state_of("single.redb"), &single_store).await.unwrap();
    for chunk in messages.chunks(100) {
        single.process(chunk).await.unwrap();
    }

    let shared = Arc::new(MemoryOnlineStore::new());
    let first_state = state_of("a.redb");
    let mut first = open(first_state.clone(), &shared).await.unwrap();
    first.process(&messages[..1_000]).await.unwrap();
    // The second consumer never held the partition: it replays everything before its turn.
    let mut second = open(state_of("b.redb"), &shared).await.unwrap();
    let replayed = second.absorb(&messages[..1_000]);
    assert_eq!(replayed.rows_written, 0);
    second.process(&messages[1_000..2_000]).await.unwrap();
    // The first comes back: its saved state misses only the second's stretch.
    drop(first);
    // Its process stops: the last checkpoint (after the one its first batch started).
    first_state.checkpoint().await.unwrap();
    drop(first_state);
    // A checkpoint the first processor started in the background holds the file until it
    // ends (a process opens its state file once, so only a test opens it again).
    let mut reopened = StreamStateStore::open(&directory.path().join("a.redb"));
    for _ in 0..250 {
        if reopened.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        reopened = StreamStateStore::open(&directory.path().join("a.redb"));
    }
    let mut first = open(reopened.unwrap(), &shared).await.unwrap();
    assert_eq!(first.position().last_sequence, Some(999));
    first.absorb(&messages[1_000..2_000]);
    first.process(&messages[2_000..]).await.unwrap();

    let keys: Vec<EntityKey> = (0..25).map(EntityKey::from_int).collect();
    let values = |rows: Vec<Option<larder_online::OnlineRow>>| -> Vec<(Timestamp, Vec<Value>)> {
        rows.into_iter()
            .map(|row| {
                let row = row.unwrap();
                let values = larder_core::codec::decode_row(&row.values).unwrap();
                (row.event_timestamp, values)
            })
            .collect()
    };
    let expected = values(single_store.read_rows(&view.id(), &keys).await.unwrap());
    let got = values(shared.read_rows(&view.id(), &keys).await.unwrap());
    assert_eq!(got, expected);
}

/// The three lanes meet in one write path: a stream consumer (passthrough view), batch
/// runs with change detection and direct writes, interleaved concurrently for the same
/// entities with shuffled event times, over the real embedded store. Whatever the order,
/// each entity keeps the row with the newest event time, and the lane that wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_stream_and_direct_writes_interleave_and_the_newest_survives() {
    use larder_core::WriteLane;
    use larder_ingest::FeatureRow;
    use larder_online::{EmbeddedOnlineStore, MemoryDigestStore};

    const USERS: i64 = 30;
    const ROUNDS: i64 = 40;
    let (mut view, _) = test_view(600);
    view.name = "user_latest".into();
    view.features = vec![
        Feature {
            name: "amount".into(),
            dtype: ValueType::Float64,
            description: String::new(),
            vector_index: None,
        },
        Feature {
            name: "units".into(),
            dtype: ValueType::Int64,
            description: String::new(),
            vector_index: None,
        },
    ];
    let source = test_source();
    let directory = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedOnlineStore::open(&directory.path().join("online.redb")).unwrap());
    let write_path = Arc::new(WritePath::new(store.clone()));
    // Distinct event times per (round, lane, user), shuffled across rounds: a value encodes
    // its lane and second, so the survivor tells who wrote it and when.
    let second_of = |round: i64, lane: i64, user: i64| {
        1_700_000_000 + ((round * 7_919 + lane * 104_729 + user * 31) % 10_007) * 3 + lane
    };
    let row = move |round: i64, lane: i64, user: i64| {
        let second = second_of(round, lane, user);
        (second, lane as f64, second)
    };

    let stream = {
        let (view, source, write_path, state_path) = (
            view.clone(),
            source.clone(),
            Arc::clone(&write_path),
            directory.path().join("stream.redb"),
        );
        tokio::spawn(async move {
            let state = StreamStateStore::open(&state_path).unwrap();
            let mut processor = StreamProcessor::open(view, &source, None, "0", write_path, state)
                .await
                .unwrap();
            let mut sequence = 0;
            for round in 0..ROUNDS {
                let messages: Vec<StreamMessage> = (0..USERS)
                    .map(|user| {
                        let (second, amount, units) = row(round, 0, user);
                        sequence += 1;
                        StreamMessage {
                            sequence,
                            payload: serde_json::json!({
                                "user": {"id": user}, "ts": second * 1_000,
                                "amount": amount, "units": units,
                            })
                            .to_string()
                            .into_bytes(),
                        }
                    })
                    .collect();
                processor.process(&messages).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let rows_of = move |round: i64, lane: i64| -> Vec<FeatureRow> {
        (0..USERS)
            .map(|user| {
                let (second, amount, units) = row(round, lane, user);
                FeatureRow {
                    entity_key: EntityKey::from_int(user),
                    event_timestamp: Timestamp(second * SECOND),
                    values: vec![Value::Float64(amount), Value::Int64(units)],
                }
            })
            .collect()
    };
    let batch = {
        let (view, write_path) = (view.clone(), Arc::clone(&write_path));
        tokio::spawn(async move {
            let digests = MemoryDigestStore::new();
            for round in 0..ROUNDS {
                write_path
                    .write_changed(
                        &view,
                        WriteLane::Batch,
                        rows_of(round, 1),
                        &digests,
                        false,
                        &mut larder_ingest::RunWinners::new(),
                    )
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let direct = {
        let (view, write_path) = (view.clone(), Arc::clone(&write_path));
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                write_path
                    .write(&view, WriteLane::Direct, rows_of(round, 2))
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    stream.await.unwrap();
    batch.await.unwrap();
    direct.await.unwrap();

    let keys: Vec<EntityKey> = (0..USERS).map(EntityKey::from_int).collect();
    let stored = store.read_rows(&view.id(), &keys).await.unwrap();
    let lanes = [WriteLane::Stream, WriteLane::Batch, WriteLane::Direct];
    for (user, stored) in (0..USERS).zip(stored) {
        let stored = stored.unwrap();
        let (round, lane) = (0..ROUNDS)
            .flat_map(|round| (0..3).map(move |lane| (round, lane)))
            .max_by_key(|(round, lane)| second_of(*round, *lane, user))
            .unwrap();
        let (second, amount, units) = row(round, lane, user);
        assert_eq!(
            stored.event_timestamp,
            Timestamp(second * SECOND),
            "user {user}"
        );
        assert_eq!(stored.lane, lanes[lane as usize], "user {user}");
        assert_eq!(
            larder_core::codec::decode_row(&stored.values).unwrap(),
            vec![Value::Float64(amount), Value::Int64(units)],
            "user {user}"
        );
    }
    // Every lane won somewhere, so the test exercises each against the others.
    let stored = store.read_rows(&view.id(), &keys).await.unwrap();
    for lane in lanes {
        assert!(
            stored.iter().flatten().any(|row| row.lane == lane),
            "{lane:?}"
        );
    }
}

/// Fractional event times round toward the past, before 1970 too (-1.5 µs is -2 µs).
#[test]
fn fractional_event_times_round_toward_the_past() {
    let (view, _) = test_view(0);
    let decoder = crate::decode::MessageDecoder::new(&view, &test_source(), &[])
        .unwrap_or_else(|error| panic!("{error}"));
    for (millis, micros) in [
        ("-0.0015", -2),
        ("0.0015", 1),
        ("-1.0", -1_000),
        ("-0.0005", -1),
    ] {
        let message = format!(r#"{{"user": {{"id": 7}}, "ts": {millis}}}"#);
        let decoded = decoder
            .decode(message.as_bytes())
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(decoded.event_timestamp.as_micros(), micros, "{millis} ms");
    }
}

/// A view whose fields are all top-level reads messages field by field; it decodes exactly
/// what reading the whole tree gives (the source with a nested `user.id`), and refuses the
/// same messages.
#[test]
fn top_level_fields_decode_like_the_whole_tree() {
    let (view, _) = test_view(0);
    let nested = test_source();
    let mut flat = test_source();
    if let DataSourceKind::Nats { payload, .. } = &mut flat.kind {
        payload.fields[0].path = vec!["user_id".into()];
    }
    let columns = [
        ("amount".to_string(), ValueType::Float64),
        ("units".to_string(), ValueType::Int64),
    ];
    let tree = crate::decode::MessageDecoder::new(&view, &nested, &columns)
        .unwrap_or_else(|error| panic!("{error}"));
    let fields = crate::decode::MessageDecoder::new(&view, &flat, &columns)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(fields.reads_field_by_field() && !tree.reads_field_by_field());
    let cases = [
        (r#"{"id":7,"ts":1000,"amount":2.5,"units":3}"#, true),
        // Unwanted fields of every shape, a repeated key (the last wins), escapes, nulls.
        (
            r#"{"x":{"y":[1,{"z":null}]},"id":7,"ts":1000,"amount":1,"amount":2.5,"units":null}"#,
            true,
        ),
        (
            r#"{"\u0069d":7,"ts":"1970-01-01T00:00:01Z","amount":2.5}"#,
            true,
        ),
        (r#"{"id":7,"ts":1000,"amount":"a lot"}"#, false),
        (r#"{"ts":1000,"amount":2.5}"#, false),
        (r#"{"id":7,"amount":2.5}"#, false),
        (r#"[{"id":7,"ts":1000}]"#, false),
        (r#"7"#, false),
        (r#"{"id":7,"ts":1000} trailing"#, false),
        (r#"{"id":7,"ts":1000"#, false),
    ];
    for (case, valid) in cases {
        let as_tree = tree.decode(
            case.replace(r#""id""#, r#""user":{"id":7},"_id""#)
                .as_bytes(),
        );
        let flat_message = case
            .replace(r#""id""#, r#""user_id""#)
            .replace(r#""\u0069d""#, r#""user_\u0069d""#);
        let as_fields = fields.decode(flat_message.as_bytes());
        assert_eq!(as_fields.is_ok(), valid, "{flat_message}: {as_fields:?}");
        if let (Ok(as_tree), Ok(as_fields)) = (&as_tree, &as_fields) {
            assert_eq!(as_tree, as_fields, "{case}");
        }
    }
}

/// Starts a checkpoint on `state` that stays between its online sync and its state commit
/// until the returned guard is dropped; returns once it has started.
async fn held_checkpoint(
    state: &StreamStateStore,
) -> (
    tokio::sync::OwnedMutexGuard<()>,
    tokio::task::JoinHandle<Result<(), crate::StreamError>>,
) {
    let hold = Arc::clone(&state.checkpoint_hold).lock_owned().await;
    let checkpointing = tokio::spawn({
        let state = state.clone();
        async move { state.checkpoint().await }
    });
    while !state.checkpoint_in_progress() {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    (hold, checkpointing)
}

/// While a checkpoint commits the state file, a batch's rows are servable at once and its
/// states are carried over: not in the file until the partition's next commit, which holds
/// them (minus entities erased meanwhile) merged with that batch's. The file then equals,
/// byte for byte, the one a processor fed the same batches without a checkpoint leaves, and a
/// processor resuming the partition loads it.
#[tokio::test]
async fn batches_during_a_checkpoint_carry_their_states_into_the_next_commit() {
    let (view, spec) = test_view(600);
    let source = test_source();
    let directory = tempfile::tempdir().unwrap();
    let ten_minutes = std::time::Duration::from_secs(600);
    let batch = |first_sequence: u64, users: &[i64]| -> Vec<StreamMessage> {
        users
            .iter()
            .enumerate()
            .map(|(index, user)| {
                let sequence = first_sequence + index as u64;
                StreamMessage {
                    sequence,
                    payload: to_message(&(*user, 1_700_000_000 + sequence as i64, 3, Some(2))),
                }
            })
            .collect()
    };
    let open_processor = |state: StreamStateStore, store: Arc<MemoryOnlineStore>| {
        let (view, source, spec) = (view.clone(), source.clone(), spec.clone());
        async move {
            StreamProcessor::open(
                view,
                &source,
                Some(&spec),
                "0",
                Arc::new(WritePath::new(store)),
                state,
            )
            .await
            .unwrap()
        }
    };
    let online = Arc::new(MemoryOnlineStore::new());
    let state = StreamStateStore::open_with_checkpoint_interval(
        &directory.path().join("carried.redb"),
        ten_minutes,
    )
    .unwrap();
    let reference_state = StreamStateStore::open_with_checkpoint_interval(
        &directory.path().join("reference.redb"),
        ten_minutes,
    )
    .unwrap();
    let mut processor = open_processor(state.clone(), Arc::clone(&online)).await;
    let mut reference =
        open_processor(reference_state.clone(), Arc::new(MemoryOnlineStore::new())).await;

    // The first batch starts a checkpoint in the background; wait for it with another one.
    for processor in [&mut processor, &mut reference] {
        processor.process(&batch(1, &[1, 2])).await.unwrap();
    }
    state.checkpoint().await.unwrap();
    reference_state.checkpoint().await.unwrap();

    // A checkpoint held between its online sync and its state commit.
    let (hold, checkpointing) = held_checkpoint(&state).await;
    // Two batches carried: user 2's later state replaces its earlier one.
    for processor in [&mut processor, &mut reference] {
        processor.process(&batch(3, &[2, 3])).await.unwrap();
        processor.process(&batch(5, &[2])).await.unwrap();
    }
    let user = |id: i64| EntityKey::from_int(id);
    let servable = online.read_rows(&view.id(), &[user(3)]).await.unwrap();
    assert!(servable[0].is_some(), "a carried batch's rows are servable");
    let file = state.load(&view.id(), "0").unwrap();
    assert_eq!(
        file.position.last_sequence,
        Some(2),
        "carried, not committed"
    );
    assert!(!file.entities.iter().any(|(key, _)| *key == user(3)));
    drop(hold);
    checkpointing.await.unwrap().unwrap();
    let file = state.load(&view.id(), "0").unwrap();
    assert_eq!(
        file.position.last_sequence,
        Some(2),
        "a checkpoint commits what was carried before it started, not during it"
    );

    // User 3 erased while carried, then a batch commits the rest with its own states.
    for store in [&state, &reference_state] {
        store.erase_entities(&view.name, &[user(3)]).await.unwrap();
    }
    assert!(!state.entity_keys(&view.name).unwrap().contains(&user(3)));
    for processor in [&mut processor, &mut reference] {
        processor.process(&batch(6, &[4])).await.unwrap();
    }
    let file = state.load(&view.id(), "0").unwrap();
    let expected = reference_state.load(&view.id(), "0").unwrap();
    assert_eq!(file.position, expected.position);
    assert_eq!(file.position.last_sequence, Some(6));
    assert_eq!(file.entities, expected.entities);
    let keys: Vec<EntityKey> = file.entities.iter().map(|(key, _)| key.clone()).collect();
    assert_eq!(keys, vec![user(1), user(2), user(4)]);

    // Carried states of a partition whose processor stops are committed before its next
    // processor loads it.
    let (hold, checkpointing) = held_checkpoint(&state).await;
    processor.process(&batch(7, &[5])).await.unwrap();
    drop(processor);
    drop(hold);
    checkpointing.await.unwrap().unwrap();
    let resumed = open_processor(state.clone(), Arc::clone(&online)).await;
    assert_eq!(resumed.position().last_sequence, Some(7));
    let file = state.load(&view.id(), "0").unwrap();
    assert!(file.entities.iter().any(|(key, _)| *key == user(5)));
}

/// A batch's rows go online while the previous batch's state commits; the commits still land
/// in batch order, and a batch whose predecessor never committed does not commit either
/// (its position would skip the predecessor's states).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_commits_land_in_batch_order_and_stop_after_a_missing_one() {
    let (view, spec) = test_view(600);
    let source = test_source();
    let directory = tempfile::tempdir().unwrap();
    let message = |sequence: u64, user: i64| StreamMessage {
        sequence,
        payload: to_message(&(user, 1_700_000_000 + sequence as i64, 4, Some(1))),
    };
    let state = StreamStateStore::open_with_checkpoint_interval(
        &directory.path().join("state.redb"),
        std::time::Duration::from_secs(600),
    )
    .unwrap();
    let store = Arc::new(MemoryOnlineStore::new());
    let mut processor = StreamProcessor::open(
        view.clone(),
        &source,
        Some(&spec),
        "0",
        Arc::new(WritePath::new(store.clone())),
        state.clone(),
    )
    .await
    .unwrap();

    // Written one after the other, committed overlapping: the file ends at the second.
    let first = processor.prepare(&[message(1, 1)]);
    let second = processor.prepare(&[message(2, 2)]);
    let first = first.write().await.unwrap();
    let second = second.write().await.unwrap();
    let (first, second) = tokio::join!(first.commit(), second.commit());
    assert_eq!(first.unwrap().applied, 1);
    assert_eq!(second.unwrap().applied, 1);
    let file = state.load(&view.id(), "0").unwrap();
    assert_eq!(file.position.last_sequence, Some(2));
    assert_eq!(file.entities.len(), 2);

    // A prepared batch dropped unpersisted: the next one's commit is called off.
    let lost = processor.prepare(&[message(3, 3)]);
    let next = processor.prepare(&[message(4, 4)]);
    drop(lost);
    let error = next.persist().await.unwrap_err();
    assert!(error.to_string().contains("previous batch"), "{error}");
    let file = state.load(&view.id(), "0").unwrap();
    assert_eq!(file.position.last_sequence, Some(2));
    assert_eq!(file.entities.len(), 2);
}
