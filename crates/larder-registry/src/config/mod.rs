//! `larder.yaml`: the configuration of a feature repo.
//!
//! ```yaml
//! project: demo
//! registry: data/registry.json
//! online_store: {type: embedded, path: data/online.redb}
//! offline_store: {type: parquet, path: data/offline}
//! serving: {host: 127.0.0.1, port: 6566, max_entities_per_request: 10000, max_body_bytes: 8388608}
//! ```
//!
//! Only `project` is required. Environment variables override a few values after the file is
//! read (see [`RepoConfig::apply_environment_overrides`]), so that one repo can be deployed to
//! several places without editing it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod auth;
mod engine;
mod lineage;
mod offline;
mod online;
mod problem;
mod vector;

pub use auth::{AuthConfig, Scope, TokenRecord, TokensFile, TokensFileError};
pub use engine::OfflineEngineConfig;
use engine::offline_engine_problems;
pub use lineage::LineageConfig;
use lineage::lineage_config_problems;
pub use offline::OfflineStoreConfig;
pub use online::{DynamoDbOnlineStoreConfig, OnlineStoreConfig, RedisOnlineStoreConfig};
use online::{dynamodb_config_problems, redis_config_problems};
use problem::ConfigProblem;
pub use vector::VectorStoreConfig;
use vector::vector_store_problems;

use crate::diagnostics::{Diagnostic, Diagnostics, Location};
use crate::yaml_tree::YamlTree;

/// The configuration of a feature repo, read from `larder.yaml` at its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Project name: lowercase letters, digits and underscores (`[a-z0-9_]+`). Recorded in
    /// the registry.
    pub project: String,
    /// Where `larder apply` records the registry (a JSON file). Relative paths are relative
    /// to the repo root. Default `data/registry.json`.
    #[serde(default = "default_registry_path")]
    pub registry: PathBuf,
    /// The online store that serves the latest feature values. Default: embedded, in
    /// `data/online.redb`.
    #[serde(default)]
    pub online_store: OnlineStoreConfig,
    /// The offline store that keeps feature history for training sets. Default: Parquet
    /// files under `data/offline`.
    #[serde(default)]
    pub offline_store: OfflineStoreConfig,
    /// The feature server (`larder serve`).
    #[serde(default)]
    pub serving: ServingConfig,
    /// A write-through cache in front of the online store; absent: no cache. Worth it for
    /// remote stores (Redis, DynamoDB); the embedded store is about as fast as the cache.
    #[serde(default)]
    pub online_cache: Option<OnlineCacheConfig>,
    /// How `s3://` source paths are read (endpoint, region, credentials); unset fields fall
    /// back to the standard AWS environment variables.
    #[serde(default, skip_serializing_if = "is_default_s3")]
    pub s3: larder_core::S3Config,
    /// How the stream lane's consumers (`larder serve`) make their work durable.
    #[serde(default, skip_serializing_if = "is_default_stream")]
    pub stream: StreamConfig,
    /// How the batch lane runs (`larder materialize`, scheduled runs).
    #[serde(default, skip_serializing_if = "is_default_materialize")]
    pub materialize: MaterializeConfig,
    /// API tokens with scopes for `larder serve`; absent: no access control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Where OpenLineage run events of batch runs and stream backfills go; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<LineageConfig>,
    /// Where the nearest-neighbour indexes of `vector<N>` features live. Default: embedded,
    /// under `data/vectors`.
    #[serde(default)]
    pub vector_store: VectorStoreConfig,
    /// Where view transformations and training-set joins run. Default: in process
    /// (DataFusion); `{type: spark, remote: "sc://host:15002"}` hands them to Spark.
    #[serde(default, skip_serializing_if = "OfflineEngineConfig::is_default")]
    pub offline_engine: OfflineEngineConfig,
}

fn is_default_materialize(materialize: &MaterializeConfig) -> bool {
    *materialize == MaterializeConfig::default()
}

fn is_default_stream(stream: &StreamConfig) -> bool {
    *stream == StreamConfig::default()
}

/// The shortest and longest `stream.checkpoint_interval`, in seconds.
pub const CHECKPOINT_INTERVAL_SECONDS: std::ops::RangeInclusive<u64> = 1..=600;

