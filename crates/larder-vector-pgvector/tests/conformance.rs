//! The pgvector index against a real PostgreSQL + pgvector: the conformance suite, sharing
//! between two connected indexes (as between processes), and a stopped server.

use std::sync::Arc;

use larder_core::{
    EntityKey, FeatureViewId, IndexedFeature, Timestamp, VectorIndexSpec, VectorMetric,
};
use larder_testing::PgvectorServer;
use larder_vector::{
    SearchRequest, VectorEntry, VectorIndex, VectorIndexError, VectorIndexOptions, conformance,
};
use larder_vector_pgvector::{PgvectorIndex, PgvectorOptions};

fn options(url: String) -> PgvectorOptions {
    PgvectorOptions {
        url,
        table_prefix: "larder_".to_owned(),
        pool_size: 4,
    }
}

async fn connect(url: String) -> PgvectorIndex {
    match PgvectorIndex::connect(options(url)).await {
        Ok(index) => index,
        Err(error) => panic!("connect: {error}"),
    }
}

fn settings(dimension: u32, metric: VectorMetric) -> VectorIndexOptions {
    VectorIndexOptions {
        feature: IndexedFeature {
            position: 0,
            dimension,
            spec: VectorIndexSpec {
                metric,
                ..VectorIndexSpec::default()
            },
        },
        ttl: None,
    }
}

fn entry(id: i64, seconds: i64, vector: Option<Vec<f32>>) -> VectorEntry {
    VectorEntry {
        key: EntityKey::from_int(id),
        event_timestamp: Timestamp::from_seconds(seconds),
        vector,
    }
}

fn exact(query: &[f32], k: usize) -> SearchRequest<'_> {
    SearchRequest {
        query,
        k,
        expansion: None,
        exact: true,
        not_before: None,
    }
}

fn view(name: &str) -> FeatureViewId {
    FeatureViewId {
        name: name.to_owned(),
        version: 1,
    }
}

