//! The write path shared by every ingestion lane.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::freshness::FreshnessBoard;
use crate::run_winners::RunWinners;
use larder_core::{
    EntityKey, EntityKeyList, FeatureView, FeatureViewId, PackedBytes, Timestamp, Value, WriteLane,
    codec,
};
use larder_online::{
    DigestStore, OnlineRow, OnlineStoreError, RowDigest, SharedOnlineStore, TableOptions,
    WriteDurability, WriteSummary,
};

/// The event times (µs) of rows about to be written, for the freshness board.
fn event_times_of(rows: &[OnlineRow]) -> Vec<i64> {
    rows.iter()
        .map(|row| row.event_timestamp.as_micros())
        .collect()
}

/// One entity's feature values at one event time, in the view's declared feature order.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRow {
    /// The entity.
    pub entity_key: EntityKey,
    /// When the values were true.
    pub event_timestamp: Timestamp,
    /// One value per feature of the view, in declared order (`Null` for missing).
    pub values: Vec<Value>,
}

/// Rows of one feature view whose values are already in the row codec's encoding
/// ([`larder_core::codec::encode_row`]), one value per feature of the view, in declared
/// order, each of the feature's type. The batch lane encodes straight from Arrow columns that
/// the view's canonical schema has typed, so its rows skip validation.
///
/// Keys and values are packed in one buffer each, so a batch of thousands of rows costs a
/// handful of allocations, and the rows that turn out unchanged are never copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedRows {
    keys: EntityKeyList,
    event_timestamps: Vec<Timestamp>,
    values: PackedBytes,
}

impl EncodedRows {
    /// No rows, with room for `rows` rows of `value_bytes` encoded bytes in total.
    pub fn with_capacity(rows: usize, value_bytes: usize) -> Self {
        Self {
            keys: EntityKeyList::with_capacity(rows, rows * 9),
            event_timestamps: Vec::with_capacity(rows),
            values: PackedBytes::with_capacity(rows, value_bytes),
        }
    }

    /// Appends a row whose key and values are written straight into the buffers by
    /// `write_key` and `write_values`. If `write_key` fails nothing is appended.
    pub fn push_with<Failure>(
        &mut self,
        event_timestamp: Timestamp,
        write_key: impl FnOnce(&mut Vec<u8>) -> Result<(), Failure>,
        write_values: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Failure> {
        self.keys.push_with(write_key)?;
        self.event_timestamps.push(event_timestamp);
        let Ok(()) = self.values.push_with(|out| {
            write_values(out);
            Ok::<_, std::convert::Infallible>(())
        });
        Ok(())
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.event_timestamps.len()
    }

    /// Whether there is no row.
    pub fn is_empty(&self) -> bool {
        self.event_timestamps.is_empty()
    }

    /// Every row's entity key, in row order.
    pub fn keys(&self) -> &EntityKeyList {
        &self.keys
    }

    /// The entity key bytes of row `index`.
    pub fn key(&self, index: usize) -> &[u8] {
        self.keys.get(index)
    }

    /// The event time of row `index` (`Timestamp(0)` out of range).
    pub fn event_timestamp(&self, index: usize) -> Timestamp {
        self.event_timestamps
            .get(index)
            .copied()
            .unwrap_or(Timestamp(0))
    }

    /// The encoded values of row `index` (empty out of range).
    pub fn values(&self, index: usize) -> &[u8] {
        self.values.get(index)
    }
}

impl From<Vec<FeatureRow>> for EncodedRows {
    fn from(rows: Vec<FeatureRow>) -> Self {
        let mut encoded = Self::with_capacity(rows.len(), 0);
        for row in &rows {
            let Ok(()) = encoded.push_with(
                row.event_timestamp,
                |out| {
                    out.extend_from_slice(row.entity_key.as_bytes());
                    Ok::<_, std::convert::Infallible>(())
                },
                |out| codec::encode_row(&row.values, out),
            );
        }
        encoded
    }
}

/// Why a write was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A row does not fit the view's schema; nothing of the batch was written.
    #[error("feature view '{view}', row {row}: {message}")]
    InvalidRow {
        /// The view.
        view: String,
        /// Index of the row in the batch.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// The online store failed; any subset of the batch may have been written, and
    /// retrying the batch is safe.
    #[error(transparent)]
    Store(#[from] OnlineStoreError),
    /// A partial update lost its compare-and-swap race [`MAX_SWAP_ATTEMPTS`] times in a row
    /// (other writers kept changing the entity); the rows before it were written, and
    /// retrying the batch is safe.
    #[error(
        "feature view '{view}': entity {entity} changed under {MAX_SWAP_ATTEMPTS} attempts to \
         update it; too many concurrent writers, retry"
    )]
    Contended {
        /// The view.
        view: String,
        /// The entity key.
        entity: String,
    },
}

