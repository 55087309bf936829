//! The online store conformance suite against real Redis servers spawned by the tests.

#![allow(clippy::expect_used)]

use std::sync::Arc;

use larder_online::conformance;
use larder_online_redis::{RedisOnlineStore, RedisOnlineStoreOptions};
use larder_testing::{RedisCluster, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_redis_passes_the_conformance_suite() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = RedisOnlineStore::connect(RedisOnlineStoreOptions {
        urls: vec![server.url()],
        ..RedisOnlineStoreOptions::default()
    })
    .await
    .expect("connect to redis-server");
    conformance::run_all(Arc::new(store)).await;
    let key_count = server.cli(&["dbsize"]);
    assert_eq!(
        key_count.trim(),
        "0",
        "every check drops its tables, so no key should be left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_passes_the_conformance_suite() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let store = RedisOnlineStore::connect(RedisOnlineStoreOptions {
        urls: cluster.urls(),
        cluster: true,
        ..RedisOnlineStoreOptions::default()
    })
    .await
    .expect("connect to the redis cluster");
    conformance::run_all(Arc::new(store)).await;
    for port in cluster.ports() {
        let key_count = larder_testing::redis_cli(*port, &["dbsize"]);
        assert_eq!(key_count.trim(), "0", "node {port} still holds keys");
    }
}
