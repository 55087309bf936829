//! The embedded online store: a single redb file, for one-machine deployments and the demo.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use larder_core::{EntityKey, FeatureViewId, Timestamp, WriteLane};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::{OnlineRow, OnlineStore, OnlineStoreError, RowSwap, WriteDurability, WriteSummary};

/// The backend name in errors and metrics.
const BACKEND_NAME: &str = "embedded";

/// Length of the header stored before the encoded values of every row: event timestamp
/// (i64 LE), write timestamp (i64 LE), lane code (u8).
const STORED_ROW_HEADER_LENGTH: usize = 17;

/// The redb table type of every feature view table: entity key bytes to stored row bytes.
type RowTableDefinition<'name> = TableDefinition<'name, &'static [u8], &'static [u8]>;

/// An online store in one redb database file on local disk.
///
/// Each feature view version is a redb table named `fv/{name}/v{version}`, keyed by the
/// entity key's canonical bytes. A stored value is a 17-byte header (event timestamp and write
/// timestamp as little-endian `i64`, then the lane code) followed by the encoded values.
///
/// Every batch write is one redb write transaction, committed with immediate durability unless
/// it is [`WriteDurability::Deferred`] (then made durable by the next sync): when an immediate
/// write returns, the whole batch is on disk, and a crash (even a
/// `SIGKILL` halfway through a commit) leaves either all of a batch or none of it. Writes are
/// serialized by redb (one write transaction at a time), which makes the compare-and-write of
/// every key atomic. Reads run in parallel with each other and with writes, each batch read in
/// one read transaction (a consistent snapshot). All redb calls run on tokio's blocking pool.
///
/// Only one process may open the file at a time; another process gets
/// [`OnlineStoreError::Locked`]. Within a process, share one store (it is cheap to clone)
/// instead of opening the file twice: a second open of an already open file fails as well.
#[derive(Clone)]
pub struct EmbeddedOnlineStore {
    file: Arc<crate::redb_file::RedbFile>,
}

impl fmt::Debug for EmbeddedOnlineStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("EmbeddedOnlineStore")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

impl EmbeddedOnlineStore {
    /// Opens the database file at `path`, creating it and its parent directories if needed.
    ///
    /// After a crash, opening repairs the file first, which reads all of it. This blocks the
    /// calling thread on file I/O: call it at startup, or inside `spawn_blocking`.
    ///
    /// Returns [`OnlineStoreError::Locked`] if the file is open in another process (or
    /// already open in this one).
    pub fn open(path: &Path) -> Result<Self, OnlineStoreError> {
        Self::open_with_cache(path, crate::redb_file::DEFAULT_CACHE_BYTES)
    }

    /// [`EmbeddedOnlineStore::open`] with a page cache of at most `cache_bytes` (its share of
    /// the process's memory; reads past it go to the operating system's file cache).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, OnlineStoreError> {
        let file = crate::redb_file::RedbFile::open(path, BACKEND_NAME, cache_bytes)?;
        file.run(drop_legacy_digest_tables)?;
        Ok(Self { file })
    }

    /// The batch lane's change detection over this store: digests derived from the stored
    /// rows ([`EmbeddedRowDigests`]), so they live and die with the rows.
    pub fn digest_store(&self) -> EmbeddedRowDigests {
        EmbeddedRowDigests {
            file: Arc::clone(&self.file),
        }
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Runs blocking redb work on tokio's blocking pool with a handle to the database.
    async fn run_blocking<Output, Work>(&self, work: Work) -> Result<Output, OnlineStoreError>
    where
        Output: Send + 'static,
        Work: FnOnce(&redb::Database) -> Result<Output, OnlineStoreError> + Send + 'static,
    {
        crate::redb_file::run_blocking(&self.file, work).await
    }
}

/// Reads of at most this many keys run on the calling task instead of the blocking pool.
const INLINE_READ_MAX_KEYS: usize = 128;

#[async_trait::async_trait]
impl OnlineStore for EmbeddedOnlineStore {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    async fn write_rows_with(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
        durability: WriteDurability,
    ) -> Result<WriteSummary, OnlineStoreError> {
        if rows.is_empty() {
            return Ok(WriteSummary::default());
        }
        let table_name = redb_table_name(table);
        self.run_blocking(move |database| {
            write_rows_in_one_transaction(database, &table_name, &rows, durability)
        })
        .await
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        self.run_blocking(|database| crate::redb_file::sync_database(database, BACKEND_NAME))
            .await
    }

