//! Exact search in process memory: the reference backend.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use larder_core::{EntityKey, FeatureViewId, Timestamp};

use crate::{
    Neighbour, SearchRequest, UpsertSummary, VectorEntry, VectorIndex, VectorIndexError,
    VectorIndexOptions, check_entries, check_request, newest_per_key,
};

#[derive(Debug)]
struct MemoryTable {
    options: VectorIndexOptions,
    entries: HashMap<EntityKey, (Timestamp, Option<Vec<f32>>)>,
}

/// Every vector in a hash map, every search a full scan: exact, lost on exit. The reference
/// the approximate backends are measured against.
#[derive(Debug, Default)]
pub struct MemoryVectorIndex {
    tables: Mutex<HashMap<FeatureViewId, MemoryTable>>,
}

impl MemoryVectorIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> MutexGuard<'_, HashMap<FeatureViewId, MemoryTable>> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `k` nearest of `candidates` by exact distance, nearest first (ties by key bytes, so
/// the order is total).
pub(crate) fn exact_top_k<'a>(
    options: &VectorIndexOptions,
    request: &SearchRequest<'_>,
    candidates: impl Iterator<Item = (&'a EntityKey, Timestamp, &'a [f32])>,
) -> Vec<Neighbour> {
    let metric = options.feature.spec.metric;
    let mut scored: Vec<Neighbour> = candidates
        .filter(|(_, event_timestamp, _)| {
            request
                .not_before
                .is_none_or(|not_before| *event_timestamp >= not_before)
        })
        .map(|(key, event_timestamp, vector)| Neighbour {
            key: key.clone(),
            distance: metric.distance(request.query, vector),
            event_timestamp,
        })
        .collect();
    scored.sort_by(|left, right| {
        left.distance
            .total_cmp(&right.distance)
            .then_with(|| left.key.as_bytes().cmp(right.key.as_bytes()))
    });
    scored.truncate(request.k);
    scored
}

#[async_trait::async_trait]
impl VectorIndex for MemoryVectorIndex {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn prepare(
        &self,
        table: &FeatureViewId,
        options: VectorIndexOptions,
    ) -> Result<(), VectorIndexError> {
        let mut tables = self.tables();
        match tables.get(table) {
            Some(existing) if existing.options.feature != options.feature => {
                Err(VectorIndexError::Mismatch {
                    table: table.clone(),
                    existing: existing.options.describe(),
                    requested: options.describe(),
                })
            }
            Some(_) => {
                if let Some(existing) = tables.get_mut(table) {
                    existing.options.ttl = options.ttl;
                }
                Ok(())
            }
            None => {
                tables.insert(
                    table.clone(),
                    MemoryTable {
                        options,
                        entries: HashMap::new(),
                    },
                );
                Ok(())
            }
        }
    }

    async fn upsert(
        &self,
        table: &FeatureViewId,
        entries: Vec<VectorEntry>,
    ) -> Result<UpsertSummary, VectorIndexError> {
        let mut tables = self.tables();
        let state = tables
            .get_mut(table)
            .ok_or_else(|| VectorIndexError::NotPrepared(table.clone()))?;
        check_entries(&state.options, &entries)?;
        let (winners, summary) = newest_per_key(entries, |key| {
            state
                .entries
                .get(key)
                .map(|(event_timestamp, _)| *event_timestamp)
        });
        for entry in winners {
            state
                .entries
                .insert(entry.key, (entry.event_timestamp, entry.vector));
        }
        Ok(summary)
    }

    async fn remove(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, VectorIndexError> {
        let mut tables = self.tables();
        let Some(state) = tables.get_mut(table) else {
            return Ok(0);
        };
        Ok(keys
            .iter()
            .filter(|key| state.entries.remove(*key).is_some())
            .count() as u64)
    }

    async fn search(
        &self,
        table: &FeatureViewId,
        request: SearchRequest<'_>,
    ) -> Result<Vec<Neighbour>, VectorIndexError> {
        let tables = self.tables();
        let state = tables
            .get(table)
            .ok_or_else(|| VectorIndexError::NotPrepared(table.clone()))?;
        check_request(&state.options, &request)?;
        Ok(exact_top_k(
            &state.options,
            &request,
            state
                .entries
                .iter()
                .filter_map(|(key, (event_timestamp, vector))| {
                    vector
                        .as_deref()
                        .map(|vector| (key, *event_timestamp, vector))
                }),
        ))
    }

    async fn len(&self, table: &FeatureViewId) -> Result<u64, VectorIndexError> {
        Ok(self.tables().get(table).map_or(0, |state| {
            state
                .entries
                .values()
                .filter(|(_, vector)| vector.is_some())
                .count() as u64
        }))
    }

    async fn drop_index(&self, table: &FeatureViewId) -> Result<(), VectorIndexError> {
        self.tables().remove(table);
        Ok(())
    }
}
