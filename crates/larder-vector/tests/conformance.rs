//! Every in-process backend passes the vector index conformance suite.

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
