//! Opening a feature repo's configured stores: the one place that chooses backends.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use larder_ingest::{LineageEmitter, LineageSink};
use larder_offline::{DataFusionEngine, RoutedEngine, SharedOfflineEngine};
use larder_offline_spark::SparkEngine;
use larder_online::{
    CacheConfig, CachedOnlineStore, EmbeddedOnlineStore, MemoryDigestStore, MemoryOnlineStore,
    OnlineStoreError, RedbDigestStore, SharedDigestStore, SharedOnlineStore, TableOptions,
};
use larder_online_dynamodb::{DynamoDbOnlineStore, DynamoDbOnlineStoreOptions};
use larder_online_redis::{RedisOnlineStore, RedisOnlineStoreOptions};
use larder_registry::{
    FileRegistryStore, LineageConfig, OfflineEngineConfig, OfflineStoreConfig, OnlineStoreConfig,
    Registry, RegistryStore, RepoConfig, VectorStoreConfig,
};
use larder_vector::{EmbeddedVectorIndex, SharedVectorIndex, VectorIndexedStore};
use larder_vector_pgvector::{PgvectorIndex, PgvectorOptions};

/// The stores a process opens: the online store (decorated), the change detection's
/// digests and the vector index the decorator feeds (which search reads).
#[derive(Clone)]
pub struct OnlineStores {
    /// The online store, behind the cache (if configured) and the vector index decorator.
    pub store: SharedOnlineStore,
    /// The batch lane's digests.
    pub digests: SharedDigestStore,
    /// The nearest-neighbour indexes.
    pub vectors: SharedVectorIndex,
}

/// The sink of a `lineage` section: its file (relative to the repo root) or its catalog.
fn lineage_sink(root: &Path, config: &RepoConfig, lineage: &LineageConfig) -> LineageSink {
    match lineage {
        LineageConfig::File { path, .. } => LineageSink::file(config.resolve_path(root, path)),
        LineageConfig::Http { timeout_ms, .. } => LineageSink::http(
            lineage.http_endpoint().unwrap_or_default(),
            Duration::from_millis(*timeout_ms),
        ),
    }
}

/// The offline engine `offline_engine` selects, with the batch `sources` registered (local
/// paths relative to `root`): DataFusion in process, or a Spark Connect session.
pub async fn open_offline_engine(
    root: &Path,
    config: &RepoConfig,
    sources: Vec<larder_core::DataSource>,
) -> Result<SharedOfflineEngine> {
    let batch_rows = config.materialize.batch_rows;
    Ok(match &config.offline_engine {
        OfflineEngineConfig::Datafusion => {
            Arc::new(DataFusionEngine::new(root, &config.s3, batch_rows, &sources).await?)
        }
        OfflineEngineConfig::Spark { remote, views } => {
            let spark: SharedOfflineEngine =
                Arc::new(SparkEngine::connect(remote, root, batch_rows, &sources).await?);
            if views.is_empty() {
                spark
            } else {
                let in_process: SharedOfflineEngine =
                    Arc::new(DataFusionEngine::new(root, &config.s3, batch_rows, &sources).await?);
                Arc::new(RoutedEngine::new(in_process, spark, views.iter().cloned()))
            }
        }
    })
}

/// A feature repo's configuration and where its stores live.
#[derive(Debug, Clone)]
pub struct RepoContext {
    /// The repo folder.
    pub root: PathBuf,
    /// Its larder.yaml.
    pub config: RepoConfig,
    /// Where the lineage events of this process go (`lineage`), shared by its clones; `None`:
    /// no lineage.
    lineage_sink: Option<Arc<LineageSink>>,
}

impl RepoContext {
    /// Loads larder.yaml.
    pub fn load(root: &Path) -> Result<Self> {
        let config = RepoConfig::load(root).map_err(|diagnostics| anyhow!("{diagnostics}"))?;
        let lineage_sink = config
            .lineage
            .as_ref()
            .map(|lineage| Arc::new(lineage_sink(root, &config, lineage)));
        Ok(Self {
            root: root.to_path_buf(),
            config,
            lineage_sink,
        })
    }

    /// The OpenLineage emitter of runs over `registry`'s sources, when larder.yaml has a
    /// `lineage` section. Its sink is shared by every run of this process.
    pub fn lineage_emitter(&self, registry: &Registry) -> Option<Arc<LineageEmitter>> {
        let sink = self.lineage_sink.as_ref()?;
        let namespace = self
            .config
            .lineage
            .as_ref()
            .map_or(self.config.project.as_str(), |lineage| {
                lineage.namespace(&self.config.project)
            });
        Some(Arc::new(
            LineageEmitter::new(
                Arc::clone(sink),
                namespace,
                &self.config.project,
                &self.root,
            )
            .with_sources(registry.sources.values()),
        ))
    }

