//! The `vector_store` section: where the nearest-neighbour indexes of `vector<N>` features
//! live.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::problem::ConfigProblem;
use larder_core::secret::redact_url_password;

/// Which vector index backend keeps the views' nearest-neighbour indexes; `type` selects it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VectorStoreConfig {
    /// In process (an HNSW graph per view version, persisted under `path`), for one machine:
    /// only one process at a time may write to it.
    Embedded {
        /// The folder of the index files. Relative paths are relative to the repo root.
        /// Default `data/vectors`.
        #[serde(default = "default_embedded_path")]
        path: PathBuf,
    },
    /// PostgreSQL with the pgvector extension: one table per view version with an HNSW
    /// index, shared by every process.
    Pgvector {
        /// A `postgres://user:password@host:port/database` URL. The password is never
        /// logged.
        url: String,
        /// Prefix of every table name. Default `larder_`.
        #[serde(default = "default_table_prefix")]
        table_prefix: String,
        /// Connections in the pool. Default 8.
        #[serde(default = "default_pool_size")]
        pool_size: usize,
    },
}

impl Default for VectorStoreConfig {
    fn default() -> Self {
        Self::Embedded {
            path: default_embedded_path(),
        }
    }
}

impl std::fmt::Debug for VectorStoreConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded { path } => formatter
                .debug_struct("Embedded")
                .field("path", path)
                .finish(),
            Self::Pgvector {
                url,
                table_prefix,
                pool_size,
            } => formatter
                .debug_struct("Pgvector")
                .field("url", &redact_url_password(url))
                .field("table_prefix", table_prefix)
                .field("pool_size", pool_size)
                .finish(),
        }
    }
}

fn default_embedded_path() -> PathBuf {
    PathBuf::from("data/vectors")
}

fn default_table_prefix() -> String {
    "larder_".to_string()
}

fn default_pool_size() -> usize {
    8
}

/// What is wrong with a `vector_store` section.
pub(super) fn vector_store_problems(config: &VectorStoreConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    match config {
        VectorStoreConfig::Embedded { path } => {
            if path.as_os_str().is_empty() {
                problems.push(ConfigProblem {
                    keys: vec!["vector_store", "path"],
                    message: "the vector store path is empty".to_string(),
                });
            }
        }
        VectorStoreConfig::Pgvector {
            url,
            table_prefix,
            pool_size,
        } => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                problems.push(ConfigProblem {
                    keys: vec!["vector_store", "url"],
                    message: format!("'{}' is not a postgres:// URL", redact_url_password(url)),
                });
            }
            let valid_prefix = table_prefix.chars().all(|character| {
                character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_'
            }) && table_prefix.len() <= 20;
            if !valid_prefix {
                problems.push(ConfigProblem {
                    keys: vec!["vector_store", "table_prefix"],
                    message: format!(
                        "table_prefix '{table_prefix}' must be at most 20 lowercase letters, digits or underscores"
                    ),
                });
            }
            if *pool_size == 0 {
                problems.push(ConfigProblem {
                    keys: vec!["vector_store", "pool_size"],
                    message: "must be at least 1".to_string(),
                });
            }
        }
    }
    problems
}
