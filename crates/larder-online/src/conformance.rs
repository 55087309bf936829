//! The conformance suite: one set of checks that every [`OnlineStore`] backend runs unchanged.
//!
//! Each `check_*` function tests one point of the [`OnlineStore`] specification and panics
//! with a message naming the backend, the check and what differed. [`run_all`] runs every
//! check; a backend's test calls it once:
//!
//! ```no_run
//! # async fn example() {
//! use std::sync::Arc;
//! use larder_online::{MemoryOnlineStore, conformance};
//!
//! conformance::run_all(Arc::new(MemoryOnlineStore::new())).await;
//! # }
//! ```
//!
//! The suite takes a [`SharedOnlineStore`] (an `Arc<dyn OnlineStore>`) because the
//! concurrency check spawns tokio tasks that each hold the store. Every other check takes
//! `&dyn OnlineStore`, so a backend can also run a single check while it is being written.
//! Run the suite on a multi-thread tokio runtime so that the concurrent writers really run in
//! parallel (`#[tokio::test(flavor = "multi_thread")]`).
//!
//! Every check writes to tables of its own, named `conformance_{check}_{run}_{counter}`
//! where `run` differs between processes and runs, so checks never see each other's rows,
//! even on a persistent backend (Redis, DynamoDB) that keeps tables from earlier runs. Each
//! check drops its tables when it passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use larder_core::codec::encode_row_to_vec;
use larder_core::{EntityKey, FeatureViewId, Timestamp, TtlDuration, Value, WriteLane};

use crate::{
    OnlineRow, OnlineStore, RowSwap, SharedOnlineStore, TableOptions, WriteDurability, WriteSummary,
};

/// Preparing a table (with or without a TTL, twice, before and after writes) never hides or
/// changes a row that serving would still report as fresh, and a prepared table that was
/// never written reads as empty.
pub async fn check_prepared_tables_keep_fresh_rows(store: &dyn OnlineStore) {
    let check = Check::new(store, "prepared_tables_keep_fresh_rows");
    let table = check.fresh_table();
    let one_hour = TableOptions::with_ttl(Some(TtlDuration::from_seconds(3_600)));
    check.prepare(&table, one_hour).await;
    check.prepare(&table, one_hour).await;
    let slots = check.read(&table, &[int_key(1)]).await;
    check.assert_all_slots_empty(&slots, "read of a prepared table that was never written");
    let now = Timestamp::now().as_micros();
    let fresh_row = sample_row_at(int_key(1), now, now, 1, WriteLane::Batch);
    // An old event time written now: served as OUTSIDE_MAX_AGE, but still stored.
    let backfilled_row = sample_row_at(int_key(2), now - 86_400_000_000, now, 2, WriteLane::Batch);
    let summary = check
        .write(&table, vec![fresh_row.clone(), backfilled_row.clone()])
        .await;
    check.assert_summary(summary, 2, 0, "write to a table prepared with a TTL");
    check
        .assert_row(&table, &fresh_row, "a fresh row of a table with a TTL")
        .await;
    check
        .assert_row(&table, &backfilled_row, "a backfilled row written just now")
        .await;
    check.prepare(&table, TableOptions::default()).await;
    check
        .assert_row(
            &table,
            &fresh_row,
            "after preparing the table again without a TTL",
        )
        .await;
    let newer_row = sample_row_at(int_key(1), now + 1, now + 1, 3, WriteLane::Direct);
    check.write(&table, vec![newer_row.clone()]).await;
    check
        .assert_row(
            &table,
            &newer_row,
            "a row written after the TTL was removed",
        )
        .await;
    check.drop_table(&table).await;
}

/// Number of rows of [`check_large_batch_round_trips`].
pub const LARGE_BATCH_ROW_COUNT: usize = 5_000;

/// Runs every check of the suite against one store, one after the other.
///
/// Panics at the first check that fails.
pub async fn run_all(store: SharedOnlineStore) {
    let store_ref: &dyn OnlineStore = store.as_ref();
    check_read_of_unknown_table_finds_nothing(store_ref).await;
    check_written_rows_read_back_exactly(store_ref).await;
    check_read_slots_follow_request_order(store_ref).await;
    check_older_event_time_never_overwrites_newer(store_ref).await;
    check_equal_event_time_replaces_stored_row(store_ref).await;
    check_deferred_writes_read_back_in_event_time_order(store_ref).await;
    check_same_key_twice_in_one_batch_applies_in_order(store_ref).await;
    check_rewriting_a_batch_is_idempotent(store_ref).await;
    check_rows_keep_their_lane(store_ref).await;
    check_tables_are_isolated(store_ref).await;
    check_delete_rows_counts_and_removes(store_ref).await;
    check_erasure_removes_entities_from_every_version(store_ref).await;
    check_drop_table_removes_every_row(store_ref).await;
    check_empty_requests_are_no_ops(store_ref).await;
    check_large_batch_round_trips(store_ref).await;
    check_prepared_tables_keep_fresh_rows(store_ref).await;
    check_swap_writes_only_over_the_expected_row(store_ref).await;
    check_concurrent_writers_keep_the_newest_row(Arc::clone(&store)).await;
    check_concurrent_swaps_lose_no_update(store).await;
}

