//! A Redis that goes down and comes back: errors are `Unavailable` naming the backend, a write
//! never reports success while Redis is down, and the store reconnects (and reloads its
//! script into the empty restarted server) by itself.

#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use larder_core::codec::encode_row_to_vec;
use larder_core::{EntityKey, FeatureViewId, Timestamp, Value, WriteLane};
use larder_online::{OnlineRow, OnlineStore, OnlineStoreError};
use larder_online_redis::{RedisOnlineStore, RedisOnlineStoreOptions};
use larder_testing::RedisServer;

fn row(user: i64, event_time: i64) -> OnlineRow {
    OnlineRow {
        entity_key: EntityKey::from_int(user),
        event_timestamp: Timestamp(event_time),
        write_timestamp: Timestamp(event_time),
        lane: WriteLane::Direct,
        values: encode_row_to_vec(&[Value::Int64(user)]),
    }
}

fn assert_unavailable(result: Result<impl std::fmt::Debug, OnlineStoreError>, operation: &str) {
    match result {
        Err(OnlineStoreError::Unavailable { backend, .. }) => assert_eq!(backend, "redis"),
        other => panic!("{operation} with redis down returned {other:?}, expected Unavailable"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_unavailable_then_reconnected() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = RedisOnlineStore::connect(RedisOnlineStoreOptions {
        urls: vec![server.url()],
        pool_size: 2,
        response_timeout: Duration::from_millis(500),
        connection_timeout: Duration::from_millis(500),
        ..RedisOnlineStoreOptions::default()
    })
    .await
    .expect("connect");
    let table = FeatureViewId {
        name: "failures".to_string(),
        version: 1,
    };
    let keys = [EntityKey::from_int(1), EntityKey::from_int(2)];
    store
        .write_rows(&table, vec![row(1, 10), row(2, 10)])
        .await
        .expect("write while up");

    server.kill();
    for _ in 0..3 {
        assert_unavailable(store.read_rows(&table, &keys).await, "a read");
        assert_unavailable(store.write_rows(&table, vec![row(1, 20)]).await, "a write");
    }

    // The restarted server is empty and has no script loaded: the next write must load it.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let summary = loop {
        match store.write_rows(&table, vec![row(1, 30), row(2, 30)]).await {
            Ok(summary) => break summary,
            Err(error) if Instant::now() < deadline => {
                eprintln!("not reconnected yet: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the store did not reconnect: {error}"),
        }
    };
    assert_eq!(summary.written, 2);
    let slots = store
        .read_rows(&table, &keys)
        .await
        .expect("read after restart");
    assert_eq!(slots, vec![Some(row(1, 30)), Some(row(2, 30))]);
}
