//! The embedded backend: one HNSW graph (usearch) per table in memory, its entries in a redb
//! file, and a snapshot of each graph beside it.
//!
//! # Layout (`{folder}/`)
//!
//! * `index.redb`: per table `vectors:{view}@v{N}` (entity key → event time, id, change
//!   sequence, null flag, components), `removed:{view}@v{N}` (id → sequence of ids removed
//!   since the last snapshot) and `vector_tables` (table → settings and counters, JSON).
//!   Every call commits one durable transaction before it touches the graph.
//! * `{view}@v{N}.usearch`: the graph as of change sequence `snapshot_seq` (recorded in
//!   `vector_tables` after the file is renamed into place).
//!
//! Opening a table loads the snapshot and replays only the changes after it (entries whose
//! sequence is newer: re-added or removed; removed ids: removed), so a clean restart rebuilds
//! nothing and a crash replays at most the changes since the last snapshot. Replaying is
//! idempotent, which is why a snapshot newer than its recorded sequence (a crash between the
//! rename and the commit) is harmless. A snapshot is taken when the changes since the last
//! one reach half the table (at least 100,000), and on [`VectorIndex::flush`] and drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use larder_core::{
    EntityKey, FeatureViewId, IndexedFeature, Timestamp, VectorIndexSpec, VectorMetric,
};
use larder_online::redb_file::{begin_durable_write, map_redb_error, open_database};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::memory::exact_top_k;
use crate::{
    Neighbour, SearchRequest, UpsertSummary, VectorEntry, VectorIndex, VectorIndexError,
    VectorIndexOptions, check_entries, check_request, newest_per_key,
};

const BACKEND: &str = "embedded";
/// Fewest changes since the last snapshot that trigger a new one.
const SNAPSHOT_MIN_CHANGES: u64 = 100_000;

type BytesTable<'name> = TableDefinition<'name, &'static [u8], &'static [u8]>;
type RemovedTable<'name> = TableDefinition<'name, u64, u64>;
const META: TableDefinition<'static, &'static str, &'static str> =
    TableDefinition::new("vector_tables");

fn vectors_table_name(table: &FeatureViewId) -> String {
    format!("vectors:{table}")
}

fn removed_table_name(table: &FeatureViewId) -> String {
    format!("removed:{table}")
}

impl From<larder_online::OnlineStoreError> for VectorIndexError {
    fn from(error: larder_online::OnlineStoreError) -> Self {
        match error {
            larder_online::OnlineStoreError::Locked { path } => Self::Locked { path },
            larder_online::OnlineStoreError::Corrupt { message, .. } => Self::Corrupt {
                backend: BACKEND,
                message,
            },
            other => Self::Unavailable {
                backend: BACKEND,
                message: other.to_string(),
            },
        }
    }
}

fn redb_failure(context: &str, error: impl Into<redb::Error>) -> VectorIndexError {
    map_redb_error(BACKEND, context, error).into()
}

fn graph_failure(context: &str, error: impl std::fmt::Display) -> VectorIndexError {
    VectorIndexError::Unavailable {
        backend: BACKEND,
        message: format!("{context}: {error}"),
    }
}

/// What `vector_tables` records per table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableMeta {
    position: usize,
    dimension: u32,
    spec: VectorIndexSpec,
    next_id: u64,
    next_seq: u64,
    snapshot_seq: u64,
}

impl TableMeta {
    fn feature(&self) -> IndexedFeature {
        IndexedFeature {
            position: self.position,
            dimension: self.dimension,
            spec: self.spec,
        }
    }
}

/// One stored entry: `[event µs i64][id u64][seq u64][has vector u8][f32 components]`, little
/// endian.
struct StoredEntry<'bytes> {
    event_timestamp: Timestamp,
    id: u64,
    seq: u64,
    vector: Option<&'bytes [u8]>,
}

const ENTRY_HEADER: usize = 25;