/// A swap writes over exactly the row it expects (or into an empty key when it expects
/// none), and is refused, writing nothing, when the key holds anything else: another row, a
/// row that differs only in its write time or lane or values, or no row.
pub async fn check_swap_writes_only_over_the_expected_row(store: &dyn OnlineStore) {
    let check = Check::new(store, "swap_writes_only_over_the_expected_row");
    let table = check.fresh_table();
    let first = sample_row(int_key(1), 10, 1, WriteLane::Batch);
    let applied = check
        .swap(
            &table,
            vec![RowSwap {
                expected: None,
                row: first.clone(),
            }],
        )
        .await;
    check.assert_flags(&applied, &[true], "swap into an empty key");
    check
        .assert_row(&table, &first, "after a swap into an empty key")
        .await;

    let second = sample_row(int_key(1), 20, 2, WriteLane::Direct);
    let mut other_write_time = first.clone();
    other_write_time.write_timestamp = Timestamp(first.write_timestamp.as_micros() + 1);
    let mut other_lane = first.clone();
    other_lane.lane = WriteLane::Stream;
    let mut other_values = first.clone();
    other_values.values = sample_row(int_key(1), 10, 9, WriteLane::Batch).values;
    for (expected, situation) in [
        (None, "expecting no row where one is stored"),
        (Some(other_write_time), "expecting another write time"),
        (Some(other_lane), "expecting another lane"),
        (Some(other_values), "expecting other values"),
    ] {
        let applied = check
            .swap(
                &table,
                vec![RowSwap {
                    expected,
                    row: second.clone(),
                }],
            )
            .await;
        check.assert_flags(&applied, &[false], situation);
        check.assert_row(&table, &first, situation).await;
    }

    // An older event time is no obstacle: the caller compared event times itself.
    let older = sample_row(int_key(1), 5, 3, WriteLane::Direct);
    let absent = sample_row(int_key(2), 5, 4, WriteLane::Direct);
    let applied = check
        .swap(
            &table,
            vec![
                RowSwap {
                    expected: Some(first.clone()),
                    row: older.clone(),
                },
                RowSwap {
                    expected: Some(first.clone()),
                    row: absent.clone(),
                },
            ],
        )
        .await;
    check.assert_flags(
        &applied,
        &[true, false],
        "a batch of a matching and a missing key",
    );
    check.assert_row(&table, &older, "the swapped key").await;
    let slots = check.read(&table, &[int_key(2)]).await;
    check.assert_all_slots_empty(&slots, "a key whose swap expected a row it did not hold");
    check.drop_table(&table).await;
}

