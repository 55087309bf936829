//! A write-through cache that wraps any online store.
//!
//! [`CachedOnlineStore`] implements [`OnlineStore`] over an inner store. Reads are served
//! from memory when the row (or its absence) is cached and younger than the cache TTL;
//! misses are read from the inner store in one batch and cached. Every write, delete and
//! drop goes to the inner store and then invalidates the keys it touched.
//!
//! # Never older than a returned write
//!
//! A read that misses records its shard's *generation* before asking the inner store, and
//! caches the answer only if the generation has not moved when the answer arrives. Writers
//! bump the generation of every shard they touch after the inner write returns (whether it
//! succeeded or not). So a read that raced with a write never caches the pre-write row, and
//! once `write_rows` has returned, no read returns a row older than the one written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use larder_core::{EntityKey, FeatureViewId};

use crate::{
    OnlineRow, OnlineStore, OnlineStoreError, RowSwap, SharedOnlineStore, WriteDurability,
    WriteSummary,
};

const SHARD_COUNT: usize = 64;

/// Bounds of a [`CachedOnlineStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most cached rows (found or not found) across all tables.
    pub max_entries: usize,
    /// How long a cached row may be served.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            ttl: Duration::from_secs(60),
        }
    }
}

/// Hit and miss counts of a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Keys answered from memory.
    pub hits: u64,
    /// Keys read from the inner store.
    pub misses: u64,
}

struct CachedRow {
    row: Option<OnlineRow>,
    cached_at: Instant,
}

/// A cached row's key: the table's number and the entity key.
type CacheKey = (u32, EntityKey);

/// A borrowed [`CacheKey`], so that a lookup needs no copy of the entity key. It hashes as
/// the owned key does (the table number, then the key's bytes as `EntityKey` hashes them).
#[derive(Hash)]
struct CacheKeyRef<'key>(u32, &'key [u8]);

impl hashbrown::Equivalent<CacheKey> for CacheKeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.0 == key.0 && self.1 == key.1.as_bytes()
    }
}

#[derive(Default)]
struct Shard {
    rows: hashbrown::HashMap<CacheKey, CachedRow, foldhash::fast::RandomState>,
    generation: u64,
}

/// An online store decorator that caches reads and is invalidated by writes.
pub struct CachedOnlineStore {
    inner: SharedOnlineStore,
    config: CacheConfig,
    table_numbers: RwLock<HashMap<FeatureViewId, u32>>,
    shards: Vec<Mutex<Shard>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for CachedOnlineStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CachedOnlineStore")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CachedOnlineStore {
    /// Wraps `inner`.
    pub fn new(inner: SharedOnlineStore, config: CacheConfig) -> Self {
        Self {
            inner,
            config,
            table_numbers: RwLock::new(HashMap::new()),
            shards: (0..SHARD_COUNT)
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn table_number(&self, table: &FeatureViewId) -> u32 {
        if let Ok(numbers) = self.table_numbers.read()
            && let Some(number) = numbers.get(table)
        {
            return *number;
        }
        let mut numbers = match self.table_numbers.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = numbers.len() as u32;
        *numbers.entry(table.clone()).or_insert(next)
    }

    fn shard_index(table_number: u32, key: &EntityKey) -> usize {
        // FNV-1a over the key bytes, mixed with the table number.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(table_number);
        for byte in key.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % SHARD_COUNT as u64) as usize
    }

    fn lock_shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        match self.shards[index].lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn invalidate(&self, table_number: u32, keys: impl Iterator<Item = EntityKey>) {
        for key in keys {
            let mut shard = self.lock_shard(Self::shard_index(table_number, &key));
            shard.generation += 1;
            shard.rows.remove(&(table_number, key));
        }
    }

    fn insert(shard: &mut Shard, capacity: usize, key: CacheKey, row: Option<OnlineRow>) {
        if shard.rows.len() >= capacity && !shard.rows.contains_key(&key) {
            // Evict an arbitrary entry: the map's iteration order is effectively random.
            if let Some(victim) = shard.rows.keys().next().cloned() {
                shard.rows.remove(&victim);
            }
        }
        shard.rows.insert(
            key,
            CachedRow {
                row,
                cached_at: Instant::now(),
            },
        );
    }
}

#[async_trait::async_trait]
impl OnlineStore for CachedOnlineStore {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn write_rows_with(
        &self,
        table: &FeatureViewId,
        rows: Vec<OnlineRow>,
        durability: WriteDurability,
    ) -> Result<WriteSummary, OnlineStoreError> {
        let table_number = self.table_number(table);
        let keys: Vec<EntityKey> = rows.iter().map(|row| row.entity_key.clone()).collect();
        let result = self.inner.write_rows_with(table, rows, durability).await;
        self.invalidate(table_number, keys.into_iter());
        result
    }

