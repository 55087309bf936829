//! The Kafka-protocol consumer of a stream view, in a consumer group.
//!
//! Several `larder` processes that consume the same view join one consumer group
//! ([`StreamViewJob::consumer_name`]) and share the topic's partitions. Each process keeps,
//! per partition it has consumed, the aggregation state and the last applied offset
//! ([`crate::state`]); the group's committed offset only says where to fetch from.
//!
//! Correctness rests on one property of the engine: replaying a partition's messages in
//! order from the same state gives the same state and rows. So:
//!
//! * after a batch the rows are written, the state and offset committed locally, and only
//!   then the offset committed to the group;
//! * a (re)start skips messages at or below the local offset (they were counted already);
//! * when a partition arrives whose first fetched offset is at or below the local offset, the
//!   group has no committed offset for it and its log ends at or below the local offset, the
//!   log was re-created (a broker that lost its data, a deleted and re-created topic): its
//!   offsets start again, and its messages are new events, applied on top of the kept state
//!   rather than skipped as already counted;
//! * when a partition arrives whose first fetched offset is past the local offset + 1
//!   (another process consumed the gap), the gap is replayed from the broker into the state,
//!   which is then again the state of a single consumer that read everything; the next batch
//!   writes the rows of the entities the replay touched, the values the other process wrote. A process that never held the partition
//!   replays it from the earliest retained offset: keep the topic's retention at least as
//!   long as the largest window.
//!
//! Events of one entity must go to one partition (the producer keys messages by entity), as
//! Kafka's per-key ordering requires anyway.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use larder_core::DataSourceKind;
use larder_ingest::WritePath;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::StreamError;
use crate::batching::{InFlight, broker_error, next_batch};
use crate::job::StreamViewJob;
use crate::processor::{BatchReport, StreamMessage, StreamProcessor};
use crate::state::StreamStateStore;

/// How long a blocking broker request (committed offsets, watermarks) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the replay of a gap may wait for its next message.
const REPLAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages per chunk handed from the replay thread to the processor.
const REPLAY_CHUNK: usize = 10_000;

/// Counts the group's rebalances, so that processors opened before one are dropped (their
/// partition may have been consumed elsewhere in between).
struct RebalanceCounter {
    generation: Arc<AtomicU64>,
}

impl ClientContext for RebalanceCounter {}

impl ConsumerContext for RebalanceCounter {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let partitions: Vec<i32> = partitions
                    .elements()
                    .iter()
                    .map(|element| element.partition())
                    .collect();
                tracing::info!(?partitions, "Kafka partitions assigned");
            }
            Rebalance::Revoke(_) => tracing::info!("Kafka partitions revoked"),
            Rebalance::Error(error) => tracing::warn!(%error, "Kafka rebalance failed"),
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

type GroupConsumer = StreamConsumer<RebalanceCounter>;

fn client_config(brokers: &[String]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers.join(","))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "20000")
        .set("log_level", "4");
    config
}

/// A topic on Kafka-protocol brokers, consumed in a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSource {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic.
    pub topic: String,
}

#[async_trait::async_trait]
impl crate::source::StreamSource for KafkaSource {
    fn describe(&self) -> String {
        format!("Kafka topic '{}'", self.topic)
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
        read_history(&self.brokers, &self.topic).await
    }
}