/// Writers that read a row, change it and swap it in, retrying when the swap is refused,
/// never lose an update: each of 4 writers adds 1 to a counter 25 times, and the counter ends
/// at 100.
pub async fn check_concurrent_swaps_lose_no_update(store: SharedOnlineStore) {
    const WRITER_COUNT: i64 = 4;
    const INCREMENTS_PER_WRITER: i64 = 25;
    let check = Check::new(store.as_ref(), "concurrent_swaps_lose_no_update");
    let table = check.fresh_table();
    let key = int_key(7);
    let counter_row = |count: i64, writer: i64| OnlineRow {
        entity_key: int_key(7),
        event_timestamp: Timestamp(1),
        write_timestamp: Timestamp(count * 100 + writer),
        lane: WriteLane::Direct,
        values: encode_row_to_vec(&[Value::Int64(count)]),
    };
    let mut tasks = Vec::new();
    for writer in 0..WRITER_COUNT {
        let store = Arc::clone(&store);
        let table = table.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0u32;
            for _ in 0..INCREMENTS_PER_WRITER {
                loop {
                    attempts += 1;
                    if attempts > 100_000 {
                        return Err("more than 100,000 attempts".to_string());
                    }
                    let stored = store
                        .read_rows(&table, std::slice::from_ref(&key))
                        .await
                        .map_err(|error| error.to_string())?
                        .pop()
                        .flatten();
                    let count = match &stored {
                        None => 0,
                        Some(row) => match larder_core::codec::decode_row(&row.values).as_deref() {
                            Ok([Value::Int64(count)]) => *count,
                            other => return Err(format!("a counter row holds {other:?}")),
                        },
                    };
                    let swap = RowSwap {
                        expected: stored,
                        row: counter_row(count + 1, writer),
                    };
                    let applied = store
                        .swap_rows(&table, vec![swap])
                        .await
                        .map_err(|error| error.to_string())?;
                    if applied.first() == Some(&true) {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => check.fail(&format!("a writer failed: {message}")),
            Err(error) => check.fail(&format!("a writer panicked: {error}")),
        }
    }
    let slots = check.read(&table, std::slice::from_ref(&key)).await;
    let count = match slots.first().and_then(Option::as_ref) {
        Some(row) => match larder_core::codec::decode_row(&row.values).as_deref() {
            Ok([Value::Int64(count)]) => *count,
            _ => check.fail("the counter row does not hold one integer"),
        },
        None => check.fail("the counter row is missing"),
    };
    let expected = WRITER_COUNT * INCREMENTS_PER_WRITER;
    if count != expected {
        check.fail(&format!(
            "{WRITER_COUNT} writers added 1 {INCREMENTS_PER_WRITER} times each by read and swap; \
             the counter ends at {count}, expected {expected} (an update was lost)"
        ));
    }
    check.drop_table(&table).await;
}

/// Reading any key of a table that was never written finds nothing, one `None` per key.
pub async fn check_read_of_unknown_table_finds_nothing(store: &dyn OnlineStore) {
    let check = Check::new(store, "read_of_unknown_table_finds_nothing");
    let table = check.fresh_table();
    let keys = [
        EntityKey::from_int(1),
        EntityKey::from_str_key("absent"),
        EntityKey::from_int(1),
    ];
    let slots = check.read(&table, &keys).await;
    check.assert_all_slots_empty(&slots, "read of a table that was never written");
}

/// A written row reads back with exactly its event timestamp, write timestamp, lane and value
/// bytes, for integer, string and composite keys, negative timestamps, an empty row and a
/// large row.
pub async fn check_written_rows_read_back_exactly(store: &dyn OnlineStore) {
    let check = Check::new(store, "written_rows_read_back_exactly");
    let table = check.fresh_table();
    let composite_key =
        EntityKey::from_values(&[Value::Int64(-7), Value::String("fr".to_string())])
            .unwrap_or_else(|error| check.fail(&format!("cannot build a composite key: {error}")));
    let every_kind_of_value = vec![
        Value::Null,
        Value::Bool(true),
        Value::Int32(-3),
        Value::Int64(i64::MIN),
        Value::Float32(1.5),
        Value::Float64(-0.25),
        Value::String("héllo wörld".to_string()),
        Value::Bytes(vec![0, 255, 0, 1]),
        Value::Timestamp(Timestamp(1_700_000_000_123_456)),
        Value::List(vec![Value::Int64(1), Value::Null, Value::Int64(3)]),
        Value::Vector(vec![0.5, -1.0, 2.0]),
    ];
    let large_values = vec![
        Value::Vector((0..4_096u16).map(f32::from).collect()),
        Value::Bytes((0..65_536u32).map(|index| (index % 251) as u8).collect()),
    ];
    let rows = vec![
        OnlineRow {
            entity_key: EntityKey::from_int(1),
            event_timestamp: Timestamp(1_700_000_000_000_000),
            write_timestamp: Timestamp(1_700_000_000_500_001),
            lane: WriteLane::Batch,
            values: encode_row_to_vec(&every_kind_of_value),
        },
        OnlineRow {
            entity_key: EntityKey::from_str_key("user-é"),
            event_timestamp: Timestamp(-42),
            write_timestamp: Timestamp(0),
            lane: WriteLane::Stream,
            values: encode_row_to_vec(&[]),
        },
        OnlineRow {
            entity_key: composite_key,
            event_timestamp: Timestamp(i64::MAX),
            write_timestamp: Timestamp(i64::MIN),
            lane: WriteLane::Direct,
            values: encode_row_to_vec(&large_values),
        },
    ];
    let summary = check.write(&table, rows.clone()).await;
    check.assert_summary(summary, 3, 0, "write of three new keys");
    let keys: Vec<EntityKey> = rows.iter().map(|row| row.entity_key.clone()).collect();
    let slots = check.read(&table, &keys).await;
    for (row, slot) in rows.iter().zip(&slots) {
        if slot.as_ref() != Some(row) {
            check.fail(&format!(
                "key {} read back as {slot:?}, expected {row:?}",
                row.entity_key
            ));
        }
    }
    check.drop_table(&table).await;
}

/// A read returns one slot per requested key, in request order, with `None` for missing keys
/// and a slot of its own for each duplicate key.
pub async fn check_read_slots_follow_request_order(store: &dyn OnlineStore) {
    let check = Check::new(store, "read_slots_follow_request_order");
    let table = check.fresh_table();
    let rows: Vec<OnlineRow> = (1..=3)
        .map(|number| sample_row(int_key(number), 10, number, WriteLane::Batch))
        .collect();
    check.write(&table, rows).await;
    let request = [3, 99, 1, 3, 2, -5].map(int_key);
    let slots = check.read(&table, &request).await;
    let markers: Vec<Option<i64>> = slots
        .iter()
        .map(|slot| slot.as_ref().map(|row| check.marker_of(row)))
        .collect();
    let expected_markers = vec![Some(3), None, Some(1), Some(3), Some(2), None];
    if markers != expected_markers {
        check.fail(&format!("read of keys [3, 99, 1, 3, 2, -5] found markers {markers:?}, expected {expected_markers:?}"));
    }
    for (key, slot) in request.iter().zip(&slots) {
        if let Some(row) = slot
            && &row.entity_key != key
        {
            check.fail(&format!(
                "the slot of key {key} holds the row of key {}",
                row.entity_key
            ));
        }
    }
    check.drop_table(&table).await;
}

/// A row with an older event time never replaces a stored row with a newer one, even when it
/// is written later; skipped rows are counted in `skipped_stale`. Event times compare as
/// signed integers (`9 < 10`, `-2 < -1`), not as text.
pub async fn check_older_event_time_never_overwrites_newer(store: &dyn OnlineStore) {
    let check = Check::new(store, "older_event_time_never_overwrites_newer");
    let table = check.fresh_table();
    let newer_and_older_event_times: [(i64, i64); 6] = [
        (20, 10),
        (10, 9),
        (-1, -2),
        (0, -1),
        (i64::MAX, i64::MIN),
        (1_000_000, 999_999),
    ];
    let newer_rows: Vec<OnlineRow> = newer_and_older_event_times
        .iter()
        .enumerate()
        .map(|(index, (newer, _))| {
            sample_row_at(
                int_key(index as i64),
                *newer,
                1,
                index as i64,
                WriteLane::Batch,
            )
        })
        .collect();
    let summary = check.write(&table, newer_rows.clone()).await;
    check.assert_summary(summary, 6, 0, "write of the newer rows");
    // The older rows are written later (a later write timestamp): event time alone decides.
    let older_rows: Vec<OnlineRow> = newer_and_older_event_times
        .iter()
        .enumerate()
        .map(|(index, (_, older))| {
            sample_row_at(
                int_key(index as i64),
                *older,
                2,
                100 + index as i64,
                WriteLane::Stream,
            )
        })
        .collect();
    let summary = check.write(&table, older_rows).await;
    check.assert_summary(summary, 0, 6, "write of rows older than the stored ones");
    let keys: Vec<EntityKey> = newer_rows
        .iter()
        .map(|row| row.entity_key.clone())
        .collect();
    let slots = check.read(&table, &keys).await;
    for (newer_row, slot) in newer_rows.iter().zip(&slots) {
        if slot.as_ref() != Some(newer_row) {
            check.fail(&format!(
                "key {} holds {slot:?} after an older write, expected the newer row {newer_row:?}",
                newer_row.entity_key
            ));
        }
    }
    let newest_row = sample_row(int_key(0), 30, 200, WriteLane::Direct);
    let summary = check.write(&table, vec![newest_row.clone()]).await;
    check.assert_summary(summary, 1, 0, "write of a newer row over a stored row");
    check
        .assert_row(&table, &newest_row, "after a newer write")
        .await;
    check.drop_table(&table).await;
}

/// At an equal event time the incoming row replaces the stored one: a correction that keeps
/// its event time lands, with its own write timestamp, lane and values.
pub async fn check_equal_event_time_replaces_stored_row(store: &dyn OnlineStore) {
    let check = Check::new(store, "equal_event_time_replaces_stored_row");
    let table = check.fresh_table();
    let original_row = sample_row_at(int_key(1), 100, 1_000, 1, WriteLane::Batch);
    check.write(&table, vec![original_row]).await;
    let correction_row = sample_row_at(int_key(1), 100, 2_000, 2, WriteLane::Direct);
    let summary = check.write(&table, vec![correction_row.clone()]).await;
    check.assert_summary(
        summary,
        1,
        0,
        "write of a correction at an equal event time",
    );
    check
        .assert_row(
            &table,
            &correction_row,
            "after a correction at an equal event time",
        )
        .await;
    check.drop_table(&table).await;
}

/// A deferred write is readable as soon as it returns and follows the event-time order like
/// any write; a sync then succeeds and changes nothing that reads see.
pub async fn check_deferred_writes_read_back_in_event_time_order(store: &dyn OnlineStore) {
    let check = Check::new(store, "deferred_writes_read_back_in_event_time_order");
    let table = check.fresh_table();
    let newer_row = sample_row_at(int_key(1), 200, 1_000, 1, WriteLane::Stream);
    let other_row = sample_row_at(int_key(2), 100, 1_000, 2, WriteLane::Stream);
    let summary = check
        .write_with(
            &table,
            vec![newer_row.clone(), other_row.clone()],
            WriteDurability::Deferred,
        )
        .await;
    check.assert_summary(summary, 2, 0, "a deferred write");
    check
        .assert_row(&table, &newer_row, "right after a deferred write")
        .await;
    let older_row = sample_row_at(int_key(1), 100, 2_000, 3, WriteLane::Batch);
    let summary = check
        .write_with(&table, vec![older_row], WriteDurability::Deferred)
        .await;
    check.assert_summary(summary, 0, 1, "a deferred write of an older row");
    if let Err(error) = store.sync().await {
        check.fail(&format!("sync failed: {error}"));
    }
    check.assert_row(&table, &newer_row, "after a sync").await;
    check
        .assert_row(&table, &other_row, "the other row after a sync")
        .await;
    check.drop_table(&table).await;
}

/// The rows of one batch are applied in order, so a batch may hold the same key more than
/// once: later rows win unless their event time is older.
pub async fn check_same_key_twice_in_one_batch_applies_in_order(store: &dyn OnlineStore) {
    let check = Check::new(store, "same_key_twice_in_one_batch_applies_in_order");
    let table = check.fresh_table();
    let batch = vec![
        sample_row(int_key(1), 10, 1, WriteLane::Batch),
        sample_row(int_key(1), 20, 2, WriteLane::Batch),
        sample_row(int_key(1), 15, 3, WriteLane::Batch),
        sample_row(int_key(2), 5, 4, WriteLane::Stream),
        sample_row(int_key(2), 5, 5, WriteLane::Direct),
    ];
    let summary = check.write(&table, batch.clone()).await;
    check.assert_summary(summary, 4, 1, "write of a batch that holds keys twice");
    check
        .assert_row(&table, &batch[1], "the newest of three rows of one batch")
        .await;
    check
        .assert_row(
            &table,
            &batch[4],
            "the later of two rows of one batch at equal event times",
        )
        .await;
    check.drop_table(&table).await;
}

/// Writing the same batch twice (a retry) leaves the same rows as writing it once.
pub async fn check_rewriting_a_batch_is_idempotent(store: &dyn OnlineStore) {
    let check = Check::new(store, "rewriting_a_batch_is_idempotent");
    let table = check.fresh_table();
    let batch = vec![
        sample_row(int_key(1), 10, 1, WriteLane::Batch),
        sample_row(int_key(2), 20, 2, WriteLane::Stream),
        sample_row(int_key(1), 5, 3, WriteLane::Batch),
    ];
    let keys = [int_key(1), int_key(2)];
    let first_summary = check.write(&table, batch.clone()).await;
    check.assert_summary(first_summary, 2, 1, "first write of the batch");
    let slots_after_first_write = check.read(&table, &keys).await;
    let second_summary = check.write(&table, batch).await;
    check.assert_summary(second_summary, 2, 1, "second write of the same batch");
    let slots_after_second_write = check.read(&table, &keys).await;
    if slots_after_first_write != slots_after_second_write {
        check.fail(&format!(
            "rewriting a batch changed the rows from {slots_after_first_write:?} to {slots_after_second_write:?}"
        ));
    }
    check.drop_table(&table).await;
}

/// Every row keeps the lane that wrote it, and a newer row from another lane replaces it.
pub async fn check_rows_keep_their_lane(store: &dyn OnlineStore) {
    let check = Check::new(store, "rows_keep_their_lane");
    let table = check.fresh_table();
    let lanes = [WriteLane::Batch, WriteLane::Stream, WriteLane::Direct];
    let rows: Vec<OnlineRow> = lanes
        .iter()
        .enumerate()
        .map(|(index, lane)| sample_row(int_key(index as i64), 10, index as i64, *lane))
        .collect();
    check.write(&table, rows.clone()).await;
    for row in &rows {
        check
            .assert_row(
                &table,
                row,
                &format!("a row of the {} lane", row.lane.as_str()),
            )
            .await;
    }
    let stream_row_over_batch_row = sample_row(int_key(0), 11, 10, WriteLane::Stream);
    check
        .write(&table, vec![stream_row_over_batch_row.clone()])
        .await;
    check
        .assert_row(
            &table,
            &stream_row_over_batch_row,
            "a newer stream row over a batch row",
        )
        .await;
    check.drop_table(&table).await;
}

/// Tables never see each other's rows: two versions of one view, and two views, hold the same
/// key independently, for writes, event-time ordering, deletes and drops.
pub async fn check_tables_are_isolated(store: &dyn OnlineStore) {
    let check = Check::new(store, "tables_are_isolated");
    let first_version = check.fresh_table();
    let second_version = FeatureViewId {
        name: first_version.name.clone(),
        version: first_version.version + 1,
    };
    let other_view = check.fresh_table();
    let first_version_row = sample_row(int_key(1), 10, 1, WriteLane::Batch);
    // Older than the row of the first version: it must still land in its own table.
    let second_version_row = sample_row(int_key(1), 5, 2, WriteLane::Stream);
    let first_version_only_row = sample_row(int_key(2), 10, 3, WriteLane::Batch);
    let summary = check
        .write(
            &first_version,
            vec![first_version_row.clone(), first_version_only_row.clone()],
        )
        .await;
    check.assert_summary(summary, 2, 0, "write to the first version");
    let summary = check
        .write(&second_version, vec![second_version_row.clone()])
        .await;
    check.assert_summary(summary, 1, 0, "write of an older row to the second version");
    check
        .assert_row(
            &first_version,
            &first_version_row,
            "the first version's row",
        )
        .await;
    check
        .assert_row(
            &second_version,
            &second_version_row,
            "the second version's row",
        )
        .await;
    let keys = [int_key(1), int_key(2)];
    check.assert_all_slots_empty(
        &check.read(&other_view, &keys).await,
        "another view that was never written",
    );
    let slots = check.read(&second_version, &[int_key(2)]).await;
    check.assert_all_slots_empty(
        &slots,
        "a key written only to the first version, read from the second",
    );

    let deleted_count = check.delete(&first_version, &[int_key(1)]).await;
    check.assert_count(deleted_count, 1, "rows deleted from the first version");
    check
        .assert_row(
            &second_version,
            &second_version_row,
            "the second version's row after a delete in the first",
        )
        .await;
    check.drop_table(&second_version).await;
    check
        .assert_row(
            &first_version,
            &first_version_only_row,
            "the first version's row after the second was dropped",
        )
        .await;
    check.drop_table(&first_version).await;
}

/// `delete_rows` returns how many of the keys had a row (a duplicate key counts once),
/// removes them, leaves other keys alone, and forgets their event time: an older row written
/// after the delete lands.
pub async fn check_delete_rows_counts_and_removes(store: &dyn OnlineStore) {
    let check = Check::new(store, "delete_rows_counts_and_removes");
    let table = check.fresh_table();
    let rows: Vec<OnlineRow> = (1..=4)
        .map(|number| sample_row(int_key(number), 100, number, WriteLane::Batch))
        .collect();
    check.write(&table, rows.clone()).await;
    let deleted_count = check
        .delete(&table, &[int_key(2), int_key(4), int_key(4), int_key(99)])
        .await;
    check.assert_count(
        deleted_count,
        2,
        "rows deleted by keys [2, 4, 4, 99] of rows [1, 2, 3, 4]",
    );
    let slots = check.read(&table, &[1, 2, 3, 4].map(int_key)).await;
    let present: Vec<bool> = slots.iter().map(Option::is_some).collect();
    if present != [true, false, true, false] {
        check.fail(&format!(
            "after deleting keys 2 and 4, keys [1, 2, 3, 4] are present: {present:?}"
        ));
    }
    check
        .assert_row(&table, &rows[0], "a row that was not deleted")
        .await;
    let deleted_again_count = check.delete(&table, &[int_key(2)]).await;
    check.assert_count(
        deleted_again_count,
        0,
        "rows deleted by a second delete of the same key",
    );
    let unknown_table = check.fresh_table();
    let unknown_table_count = check.delete(&unknown_table, &[int_key(1)]).await;
    check.assert_count(
        unknown_table_count,
        0,
        "rows deleted from a table that was never written",
    );
    check.assert_all_slots_empty(
        &check.read(&unknown_table, &[int_key(1)]).await,
        "a table after a delete of nothing",
    );

    let older_row_after_delete = sample_row(int_key(2), 1, 50, WriteLane::Direct);
    let summary = check
        .write(&table, vec![older_row_after_delete.clone()])
        .await;
    check.assert_summary(summary, 1, 0, "write of an older row over a deleted key");
    check
        .assert_row(
            &table,
            &older_row_after_delete,
            "an older row written after a delete",
        )
        .await;
    check.drop_table(&table).await;
}

/// What erasure (`larder forget`) relies on: deleting the same keys from every version's
/// table of a view removes exactly those entities, for integer, text and composite keys,
/// whether or not a version ever held them, and leaves every other entity's row as it was.
pub async fn check_erasure_removes_entities_from_every_version(store: &dyn OnlineStore) {
    let check = Check::new(store, "erasure_removes_entities_from_every_version");
    let first_version = check.fresh_table();
    let second_version = FeatureViewId {
        name: first_version.name.clone(),
        version: 2,
    };
    let never_written = FeatureViewId {
        name: first_version.name.clone(),
        version: 3,
    };
    let composite = |number: i64, text: &str| {
        EntityKey::from_values(&[Value::Int64(number), Value::String(text.to_string())])
            .unwrap_or_else(|error| check.fail(&format!("composite key: {error}")))
    };
    let forgotten = [
        int_key(7),
        EntityKey::from_str_key("user-7"),
        composite(7, "a"),
    ];
    let kept = [
        int_key(8),
        EntityKey::from_str_key("user-8"),
        composite(7, "b"),
    ];
    for table in [&first_version, &second_version] {
        let rows: Vec<OnlineRow> = forgotten
            .iter()
            .chain(&kept)
            .enumerate()
            .map(|(marker, key)| sample_row(key.clone(), 100, marker as i64, WriteLane::Batch))
            .collect();
        check.write(table, rows).await;
    }
    let mut removed = 0;
    for table in [&first_version, &second_version, &never_written] {
        removed += check.delete(table, &forgotten).await;
    }
    check.assert_count(
        removed,
        6,
        "rows erased from two versions holding three entities",
    );
    for table in [&first_version, &second_version] {
        check.assert_all_slots_empty(
            &check.read(table, &forgotten).await,
            "the erased entities of a version",
        );
        for (index, key) in kept.iter().enumerate() {
            let marker = (forgotten.len() + index) as i64;
            check
                .assert_row(
                    table,
                    &sample_row(key.clone(), 100, marker, WriteLane::Batch),
                    "an entity that was not erased",
                )
                .await;
        }
    }
    check.drop_table(&first_version).await;
    check.drop_table(&second_version).await;
}

/// `drop_table` removes every row of a table; dropping an unknown or already dropped table is
/// not an error; a dropped table can be written again from scratch.
pub async fn check_drop_table_removes_every_row(store: &dyn OnlineStore) {
    let check = Check::new(store, "drop_table_removes_every_row");
    let table = check.fresh_table();
    let keys: Vec<EntityKey> = (0..10).map(int_key).collect();
    let rows: Vec<OnlineRow> = keys
        .iter()
        .map(|key| sample_row(key.clone(), 100, 1, WriteLane::Batch))
        .collect();
    check.write(&table, rows).await;
    check.drop_table(&table).await;
    check.assert_all_slots_empty(&check.read(&table, &keys).await, "a dropped table");
    check.drop_table(&table).await;
    check.drop_table(&check.fresh_table()).await;
    let older_row_after_drop = sample_row(int_key(3), 1, 2, WriteLane::Stream);
    let summary = check
        .write(&table, vec![older_row_after_drop.clone()])
        .await;
    check.assert_summary(summary, 1, 0, "write of an older row to a dropped table");
    check
        .assert_row(
            &table,
            &older_row_after_drop,
            "a row written after the table was dropped",
        )
        .await;
    check.drop_table(&table).await;
}

/// An empty write, read or delete does nothing and succeeds, on new and on written tables.
pub async fn check_empty_requests_are_no_ops(store: &dyn OnlineStore) {
    let check = Check::new(store, "empty_requests_are_no_ops");
    let table = check.fresh_table();
    for state in ["a new table", "a written table"] {
        let summary = check.write(&table, Vec::new()).await;
        check.assert_summary(summary, 0, 0, &format!("empty write to {state}"));
        let slots = check.read(&table, &[]).await;
        if !slots.is_empty() {
            check.fail(&format!(
                "an empty read of {state} returned {} slots",
                slots.len()
            ));
        }
        let deleted_count = check.delete(&table, &[]).await;
        check.assert_count(
            deleted_count,
            0,
            &format!("rows deleted by an empty delete from {state}"),
        );
        check
            .write(&table, vec![sample_row(int_key(1), 1, 1, WriteLane::Batch)])
            .await;
    }
    check
        .assert_row(
            &table,
            &sample_row(int_key(1), 1, 1, WriteLane::Batch),
            "a row after empty requests",
        )
        .await;
    check.drop_table(&table).await;
}

/// A batch of [`LARGE_BATCH_ROW_COUNT`] rows is written and read back whole, in one call each.
pub async fn check_large_batch_round_trips(store: &dyn OnlineStore) {
    let check = Check::new(store, "large_batch_round_trips");
    let table = check.fresh_table();
    let rows: Vec<OnlineRow> = (0..LARGE_BATCH_ROW_COUNT as i64)
        .map(|number| {
            let key = if number % 2 == 0 {
                int_key(number)
            } else {
                EntityKey::from_str_key(&format!("entity-{number}"))
            };
            sample_row_at(
                key,
                1_000 + number,
                2_000 + number,
                number,
                WriteLane::Batch,
            )
        })
        .collect();
    let summary = check.write(&table, rows.clone()).await;
    check.assert_summary(
        summary,
        LARGE_BATCH_ROW_COUNT as u64,
        0,
        "write of a large batch",
    );
    let mut keys: Vec<EntityKey> = rows.iter().map(|row| row.entity_key.clone()).collect();
    keys.reverse();
    let slots = check.read(&table, &keys).await;
    for (row, slot) in rows.iter().rev().zip(&slots) {
        if slot.as_ref() != Some(row) {
            check.fail(&format!(
                "key {} of a large batch read back as {slot:?}, expected {row:?}",
                row.entity_key
            ));
        }
    }
    check.drop_table(&table).await;
}

/// Writers running concurrently on the same keys, each with its own shuffled event times,
/// leave every key holding the row with the newest event time, whatever the interleaving.
/// After each of its writes returns, a writer reads its keys back and must find rows at least
/// as new as the ones it wrote (a lost update fails here); a reader running alongside never
/// sees a torn row.
///
/// This check takes a [`SharedOnlineStore`] because it spawns one tokio task per writer.
pub async fn check_concurrent_writers_keep_the_newest_row(store: SharedOnlineStore) {
    const WRITER_COUNT: usize = 4;
    const BATCHES_PER_WRITER: usize = 10;
    const KEY_COUNT: usize = 32;
    let check = Check::new(store.as_ref(), "concurrent_writers_keep_the_newest_row");
    let table = check.fresh_table();
    let keys: Vec<EntityKey> = (0..KEY_COUNT as i64).map(int_key).collect();

    // For each key, a shuffle of the event times 1..=WRITER_COUNT*BATCHES_PER_WRITER: writer
    // `w` writes, in its batch `b`, the time at position `w * BATCHES_PER_WRITER + b`.
    let mut random = XorShift64::new(0x5eed_1a7d_e200_0011);
    let event_times_by_key: Vec<Vec<i64>> = (0..KEY_COUNT)
        .map(|_| {
            let mut event_times: Vec<i64> =
                (1..=(WRITER_COUNT * BATCHES_PER_WRITER) as i64).collect();
            random.shuffle(&mut event_times);
            event_times
        })
        .collect();
    let newest_event_time = (WRITER_COUNT * BATCHES_PER_WRITER) as i64;
    let mut writer_batches: Vec<Vec<Vec<OnlineRow>>> = (0..WRITER_COUNT)
        .map(|_| Vec::with_capacity(BATCHES_PER_WRITER))
        .collect();
    for batch in 0..BATCHES_PER_WRITER {
        // In even rounds every writer visits the keys in the same order, so that writers
        // collide on one key at the same moment; in odd rounds each writer has its own order,
        // so that a backend that locks keys one by one meets conflicting orders.
        let mut shared_key_order: Vec<usize> = (0..KEY_COUNT).collect();
        random.shuffle(&mut shared_key_order);
        for (writer, batches) in writer_batches.iter_mut().enumerate() {
            let mut key_order = shared_key_order.clone();
            if batch % 2 == 1 {
                random.shuffle(&mut key_order);
            }
            let rows = key_order
                .iter()
                .map(|&key_index| {
                    let event_time =
                        event_times_by_key[key_index][writer * BATCHES_PER_WRITER + batch];
                    concurrent_writer_row(keys[key_index].clone(), event_time, writer)
                })
                .collect();
            batches.push(rows);
        }
    }

    // Writers start each round together, so that their batches overlap.
    let round_barrier = Arc::new(tokio::sync::Barrier::new(WRITER_COUNT));
    let mut writer_tasks = Vec::with_capacity(WRITER_COUNT);
    for batches in writer_batches {
        let writer_store = Arc::clone(&store);
        let writer_table = table.clone();
        let writer_round_barrier = Arc::clone(&round_barrier);
        writer_tasks.push(tokio::spawn(async move {
            let mut summary = WriteSummary::default();
            let mut first_failure = None;
            for rows in batches {
                let round_start = writer_round_barrier.wait();
                if tokio::time::timeout(CONCURRENT_ROUND_TIMEOUT, round_start)
                    .await
                    .is_err()
                {
                    return Err("the other writers stopped coming to the next round".to_string());
                }
                // After a failure, keep coming to the rounds so that the others do not wait.
                if first_failure.is_some() {
                    continue;
                }
                match write_then_read_back(writer_store.as_ref(), &writer_table, rows).await {
                    Ok(batch_summary) => summary.add(batch_summary),
                    Err(message) => first_failure = Some(message),
                }
            }
            match first_failure {
                Some(message) => Err(message),
                None => Ok(summary),
            }
        }));
    }
    let reader_store = Arc::clone(&store);
    let reader_table = table.clone();
    let reader_keys = keys.clone();
    let reader_task = tokio::spawn(async move {
        let mut torn_rows = Vec::new();
        for _ in 0..BATCHES_PER_WRITER * 2 {
            let slots = reader_store
                .read_rows(&reader_table, &reader_keys)
                .await
                .map_err(|error| error.to_string())?;
            for row in slots.into_iter().flatten() {
                if !concurrent_writer_row_is_whole(&row) {
                    torn_rows.push(row);
                }
            }
            tokio::task::yield_now().await;
        }
        Ok::<Vec<OnlineRow>, String>(torn_rows)
    });

    let mut total_summary = WriteSummary::default();
    for writer_task in writer_tasks {
        match writer_task.await {
            Ok(Ok(summary)) => total_summary.add(summary),
            Ok(Err(message)) => check.fail(&format!("a concurrent writer failed: {message}")),
            Err(join_error) => {
                check.fail(&format!("a concurrent writer task failed: {join_error}"))
            }
        }
    }
    match reader_task.await {
        Ok(Ok(torn_rows)) if torn_rows.is_empty() => {}
        Ok(Ok(torn_rows)) => {
            check.fail(&format!("a concurrent reader saw torn rows: {torn_rows:?}"))
        }
        Ok(Err(message)) => check.fail(&format!("a concurrent reader failed: {message}")),
        Err(join_error) => check.fail(&format!("the concurrent reader task failed: {join_error}")),
    }
    let rows_written_in_total = (WRITER_COUNT * BATCHES_PER_WRITER * KEY_COUNT) as u64;
    if total_summary.written + total_summary.skipped_stale != rows_written_in_total
        || total_summary.written < KEY_COUNT as u64
    {
        check.fail(&format!(
            "concurrent writers of {rows_written_in_total} rows on {KEY_COUNT} keys were told {total_summary:?}"
        ));
    }
    let slots = check.read(&table, &keys).await;
    for ((key, event_times), slot) in keys.iter().zip(&event_times_by_key).zip(&slots) {
        let newest_position = event_times
            .iter()
            .position(|event_time| *event_time == newest_event_time)
            .unwrap_or(0);
        let expected_row = concurrent_writer_row(
            key.clone(),
            newest_event_time,
            newest_position / BATCHES_PER_WRITER,
        );
        if slot.as_ref() != Some(&expected_row) {
            check.fail(&format!(
                "after concurrent writes key {key} holds {slot:?}, expected the newest row {expected_row:?}"
            ));
        }
    }
    check.drop_table(&table).await;
}

/// How long a writer of the concurrency check waits for the others to finish a round.
const CONCURRENT_ROUND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Writes a batch, then reads its keys back: once a write has returned, no read may find a
/// row older than it. This is where a compare-and-write that is not atomic shows as a lost
/// update.
async fn write_then_read_back(
    store: &dyn OnlineStore,
    table: &FeatureViewId,
    rows: Vec<OnlineRow>,
) -> Result<WriteSummary, String> {
    let (batch_keys, batch_event_times): (Vec<EntityKey>, Vec<Timestamp>) = rows
        .iter()
        .map(|row| (row.entity_key.clone(), row.event_timestamp))
        .unzip();
    let summary = store
        .write_rows(table, rows)
        .await
        .map_err(|error| format!("write failed: {error}"))?;
    let slots = store
        .read_rows(table, &batch_keys)
        .await
        .map_err(|error| format!("read failed: {error}"))?;
    if slots.len() != batch_keys.len() {
        return Err(format!(
            "a read of {} keys returned {} slots",
            batch_keys.len(),
            slots.len()
        ));
    }
    for ((key, written_event_time), slot) in batch_keys.iter().zip(&batch_event_times).zip(&slots) {
        let stored_event_time = slot.as_ref().map(|row| row.event_timestamp);
        if stored_event_time.is_none_or(|stored| stored < *written_event_time) {
            return Err(format!(
                "a write of key {key} at event time {} returned, then a read found {slot:?}",
                written_event_time.0
            ));
        }
    }
    Ok(summary)
}

/// The row that writer `writer` of the concurrency check writes for `key` at `event_time`.
fn concurrent_writer_row(entity_key: EntityKey, event_time: i64, writer: usize) -> OnlineRow {
    let lanes = [WriteLane::Batch, WriteLane::Stream, WriteLane::Direct];
    OnlineRow {
        entity_key,
        event_timestamp: Timestamp(event_time),
        write_timestamp: Timestamp(event_time * 1_000 + writer as i64),
        lane: lanes[writer % lanes.len()],
        values: encode_row_to_vec(&[Value::Int64(event_time), Value::Int64(writer as i64)]),
    }
}

/// Whether a row read during the concurrency check is one that some writer wrote whole.
fn concurrent_writer_row_is_whole(row: &OnlineRow) -> bool {
    let Ok(values) = larder_core::codec::decode_row(&row.values) else {
        return false;
    };
    let [Value::Int64(event_time), Value::Int64(writer)] = values.as_slice() else {
        return false;
    };
    let Ok(writer) = usize::try_from(*writer) else {
        return false;
    };
    *row == concurrent_writer_row(row.entity_key.clone(), *event_time, writer)
}

/// A single-column integer entity key.
fn int_key(number: i64) -> EntityKey {
    EntityKey::from_int(number)
}

/// A row whose values identify it by `marker`, with a write timestamp after its event time.
fn sample_row(entity_key: EntityKey, event_time: i64, marker: i64, lane: WriteLane) -> OnlineRow {
    sample_row_at(
        entity_key,
        event_time,
        event_time.saturating_add(1),
        marker,
        lane,
    )
}

/// A row whose values identify it by `marker`, with explicit timestamps.
fn sample_row_at(
    entity_key: EntityKey,
    event_time: i64,
    write_time: i64,
    marker: i64,
    lane: WriteLane,
) -> OnlineRow {
    OnlineRow {
        entity_key,
        event_timestamp: Timestamp(event_time),
        write_timestamp: Timestamp(write_time),
        lane,
        values: encode_row_to_vec(&[Value::Int64(marker), Value::String(format!("row {marker}"))]),
    }
}

/// Distinguishes the tables of one process run from those of every other run.
fn run_identifier() -> &'static str {
    static RUN_IDENTIFIER: OnceLock<String> = OnceLock::new();
    RUN_IDENTIFIER.get_or_init(|| {
        let nanoseconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        format!(
            "{:x}{:x}",
            std::process::id(),
            nanoseconds & 0xffff_ffff_ffff
        )
    })
}

/// One running check: the store under test, the check's name for messages, and helpers that
/// call the store and panic with a clear message when it fails.
struct Check<'store> {
    store: &'store dyn OnlineStore,
    check_name: &'static str,
}

