//! The persisted state of stream consumers, per (view, partition): the entity tiles and the
//! position in the partition (last applied sequence, newest event time seen), in one redb
//! file.
//!
//! A batch's entity states and its new position are committed in **one** transaction, so
//! after a crash (even `kill -9`) the file holds the state as of some batch boundary together
//! with exactly the sequence that produced it. Resuming after that sequence and skipping any
//! message at or below it makes a replay count nothing twice.
//!
//! Neither a batch's online rows nor its state commit are fsynced: every
//! `stream.checkpoint_interval` (30 s by default) a **checkpoint**
//! ([`StreamStateStore::checkpoint`]) syncs the online stores the batches went to and then
//! makes the state file durable. So the durable position never runs ahead of durable online
//! rows: a crash rolls both back to at least the last checkpoint, and the replay writes the
//! lost rows again. While a checkpoint runs, batches keep writing their rows and **carry**
//! their states over (in memory) to their partition's next commit, so serving pauses only
//! while the online store itself is busy syncing.

use std::path::Path;
use std::sync::Arc;

use larder_core::{EntityKey, FeatureView, FeatureViewId};
use larder_online::SharedOnlineStore;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::StreamError;

const POSITIONS: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("stream_positions");

fn entity_table_name(view: &FeatureViewId, partition: &str) -> String {
    format!(
        "stream_entities/{}/v{}/{partition}",
        view.name, view.version
    )
}

fn position_key(view: &FeatureViewId, partition: &str) -> String {
    format!("{}/v{}/{partition}", view.name, view.version)
}

fn state_error(context: &str) -> impl FnOnce(redb::Error) -> StreamError + '_ {
    move |error| StreamError::State(format!("{context}: {error}"))
}

/// Where a view's consumer stands in one partition of its stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The last applied sequence (NATS stream sequence, Kafka offset).
    pub last_sequence: Option<u64>,
    /// The newest event time seen (µs), from which lateness is measured.
    pub max_seen: Option<i64>,
    /// Events dropped as late so far.
    pub late_dropped: u64,
}

impl PartitionPosition {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::json!({
            "last_sequence": self.last_sequence,
            "max_seen": self.max_seen,
            "late_dropped": self.late_dropped,
        })
        .to_string()
        .into_bytes()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        Some(Self {
            last_sequence: json
                .get("last_sequence")
                .and_then(serde_json::Value::as_u64),
            max_seen: json.get("max_seen").and_then(serde_json::Value::as_i64),
            late_dropped: json
                .get("late_dropped")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        })
    }
}

/// The persisted state of a view in one partition.
#[derive(Debug, Default)]
pub struct LoadedState {
    /// Every entity's encoded tiles.
    pub entities: Vec<(EntityKey, Vec<u8>)>,
    /// The position that state corresponds to.
    pub position: PartitionPosition,
    /// The state file's rollback count when it was loaded: a batch's commit is refused once
    /// the file rolled back since ([`StreamStateStore::commit_when`]).
    pub rollbacks_seen: u64,
}

/// What became of a batch's entity states ([`StreamStateStore::commit_when`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateCommit {
    /// Committed to the state file (durable with the next checkpoint).
    Committed,
    /// Kept in memory while a checkpoint commits the file: they go into their partition's
    /// next commit (or the next checkpoint's).
    Carried,
    /// `go` said no: nothing changed.
    CalledOff,
}

/// A partition's batch states waiting for a commit: the latest state of each entity the
/// carried batches changed (so a long checkpoint holds at most one per entity), and the
/// newest batch's position.
#[derive(Debug)]
struct CarriedPartition {
    view: FeatureViewId,
    partition: String,
    entities: std::collections::HashMap<EntityKey, Vec<u8>>,
    position: PartitionPosition,
}

/// The batch states carried over while a checkpoint runs, by entity-state table.
#[derive(Debug, Default)]
struct CarriedStates {
    /// From when a checkpoint starts (with no batch persisting) until its state commit is
    /// done: batches carry their states instead of committing them.
    checkpointing: bool,
    partitions: std::collections::HashMap<String, CarriedPartition>,
}

