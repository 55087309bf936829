//! Every in-process backend passes the vector index conformance suite.
#![allow(clippy::expect_used)]

use std::sync::Arc;

use larder_vector::{EmbeddedVectorIndex, MemoryVectorIndex, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_index_passes_the_conformance_suite() {
    conformance::run_all(Arc::new(MemoryVectorIndex::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_passes_the_conformance_suite() {
    let folder = tempfile::tempdir().expect("temp dir");
    let index = EmbeddedVectorIndex::open(folder.path()).expect("open");
    conformance::run_all(Arc::new(index)).await;
}

mod embedded_persistence {
    use larder_core::{
        EntityKey, FeatureViewId, IndexedFeature, Timestamp, VectorIndexSpec, VectorMetric,
    };
    use larder_vector::{
        EmbeddedVectorIndex, SearchRequest, VectorEntry, VectorIndex, VectorIndexError,
        VectorIndexOptions,
    };

    fn table() -> FeatureViewId {
        FeatureViewId {
            name: "docs".into(),
            version: 1,
        }
    }

    fn options() -> VectorIndexOptions {
        VectorIndexOptions {
            feature: IndexedFeature {
                position: 0,
                dimension: 2,
                spec: VectorIndexSpec {
                    metric: VectorMetric::L2,
                    ..VectorIndexSpec::default()
                },
            },
            ttl: None,
        }
    }

    async fn nearest(index: &EmbeddedVectorIndex, query: [f32; 2]) -> Vec<(EntityKey, f32)> {
        index
            .search(
                &table(),
                SearchRequest {
                    query: &query,
                    k: 3,
                    expansion: None,
                    exact: false,
                    not_before: None,
                },
            )
            .await
            .expect("search")
            .into_iter()
            .map(|hit| (hit.key, hit.distance))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopened_index_has_every_change_and_a_second_opener_is_refused() {
        let folder = tempfile::tempdir().expect("temp dir");
        let index = EmbeddedVectorIndex::open(folder.path()).expect("open");
        index.prepare(&table(), options()).await.expect("prepare");
        let entries = (0..500)
            .map(|id| VectorEntry {
                key: EntityKey::from_int(id),
                event_timestamp: Timestamp::from_seconds(10),
                vector: Some(vec![id as f32, 0.0]),
            })
            .collect();
        index.upsert(&table(), entries).await.expect("upsert");
        // Changes after the snapshot: a move, a removal, a null.
        index.flush().await.expect("flush");
        index
            .upsert(
                &table(),
                vec![
                    VectorEntry {
                        key: EntityKey::from_int(400),
                        event_timestamp: Timestamp::from_seconds(20),
                        vector: Some(vec![0.5, 0.0]),
                    },
                    VectorEntry {
                        key: EntityKey::from_int(1),
                        event_timestamp: Timestamp::from_seconds(20),
                        vector: None,
                    },
                ],
            )
            .await
            .expect("upsert");
        index
            .remove(&table(), &[EntityKey::from_int(0)])
            .await
            .expect("remove");
        let before = nearest(&index, [0.0, 0.0]).await;
        assert_eq!(
            before.iter().map(|hit| hit.0.clone()).collect::<Vec<_>>(),
            vec![
                EntityKey::from_int(400),
                EntityKey::from_int(2),
                EntityKey::from_int(3)
            ]
        );
        let second = EmbeddedVectorIndex::open(folder.path());
        assert!(
            matches!(second, Err(VectorIndexError::Locked { .. })),
            "{second:?}"
        );
        drop(index);
        let reopened = EmbeddedVectorIndex::open(folder.path()).expect("reopen");
        assert_eq!(nearest(&reopened, [0.0, 0.0]).await, before);
        assert_eq!(reopened.len(&table()).await.expect("len"), 498);
    }
}
