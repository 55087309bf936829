//! Nearest-neighbour indexes over `vector<N>` features.
//!
//! A feature view may declare a `vector_index` on one `vector<N>` feature. The index holds,
//! per entity, the newest vector written to the view (by event time, as the online store
//! does) and answers "the k entities whose vectors are closest to this query".
//!
//! * [`VectorIndex`] is the seam; its doc comment is the spec and
//!   [`conformance::run_all`] checks every backend against it.
//! * [`MemoryVectorIndex`]: exact search in memory, the reference.
//! * [`EmbeddedVectorIndex`]: an HNSW graph per view version (usearch), persisted in a
//!   folder so that a restart loads it instead of rebuilding it.
//! * [`VectorIndexedStore`] wraps any [`larder_online::OnlineStore`] and keeps the indexes
//!   in step with every write, swap, delete and drop, so every lane (batch, stream, direct
//!   writes, tombstones, erasure) updates them without knowing they exist.

mod embedded;
mod indexed_store;
mod memory;

pub mod conformance;

pub use embedded::EmbeddedVectorIndex;
pub use indexed_store::VectorIndexedStore;
pub use memory::MemoryVectorIndex;

use std::sync::Arc;

use larder_core::{EntityKey, FeatureViewId, IndexedFeature, Timestamp, TtlDuration};

/// Errors of a vector index.
#[derive(Debug, thiserror::Error)]
pub enum VectorIndexError {
    /// A vector or query does not fit the index (wrong dimension, NaN or infinite
    /// components); nothing was written.
    #[error("{0}")]
    InvalidInput(String),
    /// The table was never prepared with [`VectorIndex::prepare`].
    #[error("no vector index for {0}: it was not prepared")]
    NotPrepared(FeatureViewId),
    /// The table was prepared before with other settings (a new view version must be used).
    #[error("vector index of {table} was created with {existing}, not {requested}")]
    Mismatch {
        /// The table.
        table: FeatureViewId,
        /// The settings it has.
        existing: String,
        /// The settings asked for.
        requested: String,
    },
    /// The backend cannot be reached or failed; the caller may retry.
    #[error("vector index '{backend}' is unavailable: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The index's files are held by another process.
    #[error(
        "the vector index at {path} is in use by another process (use `vector_store: {{type: pgvector}}` to write from several processes)"
    )]
    Locked {
        /// The folder.
        path: String,
    },
    /// Stored data that cannot be interpreted.
    #[error("vector index '{backend}' holds corrupt data: {message}")]
    Corrupt {
        /// Backend name.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl From<VectorIndexError> for larder_online::OnlineStoreError {
    fn from(error: VectorIndexError) -> Self {
        match error {
            VectorIndexError::Locked { path } => Self::Locked { path },
            VectorIndexError::Corrupt { backend, message } => Self::Corrupt { backend, message },
            VectorIndexError::Unavailable { backend, message } => {
                Self::Unavailable { backend, message }
            }
            other => Self::Internal {
                backend: "vector-index",
                message: other.to_string(),
            },
        }
    }
}

/// How one table's index is built: the indexed feature (dimension, metric, graph settings)
/// and the view's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VectorIndexOptions {
    /// The indexed feature.
    pub feature: IndexedFeature,
    /// The view's TTL (`None`: vectors never expire).
    pub ttl: Option<TtlDuration>,
}

impl VectorIndexOptions {
    /// Components per vector.
    pub fn dimension(&self) -> usize {
        self.feature.dimension as usize
    }

    /// A readable form for messages (`vector<4> cosine, M=16`).
    pub fn describe(&self) -> String {
        let spec = self.feature.spec;
        format!(
            "vector<{}> {}, connectivity {}, expansion_add {}",
            self.feature.dimension, spec.metric, spec.connectivity, spec.expansion_add
        )
    }

    /// Checks a vector against the index: its dimension and finite components.
    pub fn check_vector(&self, vector: &[f32], what: &str) -> Result<(), VectorIndexError> {
        if vector.len() != self.dimension() {
            return Err(VectorIndexError::InvalidInput(format!(
                "{what} has {} components; the index holds vector<{}>",
                vector.len(),
                self.feature.dimension
            )));
        }
        if let Some(position) = vector.iter().position(|component| !component.is_finite()) {
            return Err(VectorIndexError::InvalidInput(format!(
                "{what} has a non-finite component at position {position} ({})",
                vector[position]
            )));
        }
        Ok(())
    }
}

/// One entity's vector as of an event time; `vector: None` records that the entity's
/// newest row has no vector (a null feature), which keeps an older vector from coming back.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorEntry {
    /// The entity.
    pub key: EntityKey,
    /// When the vector was true.
    pub event_timestamp: Timestamp,
    /// The components, or `None` for a null feature.
    pub vector: Option<Vec<f32>>,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    /// The entity.
    pub key: EntityKey,
    /// Its distance to the query under the index's metric (smaller is closer).
    pub distance: f32,
    /// The event time of the indexed vector.
    pub event_timestamp: Timestamp,
}

/// What a search asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchRequest<'a> {
    /// The query vector (the index's dimension, finite components).
    pub query: &'a [f32],
    /// How many neighbours at most.
    pub k: usize,
    /// Candidates kept while searching (HNSW `ef`); `None`: the index's `expansion_search`.
    /// Raised to at least `k`.
    pub expansion: Option<usize>,
    /// Compare the query with every vector instead of walking the graph.
    pub exact: bool,
    /// Only vectors with an event time at or after this (the view's TTL); `None`: all.
    pub not_before: Option<Timestamp>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertSummary {
    /// Entries applied (their event time was not older than the stored one).
    pub applied: u64,
    /// Entries refused because the stored entry is newer.
    pub skipped_stale: u64,
}