impl CarriedStates {
    /// Adds a later batch's states, replacing earlier ones of the same entity, and its
    /// position.
    fn carry(&mut self, table: String, later: CarriedPartition) {
        match self.partitions.get_mut(&table) {
            Some(carried) => {
                carried.entities.extend(later.entities);
                carried.position = later.position;
            }
            None => {
                self.partitions.insert(table, later);
            }
        }
    }

    /// Puts back what a failed checkpoint took, under whatever was carried since.
    fn restore(&mut self, earlier: Vec<(String, CarriedPartition)>) {
        for (table, mut carried) in earlier {
            if let Some(later) = self.partitions.remove(&table) {
                carried.entities.extend(later.entities);
                carried.position = later.position;
            }
            self.partitions.insert(table, carried);
        }
    }

    /// Drops the carried states of erased entities of `view` (every version).
    fn forget(&mut self, view: &str, keys: &std::collections::HashSet<EntityKey>) {
        for carried in self.partitions.values_mut() {
            if carried.view.name == view {
                carried.entities.retain(|key, _| !keys.contains(key));
            }
        }
    }
}

/// Earlier states followed by later ones, in key order with only the latest state of each
/// entity: what one transaction writes (in key order each leaf is copied once).
fn merge_states(
    mut entities: Vec<(EntityKey, Vec<u8>)>,
    later: Vec<(EntityKey, Vec<u8>)>,
) -> Vec<(EntityKey, Vec<u8>)> {
    entities.extend(later);
    // Stable: of equal keys the later state stays last.
    entities.sort_by(|left, right| left.0.cmp(&right.0));
    let mut merged: Vec<(EntityKey, Vec<u8>)> = Vec::with_capacity(entities.len());
    for entry in entities {
        match merged.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => merged.push(entry),
        }
    }
    merged
}

/// Writes a partition's entity states (in key order) and its position into `transaction`.
fn write_partition(
    transaction: &redb::WriteTransaction,
    table: &str,
    position_key: &str,
    entities: &[(EntityKey, Vec<u8>)],
    position: &PartitionPosition,
) -> Result<(), StreamError> {
    let definition: TableDefinition<'_, &'static [u8], &'static [u8]> = TableDefinition::new(table);
    let mut states = transaction
        .open_table(definition)
        .map_err(|error| state_error("opening entity states")(error.into()))?;
    for (key, state) in entities {
        states
            .insert(key.as_bytes(), state.as_slice())
            .map_err(|error| state_error("writing an entity state")(error.into()))?;
    }
    let mut positions = transaction
        .open_table(POSITIONS)
        .map_err(|error| state_error("opening positions")(error.into()))?;
    positions
        .insert(position_key, position.to_bytes().as_slice())
        .map_err(|error| state_error("writing a position")(error.into()))?;
    Ok(())
}

/// The redb file of the stream consumers' state. Its methods block: call them from
/// `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct StreamStateStore {
    file: Arc<larder_online::redb_file::RedbFile>,
    erasures: Arc<ErasureBoard>,
    instance_id: Arc<str>,
    /// When the last checkpoint started (µs since the epoch).
    last_checkpoint_micros: Arc<std::sync::atomic::AtomicI64>,
    /// How long after one checkpoint the next is due (µs).
    checkpoint_interval_micros: i64,
    /// The online stores the processors write their rows to, synced by each checkpoint.
    online_stores: Arc<std::sync::Mutex<Vec<SharedOnlineStore>>>,
    /// Batch states carried over while a checkpoint runs.
    carried: Arc<std::sync::Mutex<CarriedStates>>,
    /// Held by a running checkpoint: one at a time, and a processor resumes a partition only
    /// when none holds its carried states.
    checkpoint_running: Arc<tokio::sync::Mutex<()>>,
    /// How often the file was closed after an I/O error, losing its commits since the last
    /// durable one: the processors loaded before must resume from the file again.
    rollbacks: Arc<std::sync::atomic::AtomicU64>,
    /// Tests hold it to keep a checkpoint between its online sync and its state commit.
    #[cfg(test)]
    pub(crate) checkpoint_hold: Arc<tokio::sync::Mutex<()>>,
}