fn ok<T>(result: Result<T, VectorIndexError>, what: &str) -> T {
    result.unwrap_or_else(|error| panic!("{what}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgvector_index_passes_the_conformance_suite() {
    let Some(server) = PgvectorServer::start() else {
        return;
    };
    conformance::run_all(Arc::new(connect(server.url()).await)).await;
    // Tables are named per run: the suite passes again on the same server.
    conformance::run_all(Arc::new(connect(server.url()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_index_shares_what_the_first_wrote() {
    let Some(server) = PgvectorServer::start() else {
        return;
    };
    let first = connect(server.url()).await;
    let second = connect(server.url()).await;
    let table = view("shared_items");
    // Both prepare at once, as two processes starting together would.
    let (left, right) = tokio::join!(
        first.prepare(&table, settings(2, VectorMetric::L2)),
        second.prepare(&table, settings(2, VectorMetric::L2)),
    );
    ok(left, "first prepare");
    ok(right, "second prepare");
    let summary = ok(
        first
            .upsert(
                &table,
                vec![
                    entry(1, 10, Some(vec![0.0, 0.0])),
                    entry(2, 10, Some(vec![1.0, 0.0])),
                    entry(3, 10, None),
                ],
            )
            .await,
        "upsert",
    );
    assert_eq!((summary.applied, summary.skipped_stale), (3, 0));

    // A third index that never prepared the table finds it through the meta table.
    let third = connect(server.url()).await;
    let found = ok(third.search(&table, exact(&[0.1, 0.0], 5)).await, "search");
    let keys: Vec<EntityKey> = found.iter().map(|hit| hit.key.clone()).collect();
    assert_eq!(keys, vec![EntityKey::from_int(1), EntityKey::from_int(2)]);
    assert!((found[0].distance - 0.01).abs() < 1e-6, "{found:?}");
    assert_eq!(ok(third.len(&table).await, "len"), 2);

    // The event-time rule holds across indexes: the second cannot write an older vector.
    let summary = ok(
        second
            .upsert(
                &table,
                vec![
                    entry(1, 5, Some(vec![9.0, 9.0])),
                    entry(2, 5, Some(vec![3.0, 3.0])),
                    entry(2, 20, Some(vec![5.0, 0.0])),
                ],
            )
            .await,
        "older upsert",
    );
    assert_eq!((summary.applied, summary.skipped_stale), (1, 2));
    let found = ok(first.search(&table, exact(&[5.0, 0.0], 1)).await, "search");
    assert!(
        found[0].key == EntityKey::from_int(2)
            && found[0].distance == 0.0
            && found[0].event_timestamp == Timestamp::from_seconds(20),
        "{found:?}"
    );

    // Other settings are refused whichever index prepared first.
    let other = second.prepare(&table, settings(3, VectorMetric::L2)).await;
    assert!(
        matches!(other, Err(VectorIndexError::Mismatch { .. })),
        "{other:?}"
    );

    // One index removes, the other sees it.
    assert_eq!(
        ok(
            second
                .remove(&table, &[EntityKey::from_int(1), EntityKey::from_int(3)])
                .await,
            "remove"
        ),
        2
    );
    assert_eq!(ok(first.len(&table).await, "len"), 1);

    // One drops and prepares the table again with other settings: the others notice.
    ok(first.drop_index(&table).await, "drop");
    let searched = second.search(&table, exact(&[0.0, 0.0], 1)).await;
    assert!(
        matches!(searched, Err(VectorIndexError::NotPrepared(_))),
        "{searched:?}"
    );
    ok(
        first
            .prepare(&table, settings(3, VectorMetric::Cosine))
            .await,
        "prepare again",
    );
    ok(
        first
            .upsert(&table, vec![entry(7, 10, Some(vec![0.0, 0.0, 1.0]))])
            .await,
        "upsert again",
    );
    let refused = third
        .upsert(&table, vec![entry(8, 10, Some(vec![1.0, 0.0]))])
        .await;
    assert!(
        matches!(refused, Err(VectorIndexError::InvalidInput(_))),
        "a 2-component vector is refused by the re-prepared table: {refused:?}"
    );
    let found = ok(
        third.search(&table, exact(&[0.0, 0.0, 2.0], 5)).await,
        "search after re-prepare",
    );
    assert!(
        found.len() == 1
            && found[0].key == EntityKey::from_int(7)
            && found[0].distance.abs() < 1e-6,
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_odd_view_names_get_their_own_tables() {
    let Some(server) = PgvectorServer::start() else {
        return;
    };
    let index = connect(server.url()).await;
    let long = "a_feature_view_with_a_name_far_longer_than_sixty_three_bytes_of_postgres";
    let tables = [
        view(long),
        FeatureViewId {
            name: long.to_owned(),
            version: 2,
        },
        view("quote\"d; DROP TABLE x --"),
    ];
    for (id, table) in tables.iter().enumerate() {
        ok(
            index.prepare(table, settings(2, VectorMetric::Dot)).await,
            "prepare",
        );
        ok(
            index
                .upsert(table, vec![entry(id as i64, 10, Some(vec![1.0, 0.5]))])
                .await,
            "upsert",
        );
    }
    for (id, table) in tables.iter().enumerate() {
        let found = ok(index.search(table, exact(&[1.0, 0.0], 5)).await, "search");
        assert!(
            found.len() == 1 && found[0].key == EntityKey::from_int(id as i64),
            "{table}: {found:?}"
        );
        // dot: 1 − a·b
        assert!(found[0].distance.abs() < 1e-6, "{found:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unavailable_and_a_restarted_one_serves_again() {
    let Some(mut server) = PgvectorServer::start() else {
        return;
    };
    // trust authentication ignores the password; it must never show in a message.
    let url = format!(
        "postgres://postgres:hunter2-secret@127.0.0.1:{}/postgres",
        server.port()
    );
    let index = connect(url.clone()).await;
    let table = view("stopping");
    ok(
        index.prepare(&table, settings(2, VectorMetric::L2)).await,
        "prepare",
    );
    ok(
        index
            .upsert(&table, vec![entry(1, 10, Some(vec![0.0, 1.0]))])
            .await,
        "upsert",
    );
    assert!(!format!("{index:?}").contains("hunter2"));

    server.kill();
    let query = [0.0f32, 1.0];
    let failures: Vec<(&str, Option<VectorIndexError>)> = vec![
        (
            "upsert",
            index
                .upsert(&table, vec![entry(2, 10, Some(vec![1.0, 1.0]))])
                .await
                .err(),
        ),
        ("search", index.search(&table, exact(&query, 1)).await.err()),
        ("len", index.len(&table).await.err()),
        (
            "remove",
            index.remove(&table, &[EntityKey::from_int(1)]).await.err(),
        ),
        (
            "prepare",
            index
                .prepare(&view("other"), settings(2, VectorMetric::L2))
                .await
                .err(),
        ),
        ("drop", index.drop_index(&view("other")).await.err()),
        ("connect", PgvectorIndex::connect(options(url)).await.err()),
    ];
    for (what, failure) in failures {
        match failure {
            Some(VectorIndexError::Unavailable { backend, message }) => {
                assert_eq!(backend, "pgvector");
                assert!(!message.contains("hunter2"), "{what}: {message}");
            }
            other => panic!("{what} on a stopped server: expected Unavailable, got {other:?}"),
        }
    }

    server.restart();
    let found = ok(
        index.search(&table, exact(&query, 1)).await,
        "search after a restart",
    );
    assert!(
        found.len() == 1 && found[0].key == EntityKey::from_int(1) && found[0].distance == 0.0,
        "the data written before the crash is there: {found:?}"
    );
}
