//! The in-memory as-of join, for an entity side that fits a memory budget: the entity rows
//! are indexed by key and sorted by time within each key, then the feature rows stream past
//! once, unsorted, in their stored order. It gives exactly the matches of the sort-merge join
//! in [`super::asof`], without sorting the (usually far larger) feature side.
//!
//! A feature row at time `t` is offered only to the *first* entity row of its key with an
//! entity time `>= t`. A running maximum over each key's entity rows in time order then hands
//! every entity row the best feature row offered at or before it: a feature row that
//! qualifies for an entity row (`t <= entity time`) qualifies for every later one of the same
//! key, and one too old for an entity row (`t <= entity time - ttl`) is too old for every
//! later one, so checking the running maximum's freshness is enough. Each feature row costs
//! one hash lookup and a binary search among its key's entity rows.

use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use foldhash::fast::FixedState;
use futures::StreamExt;
use hashbrown::HashTable;
use larder_core::KeyIds;

use super::arrow_error;
use super::asof::{
    ORDINAL_COLUMN, ROW_COLUMN, TIE_COLUMN, TIMESTAMP_COLUMN, datafusion_error, match_schema,
};
use crate::OfflineError;

/// The index's bytes per entity row, besides the row's narrow columns: its entry while
/// sorting, its slot, its key's share of the key index and its match.
const INDEX_BYTES_PER_ENTITY_ROW: usize = 112;

/// The rows in one batch of matches.
const MATCH_BATCH_ROWS: usize = 8192;

/// What [`join_in_memory`] did.
pub enum InMemoryJoin {
    /// The join ran.
    Joined {
        /// `[_larder_row, _larder_ordinal]` of the matched entity rows, sorted by ordinal,
        /// then row.
        matches: SendableRecordBatchStream,
        /// Whether an entity row matched one of several feature rows with the same key and
        /// event time while the features had no [`TIE_COLUMN`] (the larger ordinal won).
        ties_matched: bool,
    },
    /// The entity side outgrew the budget: both inputs, as they were (the entity rows read
    /// so far come first again), for the sort-merge join.
    TooLarge {
        /// The whole entity input.
        entities: SendableRecordBatchStream,
        /// The feature input, untouched.
        features: SendableRecordBatchStream,
    },
}

/// One entity row in the index, with the best feature row offered to it so far.
#[derive(Debug, Clone, Copy)]
struct Slot {
    timestamp: i64,
    row: u64,
    offered: Candidate,
    /// The first of its key's slots (a key's slots are contiguous, in time order).
    starts_key: bool,
}

/// A feature row offered to an entity row.
#[derive(Debug, Clone, Copy, Default)]
struct Candidate {
    present: bool,
    /// Another feature row of the same key had the same event time.
    tied: bool,
    timestamp: i64,
    tie: u64,
    ordinal: u64,
}

impl Candidate {
    /// Keeps the better of `self` and `other` (which are different feature rows): the later
    /// event time, then the larger tie hash, then the larger ordinal.
    fn absorb(&mut self, other: Candidate) {
        if !other.present {
            return;
        }
        if !self.present {
            *self = other;
            return;
        }
        match self.timestamp.cmp(&other.timestamp) {
            Ordering::Less => *self = other,
            Ordering::Greater => {}
            Ordering::Equal => {
                if (other.tie, other.ordinal) > (self.tie, self.ordinal) {
                    *self = other;
                }
                self.tied = true;
            }
        }
    }
}

/// Where one key's slots are.
#[derive(Debug, Clone, Copy)]
struct KeySlots {
    start: usize,
    end: usize,
}

/// The entity rows' keys, each mapped to its slots.
enum KeyIndex {
    /// One integer join key (the common case): looked up by value, one probe per row.
    Integer(HashTable<(i64, KeySlots)>),
    /// Any other keys, by their arrow row encoding.
    Encoded {
        converter: RowConverter,
        ids: KeyIds,
        slots: Vec<KeySlots>,
    },
}

fn integer_hash(key: i64) -> u64 {
    FixedState::default().hash_one(key)
}

/// The values of a single integer key column as `i64`.
fn integer_keys(column: &ArrayRef) -> Option<Vec<Option<i64>>> {
    if let Some(keys) = column.as_any().downcast_ref::<Int64Array>() {
        return Some(keys.iter().collect());
    }
    column
        .as_any()
        .downcast_ref::<Int32Array>()
        .map(|keys| keys.iter().map(|key| key.map(i64::from)).collect())
}

