//! Opening a feature repo's configured stores: the one place that chooses backends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use larder_online::{
    CacheConfig, CachedOnlineStore, EmbeddedOnlineStore, MemoryDigestStore, MemoryOnlineStore,
    OnlineStoreError, SharedDigestStore, SharedOnlineStore,
};
use larder_registry::{
    FileRegistryStore, OfflineStoreConfig, OnlineStoreConfig, Registry, RegistryStore, RepoConfig,
};

/// A feature repo's configuration and where its stores live.
pub struct RepoContext {
    /// The repo folder.
    pub root: PathBuf,
    /// Its larder.yaml.
    pub config: RepoConfig,
}

impl RepoContext {
    /// Loads larder.yaml.
    pub fn load(root: &Path) -> Result<Self> {
        let config = RepoConfig::load(root).map_err(|diagnostics| anyhow!("{diagnostics}"))?;
        Ok(Self {
            root: root.to_path_buf(),
            config,
        })
    }

    /// The registry store.
    pub fn registry_store(&self) -> FileRegistryStore {
        FileRegistryStore::new(self.config.resolve_path(&self.root, &self.config.registry))
    }

    /// The applied registry, or an error telling the user to run `larder apply`.
    pub fn applied_registry(&self) -> Result<Registry> {
        let store = self.registry_store();
        store
            .load()
            .context("reading the registry")?
            .ok_or_else(|| {
                anyhow!(
                    "no registry in {}: run `larder apply` first",
                    self.root.display()
                )
            })
    }

    /// Opens the configured online store.
    pub fn open_online_store(&self) -> Result<SharedOnlineStore, OnlineStoreError> {
        Ok(self.open_online_and_digest_stores()?.0)
    }

    /// Opens the configured online store (behind the write-through cache when
    /// `online_cache` is set) with the digest store of the batch lane's change detection:
    /// the embedded store keeps digests in its own file; the memory store in memory (both
    /// forget digests exactly when they forget rows).
    pub fn open_online_and_digest_stores(
        &self,
    ) -> Result<(SharedOnlineStore, SharedDigestStore), OnlineStoreError> {
        let (store, digests): (SharedOnlineStore, SharedDigestStore) =
            match &self.config.online_store {
                OnlineStoreConfig::Embedded { path } => {
                    let store =
                        EmbeddedOnlineStore::open(&self.config.resolve_path(&self.root, path))?;
                    let digests: SharedDigestStore = Arc::new(store.digest_store());
                    (Arc::new(store), digests)
                }
                OnlineStoreConfig::Memory => (
                    Arc::new(MemoryOnlineStore::new()),
                    Arc::new(MemoryDigestStore::new()),
                ),
            };
        Ok((self.with_cache(store), digests))
    }

    /// Wraps a store in the write-through cache when larder.yaml asks for one.
    fn with_cache(&self, store: SharedOnlineStore) -> SharedOnlineStore {
        match &self.config.online_cache {
            Some(cache) => Arc::new(CachedOnlineStore::new(
                store,
                CacheConfig {
                    max_entries: cache.max_entries,
                    ttl: std::time::Duration::from_secs(cache.ttl.as_seconds()),
                },
            )),
            None => store,
        }
    }

    /// The run history of the batch lane, beside the registry (`runs.jsonl`).
    pub fn run_history(&self) -> larder_ingest::RunHistory {
        let registry_path = self.config.registry_path(&self.root);
        let folder = registry_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        larder_ingest::RunHistory::new(folder.join("runs.jsonl"))
    }

    /// Where a running `larder serve` records the address it listens on, so that other
    /// commands can find it when it holds the embedded store.
    pub fn server_address_file(&self) -> PathBuf {
        let registry_path = self.config.registry_path(&self.root);
        registry_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone())
            .join("server.addr")
    }

    /// The configured offline store.
    pub fn offline_store(&self) -> larder_offline::ParquetOfflineStore {
        match &self.config.offline_store {
            OfflineStoreConfig::Parquet { path } => {
                larder_offline::ParquetOfflineStore::new(self.config.resolve_path(&self.root, path))
            }
        }
    }
}
