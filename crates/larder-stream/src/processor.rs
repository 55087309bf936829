//! The transport-agnostic heart of a stream consumer: a batch of messages in, rows through
//! the write path, state and position committed, in that order.

use std::sync::Arc;

use larder_core::fault::crash_point;
use larder_core::{DataSource, EntityKey, FeatureView, StreamAggregations, WriteLane};
use larder_ingest::{FeatureRow, WritePath};
use larder_online::WriteDurability;

use crate::StreamError;
use crate::decode::MessageDecoder;
use crate::engine::{AggregationPlan, EventOutcome, StreamEvent, ViewAggregator};
use crate::state::{PartitionPosition, StateCommit, StreamStateStore};

/// One message read from a partition of a stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// Its sequence in the partition (NATS stream sequence, Kafka offset); grows by message.
    pub sequence: u64,
    /// The encoded message.
    pub payload: Vec<u8>,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages applied to the view.
    pub applied: u64,
    /// Messages at or below the last applied sequence (replays): skipped.
    pub duplicates: u64,
    /// Events older than the allowed lateness: dropped.
    pub late: u64,
    /// Messages that could not be decoded: skipped.
    pub invalid: u64,
    /// Rows the online store stored.
    pub rows_written: u64,
}

impl BatchReport {
    /// Adds another report's counts to this one.
    pub fn add(&mut self, other: &BatchReport) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.invalid += other.invalid;
        self.rows_written += other.rows_written;
    }
}

enum ViewMode {
    /// Windowed aggregations over tiles.
    Aggregating(Box<ViewAggregator>),
    /// Each message's values are the features.
    Passthrough,
}

/// Consumes one feature view's stream in one partition: decode, aggregate, write, commit.
pub struct StreamProcessor {
    view: Arc<FeatureView>,
    partition: String,
    decoder: MessageDecoder,
    mode: ViewMode,
    write_path: Arc<WritePath>,
    state: StreamStateStore,
    position: PartitionPosition,
    /// Rows of a passthrough view not written yet.
    pending_rows: Vec<FeatureRow>,
    /// The erasure generation whose entities this processor has dropped.
    erasures_seen: u64,
    /// The state file's rollback count its state was loaded at.
    rollbacks_seen: u64,
    /// Told whether the last prepared batch's state commit went through: the next batch's
    /// commit waits for it, so that they commit in order.
    last_commit: Option<tokio::sync::oneshot::Receiver<bool>>,
}

impl std::fmt::Debug for StreamProcessor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StreamProcessor")
            .field("view", &self.view.id())
            .field("partition", &self.partition)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// Builds the decoder and the mode of a view.
fn plan_view(
    view: &FeatureView,
    source: &DataSource,
    aggregations: Option<&StreamAggregations>,
) -> Result<(MessageDecoder, ViewMode), StreamError> {
    match aggregations {
        Some(spec) => {
            let plan = AggregationPlan::new(view, spec)?;
            let decoder = plan.decoder(view, source)?;
            Ok((
                decoder,
                ViewMode::Aggregating(Box::new(ViewAggregator::new(plan))),
            ))
        }
        None => {
            let columns: Vec<_> = view
                .features
                .iter()
                .map(|feature| (feature.name.clone(), feature.dtype.clone()))
                .collect();
            Ok((
                MessageDecoder::new(view, source, &columns)?,
                ViewMode::Passthrough,
            ))
        }
    }
}

impl StreamProcessor {
    /// Opens a view's processor for one partition, restoring its persisted state and
    /// position there.
    pub async fn open(
        view: FeatureView,
        source: &DataSource,
        aggregations: Option<&StreamAggregations>,
        partition: impl Into<String>,
        write_path: Arc<WritePath>,
        state: StreamStateStore,
    ) -> Result<Self, StreamError> {
        let partition = partition.into();
        let (decoder, mut mode) = plan_view(&view, source, aggregations)?;
        state.register_online_store(write_path.store());
        // Erasures posted from now on are applied before each batch; the state loaded below
        // is as they left it.
        let erasures_seen = state.erasures().generation();
        let loaded = state.resume(&view.id(), &partition).await?;
        let rollbacks_seen = loaded.rollbacks_seen;
        if let ViewMode::Aggregating(aggregator) = &mut mode {
            aggregator.set_max_seen(loaded.position.max_seen);
            for (key, encoded) in loaded.entities {
                aggregator.restore_entity(key, &encoded)?;
            }
        }
        Ok(Self {
            view: Arc::new(view),
            partition,
            decoder,
            mode,
            write_path,
            state,
            position: loaded.position,
            pending_rows: Vec::new(),
            erasures_seen,
            rollbacks_seen,
            last_commit: None,
        })
    }

