//! Materialization on request: Feast's `POST /materialize` and `POST /materialize-incremental`
//! (what `feast materialize` sends to a remote feature server), run by the server's batch
//! lane exactly as `larder materialize` runs it.
//!
//! The server checks the request against its registry snapshot; a [`Materializer`], which
//! the binary provides (it owns the stores and the run history), runs it. Without
//! `?async=true` the call answers when every view has run; with it, the call answers 202 at
//! once and the runs go on in the background (their reports go to the run history). A view
//! that is being materialized (here, by a schedule or by another `larder materialize`) makes
//! the call answer 409: runs of one view never overlap.

use std::collections::HashMap;
use std::sync::Arc;

use larder_core::Timestamp;
use larder_ingest::RunReport;
use larder_registry::Registry;
use serde::Deserialize;

use crate::error::{ErrorKind, ServingError};

/// Which rows a requested materialization reads, by event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaterializeWindow {
    /// `[start, end)`, open sides unbounded (Feast's `/materialize`).
    Range {
        /// Inclusive start.
        start: Option<Timestamp>,
        /// Exclusive end.
        end: Option<Timestamp>,
    },
    /// From each view's last watermark to `end` (Feast's `/materialize-incremental`).
    Incremental {
        /// Exclusive end.
        end: Timestamp,
    },
}

/// A materialization to run: the views (checked against the registry) and the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterializeCall {
    /// The batch views to run, by name.
    pub feature_views: Vec<String>,
    /// The event-time window.
    pub window: MaterializeWindow,
}

/// Runs the batch lane for the server.
#[async_trait::async_trait]
pub trait Materializer: Send + Sync + std::fmt::Debug {
    /// Whether a run of `view` is in progress, in this process or another.
    fn is_running(&self, view: &str) -> Result<bool, ServingError>;

    /// Runs every view of `call` (side by side, as `larder materialize` does) and returns
    /// their reports; a view whose run is in progress fails the call with
    /// [`ErrorKind::Conflict`].
    async fn materialize(&self, call: MaterializeCall) -> Result<Vec<RunReport>, ServingError>;
}

/// Feast's `/materialize` body. Its keys are all accepted: `full_feature_names` does not
/// change what is materialized; `version` must name the applied version of the one view.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMaterialize {
    #[serde(default)]
    start_ts: Option<String>,
    #[serde(default)]
    end_ts: Option<String>,
    #[serde(default)]
    feature_views: Option<Vec<String>>,
    #[serde(default)]
    disable_event_timestamp: bool,
    #[serde(default, rename = "full_feature_names")]
    _full_feature_names: bool,
    #[serde(default)]
    version: Option<String>,
}

/// Feast's `/materialize-incremental` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonMaterializeIncremental {
    end_ts: String,
    #[serde(default)]
    feature_views: Option<Vec<String>>,
    #[serde(default, rename = "full_feature_names")]
    _full_feature_names: bool,
    #[serde(default)]
    version: Option<String>,
}

fn parse_time(key: &str, text: &str) -> Result<Timestamp, ServingError> {
    Timestamp::parse(text).ok_or_else(|| {
        ServingError::invalid(format!(
            "'{key}' is '{text}', not an ISO 8601 / RFC 3339 time (naive times are UTC)"
        ))
    })
}

/// Parses a `/materialize` body and checks it against `registry`.
pub fn parse_materialize(
    bytes: &[u8],
    registry: &Registry,
) -> Result<MaterializeCall, ServingError> {
    let body: JsonMaterialize = crate::json::parse_body(bytes)?;
    let window = if body.disable_event_timestamp {
        MaterializeWindow::Range {
            start: None,
            end: None,
        }
    } else {
        let (Some(start), Some(end)) = (&body.start_ts, &body.end_ts) else {
            return Err(ServingError::invalid(
                "give 'start_ts' and 'end_ts', or 'disable_event_timestamp': true",
            ));
        };
        let (start, end) = (parse_time("start_ts", start)?, parse_time("end_ts", end)?);
        if start > end {
            return Err(ServingError::invalid(format!(
                "'start_ts' ({start}) is after 'end_ts' ({end})"
            )));
        }
        MaterializeWindow::Range {
            start: Some(start),
            end: Some(end),
        }
    };
    let feature_views = checked_views(registry, body.feature_views, body.version.as_deref())?;
    Ok(MaterializeCall {
        feature_views,
        window,
    })
}