    /// Waits for the lineage events this process queued for a catalog (at most twice the
    /// sink's `timeout_ms`), so that a command does not exit before they are sent.
    pub fn flush_lineage(&self) {
        if let (Some(sink), Some(LineageConfig::Http { timeout_ms, .. })) =
            (&self.lineage_sink, &self.config.lineage)
        {
            sink.flush(Duration::from_millis(timeout_ms.saturating_mul(2)));
        }
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

    /// Opens (or connects to) the configured online store.
    pub async fn open_online_store(&self) -> Result<SharedOnlineStore, OnlineStoreError> {
        Ok(self.open_online_and_digest_stores().await?.0)
    }

    /// [`RepoContext::open_online_stores`] without the vector index handle.
    pub async fn open_online_and_digest_stores(
        &self,
    ) -> Result<(SharedOnlineStore, SharedDigestStore), OnlineStoreError> {
        let stores = self.open_online_stores().await?;
        Ok((stores.store, stores.digests))
    }

    /// Opens the configured online store (behind the write-through cache when
    /// `online_cache` is set, and behind the vector index decorator, which keeps every
    /// view's `vector_index` in step with its writes) with the digest store of the batch
    /// lane's change detection: the embedded store keeps digests in its own file, the memory
    /// store in memory (both forget digests exactly when they forget rows), and a remote
    /// store (Redis, DynamoDB) in a local redb file beside the registry.
    pub async fn open_online_stores(&self) -> Result<OnlineStores, OnlineStoreError> {
        let (store, digests) = self.open_plain_online_and_digest_stores().await?;
        let vectors = self.open_vector_index().await?;
        let store: SharedOnlineStore =
            Arc::new(VectorIndexedStore::new(store, Arc::clone(&vectors)));
        Ok(OnlineStores {
            store,
            digests,
            vectors,
        })
    }

    /// Opens the configured vector index backend (`vector_store`).
    async fn open_vector_index(&self) -> Result<SharedVectorIndex, OnlineStoreError> {
        let any_index = self.applied_registry().is_ok_and(|registry| {
            registry
                .feature_views
                .values()
                .any(|view| view.vector_index().is_some())
        });
        match &self.config.vector_store {
            // The embedded folder admits one process: without an indexed view, leave it to
            // others (a `larder materialize` beside a `larder serve` on a remote store).
            // A first indexed view applied while serving is indexed once `serve` restarts.
            VectorStoreConfig::Embedded { .. } if !any_index => {
                Ok(Arc::new(larder_vector::MemoryVectorIndex::new()))
            }
            VectorStoreConfig::Embedded { path } => {
                let folder = self.config.resolve_path(&self.root, path);
                let index = tokio::task::spawn_blocking(move || EmbeddedVectorIndex::open(&folder))
                    .await
                    .map_err(|error| OnlineStoreError::Internal {
                        backend: "vector-index",
                        message: error.to_string(),
                    })??;
                Ok(Arc::new(index))
            }
            VectorStoreConfig::Pgvector {
                url,
                table_prefix,
                pool_size,
            } => {
                let index = PgvectorIndex::connect(PgvectorOptions {
                    url: url.clone(),
                    table_prefix: table_prefix.clone(),
                    pool_size: *pool_size,
                })
                .await?;
                Ok(Arc::new(index))
            }
        }
    }

    async fn open_plain_online_and_digest_stores(
        &self,
    ) -> Result<(SharedOnlineStore, SharedDigestStore), OnlineStoreError> {
        let (store, digests): (SharedOnlineStore, SharedDigestStore) =
            match &self.config.online_store {
                OnlineStoreConfig::Embedded { path, cache_mib } => {
                    let cache_bytes =
                        usize::try_from(cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
                    let store = EmbeddedOnlineStore::open_with_cache(
                        &self.config.resolve_path(&self.root, path),
                        cache_bytes,
                    )?;
                    let digests: SharedDigestStore = Arc::new(store.digest_store());
                    (Arc::new(store), digests)
                }
                OnlineStoreConfig::Memory => (
                    Arc::new(MemoryOnlineStore::new()),
                    Arc::new(MemoryDigestStore::new()),
                ),
                OnlineStoreConfig::Redis(redis) => {
                    let options = RedisOnlineStoreOptions {
                        urls: redis.urls.clone(),
                        cluster: redis.cluster,
                        pool_size: redis.pool_size,
                        key_prefix: redis.key_prefix.clone(),
                        username: redis.username.clone(),
                        password: redis.password.clone(),
                        connection_timeout: Duration::from_millis(redis.connection_timeout_ms),
                        response_timeout: Duration::from_millis(redis.response_timeout_ms),
                    };
                    let store = RedisOnlineStore::connect(options).await?;
                    (Arc::new(store), self.local_digest_store()?)
                }
                OnlineStoreConfig::DynamoDb(dynamodb) => {
                    let options = DynamoDbOnlineStoreOptions {
                        region: dynamodb.region.clone(),
                        endpoint: dynamodb.endpoint.clone(),
                        table_prefix: dynamodb.table_prefix.clone(),
                        credentials: dynamodb
                            .access_key_id
                            .clone()
                            .zip(dynamodb.secret_access_key.clone()),
                        max_concurrency: dynamodb.max_concurrency,
                    };
                    let store = DynamoDbOnlineStore::connect(options)?;
                    (Arc::new(store), self.local_digest_store()?)
                }
            };
        Ok((self.with_cache(store), digests))
    }

    /// Whether the online store keeps the digests itself (embedded, memory), so that they
    /// must be shared with it, rather than in a local file of their own (remote stores).
    pub fn digests_live_in_online_store(&self) -> bool {
        matches!(
            self.config.online_store,
            OnlineStoreConfig::Embedded { .. } | OnlineStoreConfig::Memory
        )
    }

    /// The address of the `larder serve` running over this repo: the one it recorded, else
    /// the configured host and port.
    pub fn server_base_url(&self) -> String {
        let serving = &self.config.serving;
        std::fs::read_to_string(self.server_address_file())
            .map(|text| text.trim().to_string())
            .unwrap_or_else(|_| format!("http://{}:{}", serving.host, serving.port))
    }

    /// The event times direct writes may carry (`serving.min_event_time`,
    /// `serving.max_event_time_ahead`).
    pub fn event_time_bounds(&self) -> larder_server::push::EventTimeBounds {
        let serving = &self.config.serving;
        let defaults = larder_server::push::EventTimeBounds::default();
        larder_server::push::EventTimeBounds {
            min: serving.min_event_time().unwrap_or(defaults.min),
            max_ahead: std::time::Duration::from_secs(serving.max_event_time_ahead.as_seconds()),
        }
    }

    /// How a long-running process reaches the change detection's digests: `shared` when
    /// already open (they live in the online store, or this process holds the local file);
    /// `None` opens the local file at each use, so that a `larder materialize` from another
    /// process can open it in between.
    pub fn digest_opener(
        &self,
        shared: Option<SharedDigestStore>,
    ) -> larder_ingest::erasure::DigestOpener {
        match shared {
            Some(digests) => Arc::new(move || Ok(Arc::clone(&digests))),
            None => {
                let context = self.clone();
                Arc::new(move || {
                    context
                        .local_digest_store()
                        .map_err(|error| error.to_string())
                })
            }
        }
    }

    /// The eraser over `store`, the digests of `digests` and the offline store, with its
    /// jobs and audit log beside the registry (`erasure/`).
    pub fn eraser(
        &self,
        store: SharedOnlineStore,
        digests: larder_ingest::erasure::DigestOpener,
    ) -> larder_ingest::Eraser {
        larder_ingest::Eraser::new(store, digests, self.offline_store(), self.erasure_folder())
    }

    /// Where erasure keeps its jobs, audit log and salt, beside the registry.
    pub fn erasure_folder(&self) -> PathBuf {
        self.state_folder().join("erasure")
    }

    /// The digests of a remote store's rows, in a local redb file beside the registry.
    pub fn local_digest_store(&self) -> Result<SharedDigestStore, OnlineStoreError> {
        let digest_path = self.state_folder().join("digests.redb");
        Ok(Arc::new(RedbDigestStore::open(&digest_path)?))
    }

    /// The folder of the registry file, where local state (run history, digests) lives.
    fn state_folder(&self) -> PathBuf {
        let registry_path = self.config.registry_path(&self.root);
        registry_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone())
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
        larder_ingest::RunHistory::new(self.state_folder().join("runs.jsonl"))
    }

    /// The hook `larder apply` runs after recording the registry: prepares the online table
    /// of every online feature view with its TTL ([`larder_online::OnlineStore::prepare_table`]).
    /// Stores that live in this process or in a local file need no preparation and are not
    /// opened (a running `larder serve` may hold the embedded file).
    pub async fn prepare_online_tables(&self, registry: &Registry) -> Result<usize> {
        if matches!(
            self.config.online_store,
            OnlineStoreConfig::Embedded { .. } | OnlineStoreConfig::Memory
        ) {
            return Ok(0);
        }
        let store = self
            .open_online_store()
            .await
            .context("opening the online store to prepare its tables")?;
        let mut prepared = 0;
        for view in registry.feature_views.values().filter(|view| view.online) {
            store
                .prepare_table(&view.id(), TableOptions::for_view(view))
                .await
                .with_context(|| format!("preparing the online table of {}", view.id()))?;
            prepared += 1;
        }
        Ok(prepared)
    }

    /// Where a running `larder serve` records the address it listens on, so that other
    /// commands can find it when it holds the embedded store.
    pub fn server_address_file(&self) -> PathBuf {
        self.state_folder().join("server.addr")
    }

    /// The stream consumers' state (aggregation tiles and stream positions), beside the
    /// registry.
    pub fn stream_state_path(&self) -> PathBuf {
        self.state_folder().join("stream-state.redb")
    }

    /// The configured offline store: the one place that picks its backend.
    pub fn offline_store(&self) -> larder_offline::SharedOfflineStore {
        match &self.config.offline_store {
            OfflineStoreConfig::Parquet { path } => {
                Arc::new(larder_offline::ParquetOfflineStore::new(
                    self.config.resolve_path(&self.root, path),
                ))
            }
        }
    }
}
