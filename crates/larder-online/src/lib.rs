//! Online stores: where the latest value of every feature of every entity lives, for serving
//! in milliseconds.
//!
//! The [`OnlineStore`] trait is the seam; its doc comment is the specification that every
//! backend implements and that [`conformance`] checks. Backends here:
//! [`MemoryOnlineStore`] (the reference) and [`EmbeddedOnlineStore`] (persistent, on redb).

mod cache;
pub mod conformance;
mod digest;
mod embedded;
mod memory;
pub mod redb_file;

use std::sync::Arc;

use larder_core::{EntityKey, FeatureViewId, Timestamp, TtlDuration, WriteLane};

pub use cache::{CacheConfig, CacheStats, CachedOnlineStore};
pub use digest::{
    DigestStore, MemoryDigestStore, RedbDigestStore, RowDigest, SharedDigestStore,
    check_digest_store_conformance,
};
pub use embedded::{EmbeddedOnlineStore, EmbeddedRowDigests};
pub use memory::MemoryOnlineStore;

/// One stored row: the encoded feature values of one entity of one feature view version,
/// with the metadata that every lane attaches.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineRow {
    /// The entity the row describes.
    pub entity_key: EntityKey,
    /// When the values were true in the world (event time). Orders writes.
    pub event_timestamp: Timestamp,
    /// When the write path accepted the row.
    pub write_timestamp: Timestamp,
    /// Which lane wrote it.
    pub lane: WriteLane,
    /// The values, encoded with [`larder_core::codec::encode_row`], in the view's feature order.
    pub values: Vec<u8>,
}

/// Groups a batch's rows by entity key, for backends that apply one key's rows in one call:
/// returns the group of each row and the number of groups. Groups are numbered in the order
/// of each key's first row, and a group's rows keep their batch order. Keys are borrowed,
/// never cloned.
pub fn group_rows_by_key(rows: &[OnlineRow]) -> (Vec<usize>, usize) {
    let mut group_of_key: std::collections::HashMap<&EntityKey, usize> =
        std::collections::HashMap::with_capacity(rows.len());
    let groups = rows
        .iter()
        .map(|row| {
            let next_group = group_of_key.len();
            *group_of_key.entry(&row.entity_key).or_insert(next_group)
        })
        .collect();
    (groups, group_of_key.len())
}

/// A conditional write of one row: applied only if the key's stored row is still
/// `expected`, for read-modify-write updates (a partial update of some features of a row).
#[derive(Debug, Clone, PartialEq)]
pub struct RowSwap {
    /// The row the writer read: the stored row must equal it in event time, write time, lane
    /// and value bytes; `None`: the key must have no row.
    pub expected: Option<OnlineRow>,
    /// The row to store in its place (its key is the key compared).
    pub row: OnlineRow,
}

impl RowSwap {
    /// Whether `stored` (the key's current row) is what the swap expects.
    pub fn expects(&self, stored: Option<&OnlineRow>) -> bool {
        match (&self.expected, stored) {
            (None, None) => true,
            (Some(expected), Some(stored)) => same_stored_row(expected, stored),
            _ => false,
        }
    }
}

/// Whether two rows of one key hold the same stored state (the key is not compared).
pub fn same_stored_row(left: &OnlineRow, right: &OnlineRow) -> bool {
    left.event_timestamp == right.event_timestamp
        && left.write_timestamp == right.write_timestamp
        && left.lane == right.lane
        && left.values == right.values
}

/// When the rows of a write must be durable ([`OnlineStore::write_rows_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteDurability {
    /// Durable to the backend's promise when the write returns.
    #[default]
    Immediate,
    /// Applied and readable when the write returns, but a crash may undo it until the next
    /// [`OnlineStore::sync`] (or a later immediate write) of the store. Only for a writer that
    /// replays what a crash undid: the stream lane, whose position of record becomes durable
    /// only after a sync.
    Deferred,
}

/// What a batch write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Rows stored (new keys, or newer-or-equal event time than the stored row).
    pub written: u64,
    /// Rows not stored because the stored row has a newer event time.
    pub skipped_stale: u64,
}