/// Parses a `/materialize-incremental` body and checks it against `registry`.
pub fn parse_materialize_incremental(
    bytes: &[u8],
    registry: &Registry,
) -> Result<MaterializeCall, ServingError> {
    let body: JsonMaterializeIncremental = crate::json::parse_body(bytes)?;
    let end = parse_time("end_ts", &body.end_ts)?;
    let feature_views = checked_views(registry, body.feature_views, body.version.as_deref())?;
    Ok(MaterializeCall {
        feature_views,
        window: MaterializeWindow::Incremental { end },
    })
}

/// The batch views a request names (all of them when it names none), with Feast's `version`
/// checked: `v2` or `2`, for exactly one view, equal to its applied version.
fn checked_views(
    registry: &Registry,
    names: Option<Vec<String>>,
    version: Option<&str>,
) -> Result<Vec<String>, ServingError> {
    let names = names.unwrap_or_default();
    let views = registry.batch_views(&names)?;
    if let Some(name) = names
        .iter()
        .find(|name| !views.iter().any(|view| view.name == **name))
    {
        return Err(ServingError::invalid(format!(
            "feature view '{name}' is not a batch view (its source is not a file source, or it \
             is neither online nor offline): only batch views are materialized"
        )));
    }
    if let Some(version) = version {
        let [view] = views.as_slice() else {
            return Err(ServingError::invalid(
                "'version' needs exactly one feature view in 'feature_views'",
            ));
        };
        let number: u32 = version
            .strip_prefix('v')
            .unwrap_or(version)
            .parse()
            .map_err(|_| {
                ServingError::invalid(format!("'version' is '{version}', not v<number>"))
            })?;
        if number != view.version {
            return Err(ServingError::new(
                ErrorKind::NotFound,
                format!(
                    "feature view '{}' is at version {}, not {number}: Larder materializes the \
                     applied version",
                    view.name, view.version
                ),
            ));
        }
    }
    if views.is_empty() {
        return Err(ServingError::invalid(
            "the registry has no batch view to materialize",
        ));
    }
    Ok(views.into_iter().map(|view| view.name.clone()).collect())
}

/// Whether the query string asks for `?async=true`.
pub fn wants_async(query: Option<&str>) -> bool {
    let parameters: HashMap<&str, &str> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    parameters
        .get("async")
        .is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

/// Runs `call`: at once and to the end, or (with `run_async`) in the background after
/// checking that none of its views is being materialized. Returns the JSON body.
pub async fn run(
    materializer: &Arc<dyn Materializer>,
    call: MaterializeCall,
    run_async: bool,
) -> Result<(bool, serde_json::Value), ServingError> {
    if !run_async {
        let reports = materializer.materialize(call).await?;
        return Ok((
            false,
            serde_json::json!({"status": "succeeded", "runs": reports}),
        ));
    }
    for view in &call.feature_views {
        if materializer.is_running(view)? {
            return Err(ServingError::new(
                ErrorKind::Conflict,
                format!("a run of feature view '{view}' is in progress"),
            ));
        }
    }
    let names = call.feature_views.clone();
    let background = Arc::clone(materializer);
    tokio::spawn(async move {
        if let Err(error) = background.materialize(call).await {
            tracing::warn!(%error, "materialization requested over HTTP failed");
        }
    });
    Ok((
        true,
        serde_json::json!({"status": "accepted", "feature_views": names}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_is_read_from_the_query_string() {
        assert!(wants_async(Some("async=true")));
        assert!(wants_async(Some("force=true&async=TRUE")));
        assert!(!wants_async(Some("async=false")));
        assert!(!wants_async(None));
    }
}
