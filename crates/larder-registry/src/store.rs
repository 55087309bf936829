//! Where applied registries are recorded.
//!
//! [`RegistryStore`] is the seam; [`FileRegistryStore`] keeps the registry in one JSON file
//! (replaced atomically on every save) and [`MemoryRegistryStore`] is the in-memory reference
//! implementation. Both pass the same test suite.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::Registry;

/// Why a registry could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Reading or writing the registry failed (the environment's fault: permissions, disk).
    #[error("registry {}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The recorded registry is not a registry this version understands.
    #[error("registry {} is corrupt: {message}", path.display())]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What the JSON parser said.
        message: String,
    },
}

/// Records the applied registry of one project.
///
/// Contract, checked by the shared test suite:
/// - [`load`](RegistryStore::load) returns `Ok(None)` until something was saved, and then the
///   last saved registry, equal to what was saved;
/// - [`save`](RegistryStore::save) replaces the registry as a whole: a concurrent or later
///   `load` sees either the old or the new registry, never a mix or a partial write;
/// - both may be called from several threads.
pub trait RegistryStore: Send + Sync {
    /// The last saved registry, or `None` when nothing was saved yet.
    fn load(&self) -> Result<Option<Registry>, RegistryError>;

    /// Replaces the recorded registry.
    fn save(&self, registry: &Registry) -> Result<(), RegistryError>;
}

/// A registry kept as pretty-printed JSON in one file.
///
/// Saving writes a temporary file in the same directory, flushes it to disk and renames it
/// over the registry, so readers never see a partial file. Parent directories are created.
#[derive(Debug, Clone)]
pub struct FileRegistryStore {
    path: PathBuf,
}

impl FileRegistryStore {
    /// A store that keeps the registry in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The registry file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The modification time of the registry file, or `None` when it does not exist. A server
    /// polls it and reloads its snapshot when it changes. (On file systems with coarse
    /// timestamps, two saves within the same tick give the same token.)
    pub fn modified_token(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|metadata| metadata.modified())
            .ok()
    }

    fn io_error(&self, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn write_atomically(&self, contents: &[u8]) -> Result<(), RegistryError> {
        let directory = match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&directory).map_err(|source| RegistryError::Io {
            path: directory.clone(),
            source,
        })?;
        let file_name = self.path.file_name().map_or_else(
            || "registry".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let temporary_path =
            directory.join(format!(".{file_name}.{}.{nanos}.tmp", std::process::id()));
        let write_result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temporary_path)?;
            file.write_all(contents)?;
            file.sync_all()?;
            std::fs::rename(&temporary_path, &self.path)
        })();
        if let Err(source) = write_result {
            let _ = std::fs::remove_file(&temporary_path);
            return Err(self.io_error(source));
        }
        // Make the rename itself durable. Directories cannot be opened for syncing everywhere
        // (Windows), so this is best effort.
        if let Ok(directory_handle) = std::fs::File::open(&directory) {
            let _ = directory_handle.sync_all();
        }
        Ok(())
    }
}

impl RegistryStore for FileRegistryStore {
    fn load(&self) -> Result<Option<Registry>, RegistryError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.io_error(error)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| RegistryError::Corrupt {
                path: self.path.clone(),
                message: error.to_string(),
            })
    }

    fn save(&self, registry: &Registry) -> Result<(), RegistryError> {
        let mut json =
            serde_json::to_vec_pretty(registry).map_err(|error| RegistryError::Corrupt {
                path: self.path.clone(),
                message: error.to_string(),
            })?;
        json.push(b'\n');
        self.write_atomically(&json)
    }
}

/// A registry kept in memory: the reference implementation of [`RegistryStore`], for tests.
#[derive(Debug, Default)]
pub struct MemoryRegistryStore {
    registry: Mutex<Option<Registry>>,
}

impl MemoryRegistryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RegistryStore for MemoryRegistryStore {
    fn load(&self) -> Result<Option<Registry>, RegistryError> {
        let guard = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(guard.clone())
    }