impl<'store> Check<'store> {
    fn new(store: &'store dyn OnlineStore, check_name: &'static str) -> Self {
        Self { store, check_name }
    }

    /// Panics with a message naming the backend and the check.
    fn fail(&self, message: &str) -> ! {
        panic!(
            "online store conformance: backend '{}' fails check '{}': {message}",
            self.store.backend_name(),
            self.check_name
        )
    }

    /// A table that no other check, run or process uses.
    fn fresh_table(&self) -> FeatureViewId {
        static TABLE_COUNTER: AtomicU64 = AtomicU64::new(0);
        let table_number = TABLE_COUNTER.fetch_add(1, Ordering::Relaxed);
        FeatureViewId {
            name: format!(
                "conformance_{}_{}_{table_number}",
                self.check_name,
                run_identifier()
            ),
            version: 1,
        }
    }

    async fn prepare(&self, table: &FeatureViewId, options: TableOptions) {
        self.store
            .prepare_table(table, options)
            .await
            .unwrap_or_else(|error| {
                self.fail(&format!(
                    "prepare of table {table} with {options:?} failed: {error}"
                ))
            });
    }

    async fn write(&self, table: &FeatureViewId, rows: Vec<OnlineRow>) -> WriteSummary {
        self.write_with(table, rows, WriteDurability::Immediate)
            .await
    }