/// Consumes a view's Kafka topic until `shutdown` turns true or an error.
async fn consume(
    job: &StreamViewJob,
    write_path: Arc<WritePath>,
    state: StreamStateStore,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let DataSourceKind::Kafka {
        brokers,
        topic,
        start_offset,
        ..
    } = &job.source.kind
    else {
        return Err(StreamError::Definition(format!(
            "source '{}' is not a Kafka source",
            job.source.name
        )));
    };
    let group = job.consumer_name();
    let reset = match start_offset.as_deref() {
        None | Some("earliest") => "earliest",
        Some("latest") => "latest",
        Some(other) => {
            return Err(StreamError::Definition(format!(
                "source '{}': start_offset must be 'earliest' or 'latest', not '{other}'",
                job.source.name
            )));
        }
    };
    let generation = Arc::new(AtomicU64::new(0));
    let consumer: Arc<GroupConsumer> = Arc::new(
        client_config(brokers)
            .set("group.id", &group)
            .set(
                "group.instance.id",
                format!("{group}-{}", state.instance_id()),
            )
            .set("auto.offset.reset", reset)
            .create_with_context(RebalanceCounter {
                generation: Arc::clone(&generation),
            })
            .map_err(broker_error("creating the Kafka consumer"))?,
    );
    consumer
        .subscribe(&[topic.as_str()])
        .map_err(broker_error("subscribing"))?;
    tracing::info!(view = %job.view.name, %group, "consuming Kafka topic '{topic}'");

    let mut processors: HashMap<i32, StreamProcessor> = HashMap::new();
    let mut opened_in = generation.load(Ordering::SeqCst);
    let mut messages = consumer.stream().map(|message| {
        let message = message.map_err(broker_error("receiving"))?;
        let offset = u64::try_from(message.offset()).map_err(|_| {
            StreamError::Broker(format!("message with offset {}", message.offset()))
        })?;
        Ok((
            message.partition(),
            StreamMessage {
                sequence: offset,
                payload: message.payload().unwrap_or_default().to_vec(),
            },
        ))
    });
    // One batch is persisted (written, committed, offsets committed) while the next one is
    // decoded and aggregated; persists run one after the other.
    let mut in_flight = InFlight::default();
    loop {
        let Some(batch) = next_batch(&mut messages, shutdown, &in_flight).await? else {
            return in_flight.finish().await;
        };
        let current = generation.load(Ordering::SeqCst);
        if current != opened_in {
            // A rebalance happened: a partition we held may have been consumed elsewhere.
            // Reopen from the files, once what was prepared is in them.
            in_flight.finish().await?;
            processors.clear();
            opened_in = current;
        }
        let mut by_partition: Vec<(i32, Vec<StreamMessage>)> = Vec::new();
        for (partition, message) in batch {
            match by_partition.iter_mut().find(|(held, _)| *held == partition) {
                Some((_, messages)) => messages.push(message),
                None => by_partition.push((partition, vec![message])),
            }
        }
        let mut offsets = TopicPartitionList::new();
        let mut prepared = Vec::with_capacity(by_partition.len());
        for (partition, messages) in by_partition {
            let processor = match processors.entry(partition) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    in_flight.finish().await?;
                    let mut processor = StreamProcessor::open(
                        job.view.clone(),
                        &job.source,
                        job.aggregations.as_ref(),
                        partition.to_string(),
                        Arc::clone(&write_path),
                        state.clone(),
                    )
                    .await?;
                    let first = messages.first().map_or(0, |message| message.sequence);
                    catch_up(&consumer, job, topic, partition, first, &mut processor).await?;
                    entry.insert(processor)
                }
            };
            prepared.push(processor.prepare(&messages));
            if let Some(last) = messages.last() {
                let next_offset = i64::try_from(last.sequence + 1).unwrap_or(i64::MAX);
                offsets
                    .add_partition_offset(topic, partition, Offset::Offset(next_offset))
                    .map_err(broker_error("recording an offset"))?;
            }
        }
        let group_consumer = Arc::clone(&consumer);
        in_flight
            .replace(move |rows_written| async move {
                // One partition after the other, each committed before the next is written: a
                // written batch holds the persist gate until its commit, and a checkpoint
                // waiting for that gate would keep a second partition's write waiting behind it.
                for batch in prepared {
                    batch.persist().await?;
                }
                rows_written.done();
                // The state is committed (durable with the next checkpoint; until then a crash
                // replays from the state file's position, not the group's): now the group may
                // move on. A lost commit only makes some process skip (its own state) or replay
                // (another's) those messages.
                group_consumer
                    .commit(&offsets, CommitMode::Async)
                    .map_err(broker_error("committing offsets"))
            })
            .await?;
    }
}

