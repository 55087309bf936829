//! Row digests: what the batch lane last materialized for each entity, so that a run writes
//! online only the rows that are new or changed.
//!
//! A [`RowDigest`] is the event time and a 64-bit content hash of one stored row. The batch
//! lane keeps one digest per (feature view version, entity) in a [`DigestStore`] beside the
//! online data, compares every computed row with it, and writes online only the rows whose
//! digest differs. Digests are written *after* the rows they describe, so a crash in between
//! leaves rows without digests (rewritten by the next run), never a digest without its row.
//!
//! Backends: [`MemoryDigestStore`] (the reference, for the memory online store and tests) and
//! [`RedbDigestStore`] (a redb file of its own, beside a remote online store);
//! [`check_digest_store_conformance`] is the one suite both run. The embedded online store
//! keeps no digests of its own: it derives them from the rows it stores
//! ([`crate::EmbeddedOnlineStore::digest_store`]), which touches one B-tree instead of two and
//! leaves no window in which a row and its digest disagree.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use larder_core::{EntityKey, EntityKeyList, FeatureViewId, Timestamp};
use redb::TableDefinition;

use crate::OnlineStoreError;

/// The backend name of digest errors.
const DIGEST_BACKEND_NAME: &str = "digest";

/// Length of an encoded digest: event time (i64 LE) then content hash (u64 LE).
const ENCODED_DIGEST_LENGTH: usize = 16;

/// The redb table type of digests: entity key bytes to an encoded [`RowDigest`].
type DigestTableDefinition<'name> = TableDefinition<'name, &'static [u8], &'static [u8]>;

/// What was last materialized for one entity: its event time and a hash of its encoded values.
///
/// Digests order rows of one entity as the batch lane and training sets rank them: the newer
/// event time wins, and at the same event time the larger content hash
/// ([`larder_core::codec::content_hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowDigest {
    /// The event time of the materialized row.
    pub event_timestamp: Timestamp,
    /// A 64-bit hash (xxh3) of the row's encoded values.
    pub content_hash: u64,
}

impl RowDigest {
    /// The fixed-size bytes of this digest.
    pub fn to_bytes(&self) -> [u8; ENCODED_DIGEST_LENGTH] {
        let mut bytes = [0u8; ENCODED_DIGEST_LENGTH];
        bytes[..8].copy_from_slice(&self.event_timestamp.as_micros().to_le_bytes());
        bytes[8..].copy_from_slice(&self.content_hash.to_le_bytes());
        bytes
    }

    /// The digest of a row: its event time and the xxh3-64 hash of its encoded values
    /// ([`larder_core::codec::content_hash`]).
    pub fn of_row(event_timestamp: Timestamp, encoded_values: &[u8]) -> Self {
        Self {
            event_timestamp,
            content_hash: larder_core::codec::content_hash(encoded_values),
        }
    }

    /// Decodes [`RowDigest::to_bytes`]; `None` for bytes of the wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (event_bytes, hash_bytes) = bytes.split_first_chunk::<8>()?;
        let hash_array: [u8; 8] = hash_bytes.try_into().ok()?;
        Some(Self {
            event_timestamp: Timestamp(i64::from_le_bytes(*event_bytes)),
            content_hash: u64::from_le_bytes(hash_array),
        })
    }
}

