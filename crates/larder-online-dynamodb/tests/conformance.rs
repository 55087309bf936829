//! The online store conformance suite against a real DynamoDB-compatible server (moto)
//! spawned by the test, and the failure behaviour when it goes away.

#![allow(clippy::expect_used)]

use std::sync::Arc;

use larder_core::{EntityKey, FeatureViewId, Timestamp, WriteLane};
use larder_online::{OnlineRow, OnlineStore, OnlineStoreError, conformance};
use larder_online_dynamodb::{DynamoDbOnlineStore, DynamoDbOnlineStoreOptions};
use larder_testing::MotoServer;

fn store_for(server: &MotoServer) -> DynamoDbOnlineStore {
    DynamoDbOnlineStore::connect(DynamoDbOnlineStoreOptions {
        endpoint: Some(server.endpoint()),
        credentials: Some(("test".to_string(), "test".to_string())),
        ..DynamoDbOnlineStoreOptions::default()
    })
    .expect("a store with static credentials")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_passes_the_conformance_suite() {
    let Some(server) = MotoServer::start() else {
        return;
    };
    conformance::run_all(Arc::new(store_for(&server))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_reported_unavailable_and_no_write_claims_success() {
    let Some(mut server) = MotoServer::start() else {
        return;
    };
    let store = store_for(&server);
    let table = FeatureViewId {
        name: "scores".to_string(),
        version: 1,
    };
    let row = OnlineRow {
        entity_key: EntityKey::from_int(7),
        event_timestamp: Timestamp(1_000_000),
        write_timestamp: Timestamp(2_000_000),
        lane: WriteLane::Direct,
        values: vec![1, 2, 3],
    };
    let written = store
        .write_rows(&table, vec![row.clone()])
        .await
        .expect("write while the server runs");
    assert_eq!(written.written, 1);
    server.kill();
    let read = store
        .read_rows(&table, std::slice::from_ref(&row.entity_key))
        .await;
    assert!(
        matches!(
            &read,
            Err(OnlineStoreError::Unavailable {
                backend: "dynamodb",
                ..
            })
        ),
        "{read:?}"
    );
    let write = store.write_rows(&table, vec![row]).await;
    assert!(
        matches!(
            &write,
            Err(OnlineStoreError::Unavailable {
                backend: "dynamodb",
                ..
            })
        ),
        "{write:?}"
    );
    let message = read
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(message.contains("'dynamodb' is unavailable"), "{message}");
}

#[test]
fn credentials_are_never_printed() {
    let options = DynamoDbOnlineStoreOptions {
        credentials: Some(("AKIAEXAMPLE".to_string(), "very-secret".to_string())),
        ..DynamoDbOnlineStoreOptions::default()
    };
    let printed = format!("{options:?}");
    assert!(
        !printed.contains("very-secret") && !printed.contains("AKIAEXAMPLE"),
        "{printed}"
    );
}