    /// The view it feeds.
    pub fn view(&self) -> &FeatureView {
        &self.view
    }

    /// The partition it consumes.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// Where it stands: the position of the last prepared batch.
    pub fn position(&self) -> &PartitionPosition {
        &self.position
    }

    /// Makes `first` the next sequence to apply, keeping the aggregation state: for a
    /// partition whose log was re-created, so that sequences start again below the last
    /// applied one. Persisted with the next batch.
    pub fn restart_sequence_at(&mut self, first: u64) {
        self.position.last_sequence = first.checked_sub(1);
    }

    /// Whether the view keeps aggregation state (which a takeover must rebuild).
    pub fn keeps_state(&self) -> bool {
        matches!(self.mode, ViewMode::Aggregating(_))
    }

    /// Decodes and applies messages to the in-memory state only, without writing: a replay
    /// of history (its aggregation rows are written by the next [`StreamProcessor::process`];
    /// a passthrough view's replayed rows are not written again).
    pub fn absorb(&mut self, messages: &[StreamMessage]) -> BatchReport {
        let pending_rows = self.pending_rows.len();
        let report = self.apply_messages(messages);
        self.pending_rows.truncate(pending_rows);
        report
    }

    fn apply_messages(&mut self, messages: &[StreamMessage]) -> BatchReport {
        let mut report = BatchReport::default();
        for message in messages {
            if self
                .position
                .last_sequence
                .is_some_and(|last| message.sequence <= last)
            {
                report.duplicates += 1;
                continue;
            }
            self.position.last_sequence = Some(message.sequence);
            let decoded = match self.decoder.decode(&message.payload) {
                Ok(decoded) => decoded,
                Err(error) => {
                    report.invalid += 1;
                    tracing::warn!(view = %self.view.name, partition = %self.partition, sequence = message.sequence, %error, "skipping a stream message");
                    continue;
                }
            };
            match &mut self.mode {
                ViewMode::Aggregating(aggregator) => {
                    let event = StreamEvent {
                        entity_key: decoded.entity_key,
                        event_timestamp: decoded.event_timestamp,
                        inputs: decoded.values,
                    };
                    match aggregator.apply(&event) {
                        EventOutcome::Applied => {
                            report.applied += 1;
                        }
                        EventOutcome::Late => {
                            report.late += 1;
                            self.position.late_dropped += 1;
                        }
                    }
                }
                ViewMode::Passthrough => {
                    report.applied += 1;
                    self.pending_rows.push(FeatureRow {
                        entity_key: decoded.entity_key,
                        event_timestamp: decoded.event_timestamp,
                        values: decoded.values,
                    });
                }
            }
        }
        if let ViewMode::Aggregating(aggregator) = &self.mode {
            self.position.max_seen = aggregator.max_seen();
        }
        report
    }

    /// Applies a batch to the in-memory state (skipping messages at or below the last applied
    /// sequence) and returns what must be made durable: the changed entities' rows, their
    /// encoded states and the new position. The caller persists it with
    /// [`PreparedBatch::persist`], or [`PreparedBatch::write`] then [`WrittenBatch::commit`],
    /// and acknowledges the messages only after that. Preparing overlaps with the previous
    /// batch's persist, and a batch's online write with the previous one's state commit;
    /// online writes run one after the other (the next starts once the previous
    /// [`PreparedBatch::write`] returned), and state commits too, in order (each waits for the
    /// previous one's).
    ///
    /// If a persist fails, the in-memory state is ahead of the persisted one: drop this
    /// processor and [`StreamProcessor::open`] a new one, which resumes from the file.
    pub fn prepare(&mut self, messages: &[StreamMessage]) -> PreparedBatch {
        let started = std::time::Instant::now();
        self.drop_erased_entities();
        let report = self.apply_messages(messages);
        let (rows, states) = match &mut self.mode {
            ViewMode::Aggregating(aggregator) => {
                let changes = aggregator.take_changes();
                let labels = [
                    ("view", self.view.name.clone()),
                    ("partition", self.partition.clone()),
                ];
                metrics::gauge!("larder_stream_state_entities", &labels)
                    .set(aggregator.entity_count() as f64);
                metrics::gauge!("larder_stream_state_tiles", &labels)
                    .set(aggregator.tile_count() as f64);
                (changes.rows, changes.states)
            }
            ViewMode::Passthrough => (std::mem::take(&mut self.pending_rows), Vec::new()),
        };
        record_stage(&self.view.name, "prepare", started);
        let (commit_done, next_commit) = tokio::sync::oneshot::channel();
        let previous_commit = self.last_commit.replace(next_commit);
        PreparedBatch {
            view: Arc::clone(&self.view),
            partition: self.partition.clone(),
            rows,
            states,
            position: self.position.clone(),
            report,
            write_path: Arc::clone(&self.write_path),
            state: self.state.clone(),
            erasures_seen: self.erasures_seen,
            rollbacks_seen: self.rollbacks_seen,
            previous_commit,
            commit_done,
        }
    }

