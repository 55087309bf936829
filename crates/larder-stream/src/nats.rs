//! The NATS JetStream consumer of a stream view.
//!
//! The position of record is the one committed with the aggregation state
//! ([`crate::state`]), not the consumer's acknowledgement floor: at every (re)start the
//! durable consumer is recreated to deliver from the last applied stream sequence + 1, in
//! order. Messages are acknowledged (ack policy `all`, the batch's last message) only after
//! the batch's rows were accepted by the write path and its state committed.

use std::sync::Arc;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use futures::StreamExt;
use larder_core::DataSourceKind;
use larder_ingest::WritePath;
use tokio::sync::watch;

use crate::StreamError;
use crate::batching::{InFlight, MAX_BATCH, broker_error, next_batch};
use crate::job::StreamViewJob;
use crate::processor::{StreamMessage, StreamProcessor};
use crate::state::StreamStateStore;

/// The partition name of a NATS stream (JetStream sequences are per stream).
pub const NATS_PARTITION: &str = "0";

/// A subject of a NATS JetStream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSource {
    /// The server, `nats://host:port`.
    pub url: String,
    /// The JetStream stream.
    pub stream: String,
    /// The subject (filter) within it.
    pub subject: String,
}

#[async_trait::async_trait]
impl crate::source::StreamSource for NatsSource {
    fn describe(&self) -> String {
        format!("NATS stream '{}'", self.stream)
    }

    async fn consume(
        &self,
        job: &StreamViewJob,
        write_path: Arc<WritePath>,
        state: StreamStateStore,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StreamError> {
        consume(job, write_path, state, shutdown).await
    }

    async fn read_history(&self) -> Result<Vec<Vec<Vec<u8>>>, StreamError> {
        Ok(vec![
            read_history(&self.url, &self.stream, &self.subject).await?,
        ])
    }
}

/// Consumes a view's NATS stream until `shutdown` turns true or an error.
async fn consume(
    job: &StreamViewJob,
    write_path: Arc<WritePath>,
    state: StreamStateStore,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let DataSourceKind::Nats {
        url,
        stream,
        subject,
        ..
    } = &job.source.kind
    else {
        return Err(StreamError::Definition(format!(
            "source '{}' is not a NATS source",
            job.source.name
        )));
    };
    let mut processor = StreamProcessor::open(
        job.view.clone(),
        &job.source,
        job.aggregations.as_ref(),
        NATS_PARTITION,
        write_path,
        state,
    )
    .await?;
    let client = async_nats::connect(url.as_str())
        .await
        .map_err(|error| broker_error("connecting")(format!("{url}: {error}")))?;
    let context = jetstream::new(client);
    let nats_stream = context
        .get_stream(stream.as_str())
        .await
        .map_err(|error| broker_error("opening the stream")(format!("'{stream}': {error}")))?;
    let durable = job.consumer_name();
    // One batch is persisted (written, committed, acknowledged) while the next one is
    // decoded and aggregated; the next one's rows are written while its state commits.
    let mut in_flight = InFlight::default();
    loop {
        // Every prepared batch is persisted (or being persisted) here, so the position is the
        // one of record once `in_flight` finishes.
        let start_sequence = processor
            .position()
            .last_sequence
            .map_or(1, |last| last + 1);
        let mut messages = pull_from(&nats_stream, &durable, subject, start_sequence).await?;
        tracing::info!(view = %job.view.name, %durable, start_sequence, "consuming NATS stream '{stream}'");
        loop {
            let mut batch = match next_batch(&mut messages, shutdown, &in_flight).await {
                Ok(Some(batch)) => batch,
                Ok(None) => return in_flight.finish().await,
                Err(StreamError::BrokerStalled(reason)) => {
                    // A pull consumer can stop asking the server for messages (its count of
                    // outstanding ones drifts when a pull request expires unseen): it would
                    // wait forever. Start a new consumer after the last persisted batch; the
                    // messages it had buffered are delivered again.
                    in_flight.finish().await?;
                    tracing::warn!(view = %job.view.name, %durable, %reason, "NATS stopped delivering; re-creating the consumer");
                    metrics::counter!("larder_stream_consumer_restarts_total", "view" => job.view.name.clone())
                        .increment(1);
                    break;
                }
                Err(error) => return Err(error),
            };
            let mut stream_messages = Vec::with_capacity(batch.len());
            for message in &batch {
                let info = message
                    .info()
                    .map_err(|error| broker_error("reading message metadata")(error.to_string()))?;
                stream_messages.push(StreamMessage {
                    sequence: info.stream_sequence,
                    payload: message.payload.to_vec(),
                });
            }
            let prepared = processor.prepare(&stream_messages);
            let last = batch.pop();
            in_flight
                .replace(move |rows_written| async move {
                    let written = prepared.write().await?;
                    rows_written.done();
                    written.commit().await?;
                    if let Some(last) = last {
                        // Only now are the batch's effects committed (durable with the next
                        // checkpoint: a crash before it replays from the state file's
                        // position, which the stream still holds); a lost ack just
                        // redelivers messages that the processor will skip.
                        last.ack()
                            .await
                            .map_err(|error| broker_error("acknowledging")(error.to_string()))?;
                    }
                    Ok(())
                })
                .await?;
        }
    }
}

/// How often an idle NATS server confirms a pull consumer is alive; two missed in a row
/// mean the consumer stalled.
pub const PULL_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// Messages asked for per pull request (the client keeps about one request ahead).
pub const PULL_BATCH: usize = 5_000;
/// Messages delivered but not yet acknowledged, at most: room for the batch being prepared,
/// the one being persisted and the pulls ahead of them.
pub const MAX_ACK_PENDING: i64 = (MAX_BATCH * 4) as i64;

/// (Re)creates the view's durable consumer to deliver from `start_sequence` in order (only a
/// new consumer can start at our committed position) and pulls from it.
async fn pull_from(
    nats_stream: &jetstream::stream::Stream,
    durable: &str,
    subject: &str,
    start_sequence: u64,
) -> Result<futures::stream::BoxStream<'static, Result<jetstream::Message, StreamError>>, StreamError>
{
    let _ = nats_stream.delete_consumer(durable).await;
    let consumer: jetstream::consumer::PullConsumer = nats_stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable.to_string()),
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ack_policy: AckPolicy::All,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        })
        .await
        .map_err(|error| broker_error("creating the consumer")(format!("'{durable}': {error}")))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|error| broker_error("pulling messages")(error.to_string()))?
        .map(|message| {
            message.map_err(|error| {
                if error.kind() == jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat {
                    StreamError::BrokerStalled(error.to_string())
                } else {
                    broker_error("receiving")(error)
                }
            })
        })
        .boxed();
    Ok(messages)
}