/// Brings a freshly opened processor up to the message before `first`, the first offset the
/// group fetched for the partition, by replaying the gap it did not see; or, when the
/// partition's log was re-created below what it applied, restarts its offsets at `first`.
async fn catch_up(
    consumer: &Arc<GroupConsumer>,
    job: &StreamViewJob,
    topic: &str,
    partition: i32,
    first: u64,
    processor: &mut StreamProcessor,
) -> Result<(), StreamError> {
    if let Some(last) = processor.position().last_sequence
        && first <= last
    {
        // Normally a replay of messages already applied (the group's commit lags the local
        // state after a crash): they are skipped. But when the group has no offset for the
        // partition (its broker lost it, or the topic was deleted) and the log now ends at or
        // below `last`, the log was re-created and its offsets count from 0 again: its
        // messages are new, and skipping them as "already applied" would drop them silently
        // until the new log outgrew the old one. Keep the state (its events are gone from
        // the broker) and apply the new log from `first`.
        if committed_offset(consumer, topic, partition)
            .await?
            .is_none()
        {
            let group_consumer = Arc::clone(consumer);
            let topic_name = topic.to_string();
            let (_, end) = tokio::task::spawn_blocking(move || {
                group_consumer.fetch_watermarks(
                    &topic_name,
                    partition,
                    Timeout::After(REQUEST_TIMEOUT),
                )
            })
            .await
            .map_err(|error| StreamError::Broker(format!("watermark task failed: {error}")))?
            .map_err(broker_error("reading watermarks"))?;
            let end = u64::try_from(end).unwrap_or(0);
            if end <= last {
                tracing::warn!(
                    view = %job.view.name,
                    partition,
                    applied_through = last,
                    log_end = end,
                    restart_at = first,
                    "Kafka partition restarted below the offsets already applied (the broker lost its data, or the topic was re-created): keeping the aggregation state and applying its messages from offset {first} as new events"
                );
                processor.restart_sequence_at(first);
            }
        }
        return Ok(());
    }
    if !processor.keeps_state() {
        return Ok(());
    }
    let from = match processor.position().last_sequence {
        Some(last) => last + 1,
        None => {
            // Never held here: if the group has consumed the partition before, its history
            // must be replayed; a new group starts where the broker put it.
            if committed_offset(consumer, topic, partition)
                .await?
                .is_none()
            {
                return Ok(());
            }
            0
        }
    };
    if from >= first {
        return Ok(());
    }
    tracing::info!(view = %job.view.name, partition, from, to = first - 1, "replaying a partition's history into the aggregation state");
    let DataSourceKind::Kafka { brokers, .. } = &job.source.kind else {
        return Ok(());
    };
    let (sender, mut receiver) = mpsc::channel::<Result<Vec<StreamMessage>, StreamError>>(2);
    let config = client_config(brokers);
    let topic_name = topic.to_string();
    let reader = tokio::task::spawn_blocking(move || {
        let result = read_range(&config, &topic_name, partition, from, first, &sender);
        if let Err(error) = result {
            let _ = sender.blocking_send(Err(error));
        }
    });
    let mut replayed = BatchReport::default();
    while let Some(chunk) = receiver.recv().await {
        replayed.add(&processor.absorb(&chunk?));
    }
    reader
        .await
        .map_err(|error| StreamError::Broker(format!("replay task failed: {error}")))?;
    let reached = processor
        .position()
        .last_sequence
        .map_or(0, |last| last + 1);
    if reached < first {
        return Err(StreamError::Broker(format!(
            "the replay of partition {partition} stopped at offset {reached}, before {first}"
        )));
    }
    tracing::info!(view = %job.view.name, partition, applied = replayed.applied, "replayed");
    Ok(())
}

