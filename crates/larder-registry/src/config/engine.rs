//! The `offline_engine` section: where view transformations and training-set joins run.

use serde::{Deserialize, Serialize};

use super::problem::ConfigProblem;

/// Which engine runs the batch lane's transformations and training sets' point-in-time
/// joins; `type` selects it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OfflineEngineConfig {
    /// In process, with DataFusion (the default): right while the sources fit one machine.
    #[default]
    Datafusion,
    /// Apache Spark through Spark Connect, for sources beyond one machine. Source paths must
    /// be readable by the Spark cluster (shared storage or `s3://`, read as `s3a://`).
    Spark {
        /// The Spark Connect server, `sc://host:port` (port 15002 when left out).
        remote: String,
        /// The feature views that run on Spark; empty (the default): all of them. The others
        /// run in process, and a training set runs on Spark when one of its views does.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        views: Vec<String>,
    },
}

impl OfflineEngineConfig {
    /// Whether this is the in-process default.
    pub fn is_default(&self) -> bool {
        *self == Self::Datafusion
    }
}

/// What is wrong with an `offline_engine` section.
pub(super) fn offline_engine_problems(config: &OfflineEngineConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    if let OfflineEngineConfig::Spark { remote, views } = config {
        if views.iter().any(|view| view.trim().is_empty()) {
            problems.push(ConfigProblem {
                keys: vec!["offline_engine", "views"],
                message: "a view name is empty".to_string(),
            });
        }
        let host = remote
            .strip_prefix("sc://")
            .map(|rest| rest.split(['/', ';', ':']).next().unwrap_or_default());
        if host.is_none_or(str::is_empty) {
            problems.push(ConfigProblem {
                keys: vec!["offline_engine", "remote"],
                message: format!("'{remote}' is not a Spark Connect remote (sc://host:port)"),
            });
        }
    }
    problems
}
