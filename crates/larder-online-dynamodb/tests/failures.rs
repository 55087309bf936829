//! A DynamoDB-compatible server (moto) that goes down and comes back empty: while it is down
//! every operation fails promptly with `Unavailable` naming the backend (never `Internal`,
//! never a hang, and no write claims success); once it is back and the table is prepared
//! again (as `larder apply` does), the same store instance writes and reads by itself, and a
//! table nobody prepares again (a running server prepares each table once) is created again
//! by the next write after one retryable failure.

#![allow(clippy::expect_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use larder_core::codec::encode_row_to_vec;
use larder_core::{EntityKey, FeatureViewId, Timestamp, Value, WriteLane};
use larder_online::{OnlineRow, OnlineStore, OnlineStoreError, RowSwap, TableOptions};
use larder_online_dynamodb::{DynamoDbOnlineStore, DynamoDbOnlineStoreOptions};
use larder_testing::MotoServer;

/// The longest one operation may take to report the server down (the SDK retries a refused
/// connection a few times with backoff first).
const PROMPT: Duration = Duration::from_secs(10);

fn row(user: i64, event_time: i64) -> OnlineRow {
    OnlineRow {
        entity_key: EntityKey::from_int(user),
        event_timestamp: Timestamp(event_time),
        write_timestamp: Timestamp(event_time),
        lane: WriteLane::Direct,
        values: encode_row_to_vec(&[Value::Int64(user * 1_000 + event_time)]),
    }
}

/// Runs `operation` (bounded by [`PROMPT`]) and checks it failed as `Unavailable` from
/// "dynamodb"; returns how long it took.
async fn assert_unavailable<T: std::fmt::Debug>(
    operation: &str,
    future: impl Future<Output = Result<T, OnlineStoreError>>,
) -> Duration {
    let started = Instant::now();
    let result = tokio::time::timeout(PROMPT, future)
        .await
        .unwrap_or_else(|_| panic!("{operation} with the server down hung for {PROMPT:?}"));
    let took = started.elapsed();
    match result {
        Err(
            error @ OnlineStoreError::Unavailable {
                backend: "dynamodb",
                ..
            },
        ) => {
            let message = error.to_string();
            assert!(message.contains("'dynamodb' is unavailable"), "{message}");
        }
        other => {
            panic!("{operation} with the server down returned {other:?}, expected Unavailable")
        }
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_unavailable_then_used_again_by_the_same_store() {
    let Some(mut server) = MotoServer::start() else {
        return;
    };
    let store = DynamoDbOnlineStore::connect(DynamoDbOnlineStoreOptions {
        endpoint: Some(server.endpoint()),
        credentials: Some(("test".to_string(), "test".to_string())),
        ..DynamoDbOnlineStoreOptions::default()
    })
    .expect("a store with static credentials");
    let table = FeatureViewId {
        name: "failures".to_string(),
        version: 1,
    };
    // Created by its first write, as the write path of a running `larder serve` does.
    let unprepared = FeatureViewId {
        name: "unprepared".to_string(),
        version: 1,
    };
    let keys = [EntityKey::from_int(1), EntityKey::from_int(2)];
    store
        .write_rows(&unprepared, vec![row(1, 10)])
        .await
        .expect("first write creates the table");
    store
        .prepare_table(&table, TableOptions::default())
        .await
        .expect("prepare while up");
    let written = store
        .write_rows(&table, vec![row(1, 10), row(2, 10)])
        .await
        .expect("write while up");
    assert_eq!(written.written, 2);
    assert_eq!(
        store.read_rows(&table, &keys).await.expect("read while up"),
        vec![Some(row(1, 10)), Some(row(2, 10))]
    );

    server.kill();
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        let took = [
            assert_unavailable("a read", store.read_rows(&table, &keys)).await,
            assert_unavailable("a write", store.write_rows(&table, vec![row(1, 20)])).await,
            assert_unavailable(
                "a swap",
                store.swap_rows(
                    &table,
                    vec![RowSwap {
                        expected: Some(row(2, 10)),
                        row: row(2, 20),
                    }],
                ),
            )
            .await,
            assert_unavailable("a delete", store.delete_rows(&table, &keys[..1])).await,
            assert_unavailable(
                "preparing a table",
                store.prepare_table(&table, TableOptions::default()),
            )
            .await,
        ];
        eprintln!("round {round} with the server down, each operation failed in: {took:?}");
        slowest = took.into_iter().fold(slowest, Duration::max);
    }
    eprintln!("slowest failure with the server down: {slowest:?}");

    // The restarted server is empty: no table, no rows. Preparing the table, as `larder
    // apply` does, creates it again; the store was never told anything happened.
    let restarted = Instant::now();
    server.restart();
    eprintln!(
        "moto answered again {:?} after the restart",
        restarted.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.prepare_table(&table, TableOptions::default()).await {
            Ok(()) => break,
            Err(error) if Instant::now() < deadline => {
                assert!(
                    matches!(error, OnlineStoreError::Unavailable { .. }),
                    "preparing after the restart: {error:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the table was not prepared again: {error}"),
        }
    }
    assert_eq!(
        store
            .read_rows(&table, &keys)
            .await
            .expect("read the empty table"),
        vec![None, None],
        "the restarted server is empty"
    );
    let written = store
        .write_rows(&table, vec![row(1, 30), row(2, 30)])
        .await
        .expect("write after the restart");
    assert_eq!(written.written, 2);
    assert_eq!(
        store
            .read_rows(&table, &keys)
            .await
            .expect("read after the restart"),
        vec![Some(row(1, 30)), Some(row(2, 30))]
    );
    let swapped = store
        .swap_rows(
            &table,
            vec![RowSwap {
                expected: Some(row(2, 30)),
                row: row(2, 40),
            }],
        )
        .await
        .expect("swap after the restart");
    assert_eq!(swapped, vec![true]);
    assert_eq!(
        store
            .delete_rows(&table, &keys[..1])
            .await
            .expect("delete after the restart"),
        1
    );
    assert_eq!(
        store
            .read_rows(&table, &keys)
            .await
            .expect("read after the restart"),
        vec![None, Some(row(2, 40))]
    );
    eprintln!(
        "writes and reads work again {:?} after the restart",
        restarted.elapsed()
    );

    // The table nobody prepared again: its write may fail (retryably) once, as the store
    // finds out the table is gone, and the next one creates it again.
    let mut attempts = 0;
    let written = loop {
        attempts += 1;
        match store.write_rows(&unprepared, vec![row(1, 50)]).await {
            Ok(written) => break written,
            Err(error @ OnlineStoreError::Unavailable { .. }) if attempts < 3 => {
                eprintln!("write {attempts} to the unprepared table: {error}");
            }
            Err(error) => panic!("write {attempts} to the unprepared table: {error:?}"),
        }
    };
    assert_eq!(written.written, 1);
    assert_eq!(
        store
            .read_rows(&unprepared, &keys[..1])
            .await
            .expect("read the unprepared table"),
        vec![Some(row(1, 50))]
    );
    eprintln!(
        "the unprepared table took {attempts} write(s), done {:?} after the restart",
        restarted.elapsed()
    );
}