/// A table of row digests per feature view version.
///
/// # Specification
///
/// * Tables are named by [`FeatureViewId`]; a table that was never written holds nothing, so
///   a new view version has no digests and its first run writes every row.
/// * [`DigestStore::read_digests`] returns one slot per key, in request order (keys may repeat).
/// * [`DigestStore::write_digests`] replaces the digest of each given key (last one wins
///   within a batch); later reads see them at once, but they may stay in memory until
///   [`DigestStore::sync`]. A crash loses only digests, which costs a rewrite of their rows
///   next run, never a wrongly skipped row (digests are written after their rows).
/// * [`DigestStore::sync`] makes every digest written before it durable.
/// * [`DigestStore::delete_digests`] removes keys; [`DigestStore::drop_table`] a whole table.
/// * [`DigestStore::list_keys`] returns every key of a table (used to find entities that
///   disappeared from the source).
///
/// A backend may instead derive the digests from the online rows it stores (the embedded
/// store: [`crate::EmbeddedOnlineStore::digest_store`]). Then a key's digest is
/// [`RowDigest::of_row`] of its stored row, present exactly while the row is, written and
/// made durable with it in one transaction; [`DigestStore::write_digests`],
/// [`DigestStore::delete_digests`], [`DigestStore::sync`] and [`DigestStore::drop_table`]
/// have nothing to do, and [`DigestStore::list_keys`] lists the keys whose row the batch lane
/// wrote. Such a backend passes its own tests instead of [`check_digest_store_conformance`].
#[async_trait::async_trait]
pub trait DigestStore: Send + Sync + fmt::Debug + 'static {
    /// Reads one slot per key, in order.
    async fn read_digests(
        &self,
        table: &FeatureViewId,
        keys: &EntityKeyList,
    ) -> Result<Vec<Option<RowDigest>>, OnlineStoreError>;

    /// Stores digests, replacing older ones of the same keys.
    async fn write_digests(
        &self,
        table: &FeatureViewId,
        digests: Vec<(EntityKey, RowDigest)>,
    ) -> Result<(), OnlineStoreError>;

    /// Makes every digest written so far durable (a batch run calls it once, at its end).
    async fn sync(&self) -> Result<(), OnlineStoreError>;

    /// Removes the digests of the given keys, durably.
    async fn delete_digests(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<(), OnlineStoreError>;

    /// Every key that has a digest in a table.
    async fn list_keys(&self, table: &FeatureViewId) -> Result<Vec<EntityKey>, OnlineStoreError>;

    /// Removes a table; an unknown table is not an error.
    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError>;
}

/// A shared handle to any digest store.
pub type SharedDigestStore = Arc<dyn DigestStore>;

/// Digests kept in process memory: the reference implementation of [`DigestStore`].
#[derive(Debug, Default)]
pub struct MemoryDigestStore {
    tables: RwLock<HashMap<FeatureViewId, HashMap<EntityKey, RowDigest>>>,
}

impl MemoryDigestStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl DigestStore for MemoryDigestStore {
    async fn read_digests(
        &self,
        table: &FeatureViewId,
        keys: &EntityKeyList,
    ) -> Result<Vec<Option<RowDigest>>, OnlineStoreError> {
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        let Some(digests) = tables.get(table) else {
            return Ok(vec![None; keys.len()]);
        };
        Ok(keys.iter().map(|key| digests.get(key).copied()).collect())
    }