    async fn write_with(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
        durability: WriteDurability,
    ) -> WriteSummary {
        let row_count = rows.len();
        self.store
            .write_rows_with(table, rows, durability)
            .await
            .unwrap_or_else(|error| {
                self.fail(&format!(
                    "write of {row_count} rows to {table} failed: {error}"
                ))
            })
    }

    async fn swap(&self, table: &FeatureViewId, swaps: Vec<RowSwap>) -> Vec<bool> {
        let swap_count = swaps.len();
        let applied = self
            .store
            .swap_rows(table, swaps)
            .await
            .unwrap_or_else(|error| {
                self.fail(&format!(
                    "swap of {swap_count} rows in {table} failed: {error}"
                ))
            });
        if applied.len() != swap_count {
            self.fail(&format!(
                "swap of {swap_count} rows answered {} flags",
                applied.len()
            ));
        }
        applied
    }

    fn assert_flags(&self, applied: &[bool], expected: &[bool], situation: &str) {
        if applied != expected {
            self.fail(&format!(
                "{situation}: the swaps answered {applied:?}, expected {expected:?}"
            ));
        }
    }

    async fn read(&self, table: &FeatureViewId, keys: &[EntityKey]) -> Vec<Option<OnlineRow>> {
        let slots = self
            .store
            .read_rows(table, keys)
            .await
            .unwrap_or_else(|error| {
                self.fail(&format!(
                    "read of {} keys from {table} failed: {error}",
                    keys.len()
                ))
            });
        if slots.len() != keys.len() {
            self.fail(&format!(
                "read of {} keys from {table} returned {} slots",
                keys.len(),
                slots.len()
            ));
        }
        slots
    }

