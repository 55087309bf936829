//! A Redis that goes down and comes back: errors are `Unavailable` naming the backend, a write
//! never reports success while Redis is down, and the store reconnects (and reloads its
//! script into the empty restarted server) by itself. On a cluster, a killed master's replica
//! takes over and the store follows it, losing no replicated row.

#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use larder_core::codec::encode_row_to_vec;
use larder_core::{EntityKey, FeatureViewId, Timestamp, Value, WriteLane};
use larder_online::{OnlineRow, OnlineStore, OnlineStoreError};
use larder_online_redis::{RedisOnlineStore, RedisOnlineStoreOptions};
use larder_testing::{RedisCluster, RedisServer, redis_cli};

fn row(user: i64, event_time: i64) -> OnlineRow {
    OnlineRow {
        entity_key: EntityKey::from_int(user),
        event_timestamp: Timestamp(event_time),
        write_timestamp: Timestamp(event_time),
        lane: WriteLane::Direct,
        values: encode_row_to_vec(&[Value::Int64(user)]),
    }
}

/// A row of the entity named `name` (a string key, so that its Redis key is text that
/// `redis-cli` can take as an argument).
fn named_row(name: &str, event_time: i64, value: i64) -> OnlineRow {
    OnlineRow {
        entity_key: EntityKey::from_str_key(name),
        event_timestamp: Timestamp(event_time),
        write_timestamp: Timestamp(event_time),
        lane: WriteLane::Direct,
        values: encode_row_to_vec(&[Value::Int64(value)]),
    }
}

/// The value of an `Ok`, or `None` for `Unavailable` naming redis; panics on anything else.
fn ok_or_unavailable<T>(result: Result<T, OnlineStoreError>, operation: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(OnlineStoreError::Unavailable {
            backend: "redis", ..
        }) => None,
        Err(other) => panic!("{operation} returned {other:?}, expected Ok or Unavailable"),
    }
}

/// Runs `call`, failing the test if it takes longer than `bound`; also returns how long it took.
async fn within<T>(
    bound: Duration,
    operation: &str,
    call: impl Future<Output = T>,
) -> (T, Duration) {
    let started = Instant::now();
    match tokio::time::timeout(bound, call).await {
        Ok(output) => (output, started.elapsed()),
        Err(_) => panic!("{operation} hung for more than {bound:?}"),
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

/// Entities written before the failover: enough that every master owns many.
const FAILOVER_ENTITY_COUNT: i64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_failover_is_unavailable_then_served_by_the_promoted_replica() {
    let Some(mut cluster) = RedisCluster::start_with_replicas() else {
        return;
    };
    let response_timeout = Duration::from_millis(500);
    let store = RedisOnlineStore::connect(RedisOnlineStoreOptions {
        urls: cluster.urls(),
        cluster: true,
        response_timeout,
        connection_timeout: Duration::from_millis(500),
        ..RedisOnlineStoreOptions::default()
    })
    .await
    .expect("connect to the cluster");
    let table = FeatureViewId {
        name: "failover".to_string(),
        version: 1,
    };
    let names: Vec<String> = (0..FAILOVER_ENTITY_COUNT)
        .map(|number| format!("user-{number}"))
        .collect();
    let keys: Vec<EntityKey> = names
        .iter()
        .map(|name| EntityKey::from_str_key(name))
        .collect();
    let rows_before: Vec<OnlineRow> = names
        .iter()
        .zip(0..)
        .map(|(name, number)| named_row(name, 10, number))
        .collect();
    let expected_before: Vec<Option<OnlineRow>> = rows_before.iter().cloned().map(Some).collect();
    let summary = store
        .write_rows(&table, rows_before.clone())
        .await
        .expect("write before the failover");
    assert_eq!(summary.written, FAILOVER_ENTITY_COUNT as u64);

    // Every row is on its master and on that master's replica, and every node holds some.
    cluster.wait_for_replication();
    let mut stored_copies = 0;
    for port in cluster.ports() {
        let key_count: i64 = redis_cli(*port, &["dbsize"])
            .trim()
            .parse()
            .expect("DBSIZE answers a number");
        assert!(key_count > 0, "node {port} holds no row");
        stored_copies += key_count;
    }
    assert_eq!(stored_copies, 2 * FAILOVER_ENTITY_COUNT);

    let victim_key =
        String::from_utf8(store.row_key(&table, &keys[0])).expect("a string entity's key is text");
    let killed_port = cluster.kill_master_of(&victim_key);
    let killed_at = Instant::now();
    eprintln!("killed the master on port {killed_port}");

    // The cluster needs more than its node timeout (2 s) to promote the replica: until then
    // the killed master's slots cannot be served.
    let (first_read, first_read_took) = within(
        response_timeout * 2,
        "the first read after the kill",
        store.read_rows(&table, &keys),
    )
    .await;
    assert_unavailable(first_read, "the first read after the kill");

    // Every call returns Ok or Unavailable, in bounded time: a write that meets the promoted
    // replica without the script runs EVALSHA, SCRIPT LOAD and EVALSHA, each bounded.
    let call_bound = response_timeout * 3 + Duration::from_secs(1);
    let deadline = killed_at + Duration::from_secs(30);
    let mut unavailable_calls = 1;
    let mut ok_calls = 0;
    let mut longest_call = first_read_took;
    let served_again_after = loop {
        let (read, read_took) = within(call_bound, "a read", store.read_rows(&table, &keys)).await;
        let read = ok_or_unavailable(read, "a read during the failover");
        if let Some(slots) = &read {
            assert_eq!(
                slots, &expected_before,
                "a read during the failover returned other rows"
            );
        }
        // Writing the same rows again changes no stored value.
        let (write, write_took) = within(
            call_bound,
            "a write",
            store.write_rows(&table, rows_before.clone()),
        )
        .await;
        let write = ok_or_unavailable(write, "a write during the failover");
        longest_call = longest_call.max(read_took).max(write_took);
        if let Some(summary) = &write {
            assert_eq!(summary.written, FAILOVER_ENTITY_COUNT as u64);
        }
        for outcome in [read.is_some(), write.is_some()] {
            if outcome {
                ok_calls += 1;
            } else {
                unavailable_calls += 1;
            }
        }
        if read.is_some() && write.is_some() {
            break killed_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the store did not serve every entity within 30 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The cluster agrees: every slot is on a running master (the promoted replica).
    cluster.wait_until_serving(Duration::from_secs(30));
    eprintln!(
        "failover: the store served every entity again {served_again_after:?} after the kill \
         ({unavailable_calls} unavailable calls, {ok_calls} ok, the longest took {longest_call:?})"
    );

    let slots = store
        .read_rows(&table, &keys)
        .await
        .expect("read after the failover");
    assert_eq!(
        slots, expected_before,
        "rows written before the kill were lost"
    );
    let rows_after: Vec<OnlineRow> = names
        .iter()
        .zip(0..)
        .map(|(name, number)| named_row(name, 20, 1_000 + number))
        .collect();
    let summary = store
        .write_rows(&table, rows_after.clone())
        .await
        .expect("write after the failover");
    assert_eq!(summary.written, FAILOVER_ENTITY_COUNT as u64);
    let slots = store
        .read_rows(&table, &keys)
        .await
        .expect("read back after the failover");
    assert_eq!(slots, rows_after.into_iter().map(Some).collect::<Vec<_>>());
}