/// How often a checkpoint makes the batches since the last one durable, unless the repo
/// sets `stream.checkpoint_interval`. A crash rolls the state file back to its last durable
/// commit, state and positions together, and the consumer replays the messages after it: their
/// rows are recomputed equal, and nothing is counted twice because the state rolled back with
/// the position.
pub const DEFAULT_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The stream state file's page cache, which also holds the pages that commits between two
/// checkpoints wrote (redb buffers them until a durable commit). With 32 MiB each batch wrote
/// its pages out and read them back: at 50k events/s, 75 % of rows were servable within
/// 500 ms against 95 % with this size (BENCHMARKS.md), for ~250 MiB more resident memory.
const STATE_CACHE_BYTES: usize = 512 << 20;

const METADATA: TableDefinition<'static, &'static str, &'static str> =
    TableDefinition::new("stream_metadata");

impl StreamStateStore {
    /// Opens or creates the file, with checkpoints every [`DEFAULT_CHECKPOINT_INTERVAL`].
    /// Only one process may hold it.
    pub fn open(path: &Path) -> Result<Self, StreamError> {
        Self::open_with_checkpoint_interval(path, DEFAULT_CHECKPOINT_INTERVAL)
    }

    /// [`StreamStateStore::open`] with checkpoints every `checkpoint_interval`.
    pub fn open_with_checkpoint_interval(
        path: &Path,
        checkpoint_interval: std::time::Duration,
    ) -> Result<Self, StreamError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| {
                StreamError::State(format!("creating {}: {error}", parent.display()))
            })?;
        }
        let file = larder_online::redb_file::RedbFile::open(
            path,
            "stream state",
            STATE_CACHE_BYTES,
        )
        .map_err(|error| {
            StreamError::State(format!(
                "cannot open {} (is another larder process consuming streams from this repo?): {error}",
                path.display()
            ))
        })?;
        let instance_id = Self::instance_id_of(Self::database_of(&file)?.as_ref())?;
        Ok(Self {
            file,
            erasures: Arc::default(),
            instance_id: instance_id.into(),
            last_checkpoint_micros: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            checkpoint_interval_micros: i64::try_from(checkpoint_interval.as_micros())
                .unwrap_or(i64::MAX),
            online_stores: Arc::default(),
            carried: Arc::default(),
            checkpoint_running: Arc::default(),
            rollbacks: Arc::default(),
            #[cfg(test)]
            checkpoint_hold: Arc::default(),
        })
    }

    fn carried(&self) -> std::sync::MutexGuard<'_, CarriedStates> {
        self.carried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a rollback of the file and drops the carried states, which were computed on
    /// top of commits that are gone (their processors resume from the file).
    fn roll_back(&self) {
        let mut carried = self.carried();
        self.rollbacks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        carried.partitions.clear();
    }

    /// Whether a checkpoint has started and not finished its state commit.
    #[cfg(test)]
    pub(crate) fn checkpoint_in_progress(&self) -> bool {
        self.carried().checkpointing
    }

    fn refuse_after_rollback(&self, rollbacks_seen: u64) -> Result<(), StreamError> {
        if self.rollbacks.load(std::sync::atomic::Ordering::SeqCst) == rollbacks_seen {
            return Ok(());
        }
        Err(StreamError::State(
            "the stream state file lost its commits since the last checkpoint (closed after a \
             write error); the consumer resumes from it"
                .to_string(),
        ))
    }

    /// Adds an online store that the batches' rows go to ([`WriteDurability::Deferred`]):
    /// every checkpoint and erasure syncs it before the state file becomes durable.
    ///
    /// [`WriteDurability::Deferred`]: larder_online::WriteDurability::Deferred
    pub fn register_online_store(&self, store: &SharedOnlineStore) {
        let mut stores = self
            .online_stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !stores.iter().any(|known| Arc::ptr_eq(known, store)) {
            stores.push(Arc::clone(store));
        }
    }

    /// Claims the next checkpoint if one is due (true at most once per interval).
    pub fn claim_checkpoint(&self) -> bool {
        let now = larder_core::Timestamp::now().as_micros();
        let last = self
            .last_checkpoint_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        now - last >= self.checkpoint_interval_micros
            && self
                .last_checkpoint_micros
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Makes every persisted batch durable. Once no batch is persisting (the gate), it takes
    /// the carried states and opens the state file's write transaction; from then until
    /// its commit, batches write their rows and carry their states over. Then it syncs the
    /// registered online stores, writes the carried states and commits durably: every state
    /// it makes durable belongs to a batch whose rows were written before the sync began.
    /// After a failure the carried states it took are put back for the next commit.
    pub async fn checkpoint(&self) -> Result<(), StreamError> {
        let _running = self.checkpoint_running.lock().await;
        let gate = self.erasures.gate.write().await;
        let taken: Vec<(String, CarriedPartition)> = {
            let mut carried = self.carried();
            carried.checkpointing = true;
            carried.partitions.drain().collect()
        };
        let rollbacks_seen = self.rollbacks.load(std::sync::atomic::Ordering::SeqCst);
        let store = self.clone();
        let (opened, opened_signal) = tokio::sync::oneshot::channel::<()>();
        let (synced, synced_signal) = std::sync::mpsc::sync_channel::<bool>(1);
        let commit = tokio::task::spawn_blocking(move || {
            let committed = store.with_database(|database| {
                let transaction = database
                    .begin_write()
                    .map_err(|error| state_error("beginning a checkpoint")(error.into()))?;
                // No state commit can slip in before this one any more.
                let _ = opened.send(());
                if !synced_signal.recv().unwrap_or(false) {
                    return Ok(());
                }
                for (table, carried) in &taken {
                    write_partition(
                        &transaction,
                        table,
                        &position_key(&carried.view, &carried.partition),
                        &merge_states(
                            Vec::new(),
                            carried
                                .entities
                                .iter()
                                .map(|(key, state)| (key.clone(), state.clone()))
                                .collect(),
                        ),
                        &carried.position,
                    )?;
                }
                // Durable: with it every non-durable commit before it.
                transaction
                    .commit()
                    .map_err(|error| state_error("committing a checkpoint")(error.into()))
            });
            (committed, taken)
        });
        // Also when the task failed before opening it: the commit's result says why.
        let _ = opened_signal.await;
        drop(gate);
        let synced_online = self.sync_online_stores().await;
        larder_core::fault::crash_point("stream.checkpoint_after_online_sync");
        #[cfg(test)]
        drop(self.checkpoint_hold.lock().await);
        let _ = synced.send(synced_online.is_ok());
        let outcome = commit.await;
        let mut carried = self.carried();
        carried.checkpointing = false;
        let (committed, taken) = match outcome {
            Ok(finished) => finished,
            Err(error) => {
                // The carried states it took are gone: every processor resumes from the file.
                drop(carried);
                self.roll_back();
                return Err(StreamError::State(format!(
                    "checkpoint task failed: {error}"
                )));
            }
        };
        let failed = synced_online.and(committed).err();
        if failed.is_some()
            && self.rollbacks.load(std::sync::atomic::Ordering::SeqCst) == rollbacks_seen
        {
            carried.restore(taken);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Syncs the registered online stores (the caller holds the gate for writing).
    async fn sync_online_stores(&self) -> Result<(), StreamError> {
        let stores: Vec<SharedOnlineStore> = self
            .online_stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for store in stores {
            store.sync().await.map_err(|error| {
                StreamError::State(format!("syncing the online store: {error}"))
            })?;
        }
        Ok(())
    }

    /// The id of the consumer that owns this file, made at its creation: stable across
    /// restarts, distinct between processes (each holds its own file). Kafka consumers use it
    /// as their static group membership, so a restarted process takes its own place back.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn database_of(
        file: &larder_online::redb_file::RedbFile,
    ) -> Result<Arc<redb::Database>, StreamError> {
        file.database()
            .map_err(|error| StreamError::State(error.to_string()))
    }

    /// Runs `work` with the database; after an I/O error (a full disk, say) redb refuses the
    /// instance's later transactions, so it is closed and the next call opens the file again.
    fn with_database<Output>(
        &self,
        work: impl FnOnce(&redb::Database) -> Result<Output, StreamError>,
    ) -> Result<Output, StreamError> {
        let database = Self::database_of(&self.file)?;
        let result = work(&database);
        // redb's I/O errors read "I/O error: …" and "Previous I/O error occurred. …".
        if let Err(StreamError::State(message)) = &result
            && message.contains("I/O error")
        {
            // Counted before the file closes, so whoever opens it again sees the count.
            self.roll_back();
            self.file.close_after_io_error(&database);
        }
        result
    }

    fn instance_id_of(database: &redb::Database) -> Result<String, StreamError> {
        let transaction = database
            .begin_write()
            .map_err(|error| state_error("beginning a write")(error.into()))?;
        let id = {
            let mut table = transaction
                .open_table(METADATA)
                .map_err(|error| state_error("opening metadata")(error.into()))?;
            let existing = table
                .get("instance_id")
                .map_err(|error| state_error("reading the instance id")(error.into()))?
                .map(|id| id.value().to_string());
            match existing {
                Some(id) => id,
                None => {
                    let nanos = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |elapsed| elapsed.as_nanos());
                    let id = format!("{:x}-{:x}", nanos, std::process::id());
                    table
                        .insert("instance_id", id.as_str())
                        .map_err(|error| state_error("writing the instance id")(error.into()))?;
                    id
                }
            }
        };
        transaction
            .commit()
            .map_err(|error| state_error("committing")(error.into()))?;
        Ok(id)
    }

    /// Loads a view's state in a partition for a processor that takes it over: waits for a
    /// running checkpoint, commits what an earlier processor of the partition carried over,
    /// then loads ([`StreamStateStore::load`]).
    pub async fn resume(
        &self,
        view: &FeatureViewId,
        partition: &str,
    ) -> Result<LoadedState, StreamError> {
        let _no_checkpoint = self.checkpoint_running.lock().await;
        let store = self.clone();
        let (view, partition) = (view.clone(), partition.to_string());
        tokio::task::spawn_blocking(move || {
            let rollbacks_seen = store.rollbacks.load(std::sync::atomic::Ordering::SeqCst);
            let table = entity_table_name(&view, &partition);
            let carried = store.carried().partitions.remove(&table);
            if let Some(carried) = carried {
                store.commit_when(
                    &view,
                    &partition,
                    carried.entities.into_iter().collect(),
                    carried.position,
                    rollbacks_seen,
                    || true,
                )?;
            }
            let mut loaded = store.load(&view, &partition)?;
            loaded.rollbacks_seen = rollbacks_seen;
            Ok(loaded)
        })
        .await
        .map_err(|error| StreamError::State(format!("loading task failed: {error}")))?
    }

    /// Loads a view's state in a partition (empty when it never ran there), as committed.
    pub fn load(&self, view: &FeatureViewId, partition: &str) -> Result<LoadedState, StreamError> {
        self.with_database(|database| {
            let transaction = database
                .begin_read()
                .map_err(|error| StreamError::State(format!("cannot begin a read: {error}")))?;
            let mut state = LoadedState::default();
            match transaction.open_table(POSITIONS) {
                Ok(positions) => {
                    if let Some(bytes) = positions
                        .get(position_key(view, partition).as_str())
                        .map_err(|error| state_error("reading a position")(error.into()))?
                    {
                        state.position =
                            PartitionPosition::from_bytes(bytes.value()).ok_or_else(|| {
                                StreamError::State(format!(
                                    "corrupt stream position of {view} in partition {partition}"
                                ))
                            })?;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(state),
                Err(error) => return Err(state_error("opening positions")(error.into())),
            }
            let name = entity_table_name(view, partition);
            let definition: TableDefinition<'_, &'static [u8], &'static [u8]> =
                TableDefinition::new(&name);
            match transaction.open_table(definition) {
                Ok(entities) => {
                    for entry in entities
                        .iter()
                        .map_err(|error| state_error("listing entity states")(error.into()))?
                    {
                        let (key, value) = entry
                            .map_err(|error| state_error("reading entity states")(error.into()))?;
                        state.entities.push((
                            EntityKey::from_bytes(key.value().to_vec()),
                            value.value().to_vec(),
                        ));
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(error) => return Err(state_error("opening entity states")(error.into())),
            }
            Ok(state)
        })
    }

    /// Writes a batch's changed entity states and its new position into one transaction,
    /// together with what the partition carried over, and commits it (durable only with the
    /// next [`StreamStateStore::checkpoint`]) if `go`, called once everything is written
    /// into it, returns true; otherwise the transaction is dropped (nothing changes). This
    /// lets the costly part, writing the states into the tree, overlap with the online write
    /// that must succeed first. While a checkpoint runs, the states are carried over instead
    /// (once `go` said yes). Refused once the file rolled back since `rollbacks_seen`
    /// ([`LoadedState::rollbacks_seen`]).
    pub fn commit_when(
        &self,
        view: &FeatureViewId,
        partition: &str,
        entities: Vec<(EntityKey, Vec<u8>)>,
        position: PartitionPosition,
        rollbacks_seen: u64,
        go: impl FnOnce() -> bool,
    ) -> Result<StateCommit, StreamError> {
        let table = entity_table_name(view, partition);
        let carried = {
            let mut carried = self.carried();
            if carried.checkpointing {
                drop(carried);
                if !go() {
                    return Ok(StateCommit::CalledOff);
                }
                let mut carried = self.carried();
                self.refuse_after_rollback(rollbacks_seen)?;
                let later = CarriedPartition {
                    view: view.clone(),
                    partition: partition.to_string(),
                    entities: entities.into_iter().collect(),
                    position,
                };
                carried.carry(table, later);
                return Ok(StateCommit::Carried);
            }
            carried.partitions.remove(&table)
        };
        self.with_database(|database| {
            self.refuse_after_rollback(rollbacks_seen)?;
            let mut transaction = database
                .begin_write()
                .map_err(|error| state_error("beginning a write")(error.into()))?;
            let entities = match carried {
                Some(carried) => merge_states(carried.entities.into_iter().collect(), entities),
                None => {
                    // A batch has one state per entity.
                    let mut entities = entities;
                    entities.sort_unstable_by(|left, right| left.0.cmp(&right.0));
                    entities
                }
            };
            write_partition(
                &transaction,
                &table,
                &position_key(view, partition),
                &entities,
                &position,
            )?;
            if !go() {
                return Ok(StateCommit::CalledOff);
            }
            transaction
                .set_durability(redb::Durability::None)
                .map_err(|error| state_error("setting durability")(error.into()))?;
            transaction
                .commit()
                .map_err(|error| state_error("committing")(error.into()))?;
            Ok(StateCommit::Committed)
        })
    }
}

/// The entities erased while the consumers of this process run, so that each processor drops
/// their in-memory tiles before its next batch, and a batch prepared before an erasure does
/// not write them back.
///
/// An erasure holds `gate` for writing while it posts and deletes the entities' persisted
/// state; a batch holds it for reading while it writes its rows and commits, after dropping
/// the rows and states of entities erased since it was prepared. So every batch persisted
/// after an erasure was either prepared after it (its processor dropped the entities first)
/// or is filtered. A checkpoint holds it for writing too, so that every state commit it makes
/// durable comes after the online write of its batch.
#[derive(Debug, Default)]
pub struct ErasureBoard {
    generation: std::sync::atomic::AtomicU64,
    entries: std::sync::Mutex<Vec<ErasedEntities>>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

#[derive(Debug)]
struct ErasedEntities {
    generation: u64,
    view: String,
    keys: std::collections::HashSet<EntityKey>,
}

impl ErasureBoard {
    /// The number of erasures posted so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The keys of `view` erased after generation `since`.
    pub fn erased_since(&self, view: &str, since: u64) -> std::collections::HashSet<EntityKey> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .iter()
            .filter(|entry| entry.generation > since && entry.view == view)
            .flat_map(|entry| entry.keys.iter().cloned())
            .collect()
    }

    fn post(&self, view: &str, keys: &[EntityKey]) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = self.generation() + 1;
        entries.push(ErasedEntities {
            generation,
            view: view.to_string(),
            keys: keys.iter().cloned().collect(),
        });
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
    }

    /// Held for reading by a batch while it persists (see the type docs), from before its
    /// online write until its state commit.
    pub async fn persisting(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        Arc::clone(&self.gate).read_owned().await
    }
}

impl StreamStateStore {
    /// The erasures posted to this process's consumers.
    pub fn erasures(&self) -> &Arc<ErasureBoard> {
        &self.erasures
    }

    /// Erases the entities' state of every version and partition of `view`: posts them to
    /// the running processors and deletes their persisted tiles, durably; how many entries
    /// existed.
    pub async fn erase_entities(&self, view: &str, keys: &[EntityKey]) -> Result<u64, StreamError> {
        // After a running checkpoint: it may write the entities' carried states, or put them
        // back when it fails.
        let _no_checkpoint = self.checkpoint_running.lock().await;
        let _gate = self.erasures.gate.write().await;
        // The deletion below commits durably, and with it the batches persisted since the last
        // checkpoint: their online rows must be durable first.
        self.sync_online_stores().await?;
        self.erasures.post(view, keys);
        let erased: std::collections::HashSet<EntityKey> = keys.iter().cloned().collect();
        self.carried().forget(view, &erased);
        let store = self.clone();
        let view = view.to_string();
        let keys = keys.to_vec();
        tokio::task::spawn_blocking(move || store.delete_entity_states(&view, &keys))
            .await
            .map_err(|error| StreamError::State(format!("erasure task failed: {error}")))?
    }

    /// How many persisted entity states of `view` (any version, any partition) `keys` have.
    pub fn count_entity_states(&self, view: &str, keys: &[EntityKey]) -> Result<u64, StreamError> {
        let mut found = 0;
        self.read_entity_tables(view, |table| {
            for key in keys {
                if table
                    .get(key.as_bytes())
                    .map_err(|error| state_error("reading an entity state")(error.into()))?
                    .is_some()
                {
                    found += 1;
                }
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Every entity with state for `view` (any version, any partition): persisted, or
    /// carried over to its next commit.
    pub fn entity_keys(&self, view: &str) -> Result<Vec<EntityKey>, StreamError> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = self
            .carried()
            .partitions
            .values()
            .filter(|carried| carried.view.name == view)
            .flat_map(|carried| carried.entities.keys().map(|key| key.as_bytes().to_vec()))
            .collect();
        self.read_entity_tables(view, |table| {
            for entry in table
                .iter()
                .map_err(|error| state_error("listing entity states")(error.into()))?
            {
                let (key, _) =
                    entry.map_err(|error| state_error("reading entity states")(error.into()))?;
                keys.insert(key.value().to_vec());
            }
            Ok(())
        })?;
        Ok(keys.into_iter().map(EntityKey::from_bytes).collect())
    }

    /// Calls `visit` with each entity-state table of `view` (every version and partition),
    /// in one read transaction.
    fn read_entity_tables(
        &self,
        view: &str,
        mut visit: impl FnMut(
            &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
        ) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        self.with_database(|database| {
            let transaction = database
                .begin_read()
                .map_err(|error| StreamError::State(format!("cannot begin a read: {error}")))?;
            let names = transaction
                .list_tables()
                .map_err(|error| state_error("listing tables")(error.into()))?
                .map(|handle| handle.name().to_string());
            for name in entity_tables_of(names, view) {
                let definition: TableDefinition<'_, &'static [u8], &'static [u8]> =
                    TableDefinition::new(&name);
                let table = transaction
                    .open_table(definition)
                    .map_err(|error| state_error("opening entity states")(error.into()))?;
                visit(&table)?;
            }
            Ok(())
        })
    }

    fn delete_entity_states(&self, view: &str, keys: &[EntityKey]) -> Result<u64, StreamError> {
        self.with_database(|database| {
            let transaction = database
                .begin_write()
                .map_err(|error| state_error("beginning a write")(error.into()))?;
            let mut removed = 0;
            let names = transaction
                .list_tables()
                .map_err(|error| state_error("listing tables")(error.into()))?
                .map(|handle| handle.name().to_string());
            let names: Vec<String> = entity_tables_of(names, view).collect();
            for name in names {
                let definition: TableDefinition<'_, &'static [u8], &'static [u8]> =
                    TableDefinition::new(&name);
                let mut table = transaction
                    .open_table(definition)
                    .map_err(|error| state_error("opening entity states")(error.into()))?;
                for key in keys {
                    if table
                        .remove(key.as_bytes())
                        .map_err(|error| state_error("erasing an entity state")(error.into()))?
                        .is_some()
                    {
                        removed += 1;
                    }
                }
            }
            transaction
                .commit()
                .map_err(|error| state_error("committing")(error.into()))?;
            Ok(removed)
        })
    }
}

/// The entity-state tables of every version and partition of `view`, among `names`.
fn entity_tables_of(
    names: impl Iterator<Item = String>,
    view: &str,
) -> impl Iterator<Item = String> {
    let prefix = format!("stream_entities/{view}/v");
    names.filter(move |name| name.starts_with(&prefix))
}

#[async_trait::async_trait]
impl larder_ingest::EntityStateStore for StreamStateStore {
    fn name(&self) -> &'static str {
        "stream_state"
    }

    async fn erase(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<u64, String> {
        self.erase_entities(&view.name, keys)
            .await
            .map_err(|error| error.to_string())
    }

    async fn count(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<u64, String> {
        let store = self.clone();
        let view = view.name.clone();
        let keys = keys.to_vec();
        tokio::task::spawn_blocking(move || store.count_entity_states(&view, &keys))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }
    async fn keys(&self, view: &FeatureView) -> Result<Vec<EntityKey>, String> {
        let store = self.clone();
        let view = view.name.clone();
        tokio::task::spawn_blocking(move || store.entity_keys(&view))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }
}

/// A process's stream state file, opened on first use and shared by its consumers and its
/// erasures (redb lets one process hold the file; every holder must share one handle).
#[derive(Debug, Clone)]
pub struct SharedStreamState {
    path: std::path::PathBuf,
    checkpoint_interval: std::time::Duration,
    opened: Arc<std::sync::Mutex<Option<StreamStateStore>>>,
}

impl SharedStreamState {
    /// The state at `path`, not opened yet, with checkpoints every
    /// [`DEFAULT_CHECKPOINT_INTERVAL`].
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            path: path.into(),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            opened: Arc::default(),
        }
    }

    /// Checkpoints every `interval` instead (`stream.checkpoint_interval`).
    #[must_use]
    pub fn with_checkpoint_interval(mut self, interval: std::time::Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// The store, opening (or creating) the file on first use.
    pub fn get_or_open(&self) -> Result<StreamStateStore, StreamError> {
        let mut opened = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = opened.as_ref() {
            return Ok(store.clone());
        }
        let store =
            StreamStateStore::open_with_checkpoint_interval(&self.path, self.checkpoint_interval)?;
        *opened = Some(store.clone());
        Ok(store)
    }

    /// The store if it is open or its file exists; `None` when no stream ever ran here.
    pub fn open_if_exists(&self) -> Result<Option<StreamStateStore>, StreamError> {
        let is_open = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        if is_open || self.path.exists() {
            return self.get_or_open().map(Some);
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl larder_ingest::EntityStateStore for SharedStreamState {
    fn name(&self) -> &'static str {
        "stream_state"
    }

    async fn erase(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<u64, String> {
        match self.open_if_exists().map_err(|error| error.to_string())? {
            Some(store) => larder_ingest::EntityStateStore::erase(&store, view, keys).await,
            None => Ok(0),
        }
    }

    async fn count(&self, view: &FeatureView, keys: &[EntityKey]) -> Result<u64, String> {
        match self.open_if_exists().map_err(|error| error.to_string())? {
            Some(store) => larder_ingest::EntityStateStore::count(&store, view, keys).await,
            None => Ok(0),
        }
    }
    async fn keys(&self, view: &FeatureView) -> Result<Vec<EntityKey>, String> {
        match self.open_if_exists().map_err(|error| error.to_string())? {
            Some(store) => larder_ingest::EntityStateStore::keys(&store, view).await,
            None => Ok(Vec::new()),
        }
    }
}