impl WriteSummary {
    /// Adds another summary into this one.
    pub fn add(&mut self, other: WriteSummary) {
        self.written += other.written;
        self.skipped_stale += other.skipped_stale;
    }
}

/// Options of one online table, taken from its feature view and passed to
/// [`OnlineStore::prepare_table`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TableOptions {
    /// The view's TTL. Serving reports a row whose event time is older than `now - ttl` as
    /// `OUTSIDE_MAX_AGE`; a backend with server-side expiry may delete a row once
    /// [`TableOptions::expire_at`] has passed. `None` (or zero) keeps rows until they are
    /// replaced or deleted.
    pub ttl: Option<TtlDuration>,
    /// The view's nearest-neighbour index, if it declares one. Stores ignore it; the
    /// `larder-vector` decorator keeps the index in step with the table's writes.
    pub vector_index: Option<larder_core::IndexedFeature>,
}

impl TableOptions {
    /// Options with the given TTL (`None` or zero: rows never expire).
    pub fn with_ttl(ttl: Option<TtlDuration>) -> Self {
        Self {
            ttl: ttl.filter(|ttl| ttl.as_seconds() > 0),
            vector_index: None,
        }
    }

    /// The options of a feature view's table: its TTL and its vector index.
    pub fn for_view(view: &larder_core::FeatureView) -> Self {
        Self {
            vector_index: view.vector_index(),
            ..Self::with_ttl(view.ttl)
        }
    }

    /// The instant after which a backend may expire `row`: the TTL after the later of its
    /// event time and its write time, or `None` when the table has no TTL.
    ///
    /// Expiring at this instant never hides a row that serving would still report as fresh
    /// (fresh means event time within the TTL, and the event time is at most this instant
    /// minus the TTL), and a backfilled row with an old event time stays visible, as
    /// `OUTSIDE_MAX_AGE`, for one TTL after it was written.
    pub fn expire_at(&self, row: &OnlineRow) -> Option<Timestamp> {
        let ttl = self.ttl?;
        let base = row.event_timestamp.max(row.write_timestamp);
        Some(Timestamp(base.as_micros().saturating_add(ttl.as_micros())))
    }
}