    async fn swap_rows(
        &self,
        table: &FeatureViewId,
        swaps: Vec<RowSwap>,
    ) -> Result<Vec<bool>, OnlineStoreError> {
        if swaps.is_empty() {
            return Ok(Vec::new());
        }
        let table_name = redb_table_name(table);
        self.run_blocking(move |database| {
            swap_rows_in_one_transaction(database, &table_name, &swaps)
        })
        .await
    }

    async fn read_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let table_name = redb_table_name(table);
        if keys.len() <= INLINE_READ_MAX_KEYS {
            // A small read of cached pages takes tens of microseconds: less than the two
            // thread hand-offs of the blocking pool (measured under serving load).
            return self.file.run(|database| {
                read_rows_in_one_transaction(database, &table_name, keys.to_vec())
            });
        }
        let keys = keys.to_vec();
        self.run_blocking(move |database| read_rows_in_one_transaction(database, &table_name, keys))
            .await
    }

    async fn delete_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, OnlineStoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let table_name = redb_table_name(table);
        let keys = keys.to_vec();
        self.run_blocking(move |database| {
            delete_rows_in_one_transaction(database, &table_name, &keys)
        })
        .await
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        let table_name = redb_table_name(table);
        self.run_blocking(move |database| drop_table_in_one_transaction(database, &table_name))
            .await
    }
}

/// The prefix of the digest tables that files written before digests were derived from rows
/// still hold (`digest/{view}/v{N}`).
const LEGACY_DIGEST_TABLE_PREFIX: &str = "digest/";

/// Drops the digest tables of files from before [`EmbeddedRowDigests`]: the rows now carry
/// their digests, and a stale table would only take space. Touches nothing when there is none.
fn drop_legacy_digest_tables(database: &redb::Database) -> Result<(), OnlineStoreError> {
    let legacy: Vec<redb::UntypedTableHandle> = database
        .begin_read()
        .map_err(|error| map_redb_error("cannot begin a read", error))?
        .list_tables()
        .map_err(|error| map_redb_error("cannot list tables", error))?
        .filter(|table| table.name().starts_with(LEGACY_DIGEST_TABLE_PREFIX))
        .collect();
    if legacy.is_empty() {
        return Ok(());
    }
    let transaction = begin_durable_write(database)?;
    for table in legacy {
        transaction
            .delete_table(table)
            .map_err(|error| map_redb_error("cannot drop a digest table", error))?;
    }
    transaction
        .commit()
        .map_err(|error| map_redb_error("cannot commit dropping digest tables", error))
}

/// The batch lane's row digests over an [`EmbeddedOnlineStore`], derived from its rows.
///
/// A key's digest is its stored row's event time and the hash of its stored values
/// ([`crate::RowDigest::of_row`]): what the write path computed when it wrote the row. Reading
/// them visits the same B-tree leaves the following write of changed rows visits, and there
/// is no second table to write, commit and sync; a row and its digest are one value, so no
/// crash can leave one without the other. Writing, deleting, syncing and dropping digests
/// have nothing to do: the online store's own writes, deletes and drops do it. A row another
/// lane wrote has a digest too (a newer one makes the batch row stale, an equal one
/// unchanged), but [`crate::DigestStore::list_keys`] lists only the rows the batch lane wrote,
/// as a digest table would.
#[derive(Clone, Debug)]
pub struct EmbeddedRowDigests {
    file: Arc<crate::redb_file::RedbFile>,
}

/// The digest of a stored row.
fn stored_row_digest(stored: &[u8]) -> Result<crate::RowDigest, OnlineStoreError> {
    let header = decode_stored_row_header(stored)?;
    Ok(crate::RowDigest::of_row(
        header.event_timestamp,
        &stored[STORED_ROW_HEADER_LENGTH..],
    ))
}