impl KeyIndex {
    /// Looks up every row's key: each row's slots, `None` where its key has no entity row.
    fn lookup(&self, key_columns: &[ArrayRef]) -> Result<Vec<Option<KeySlots>>, OfflineError> {
        match self {
            KeyIndex::Integer(table) => {
                let keys = key_columns.first().and_then(integer_keys).ok_or_else(|| {
                    OfflineError::Schema("internal: the join key is not an integer".into())
                })?;
                Ok(keys
                    .into_iter()
                    .map(|key| {
                        let key = key?;
                        table
                            .find(integer_hash(key), |(stored, _)| *stored == key)
                            .map(|(_, slots)| *slots)
                    })
                    .collect())
            }
            KeyIndex::Encoded {
                converter,
                ids,
                slots,
            } => {
                let encoded = converter
                    .convert_columns(key_columns)
                    .map_err(arrow_error("encoding join keys"))?;
                Ok((0..encoded.num_rows())
                    .map(|row| ids.get(encoded.row(row).as_ref()).map(|id| slots[id]))
                    .collect())
            }
        }
    }
}

fn typed_column<'batch, T: 'static>(
    batch: &'batch RecordBatch,
    name: &str,
) -> Result<&'batch T, OfflineError> {
    batch
        .column_by_name(name)
        .and_then(|column| column.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            OfflineError::Schema(format!("internal: no column '{name}' of the expected type"))
        })
}

/// Runs the as-of join in memory when the entity side fits `budget_bytes`.
///
/// The inputs are those of [`super::asof::asof_match`]: `entities` is
/// `[keys..., _larder_ts, _larder_row]` (keys or time may be null: such rows match nothing),
/// `features` is `[keys..., _larder_ts, _larder_tie?, _larder_ordinal]` with no nulls and its
/// keys of the same types, `ttl_micros` the freshness bound.
pub async fn join_in_memory(
    mut entities: SendableRecordBatchStream,
    mut features: SendableRecordBatchStream,
    key_count: usize,
    ttl_micros: Option<i64>,
    budget_bytes: usize,
) -> Result<InMemoryJoin, OfflineError> {
    let mut buffered: Vec<RecordBatch> = Vec::new();
    let mut bytes = 0usize;
    while let Some(batch) = entities.next().await {
        let batch = batch.map_err(datafusion_error("reading entity rows"))?;
        bytes = bytes
            .saturating_add(batch.get_array_memory_size())
            .saturating_add(batch.num_rows().saturating_mul(INDEX_BYTES_PER_ENTITY_ROW));
        buffered.push(batch);
        if bytes > budget_bytes {
            let schema = entities.schema();
            let replay = futures::stream::iter(buffered.into_iter().map(Ok)).chain(entities);
            return Ok(InMemoryJoin::TooLarge {
                entities: Box::pin(RecordBatchStreamAdapter::new(schema, replay)),
                features,
            });
        }
    }

    let (index, mut slots) = index_entities(&entities.schema(), buffered, key_count)?;

    let has_tie_column = features.schema().column_with_name(TIE_COLUMN).is_some();
    while let Some(batch) = features.next().await {
        let batch = batch.map_err(datafusion_error("reading feature rows"))?;
        if batch.num_rows() == 0 || slots.is_empty() {
            continue;
        }
        let found = index.lookup(&batch.columns()[..key_count])?;
        let timestamps = typed_column::<Int64Array>(&batch, TIMESTAMP_COLUMN)?;
        let ordinals = typed_column::<UInt64Array>(&batch, ORDINAL_COLUMN)?;
        let ties = if has_tie_column {
            Some(typed_column::<UInt64Array>(&batch, TIE_COLUMN)?)
        } else {
            None
        };
        for (row, key_slots) in found.into_iter().enumerate() {
            let Some(KeySlots { start, end }) = key_slots else {
                continue;
            };
            let timestamp = timestamps.value(row);
            let key_rows = &mut slots[start..end];
            let first_at_or_after = key_rows.partition_point(|slot| slot.timestamp < timestamp);
            let Some(slot) = key_rows.get_mut(first_at_or_after) else {
                continue;
            };
            slot.offered.absorb(Candidate {
                present: true,
                tied: false,
                timestamp,
                tie: ties.map_or(0, |ties| ties.value(row)),
                ordinal: ordinals.value(row),
            });
        }
    }
    drop(index);

    let mut matches: Vec<(u64, u64)> = Vec::with_capacity(slots.len());
    let mut ties_matched = false;
    let mut running = Candidate::default();
    for slot in &slots {
        if slot.starts_key {
            running = Candidate::default();
        }
        running.absorb(slot.offered);
        let fresh =
            ttl_micros.is_none_or(|ttl| running.timestamp > slot.timestamp.saturating_sub(ttl));
        if running.present && fresh {
            matches.push((running.ordinal, slot.row));
            ties_matched |= running.tied && !has_tie_column;
        }
    }
    drop(slots);
    matches.sort_unstable();
    let schema = match_schema();
    let batches = matches
        .chunks(MATCH_BATCH_ROWS)
        .map(|chunk| {
            let rows = UInt64Array::from_iter_values(chunk.iter().map(|(_, row)| *row));
            let ordinals = UInt64Array::from_iter_values(chunk.iter().map(|(ordinal, _)| *ordinal));
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(rows), Arc::new(ordinals)],
            )
            .map_err(datafusion::error::DataFusionError::from)
        })
        .collect::<Vec<_>>();
    Ok(InMemoryJoin::Joined {
        matches: Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(batches),
        )),
        ties_matched,
    })
}

