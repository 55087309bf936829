//! The registry snapshot that serving reads, refreshed when the registry changes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use larder_registry::{FileRegistryStore, Registry, RegistryStore};

/// A shared, swappable registry snapshot. Requests take an `Arc` of the current snapshot
/// (one atomic increment) and never read the registry file.
#[derive(Debug)]
pub struct RegistryHandle {
    current: RwLock<Arc<Registry>>,
}

impl RegistryHandle {
    /// A handle holding `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            current: RwLock::new(Arc::new(registry)),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Registry> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the snapshot; requests in flight keep the one they started with.
    pub fn replace(&self, registry: Registry) {
        let fresh = Arc::new(registry);
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// Polls the registry file every `interval` and swaps in a new snapshot when it changes.
    /// A registry that fails to load is logged and the old snapshot kept.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        store: FileRegistryStore,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let handle = Arc::clone(self);
        tokio::spawn(async move {
            let mut last_seen: Option<SystemTime> = store.modified_token();
            loop {
                tokio::time::sleep(interval).await;
                let token = store.modified_token();
                if token == last_seen {
                    continue;
                }
                last_seen = token;
                let store_for_load = store.clone();
                match tokio::task::spawn_blocking(move || store_for_load.load()).await {
                    Ok(Ok(Some(registry))) => {
                        tracing::info!(
                            applied_at = registry.applied_at,
                            "registry changed; serving the new definitions"
                        );
                        handle.replace(registry);
                    }
                    Ok(Ok(None)) => {
                        tracing::warn!("registry file disappeared; keeping the last definitions")
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "registry changed but cannot be loaded; keeping the last definitions")
                    }
                    Err(error) => tracing::warn!(%error, "registry refresh task failed"),
                }
            }
        })
    }
}