    async fn sync(&self) -> Result<(), OnlineStoreError> {
        self.inner.sync().await
    }

    async fn swap_rows(
        &self,
        table: &FeatureViewId,
        swaps: Vec<RowSwap>,
    ) -> Result<Vec<bool>, OnlineStoreError> {
        let table_number = self.table_number(table);
        let keys: Vec<EntityKey> = swaps
            .iter()
            .map(|swap| swap.row.entity_key.clone())
            .collect();
        let result = self.inner.swap_rows(table, swaps).await;
        // Also after a failed swap: the writer read a stale row, and must read it afresh.
        self.invalidate(table_number, keys.into_iter());
        result
    }

    async fn read_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
        let table_number = self.table_number(table);
        let mut slots: Vec<Option<OnlineRow>> = vec![None; keys.len()];
        let mut missing_positions = Vec::new();
        let mut missing_generations = Vec::new();
        let now = Instant::now();
        for (position, key) in keys.iter().enumerate() {
            let shard_index = Self::shard_index(table_number, key);
            let shard = self.lock_shard(shard_index);
            match shard.rows.get(&CacheKeyRef(table_number, key.as_bytes())) {
                Some(cached) if now.duration_since(cached.cached_at) < self.config.ttl => {
                    slots[position] = cached.row.clone();
                }
                _ => {
                    missing_positions.push(position);
                    missing_generations.push(shard.generation);
                }
            }
        }
        let hits = (keys.len() - missing_positions.len()) as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses
            .fetch_add(missing_positions.len() as u64, Ordering::Relaxed);
        metrics::counter!("larder_online_cache_hits_total").increment(hits);
        metrics::counter!("larder_online_cache_misses_total")
            .increment(missing_positions.len() as u64);
        if missing_positions.is_empty() {
            return Ok(slots);
        }
        let missing_keys: Vec<EntityKey> = missing_positions
            .iter()
            .map(|position| keys[*position].clone())
            .collect();
        let fetched = self.inner.read_rows(table, &missing_keys).await?;
        let capacity = (self.config.max_entries / SHARD_COUNT).max(1);
        for ((position, generation), row) in missing_positions
            .into_iter()
            .zip(missing_generations)
            .zip(fetched)
        {
            let key = &keys[position];
            let mut shard = self.lock_shard(Self::shard_index(table_number, key));
            if shard.generation == generation {
                Self::insert(
                    &mut shard,
                    capacity,
                    (table_number, key.clone()),
                    row.clone(),
                );
            }
            drop(shard);
            slots[position] = row;
        }
        Ok(slots)
    }

    async fn delete_rows(
        &self,
        table: &FeatureViewId,
        keys: &[EntityKey],
    ) -> Result<u64, OnlineStoreError> {
        let table_number = self.table_number(table);
        let result = self.inner.delete_rows(table, keys).await;
        self.invalidate(table_number, keys.iter().cloned());
        result
    }

    async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
        let table_number = self.table_number(table);
        let result = self.inner.drop_table(table).await;
        for index in 0..SHARD_COUNT {
            let mut shard = self.lock_shard(index);
            shard.generation += 1;
            shard.rows.retain(|(number, _), _| *number != table_number);
        }
        result
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicI64;

    use larder_core::{Timestamp, WriteLane};

    use super::*;
    use crate::MemoryOnlineStore;

    /// An inner store whose reads take a little while, so that reads and writes interleave.
    #[derive(Debug)]
    struct SlowReads(MemoryOnlineStore);