#[async_trait::async_trait]
impl crate::DigestStore for EmbeddedRowDigests {
    async fn read_digests(
        &self,
        table: &FeatureViewId,
        keys: &larder_core::EntityKeyList,
    ) -> Result<Vec<Option<crate::RowDigest>>, OnlineStoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let table_name = redb_table_name(table);
        let keys = keys.clone();
        crate::redb_file::run_blocking(&self.file, move |database| {
            let Some(rows) =
                crate::redb_file::open_read_table(database, BACKEND_NAME, &table_name)?
            else {
                return Ok(vec![None; keys.len()]);
            };
            crate::digest::read_in_key_order(
                &rows,
                &keys,
                |stored| stored_row_digest(stored).map(Some),
                |error| map_redb_error("cannot read a row", error),
            )
        })
        .await
    }

    async fn write_digests(
        &self,
        _table: &FeatureViewId,
        _digests: Vec<(EntityKey, crate::RowDigest)>,
    ) -> Result<(), OnlineStoreError> {
        // The rows written before carry their digests.
        Ok(())
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        // Digests are as durable as their rows, which the online store makes durable.
        Ok(())
    }

    async fn delete_digests(
        &self,
        _table: &FeatureViewId,
        _keys: &[EntityKey],
    ) -> Result<(), OnlineStoreError> {
        // Deleting the rows deleted their digests.
        Ok(())
    }

    async fn list_keys(&self, table: &FeatureViewId) -> Result<Vec<EntityKey>, OnlineStoreError> {
        let table_name = redb_table_name(table);
        crate::redb_file::run_blocking(&self.file, move |database| {
            match crate::redb_file::open_read_table(database, BACKEND_NAME, &table_name)? {
                Some(rows) => crate::redb_file::keys_where(&rows, BACKEND_NAME, |stored| {
                    Ok(decode_stored_row_header(stored)?.lane == WriteLane::Batch)
                }),
                None => Ok(Vec::new()),
            }
        })
        .await
    }

    async fn drop_table(&self, _table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        // Dropping the online table dropped its digests.
        Ok(())
    }
}

/// The redb table name of a feature view version.
fn redb_table_name(table: &FeatureViewId) -> String {
    format!("fv/{}/v{}", table.name, table.version)
}

/// Starts a write transaction that commits with immediate durability.
fn begin_durable_write(
    database: &redb::Database,
) -> Result<redb::WriteTransaction, OnlineStoreError> {
    crate::redb_file::begin_durable_write(database, BACKEND_NAME)
}

/// Applies a batch in one write transaction, row by row, keeping the newest event time.
fn write_rows_in_one_transaction(
    database: &redb::Database,
    table_name: &str,
    rows: &[OnlineRow],
    durability: WriteDurability,
) -> Result<WriteSummary, OnlineStoreError> {
    let mut transaction = begin_durable_write(database)?;
    if durability == WriteDurability::Deferred {
        // No fsync: the commit is visible at once and persisted by the next durable commit
        // ([`OnlineStore::sync`]); a crash before that rolls the file back to the last one.
        transaction
            .set_durability(redb::Durability::None)
            .map_err(|error| map_redb_error("cannot defer durability", error))?;
    }
    let mut summary = WriteSummary::default();
    {
        let mut table = transaction
            .open_table(RowTableDefinition::new(table_name))
            .map_err(|error| map_redb_error("cannot open a table for writing", error))?;
        let mut stored_value = Vec::new();
        // In key order: each leaf of the tree is then read and copied once while it is hot,
        // instead of again for each of its rows scattered through the batch.
        let mut in_key_order: Vec<&OnlineRow> = rows.iter().collect();
        in_key_order.sort_unstable_by(|left, right| left.entity_key.cmp(&right.entity_key));
        for row in in_key_order {
            let key = row.entity_key.as_bytes();
            let stored_event_timestamp = match table
                .get(key)
                .map_err(|error| map_redb_error("cannot read a row", error))?
            {
                Some(stored) => Some(decode_stored_row_header(stored.value())?.event_timestamp),
                None => None,
            };
            if stored_event_timestamp.is_some_and(|stored| stored > row.event_timestamp) {
                summary.skipped_stale += 1;
                continue;
            }
            stored_value.clear();
            encode_stored_row(row, &mut stored_value);
            table
                .insert(key, stored_value.as_slice())
                .map_err(|error| map_redb_error("cannot write a row", error))?;
            summary.written += 1;
        }
    }
    transaction
        .commit()
        .map_err(|error| map_redb_error("cannot commit a write", error))?;
    Ok(summary)
}

/// Applies the swaps whose key still holds the expected row, in one durable transaction.
fn swap_rows_in_one_transaction(
    database: &redb::Database,
    table_name: &str,
    swaps: &[RowSwap],
) -> Result<Vec<bool>, OnlineStoreError> {
    let transaction = begin_durable_write(database)?;
    let mut applied = Vec::with_capacity(swaps.len());
    {
        let mut table = transaction
            .open_table(RowTableDefinition::new(table_name))
            .map_err(|error| map_redb_error("cannot open a table for writing", error))?;
        let mut stored_value = Vec::new();
        for swap in swaps {
            let key = swap.row.entity_key.as_bytes();
            let stored = match table
                .get(key)
                .map_err(|error| map_redb_error("cannot read a row", error))?
            {
                Some(stored) => Some(decode_stored_row(
                    swap.row.entity_key.clone(),
                    stored.value(),
                )?),
                None => None,
            };
            let applies = swap.expects(stored.as_ref());
            if applies {
                stored_value.clear();
                encode_stored_row(&swap.row, &mut stored_value);
                table
                    .insert(key, stored_value.as_slice())
                    .map_err(|error| map_redb_error("cannot write a row", error))?;
            }
            applied.push(applies);
        }
    }
    transaction
        .commit()
        .map_err(|error| map_redb_error("cannot commit a write", error))?;
    Ok(applied)
}