    async fn write_digests(
        &self,
        table: &FeatureViewId,
        digests: Vec<(EntityKey, RowDigest)>,
    ) -> Result<(), OnlineStoreError> {
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        let stored = tables.entry(table.clone()).or_default();
        for (key, digest) in digests {
            stored.insert(key, digest);
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        Ok(())
    }

    async fn delete_digests(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<(), OnlineStoreError> {
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(stored) = tables.get_mut(table) {
            for key in keys {
                stored.remove(key);
            }
        }
        Ok(())
    }

    async fn list_keys(&self, table: &FeatureViewId) -> Result<Vec<EntityKey>, OnlineStoreError> {
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        Ok(tables
            .get(table)
            .map(|digests| digests.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        self.tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(table);
        Ok(())
    }
}

/// Digests in a redb database: tables `digest/{view}/v{version}`, one write transaction per
/// batch, committed durably.
#[derive(Clone)]
pub struct RedbDigestStore {
    file: Arc<crate::redb_file::RedbFile>,
}

impl fmt::Debug for RedbDigestStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedbDigestStore")
            .finish_non_exhaustive()
    }
}

impl RedbDigestStore {
    /// Opens (or creates) a redb file of its own, for online backends that live elsewhere
    /// (Redis, DynamoDB). Blocks on file I/O.
    pub fn open(path: &Path) -> Result<Self, OnlineStoreError> {
        Ok(Self::from_file(crate::redb_file::RedbFile::open(
            path,
            DIGEST_BACKEND_NAME,
            crate::redb_file::DEFAULT_CACHE_BYTES,
        )?))
    }

    /// Keeps digests in an already open file.
    fn from_file(file: Arc<crate::redb_file::RedbFile>) -> Self {
        Self { file }
    }

    async fn run_blocking<Output, Work>(&self, work: Work) -> Result<Output, OnlineStoreError>
    where
        Output: Send + 'static,
        Work: FnOnce(&redb::Database) -> Result<Output, OnlineStoreError> + Send + 'static,
    {
        crate::redb_file::run_blocking(&self.file, work).await
    }
}

fn digest_table_name(table: &FeatureViewId) -> String {
    format!("digest/{}/v{}", table.name, table.version)
}

fn map_digest_redb_error(context: &str, error: impl Into<redb::Error>) -> OnlineStoreError {
    crate::redb_file::map_redb_error(DIGEST_BACKEND_NAME, context, error)
}

/// One stored (key, digest) entry, as a table read returns it.
type DigestEntry = (
    redb::AccessGuard<'static, &'static [u8]>,
    redb::AccessGuard<'static, &'static [u8]>,
);

/// How many entries a read steps over before it seeks afresh: stepping to the next leaf
/// entry is far cheaper than a lookup from the root, so keys that lie close together in the
/// table (a source sorted or clustered by entity) are read almost sequentially.
const MAX_ENTRIES_STEPPED: usize = 16;

/// Reads one slot per key, in the order of the keys, by visiting the keys in table order with
/// one forward cursor: the cursor steps over at most [`MAX_ENTRIES_STEPPED`] entries to reach
/// the next key and otherwise seeks to it. `decode` turns a stored value into its digest.
/// Shared by the digest tables and the embedded store's rows, whose digests are derived.
pub(crate) fn read_in_key_order(
    table: &crate::redb_file::ReadOnlyBytesTable,
    keys: &EntityKeyList,
    decode: impl Fn(&[u8]) -> Result<Option<RowDigest>, OnlineStoreError>,
    map_error: impl Fn(redb::StorageError) -> OnlineStoreError,
) -> Result<Vec<Option<RowDigest>>, OnlineStoreError> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|left, right| keys.get(*left).cmp(keys.get(*right)));
    let mut slots = vec![None; keys.len()];
    let mut cursor: Option<redb::Range<'static, &'static [u8], &'static [u8]>> = None;
    // The entry under the cursor, `None` once the cursor ran past the table's last entry.
    let mut current: Option<DigestEntry> = None;
    for index in order {
        let wanted = keys.get(index);
        let mut stepped = 0;
        loop {
            let position = current.as_ref().map(|(key, _)| key.value().cmp(wanted));
            match position {
                Some(std::cmp::Ordering::Equal) => {
                    if let Some((_, value)) = current.as_ref() {
                        slots[index] = decode(value.value())?;
                    }
                    break;
                }
                Some(std::cmp::Ordering::Greater) => break,
                // Past the table's end: no later key is stored either.
                None if cursor.is_some() => break,
                Some(std::cmp::Ordering::Less) if stepped < MAX_ENTRIES_STEPPED => {
                    stepped += 1;
                    current = match cursor.as_mut().and_then(Iterator::next) {
                        Some(entry) => Some(entry.map_err(&map_error)?),
                        None => None,
                    };
                }
                // No cursor yet, or the key is too far ahead: seek.
                _ => {
                    let mut range = table.range::<&[u8]>(wanted..).map_err(&map_error)?;
                    current = match range.next() {
                        Some(entry) => Some(entry.map_err(&map_error)?),
                        None => None,
                    };
                    cursor = Some(range);
                    stepped = MAX_ENTRIES_STEPPED;
                    if current.is_none() {
                        break;
                    }
                }
            }
        }
    }
    Ok(slots)
}

fn begin_durable_digest_write(
    database: &redb::Database,
) -> Result<redb::WriteTransaction, OnlineStoreError> {
    crate::redb_file::begin_durable_write(database, DIGEST_BACKEND_NAME)
}

