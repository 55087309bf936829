//! The in-memory reference implementation of [`OnlineStore`].

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use larder_core::{EntityKey, FeatureViewId};

use crate::{OnlineRow, OnlineStore, OnlineStoreError, RowSwap, WriteDurability, WriteSummary};

/// The rows of every table, keyed by table then by entity key.
type MemoryTables = HashMap<FeatureViewId, HashMap<EntityKey, OnlineRow>>;

/// An online store that keeps every row in process memory: the reference implementation of
/// the [`OnlineStore`] specification.
///
/// It is the simplest code that obeys the spec, so it serves as the model that other backends
/// are compared with, and as the store of tests and demos. Nothing survives the process.
///
/// A batch write takes one write lock for the whole batch, so batches are atomic here (the
/// spec only promises per-key atomicity). The lock is a `std` lock, never held across an
/// `.await`; every operation is a handful of hash map lookups per row.
#[derive(Debug, Default)]
pub struct MemoryOnlineStore {
    tables: RwLock<MemoryTables>,
}

impl MemoryOnlineStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the read lock. A panic while the lock was held cannot leave a table half updated
    /// (every mutation is one map insert or removal), so a poisoned lock is still safe to use.
    fn read_tables(&self) -> RwLockReadGuard<'_, MemoryTables> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the write lock; see [`Self::read_tables`] about poisoning.
    fn write_tables(&self) -> RwLockWriteGuard<'_, MemoryTables> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl OnlineStore for MemoryOnlineStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn write_rows_with(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
        _durability: WriteDurability,
    ) -> Result<WriteSummary, OnlineStoreError> {
        let mut summary = WriteSummary::default();
        if rows.is_empty() {
            return Ok(summary);
        }
        let mut tables = self.write_tables();
        let table_rows = tables.entry(table.clone()).or_default();
        for row in rows {
            let stored_is_newer = table_rows
                .get(&row.entity_key)
                .is_some_and(|stored_row| stored_row.event_timestamp > row.event_timestamp);
            if stored_is_newer {
                summary.skipped_stale += 1;
                continue;
            }
            table_rows.insert(row.entity_key.clone(), row);
            summary.written += 1;
        }
        Ok(summary)
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        // Nothing outlives the process: every write is as durable as it gets.
        Ok(())
    }

    async fn swap_rows(
        &self,
        table: &FeatureViewId,
        swaps: Vec<RowSwap>,
    ) -> Result<Vec<bool>, OnlineStoreError> {
        let mut tables = self.write_tables();
        let table_rows = tables.entry(table.clone()).or_default();
        Ok(swaps
            .into_iter()
            .map(|swap| {
                let applies = swap.expects(table_rows.get(&swap.row.entity_key));
                if applies {
                    table_rows.insert(swap.row.entity_key.clone(), swap.row);
                }
                applies
            })
            .collect())
    }

    async fn read_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
        let tables = self.read_tables();
        let Some(table_rows) = tables.get(table) else {
            return Ok(vec![None; keys.len()]);
        };
        Ok(keys
            .iter()
            .map(|key| table_rows.get(key).cloned())
            .collect())
    }

    async fn delete_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, OnlineStoreError> {
        let mut tables = self.write_tables();
        let Some(table_rows) = tables.get_mut(table) else {
            return Ok(0);
        };
        let deleted_count = keys
            .iter()
            .filter(|key| table_rows.remove(*key).is_some())
            .count();
        Ok(deleted_count as u64)
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        self.write_tables().remove(table);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_passes_the_conformance_suite() {
        crate::conformance::run_all(Arc::new(MemoryOnlineStore::new())).await;
    }
}