/// Reads every key in one read transaction (a consistent snapshot).
fn read_rows_in_one_transaction(
    database: &redb::Database,
    table_name: &str,
    keys: Vec<EntityKey>,
) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
    let Some(table) = crate::redb_file::open_read_table(database, BACKEND_NAME, table_name)? else {
        return Ok(vec![None; keys.len()]);
    };
    let mut slots = Vec::with_capacity(keys.len());
    for key in keys {
        let slot = match table
            .get(key.as_bytes())
            .map_err(|error| map_redb_error("cannot read a row", error))?
        {
            Some(stored) => Some(decode_stored_row(key, stored.value())?),
            None => None,
        };
        slots.push(slot);
    }
    Ok(slots)
}

/// Removes keys in one write transaction; commits only if a row existed.
fn delete_rows_in_one_transaction(
    database: &redb::Database,
    table_name: &str,
    keys: &[EntityKey],
) -> Result<u64, OnlineStoreError> {
    let transaction = begin_durable_write(database)?;
    let mut deleted_count = 0;
    {
        // Opening creates a missing table; aborting below undoes that when nothing existed.
        let mut table = transaction
            .open_table(RowTableDefinition::new(table_name))
            .map_err(|error| map_redb_error("cannot open a table for deleting", error))?;
        for key in keys {
            let removed = table
                .remove(key.as_bytes())
                .map_err(|error| map_redb_error("cannot delete a row", error))?;
            if removed.is_some() {
                deleted_count += 1;
            }
        }
    }
    if deleted_count == 0 {
        transaction
            .abort()
            .map_err(|error| map_redb_error("cannot abort a delete", error))?;
        return Ok(0);
    }
    transaction
        .commit()
        .map_err(|error| map_redb_error("cannot commit a delete", error))?;
    Ok(deleted_count)
}

/// Deletes a whole table in one write transaction; commits only if it existed.
fn drop_table_in_one_transaction(
    database: &redb::Database,
    table_name: &str,
) -> Result<(), OnlineStoreError> {
    let transaction = begin_durable_write(database)?;
    let existed = transaction
        .delete_table(RowTableDefinition::new(table_name))
        .map_err(|error| map_redb_error("cannot drop a table", error))?;
    if !existed {
        return transaction
            .abort()
            .map_err(|error| map_redb_error("cannot abort a table drop", error));
    }
    transaction
        .commit()
        .map_err(|error| map_redb_error("cannot commit a table drop", error))
}

/// The metadata stored before the values of every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoredRowHeader {
    event_timestamp: Timestamp,
    write_timestamp: Timestamp,
    lane: WriteLane,
}

/// Appends the stored form of a row (header, then values) to `out`.
fn encode_stored_row(row: &OnlineRow, out: &mut Vec<u8>) {
    out.reserve(STORED_ROW_HEADER_LENGTH + row.values.len());
    out.extend_from_slice(&row.event_timestamp.as_micros().to_le_bytes());
    out.extend_from_slice(&row.write_timestamp.as_micros().to_le_bytes());
    out.push(row.lane.code());
    out.extend_from_slice(&row.values);
}

/// Decodes the header of a stored row.
fn decode_stored_row_header(stored: &[u8]) -> Result<StoredRowHeader, OnlineStoreError> {
    let corrupt = |message: String| OnlineStoreError::Corrupt {
        backend: BACKEND_NAME,
        message,
    };
    let Some((header, _values)) = stored.split_first_chunk::<STORED_ROW_HEADER_LENGTH>() else {
        return Err(corrupt(format!(
            "stored row of {} bytes is shorter than its {STORED_ROW_HEADER_LENGTH}-byte header",
            stored.len()
        )));
    };
    let (event_timestamp_bytes, rest) = header.split_at(8);
    let (write_timestamp_bytes, lane_byte) = rest.split_at(8);
    let read_i64 = |bytes: &[u8]| {
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        i64::from_le_bytes(array)
    };
    let lane_code = lane_byte[0];
    let lane = WriteLane::from_code(lane_code)
        .ok_or_else(|| corrupt(format!("stored row has unknown lane code {lane_code}")))?;
    Ok(StoredRowHeader {
        event_timestamp: Timestamp(read_i64(event_timestamp_bytes)),
        write_timestamp: Timestamp(read_i64(write_timestamp_bytes)),
        lane,
    })
}

