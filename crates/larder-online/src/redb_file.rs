//! What the redb-backed stores (the embedded online store, the digest store and
//! larder-vector's embedded index) share: opening a file, mapping redb's errors, durable write transactions and running blocking
//! work off the async workers. Each takes the backend name its errors carry.

use std::path::Path;
use std::sync::Arc;

use crate::OnlineStoreError;

/// Opens (or creates) a redb file, creating its folder first. A file that another process
/// (or this one) holds open is [`OnlineStoreError::Locked`]. Blocks on file I/O.
pub fn open_database(
    path: &Path,
    backend: &'static str,
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
    let opened = std::panic::catch_unwind(|| redb::Database::create(path)).map_err(|_| {
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
        redb::Error::DatabaseClosed | redb::Error::WouldBlock => {
            OnlineStoreError::Unavailable { backend, message }
        }
        _ => OnlineStoreError::Internal { backend, message },
    }
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

/// Runs blocking redb work on tokio's blocking pool with a handle to the database.
pub async fn run_blocking<Output, Work>(
    database: &Arc<redb::Database>,
    backend: &'static str,
    work: Work,
) -> Result<Output, OnlineStoreError>
where
    Output: Send + 'static,
    Work: FnOnce(&redb::Database) -> Result<Output, OnlineStoreError> + Send + 'static,
{
    let database = Arc::clone(database);
    tokio::task::spawn_blocking(move || work(&database))
        .await
        .map_err(|join_error| OnlineStoreError::Internal {
            backend,
            message: format!("blocking task failed: {join_error}"),
        })?
}