fn encode_entry(event_timestamp: Timestamp, id: u64, seq: u64, vector: Option<&[f32]>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ENTRY_HEADER + vector.map_or(0, |vector| vector.len() * 4));
    bytes.extend_from_slice(&event_timestamp.as_micros().to_le_bytes());
    bytes.extend_from_slice(&id.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.push(u8::from(vector.is_some()));
    for component in vector.unwrap_or_default() {
        bytes.extend_from_slice(&component.to_le_bytes());
    }
    bytes
}

fn decode_entry(bytes: &[u8]) -> Result<StoredEntry<'_>, VectorIndexError> {
    let corrupt = || VectorIndexError::Corrupt {
        backend: BACKEND,
        message: format!("an entry of {} bytes is too short", bytes.len()),
    };
    let word = |at: usize| -> Result<[u8; 8], VectorIndexError> {
        bytes
            .get(at..at + 8)
            .and_then(|slice| slice.try_into().ok())
            .ok_or_else(corrupt)
    };
    Ok(StoredEntry {
        event_timestamp: Timestamp(i64::from_le_bytes(word(0)?)),
        id: u64::from_le_bytes(word(8)?),
        seq: u64::from_le_bytes(word(16)?),
        vector: match bytes.get(24) {
            Some(1) => Some(&bytes[ENTRY_HEADER..]),
            Some(_) => None,
            None => return Err(corrupt()),
        },
    })
}

fn components(bytes: &[u8]) -> Vec<f32> {
    larder_core::codec::vector_components(bytes).collect()
}

/// Where a key stands in the in-memory maps.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    event_timestamp: Timestamp,
    in_graph: bool,
}

#[derive(Debug, Default)]
struct TableState {
    by_key: HashMap<EntityKey, Slot>,
    /// Ids in the graph → their key and event time (what a search reports).
    by_id: HashMap<u64, (EntityKey, Timestamp)>,
}

/// One table: its graph, its maps, and the writer lock that orders changes.
struct EmbeddedTable {
    id: FeatureViewId,
    options: RwLock<VectorIndexOptions>,
    graph: Index,
    state: RwLock<TableState>,
    /// Held by the one change at a time (upsert, remove, snapshot), with the table's meta.
    writer: Mutex<TableMeta>,
}

impl std::fmt::Debug for EmbeddedTable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EmbeddedTable")
            .field("id", &self.id)
            .field("size", &self.graph.size())
            .finish_non_exhaustive()
    }
}

fn metric_kind(metric: VectorMetric) -> MetricKind {
    match metric {
        VectorMetric::Cosine => MetricKind::Cos,
        VectorMetric::Dot => MetricKind::IP,
        VectorMetric::L2 => MetricKind::L2sq,
    }
}

/// Concurrent searches and inserts the graph allows (each takes a context from usearch's
/// pool; more callers than contexts wait).
fn graph_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, usize::from)
        .max(2)
        * 8
}

fn new_graph(feature: &IndexedFeature) -> Result<Index, VectorIndexError> {
    let options = IndexOptions {
        dimensions: feature.dimension as usize,
        metric: metric_kind(feature.spec.metric),
        quantization: ScalarKind::F32,
        connectivity: feature.spec.connectivity as usize,
        expansion_add: feature.spec.expansion_add as usize,
        // The breadth of each search is its result count (`search_table` asks for
        // max(k, ef) results), so that a request can ask for less than the default too.
        expansion_search: 1,
        multi: false,
    };
    let graph =
        Index::new(&options).map_err(|error| graph_failure("cannot create the graph", error))?;
    graph
        .reserve_capacity_and_threads(1024, graph_threads())
        .map_err(|error| graph_failure("cannot reserve graph memory", error))?;
    Ok(graph)
}

impl EmbeddedTable {
    fn options(&self) -> VectorIndexOptions {
        *self.options.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> RwLockReadGuard<'_, TableState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, TableState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, TableMeta> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ensure_capacity(&self, additional: usize) -> Result<(), VectorIndexError> {
        let needed = self.graph.size() + additional;
        if needed > self.graph.capacity() {
            let capacity = needed.max(self.graph.capacity() * 2);
            self.graph
                .reserve_capacity_and_threads(capacity, graph_threads())
                .map_err(|error| graph_failure("cannot grow the graph", error))?;
        }
        Ok(())
    }