/// Decodes a stored row of `entity_key`.
fn decode_stored_row(entity_key: EntityKey, stored: &[u8]) -> Result<OnlineRow, OnlineStoreError> {
    let header = decode_stored_row_header(stored)?;
    Ok(OnlineRow {
        entity_key,
        event_timestamp: header.event_timestamp,
        write_timestamp: header.write_timestamp,
        lane: header.lane,
        values: stored[STORED_ROW_HEADER_LENGTH..].to_vec(),
    })
}

/// Maps any redb error to an online store error, saying what the store was doing.
fn map_redb_error(context: &str, error: impl Into<redb::Error>) -> OnlineStoreError {
    crate::redb_file::map_redb_error(BACKEND_NAME, context, error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    use larder_core::Value;
    use larder_core::codec::{decode_row, encode_row_to_vec};

    use super::*;

    fn driver_stats_table() -> FeatureViewId {
        FeatureViewId {
            name: "driver_stats".to_string(),
            version: 3,
        }
    }

    fn row_with_marker(key_number: i64, event_time: i64, marker: i64) -> OnlineRow {
        OnlineRow {
            entity_key: EntityKey::from_int(key_number),
            event_timestamp: Timestamp(event_time),
            write_timestamp: Timestamp(event_time + 1),
            lane: WriteLane::Stream,
            values: encode_row_to_vec(&[Value::Int64(marker)]),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_store_passes_the_conformance_suite() {
        let directory = tempfile::tempdir().unwrap();
        let store = EmbeddedOnlineStore::open(&directory.path().join("online.redb")).unwrap();
        crate::conformance::run_all(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn digests_are_those_of_the_stored_rows_and_go_with_them() {
        use crate::{DigestStore, RowDigest};
        let directory = tempfile::tempdir().unwrap();
        let store = EmbeddedOnlineStore::open(&directory.path().join("online.redb")).unwrap();
        let digests = store.digest_store();
        let table = driver_stats_table();
        let keys = |ids: &[i64]| -> larder_core::EntityKeyList {
            ids.iter()
                .map(|id| EntityKey::from_int(*id))
                .collect::<Vec<_>>()
                .iter()
                .collect()
        };
        let batch_row = |key: i64, event_time: i64, marker: i64| OnlineRow {
            lane: WriteLane::Batch,
            ..row_with_marker(key, event_time, marker)
        };
        let unknown_table = digests.read_digests(&table, &keys(&[1])).await.unwrap();
        assert_eq!(unknown_table, vec![None]);
        assert!(digests.list_keys(&table).await.unwrap().is_empty());

        let rows = vec![batch_row(1, 10, 100), batch_row(2, 20, 200)];
        let stream_row = row_with_marker(3, 30, 300);
        let expected: Vec<Option<RowDigest>> = rows
            .iter()
            .chain([&stream_row])
            .map(|row| Some(RowDigest::of_row(row.event_timestamp, &row.values)))
            .chain([None])
            .collect();
        store.write_rows(&table, rows.clone()).await.unwrap();
        store.write_rows(&table, vec![stream_row]).await.unwrap();
        // In any order, repeated keys included: one slot per key.
        let read = digests
            .read_digests(&table, &keys(&[3, 1, 4, 2, 1]))
            .await
            .unwrap();
        assert_eq!(
            read,
            vec![
                expected[2],
                expected[0],
                expected[3],
                expected[1],
                expected[0]
            ]
        );
        let mut listed = digests.list_keys(&table).await.unwrap();
        listed.sort();
        assert_eq!(
            listed,
            vec![EntityKey::from_int(1), EntityKey::from_int(2)],
            "only the rows the batch lane wrote"
        );

        // Digests cannot disagree with their rows: writing one changes nothing, a newer row
        // changes it.
        let bogus = RowDigest {
            event_timestamp: Timestamp(99),
            content_hash: 7,
        };
        digests
            .write_digests(&table, vec![(EntityKey::from_int(1), bogus)])
            .await
            .unwrap();
        let newer = batch_row(2, 25, 250);
        store.write_rows(&table, vec![newer.clone()]).await.unwrap();
        let read = digests.read_digests(&table, &keys(&[1, 2])).await.unwrap();
        assert_eq!(
            read,
            vec![
                expected[0],
                Some(RowDigest::of_row(newer.event_timestamp, &newer.values))
            ]
        );

        store
            .delete_rows(&table, &[EntityKey::from_int(1)])
            .await
            .unwrap();
        let read = digests.read_digests(&table, &keys(&[1, 2])).await.unwrap();
        assert_eq!(read[0], None, "a deleted row takes its digest");
        assert!(read[1].is_some());
        store.drop_table(&table).await.unwrap();
        let read = digests.read_digests(&table, &keys(&[2])).await.unwrap();
        assert_eq!(read, vec![None], "a dropped table takes its digests");
    }

    #[test]
    fn opening_drops_the_digest_tables_of_older_files() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("online.redb");
        {
            let database = redb::Database::create(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            {
                let mut legacy = transaction
                    .open_table(RowTableDefinition::new("digest/driver_stats/v3"))
                    .unwrap();
                legacy
                    .insert(b"key".as_slice(), b"digest".as_slice())
                    .unwrap();
                let mut rows = transaction
                    .open_table(RowTableDefinition::new("fv/driver_stats/v3"))
                    .unwrap();
                rows.insert(b"key".as_slice(), b"row".as_slice()).unwrap();
            }
            transaction.commit().unwrap();
        }
        drop(EmbeddedOnlineStore::open(&path).unwrap());
        let database = redb::Database::open(&path).unwrap();
        let names: Vec<String> = database
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|table| table.name().to_string())
            .collect();
        assert_eq!(names, vec!["fv/driver_stats/v3".to_string()]);
    }

    #[test]
    fn stored_rows_round_trip_with_a_17_byte_header() {
        let row = row_with_marker(7, -3, 42);
        let mut stored = Vec::new();
        encode_stored_row(&row, &mut stored);
        assert_eq!(stored.len(), STORED_ROW_HEADER_LENGTH + row.values.len());
        assert_eq!(&stored[..8], &(-3i64).to_le_bytes());
        assert_eq!(&stored[8..16], &(-2i64).to_le_bytes());
        assert_eq!(stored[16], WriteLane::Stream.code());
        assert_eq!(
            decode_stored_row(row.entity_key.clone(), &stored).unwrap(),
            row
        );
    }

    #[tokio::test]
    async fn rows_survive_close_and_reopen_in_created_directories() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory
            .path()
            .join("nested")
            .join("deeper")
            .join("online.redb");
        let rows = vec![row_with_marker(1, 100, 1), row_with_marker(2, 200, 2)];
        {
            let store = EmbeddedOnlineStore::open(&path).unwrap();
            assert_eq!(store.path(), path);
            store
                .write_rows(&driver_stats_table(), rows.clone())
                .await
                .unwrap();
        }
        let reopened_store = EmbeddedOnlineStore::open(&path).unwrap();
        let keys = [EntityKey::from_int(1), EntityKey::from_int(2)];
        let slots = reopened_store
            .read_rows(&driver_stats_table(), &keys)
            .await
            .unwrap();
        assert_eq!(slots, vec![Some(rows[0].clone()), Some(rows[1].clone())]);
        // The event time of a reopened row still orders writes.
        let summary = reopened_store
            .write_rows(&driver_stats_table(), vec![row_with_marker(1, 50, 3)])
            .await
            .unwrap();
        assert_eq!(
            summary,
            WriteSummary {
                written: 0,
                skipped_stale: 1
            }
        );
    }

    /// redb locks the file with open-file-description locks, which also conflict within one
    /// process: a second open of an open file is refused, and reported as `Locked`.
    #[tokio::test]
    async fn opening_an_open_file_again_is_refused_as_locked() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("online.redb");
        let first_store = EmbeddedOnlineStore::open(&path).unwrap();
        match EmbeddedOnlineStore::open(&path) {
            Err(OnlineStoreError::Locked { path: locked_path }) => {
                assert_eq!(locked_path, path.display().to_string())
            }
            other => panic!("second open of an open file gave {other:?}, expected Locked"),
        }
        let message = EmbeddedOnlineStore::open(&path).unwrap_err().to_string();
        assert!(message.contains("in use by another process"), "{message}");
        drop(first_store);
        EmbeddedOnlineStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn corrupt_stored_rows_are_errors_not_panics() {
        let directory = tempfile::tempdir().unwrap();
        let store = EmbeddedOnlineStore::open(&directory.path().join("online.redb")).unwrap();
        let table = driver_stats_table();
        let mut unknown_lane_row = Vec::new();
        encode_stored_row(&row_with_marker(2, 10, 2), &mut unknown_lane_row);
        unknown_lane_row[16] = 9;
        {
            let transaction = store.file.database().unwrap().begin_write().unwrap();
            {
                let mut redb_table = transaction
                    .open_table(RowTableDefinition::new(&redb_table_name(&table)))
                    .unwrap();
                redb_table
                    .insert(EntityKey::from_int(1).as_bytes(), [1u8, 2, 3].as_slice())
                    .unwrap();
                redb_table
                    .insert(
                        EntityKey::from_int(2).as_bytes(),
                        unknown_lane_row.as_slice(),
                    )
                    .unwrap();
            }
            transaction.commit().unwrap();
        }
        for key_number in [1, 2] {
            let read_result = store
                .read_rows(&table, &[EntityKey::from_int(key_number)])
                .await;
            assert!(
                matches!(
                    read_result,
                    Err(OnlineStoreError::Corrupt {
                        backend: "embedded",
                        ..
                    })
                ),
                "{read_result:?}"
            );
        }
        // A write cannot order itself against a corrupt row: it fails and changes nothing.
        let write_result = store
            .write_rows(
                &table,
                vec![row_with_marker(3, 10, 3), row_with_marker(1, 10, 1)],
            )
            .await;
        assert!(
            matches!(write_result, Err(OnlineStoreError::Corrupt { .. })),
            "{write_result:?}"
        );
        assert_eq!(
            store
                .read_rows(&table, &[EntityKey::from_int(3)])
                .await
                .unwrap(),
            vec![None]
        );
        // Deleting the corrupt row repairs the key.
        assert_eq!(
            store
                .delete_rows(&table, &[EntityKey::from_int(1)])
                .await
                .unwrap(),
            1
        );
        let summary = store
            .write_rows(&table, vec![row_with_marker(1, 10, 1)])
            .await
            .unwrap();
        assert_eq!(summary.written, 1);
    }

    /// Set in the child process of the crash test: the database the child writes to.
    const CRASH_CHILD_DATABASE_ENV: &str = "LARDER_ONLINE_CRASH_TEST_CHILD_DATABASE";
    /// Every batch of the crash test writes all these keys.
    const CRASH_TEST_KEY_COUNT: i64 = 300;
    /// Batches the child must report committed before it is killed.
    const CRASH_TEST_BATCHES_BEFORE_KILL: i64 = 5;
    const CRASH_TEST_PROGRESS_PREFIX: &str = "crash-test-committed-batch:";

    fn crash_test_table() -> FeatureViewId {
        FeatureViewId {
            name: "crash_test".to_string(),
            version: 1,
        }
    }

    /// The row of `key_number` in batch `batch_number`: everything in it says which batch.
    fn crash_test_row(key_number: i64, batch_number: i64) -> OnlineRow {
        OnlineRow {
            entity_key: EntityKey::from_int(key_number),
            event_timestamp: Timestamp(batch_number),
            write_timestamp: Timestamp(batch_number),
            lane: WriteLane::Batch,
            values: encode_row_to_vec(&[
                Value::Int64(batch_number),
                Value::Bytes(vec![batch_number as u8; 512]),
            ]),
        }
    }

    /// Set in the child process of the crash test when it writes deferred batches.
    const CRASH_CHILD_DEFERRED_ENV: &str = "LARDER_ONLINE_CRASH_TEST_CHILD_DEFERRED";
    /// In the deferred crash test, the child syncs after every this many batches.
    const CRASH_TEST_BATCHES_PER_SYNC: i64 = 3;

    /// The child's side of the crash test: writes whole batches until it is killed, printing
    /// each batch number once its write has returned (immediate writes) or once a sync after
    /// it has returned (deferred writes, synced every few batches).
    fn write_batches_until_killed(database_path: &Path, durability: WriteDurability) -> ! {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = EmbeddedOnlineStore::open(database_path).unwrap();
        let mut stdout = std::io::stdout();
        let mut batch_number: i64 = 0;
        loop {
            batch_number += 1;
            let rows = (0..CRASH_TEST_KEY_COUNT)
                .map(|key_number| crash_test_row(key_number, batch_number))
                .collect();
            runtime
                .block_on(store.write_rows_with(&crash_test_table(), rows, durability))
                .unwrap();
            if durability == WriteDurability::Deferred {
                if batch_number % CRASH_TEST_BATCHES_PER_SYNC != 0 {
                    continue;
                }
                runtime.block_on(store.sync()).unwrap();
            }
            writeln!(stdout, "{CRASH_TEST_PROGRESS_PREFIX}{batch_number}").unwrap();
            stdout.flush().unwrap();
        }
    }

    /// Runs this test binary again as a child that writes batches in a loop, kills it with
    /// SIGKILL while it writes, and checks that the database opens and holds exactly one whole
    /// committed batch, at least as new as the last one the child reported.
    #[test]
    fn embedded_store_keeps_whole_committed_batches_after_sigkill() {
        crash_test(
            "embedded_store_keeps_whole_committed_batches_after_sigkill",
            WriteDurability::Immediate,
        );
    }

    /// The same with deferred writes synced every few batches: the database holds one whole
    /// batch, at least as new as the last one synced.
    #[test]
    fn embedded_store_keeps_whole_synced_batches_of_deferred_writes_after_sigkill() {
        crash_test(
            "embedded_store_keeps_whole_synced_batches_of_deferred_writes_after_sigkill",
            WriteDurability::Deferred,
        );
    }

    /// The parent's side of the crash tests (in the child, writes until killed).
    fn crash_test(test_function: &str, durability: WriteDurability) {
        if let Ok(database_path) = std::env::var(CRASH_CHILD_DATABASE_ENV) {
            let durability = if std::env::var_os(CRASH_CHILD_DEFERRED_ENV).is_some() {
                WriteDurability::Deferred
            } else {
                WriteDurability::Immediate
            };
            write_batches_until_killed(Path::new(&database_path), durability);
        }
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("online.redb");
        let module_path_without_crate = module_path!()
            .split_once("::")
            .map(|(_, rest)| rest)
            .unwrap();
        let test_name = format!("{module_path_without_crate}::{test_function}");
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                test_name.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_DATABASE_ENV, &path)
            .stdout(Stdio::piped());
        if durability == WriteDurability::Deferred {
            command.env(CRASH_CHILD_DEFERRED_ENV, "1");
        }
        let mut child = command.spawn().unwrap();
        let child_stdout = BufReader::new(child.stdout.take().unwrap());
        let (line_sender, line_receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in child_stdout.lines() {
                let Ok(line) = line else { break };
                if line_sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut last_reported_batch = 0;
        while last_reported_batch < CRASH_TEST_BATCHES_BEFORE_KILL {
            let Ok(line) = line_receiver.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                panic!("the crash test child stopped reporting after batch {last_reported_batch}");
            };
            // libtest may print the test name on the same line, before the child's output.
            if let Some((_, batch_text)) = line.split_once(CRASH_TEST_PROGRESS_PREFIX) {
                last_reported_batch = batch_text.trim().parse().unwrap();
            }
        }
        child.kill().unwrap();
        let exit_status = child.wait().unwrap();
        assert!(
            !exit_status.success(),
            "the child was killed, not finished: {exit_status:?}"
        );

        {
            let mut database = redb::Database::create(&path).unwrap();
            database.check_integrity().unwrap();
        }
        let store = EmbeddedOnlineStore::open(&path).unwrap();
        let transaction = store.file.database().unwrap().begin_read().unwrap();
        let table = transaction
            .open_table(RowTableDefinition::new(&redb_table_name(
                &crash_test_table(),
            )))
            .unwrap();
        let mut stored_batch_numbers = std::collections::BTreeSet::new();
        let mut stored_row_count = 0;
        for entry in table.iter().unwrap() {
            let (key, stored) = entry.unwrap();
            let row =
                decode_stored_row(EntityKey::from_bytes(key.value().to_vec()), stored.value())
                    .unwrap();
            let values = decode_row(&row.values).unwrap();
            let Some(Value::Int64(batch_number)) = values.first() else {
                panic!("row {row:?} has no batch number");
            };
            let key_number = match row.entity_key.values().unwrap().as_slice() {
                [Value::Int64(key_number)] => *key_number,
                other => panic!("unexpected key {other:?}"),
            };
            assert_eq!(
                row,
                crash_test_row(key_number, *batch_number),
                "a stored row is not a whole row of one batch"
            );
            stored_batch_numbers.insert(*batch_number);
            stored_row_count += 1;
        }
        assert_eq!(
            stored_row_count, CRASH_TEST_KEY_COUNT,
            "every key of the committed batches is stored"
        );
        assert_eq!(
            stored_batch_numbers.len(),
            1,
            "rows of several batches are mixed: {stored_batch_numbers:?}"
        );
        let stored_batch = stored_batch_numbers.first().copied().unwrap();
        assert!(
            stored_batch >= last_reported_batch,
            "batch {last_reported_batch} was reported committed, but the database holds batch {stored_batch}"
        );
        drop(table);
        drop(transaction);

        // The recovered store takes writes again.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let newer_rows = (0..CRASH_TEST_KEY_COUNT)
            .map(|key_number| crash_test_row(key_number, stored_batch + 1))
            .collect();
        let summary = runtime
            .block_on(store.write_rows(&crash_test_table(), newer_rows))
            .unwrap();
        assert_eq!(summary.written, CRASH_TEST_KEY_COUNT as u64);
    }
}