/// Every retained message of `stream` on `subject`, in stream order.
async fn read_history(url: &str, stream: &str, subject: &str) -> Result<Vec<Vec<u8>>, StreamError> {
    let client = async_nats::connect(url)
        .await
        .map_err(|error| broker_error("connecting")(format!("{url}: {error}")))?;
    let context = jetstream::new(client);
    let mut nats_stream = context
        .get_stream(stream)
        .await
        .map_err(|error| broker_error("opening the stream")(format!("'{stream}': {error}")))?;
    let info = nats_stream
        .info()
        .await
        .map_err(|error| broker_error("reading the stream's state")(error.to_string()))?;
    let last_sequence = info.state.last_sequence;
    let mut history = Vec::new();
    if info.state.messages == 0 {
        return Ok(history);
    }
    let consumer: jetstream::consumer::PullConsumer = nats_stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|error| broker_error("creating a reader")(error.to_string()))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| broker_error("pulling messages")(error.to_string()))?;
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next()).await;
        let message = match next {
            Ok(Some(message)) => {
                message.map_err(|error| broker_error("receiving")(error.to_string()))?
            }
            // Nothing more on this subject (the stream's last messages may be on others).
            Ok(None) | Err(_) => break,
        };
        let info = message
            .info()
            .map_err(|error| broker_error("reading message metadata")(error.to_string()))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        history.push(message.payload.to_vec());
        if pending == 0 || sequence >= last_sequence {
            break;
        }
    }
    Ok(history)
}
