//! The `online_store` section: which online store, and each backend's own options.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::problem::ConfigProblem;
use larder_core::secret::{redact_url_password, redacted};

/// Which online store to use; `type` selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OnlineStoreConfig {
    /// An embedded key-value file (redb), for one machine.
    Embedded {
        /// The database file. Relative paths are relative to the repo root.
        path: PathBuf,
        /// The most memory, in MiB, that the store's page cache may take (it fills as pages
        /// are read and written, up to the file's size; reads past it go to the operating
        /// system's file cache). At least 1. Default 1024.
        #[serde(
            default = "default_embedded_cache_mib",
            skip_serializing_if = "is_default_embedded_cache_mib"
        )]
        cache_mib: u64,
    },
    /// In process memory: lost on exit; for tests and demos.
    Memory,
    /// Redis or Valkey, standalone or Cluster.
    Redis(RedisOnlineStoreConfig),
    /// DynamoDB, or a DynamoDB-compatible server.
    #[serde(rename = "dynamodb")]
    DynamoDb(DynamoDbOnlineStoreConfig),
}

/// The `dynamodb` online store: `{type: dynamodb, region: eu-west-1}`, one table per feature
/// view version, created by `larder apply`.
///
/// Credentials come from `access_key_id` / `secret_access_key`, or else from the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`) variables; they are
/// never logged (the `Debug` form redacts them).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbOnlineStoreConfig {
    /// The AWS region. Default `us-east-1`.
    #[serde(default = "default_dynamodb_region")]
    pub region: String,
    /// An endpoint URL: a DynamoDB-compatible server or a VPC endpoint. Default: AWS's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Prefix of every table name, so that several projects can share an account.
    /// Default `larder.`.
    #[serde(default = "default_dynamodb_table_prefix")]
    pub table_prefix: String,
    /// Access key id; with `secret_access_key`, instead of the environment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Most requests in flight per operation. Default 32.
    #[serde(default = "default_dynamodb_max_concurrency")]
    pub max_concurrency: usize,
}

impl std::fmt::Debug for DynamoDbOnlineStoreConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DynamoDbOnlineStoreConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("table_prefix", &self.table_prefix)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

fn default_dynamodb_region() -> String {
    "us-east-1".to_string()
}

fn default_dynamodb_table_prefix() -> String {
    "larder.".to_string()
}

fn default_dynamodb_max_concurrency() -> usize {
    32
}

/// The problems of a `dynamodb` online store section.
pub(super) fn dynamodb_config_problems(dynamodb: &DynamoDbOnlineStoreConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    if dynamodb.region.trim().is_empty() {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "region"],
            message: "the region is empty".to_string(),
        });
    }
    if let Some(endpoint) = &dynamodb.endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "endpoint"],
            message: format!("'{endpoint}' is not an http(s) URL"),
        });
    }
    let prefix_ok = dynamodb
        .table_prefix
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || "_.-".contains(character));
    if !prefix_ok {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "table_prefix"],
            message: "DynamoDB table names allow only letters, digits, '_', '.' and '-'"
                .to_string(),
        });
    }
    if dynamodb.access_key_id.is_some() != dynamodb.secret_access_key.is_some() {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "access_key_id"],
            message: "give both access_key_id and secret_access_key, or neither".to_string(),
        });
    }
    if dynamodb.max_concurrency == 0 {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "max_concurrency"],
            message: "must be at least 1".to_string(),
        });
    }
    problems
}

