//! What the redb-backed stores (the embedded online store, the digest store and
//! larder-vector's embedded index) share: opening a file, mapping redb's errors, durable write transactions and running blocking
//! work off the async workers. Each takes the backend name its errors carry.

use std::path::Path;
use std::sync::Arc;

use crate::OnlineStoreError;

/// redb's own default page cache per open file: 1 GiB.
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// Opens (or creates) a redb file, creating its folder first, with a page cache of at most
/// `cache_bytes` (it fills as pages are read or written, up to the file's size). A file that
/// another process (or this one) holds open is [`OnlineStoreError::Locked`]. Blocks on file
/// I/O.
pub fn open_database(
    path: &Path,
    backend: &'static str,
    cache_bytes: usize,
) -> Result<redb::Database, OnlineStoreError> {
    if let Some(parent_directory) = path.parent()
        && !parent_directory.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent_directory).map_err(|error| OnlineStoreError::Internal {
            backend,
            message: format!(
                "cannot create directory {}: {error}",
                parent_directory.display()
            ),
        })?;
    }
    // redb asserts on some corrupt pages while it opens a file (a page of an unknown type)
    // instead of returning an error: that is a corrupt file to name, not a crash.
    let opened = std::panic::catch_unwind(|| {
        redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
    })
    .map_err(|_| {
        OnlineStoreError::Corrupt {
            backend,
            message: format!(
                "cannot open {}: the file is corrupt (redb failed reading its pages); restore it from a backup or delete it and materialize again",
                path.display()
            ),
        }
    })?;
    opened.map_err(|error| match error {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            OnlineStoreError::Locked {
                path: path.display().to_string(),
            }
        }
        other => map_redb_error(backend, &format!("cannot open {}", path.display()), other),
    })
}

/// Maps a redb error to the store error kind a caller can act on: corruption, a store that
/// is closing or busy (unavailable), or anything else (internal).
pub fn map_redb_error(
    backend: &'static str,
    context: &str,
    error: impl Into<redb::Error>,
) -> OnlineStoreError {
    let error: redb::Error = error.into();
    let message = format!("{context}: {error}");
    match error {
        redb::Error::Corrupted(_) => OnlineStoreError::Corrupt { backend, message },
        // An I/O error (a full disk, say) closes the instance ([`RedbFile`] reopens it): the
        // store is unavailable until then, not broken.
        redb::Error::DatabaseClosed
        | redb::Error::WouldBlock
        | redb::Error::Io(_)
        | redb::Error::PreviousIo => OnlineStoreError::Unavailable { backend, message },
        _ => OnlineStoreError::Internal { backend, message },
    }
}

/// A redb table of byte keys and byte values (the online rows' and the digests' type) opened
/// for reading; it keeps its read transaction's snapshot alive.
pub type ReadOnlyBytesTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Opens table `name` in a new read transaction; `None` when it was never written.
pub fn open_read_table(
    database: &redb::Database,
    backend: &'static str,
    name: &str,
) -> Result<Option<ReadOnlyBytesTable>, OnlineStoreError> {
    use redb::ReadableDatabase;
    let transaction = database
        .begin_read()
        .map_err(|error| map_redb_error(backend, "cannot begin a read", error))?;
    match transaction.open_table(redb::TableDefinition::<&[u8], &[u8]>::new(name)) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(map_redb_error(
            backend,
            "cannot open a table for reading",
            error,
        )),
    }
}

/// Every key of `table` whose value `keep` accepts, in key order.
pub fn keys_where(
    table: &ReadOnlyBytesTable,
    backend: &'static str,
    keep: impl Fn(&[u8]) -> Result<bool, OnlineStoreError>,
) -> Result<Vec<larder_core::EntityKey>, OnlineStoreError> {
    use redb::ReadableTable;
    let list_error = |error: redb::StorageError| map_redb_error(backend, "cannot list keys", error);
    let mut keys = Vec::new();
    for entry in table.iter().map_err(list_error)? {
        let (key, value) = entry.map_err(list_error)?;
        if keep(value.value())? {
            keys.push(larder_core::EntityKey::from_bytes(key.value().to_vec()));
        }
    }
    Ok(keys)
}