#[async_trait::async_trait]
impl DigestStore for RedbDigestStore {
    async fn read_digests(
        &self,
        table: &FeatureViewId,
        keys: &EntityKeyList,
    ) -> Result<Vec<Option<RowDigest>>, OnlineStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let table_name = digest_table_name(table);
        let keys = keys.clone();
        self.run_blocking(move |database| {
            let Some(digests) =
                crate::redb_file::open_read_table(database, DIGEST_BACKEND_NAME, &table_name)?
            else {
                return Ok(vec![None; keys.len()]);
            };
            read_in_key_order(
                &digests,
                &keys,
                |stored| Ok(RowDigest::from_bytes(stored)),
                |error| map_digest_redb_error("cannot read digests", error),
            )
        })
        .await
    }

    async fn write_digests(
        &self,
        table: &FeatureViewId,
        digests: Vec<(EntityKey, RowDigest)>,
    ) -> Result<(), OnlineStoreError> {
        if digests.is_empty() {
            return Ok(());
        }
        let table_name = digest_table_name(table);
        self.run_blocking(move |database| {
            // Not fsynced here: `sync` (or any later durable commit to the file) persists
            // this commit together with every one before it.
            let mut transaction = database.begin_write().map_err(|error| {
                map_digest_redb_error("cannot begin a write transaction", error)
            })?;
            transaction
                .set_durability(redb::Durability::None)
                .map_err(|error| map_digest_redb_error("cannot defer durability", error))?;
            {
                let mut stored = transaction
                    .open_table(DigestTableDefinition::new(&table_name))
                    .map_err(|error| map_digest_redb_error("cannot open digests", error))?;
                for (key, digest) in &digests {
                    stored
                        .insert(key.as_bytes(), digest.to_bytes().as_slice())
                        .map_err(|error| map_digest_redb_error("cannot write a digest", error))?;
                }
            }
            transaction
                .commit()
                .map_err(|error| map_digest_redb_error("cannot commit digests", error))
        })
        .await
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        self.run_blocking(|database| crate::redb_file::sync_database(database, DIGEST_BACKEND_NAME))
            .await
    }

    async fn delete_digests(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<(), OnlineStoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let table_name = digest_table_name(table);
        let keys = keys.to_vec();
        self.run_blocking(move |database| {
            let transaction = begin_durable_digest_write(database)?;
            {
                let mut stored = transaction
                    .open_table(DigestTableDefinition::new(&table_name))
                    .map_err(|error| map_digest_redb_error("cannot open digests", error))?;
                for key in &keys {
                    stored
                        .remove(key.as_bytes())
                        .map_err(|error| map_digest_redb_error("cannot delete a digest", error))?;
                }
            }
            transaction
                .commit()
                .map_err(|error| map_digest_redb_error("cannot commit digests", error))
        })
        .await
    }

    async fn list_keys(&self, table: &FeatureViewId) -> Result<Vec<EntityKey>, OnlineStoreError> {
        let table_name = digest_table_name(table);
        self.run_blocking(move |database| {
            match crate::redb_file::open_read_table(database, DIGEST_BACKEND_NAME, &table_name)? {
                Some(digests) => {
                    crate::redb_file::keys_where(&digests, DIGEST_BACKEND_NAME, |_| Ok(true))
                }
                None => Ok(Vec::new()),
            }
        })
        .await
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        let table_name = digest_table_name(table);
        self.run_blocking(move |database| {
            let transaction = begin_durable_digest_write(database)?;
            transaction
                .delete_table(DigestTableDefinition::new(&table_name))
                .map_err(|error| map_digest_redb_error("cannot drop digests", error))?;
            transaction
                .commit()
                .map_err(|error| map_digest_redb_error("cannot commit digests", error))
        })
        .await
    }
}

