//! The seam between the consumer loop and each broker: [`StreamSource`], implemented by the
//! Kafka-protocol and NATS JetStream sources; [`crate::resolver::open_source`] picks one for a
//! source definition.

use std::sync::Arc;

use larder_ingest::WritePath;
use tokio::sync::watch;

use crate::StreamError;
use crate::job::StreamViewJob;
use crate::state::StreamStateStore;

/// A broker that stream views consume.
///
/// Every implementation keeps the lane's promise: messages of a partition are applied in
/// order through a [`crate::processor::StreamProcessor`] (which skips what its committed
/// position already covers), a batch's rows are written and its state committed before the
/// broker is told the batch was consumed, so a restart after any crash counts nothing twice.
#[async_trait::async_trait]
pub trait StreamSource: Send + Sync + std::fmt::Debug {
    /// What it reads, for people (`Kafka topic 'clicks'`).
    fn describe(&self) -> String;

    /// Consumes `job`'s stream, writing through `write_path` and committing to `state`,
    /// until `shutdown` turns true (`Ok`) or the broker fails (`Err`, and the caller restarts
    /// it).
    async fn consume(
        &self,
        job: &StreamViewJob,
        write_path: Arc<WritePath>,
        state: StreamStateStore,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamError>;

    /// Every message the broker retains, per partition, each in stream order.
    async fn read_history(&self) -> Result<Vec<Vec<Vec<u8>>>, StreamError>;
}