    /// Drops the in-memory state of the entities erased since the last batch.
    fn drop_erased_entities(&mut self) {
        let board = Arc::clone(self.state.erasures());
        let generation = board.generation();
        if generation == self.erasures_seen {
            return;
        }
        let erased = board.erased_since(&self.view.name, self.erasures_seen);
        self.erasures_seen = generation;
        if erased.is_empty() {
            return;
        }
        match &mut self.mode {
            ViewMode::Aggregating(aggregator) => aggregator.forget(&erased),
            ViewMode::Passthrough => self
                .pending_rows
                .retain(|row| !erased.contains(&row.entity_key)),
        }
    }

    /// Prepares and persists a batch: see [`StreamProcessor::prepare`].
    pub async fn process(
        &mut self,
        messages: &[StreamMessage],
    ) -> Result<BatchReport, StreamError> {
        self.prepare(messages).persist().await
    }
}

/// A batch applied in memory, not yet durable ([`StreamProcessor::prepare`]).
#[derive(Debug)]
pub struct PreparedBatch {
    view: Arc<FeatureView>,
    partition: String,
    rows: Vec<FeatureRow>,
    states: Vec<(EntityKey, Vec<u8>)>,
    position: PartitionPosition,
    report: BatchReport,
    write_path: Arc<WritePath>,
    state: StreamStateStore,
    /// The erasure generation the batch was prepared after.
    erasures_seen: u64,
    /// The state file's rollback count its processor loaded at.
    rollbacks_seen: u64,
    /// Whether the previous batch's state commit went through (`None` for the first batch).
    previous_commit: Option<tokio::sync::oneshot::Receiver<bool>>,
    /// Tells the next batch whether this one's state commit went through.
    commit_done: tokio::sync::oneshot::Sender<bool>,
}