/// How many times a partial update reads and swaps one entity's row before it gives up.
pub const MAX_SWAP_ATTEMPTS: usize = 64;

/// How a batch run's rows compare with the digests stored for their entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestRule {
    /// The run reads every source row: a stored digest at the same event time with other
    /// values is a correction, and its row is replaced.
    Replace,
    /// The run reads only rows added to the sources (new files) beside the ones stored: the
    /// stored row stays unless the new one outranks it as a full run would rank them (a
    /// newer event time, or the same one and a larger content hash).
    Merge,
    /// A full refresh: every row counts as changed; digests are saved all the same.
    Ignore,
}

/// What a change-detecting write ([`WritePath::write_changed`]) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    /// Rows handed in.
    pub received: u64,
    /// Rows dropped because a better row of the same entity (newer, or as new with a larger
    /// content hash) was in the same batch or, for batch runs, an earlier batch of the run.
    pub superseded_in_batch: u64,
    /// Entities with no digest yet (first materialization of the view version).
    pub new: u64,
    /// Entities whose event time or content differ from their digest.
    pub changed: u64,
    /// Entities whose event time and content equal their digest: not written.
    pub unchanged: u64,
    /// Entities whose digest has a newer event time: not written.
    pub stale: u64,
    /// What the online store did with the new and changed rows.
    pub online: WriteSummary,
}

impl ChangeSummary {
    /// Adds another summary into this one.
    pub fn add(&mut self, other: ChangeSummary) {
        self.received += other.received;
        self.superseded_in_batch += other.superseded_in_batch;
        self.new += other.new;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.stale += other.stale;
        self.online.add(other.online);
    }
}

/// The digest of a row: its event time and the xxh3-64 hash of its encoded values.
pub fn row_digest(event_timestamp: Timestamp, encoded_values: &[u8]) -> RowDigest {
    RowDigest::of_row(event_timestamp, encoded_values)
}

/// The one component through which every lane writes online.
#[derive(Debug)]
pub struct WritePath {
    store: SharedOnlineStore,
    last_write_micros: AtomicI64,
    /// The options each table was prepared with by this write path, so that
    /// [`larder_online::OnlineStore::prepare_table`] runs once per table, and again only when
    /// the view's TTL changes.
    prepared_tables: Mutex<HashMap<FeatureViewId, TableOptions>>,
    freshness: FreshnessBoard,
}

impl WritePath {
    /// A write path over an online store.
    pub fn new(store: SharedOnlineStore) -> Self {
        Self {
            store,
            last_write_micros: AtomicI64::new(0),
            prepared_tables: Mutex::new(HashMap::new()),
            freshness: FreshnessBoard::default(),
        }
    }

    /// How fresh the values written through this write path are, per view.
    pub fn freshness(&self) -> &FreshnessBoard {
        &self.freshness
    }

    /// The online store it writes to.
    pub fn store(&self) -> &SharedOnlineStore {
        &self.store
    }

    /// A write timestamp that is strictly greater than every one this write path handed out
    /// before, and close to the wall clock.
    fn next_write_timestamp(&self) -> Timestamp {
        let now = Timestamp::now().as_micros();
        let mut previous = self.last_write_micros.load(Ordering::Relaxed);
        loop {
            let next = now.max(previous + 1);
            match self.last_write_micros.compare_exchange_weak(
                previous,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Timestamp(next),
                Err(current) => previous = current,
            }
        }
    }

