//! The `offline_store` section.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which offline store to use; `type` selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OfflineStoreConfig {
    /// Parquet files in a directory, one table per feature view version.
    Parquet {
        /// The directory. Relative paths are relative to the repo root.
        path: PathBuf,
    },
}

impl Default for OfflineStoreConfig {
    fn default() -> Self {
        Self::Parquet {
            path: PathBuf::from("data/offline"),
        }
    }
}