    async fn delete(&self, table: &FeatureViewId, keys: &[EntityKey]) -> u64 {
        self.store
            .delete_rows(table, keys)
            .await
            .unwrap_or_else(|error| {
                self.fail(&format!(
                    "delete of {} keys from {table} failed: {error}",
                    keys.len()
                ))
            })
    }

    async fn drop_table(&self, table: &FeatureViewId) {
        self.store
            .drop_table(table)
            .await
            .unwrap_or_else(|error| self.fail(&format!("drop of table {table} failed: {error}")));
    }

    /// Reads the key of `expected_row` and checks that the store returns exactly that row.
    async fn assert_row(&self, table: &FeatureViewId, expected_row: &OnlineRow, situation: &str) {
        let slots = self
            .read(table, std::slice::from_ref(&expected_row.entity_key))
            .await;
        if slots.first().and_then(Option::as_ref) != Some(expected_row) {
            self.fail(&format!(
                "{situation}: key {} holds {:?}, expected {expected_row:?}",
                expected_row.entity_key,
                slots.first()
            ));
        }
    }

    fn assert_all_slots_empty(&self, slots: &[Option<OnlineRow>], situation: &str) {
        if slots.iter().any(Option::is_some) {
            self.fail(&format!("{situation}: expected no rows, found {slots:?}"));
        }
    }

