//! The offline side of a stream view: the same engine, replaying an event history.
//!
//! Training sets must see exactly what serving saw. The backfill feeds the recorded messages,
//! in their stream order, through the same decoder and [`ViewAggregator`] as the consumer and
//! records after every applied event the entity's row (its values as of its newest event
//! time). A point-in-time lookup at instant `t` in these rows gives the value the online store
//! held for the entity once the stream was consumed up to `t`.

use larder_core::{DataSource, FeatureView, StreamAggregations, Value};
use larder_ingest::FeatureRow;
use larder_offline::{OfflineStore, OfflineWriteSummary, ViewBatch};

use crate::StreamError;
use crate::engine::{AggregationPlan, EventOutcome, StreamEvent, ViewAggregator};

/// What a backfill read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillReport {
    /// Events applied (one offline row each).
    pub applied: u64,
    /// Events dropped as late.
    pub late: u64,
    /// Messages that could not be decoded.
    pub invalid: u64,
}

/// Replays `messages` (encoded, in stream order) through the view's aggregations and returns
/// one row per applied event.
pub fn backfill_rows<'a>(
    view: &FeatureView,
    source: &DataSource,
    aggregations: &StreamAggregations,
    messages: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Vec<FeatureRow>, BackfillReport), StreamError> {
    let plan = AggregationPlan::new(view, aggregations)?;
    let decoder = plan.decoder(view, source)?;
    let mut aggregator = ViewAggregator::new(plan);
    let mut report = BackfillReport::default();
    let mut rows = Vec::new();
    for message in messages {
        let Ok(decoded) = decoder.decode(message) else {
            report.invalid += 1;
            continue;
        };
        let event = StreamEvent {
            entity_key: decoded.entity_key,
            event_timestamp: decoded.event_timestamp,
            inputs: decoded.values,
        };
        if aggregator.apply(&event) == EventOutcome::Late {
            report.late += 1;
            continue;
        }
        report.applied += 1;
        if let Some((event_timestamp, values)) = aggregator.values_of(&event.entity_key) {
            rows.push(FeatureRow {
                entity_key: event.entity_key,
                event_timestamp,
                values,
            });
        }
    }
    Ok((rows, report))
}

/// Replaces the view version's offline rows with `rows` (in their order, so that at equal
/// event time the later row wins in training sets, as it did online).
pub fn write_offline(
    store: &dyn OfflineStore,
    view: &FeatureView,
    rows: &[FeatureRow],
) -> Result<OfflineWriteSummary, StreamError> {
    let mut keys: Vec<Vec<Value>> = Vec::with_capacity(rows.len());
    for row in rows {
        let values = row
            .entity_key
            .values()
            .map_err(|error| StreamError::Definition(error.to_string()))?;
        let typed = values
            .into_iter()
            .zip(&view.join_keys)
            .map(|(value, join_key)| value.coerce_to(&join_key.dtype))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| StreamError::Definition(error.to_string()))?;
        keys.push(typed);
    }
    let mut writer = store.begin_write(view)?;
    const ROWS_PER_BATCH: usize = 8_192;
    for (key_chunk, row_chunk) in keys.chunks(ROWS_PER_BATCH).zip(rows.chunks(ROWS_PER_BATCH)) {
        let batch = ViewBatch::from_rows(
            view,
            key_chunk
                .iter()
                .zip(row_chunk)
                .map(|(key, row)| (key.as_slice(), row.event_timestamp, row.values.as_slice())),
        )?;
        writer.write(&batch)?;
    }
    Ok(writer.commit()?)
}

/// The whole history the broker retains for a stream source, per partition, in stream
/// order: Kafka partitions from their earliest retained offset, the NATS stream's messages on
/// the source's subject from its first sequence.
pub async fn read_history(source: &DataSource) -> Result<Vec<Vec<Vec<u8>>>, StreamError> {
    crate::resolver::open_source(source)?.read_history().await
}

/// [`backfill_rows`] over each partition's history (as the consumers aggregate each
/// partition on its own), the rows of all partitions together.
pub fn backfill_partitions(
    view: &FeatureView,
    source: &DataSource,
    aggregations: &StreamAggregations,
    partitions: &[Vec<Vec<u8>>],
) -> Result<(Vec<FeatureRow>, BackfillReport), StreamError> {
    let mut all_rows = Vec::new();
    let mut total = BackfillReport::default();
    for messages in partitions {
        let (rows, report) = backfill_rows(
            view,
            source,
            aggregations,
            messages.iter().map(Vec::as_slice),
        )?;
        all_rows.extend(rows);
        total.applied += report.applied;
        total.late += report.late;
        total.invalid += report.invalid;
    }
    Ok((all_rows, total))
}

/// What a backfill wrote, for the `COMPLETE` lineage event of its run (`<view>.backfill`):
/// the offline row count and every count of the run.
pub fn lineage_statistics(
    partitions: usize,
    report: &BackfillReport,
    summary: &OfflineWriteSummary,
) -> larder_ingest::lineage::RunStatistics {
    let counts = [
        ("partitions", u64::try_from(partitions).unwrap_or(u64::MAX)),
        ("eventsApplied", report.applied),
        ("eventsLate", report.late),
        ("eventsInvalid", report.invalid),
        ("offlineRows", summary.rows),
        ("offlineFiles", summary.files),
        ("offlinePartitions", summary.partitions),
    ];
    larder_ingest::lineage::RunStatistics {
        offline_rows: Some(summary.rows),
        online_rows: None,
        counts: counts
            .into_iter()
            .map(|(name, count)| (name.to_string(), count))
            .collect(),
    }
}