/// Indexes the entity rows that have a key and a time: their slots, grouped by key and in
/// `(time, row)` order within a key, and the index from key to slots.
fn index_entities(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    key_count: usize,
) -> Result<(KeyIndex, Vec<Slot>), OfflineError> {
    let row_count: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let integer_key = key_count == 1
        && matches!(
            schema.fields().first().map(|field| field.data_type()),
            Some(DataType::Int64 | DataType::Int32)
        );
    // Each entity row with a key and a time: (key, time, row), the key as an integer or as
    // an id of its encoding.
    let mut entries: Vec<(i64, i64, u64)> = Vec::with_capacity(row_count);
    let mut encoded_keys = None;
    if !integer_key {
        let sort_fields = schema.fields()[..key_count]
            .iter()
            .map(|field| SortField::new(field.data_type().clone()))
            .collect();
        let converter =
            RowConverter::new(sort_fields).map_err(arrow_error("encoding join keys"))?;
        encoded_keys = Some((converter, KeyIds::with_capacity(row_count)));
    }
    for batch in batches {
        let key_columns = &batch.columns()[..key_count];
        let timestamps = typed_column::<Int64Array>(&batch, TIMESTAMP_COLUMN)?;
        let rows = typed_column::<UInt64Array>(&batch, ROW_COLUMN)?;
        // No feature row has a null key, and a null time asks for no point in time.
        let usable = |row: usize| {
            !timestamps.is_null(row) && !key_columns.iter().any(|column| column.is_null(row))
        };
        match &mut encoded_keys {
            None => {
                let keys = key_columns.first().and_then(integer_keys).ok_or_else(|| {
                    OfflineError::Schema("internal: the join key is not an integer".into())
                })?;
                for (row, key) in keys.into_iter().enumerate() {
                    if let (Some(key), true) = (key, usable(row)) {
                        entries.push((key, timestamps.value(row), rows.value(row)));
                    }
                }
            }
            Some((converter, ids)) => {
                let encoded = converter
                    .convert_columns(key_columns)
                    .map_err(arrow_error("encoding join keys"))?;
                for row in 0..batch.num_rows() {
                    if usable(row) {
                        let (id, _) = ids.insert(encoded.row(row).as_ref());
                        entries.push((id as i64, timestamps.value(row), rows.value(row)));
                    }
                }
            }
        }
    }
    entries.sort_unstable();
    let mut slots = Vec::with_capacity(entries.len());
    let mut key_runs: Vec<(i64, KeySlots)> = Vec::new();
    for (position, (key, timestamp, row)) in entries.iter().enumerate() {
        let starts_key = position == 0 || entries[position - 1].0 != *key;
        if starts_key {
            key_runs.push((
                *key,
                KeySlots {
                    start: position,
                    end: position,
                },
            ));
        }
        if let Some((_, run)) = key_runs.last_mut() {
            run.end = position + 1;
        }
        slots.push(Slot {
            timestamp: *timestamp,
            row: *row,
            offered: Candidate::default(),
            starts_key,
        });
    }
    drop(entries);
    let index = match encoded_keys {
        None => {
            let mut table = HashTable::with_capacity(key_runs.len());
            for (key, run) in key_runs {
                table.insert_unique(integer_hash(key), (key, run), |(key, _)| integer_hash(*key));
            }
            KeyIndex::Integer(table)
        }
        Some((converter, ids)) => {
            // Ids were handed out densely and sorted in id order, so run `i` is id `i`.
            let slots_by_id = key_runs.into_iter().map(|(_, run)| run).collect();
            KeyIndex::Encoded {
                converter,
                ids,
                slots: slots_by_id,
            }
        }
    };
    Ok((index, slots))
}