/// Errors of an online store.
#[derive(Debug, thiserror::Error)]
pub enum OnlineStoreError {
    /// The backend cannot be reached or refused the operation; the caller may retry.
    #[error("online store '{backend}' is unavailable: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The store's files are held by another process (for example a running `larder serve`).
    #[error("online store at {path} is in use by another process")]
    Locked {
        /// The store's path.
        path: String,
    },
    /// Stored data that cannot be interpreted.
    #[error("online store '{backend}' holds corrupt data: {message}")]
    Corrupt {
        /// Backend name.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Anything else: a bug or an I/O failure.
    #[error("online store '{backend}' failed: {message}")]
    Internal {
        /// Backend name.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A key-value store of the latest feature rows, keyed by (feature view version, entity key).
///
/// # Specification
///
/// Every backend behaves as follows; [`conformance::run_all`] checks each point.
///
/// * **Tables.** Rows live in tables named by a [`FeatureViewId`] (view name and version).
///   Tables need no creation: writing to a table creates it, reading an unknown table finds
///   nothing. Different tables never see each other's rows.
/// * **Batch write, ordered by event time.** [`OnlineStore::write_rows`] applies each row
///   only if no stored row for the same key has a *newer* event timestamp. At an equal event
///   timestamp the incoming row replaces the stored one (a correction that keeps its event time
///   still lands). Rows of one batch are applied in order, so a batch may hold the same key
///   twice. The comparison and the write are atomic per key: two concurrent writers can never
///   leave an older row in place of a newer one. On success every applied row is durable to the
///   backend's promise (the embedded store survives a process crash); on error the caller must
///   assume any subset of the batch was applied, and may safely retry the whole batch, since
///   applying a row twice is idempotent. A [`WriteDurability::Deferred`] write is readable
///   at once and durable after the next [`OnlineStore::sync`].
/// * **Batch read.** [`OnlineStore::read_rows`] returns exactly one slot per requested key, in
///   the order of the request, `None` for a key with no row (or a row the backend has already
///   expired). Duplicate keys in a request get their own slots. A read never returns a row
///   older than one whose write already returned.
/// * **Metadata.** Every returned row carries the event timestamp, write timestamp, lane and
///   value bytes exactly as written.
/// * **Table options.** [`OnlineStore::prepare_table`] declares a table and its
///   [`TableOptions`] before it is written: `larder apply` calls it for every online view,
///   and the write path calls it before its first write to a table in a process. It is
///   idempotent; calling it again with other options replaces them for later writes. A
///   backend may create storage there (a DynamoDB table) and may expire a row server-side,
///   but never before [`TableOptions::expire_at`] of that row; backends without
///   server-side expiry keep rows, and serving's TTL check alone reports them as stale.
///   Preparing never changes or removes stored rows, and writing to a table that was never
///   prepared still works (without server-side expiry).
/// * **Compare and swap.** [`OnlineStore::swap_rows`] writes each [`RowSwap`]'s row only if
///   the key's stored row is still exactly the swap's `expected` row (or the key has no row
///   when `expected` is `None`), atomically per key, and answers per swap whether it was
///   written. It ignores event-time order (the caller has compared), keeps TTL expiry as
///   [`OnlineStore::write_rows`] does, and takes each key at most once per call. A row the
///   backend has already expired counts as no row.
/// * **Deletion.** [`OnlineStore::delete_rows`] removes the given keys from a table and
///   returns how many existed; [`OnlineStore::drop_table`] removes a whole table.
#[async_trait::async_trait]
pub trait OnlineStore: Send + Sync + std::fmt::Debug + 'static {
    /// A short backend name for messages and metrics (`memory`, `embedded`, `redis`).
    fn backend_name(&self) -> &'static str;

    /// Declares a table and its options ahead of writes (see the trait docs). The default does
    /// nothing, which suits backends that create tables on first write and never expire rows.
    async fn prepare_table(
        &self,
        table: &FeatureViewId,
        options: TableOptions,
    ) -> Result<(), OnlineStoreError> {
        let _ = (table, options);
        Ok(())
    }

    /// Writes a batch of rows to one table, ordered by event time (see the trait docs),
    /// durably.
    async fn write_rows(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
    ) -> Result<WriteSummary, OnlineStoreError> {
        self.write_rows_with(table, rows, WriteDurability::Immediate)
            .await
    }

    /// [`OnlineStore::write_rows`] with a choice of when the rows must be durable. A backend
    /// whose writes are always as durable as it gets treats both alike.
    async fn write_rows_with(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
        durability: WriteDurability,
    ) -> Result<WriteSummary, OnlineStoreError>;

    /// Makes every write that returned before this call durable, deferred ones included.
    async fn sync(&self) -> Result<(), OnlineStoreError>;

    /// Writes each swap's row if its key still holds the expected row; one flag per swap,
    /// in order (see the trait docs).
    async fn swap_rows(
        &self,
        table: &FeatureViewId,
        swaps: Vec<RowSwap>,
    ) -> Result<Vec<bool>, OnlineStoreError>;

    /// Reads one slot per key, in order (see the trait docs).
    async fn read_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError>;

    /// Deletes the rows of the given keys; returns how many existed.
    async fn delete_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, OnlineStoreError>;

    /// Removes a table and all its rows. Dropping an unknown table is not an error.
    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError>;
}

/// A shared handle to any online store.
pub type SharedOnlineStore = Arc<dyn OnlineStore>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_grouped_by_key_in_order_of_first_appearance() {
        let row = |id: i64| OnlineRow {
            entity_key: EntityKey::from_int(id),
            event_timestamp: Timestamp(id),
            write_timestamp: Timestamp(0),
            lane: WriteLane::Batch,
            values: Vec::new(),
        };
        let rows = [row(7), row(3), row(7), row(9), row(3)];
        assert_eq!(group_rows_by_key(&rows), (vec![0, 1, 0, 2, 1], 3));
        assert_eq!(group_rows_by_key(&[]), (vec![], 0));
    }
}