    /// Checks every row against the view's schema without writing anything.
    pub fn validate(view: &FeatureView, rows: &[FeatureRow]) -> Result<(), WriteError> {
        for (index, row) in rows.iter().enumerate() {
            let invalid = |message: String| WriteError::InvalidRow {
                view: view.name.clone(),
                row: index,
                message,
            };
            if row.values.len() != view.features.len() {
                return Err(invalid(format!(
                    "expected {} values, got {}",
                    view.features.len(),
                    row.values.len()
                )));
            }
            for (value, feature) in row.values.iter().zip(&view.features) {
                if !value.conforms_to(&feature.dtype) {
                    return Err(invalid(format!(
                        "feature '{}' expects {}, got {}",
                        feature.name,
                        feature.dtype,
                        value.kind_name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes rows of one feature view from one lane.
    ///
    /// The whole batch is validated first: one bad row refuses the batch and nothing is
    /// written. Within the batch only the newest row per entity is sent (at equal event times,
    /// the later one); the online store then applies each row only if it is not older than
    /// the stored one, atomically, so concurrent lanes cannot regress a value.
    pub async fn write(
        &self,
        view: &FeatureView,
        lane: WriteLane,
        rows: Vec<FeatureRow>,
    ) -> Result<WriteSummary, WriteError> {
        self.write_with(view, lane, rows, WriteDurability::Immediate)
            .await
    }

    /// [`WritePath::write`], with the online write's durability chosen by the caller: a
    /// [`WriteDurability::Deferred`] write is servable at once and durable after the next
    /// [`larder_online::OnlineStore::sync`] of [`WritePath::store`].
    pub async fn write_with(
        &self,
        view: &FeatureView,
        lane: WriteLane,
        rows: Vec<FeatureRow>,
        durability: WriteDurability,
    ) -> Result<WriteSummary, WriteError> {
        Self::validate(view, &rows)?;
        let received = rows.len() as u64;
        let newest = match best_per_entity(
            rows.len(),
            |index| rows[index].entity_key.as_bytes(),
            |index| rows[index].event_timestamp,
        ) {
            None => rows,
            Some(kept) => {
                let mut keep = vec![false; rows.len()];
                for index in kept {
                    keep[index] = true;
                }
                rows.into_iter()
                    .zip(keep)
                    .filter_map(|(row, keep)| keep.then_some(row))
                    .collect()
            }
        };
        let superseded_in_batch = received - newest.len() as u64;
        let write_timestamp = self.next_write_timestamp();
        let online_rows: Vec<OnlineRow> = newest
            .into_iter()
            .map(|row| OnlineRow {
                values: codec::encode_row_to_vec(&row.values),
                entity_key: row.entity_key,
                event_timestamp: row.event_timestamp,
                write_timestamp,
                lane,
            })
            .collect();
        if online_rows.is_empty() {
            return Ok(WriteSummary {
                written: 0,
                skipped_stale: superseded_in_batch,
            });
        }
        let table = view.id();
        self.prepare_table_once(&table, TableOptions::for_view(view))
            .await?;
        let event_times = event_times_of(&online_rows);
        let mut summary = self
            .store
            .write_rows_with(&table, online_rows, durability)
            .await?;
        self.freshness
            .record(&view.name, lane, &event_times, Timestamp::now());
        summary.skipped_stale += superseded_in_batch;
        Ok(summary)
    }

    /// Updates some features of each row's entity and keeps the others (a partial update).
    ///
    /// `sent[i]` says whether feature `i` of the view is updated; each row carries a value
    /// for every feature, and those of features not sent are ignored. The rule is per row,
    /// as for whole rows: a row applies when the stored row's event time is not newer than
    /// its own (else it is counted as `skipped_stale`), and the stored row then takes the
    /// row's event time, the sent features' new values and the other features' stored values
    /// (null for an entity with no row yet). Each row is a read followed by a
    /// compare-and-swap ([`larder_online::OnlineStore::swap_rows`]) that is retried when
    /// another writer changed the entity in between, so concurrent writers of any lane never
    /// lose each other's updates. Rows of one entity apply in batch order.
    pub async fn update(
        &self,
        view: &FeatureView,
        lane: WriteLane,
        rows: Vec<FeatureRow>,
        sent: &[bool],
    ) -> Result<WriteSummary, WriteError> {
        Self::validate(view, &rows)?;
        if sent.len() != view.features.len() {
            return Err(WriteError::InvalidRow {
                view: view.name.clone(),
                row: 0,
                message: format!(
                    "{} feature flags for {} features",
                    sent.len(),
                    view.features.len()
                ),
            });
        }
        let mut summary = WriteSummary::default();
        if rows.is_empty() {
            return Ok(summary);
        }
        let table = view.id();
        self.prepare_table_once(&table, TableOptions::for_view(view))
            .await?;
        // Waves of distinct keys: wave n holds the n-th row of every entity, so one entity's
        // rows apply in order and no swap call sees a key twice.
        let mut waves: Vec<Vec<FeatureRow>> = Vec::new();
        let mut rows_seen: HashMap<EntityKey, usize> = HashMap::with_capacity(rows.len());
        for row in rows {
            let seen = rows_seen.entry(row.entity_key.clone()).or_default();
            if waves.len() <= *seen {
                waves.push(Vec::new());
            }
            waves[*seen].push(row);
            *seen += 1;
        }
        let mut event_times = Vec::new();
        for wave in waves {
            let mut pending = wave;
            for _attempt in 0..MAX_SWAP_ATTEMPTS {
                if pending.is_empty() {
                    break;
                }
                let keys: Vec<EntityKey> =
                    pending.iter().map(|row| row.entity_key.clone()).collect();
                let stored_rows = self.store.read_rows(&table, &keys).await?;
                let mut swaps = Vec::with_capacity(pending.len());
                let mut swapped_rows = Vec::with_capacity(pending.len());
                for (row, stored) in pending.into_iter().zip(stored_rows) {
                    if stored
                        .as_ref()
                        .is_some_and(|stored| stored.event_timestamp > row.event_timestamp)
                    {
                        summary.skipped_stale += 1;
                        continue;
                    }
                    let mut values = match &stored {
                        Some(stored) => codec::decode_row(&stored.values).map_err(|error| {
                            OnlineStoreError::Corrupt {
                                backend: self.store.backend_name(),
                                message: format!(
                                    "feature view '{}', entity {}: {error}",
                                    view.name, row.entity_key
                                ),
                            }
                        })?,
                        None => vec![Value::Null; view.features.len()],
                    };
                    values.resize(view.features.len(), Value::Null);
                    for ((value, new_value), is_sent) in
                        values.iter_mut().zip(&row.values).zip(sent)
                    {
                        if *is_sent {
                            *value = new_value.clone();
                        }
                    }
                    swaps.push(larder_online::RowSwap {
                        expected: stored,
                        row: OnlineRow {
                            entity_key: row.entity_key.clone(),
                            event_timestamp: row.event_timestamp,
                            write_timestamp: self.next_write_timestamp(),
                            lane,
                            values: codec::encode_row_to_vec(&values),
                        },
                    });
                    swapped_rows.push(row);
                }
                let applied = self.store.swap_rows(&table, swaps).await?;
                pending = Vec::new();
                for (row, applied) in swapped_rows.into_iter().zip(applied) {
                    if applied {
                        summary.written += 1;
                        event_times.push(row.event_timestamp.as_micros());
                    } else {
                        pending.push(row);
                    }
                }
                if !pending.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
            if let Some(row) = pending.first() {
                return Err(WriteError::Contended {
                    view: view.name.clone(),
                    entity: row.entity_key.to_string(),
                });
            }
        }
        self.freshness
            .record(&view.name, lane, &event_times, Timestamp::now());
        Ok(summary)
    }

    /// Writes only the rows that differ from what was last materialized, by content.
    ///
    /// Like [`WritePath::write`] (validation, best row per entity, event-time ordering), but
    /// rows are ranked by their [`RowDigest`] (event time, then the xxh3 of the encoded
    /// values), so that of two rows of one entity at the same event time the one with the
    /// larger hash wins, whatever order they come in; `winners` carries that decision across
    /// the batches of one run (a row outranked by an earlier batch's row is not written).
    /// Then each row's digest is compared with the digest stored for the entity in `digests`:
    ///
    /// * no digest: **new**, written;
    /// * a digest with a newer event time: **stale**, not written (the store would refuse it);
    /// * the same event time and the same content hash: **unchanged**, not written;
    /// * anything else (a newer event time, or the same event time with other values):
    ///   **changed**, written.
    ///
    /// (`write_changed_encoded` with [`DigestRule::Merge`], for rows of added source files,
    /// counts a digest at the same event time with a larger content hash as stale too.)
    ///
    /// Digests of written rows are saved only after the online write returned, so a crash in
    /// between leaves rows without digests (rewritten next time), never a digest whose row was
    /// not written. With `ignore_digests` every row counts as changed (a full refresh), and
    /// digests are saved all the same.
    pub async fn write_changed(
        &self,
        view: &FeatureView,
        lane: WriteLane,
        rows: Vec<FeatureRow>,
        digests: &dyn DigestStore,
        ignore_digests: bool,
        winners: &mut RunWinners,
    ) -> Result<ChangeSummary, WriteError> {
        Self::validate(view, &rows)?;
        let rule = if ignore_digests {
            DigestRule::Ignore
        } else {
            DigestRule::Replace
        };
        self.write_changed_encoded(view, lane, &EncodedRows::from(rows), digests, rule, winners)
            .await
    }

    /// [`WritePath::write_changed`] for rows whose values are already encoded (see
    /// [`EncodedRows`] for what the caller guarantees in place of validation). Only the new
    /// and changed rows are copied out of `rows`.
    pub async fn write_changed_encoded(
        &self,
        view: &FeatureView,
        lane: WriteLane,
        rows: &EncodedRows,
        digests: &dyn DigestStore,
        rule: DigestRule,
        winners: &mut RunWinners,
    ) -> Result<ChangeSummary, WriteError> {
        let received = rows.len() as u64;
        let row_digests: Vec<RowDigest> = (0..rows.len())
            .map(|index| row_digest(rows.event_timestamp(index), rows.values(index)))
            .collect();
        let best = best_per_entity(
            rows.len(),
            |index| rows.key(index),
            |index| row_digests[index],
        );
        let candidates = best.unwrap_or_else(|| (0..rows.len()).collect());
        let kept: Vec<usize> = candidates
            .into_iter()
            .filter(|index| winners.offer(rows.key(*index), row_digests[*index]))
            .collect();
        let kept_count = kept.len();
        let mut summary = ChangeSummary {
            received,
            superseded_in_batch: received - kept_count as u64,
            ..ChangeSummary::default()
        };
        if kept_count == 0 {
            return Ok(summary);
        }
        let kept = (kept_count != rows.len()).then_some(kept);
        let table = view.id();
        let kept_keys;
        let keys = match &kept {
            None => rows.keys(),
            Some(indices) => {
                let mut list = EntityKeyList::with_capacity(indices.len(), indices.len() * 9);
                for index in indices {
                    list.push_bytes(rows.key(*index));
                }
                kept_keys = list;
                &kept_keys
            }
        };
        let stored_digests = if rule == DigestRule::Ignore {
            vec![None; kept_count]
        } else {
            digests.read_digests(&table, keys).await?
        };
        let write_timestamp = self.next_write_timestamp();
        let mut online_rows = Vec::new();
        let mut new_digests = Vec::new();
        let indices = kept.unwrap_or_else(|| (0..rows.len()).collect());
        for (index, stored_digest) in indices.into_iter().zip(stored_digests) {
            let event_timestamp = rows.event_timestamp(index);
            let values = rows.values(index);
            let digest = row_digests[index];
            match stored_digest {
                Some(stored) if stored.event_timestamp > digest.event_timestamp => {
                    summary.stale += 1;
                    continue;
                }
                Some(stored) if rule == DigestRule::Merge && stored > digest => {
                    summary.stale += 1;
                    continue;
                }
                Some(stored) if stored == digest => {
                    summary.unchanged += 1;
                    continue;
                }
                Some(_) => summary.changed += 1,
                None => summary.new += 1,
            }
            let entity_key = EntityKey::from_bytes(rows.key(index).to_vec());
            new_digests.push((entity_key.clone(), digest));
            online_rows.push(OnlineRow {
                entity_key,
                event_timestamp,
                write_timestamp,
                lane,
                values: values.to_vec(),
            });
        }
        if online_rows.is_empty() {
            return Ok(summary);
        }
        self.prepare_table_once(&table, TableOptions::for_view(view))
            .await?;
        let event_times = event_times_of(&online_rows);
        summary.online = self.store.write_rows(&table, online_rows).await?;
        self.freshness
            .record(&view.name, lane, &event_times, Timestamp::now());
        // Only now that the values are written may their digests be saved.
        digests.write_digests(&table, new_digests).await?;
        Ok(summary)
    }

    /// Prepares `table` with `options` unless this write path already did. Two concurrent
    /// first writes may both prepare the table, which is harmless (preparing is idempotent).
    async fn prepare_table_once(
        &self,
        table: &FeatureViewId,
        options: TableOptions,
    ) -> Result<(), OnlineStoreError> {
        let already_prepared = self
            .prepared_tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            == Some(&options);
        if already_prepared {
            return Ok(());
        }
        self.store.prepare_table(table, options).await?;
        self.prepared_tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(table.clone(), options);
        Ok(())
    }
}

/// The rows to keep so that each entity keeps only its best row by `rank` (at equal ranks
/// the later one), as indices in input order; `None` when every row is of a different entity
/// (the common case, which allocates only the map). Keys are borrowed, never cloned.
fn best_per_entity<'rows, Rank: Ord>(
    count: usize,
    key: impl Fn(usize) -> &'rows [u8],
    rank: impl Fn(usize) -> Rank,
) -> Option<Vec<usize>> {
    let mut best_by_key: HashMap<&[u8], usize> = HashMap::with_capacity(count);
    for index in 0..count {
        let best = best_by_key.entry(key(index)).or_insert(index);
        if rank(index) >= rank(*best) {
            *best = index;
        }
    }
    if best_by_key.len() == count {
        return None;
    }
    let mut kept: Vec<usize> = best_by_key.into_values().collect();
    kept.sort_unstable();
    Some(kept)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use larder_core::{Feature, FeatureViewId, JoinKey, ValueType};
    use larder_online::MemoryOnlineStore;

    use super::*;

    fn view() -> FeatureView {
        FeatureView {
            name: "user_stats".into(),
            version: 1,
            entities: vec!["user".into()],
            join_keys: vec![JoinKey {
                name: "user_id".into(),
                dtype: ValueType::Int64,
            }],
            source: "events".into(),
            transformation: None,
            transformation_path: None,
            timestamp_field: "event_timestamp".into(),
            features: vec![
                Feature {
                    name: "clicks".into(),
                    dtype: ValueType::Int64,
                    description: String::new(),
                    vector_index: None,
                },
                Feature {
                    name: "country".into(),
                    dtype: ValueType::String,
                    description: String::new(),
                    vector_index: None,
                },
            ],
            ttl: None,
            online: true,
            offline: true,
            owner: String::new(),
            tier: None,
            tags: Default::default(),
            description: String::new(),
            freshness_sla: None,
            checks: Vec::new(),
            ..larder_core::FeatureView::default()
        }
    }

    fn row(user: i64, event_seconds: i64, clicks: i64) -> FeatureRow {
        FeatureRow {
            entity_key: EntityKey::from_int(user),
            event_timestamp: Timestamp::from_seconds(event_seconds),
            values: vec![Value::Int64(clicks), Value::String("fr".into())],
        }
    }

    async fn stored_clicks(
        write_path: &WritePath,
        id: &FeatureViewId,
        user: i64,
    ) -> Option<(i64, WriteLane)> {
        let rows = write_path
            .store()
            .read_rows(id, &[EntityKey::from_int(user)])
            .await
            .unwrap();
        rows.into_iter().next().flatten().map(|stored| {
            let values = codec::decode_row(&stored.values).unwrap();
            match values[0] {
                Value::Int64(clicks) => (clicks, stored.lane),
                _ => panic!("unexpected value {values:?}"),
            }
        })
    }

    /// The content hash of `row`'s encoded values: what ranks rows of one entity at one time.
    fn hash_of(row: &FeatureRow) -> u64 {
        codec::content_hash(&codec::encode_row_to_vec(&row.values))
    }

    /// Runs of the batch lane over rows of one entity at one event time, split over batches
    /// in every order: the row with the larger content hash is the one online every time,
    /// and a later run without that row writes the one that is left.
    #[tokio::test]
    async fn ties_at_one_event_time_go_to_the_larger_content_hash_in_any_order() {
        let view = view();
        let tied = [row(1, 100, 1), row(1, 100, 2), row(1, 100, 3)];
        let winner = tied
            .iter()
            .max_by_key(|row| hash_of(row))
            .map(|row| match row.values[0] {
                Value::Int64(clicks) => clicks,
                _ => unreachable!(),
            })
            .unwrap();
        let orders = [
            [0, 1, 2],
            [2, 1, 0],
            [1, 0, 2],
            [1, 2, 0],
            [0, 2, 1],
            [2, 0, 1],
        ];
        for order in orders {
            for batch_size in [1, 2, 3] {
                let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
                let digests = larder_online::MemoryDigestStore::new();
                let mut winners = RunWinners::new();
                let rows: Vec<FeatureRow> =
                    order.iter().map(|index| tied[*index].clone()).collect();
                for batch in rows.chunks(batch_size) {
                    write_path
                        .write_changed(
                            &view,
                            WriteLane::Batch,
                            batch.to_vec(),
                            &digests,
                            false,
                            &mut winners,
                        )
                        .await
                        .unwrap();
                }
                assert_eq!(
                    stored_clicks(&write_path, &view.id(), 1)
                        .await
                        .map(|(clicks, _)| clicks),
                    Some(winner),
                    "order {order:?}, batches of {batch_size}"
                );
                // The next run's source no longer has the winner: the best remaining row wins.
                let remaining: Vec<FeatureRow> = tied
                    .iter()
                    .filter(|row| row.values[0] != Value::Int64(winner))
                    .cloned()
                    .collect();
                let next_winner = remaining
                    .iter()
                    .max_by_key(|row| hash_of(row))
                    .unwrap()
                    .values[0]
                    .clone();
                let mut next_run = RunWinners::new();
                for row in remaining {
                    write_path
                        .write_changed(
                            &view,
                            WriteLane::Batch,
                            vec![row],
                            &digests,
                            false,
                            &mut next_run,
                        )
                        .await
                        .unwrap();
                }
                let stored = stored_clicks(&write_path, &view.id(), 1)
                    .await
                    .map(|(clicks, _)| clicks);
                assert_eq!(stored.map(Value::Int64), Some(next_winner));
            }
        }
    }

    #[tokio::test]
    async fn an_older_value_from_any_lane_never_overwrites_a_newer_one() {
        let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let view = view();
        write_path
            .write(&view, WriteLane::Stream, vec![row(1, 200, 20)])
            .await
            .unwrap();
        let summary = write_path
            .write(&view, WriteLane::Batch, vec![row(1, 100, 10)])
            .await
            .unwrap();
        assert_eq!(
            summary,
            WriteSummary {
                written: 0,
                skipped_stale: 1
            }
        );
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 1).await,
            Some((20, WriteLane::Stream))
        );
        write_path
            .write(&view, WriteLane::Direct, vec![row(1, 300, 30)])
            .await
            .unwrap();
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 1).await,
            Some((30, WriteLane::Direct))
        );
    }

    #[tokio::test]
    async fn at_equal_event_time_the_later_write_wins() {
        let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let view = view();
        write_path
            .write(&view, WriteLane::Batch, vec![row(7, 100, 1)])
            .await
            .unwrap();
        let summary = write_path
            .write(&view, WriteLane::Direct, vec![row(7, 100, 2)])
            .await
            .unwrap();
        assert_eq!(
            summary.written, 1,
            "a correction that keeps its event time must land"
        );
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 7).await,
            Some((2, WriteLane::Direct))
        );
    }

    #[tokio::test]
    async fn a_batch_keeps_only_the_newest_row_per_entity() {
        let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let view = view();
        let summary = write_path
            .write(
                &view,
                WriteLane::Batch,
                vec![row(1, 300, 3), row(1, 100, 1), row(1, 300, 4), row(2, 5, 9)],
            )
            .await
            .unwrap();
        assert_eq!(
            summary,
            WriteSummary {
                written: 2,
                skipped_stale: 2
            }
        );
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 1).await,
            Some((4, WriteLane::Batch))
        );
    }

    #[tokio::test]
    async fn a_bad_row_refuses_the_whole_batch() {
        let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let view = view();
        let mut bad = row(2, 100, 1);
        bad.values[0] = Value::String("many".into());
        let error = write_path
            .write(&view, WriteLane::Direct, vec![row(1, 100, 1), bad])
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("row 1: feature 'clicks' expects int64, got string"),
            "{error}"
        );
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 1).await,
            None,
            "nothing of the batch may be written"
        );
        let short = FeatureRow {
            values: vec![Value::Int64(1)],
            ..row(3, 1, 1)
        };
        assert!(
            write_path
                .write(&view, WriteLane::Direct, vec![short])
                .await
                .is_err()
        );
    }

    /// Rows of added files meet the stored rows as a run over every file would rank them:
    /// at one event time the larger content hash stays, whichever was stored first.
    #[tokio::test]
    async fn merged_rows_replace_a_stored_row_only_when_they_outrank_it() {
        let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let digests = larder_online::MemoryDigestStore::new();
        let view = view();
        let hash_of = |clicks| {
            let rows = EncodedRows::from(vec![row(1, 100, clicks)]);
            row_digest(Timestamp::from_seconds(100), rows.values(0)).content_hash
        };
        // Two values at one event time, the first with the smaller hash.
        let (small, large) = if hash_of(1) < hash_of(2) {
            (1, 2)
        } else {
            (2, 1)
        };
        let write = |rows, rule| {
            let write_path = &write_path;
            let digests = &digests;
            let view = &view;
            async move {
                write_path
                    .write_changed_encoded(
                        view,
                        WriteLane::Batch,
                        &EncodedRows::from(rows),
                        digests,
                        rule,
                        &mut RunWinners::new(),
                    )
                    .await
                    .unwrap()
            }
        };
        write(
            vec![row(1, 100, large), row(2, 100, small)],
            DigestRule::Replace,
        )
        .await;
        let merged = write(
            vec![row(1, 100, small), row(2, 100, large), row(3, 90, 7)],
            DigestRule::Merge,
        )
        .await;
        assert_eq!((merged.stale, merged.changed, merged.new), (1, 1, 1));
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 1).await,
            Some((large, WriteLane::Batch))
        );
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 2).await,
            Some((large, WriteLane::Batch))
        );
        // A run over every file takes its rows as the truth at their event time.
        let replaced = write(vec![row(1, 100, small)], DigestRule::Replace).await;
        assert_eq!(replaced.changed, 1);
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 1).await,
            Some((small, WriteLane::Batch))
        );
    }

    #[tokio::test]
    async fn only_new_or_changed_rows_are_written_by_content() {
        let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let digests = larder_online::MemoryDigestStore::new();
        let view = view();
        let first = write_path
            .write_changed(
                &view,
                WriteLane::Batch,
                vec![row(1, 100, 1), row(2, 100, 2), row(3, 100, 3)],
                &digests,
                false,
                &mut RunWinners::new(),
            )
            .await
            .unwrap();
        assert_eq!((first.new, first.changed, first.online.written), (3, 0, 3));
        // Row 2 changes its value but keeps its event time; row 3 moves its event time only.
        let second = write_path
            .write_changed(
                &view,
                WriteLane::Batch,
                vec![row(1, 100, 1), row(2, 100, 20), row(3, 150, 3)],
                &digests,
                false,
                &mut RunWinners::new(),
            )
            .await
            .unwrap();
        assert_eq!(
            (
                second.new,
                second.changed,
                second.unchanged,
                second.online.written
            ),
            (0, 2, 1, 2),
            "a changed value at an unchanged event time is a change"
        );
        assert_eq!(
            stored_clicks(&write_path, &view.id(), 2).await,
            Some((20, WriteLane::Batch))
        );
        let older = write_path
            .write_changed(
                &view,
                WriteLane::Batch,
                vec![row(3, 120, 9)],
                &digests,
                false,
                &mut RunWinners::new(),
            )
            .await
            .unwrap();
        assert_eq!((older.stale, older.online.written), (1, 0));
        let nothing = write_path
            .write_changed(
                &view,
                WriteLane::Batch,
                vec![row(1, 100, 1), row(2, 100, 20), row(3, 150, 3)],
                &digests,
                false,
                &mut RunWinners::new(),
            )
            .await
            .unwrap();
        assert_eq!((nothing.unchanged, nothing.online.written), (3, 0));
        let full = write_path
            .write_changed(
                &view,
                WriteLane::Batch,
                vec![row(1, 100, 1)],
                &digests,
                true,
                &mut RunWinners::new(),
            )
            .await
            .unwrap();
        assert_eq!(full.online.written, 1, "a full refresh rewrites every row");
        let next_version = FeatureView {
            version: 2,
            ..view.clone()
        };
        let fresh = write_path
            .write_changed(
                &next_version,
                WriteLane::Batch,
                vec![row(1, 100, 1)],
                &digests,
                false,
                &mut RunWinners::new(),
            )
            .await
            .unwrap();
        assert_eq!(fresh.new, 1, "a new view version writes every row");
    }

    /// A store whose writes fail, to show that no digest is saved for an unwritten row.
    #[derive(Debug)]
    struct FailingStore;

    #[async_trait::async_trait]
    impl larder_online::OnlineStore for FailingStore {
        fn backend_name(&self) -> &'static str {
            "failing"
        }
        async fn write_rows_with(
            &self,
            _table: &FeatureViewId,
            _rows: Vec<OnlineRow>,
            _durability: larder_online::WriteDurability,
        ) -> Result<WriteSummary, OnlineStoreError> {
            Err(OnlineStoreError::Unavailable {
                backend: "failing",
                message: "down".into(),
            })
        }
        async fn sync(&self) -> Result<(), OnlineStoreError> {
            Ok(())
        }
        async fn swap_rows(
            &self,
            _table: &FeatureViewId,
            _swaps: Vec<larder_online::RowSwap>,
        ) -> Result<Vec<bool>, OnlineStoreError> {
            Err(OnlineStoreError::Unavailable {
                backend: "failing",
                message: "down".into(),
            })
        }
        async fn read_rows(
            &self,
            _table: &FeatureViewId,
            keys: &[EntityKey],
        ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
            Ok(vec![None; keys.len()])
        }
        async fn delete_rows(
            &self,
            _table: &FeatureViewId,
            _keys: &[EntityKey],
        ) -> Result<u64, OnlineStoreError> {
            Ok(0)
        }
        async fn drop_table(&self, _table: &FeatureViewId) -> Result<(), OnlineStoreError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_online_write_saves_no_digest_so_the_next_run_converges() {
        let digests = larder_online::MemoryDigestStore::new();
        let view = view();
        let failing = WritePath::new(Arc::new(FailingStore));
        assert!(
            failing
                .write_changed(
                    &view,
                    WriteLane::Batch,
                    vec![row(1, 100, 1)],
                    &digests,
                    false,
                    &mut RunWinners::new(),
                )
                .await
                .is_err()
        );
        let saved = digests
            .read_digests(&view.id(), &[EntityKey::from_int(1)].iter().collect())
            .await
            .unwrap();
        assert_eq!(saved, vec![None]);
        let working = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let retry = working
            .write_changed(
                &view,
                WriteLane::Batch,
                vec![row(1, 100, 1)],
                &digests,
                false,
                &mut RunWinners::new(),
            )
            .await
            .unwrap();
        assert_eq!(retry.online.written, 1);
    }

    #[test]
    fn write_timestamps_strictly_increase() {
        let write_path = WritePath::new(Arc::new(MemoryOnlineStore::new()));
        let mut previous = write_path.next_write_timestamp();
        for _ in 0..1000 {
            let next = write_path.next_write_timestamp();
            assert!(next > previous);
            previous = next;
        }
    }
}