/// A batch whose rows are written, its state commit under way ([`PreparedBatch::write`]).
#[derive(Debug)]
pub struct WrittenBatch {
    view: Arc<FeatureView>,
    report: BatchReport,
    state: StreamStateStore,
    state_commit: tokio::task::JoinHandle<Result<StateCommit, StreamError>>,
    persisting: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl PreparedBatch {
    /// Writes the rows through the write path (lane `stream`), then commits the entity
    /// states and the position in one transaction. Only when this returns `Ok` may the
    /// batch's messages be acknowledged.
    pub async fn persist(self) -> Result<BatchReport, StreamError> {
        self.write().await?.commit().await
    }

    /// Writes the rows through the write path (lane `stream`) while the entity states and
    /// the position go into a state transaction beside it, committed (after the previous
    /// batch's) only once the write succeeded: a crash in between leaves the position before
    /// this batch, which is then replayed. Returns once the rows are written; the next batch
    /// may write its own then, while [`WrittenBatch::commit`] waits for this one's commit.
    pub async fn write(self) -> Result<WrittenBatch, StreamError> {
        let Self {
            view,
            partition,
            rows,
            states,
            position,
            mut report,
            write_path,
            state,
            erasures_seen,
            rollbacks_seen,
            previous_commit,
            commit_done,
        } = self;
        let (mut rows, mut states) = (rows, states);
        let board = Arc::clone(state.erasures());
        let persisting = board.persisting().await;
        if board.generation() != erasures_seen {
            // Entities erased after this batch was prepared: not written back.
            let erased = board.erased_since(&view.name, erasures_seen);
            rows.retain(|row| !erased.contains(&row.entity_key));
            states.retain(|(key, _)| !erased.contains(key));
        }
        let view_id = view.id();
        let (go, go_signal) = std::sync::mpsc::sync_channel::<bool>(1);
        let view_name = view.name.clone();
        let committing_state = state.clone();
        let state_commit = tokio::task::spawn_blocking(move || {
            let state = committing_state;
            let previous_went_through =
                previous_commit.is_none_or(|previous| previous.blocking_recv().unwrap_or(false));
            if !previous_went_through {
                let _ = commit_done.send(false);
                return Err(StreamError::State(
                    "the previous batch's state commit failed".to_string(),
                ));
            }
            let started = std::time::Instant::now();
            let mut commit_started = started;
            let committed = state.commit_when(
                &view_id,
                &partition,
                states,
                position,
                rollbacks_seen,
                || {
                    record_stage(&view_name, "state_write", started);
                    let go = go_signal.recv().unwrap_or(false);
                    commit_started = std::time::Instant::now();
                    go
                },
            );
            record_stage(&view_name, "state_commit", commit_started);
            let _ = commit_done.send(matches!(
                committed,
                Ok(StateCommit::Committed | StateCommit::Carried)
            ));
            committed
        });
        let written = if rows.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let written = write_path
                .write_with(&view, WriteLane::Stream, rows, WriteDurability::Deferred)
                .await;
            record_stage(&view.name, "online_write", started);
            written.map(|summary| report.rows_written = summary.written)
        };
        if let Err(error) = written {
            // Dropped: the transaction is not committed.
            let _ = go.send(false);
            let _ = state_commit.await;
            return Err(error.into());
        }
        crash_point("stream.after_online_write");
        let _ = go.send(true);
        Ok(WrittenBatch {
            view,
            report,
            state,
            state_commit,
            persisting,
        })
    }
}

impl WrittenBatch {
    /// Waits for the batch's state commit. Only when this returns `Ok` may the batch's
    /// messages be acknowledged. Starts a checkpoint in the background when one is due.
    pub async fn commit(self) -> Result<BatchReport, StreamError> {
        let Self {
            view,
            report,
            state,
            state_commit,
            persisting,
        } = self;
        let committed = state_commit
            .await
            .map_err(|error| StreamError::State(format!("commit task failed: {error}")))??;
        match committed {
            StateCommit::Committed => crash_point("stream.after_state_commit"),
            // Committed with the partition's next batch or the next checkpoint.
            StateCommit::Carried => {}
            StateCommit::CalledOff => {
                return Err(StreamError::State(
                    "the state commit was called off".to_string(),
                ));
            }
        }
        drop(persisting);
        if state.claim_checkpoint() {
            // In the background: the next batches carry on beside it.
            let view_name = view.name.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                match state.checkpoint().await {
                    Ok(()) => {
                        record_stage(&view_name, "checkpoint", started);
                        crash_point("stream.after_checkpoint");
                    }
                    Err(error) => {
                        metrics::counter!("larder_stream_checkpoint_failures_total").increment(1);
                        tracing::warn!(%error, "a stream checkpoint failed; the next one retries, a crash before it replays from the one before");
                    }
                }
            });
        }
        record_metrics(&view.name, &report);
        Ok(report)
    }
}

/// Records how long a stage of a batch took, so that the slowest stage of the pipeline shows:
/// `prepare` (decode and aggregate), `online_write`, `state_write` (the states into the
/// state file's transaction, beside the online write), `state_commit` (after it) and
/// `checkpoint` (after a batch, once per checkpoint interval: see
/// [`StreamStateStore::checkpoint`]).
fn record_stage(view: &str, stage: &'static str, started: std::time::Instant) {
    metrics::histogram!("larder_stream_batch_stage_duration_seconds", "view" => view.to_string(), "stage" => stage)
        .record(started.elapsed().as_secs_f64());
}

fn record_metrics(view: &str, report: &BatchReport) {
    for (outcome, count) in [
        ("applied", report.applied),
        ("duplicate", report.duplicates),
        ("late", report.late),
        ("invalid", report.invalid),
    ] {
        if count > 0 {
            metrics::counter!("larder_stream_events_total", "view" => view.to_string(), "outcome" => outcome)
                .increment(count);
        }
    }
}