/// A nearest-neighbour index per table (feature view version).
///
/// # Specification
///
/// [`conformance::run_all`] checks each point on every backend.
///
/// * **Tables.** Each table has its own index, created by [`VectorIndex::prepare`] with its
///   options; preparing again with the same options is a no-op, with other options an
///   [`VectorIndexError::Mismatch`] (a changed index needs a new view version). Upserts and
///   searches need a prepared table; removes and drops of an unknown table do nothing.
/// * **Event-time order.** An entry applies only if the stored entry of its key is not newer
///   (at equal event times the incoming one wins), exactly as the online store's rows, so an
///   index fed the same rows as the store ends in the same state whatever order they come
///   in. Within one upsert call, entries of one key apply in order. A `None` vector is
///   stored as a null entry: it is never returned, and it keeps older vectors out.
/// * **Validation.** One vector of the wrong dimension or with a NaN or infinite component
///   refuses the whole call with [`VectorIndexError::InvalidInput`], writing nothing; so
///   does such a query.
/// * **Removal.** [`VectorIndex::remove`] forgets keys entirely (an older entry may be
///   written again afterwards, as for the online store's deletes) and counts the keys it
///   held; [`VectorIndex::drop_index`] forgets the table.
/// * **Search.** Up to `k` non-null entries with an event time at or after `not_before`,
///   nearest first, distances under the metric as [`larder_core::VectorMetric::distance`]
///   computes them (cosine: `1 − cos`, dot: `1 − a·b`, l2: squared Euclidean). `exact`
///   searches are exact; approximate ones reach recall@10 ≥ 0.9 on the suite's data.
/// * **Durability.** What a call wrote is there after the call returns, for every process
///   that opens the index afterwards.
#[async_trait::async_trait]
pub trait VectorIndex: Send + Sync + std::fmt::Debug + 'static {
    /// A short backend name for messages (`memory`, `embedded`, `pgvector`).
    fn backend_name(&self) -> &'static str;

    /// Creates the table's index if it does not exist (see the trait docs).
    async fn prepare(
        &self,
        table: &FeatureViewId,
        options: VectorIndexOptions,
    ) -> Result<(), VectorIndexError>;

    /// Writes entries, each only if not older than the stored entry of its key.
    async fn upsert(
        &self,
        table: &FeatureViewId,
        entries: Vec<VectorEntry>,
    ) -> Result<UpsertSummary, VectorIndexError>;

    /// Forgets the keys; how many it held (null entries included).
    async fn remove(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, VectorIndexError>;

    /// The nearest non-null entries to the query, nearest first.
    async fn search(
        &self,
        table: &FeatureViewId,
        request: SearchRequest<'_>,
    ) -> Result<Vec<Neighbour>, VectorIndexError>;

    /// How many keys hold a vector (null entries excluded); 0 for an unknown table.
    async fn len(&self, table: &FeatureViewId) -> Result<u64, VectorIndexError>;

    /// Forgets the table and its entries. Dropping an unknown table is not an error.
    async fn drop_index(&self, table: &FeatureViewId) -> Result<(), VectorIndexError>;

    /// Persists what is only in memory (the embedded graph), so that the next open loads it
    /// without replaying changes. Data written by earlier calls is durable without it.
    async fn flush(&self) -> Result<(), VectorIndexError> {
        Ok(())
    }
}

/// A shared handle to any vector index.
pub type SharedVectorIndex = Arc<dyn VectorIndex>;

/// Applies entries to a key's state in call order and returns, per key, the surviving entry;
/// shared by backends: `current` is the stored event time of a key (`None`: no entry).
pub(crate) fn newest_per_key(
    entries: Vec<VectorEntry>,
    mut current: impl FnMut(&EntityKey) -> Option<Timestamp>,
) -> (Vec<VectorEntry>, UpsertSummary) {
    let mut summary = UpsertSummary::default();
    let mut winners: std::collections::HashMap<EntityKey, VectorEntry> =
        std::collections::HashMap::with_capacity(entries.len());
    for entry in entries {
        let stored = match winners.get(&entry.key) {
            Some(winner) => Some(winner.event_timestamp),
            None => current(&entry.key),
        };
        if stored.is_some_and(|stored| stored > entry.event_timestamp) {
            summary.skipped_stale += 1;
            continue;
        }
        if winners.insert(entry.key.clone(), entry).is_some() {
            // The earlier entry of this call was applied, then replaced.
            summary.applied += 1;
        }
    }
    summary.applied += winners.len() as u64;
    (winners.into_values().collect(), summary)
}

/// Validates every entry's vector against the options (the whole call fails on one bad one);
/// every backend's upsert starts with it.
pub fn check_entries(
    options: &VectorIndexOptions,
    entries: &[VectorEntry],
) -> Result<(), VectorIndexError> {
    for (position, entry) in entries.iter().enumerate() {
        if let Some(vector) = &entry.vector {
            options.check_vector(vector, &format!("vector {position} (entity {})", entry.key))?;
        }
    }
    Ok(())
}

/// Validates a search request against the options.
pub(crate) fn check_request(
    options: &VectorIndexOptions,
    request: &SearchRequest<'_>,
) -> Result<(), VectorIndexError> {
    options.check_vector(request.query, "the query vector")
}
