//! The `lineage` section: where the OpenLineage run events of batch runs and stream
//! backfills go, so that a lineage catalog (Marquez, DataHub, ...) sees Larder as a pipeline.
//!
//! ```yaml
//! lineage: {type: file, path: data/lineage.jsonl}
//! # or
//! lineage: {type: http, url: "http://marquez:5000", namespace: larder, timeout_ms: 5000}
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::problem::ConfigProblem;

/// Where OpenLineage run events go; `type` selects the sink. Absent: no events.
///
/// Sending an event never fails a run: a sink that cannot be written or reached is logged as
/// a warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LineageConfig {
    /// Appends one JSON event per line to a file (its folders are created).
    File {
        /// The file. Relative paths are relative to the repo root.
        path: PathBuf,
        /// The namespace of the jobs. Default: the project name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
    /// POSTs each event as JSON to `{url}/api/v1/lineage` (Marquez's endpoint), from a
    /// background thread, so that a slow catalog never holds up a run.
    Http {
        /// The catalog's base URL (`http://` or `https://`), e.g. `http://marquez:5000`.
        url: String,
        /// The namespace of the jobs. Default: the project name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        /// How long one POST may take, in milliseconds. Default 5000.
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl LineageConfig {
    /// The path OpenLineage events are POSTed to, under the base URL of an `http` sink.
    pub const HTTP_ENDPOINT_PATH: &'static str = "/api/v1/lineage";

    /// The namespace of the jobs: the configured one, else `project`.
    pub fn namespace<'a>(&'a self, project: &'a str) -> &'a str {
        let (Self::File { namespace, .. } | Self::Http { namespace, .. }) = self;
        namespace.as_deref().unwrap_or(project)
    }

    /// Where an `http` sink POSTs events (`{url}/api/v1/lineage`); `None` for other sinks.
    pub fn http_endpoint(&self) -> Option<String> {
        match self {
            Self::Http { url, .. } => Some(format!(
                "{}{}",
                url.trim_end_matches('/'),
                Self::HTTP_ENDPOINT_PATH
            )),
            Self::File { .. } => None,
        }
    }
}

/// The problems of a `lineage` section.
pub(super) fn lineage_config_problems(lineage: &LineageConfig) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let (LineageConfig::File { namespace, .. } | LineageConfig::Http { namespace, .. }) = lineage;
    if namespace
        .as_deref()
        .is_some_and(|namespace| namespace.trim().is_empty())
    {
        problems.push(ConfigProblem {
            keys: vec!["lineage", "namespace"],
            message: "the namespace is empty (leave it out to use the project name)".to_string(),
        });
    }
    match lineage {
        LineageConfig::File { path, .. } => {
            if path.as_os_str().is_empty() {
                problems.push(ConfigProblem {
                    keys: vec!["lineage", "path"],
                    message: "the lineage file path is empty".to_string(),
                });
            }
        }
        LineageConfig::Http {
            url, timeout_ms, ..
        } => {
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
            if host.is_none_or(str::is_empty) {
                problems.push(ConfigProblem {
                    keys: vec!["lineage", "url"],
                    message: format!(
                        "'{url}' is not an http(s) URL (expected e.g. http://marquez:5000)"
                    ),
                });
            }
            if *timeout_ms == 0 {
                problems.push(ConfigProblem {
                    keys: vec!["lineage", "timeout_ms"],
                    message: "must be at least 1".to_string(),
                });
            }
        }
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::RepoConfig;

    #[test]
    fn file_and_http_sinks_parse_with_defaults() {
        let config =
            RepoConfig::parse("project: demo\nlineage: {type: file, path: data/lineage.jsonl}\n")
                .expect("valid");
        let lineage = config.lineage.as_ref().expect("a lineage section");
        assert_eq!(
            lineage,
            &LineageConfig::File {
                path: PathBuf::from("data/lineage.jsonl"),
                namespace: None
            }
        );
        assert_eq!(lineage.namespace("demo"), "demo");
        assert_eq!(lineage.http_endpoint(), None);

        let config = RepoConfig::parse(
            "project: demo\nlineage: {type: http, url: 'http://marquez:5000/', namespace: larder}\n",
        )
        .expect("valid");
        let lineage = config.lineage.as_ref().expect("a lineage section");
        assert_eq!(lineage.namespace("demo"), "larder");
        assert_eq!(
            lineage.http_endpoint().as_deref(),
            Some("http://marquez:5000/api/v1/lineage")
        );
        let LineageConfig::Http { timeout_ms, .. } = lineage else {
            panic!("an http sink");
        };
        assert_eq!(*timeout_ms, 5_000);
        let text = serde_saphyr::to_string(&config).expect("serializable");
        assert_eq!(RepoConfig::parse(&text).expect("reads back"), config);
        assert!(
            !serde_saphyr::to_string(&RepoConfig::new("demo"))
                .expect("serializable")
                .contains("lineage"),
            "an absent section is not written"
        );
    }

    #[test]
    fn bad_lineage_settings_point_at_their_keys() {
        let diagnostics = RepoConfig::parse(
            "project: demo\nlineage:\n  type: http\n  url: marquez:5000\n  timeout_ms: 0\n  namespace: ' '\n",
        )
        .expect_err("invalid");
        let text = diagnostics.to_string();
        assert!(
            text.contains("'marquez:5000' is not an http(s) URL"),
            "{text}"
        );
        assert!(text.contains("lineage.url"), "{text}");
        assert!(text.contains("lineage.timeout_ms"), "{text}");
        assert!(text.contains("lineage.namespace"), "{text}");

        let diagnostics =
            RepoConfig::parse("project: demo\nlineage: {type: http, url: 'http://'}\n")
                .expect_err("no host");
        assert!(
            diagnostics.to_string().contains("lineage.url"),
            "{diagnostics}"
        );

        let diagnostics =
            RepoConfig::parse("project: demo\nlineage: {type: file, path: x, url: y}\n")
                .expect_err("unknown field");
        assert!(
            diagnostics.to_string().contains("unknown field `url`"),
            "{diagnostics}"
        );
        let diagnostics =
            RepoConfig::parse("project: demo\nlineage: {type: kafka}\n").expect_err("unknown sink");
        assert!(diagnostics.to_string().contains("kafka"), "{diagnostics}");
    }
}
