//! The NATS JetStream consumer of a stream view.
//!
//! The position of record is the one committed with the aggregation state
//! ([`crate::state`]), not the consumer's acknowledgement floor: at every (re)start the
//! durable consumer is recreated to deliver from the last applied stream sequence + 1, in
//! order. Messages are acknowledged (ack policy `all`, the batch's last message) only after
//! the batch's rows were accepted by the write path and its state committed.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use futures::StreamExt;
use larder_core::{DataSource, DataSourceKind, FeatureView, StreamAggregations};
use larder_ingest::WritePath;
use tokio::sync::watch;

use crate::StreamError;
use crate::processor::{StreamMessage, StreamProcessor};
use crate::state::StreamStateStore;

/// The partition name of a NATS stream (JetStream sequences are per stream).
pub const NATS_PARTITION: &str = "0";

/// Most messages in one batch.
const MAX_BATCH: usize = 5_000;
/// How long a batch waits for more messages once it has one.
const BATCH_LINGER: Duration = Duration::from_millis(20);

/// Everything a view's consumer needs.
#[derive(Debug, Clone)]
pub struct StreamViewJob {
    /// The view.
    pub view: FeatureView,
    /// Its source.
    pub source: DataSource,
    /// Its aggregations (`None`: values copied from the messages).
    pub aggregations: Option<StreamAggregations>,
}

impl StreamViewJob {
    /// The durable consumer name: the source's `durable` (default `larder`), the view and
    /// its version.
    pub fn durable_name(&self) -> String {
        let prefix = match &self.source.kind {
            DataSourceKind::Nats {
                durable: Some(durable),
                ..
            } => durable.as_str(),
            _ => "larder",
        };
        format!("{prefix}-{}-v{}", self.view.name, self.view.version)
    }
}

fn broker_error(context: &str) -> impl FnOnce(String) -> StreamError + '_ {
    move |error| StreamError::Broker(format!("{context}: {error}"))
}

/// Consumes a view's NATS stream until `shutdown` turns true, restarting after failures
/// (each restart reloads the persisted state and resumes after its position).
pub async fn run_nats_view(
    job: StreamViewJob,
    write_path: Arc<WritePath>,
    state: StreamStateStore,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = consume_once(&job, Arc::clone(&write_path), state.clone(), &mut shutdown);
        match attempt.await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(view = %job.view.name, %error, "stream consumer failed; restarting");
                metrics::counter!("larder_stream_consumer_restarts_total", "view" => job.view.name.clone())
                    .increment(1);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn consume_once(
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
        write_path,
        state,
    )
    .await?;
    let start_sequence = processor
        .position()
        .sequence(NATS_PARTITION)
        .map_or(1, |last| last + 1);
    let client = async_nats::connect(url.as_str())
        .await
        .map_err(|error| broker_error("connecting")(format!("{url}: {error}")))?;
    let context = jetstream::new(client);
    let nats_stream = context
        .get_stream(stream.as_str())
        .await
        .map_err(|error| broker_error("opening the stream")(format!("'{stream}': {error}")))?;
    let durable = job.durable_name();
    // The consumer must deliver from our committed position, which only a new consumer can.
    let _ = nats_stream.delete_consumer(&durable).await;
    let consumer: jetstream::consumer::PullConsumer = nats_stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: subject.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ack_policy: AckPolicy::All,
            max_ack_pending: (MAX_BATCH * 4) as i64,
            ..Default::default()
        })
        .await
        .map_err(|error| broker_error("creating the consumer")(format!("'{durable}': {error}")))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| broker_error("pulling messages")(error.to_string()))?;
    tracing::info!(view = %job.view.name, %durable, start_sequence, "consuming NATS stream '{stream}'");
    loop {
        let first = tokio::select! {
            next = messages.next() => next,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let Some(first) = first else {
            return Err(StreamError::Broker("the message stream ended".to_string()));
        };
        let mut batch = vec![first.map_err(|error| broker_error("receiving")(error.to_string()))?];
        let deadline = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => batch.push(message),
                Ok(Some(Err(error))) => {
                    return Err(broker_error("receiving")(error.to_string()));
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut stream_messages = Vec::with_capacity(batch.len());
        for message in &batch {
            let info = message
                .info()
                .map_err(|error| broker_error("reading message metadata")(error.to_string()))?;
            stream_messages.push(StreamMessage {
                partition: NATS_PARTITION.to_string(),
                sequence: info.stream_sequence,
                payload: message.payload.to_vec(),
            });
        }
        processor.process(&stream_messages).await?;
        if let Some(last) = batch.last() {
            // Only now are the batch's effects durable; a lost ack just redelivers messages
            // that the processor will skip.
            last.ack()
                .await
                .map_err(|error| broker_error("acknowledging")(error.to_string()))?;
        }
    }
}