    fn save(&self, registry: &Registry) -> Result<(), RegistryError> {
        let mut guard = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Some(registry.clone());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use larder_core::{
        DataSource, DataSourceKind, Entity, Feature, FeatureService, FeatureServiceItem,
        FeatureView, FileFormat, JoinKey, TtlDuration, ValueType,
    };

    use super::*;

    fn sample_registry() -> Registry {
        let entity = Entity {
            name: "user".into(),
            join_keys: vec![JoinKey {
                name: "user_id".into(),
                dtype: ValueType::Int64,
            }],
            description: "a user".into(),
            owner: String::new(),
            tags: BTreeMap::from([("team".into(), "growth".into())]),
        };
        let source = DataSource {
            name: "profiles".into(),
            kind: DataSourceKind::File {
                path: "data/sources/profiles.parquet".into(),
                format: FileFormat::Parquet,
            },
            timestamp_field: "event_timestamp".into(),
            description: String::new(),
            owner: String::new(),
            tags: BTreeMap::new(),
        };
        let view = FeatureView {
            name: "user_profile".into(),
            version: 3,
            entities: vec!["user".into()],
            join_keys: entity.join_keys.clone(),
            source: "profiles".into(),
            transformation: Some("SELECT * FROM profiles".into()),
            transformation_path: Some("user_profile.sql".into()),
            timestamp_field: "event_timestamp".into(),
            features: vec![
                Feature {
                    name: "age".into(),
                    dtype: ValueType::Int64,
                    description: String::new(),
                    vector_index: None,
                },
                Feature {
                    name: "embedding".into(),
                    dtype: ValueType::Vector(4),
                    description: "e".into(),
                    vector_index: None,
                },
            ],
            ttl: Some(TtlDuration::from_seconds(86_400)),
            online: true,
            offline: false,
            owner: "growth@example.com".into(),
            tier: Some("tier1".into()),
            tags: BTreeMap::new(),
            description: String::new(),
            freshness_sla: None,
            checks: Vec::new(),
            ..larder_core::FeatureView::default()
        };
        let service = FeatureService {
            name: "ranker".into(),
            items: vec![FeatureServiceItem {
                view: "user_profile".into(),
                features: Some(vec!["age".into()]),
            }],
            description: String::new(),
            owner: String::new(),
            tags: BTreeMap::new(),
        };
        Registry {
            project: "demo".into(),
            applied_at: 1_700_000_000_000_000,
            entities: BTreeMap::from([("user".into(), entity)]),
            sources: BTreeMap::from([("profiles".into(), source)]),
            feature_views: BTreeMap::from([("user_profile".into(), view)]),
            feature_services: BTreeMap::from([("ranker".into(), service)]),
            stream_views: BTreeMap::new(),
            view_history: BTreeMap::new(),
        }
    }

    /// The contract every [`RegistryStore`] must keep.
    fn registry_store_test_suite(store: &dyn RegistryStore) {
        assert!(
            store.load().expect("load").is_none(),
            "a new store is empty"
        );
        let first = sample_registry();
        store.save(&first).expect("save");
        assert_eq!(store.load().expect("load"), Some(first.clone()));
        let mut second = first;
        second.applied_at += 1;
        second.feature_views.clear();
        store.save(&second).expect("save again");
        assert_eq!(
            store.load().expect("load"),
            Some(second),
            "save replaces the whole registry"
        );
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        registry_store_test_suite(&MemoryRegistryStore::new());
    }

    #[test]
    fn file_store_keeps_the_contract_and_creates_directories() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("nested/data/registry.json");
        let store = FileRegistryStore::new(&path);
        assert!(store.modified_token().is_none());
        registry_store_test_suite(&store);
        assert!(store.modified_token().is_some());
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            leftovers,
            vec!["registry.json".to_string()],
            "no temporary files are left behind"
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("\n  \"project\": \"demo\""),
            "pretty JSON: {text}"
        );
    }

    #[test]
    fn corrupt_files_are_reported_with_their_path() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("registry.json");
        std::fs::write(&path, "{ not json").expect("write");
        let error = FileRegistryStore::new(&path).load().expect_err("corrupt");
        assert!(matches!(error, RegistryError::Corrupt { .. }));
        assert!(error.to_string().contains("registry.json"), "{error}");
    }
}