    #[async_trait::async_trait]
    impl OnlineStore for SlowReads {
        fn backend_name(&self) -> &'static str {
            "slow-memory"
        }
        async fn write_rows_with(
            &self,
            table: &FeatureViewId,
            rows: Vec<OnlineRow>,
            durability: WriteDurability,
        ) -> Result<WriteSummary, OnlineStoreError> {
            tokio::task::yield_now().await;
            self.0.write_rows_with(table, rows, durability).await
        }
        async fn sync(&self) -> Result<(), OnlineStoreError> {
            self.0.sync().await
        }
        async fn swap_rows(
            &self,
            table: &FeatureViewId,
            swaps: Vec<RowSwap>,
        ) -> Result<Vec<bool>, OnlineStoreError> {
            self.0.swap_rows(table, swaps).await
        }
        async fn read_rows(
            &self,
            table: &FeatureViewId,
            keys: &[EntityKey],
        ) -> Result<Vec<Option<OnlineRow>>, OnlineStoreError> {
            let rows = self.0.read_rows(table, keys).await;
            tokio::time::sleep(Duration::from_micros(200)).await;
            rows
        }
        async fn delete_rows(
            &self,
            table: &FeatureViewId,
            keys: &[EntityKey],
        ) -> Result<u64, OnlineStoreError> {
            self.0.delete_rows(table, keys).await
        }
        async fn drop_table(&self, table: &FeatureViewId) -> Result<(), OnlineStoreError> {
            self.0.drop_table(table).await
        }
    }

    fn row(key: i64, event_micros: i64) -> OnlineRow {
        OnlineRow {
            entity_key: EntityKey::from_int(key),
            event_timestamp: Timestamp(event_micros),
            write_timestamp: Timestamp(event_micros),
            lane: WriteLane::Direct,
            values: larder_core::codec::encode_row_to_vec(&[larder_core::Value::Int64(
                event_micros,
            )]),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cached_store_passes_the_conformance_suite() {
        let inner: SharedOnlineStore = Arc::new(MemoryOnlineStore::new());
        crate::conformance::run_all(Arc::new(CachedOnlineStore::new(
            inner,
            CacheConfig::default(),
        )))
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_never_return_a_row_older_than_a_returned_write() {
        const KEYS: i64 = 8;
        let cache = Arc::new(CachedOnlineStore::new(
            Arc::new(SlowReads(MemoryOnlineStore::new())),
            CacheConfig::default(),
        ));
        let table = FeatureViewId {
            name: "cached".into(),
            version: 1,
        };
        let floors: Arc<Vec<AtomicI64>> = Arc::new((0..KEYS).map(|_| AtomicI64::new(0)).collect());
        let mut tasks = Vec::new();
        for writer in 0..2_i64 {
            let (cache, table, floors) = (Arc::clone(&cache), table.clone(), Arc::clone(&floors));
            tasks.push(tokio::spawn(async move {
                for round in 1..=300_i64 {
                    let key = (round * 7 + writer) % KEYS;
                    let event = round * 10 + writer;
                    cache
                        .write_rows(&table, vec![row(key, event)])
                        .await
                        .unwrap();
                    floors[key as usize].fetch_max(event, Ordering::SeqCst);
                }
            }));
        }
        for _ in 0..3 {
            let (cache, table, floors) = (Arc::clone(&cache), table.clone(), Arc::clone(&floors));
            tasks.push(tokio::spawn(async move {
                for round in 0..400_i64 {
                    let key = round % KEYS;
                    let floor = floors[key as usize].load(Ordering::SeqCst);
                    let read = cache.read_rows(&table, &[EntityKey::from_int(key)]).await.unwrap();
                    let seen = read[0].as_ref().map_or(0, |row| row.event_timestamp.as_micros());
                    assert!(seen >= floor, "key {key}: read event time {seen}, but {floor} was written and returned before the read");
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let stats = cache.stats();
        assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
    }

    #[tokio::test]
    async fn hits_are_served_from_memory_until_the_ttl() {
        let inner = Arc::new(MemoryOnlineStore::new());
        let cache = CachedOnlineStore::new(
            inner.clone(),
            CacheConfig {
                max_entries: 1_000,
                ttl: Duration::from_millis(50),
            },
        );
        let table = FeatureViewId {
            name: "ttl".into(),
            version: 1,
        };
        cache.write_rows(&table, vec![row(1, 10)]).await.unwrap();
        cache
            .read_rows(&table, &[EntityKey::from_int(1), EntityKey::from_int(2)])
            .await
            .unwrap();
        // A write that bypasses the cache is not seen until the cached row expires.
        inner.write_rows(&table, vec![row(1, 20)]).await.unwrap();
        let cached = cache
            .read_rows(&table, &[EntityKey::from_int(1)])
            .await
            .unwrap();
        assert_eq!(
            cached[0]
                .as_ref()
                .map(|row| row.event_timestamp.as_micros()),
            Some(10)
        );
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 2 });
        tokio::time::sleep(Duration::from_millis(60)).await;
        let fresh = cache
            .read_rows(&table, &[EntityKey::from_int(1)])
            .await
            .unwrap();
        assert_eq!(
            fresh[0].as_ref().map(|row| row.event_timestamp.as_micros()),
            Some(20)
        );
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bound() {
        let cache = CachedOnlineStore::new(
            Arc::new(MemoryOnlineStore::new()),
            CacheConfig {
                max_entries: SHARD_COUNT * 4,
                ttl: Duration::from_secs(60),
            },
        );
        let table = FeatureViewId {
            name: "bounded".into(),
            version: 1,
        };
        let keys: Vec<EntityKey> = (0..10_000).map(EntityKey::from_int).collect();
        cache.read_rows(&table, &keys).await.unwrap();
        let cached: usize = (0..SHARD_COUNT)
            .map(|index| cache.lock_shard(index).rows.len())
            .sum();
        assert!(cached <= SHARD_COUNT * 4, "{cached} rows cached");
    }
}