/// The group's committed offset for a partition, `None` when it has none.
async fn committed_offset(
    consumer: &Arc<GroupConsumer>,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, StreamError> {
    let group_consumer = Arc::clone(consumer);
    let topic_name = topic.to_string();
    let committed = tokio::task::spawn_blocking(move || {
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition(&topic_name, partition);
        group_consumer.committed_offsets(wanted, Timeout::After(REQUEST_TIMEOUT))
    })
    .await
    .map_err(|error| StreamError::Broker(format!("offset task failed: {error}")))?
    .map_err(broker_error("reading committed offsets"))?;
    let offset = committed
        .find_partition(topic, partition)
        .map(|element| element.offset());
    Ok(match offset {
        Some(Offset::Offset(offset)) => Some(offset),
        _ => None,
    })
}

/// Reads offsets `[from, until)` of one partition (those still retained) and sends them in
/// chunks. Blocking.
fn read_range(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    from: u64,
    until: u64,
    sender: &mpsc::Sender<Result<Vec<StreamMessage>, StreamError>>,
) -> Result<(), StreamError> {
    let reader: BaseConsumer = config
        .clone()
        .set("group.id", "larder-replay")
        .create()
        .map_err(broker_error("creating the replay consumer"))?;
    let (low, _) = reader
        .fetch_watermarks(topic, partition, Timeout::After(REQUEST_TIMEOUT))
        .map_err(broker_error("reading watermarks"))?;
    let start = from.max(u64::try_from(low).unwrap_or(0));
    if start >= until {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(
            topic,
            partition,
            Offset::Offset(i64::try_from(start).unwrap_or(i64::MAX)),
        )
        .map_err(broker_error("assigning the replay"))?;
    reader
        .assign(&assignment)
        .map_err(broker_error("assigning the replay"))?;
    let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
    loop {
        let Some(message) = reader.poll(REPLAY_IDLE_TIMEOUT) else {
            return Err(StreamError::Broker(format!(
                "no message from partition {partition} of '{topic}' for {REPLAY_IDLE_TIMEOUT:?} during a replay"
            )));
        };
        let message = message.map_err(broker_error("replaying"))?;
        let offset = u64::try_from(message.offset()).unwrap_or(0);
        if offset >= until {
            break;
        }
        chunk.push(StreamMessage {
            sequence: offset,
            payload: message.payload().unwrap_or_default().to_vec(),
        });
        if offset + 1 >= until {
            break;
        }
        if chunk.len() >= REPLAY_CHUNK
            && sender
                .blocking_send(Ok(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(REPLAY_CHUNK),
                )))
                .is_err()
        {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        let _ = sender.blocking_send(Ok(chunk));
    }
    Ok(())
}

/// Every retained message of every partition of `topic`, per partition in offset order.
async fn read_history(brokers: &[String], topic: &str) -> Result<Vec<Vec<Vec<u8>>>, StreamError> {
    let config = client_config(brokers);
    let topic_name = topic.to_string();
    let (partitions, ends) = tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = config
            .clone()
            .set("group.id", "larder-replay")
            .create()
            .map_err(broker_error("creating a consumer"))?;
        let metadata = probe
            .fetch_metadata(Some(&topic_name), Timeout::After(REQUEST_TIMEOUT))
            .map_err(broker_error("reading the topic's metadata"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|found| found.name() == topic_name)
            .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
            .collect();
        let mut ends = Vec::with_capacity(partitions.len());
        for partition in &partitions {
            let (_, high) = probe
                .fetch_watermarks(&topic_name, *partition, Timeout::After(REQUEST_TIMEOUT))
                .map_err(broker_error("reading watermarks"))?;
            ends.push(u64::try_from(high).unwrap_or(0));
        }
        Ok::<_, StreamError>((partitions, ends))
    })
    .await
    .map_err(|error| StreamError::Broker(format!("metadata task failed: {error}")))??;
    if partitions.is_empty() {
        return Err(StreamError::Broker(format!(
            "topic '{topic}' has no partitions"
        )));
    }
    let mut history = Vec::with_capacity(partitions.len());
    for (partition, end) in partitions.into_iter().zip(ends) {
        let (sender, mut receiver) = mpsc::channel::<Result<Vec<StreamMessage>, StreamError>>(2);
        let config = client_config(brokers);
        let topic_name = topic.to_string();
        let reader = tokio::task::spawn_blocking(move || {
            if let Err(error) = read_range(&config, &topic_name, partition, 0, end, &sender) {
                let _ = sender.blocking_send(Err(error));
            }
        });
        let mut messages = Vec::new();
        while let Some(chunk) = receiver.recv().await {
            messages.extend(chunk?.into_iter().map(|message| message.payload));
        }
        reader
            .await
            .map_err(|error| StreamError::Broker(format!("history task failed: {error}")))?;
        history.push(messages);
    }
    Ok(history)
}
