//! The online-store decorator that keeps vector indexes in step with every write.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use larder_core::{EntityKey, FeatureViewId, codec};
use larder_online::{
    OnlineRow, OnlineStore, OnlineStoreError, RowSwap, SharedOnlineStore, TableOptions,
    WriteDurability, WriteSummary,
};

use crate::{SharedVectorIndex, VectorEntry, VectorIndexOptions};

/// Wraps an online store and mirrors the indexed feature of every table prepared with a
/// [`TableOptions::vector_index`] into a [`crate::VectorIndex`]:
///
/// * `write_rows`: the rows' vectors are upserted into the index *first* (a bad vector
///   refuses the batch before anything is written), with the same event-time rule as the
///   store; then the store writes them. A crash in between leaves the index ahead of the
///   store, which searches tolerate: they read each hit's row from the store and use its
///   vector.
/// * `swap_rows`: the store decides; the rows of the swaps it applied are then upserted.
/// * `delete_rows` and `drop_table`: the store first, then the index (for every table, also
///   ones not prepared in this process, so erasure reaches indexes it never wrote).
///
/// Reads go straight to the store.
pub struct VectorIndexedStore {
    store: SharedOnlineStore,
    index: SharedVectorIndex,
    indexed: RwLock<HashMap<FeatureViewId, VectorIndexOptions>>,
}

impl std::fmt::Debug for VectorIndexedStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("VectorIndexedStore")
            .field("store", &self.store.backend_name())
            .field("index", &self.index.backend_name())
            .finish_non_exhaustive()
    }
}

impl VectorIndexedStore {
    /// Wraps `store`, keeping `index` in step with it.
    pub fn new(store: SharedOnlineStore, index: SharedVectorIndex) -> Self {
        Self {
            store,
            index,
            indexed: RwLock::new(HashMap::new()),
        }
    }

    /// The vector index it feeds.
    pub fn index(&self) -> &SharedVectorIndex {
        &self.index
    }

    /// The store it wraps.
    pub fn inner(&self) -> &SharedOnlineStore {
        &self.store
    }

    fn options_of(&self, table: &FeatureViewId) -> Option<VectorIndexOptions> {
        self.indexed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
            .copied()
    }

    fn entries<'rows>(
        &self,
        table: &FeatureViewId,
        options: &VectorIndexOptions,
        rows: impl Iterator<Item = &'rows OnlineRow>,
    ) -> Result<Vec<VectorEntry>, OnlineStoreError> {
        let mut offsets = Vec::new();
        rows.map(|row| {
            let vector = vector_of(&row.values, options.feature.position, &mut offsets).map_err(
                |message| OnlineStoreError::Corrupt {
                    backend: "vector-index",
                    message: format!("{table}, entity {}: {message}", row.entity_key),
                },
            )?;
            Ok(VectorEntry {
                key: row.entity_key.clone(),
                event_timestamp: row.event_timestamp,
                vector,
            })
        })
        .collect()
    }
}

/// The vector at `position` of an encoded row (`None` for a null value).
pub fn vector_of(
    values: &[u8],
    position: usize,
    offsets: &mut Vec<u32>,
) -> Result<Option<Vec<f32>>, String> {
    offsets.clear();
    codec::index_row(values, offsets).map_err(|error| error.to_string())?;
    let Some(offset) = offsets.get(position) else {
        // Rows written before the feature existed have fewer values: no vector.
        return Ok(None);
    };
    match codec::value_at(values, *offset).map_err(|error| error.to_string())? {
        codec::ValueRef::Null => Ok(None),
        codec::ValueRef::Vector { bytes, .. } => {
            Ok(Some(codec::vector_components(bytes).collect()))
        }
        other => Err(format!(
            "the indexed feature holds {}, not a vector",
            other.to_value().kind_name()
        )),
    }
}

#[async_trait::async_trait]
impl OnlineStore for VectorIndexedStore {
    fn backend_name(&self) -> &'static str {
        self.store.backend_name()
    }

    async fn prepare_table(
        &self,
        table: &FeatureViewId,
        options: TableOptions,
    ) -> Result<(), OnlineStoreError> {
        self.store.prepare_table(table, options).await?;
        let mut indexed = self.indexed.write().unwrap_or_else(PoisonError::into_inner);
        match options.vector_index {
            Some(feature) => {
                let index_options = VectorIndexOptions {
                    feature,
                    ttl: options.ttl,
                };
                drop(indexed);
                self.index.prepare(table, index_options).await?;
                self.indexed
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(table.clone(), index_options);
            }
            None => {
                indexed.remove(table);
            }
        }
        Ok(())
    }

    async fn write_rows_with(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
        durability: WriteDurability,
    ) -> Result<WriteSummary, OnlineStoreError> {
        if let Some(options) = self.options_of(table)
            && !rows.is_empty()
        {
            let entries = self.entries(table, &options, rows.iter())?;
            self.index.upsert(table, entries).await?;
        }
        self.store.write_rows_with(table, rows, durability).await
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        self.store.sync().await
    }

    async fn swap_rows(
        &self,
        table: &FeatureViewId,
        swaps: Vec<RowSwap>,
    ) -> Result<Vec<bool>, OnlineStoreError> {
        let Some(options) = self.options_of(table) else {
            return self.store.swap_rows(table, swaps).await;
        };
        let rows: Vec<OnlineRow> = swaps.iter().map(|swap| swap.row.clone()).collect();
        let applied = self.store.swap_rows(table, swaps).await?;
        let entries = self.entries(
            table,
            &options,
            rows.iter()
                .zip(&applied)
                .filter_map(|(row, applied)| applied.then_some(row)),
        )?;
        if !entries.is_empty() {
            self.index.upsert(table, entries).await?;
        }
        Ok(applied)
    }

    async fn read_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
        self.store.read_rows(table, keys).await
    }

    async fn delete_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, OnlineStoreError> {
        let deleted = self.store.delete_rows(table, keys).await?;
        self.index.remove(table, keys).await?;
        Ok(deleted)
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        self.store.drop_table(table).await?;
        self.index.drop_index(table).await?;
        self.indexed
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(table);
        Ok(())
    }
}