/// Settings of the stream lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// How often the consumers make what they applied durable: the online rows are synced,
    /// then the aggregation state and positions. Nothing is fsynced in between; after a crash
    /// a consumer replays the events since the last checkpoint from the broker (which still
    /// holds them) and serves the rows again as it goes. Longer means fewer of the pauses a
    /// checkpoint costs (about 0.5 s at 1M keys, BENCHMARKS.md) and more to replay: at 50k
    /// events/s, 5s keeps 95 % of rows servable within 500 ms and 30s 99 %. An erasure
    /// (`larder forget`) always makes everything durable first. 1s to 10m. Default 30s (Kafka
    /// Streams' default commit interval).
    pub checkpoint_interval: larder_core::TtlDuration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: larder_core::TtlDuration::from_seconds(30),
        }
    }
}

/// The largest `materialize.batch_rows`.
pub const MAX_BATCH_ROWS: usize = 1 << 20;

/// Settings of the batch lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaterializeConfig {
    /// Rows per batch that a view's transformation hands to the write path (1 to 1,048,576).
    /// Each batch costs one digest read, one online write and one offline write call, and a
    /// few batches are in memory at once (about 250 bytes per row of 26 features each).
    /// Default 65536.
    pub batch_rows: usize,
}

impl Default for MaterializeConfig {
    fn default() -> Self {
        Self { batch_rows: 65_536 }
    }
}

fn is_default_s3(s3: &larder_core::S3Config) -> bool {
    *s3 == larder_core::S3Config::default()
}

/// Bounds of the write-through online cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnlineCacheConfig {
    /// Most cached rows across all feature views. Default 1,000,000.
    pub max_entries: usize,
    /// How long a cached row may be served before it is read again. Writes through this
    /// process invalidate it at once; the TTL bounds staleness from other writers. Default 60s.
    pub ttl: larder_core::TtlDuration,
}

impl Default for OnlineCacheConfig {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            ttl: larder_core::TtlDuration::from_seconds(60),
        }
    }
}

/// Settings of the feature server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Address to listen on. Default `127.0.0.1`.
    pub host: String,
    /// TCP port to listen on; 0 picks a free port. Default 6566.
    pub port: u16,
    /// Most entities one online request may ask for. Default 10000.
    pub max_entities_per_request: usize,
    /// Largest request body accepted, in bytes. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Most requests served at once; beyond it requests are answered 503 with
    /// `Retry-After` at once, which keeps memory bounded under overload. Default 256.
    pub max_concurrent_requests: usize,
    /// gRPC port (0 picks a free one); absent: no gRPC listener. Default 6567.
    pub grpc_port: Option<u16>,
    /// Most training-set requests (`/get-historical-features`, gRPC
    /// `GetHistoricalFeatures`) served at once; beyond it they are answered 503 with
    /// `Retry-After`. Each may hold 256 MiB of sort memory. Default 2.
    pub max_concurrent_historical_requests: usize,
    /// How long a client may take to send a request's headers, and how long a kept-alive
    /// connection may stay idle; then the connection is closed. Default 10s.
    pub read_header_timeout: larder_core::TtlDuration,
    /// How long a client may take to send a request's body (answered 408 beyond it). The
    /// body is read before the request takes one of `max_concurrent_requests`, so slow or
    /// stalled uploads never hold a slot. Default 30s.
    pub read_body_timeout: larder_core::TtlDuration,
    /// Direct writes with an event time further than this ahead of the server's clock are
    /// refused (a unit mistake, e.g. milliseconds sent as seconds, would otherwise win over
    /// every later write). Default 5m (clock skew).
    pub max_event_time_ahead: larder_core::TtlDuration,
    /// Direct writes with an event time before this (a date or RFC 3339 time) are refused.
    /// Default `2000-01-01`.
    pub min_event_time: String,
    /// The largest `top_k` of a nearest-neighbour search (`/retrieve-online-documents`).
    /// Default 1000.
    pub max_top_k: usize,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_string(),
            port: 6566,
            max_entities_per_request: 10_000,
            max_body_bytes: 8 * 1024 * 1024,
            max_concurrent_requests: 256,
            grpc_port: Some(6567),
            max_concurrent_historical_requests: 2,
            read_header_timeout: larder_core::TtlDuration::from_seconds(10),
            read_body_timeout: larder_core::TtlDuration::from_seconds(30),
            max_event_time_ahead: larder_core::TtlDuration::from_seconds(300),
            min_event_time: "2000-01-01".to_string(),
            max_top_k: 1000,
        }
    }
}

impl ServingConfig {
    /// [`ServingConfig::min_event_time`] as a timestamp (validated when the config loads).
    pub fn min_event_time(&self) -> Option<larder_core::Timestamp> {
        larder_core::Timestamp::parse(&self.min_event_time)
    }
}