    /// Removes `id` from the graph if there, then adds `vector` under it (if any). Inserts of
    /// a big batch run on every core.
    fn apply_to_graph(
        &self,
        changes: &[(u64, bool, Option<Vec<f32>>)],
    ) -> Result<(), VectorIndexError> {
        for (id, in_graph, _) in changes {
            if *in_graph {
                self.graph
                    .remove(*id)
                    .map_err(|error| graph_failure("cannot remove from the graph", error))?;
            }
        }
        let additions: Vec<(u64, &[f32])> = changes
            .iter()
            .filter_map(|(id, _, vector)| vector.as_deref().map(|vector| (*id, vector)))
            .collect();
        self.ensure_capacity(additions.len())?;
        let workers = if additions.len() >= 512 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            1
        };
        let failure: Mutex<Option<VectorIndexError>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for worker in 0..workers {
                let additions = &additions;
                let failure = &failure;
                scope.spawn(move || {
                    for (id, vector) in additions.iter().skip(worker).step_by(workers) {
                        if let Err(error) = self.graph.add(*id, vector) {
                            *failure.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(graph_failure("cannot add to the graph", error));
                            return;
                        }
                    }
                });
            }
        });
        match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// What a handle shares: the folder's database and the loaded tables.
struct Inner {
    folder: PathBuf,
    database: redb::Database,
    tables: Mutex<HashMap<FeatureViewId, Arc<EmbeddedTable>>>,
}

/// An HNSW index per table in this process, persisted in a folder (see the module docs).
/// One process at a time: opening a folder another process holds is
/// [`VectorIndexError::Locked`]. Cloning is cheap and shares the index; the last clone
/// dropped saves every changed graph.
#[derive(Clone)]
pub struct EmbeddedVectorIndex {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedVectorIndex {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EmbeddedVectorIndex")
            .field("folder", &self.inner.folder)
            .finish_non_exhaustive()
    }
}

impl EmbeddedVectorIndex {
    /// Opens (or creates) the index folder. Tables are loaded when first used. Blocks on
    /// file I/O.
    pub fn open(folder: &Path) -> Result<Self, VectorIndexError> {
        let database = open_database(
            &folder.join("index.redb"),
            BACKEND,
            larder_online::redb_file::DEFAULT_CACHE_BYTES,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                folder: folder.to_path_buf(),
                database,
                tables: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Runs blocking work with the shared index on tokio's blocking pool.
    async fn blocking<Output: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<Output, VectorIndexError> + Send + 'static,
    ) -> Result<Output, VectorIndexError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|error| graph_failure("blocking task failed", error))?
    }

    /// Memory the loaded graphs take, in bytes (usearch's own count).
    pub fn memory_usage(&self) -> usize {
        self.inner
            .tables()
            .values()
            .map(|table| table.graph.memory_usage())
            .sum()
    }
}