    fn assert_summary(
        &self,
        summary: WriteSummary,
        written: u64,
        skipped_stale: u64,
        situation: &str,
    ) {
        let expected_summary = WriteSummary {
            written,
            skipped_stale,
        };
        if summary != expected_summary {
            self.fail(&format!(
                "{situation}: the store reported {summary:?}, expected {expected_summary:?}"
            ));
        }
    }

    fn assert_count(&self, count: u64, expected_count: u64, situation: &str) {
        if count != expected_count {
            self.fail(&format!("{situation}: {count}, expected {expected_count}"));
        }
    }

    /// The marker of a row built by [`sample_row`].
    fn marker_of(&self, row: &OnlineRow) -> i64 {
        match larder_core::codec::decode_row(&row.values).as_deref() {
            Ok([Value::Int64(marker), ..]) => *marker,
            other => self.fail(&format!(
                "key {} holds values that are not a sample row: {other:?}",
                row.entity_key
            )),
        }
    }
}

/// A small deterministic pseudo-random generator (xorshift64), so the suite needs no `rand`
/// and every run shuffles the same way.
struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    fn new(seed: u64) -> Self {
        Self { state: seed.max(1) }
    }

    fn next_u64(&mut self) -> u64 {
        let mut state = self.state;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        self.state = state;
        state
    }

    /// Fisher-Yates shuffle.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for upper_index in (1..items.len()).rev() {
            let swap_index = (self.next_u64() % (upper_index as u64 + 1)) as usize;
            items.swap(upper_index, swap_index);
        }
    }
}