fn default_registry_path() -> PathBuf {
    PathBuf::from("data/registry.json")
}

impl RepoConfig {
    /// The name of the config file at the root of every feature repo.
    pub const FILE_NAME: &'static str = "larder.yaml";
    /// Overrides [`RepoConfig::registry`].
    pub const ENV_REGISTRY: &'static str = "LARDER_REGISTRY";
    /// Overrides the `path` of an embedded online store.
    pub const ENV_ONLINE_STORE_PATH: &'static str = "LARDER_ONLINE_STORE_PATH";
    /// Overrides the `path` of the Parquet offline store.
    pub const ENV_OFFLINE_STORE_PATH: &'static str = "LARDER_OFFLINE_STORE_PATH";
    /// Overrides the `password` of a redis online store.
    pub const ENV_REDIS_PASSWORD: &'static str = "LARDER_REDIS_PASSWORD";
    /// Overrides [`ServingConfig::host`].
    pub const ENV_SERVE_HOST: &'static str = "LARDER_SERVE_HOST";
    /// Overrides [`ServingConfig::port`].
    pub const ENV_SERVE_PORT: &'static str = "LARDER_SERVE_PORT";

    /// A config with every default and the given project name.
    pub fn new(project: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            registry: default_registry_path(),
            online_store: OnlineStoreConfig::default(),
            offline_store: OfflineStoreConfig::default(),
            serving: ServingConfig::default(),
            online_cache: None,
            s3: larder_core::S3Config::default(),
            stream: StreamConfig::default(),
            materialize: MaterializeConfig::default(),
            auth: None,
            lineage: None,
            vector_store: VectorStoreConfig::default(),
            offline_engine: OfflineEngineConfig::default(),
        }
    }

    /// Reads `larder.yaml` at the repo root, validates it and applies the environment
    /// overrides of the process.
    pub fn load(repo_root: &Path) -> Result<RepoConfig, Diagnostics> {
        Self::load_with_environment(repo_root, |name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// [`RepoConfig::load`] with environment variables read through `environment` (tests and
    /// embedders pass their own).
    pub fn load_with_environment(
        repo_root: &Path,
        environment: impl Fn(&str) -> Option<String>,
    ) -> Result<RepoConfig, Diagnostics> {
        let config_path = repo_root.join(Self::FILE_NAME);
        let text = match std::fs::read_to_string(&config_path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Diagnostic::new(format!(
                    "'{}' is not a feature repo: it has no {} (run `larder init` to create one)",
                    repo_root.display(),
                    Self::FILE_NAME
                ))
                .into());
            }
            Err(error) => {
                return Err(Diagnostic::new(format!(
                    "cannot read {}: {error}",
                    config_path.display()
                ))
                .with_location(Location::file_only(Self::FILE_NAME))
                .into());
            }
        };
        let mut config = Self::parse(&text)?;
        config.apply_environment_overrides(environment)?;
        Ok(config)
    }

    /// Parses and validates the text of a `larder.yaml` (no environment overrides).
    pub fn parse(text: &str) -> Result<RepoConfig, Diagnostics> {
        let file = Path::new(Self::FILE_NAME);
        let config: RepoConfig = match serde_saphyr::from_str::<Option<RepoConfig>>(text) {
            Ok(Some(config)) => config,
            Ok(None) => {
                return Err(Diagnostic::new(format!(
                    "{} is empty: it needs at least `project: <name>`",
                    Self::FILE_NAME
                ))
                .with_location(Location::file_only(file))
                .into());
            }
            Err(error) => return Err(Diagnostic::from_yaml_error(file, text, &error).into()),
        };
        let problems = config.validation_problems();
        if problems.is_empty() {
            return Ok(config);
        }
        let tree = YamlTree::parse(text);
        let mut diagnostics = Diagnostics::new();
        for problem in problems {
            let key = problem.keys.join(".");
            let position = tree
                .as_ref()
                .and_then(|tree| tree.value_position(&problem.keys));
            let location = position.map_or_else(
                || Location::file_only(file),
                |position| Location::new(file, position.line, position.column),
            );
            diagnostics.push(Diagnostic::at(location, key, problem.message));
        }
        diagnostics.into_result(config)
    }

    /// Checks the values that serde cannot check, without positions (see
    /// [`RepoConfig::parse`] for located diagnostics).
    pub fn validate(&self) -> Result<(), Diagnostics> {
        let diagnostics: Vec<Diagnostic> = self
            .validation_problems()
            .into_iter()
            .map(|problem| Diagnostic::new(problem.message).with_key(problem.keys.join(".")))
            .collect();
        Diagnostics::from(diagnostics).into_result(())
    }

    fn validation_problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let valid_project_name = !self.project.is_empty()
            && self
                .project
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
        if !valid_project_name {
            problems.push(ConfigProblem {
                keys: vec!["project"],
                message: format!(
                    "invalid project name '{}' (use lowercase letters, digits and underscores)",
                    self.project
                ),
            });
        }
        if self.registry.as_os_str().is_empty() {
            problems.push(ConfigProblem {
                keys: vec!["registry"],
                message: "the registry path is empty".to_string(),
            });
        }
        if let OnlineStoreConfig::Embedded { path, cache_mib } = &self.online_store {
            if path.as_os_str().is_empty() {
                problems.push(ConfigProblem {
                    keys: vec!["online_store", "path"],
                    message: "the online store path is empty".to_string(),
                });
            }
            if *cache_mib == 0 {
                problems.push(ConfigProblem {
                    keys: vec!["online_store", "cache_mib"],
                    message: "the page cache must be at least 1 MiB".to_string(),
                });
            }
        }
        if let OnlineStoreConfig::Redis(redis) = &self.online_store {
            problems.extend(redis_config_problems(redis));
        }
        if let OnlineStoreConfig::DynamoDb(dynamodb) = &self.online_store {
            problems.extend(dynamodb_config_problems(dynamodb));
        }
        for (key, message) in self.s3.problems() {
            problems.push(ConfigProblem {
                keys: vec!["s3", key],
                message,
            });
        }
        let OfflineStoreConfig::Parquet { path } = &self.offline_store;
        if path.as_os_str().is_empty() {
            problems.push(ConfigProblem {
                keys: vec!["offline_store", "path"],
                message: "the offline store path is empty".to_string(),
            });
        }
        if !(1..=MAX_BATCH_ROWS).contains(&self.materialize.batch_rows) {
            problems.push(ConfigProblem {
                keys: vec!["materialize", "batch_rows"],
                message: format!(
                    "must be between 1 and {MAX_BATCH_ROWS}, got {}",
                    self.materialize.batch_rows
                ),
            });
        }
        if !CHECKPOINT_INTERVAL_SECONDS.contains(&self.stream.checkpoint_interval.as_seconds()) {
            problems.push(ConfigProblem {
                keys: vec!["stream", "checkpoint_interval"],
                message: format!(
                    "must be between 1s and 10m, got {}",
                    self.stream.checkpoint_interval
                ),
            });
        }
        if self.serving.host.trim().is_empty() {
            problems.push(ConfigProblem {
                keys: vec!["serving", "host"],
                message: "the host is empty".to_string(),
            });
        }
        if self.serving.max_entities_per_request == 0 {
            problems.push(ConfigProblem {
                keys: vec!["serving", "max_entities_per_request"],
                message: "must be at least 1".to_string(),
            });
        }
        if self.serving.max_top_k == 0 {
            problems.push(ConfigProblem {
                keys: vec!["serving", "max_top_k"],
                message: "must be at least 1".to_string(),
            });
        }
        problems.extend(vector_store_problems(&self.vector_store));
        problems.extend(offline_engine_problems(&self.offline_engine));
        if self.serving.max_body_bytes == 0 {
            problems.push(ConfigProblem {
                keys: vec!["serving", "max_body_bytes"],
                message: "must be at least 1".to_string(),
            });
        }
        for (key, value) in [
            (
                "max_concurrent_requests",
                self.serving.max_concurrent_requests,
            ),
            (
                "max_concurrent_historical_requests",
                self.serving.max_concurrent_historical_requests,
            ),
        ] {
            if value == 0 {
                problems.push(ConfigProblem {
                    keys: vec!["serving", key],
                    message: "must be at least 1".to_string(),
                });
            }
        }
        for (key, value) in [
            ("read_header_timeout", self.serving.read_header_timeout),
            ("read_body_timeout", self.serving.read_body_timeout),
        ] {
            if value.as_seconds() == 0 {
                problems.push(ConfigProblem {
                    keys: vec!["serving", key],
                    message: "must be at least 1s".to_string(),
                });
            }
        }
        if self.serving.min_event_time().is_none() {
            problems.push(ConfigProblem {
                keys: vec!["serving", "min_event_time"],
                message: format!(
                    "'{}' is not a date (YYYY-MM-DD) or an RFC 3339 time",
                    self.serving.min_event_time
                ),
            });
        }
        if let Some(auth) = &self.auth {
            for message in auth.problems() {
                problems.push(ConfigProblem {
                    keys: vec!["auth"],
                    message,
                });
            }
        }
        if let Some(lineage) = &self.lineage {
            problems.extend(lineage_config_problems(lineage));
        }
        problems
    }

    /// Applies the environment overrides, reading variables through `environment`:
    ///
    /// | variable                    | overrides                              |
    /// |-----------------------------|----------------------------------------|
    /// | `LARDER_REGISTRY`           | `registry`                             |
    /// | `LARDER_ONLINE_STORE_PATH`  | `online_store.path` (embedded only)    |
    /// | `LARDER_REDIS_PASSWORD`     | `online_store.password` (redis only)   |
    /// | `LARDER_OFFLINE_STORE_PATH` | `offline_store.path`                   |
    /// | `LARDER_SERVE_HOST`         | `serving.host`                         |
    /// | `LARDER_SERVE_PORT`         | `serving.port`                         |
    ///
    /// An empty or malformed value is an error naming the variable; every bad variable is
    /// reported, and nothing is changed when any is bad.
    pub fn apply_environment_overrides(
        &mut self,
        environment: impl Fn(&str) -> Option<String>,
    ) -> Result<(), Diagnostics> {
        let mut updated = self.clone();
        let mut diagnostics = Diagnostics::new();
        let mut report = |variable: &str, key: &str, problem: String| {
            diagnostics.push(
                Diagnostic::new(format!("environment variable {variable}: {problem}"))
                    .with_key(key),
            );
        };
        let non_empty =
            |variable: &str| environment(variable).map(|value| (value.trim().is_empty(), value));

        if let Some((empty, value)) = non_empty(Self::ENV_REGISTRY) {
            if empty {
                report(
                    Self::ENV_REGISTRY,
                    "registry",
                    "is empty (expected a path)".to_string(),
                );
            } else {
                updated.registry = PathBuf::from(value);
            }
        }
        if let Some((empty, value)) = non_empty(Self::ENV_ONLINE_STORE_PATH) {
            match &mut updated.online_store {
                _ if empty => report(
                    Self::ENV_ONLINE_STORE_PATH,
                    "online_store.path",
                    "is empty (expected a path)".to_string(),
                ),
                OnlineStoreConfig::Embedded { path, .. } => *path = PathBuf::from(value),
                OnlineStoreConfig::Memory
                | OnlineStoreConfig::Redis(_)
                | OnlineStoreConfig::DynamoDb(_) => report(
                    Self::ENV_ONLINE_STORE_PATH,
                    "online_store.path",
                    "is set but the online store is not embedded, so it has no path".to_string(),
                ),
            }
        }
        if let Some((empty, value)) = non_empty(Self::ENV_REDIS_PASSWORD) {
            match &mut updated.online_store {
                OnlineStoreConfig::Redis(redis) if !empty => redis.password = Some(value),
                OnlineStoreConfig::Redis(_) => {}
                _ => report(
                    Self::ENV_REDIS_PASSWORD,
                    "online_store.password",
                    "is set but the online store is not redis".to_string(),
                ),
            }
        }
        if let Some((empty, value)) = non_empty(Self::ENV_OFFLINE_STORE_PATH) {
            if empty {
                report(
                    Self::ENV_OFFLINE_STORE_PATH,
                    "offline_store.path",
                    "is empty (expected a path)".to_string(),
                );
            } else {
                updated.offline_store = OfflineStoreConfig::Parquet {
                    path: PathBuf::from(value),
                };
            }
        }
        if let Some((empty, value)) = non_empty(Self::ENV_SERVE_HOST) {
            if empty {
                report(
                    Self::ENV_SERVE_HOST,
                    "serving.host",
                    "is empty (expected a host name or address)".to_string(),
                );
            } else {
                updated.serving.host = value.trim().to_string();
            }
        }
        if let Some((_, value)) = non_empty(Self::ENV_SERVE_PORT) {
            match value.trim().parse::<u16>() {
                Ok(port) => updated.serving.port = port,
                Err(_) => report(
                    Self::ENV_SERVE_PORT,
                    "serving.port",
                    format!("invalid port '{value}' (expected an integer from 0 to 65535)"),
                ),
            }
        }
        diagnostics.into_result(())?;
        *self = updated;
        Ok(())
    }

    /// A path from the config as the process should open it: relative paths are relative to
    /// the repo root, absolute paths are kept.
    pub fn resolve_path(&self, repo_root: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            repo_root.join(path)
        }
    }

    /// The registry file, resolved against the repo root.
    pub fn registry_path(&self, repo_root: &Path) -> PathBuf {
        self.resolve_path(repo_root, &self.registry)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn environment_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let variables: BTreeMap<String, String> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        move |name: &str| variables.get(name).cloned()
    }

    #[test]
    fn defaults_fill_everything_but_the_project() {
        let config = RepoConfig::parse("project: demo\n").expect("valid config");
        assert_eq!(config, RepoConfig::new("demo"));
        assert_eq!(config.registry, PathBuf::from("data/registry.json"));
        assert_eq!(
            config.online_store,
            OnlineStoreConfig::Embedded {
                path: PathBuf::from("data/online.redb"),
                cache_mib: 1024,
            }
        );
        assert_eq!(
            config.offline_store,
            OfflineStoreConfig::Parquet {
                path: PathBuf::from("data/offline")
            }
        );
        assert_eq!(config.serving.port, 6566);
        assert_eq!(config.serving.max_entities_per_request, 10_000);
        assert_eq!(config.serving.max_body_bytes, 8_388_608);
    }

    #[test]
    fn full_config_parses() {
        let text = "\
project: demo
registry: /var/lib/larder/registry.json
online_store: {type: memory}
offline_store: {type: parquet, path: offline}
serving: {host: 0.0.0.0, port: 8080, max_entities_per_request: 5, max_body_bytes: 1024,
          read_body_timeout: 2s, max_event_time_ahead: 1m, min_event_time: 2020-01-01}
";
        let config = RepoConfig::parse(text).expect("valid config");
        assert_eq!(config.online_store, OnlineStoreConfig::Memory);
        assert_eq!(
            config.serving,
            ServingConfig {
                host: "0.0.0.0".into(),
                port: 8080,
                max_entities_per_request: 5,
                max_body_bytes: 1024,
                max_concurrent_requests: 256,
                grpc_port: Some(6567),
                read_body_timeout: larder_core::TtlDuration::from_seconds(2),
                max_event_time_ahead: larder_core::TtlDuration::from_seconds(60),
                min_event_time: "2020-01-01".into(),
                ..ServingConfig::default()
            }
        );
        assert_eq!(
            config.serving.min_event_time(),
            larder_core::Timestamp::parse("2020-01-01T00:00:00Z")
        );
        let root = Path::new("/repo");
        assert_eq!(
            config.registry_path(root),
            PathBuf::from("/var/lib/larder/registry.json")
        );
        assert_eq!(
            config.resolve_path(root, Path::new("offline")),
            PathBuf::from("/repo/offline")
        );
    }

    #[test]
    fn written_config_reads_back() {
        let config = RepoConfig::new("demo");
        let text = serde_saphyr::to_string(&config).expect("serializable");
        assert_eq!(RepoConfig::parse(&text).expect("reads back"), config);
    }

    #[test]
    fn problems_point_at_line_and_key() {
        let diagnostics =
            RepoConfig::parse("project: Demo-1\nserving:\n  max_entities_per_request: 0\n")
                .expect_err("invalid");
        assert_eq!(diagnostics.len(), 2);
        let first = &diagnostics.0[0];
        assert_eq!(first.location, Some(Location::new("larder.yaml", 1, 10)));
        assert_eq!(first.key.as_deref(), Some("project"));
        let second = &diagnostics.0[1];
        assert_eq!(second.location, Some(Location::new("larder.yaml", 3, 29)));
        assert_eq!(
            second.key.as_deref(),
            Some("serving.max_entities_per_request")
        );
    }

    #[test]
    fn batch_rows_default_to_64k_and_zero_is_refused_at_its_line() {
        let config = RepoConfig::parse("project: demo\n").expect("valid");
        assert_eq!(config.materialize.batch_rows, 65_536);
        let config =
            RepoConfig::parse("project: demo\nmaterialize: {batch_rows: 4096}\n").expect("valid");
        assert_eq!(config.materialize.batch_rows, 4_096);
        let diagnostics = RepoConfig::parse("project: demo\nmaterialize:\n  batch_rows: 0\n")
            .expect_err("invalid");
        let diagnostic = &diagnostics.0[0];
        assert_eq!(diagnostic.key.as_deref(), Some("materialize.batch_rows"));
        assert_eq!(
            diagnostic.location,
            Some(Location::new("larder.yaml", 3, 15)),
            "{diagnostic}"
        );
        assert!(diagnostic.message.contains("between 1 and"), "{diagnostic}");
    }

    #[test]
    fn checkpoint_interval_defaults_to_30s_and_zero_is_refused_at_its_line() {
        let config = RepoConfig::parse("project: demo\n").expect("valid");
        assert_eq!(config.stream.checkpoint_interval.as_seconds(), 30);
        let config =
            RepoConfig::parse("project: demo\nstream: {checkpoint_interval: 5s}\n").expect("valid");
        assert_eq!(config.stream.checkpoint_interval.as_seconds(), 5);
        let diagnostics = RepoConfig::parse("project: demo\nstream:\n  checkpoint_interval: 0s\n")
            .expect_err("invalid");
        let diagnostic = &diagnostics.0[0];
        assert_eq!(
            diagnostic.key.as_deref(),
            Some("stream.checkpoint_interval")
        );
        assert_eq!(
            diagnostic.location,
            Some(Location::new("larder.yaml", 3, 24)),
            "{diagnostic}"
        );
        assert!(
            diagnostic.message.contains("between 1s and 10m"),
            "{diagnostic}"
        );
    }

    #[test]
    fn embedded_cache_defaults_to_1_gib_and_zero_is_refused_at_its_line() {
        let config = RepoConfig::parse(
            "project: demo\nonline_store: {type: embedded, path: x.redb, cache_mib: 64}\n",
        )
        .expect("valid");
        assert_eq!(
            config.online_store,
            OnlineStoreConfig::Embedded {
                path: PathBuf::from("x.redb"),
                cache_mib: 64
            }
        );
        let diagnostics = RepoConfig::parse(
            "project: demo\nonline_store:\n  type: embedded\n  path: x.redb\n  cache_mib: 0\n",
        )
        .expect_err("invalid");
        let diagnostic = &diagnostics.0[0];
        assert_eq!(diagnostic.key.as_deref(), Some("online_store.cache_mib"));
        assert_eq!(
            diagnostic.location.as_ref().map(|location| location.line),
            Some(5)
        );
        assert!(
            diagnostic.message.contains("at least 1 MiB"),
            "{diagnostic}"
        );
    }

    #[test]
    fn unknown_fields_point_at_their_line_even_inside_tagged_stores() {
        let diagnostics = RepoConfig::parse(
            "project: demo\nonline_store:\n  type: embedded\n  path: x\n  size: 3\n",
        )
        .expect_err("invalid");
        let diagnostic = &diagnostics.0[0];
        assert_eq!(
            diagnostic.location,
            Some(Location::new("larder.yaml", 5, 3)),
            "{diagnostic}"
        );
        assert_eq!(diagnostic.key.as_deref(), Some("online_store.size"));
        assert!(
            diagnostic.message.contains("unknown field `size`"),
            "{diagnostic}"
        );

        let diagnostics =
            RepoConfig::parse("project: demo\nservng: {port: 1}\n").expect_err("invalid");
        assert_eq!(
            diagnostics.0[0].location,
            Some(Location::new("larder.yaml", 2, 1))
        );
    }

    #[test]
    fn redis_store_parses_with_defaults_and_redacts_credentials() {
        let config = RepoConfig::parse(
            "project: demo\nonline_store: {type: redis, urls: ['redis://app:s3cret@10.0.0.1:6379'], password: hunter2}\n",
        )
        .expect("valid config");
        let OnlineStoreConfig::Redis(redis) = &config.online_store else {
            panic!("expected a redis store, got {:?}", config.online_store);
        };
        assert_eq!(redis.pool_size, 4);
        assert_eq!(redis.key_prefix, "larder:");
        assert!(!redis.cluster);
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("hunter2"),
            "{debug}"
        );
        let text = serde_saphyr::to_string(&config).expect("serializable");
        assert_eq!(RepoConfig::parse(&text).expect("reads back"), config);

        let mut overridden = config.clone();
        overridden
            .apply_environment_overrides(environment_of(&[("LARDER_REDIS_PASSWORD", "fromenv")]))
            .expect("valid override");
        let OnlineStoreConfig::Redis(redis) = &overridden.online_store else {
            panic!("still redis");
        };
        assert_eq!(redis.password.as_deref(), Some("fromenv"));
    }

    #[test]
    fn bad_redis_settings_point_at_their_keys() {
        let diagnostics = RepoConfig::parse(
            "project: demo\nonline_store:\n  type: redis\n  urls: [http://x, redis://y]\n  pool_size: 0\n",
        )
        .expect_err("invalid");
        let text = diagnostics.to_string();
        assert!(text.contains("'http://x' is not a redis URL"), "{text}");
        assert!(text.contains("cluster: true"), "{text}");
        assert!(text.contains("online_store.pool_size"), "{text}");
        let diagnostics =
            RepoConfig::parse("project: demo\nonline_store: {type: redis, pool: 3}\n")
                .expect_err("unknown field");
        assert!(
            diagnostics.to_string().contains("unknown field `pool`"),
            "{diagnostics}"
        );
    }

    #[test]
    fn dynamodb_store_parses_validates_and_redacts_credentials() {
        let config = RepoConfig::parse(
            "project: demo\nonline_store: {type: dynamodb, endpoint: 'http://127.0.0.1:5000', access_key_id: AKIAX, secret_access_key: s3cret}\n",
        )
        .expect("valid config");
        let OnlineStoreConfig::DynamoDb(dynamodb) = &config.online_store else {
            panic!("expected a dynamodb store, got {:?}", config.online_store);
        };
        assert_eq!(dynamodb.region, "us-east-1");
        assert_eq!(dynamodb.table_prefix, "larder.");
        assert_eq!(dynamodb.max_concurrency, 32);
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("AKIAX"),
            "{debug}"
        );
        let text = serde_saphyr::to_string(&config).expect("serializable");
        assert_eq!(RepoConfig::parse(&text).expect("reads back"), config);

        let diagnostics = RepoConfig::parse(
            "project: demo\nonline_store:\n  type: dynamodb\n  endpoint: localhost:8000\n  table_prefix: 'my prefix'\n  access_key_id: AKIAX\n",
        )
        .expect_err("invalid");
        let text = diagnostics.to_string();
        assert!(
            text.contains("'localhost:8000' is not an http(s) URL"),
            "{text}"
        );
        assert!(text.contains("online_store.table_prefix"), "{text}");
        assert!(
            text.contains("give both access_key_id and secret_access_key"),
            "{text}"
        );
    }

    #[test]
    fn missing_config_says_this_is_not_a_feature_repo() {
        let directory = tempfile::tempdir().expect("temp dir");
        let diagnostics = RepoConfig::load(directory.path()).expect_err("no larder.yaml");
        let text = diagnostics.to_string();
        assert!(
            text.contains("not a feature repo") && text.contains("larder init"),
            "{text}"
        );
    }

    #[test]
    fn environment_overrides_apply_after_the_file() {
        let directory = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            directory.path().join("larder.yaml"),
            "project: demo\nserving: {port: 7000}\n",
        )
        .expect("write");
        let config = RepoConfig::load_with_environment(
            directory.path(),
            environment_of(&[
                ("LARDER_SERVE_PORT", "9090"),
                ("LARDER_SERVE_HOST", "0.0.0.0"),
                ("LARDER_REGISTRY", "/tmp/registry.json"),
                ("LARDER_ONLINE_STORE_PATH", "/tmp/online.redb"),
                ("LARDER_OFFLINE_STORE_PATH", "/tmp/offline"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.serving.port, 9090);
        assert_eq!(config.serving.host, "0.0.0.0");
        assert_eq!(config.registry, PathBuf::from("/tmp/registry.json"));
        assert_eq!(
            config.online_store,
            OnlineStoreConfig::Embedded {
                path: PathBuf::from("/tmp/online.redb"),
                cache_mib: 1024,
            }
        );
        assert_eq!(
            config.offline_store,
            OfflineStoreConfig::Parquet {
                path: PathBuf::from("/tmp/offline")
            }
        );

        let untouched = RepoConfig::load_with_environment(directory.path(), environment_of(&[]))
            .expect("valid");
        assert_eq!(untouched.serving.port, 7000);
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let mut config = RepoConfig::new("demo");
        config.online_store = OnlineStoreConfig::Memory;
        let diagnostics = config
            .apply_environment_overrides(environment_of(&[
                ("LARDER_SERVE_PORT", "80000"),
                ("LARDER_ONLINE_STORE_PATH", "/x"),
                ("LARDER_SERVE_HOST", "10.0.0.1"),
            ]))
            .expect_err("bad port");
        let text = diagnostics.to_string();
        assert!(
            text.contains("LARDER_SERVE_PORT") && text.contains("80000"),
            "{text}"
        );
        assert!(text.contains("LARDER_ONLINE_STORE_PATH"), "{text}");
        assert_eq!(
            config.serving.host, "127.0.0.1",
            "nothing changes when a variable is bad"
        );
    }
}