impl Inner {
    fn tables(&self) -> MutexGuard<'_, HashMap<FeatureViewId, Arc<EmbeddedTable>>> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot_path(&self, table: &FeatureViewId) -> PathBuf {
        self.folder.join(format!("{table}.usearch"))
    }

    fn read_meta(&self, table: &FeatureViewId) -> Result<Option<TableMeta>, VectorIndexError> {
        let transaction = self
            .database
            .begin_read()
            .map_err(|error| redb_failure("cannot begin a read", error))?;
        let meta = match transaction.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(redb_failure("cannot open vector_tables", error)),
        };
        let Some(text) = meta
            .get(table.to_string().as_str())
            .map_err(|error| redb_failure("cannot read vector_tables", error))?
        else {
            return Ok(None);
        };
        serde_json::from_str(text.value())
            .map(Some)
            .map_err(|error| VectorIndexError::Corrupt {
                backend: BACKEND,
                message: format!("settings of {table}: {error}"),
            })
    }

    fn write_meta(
        transaction: &redb::WriteTransaction,
        table: &FeatureViewId,
        meta: &TableMeta,
    ) -> Result<(), VectorIndexError> {
        let text = serde_json::to_string(meta).map_err(|error| VectorIndexError::Corrupt {
            backend: BACKEND,
            message: format!("cannot encode settings of {table}: {error}"),
        })?;
        let mut tables = transaction
            .open_table(META)
            .map_err(|error| redb_failure("cannot open vector_tables", error))?;
        tables
            .insert(table.to_string().as_str(), text.as_str())
            .map_err(|error| redb_failure("cannot write vector_tables", error))?;
        Ok(())
    }

    /// The loaded table, or loads it from disk (`create`: with these options if it does not
    /// exist). `None`: no such table and nothing to create. Blocks on I/O.
    fn table(
        &self,
        table: &FeatureViewId,
        create: Option<VectorIndexOptions>,
    ) -> Result<Option<Arc<EmbeddedTable>>, VectorIndexError> {
        if let Some(loaded) = self.tables().get(table) {
            return Ok(Some(Arc::clone(loaded)));
        }
        let meta = match (self.read_meta(table)?, create) {
            (Some(meta), _) => meta,
            (None, Some(options)) => {
                let meta = TableMeta {
                    position: options.feature.position,
                    dimension: options.feature.dimension,
                    spec: options.feature.spec,
                    next_id: 1,
                    next_seq: 1,
                    snapshot_seq: 0,
                };
                let transaction = begin_durable_write(&self.database, BACKEND)?;
                Self::write_meta(&transaction, table, &meta)?;
                transaction
                    .commit()
                    .map_err(|error| redb_failure("cannot commit", error))?;
                meta
            }
            (None, None) => return Ok(None),
        };
        let loaded = Arc::new(self.load_table(table, meta, create)?);
        let mut tables = self.tables();
        // Another caller may have loaded it meanwhile: keep the first.
        let kept = tables.entry(table.clone()).or_insert(loaded);
        Ok(Some(Arc::clone(kept)))
    }

    /// Builds a table's graph from its snapshot and the changes after it.
    fn load_table(
        &self,
        table: &FeatureViewId,
        meta: TableMeta,
        requested: Option<VectorIndexOptions>,
    ) -> Result<EmbeddedTable, VectorIndexError> {
        let feature = meta.feature();
        let mut graph = new_graph(&feature)?;
        let mut snapshot_seq = meta.snapshot_seq;
        let snapshot = self.snapshot_path(table);
        if snapshot_seq > 0 {
            let loaded = snapshot
                .to_str()
                .ok_or_else(|| graph_failure("snapshot path", "not UTF-8"))
                .and_then(|path| {
                    graph
                        .load(path)
                        .map_err(|error| graph_failure("cannot load the snapshot", error))
                });
            if let Err(error) = loaded {
                tracing::warn!(table = %table, %error, "vector index snapshot unusable; rebuilding the graph from its entries");
                graph = new_graph(&feature)?;
                snapshot_seq = 0;
            }
        }
        let transaction = self
            .database
            .begin_read()
            .map_err(|error| redb_failure("cannot begin a read", error))?;
        let mut state = TableState::default();
        let mut replay: Vec<(u64, bool, Option<Vec<f32>>)> = Vec::new();
        let vectors_name = vectors_table_name(table);
        match transaction.open_table(BytesTable::new(&vectors_name)) {
            Ok(vectors) => {
                let rows = vectors
                    .iter()
                    .map_err(|error| redb_failure("cannot scan vectors", error))?;
                for row in rows {
                    let (key, value) =
                        row.map_err(|error| redb_failure("cannot scan vectors", error))?;
                    let entry = decode_entry(value.value())?;
                    let key = EntityKey::from_bytes(key.value().to_vec());
                    let in_graph = entry.vector.is_some();
                    if entry.seq > snapshot_seq {
                        replay.push((
                            entry.id,
                            graph.contains(entry.id),
                            entry.vector.map(components),
                        ));
                    }
                    if in_graph {
                        state
                            .by_id
                            .insert(entry.id, (key.clone(), entry.event_timestamp));
                    }
                    state.by_key.insert(
                        key,
                        Slot {
                            id: entry.id,
                            event_timestamp: entry.event_timestamp,
                            in_graph,
                        },
                    );
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(redb_failure("cannot open vectors", error)),
        }
        let removed_name = removed_table_name(table);
        match transaction.open_table(RemovedTable::new(&removed_name)) {
            Ok(removed) => {
                let rows = removed
                    .iter()
                    .map_err(|error| redb_failure("cannot scan removed ids", error))?;
                for row in rows {
                    let (id, seq) =
                        row.map_err(|error| redb_failure("cannot scan removed ids", error))?;
                    let id = id.value();
                    if seq.value() > snapshot_seq
                        && !state.by_id.contains_key(&id)
                        && graph.contains(id)
                    {
                        replay.push((id, true, None));
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(redb_failure("cannot open removed ids", error)),
        }
        drop(transaction);
        let replayed = replay.len();
        let options = VectorIndexOptions {
            feature,
            ttl: requested.and_then(|options| options.ttl),
        };
        let loaded = EmbeddedTable {
            id: table.clone(),
            options: RwLock::new(options),
            graph,
            state: RwLock::new(state),
            writer: Mutex::new(TableMeta {
                snapshot_seq,
                ..meta
            }),
        };
        loaded.ensure_capacity(loaded.state().by_id.len())?;
        loaded.apply_to_graph(&replay)?;
        if replayed > 0 {
            tracing::info!(table = %table, replayed, "vector index: replayed changes after its snapshot");
        }
        Ok(loaded)
    }

    /// Saves a table's graph and records the change sequence it holds. The caller holds the
    /// writer lock (passed in as `meta`), so no change runs meanwhile.
    fn snapshot(
        &self,
        table: &EmbeddedTable,
        meta: &mut TableMeta,
    ) -> Result<(), VectorIndexError> {
        let last_seq = meta.next_seq - 1;
        if last_seq == meta.snapshot_seq {
            return Ok(());
        }
        let path = self.snapshot_path(&table.id);
        let staging = path.with_extension("usearch.tmp");
        let staging_text = staging
            .to_str()
            .ok_or_else(|| graph_failure("snapshot path", "not UTF-8"))?;
        table
            .graph
            .save(staging_text)
            .map_err(|error| graph_failure("cannot save the graph", error))?;
        std::fs::File::open(&staging)
            .and_then(|file| file.sync_all())
            .and_then(|()| std::fs::rename(&staging, &path))
            .map_err(|error| graph_failure("cannot persist the graph snapshot", error))?;
        let transaction = begin_durable_write(&self.database, BACKEND)?;
        {
            let mut removed = transaction
                .open_table(RemovedTable::new(&removed_table_name(&table.id)))
                .map_err(|error| redb_failure("cannot open removed ids", error))?;
            removed
                .retain(|_, seq| seq > last_seq)
                .map_err(|error| redb_failure("cannot trim removed ids", error))?;
        }
        let snapshot = TableMeta {
            snapshot_seq: last_seq,
            ..meta.clone()
        };
        Self::write_meta(&transaction, &table.id, &snapshot)?;
        transaction
            .commit()
            .map_err(|error| redb_failure("cannot commit", error))?;
        *meta = snapshot;
        Ok(())
    }

    fn maybe_snapshot(
        &self,
        table: &EmbeddedTable,
        meta: &mut TableMeta,
    ) -> Result<(), VectorIndexError> {
        let changes = meta.next_seq - 1 - meta.snapshot_seq;
        let size = table.state().by_key.len() as u64;
        if changes >= SNAPSHOT_MIN_CHANGES.max(size / 2) {
            self.snapshot(table, meta)?;
        }
        Ok(())
    }

    fn upsert_blocking(
        &self,
        table: &FeatureViewId,
        entries: Vec<VectorEntry>,
    ) -> Result<UpsertSummary, VectorIndexError> {
        let loaded = self
            .table(table, None)?
            .ok_or_else(|| VectorIndexError::NotPrepared(table.clone()))?;
        check_entries(&loaded.options(), &entries)?;
        let mut meta = loaded.writer();
        let (winners, summary) = {
            let state = loaded.state();
            newest_per_key(entries, |key| {
                state.by_key.get(key).map(|slot| slot.event_timestamp)
            })
        };
        if winners.is_empty() {
            return Ok(summary);
        }
        let mut next = meta.clone();
        let mut changes = Vec::with_capacity(winners.len());
        let mut slots = Vec::with_capacity(winners.len());
        let transaction = begin_durable_write(&self.database, BACKEND)?;
        {
            let mut vectors = transaction
                .open_table(BytesTable::new(&vectors_table_name(table)))
                .map_err(|error| redb_failure("cannot open vectors", error))?;
            let state = loaded.state();
            for entry in winners {
                let previous = state.by_key.get(&entry.key).copied();
                let id = match previous {
                    Some(slot) => slot.id,
                    None => {
                        next.next_id += 1;
                        next.next_id - 1
                    }
                };
                let seq = next.next_seq;
                next.next_seq += 1;
                vectors
                    .insert(
                        entry.key.as_bytes(),
                        encode_entry(entry.event_timestamp, id, seq, entry.vector.as_deref())
                            .as_slice(),
                    )
                    .map_err(|error| redb_failure("cannot write vectors", error))?;
                let in_graph = previous.is_some_and(|slot| slot.in_graph);
                slots.push((
                    entry.key,
                    Slot {
                        id,
                        event_timestamp: entry.event_timestamp,
                        in_graph: entry.vector.is_some(),
                    },
                ));
                changes.push((id, in_graph, entry.vector));
            }
        }
        Self::write_meta(&transaction, table, &next)?;
        transaction
            .commit()
            .map_err(|error| redb_failure("cannot commit", error))?;
        *meta = next;
        {
            let mut state = loaded.state_mut();
            for (key, slot) in slots {
                if slot.in_graph {
                    state
                        .by_id
                        .insert(slot.id, (key.clone(), slot.event_timestamp));
                } else {
                    state.by_id.remove(&slot.id);
                }
                state.by_key.insert(key, slot);
            }
        }
        loaded.apply_to_graph(&changes)?;
        self.maybe_snapshot(&loaded, &mut meta)?;
        Ok(summary)
    }

    fn remove_blocking(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, VectorIndexError> {
        let Some(loaded) = self.table(table, None)? else {
            return Ok(0);
        };
        let mut meta = loaded.writer();
        let held: Vec<(EntityKey, Slot)> = {
            let state = loaded.state();
            let mut seen = std::collections::HashSet::new();
            keys.iter()
                .filter(|key| seen.insert(*key))
                .filter_map(|key| state.by_key.get(key).map(|slot| (key.clone(), *slot)))
                .collect()
        };
        if held.is_empty() {
            return Ok(0);
        }
        let mut next = meta.clone();
        let transaction = begin_durable_write(&self.database, BACKEND)?;
        {
            let mut vectors = transaction
                .open_table(BytesTable::new(&vectors_table_name(table)))
                .map_err(|error| redb_failure("cannot open vectors", error))?;
            let mut removed = transaction
                .open_table(RemovedTable::new(&removed_table_name(table)))
                .map_err(|error| redb_failure("cannot open removed ids", error))?;
            for (key, slot) in &held {
                vectors
                    .remove(key.as_bytes())
                    .map_err(|error| redb_failure("cannot delete vectors", error))?;
                removed
                    .insert(slot.id, next.next_seq)
                    .map_err(|error| redb_failure("cannot record removed ids", error))?;
                next.next_seq += 1;
            }
        }
        Self::write_meta(&transaction, table, &next)?;
        transaction
            .commit()
            .map_err(|error| redb_failure("cannot commit", error))?;
        *meta = next;
        {
            let mut state = loaded.state_mut();
            for (key, slot) in &held {
                state.by_key.remove(key);
                state.by_id.remove(&slot.id);
            }
        }
        let changes: Vec<(u64, bool, Option<Vec<f32>>)> = held
            .iter()
            .map(|(_, slot)| (slot.id, slot.in_graph, None))
            .collect();
        loaded.apply_to_graph(&changes)?;
        self.maybe_snapshot(&loaded, &mut meta)?;
        Ok(held.len() as u64)
    }

    fn drop_blocking(&self, table: &FeatureViewId) -> Result<(), VectorIndexError> {
        let loaded = self.tables().remove(table);
        let _writer = loaded.as_ref().map(|loaded| loaded.writer());
        let transaction = begin_durable_write(&self.database, BACKEND)?;
        transaction
            .delete_table(BytesTable::new(&vectors_table_name(table)))
            .map_err(|error| redb_failure("cannot drop vectors", error))?;
        transaction
            .delete_table(RemovedTable::new(&removed_table_name(table)))
            .map_err(|error| redb_failure("cannot drop removed ids", error))?;
        {
            let mut meta = transaction
                .open_table(META)
                .map_err(|error| redb_failure("cannot open vector_tables", error))?;
            meta.remove(table.to_string().as_str())
                .map_err(|error| redb_failure("cannot write vector_tables", error))?;
        }
        transaction
            .commit()
            .map_err(|error| redb_failure("cannot commit", error))?;
        match std::fs::remove_file(self.snapshot_path(table)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(graph_failure("cannot delete the graph snapshot", error)),
        }
    }

    fn flush_blocking(&self) -> Result<(), VectorIndexError> {
        let loaded: Vec<Arc<EmbeddedTable>> = self.tables().values().cloned().collect();
        for table in loaded {
            let mut meta = table.writer();
            self.snapshot(&table, &mut meta)?;
        }
        Ok(())
    }

    fn search_table(
        table: &EmbeddedTable,
        request: &SearchRequest<'_>,
    ) -> Result<Vec<Neighbour>, VectorIndexError> {
        let options = table.options();
        check_request(&options, request)?;
        let state = table.state();
        let live = state.by_id.len();
        if request.k == 0 || live == 0 {
            return Ok(Vec::new());
        }
        if request.exact && request.not_before.is_none() {
            // The graph's own brute-force scan (SIMD distances over every live vector).
            let matches = table
                .graph
                .exact_search(request.query, request.k.min(live))
                .map_err(|error| graph_failure("exact search failed", error))?;
            let mut neighbours: Vec<Neighbour> = matches
                .keys
                .iter()
                .zip(&matches.distances)
                .filter_map(|(id, distance)| {
                    state.by_id.get(id).map(|(key, event_timestamp)| Neighbour {
                        key: key.clone(),
                        distance: *distance,
                        event_timestamp: *event_timestamp,
                    })
                })
                .collect();
            neighbours.sort_by(|left, right| {
                left.distance
                    .total_cmp(&right.distance)
                    .then_with(|| left.key.as_bytes().cmp(right.key.as_bytes()))
            });
            return Ok(neighbours);
        }
        if request.exact {
            // With a time filter: scan every vector the graph holds (full precision) and
            // keep the fresh ones.
            let dimension = options.dimension();
            let mut buffer = vec![0.0f32; dimension];
            let mut vectors: Vec<(&EntityKey, Timestamp, Vec<f32>)> = Vec::with_capacity(live);
            for (id, (key, event_timestamp)) in &state.by_id {
                let found = table
                    .graph
                    .get(*id, &mut buffer)
                    .map_err(|error| graph_failure("cannot read a vector", error))?;
                if found > 0 {
                    vectors.push((key, *event_timestamp, buffer.clone()));
                }
            }
            return Ok(exact_top_k(
                &options,
                request,
                vectors.iter().map(|(key, event_timestamp, vector)| {
                    (*key, *event_timestamp, vector.as_slice())
                }),
            ));
        }
        let expansion = request
            .expansion
            .unwrap_or(options.feature.spec.expansion_search as usize);
        let count = request.k.max(expansion).min(live);
        let matches = match request.not_before {
            None => table.graph.search(request.query, count),
            Some(not_before) => table
                .graph
                .filtered_search(request.query, count, |id: u64| {
                    state
                        .by_id
                        .get(&id)
                        .is_some_and(|(_, event_timestamp)| *event_timestamp >= not_before)
                }),
        }
        .map_err(|error| graph_failure("search failed", error))?;
        let mut neighbours = Vec::with_capacity(request.k);
        for (id, distance) in matches.keys.iter().zip(&matches.distances) {
            if let Some((key, event_timestamp)) = state.by_id.get(id) {
                neighbours.push(Neighbour {
                    key: key.clone(),
                    distance: *distance,
                    event_timestamp: *event_timestamp,
                });
            }
            if neighbours.len() == request.k {
                break;
            }
        }
        Ok(neighbours)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.flush_blocking() {
            tracing::warn!(%error, "vector index: the last snapshot failed; the next open replays the changes since the one before");
        }
    }
}

#[async_trait::async_trait]
impl VectorIndex for EmbeddedVectorIndex {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn prepare(
        &self,
        table: &FeatureViewId,
        options: VectorIndexOptions,
    ) -> Result<(), VectorIndexError> {
        let id = table.clone();
        self.blocking(move |inner| {
            let loaded = inner
                .table(&id, Some(options))?
                .ok_or_else(|| VectorIndexError::NotPrepared(id.clone()))?;
            let mut current = loaded
                .options
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if current.feature != options.feature {
                return Err(VectorIndexError::Mismatch {
                    table: id,
                    existing: current.describe(),
                    requested: options.describe(),
                });
            }
            current.ttl = options.ttl;
            Ok(())
        })
        .await
    }

    async fn upsert(
        &self,
        table: &FeatureViewId,
        entries: Vec<VectorEntry>,
    ) -> Result<UpsertSummary, VectorIndexError> {
        let id = table.clone();
        self.blocking(move |inner| inner.upsert_blocking(&id, entries))
            .await
    }

    async fn remove(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, VectorIndexError> {
        let id = table.clone();
        let keys = keys.to_vec();
        self.blocking(move |inner| inner.remove_blocking(&id, &keys))
            .await
    }

    async fn search(
        &self,
        table: &FeatureViewId,
        request: SearchRequest<'_>,
    ) -> Result<Vec<Neighbour>, VectorIndexError> {
        let loaded = self.inner.tables().get(table).cloned();
        let loaded = match loaded {
            Some(loaded) => loaded,
            None => {
                let id = table.clone();
                self.blocking(move |inner| inner.table(&id, None))
                    .await?
                    .ok_or_else(|| VectorIndexError::NotPrepared(table.clone()))?
            }
        };
        if request.exact {
            // A full scan takes milliseconds per 100k vectors: off the async workers.
            let query = request.query.to_vec();
            let owned = (request.k, request.expansion, request.not_before);
            return tokio::task::spawn_blocking(move || {
                Inner::search_table(
                    &loaded,
                    &SearchRequest {
                        query: &query,
                        k: owned.0,
                        expansion: owned.1,
                        exact: true,
                        not_before: owned.2,
                    },
                )
            })
            .await
            .map_err(|error| graph_failure("blocking task failed", error))?;
        }
        Inner::search_table(&loaded, &request)
    }

    async fn len(&self, table: &FeatureViewId) -> Result<u64, VectorIndexError> {
        let id = table.clone();
        self.blocking(move |inner| {
            Ok(inner
                .table(&id, None)?
                .map_or(0, |loaded| loaded.state().by_id.len() as u64))
        })
        .await
    }

    async fn drop_index(&self, table: &FeatureViewId) -> Result<(), VectorIndexError> {
        let id = table.clone();
        self.blocking(move |inner| inner.drop_blocking(&id)).await
    }

    async fn flush(&self) -> Result<(), VectorIndexError> {
        self.blocking(|inner| inner.flush_blocking()).await
    }
}