/// The conformance suite of [`DigestStore`]: every backend runs it unchanged. Panics with the
/// failing point.
pub async fn check_digest_store_conformance(store: &dyn DigestStore) {
    let table = FeatureViewId {
        name: format!("digest_conformance_{}", std::process::id()),
        version: 1,
    };
    let other_version = FeatureViewId {
        version: 2,
        ..table.clone()
    };
    let key = |id: i64| EntityKey::from_int(id);
    let list = |ids: &[i64]| -> EntityKeyList {
        ids.iter()
            .map(|id| key(*id))
            .collect::<Vec<_>>()
            .iter()
            .collect()
    };
    let digest = |seconds: i64, hash: u64| RowDigest {
        event_timestamp: Timestamp::from_seconds(seconds),
        content_hash: hash,
    };
    let unknown = store
        .read_digests(&table, &list(&[1, 2]))
        .await
        .unwrap_or_default();
    assert_eq!(unknown, vec![None, None], "an unknown table holds nothing");
    store
        .write_digests(
            &table,
            vec![
                (key(1), digest(10, 1)),
                (key(2), digest(20, 2)),
                (key(1), digest(11, 3)),
            ],
        )
        .await
        .unwrap_or_else(|error| panic!("write_digests failed: {error}"));
    for moment in ["before", "after"] {
        if moment == "after" {
            store
                .sync()
                .await
                .unwrap_or_else(|error| panic!("sync failed: {error}"));
        }
        let read = store
            .read_digests(&table, &list(&[2, 3, 1]))
            .await
            .unwrap_or_else(|error| panic!("read_digests failed: {error}"));
        assert_eq!(
            read,
            vec![Some(digest(20, 2)), None, Some(digest(11, 3))],
            "{moment} a sync, slots follow the request order; the last digest of a key wins"
        );
    }
    let other = store
        .read_digests(&other_version, &list(&[1]))
        .await
        .unwrap_or_default();
    assert_eq!(other, vec![None], "another view version sees no digests");
    // Many keys in no order, with repeats and gaps: every slot still answers its own key
    // (stored digests are the even keys below 2,000).
    let many: Vec<(EntityKey, RowDigest)> = (3..1_000)
        .map(|half| (key(half * 2), digest(half, half as u64)))
        .collect();
    store
        .write_digests(&table, many)
        .await
        .unwrap_or_else(|error| panic!("write_digests failed: {error}"));
    let wanted: Vec<i64> = (0..3_000)
        .map(|step: i64| (step * 7_919) % 3_001 - 500)
        .chain([10, 10, 1_998, 1_999, 5_000])
        .collect();
    let read = store
        .read_digests(&table, &list(&wanted))
        .await
        .unwrap_or_else(|error| panic!("read_digests failed: {error}"));
    let expected: Vec<Option<RowDigest>> = wanted
        .iter()
        .map(|id| match id {
            1 => Some(digest(11, 3)),
            2 => Some(digest(20, 2)),
            6..=1_998 if id % 2 == 0 => Some(digest(id / 2, (id / 2) as u64)),
            _ => None,
        })
        .collect();
    assert_eq!(read.len(), wanted.len());
    for ((id, got), want) in wanted.iter().zip(&read).zip(&expected) {
        assert_eq!(got, want, "the digest of key {id}");
    }
    let many_keys: Vec<EntityKey> = (3..1_000).map(|half| key(half * 2)).collect();
    store
        .delete_digests(&table, &many_keys)
        .await
        .unwrap_or_else(|error| panic!("delete_digests failed: {error}"));
    let mut keys = store.list_keys(&table).await.unwrap_or_default();
    keys.sort_by(|left, right| left.as_bytes().cmp(right.as_bytes()));
    let mut expected = vec![key(1), key(2)];
    expected.sort_by(|left, right| left.as_bytes().cmp(right.as_bytes()));
    assert_eq!(keys, expected, "list_keys returns every key once");
    store
        .delete_digests(&table, &[key(2), key(9)])
        .await
        .unwrap_or_else(|error| panic!("delete_digests failed: {error}"));
    let after_delete = store
        .read_digests(&table, &list(&[1, 2]))
        .await
        .unwrap_or_default();
    assert_eq!(after_delete, vec![Some(digest(11, 3)), None]);
    store
        .drop_table(&table)
        .await
        .unwrap_or_else(|error| panic!("drop_table failed: {error}"));
    store
        .drop_table(&table)
        .await
        .unwrap_or_else(|error| panic!("dropping an unknown table failed: {error}"));
    let after_drop = store
        .read_digests(&table, &list(&[1]))
        .await
        .unwrap_or_default();
    assert_eq!(after_drop, vec![None], "a dropped table holds nothing");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_through_bytes() {
        let digest = RowDigest {
            event_timestamp: Timestamp(-5),
            content_hash: u64::MAX - 3,
        };
        assert_eq!(RowDigest::from_bytes(&digest.to_bytes()), Some(digest));
        assert_eq!(RowDigest::from_bytes(&[1, 2, 3]), None);
    }

    #[tokio::test]
    async fn memory_digest_store_conforms() {
        check_digest_store_conformance(&MemoryDigestStore::new()).await;
    }

    #[tokio::test]
    async fn redb_digest_store_conforms() {
        let folder = tempfile::tempdir().unwrap();
        let store = RedbDigestStore::open(&folder.path().join("digests.redb")).unwrap();
        check_digest_store_conformance(&store).await;
    }
}
