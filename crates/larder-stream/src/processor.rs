//! The transport-agnostic heart of a stream consumer: a batch of messages in, rows through
//! the write path, state and position committed, in that order.

use std::sync::Arc;

use larder_core::{DataSource, FeatureView, StreamAggregations, Timestamp, WriteLane};
use larder_ingest::{FeatureRow, WritePath};

use crate::StreamError;
use crate::decode::MessageDecoder;
use crate::engine::{AggregationPlan, EventOutcome, StreamEvent, ViewAggregator};
use crate::state::{StreamStateStore, ViewPosition};

/// One message read from a stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// The partition it came from (a Kafka partition number; `0` for a NATS stream).
    pub partition: String,
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

enum ViewMode {
    /// Windowed aggregations over tiles.
    Aggregating(Box<ViewAggregator>),
    /// Each message's values are the features.
    Passthrough,
}

/// Consumes one feature view's stream: decode, aggregate, write, commit.
pub struct StreamProcessor {
    view: FeatureView,
    decoder: MessageDecoder,
    mode: ViewMode,
    write_path: Arc<WritePath>,
    state: StreamStateStore,
    position: ViewPosition,
}

impl std::fmt::Debug for StreamProcessor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StreamProcessor")
            .field("view", &self.view.id())
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
            let columns: Vec<_> = plan
                .input_columns()
                .iter()
                .cloned()
                .zip(plan.input_types().iter().cloned())
                .collect();
            let decoder = MessageDecoder::new(view, source, &columns)?;
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
    /// Opens a view's processor, restoring its persisted state and position.
    pub async fn open(
        view: FeatureView,
        source: &DataSource,
        aggregations: Option<&StreamAggregations>,
        write_path: Arc<WritePath>,
        state: StreamStateStore,
    ) -> Result<Self, StreamError> {
        let (decoder, mut mode) = plan_view(&view, source, aggregations)?;
        let view_id = view.id();
        let loading_store = state.clone();
        let loaded = tokio::task::spawn_blocking(move || loading_store.load(&view_id))
            .await
            .map_err(|error| StreamError::State(format!("loading task failed: {error}")))??;
        if let ViewMode::Aggregating(aggregator) = &mut mode {
            aggregator.set_max_seen(loaded.position.max_seen);
            for (key, encoded) in loaded.entities {
                aggregator.restore_entity(key, &encoded)?;
            }
        }
        Ok(Self {
            view,
            decoder,
            mode,
            write_path,
            state,
            position: loaded.position,
        })
    }

    /// The view it feeds.
    pub fn view(&self) -> &FeatureView {
        &self.view
    }

    /// Where it stands (as persisted after the last successful batch).
    pub fn position(&self) -> &ViewPosition {
        &self.position
    }

    /// Processes a batch: skips messages at or below the last applied sequence of their
    /// partition, decodes and applies the others, writes the changed entities' rows through
    /// the write path (lane `stream`), then commits the entity states and the new position in
    /// one transaction. Only when this returns `Ok` may the caller acknowledge the messages.
    ///
    /// On `Err` the in-memory state may be ahead of the persisted one: drop this processor
    /// and [`StreamProcessor::open`] a new one, which resumes from the persisted position.
    pub async fn process(
        &mut self,
        messages: &[StreamMessage],
    ) -> Result<BatchReport, StreamError> {
        let mut report = BatchReport::default();
        let mut position = self.position.clone();
        let mut passthrough_rows: Vec<FeatureRow> = Vec::new();
        let mut event_times: Vec<Timestamp> = Vec::with_capacity(messages.len());
        for message in messages {
            if position
                .sequence(&message.partition)
                .is_some_and(|last| message.sequence <= last)
            {
                report.duplicates += 1;
                continue;
            }
            position
                .sequences
                .insert(message.partition.clone(), message.sequence);
            let decoded = match self.decoder.decode(&message.payload) {
                Ok(decoded) => decoded,
                Err(error) => {
                    report.invalid += 1;
                    tracing::warn!(view = %self.view.name, partition = %message.partition, sequence = message.sequence, %error, "skipping a stream message");
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
                            event_times.push(event.event_timestamp);
                        }
                        EventOutcome::Late => {
                            report.late += 1;
                            position.late_dropped += 1;
                        }
                    }
                }
                ViewMode::Passthrough => {
                    report.applied += 1;
                    event_times.push(decoded.event_timestamp);
                    passthrough_rows.push(FeatureRow {
                        entity_key: decoded.entity_key,
                        event_timestamp: decoded.event_timestamp,
                        values: decoded.values,
                    });
                }
            }
        }
        let (rows, states) = match &mut self.mode {
            ViewMode::Aggregating(aggregator) => {
                position.max_seen = aggregator.max_seen();
                let changes = aggregator.take_changes();
                (changes.rows, changes.states)
            }
            ViewMode::Passthrough => (passthrough_rows, Vec::new()),
        };
        if !rows.is_empty() {
            let summary = self
                .write_path
                .write(&self.view, WriteLane::Stream, rows)
                .await?;
            report.rows_written = summary.written;
        }
        let store = self.state.clone();
        let view_id = self.view.id();
        let committed = position.clone();
        tokio::task::spawn_blocking(move || store.commit(&view_id, &states, &committed))
            .await
            .map_err(|error| StreamError::State(format!("commit task failed: {error}")))??;
        self.position = position;
        self.record_metrics(&report, &event_times);
        Ok(report)
    }

    fn record_metrics(&self, report: &BatchReport, event_times: &[Timestamp]) {
        let view = self.view.name.clone();
        for (outcome, count) in [
            ("applied", report.applied),
            ("duplicate", report.duplicates),
            ("late", report.late),
            ("invalid", report.invalid),
        ] {
            if count > 0 {
                metrics::counter!("larder_stream_events_total", "view" => view.clone(), "outcome" => outcome)
                    .increment(count);
            }
        }
        let now = Timestamp::now().as_micros();
        let histogram = metrics::histogram!(
            "larder_stream_event_to_servable_duration_seconds",
            "view" => view
        );
        for event_time in event_times {
            histogram.record((now - event_time.as_micros()).max(0) as f64 / 1e6);
        }
    }
}