/// Starts a write transaction that commits with immediate durability.
pub fn begin_durable_write(
    database: &redb::Database,
    backend: &'static str,
) -> Result<redb::WriteTransaction, OnlineStoreError> {
    let mut transaction = database
        .begin_write()
        .map_err(|error| map_redb_error(backend, "cannot begin a write transaction", error))?;
    transaction
        .set_durability(redb::Durability::Immediate)
        .map_err(|error| map_redb_error(backend, "cannot set immediate durability", error))?;
    Ok(transaction)
}

/// Makes every commit to `database` so far durable: an empty write transaction committed
/// with immediate durability persists the non-durable commits before it.
pub fn sync_database(
    database: &redb::Database,
    backend: &'static str,
) -> Result<(), OnlineStoreError> {
    begin_durable_write(database, backend)?
        .commit()
        .map_err(|error| map_redb_error(backend, "cannot commit a sync", error))
}

/// A redb file that survives I/O errors. After one (a full disk, say) redb refuses every
/// later transaction of that instance ("Previous I/O error occurred. Please close and
/// re-open the database"): the instance is then dropped, and the next use opens the file
/// again (redb repairs it from its last commit) once the last transaction of the failed
/// instance has let go. Until it reopens, callers get [`OnlineStoreError::Unavailable`].
#[derive(Debug)]
pub struct RedbFile {
    path: std::path::PathBuf,
    backend: &'static str,
    cache_bytes: usize,
    current: std::sync::Mutex<Option<Arc<redb::Database>>>,
}

impl RedbFile {
    /// Opens (or creates) the file with a page cache of at most `cache_bytes`
    /// ([`open_database`]).
    pub fn open(
        path: &Path,
        backend: &'static str,
        cache_bytes: usize,
    ) -> Result<Arc<Self>, OnlineStoreError> {
        let database = open_database(path, backend, cache_bytes)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            backend,
            cache_bytes,
            current: std::sync::Mutex::new(Some(Arc::new(database))),
        }))
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, opened again first when an I/O error closed it.
    pub fn database(&self) -> Result<Arc<redb::Database>, OnlineStoreError> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(database) = current.as_ref() {
            return Ok(Arc::clone(database));
        }
        let database = Arc::new(
            open_database(&self.path, self.backend, self.cache_bytes).map_err(|error| {
                OnlineStoreError::Unavailable {
                    backend: self.backend,
                    message: format!(
                        "reopening {} after an I/O error: {error}",
                        self.path.display()
                    ),
                }
            })?,
        );
        *current = Some(Arc::clone(&database));
        Ok(database)
    }

    /// Drops `failed` after an I/O error, so that the next [`RedbFile::database`] opens the
    /// file again.
    pub fn close_after_io_error(&self, failed: &Arc<redb::Database>) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|database| Arc::ptr_eq(database, failed))
        {
            *current = None;
        }
    }

    /// Runs `work` with the database on the calling thread, closing it after an I/O error.
    pub fn run<Output>(
        &self,
        work: impl FnOnce(&redb::Database) -> Result<Output, OnlineStoreError>,
    ) -> Result<Output, OnlineStoreError> {
        let database = self.database()?;
        let result = work(&database);
        if matches!(result, Err(OnlineStoreError::Unavailable { .. })) {
            self.close_after_io_error(&database);
        }
        result
    }
}

/// Runs blocking redb work on tokio's blocking pool ([`RedbFile::run`]).
pub async fn run_blocking<Output, Work>(
    file: &Arc<RedbFile>,
    work: Work,
) -> Result<Output, OnlineStoreError>
where
    Output: Send + 'static,
    Work: FnOnce(&redb::Database) -> Result<Output, OnlineStoreError> + Send + 'static,
{
    let file = Arc::clone(file);
    let backend = file.backend;
    tokio::task::spawn_blocking(move || file.run(work))
        .await
        .map_err(|join_error| OnlineStoreError::Internal {
            backend,
            message: format!("blocking task failed: {join_error}"),
        })?
}
