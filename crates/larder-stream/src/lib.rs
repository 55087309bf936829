//! The streaming lane of Larder.
//!
//! Events arrive on a stream (the Kafka protocol in a consumer group, or NATS JetStream) and
//! feed one [`processor::StreamProcessor`] per partition, are decoded by a [`decode::MessageDecoder`] into typed
//! columns, aggregated per entity by the tile engine ([`engine::ViewAggregator`]) and written
//! through the one [`larder_ingest::WritePath`] with lane `stream`, so event-time ordering is
//! the same as for the batch and direct lanes.
//!
//! Why tiles: a window value is the combination of partial aggregates per (entity, tile), so
//! a 7-day window reads at most 84 tiles however many events it holds, and the result is
//! exact for the window's definition (see [`engine`]).
//!
//! Delivery is at-least-once with idempotent effects: the aggregation state and the last
//! applied stream sequence are committed together in one redb transaction
//! ([`state::StreamStateStore`]) after the write path accepted the rows, and a restarted
//! consumer resumes right after that sequence, skipping anything at or below it; the
//! stream acknowledgement comes last. The offline backfill ([`backfill`]) replays an event
//! history through the same engine, so training values equal served values.

pub mod backfill;
mod batching;
pub mod consumer;
pub mod decode;
pub mod engine;
pub mod job;
pub mod kafka;
pub mod nats;
pub mod processor;
pub mod resolver;
pub mod source;
pub mod state;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

/// Errors of the streaming lane.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The definitions cannot be run as a stream (the user's to fix).
    #[error("{0}")]
    Definition(String),
    /// A message that cannot be decoded; it is skipped and counted.
    #[error("{0}")]
    Decode(String),
    /// The persisted stream state cannot be read or written.
    #[error("stream state: {0}")]
    State(String),
    /// The broker failed or refused a request.
    #[error("stream broker: {0}")]
    Broker(String),
    /// The broker stopped delivering to a consumer that has messages to read (missed
    /// heartbeats); the consumer is re-created at the committed position.
    #[error("stream broker stalled: {0}")]
    BrokerStalled(String),
    /// The write path refused or failed the rows.
    #[error(transparent)]
    Write(#[from] larder_ingest::WriteError),
    /// The offline store failed.
    #[error(transparent)]
    Offline(#[from] larder_offline::OfflineError),
}