/// The `redis` online store: `{type: redis, urls: [redis://127.0.0.1:6379]}`.
///
/// Credentials may sit in the URLs (`redis://user:password@host:6379`) or in `username` /
/// `password`; they are never logged (the `Debug` form redacts them), and the environment
/// variable `LARDER_REDIS_PASSWORD` overrides `password` so that it can stay out of the repo.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisOnlineStoreConfig {
    /// Server URLs. Standalone: one URL. Cluster: some or all nodes (the client discovers
    /// the rest). Default `[redis://127.0.0.1:6379]`.
    #[serde(default = "default_redis_urls")]
    pub urls: Vec<String>,
    /// Whether the URLs are Redis Cluster nodes. Default false.
    #[serde(default)]
    pub cluster: bool,
    /// Multiplexed connections to a standalone server, used round-robin (each pipelines many
    /// requests). A cluster keeps one per node. Default 4.
    #[serde(default = "default_redis_pool_size")]
    pub pool_size: usize,
    /// Prefix of every key, so that several projects can share one server. Default `larder:`.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
    /// Username for `AUTH` (Redis 6 ACLs), if not in the URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for `AUTH`, if not in the URLs. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// How long connecting may take, in milliseconds. Default 2000.
    #[serde(default = "default_redis_timeout_ms")]
    pub connection_timeout_ms: u64,
    /// How long one command may take before a request fails with 503, in milliseconds.
    /// Default 2000.
    #[serde(default = "default_redis_timeout_ms")]
    pub response_timeout_ms: u64,
}

impl Default for RedisOnlineStoreConfig {
    fn default() -> Self {
        Self {
            urls: default_redis_urls(),
            cluster: false,
            pool_size: default_redis_pool_size(),
            key_prefix: default_redis_key_prefix(),
            username: None,
            password: None,
            connection_timeout_ms: default_redis_timeout_ms(),
            response_timeout_ms: default_redis_timeout_ms(),
        }
    }
}

impl std::fmt::Debug for RedisOnlineStoreConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted_urls: Vec<String> = self
            .urls
            .iter()
            .map(|url| redact_url_password(url))
            .collect();
        formatter
            .debug_struct("RedisOnlineStoreConfig")
            .field("urls", &redacted_urls)
            .field("cluster", &self.cluster)
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("connection_timeout_ms", &self.connection_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .finish()
    }
}

fn default_redis_urls() -> Vec<String> {
    vec!["redis://127.0.0.1:6379".to_string()]
}

fn default_redis_pool_size() -> usize {
    4
}

fn default_redis_key_prefix() -> String {
    "larder:".to_string()
}

/// The embedded store's default page cache, in MiB (redb's own default).
pub const DEFAULT_EMBEDDED_CACHE_MIB: u64 = 1024;

fn default_embedded_cache_mib() -> u64 {
    DEFAULT_EMBEDDED_CACHE_MIB
}

fn is_default_embedded_cache_mib(cache_mib: &u64) -> bool {
    *cache_mib == DEFAULT_EMBEDDED_CACHE_MIB
}

fn default_redis_timeout_ms() -> u64 {
    2_000
}

impl OnlineStoreConfig {
    /// The `type` of the store, as written in larder.yaml.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Embedded { .. } => "embedded",
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
            Self::DynamoDb(_) => "dynamodb",
        }
    }
}

impl Default for OnlineStoreConfig {
    fn default() -> Self {
        Self::Embedded {
            path: PathBuf::from("data/online.redb"),
            cache_mib: DEFAULT_EMBEDDED_CACHE_MIB,
        }
    }
}

/// The problems of a `redis` online store section.
pub(super) fn redis_config_problems(redis: &RedisOnlineStoreConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    if redis.urls.is_empty() {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "urls"],
            message: "no redis URL: give at least one (redis://host:port)".to_string(),
        });
    }
    for url in &redis.urls {
        if !(url.starts_with("redis://") || url.starts_with("valkey://")) {
            problems.push(ConfigProblem {
                keys: vec!["online_store", "urls"],
                message: format!(
                    "'{}' is not a redis URL (expected redis://host:port)",
                    redact_url_password(url)
                ),
            });
        }
    }
    if !redis.cluster && redis.urls.len() > 1 {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "urls"],
            message: "several URLs need `cluster: true` (a standalone store uses one server)"
                .to_string(),
        });
    }
    if redis.pool_size == 0 {
        problems.push(ConfigProblem {
            keys: vec!["online_store", "pool_size"],
            message: "must be at least 1".to_string(),
        });
    }
    for (key, value) in [
        ("connection_timeout_ms", redis.connection_timeout_ms),
        ("response_timeout_ms", redis.response_timeout_ms),
    ] {
        if value == 0 {
            problems.push(ConfigProblem {
                keys: vec!["online_store", key],
                message: "must be at least 1 millisecond".to_string(),
            });
        }
    }
    problems
}
