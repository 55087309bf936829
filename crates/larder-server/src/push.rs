//! Direct writes: producers that computed their values themselves write them through the
//! same write path as the other lanes (`POST /push`, `POST /write-to-online-store`, Feast's
//! shapes).
//!
//! A request carries columns (`df`): the view's join keys, its timestamp field and every
//! feature. Every row of every target view is validated before anything is written, so a bad
//! row refuses the whole request with a 4xx naming the row and the column, and never
//! half-writes it. Once the call returns, reads see the values (the write path writes
//! synchronously), unless a newer value by event time was already stored.

use std::collections::HashMap;
use std::sync::Arc;

use larder_core::{EntityKey, FeatureView, Timestamp, Value, WriteLane};
use larder_ingest::{FeatureRow, WriteError, WritePath};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, ServingError};
use crate::registry_handle::RegistryHandle;

/// Where pushed rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushTo {
    /// The online store (the default).
    #[default]
    Online,
    /// The offline store only.
    Offline,
    /// Both stores.
    OnlineAndOffline,
}

/// Which views a push targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// Every feature view whose source is this push source (`/push`).
    PushSource(String),
    /// One feature view (`/write-to-online-store`).
    FeatureView(String),
}

/// A direct write: target, columns and destination.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRequest {
    /// The target views.
    pub target: PushTarget,
    /// Columns by name, each with one JSON value per row.
    pub columns: HashMap<String, Vec<serde_json::Value>>,
    /// Where the rows go.
    pub to: PushTo,
}

/// What a direct write did, per feature view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushedView {
    /// The view.
    pub feature_view: String,
    /// Rows received.
    pub rows: u64,
    /// Rows stored online.
    pub written: u64,
    /// Rows not stored because a newer value (by event time) was stored already.
    pub skipped_stale: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPush {
    push_source_name: String,
    df: HashMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    to: PushTo,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonWriteToOnlineStore {
    feature_view_name: String,
    df: HashMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    #[allow(dead_code)]
    allow_registry_cache: Option<bool>,
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ServingError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let what = if error.is_data() {
            "invalid request"
        } else {
            "malformed JSON"
        };
        ServingError::invalid(format!("{what}: {error}"))
    })
}

/// Parses Feast's `/push` body.
pub fn parse_push(bytes: &[u8]) -> Result<PushRequest, ServingError> {
    let body: JsonPush = parse(bytes)?;
    Ok(PushRequest {
        target: PushTarget::PushSource(body.push_source_name),
        columns: body.df,
        to: body.to,
    })
}

/// Parses Feast's `/write-to-online-store` body.
pub fn parse_write_to_online_store(bytes: &[u8]) -> Result<PushRequest, ServingError> {
    let body: JsonWriteToOnlineStore = parse(bytes)?;
    Ok(PushRequest {
        target: PushTarget::FeatureView(body.feature_view_name),
        columns: body.df,
        to: PushTo::Online,
    })
}

/// The direct-write lane.
#[derive(Debug)]
pub struct PushService {
    registry: Arc<RegistryHandle>,
    write_path: Arc<WritePath>,
    max_rows: usize,
}

impl PushService {
    /// A push service writing through `write_path`, refusing requests of more than `max_rows`.
    pub fn new(registry: Arc<RegistryHandle>, write_path: Arc<WritePath>, max_rows: usize) -> Self {
        Self {
            registry,
            write_path,
            max_rows,
        }
    }

    /// Validates every row for every target view, then writes them.
    pub async fn push(&self, request: PushRequest) -> Result<Vec<PushedView>, ServingError> {
        if request.to != PushTo::Online {
            return Err(ServingError::invalid(
                "only \"to\": \"online\" is supported so far; offline pushes are not implemented yet",
            ));
        }
        let registry = self.registry.snapshot();
        let views: Vec<&FeatureView> = match &request.target {
            PushTarget::FeatureView(name) => {
                vec![registry.feature_views.get(name).ok_or_else(|| {
                    ServingError::invalid(format!("unknown feature view '{name}'"))
                })?]
            }
            PushTarget::PushSource(name) => {
                let source = registry.sources.get(name).ok_or_else(|| {
                    ServingError::invalid(format!("unknown push source '{name}'"))
                })?;
                if !matches!(source.kind, larder_core::DataSourceKind::Push) {
                    return Err(ServingError::invalid(format!(
                        "source '{name}' is a {} source, not a push source",
                        source.kind.kind_name()
                    )));
                }
                let views: Vec<&FeatureView> = registry
                    .feature_views
                    .values()
                    .filter(|view| view.source == *name)
                    .collect();
                if views.is_empty() {
                    return Err(ServingError::invalid(format!(
                        "no feature view reads push source '{name}'"
                    )));
                }
                views
            }
        };
        let row_count = column_length(&request.columns)?;
        if row_count > self.max_rows {
            return Err(ServingError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the request has {row_count} rows; the limit is {}",
                    self.max_rows
                ),
            ));
        }
        let mut batches = Vec::with_capacity(views.len());
        for view in &views {
            if !view.online {
                return Err(ServingError::invalid(format!(
                    "feature view '{}' is not online (online: false)",
                    view.name
                )));
            }
            batches.push(rows_for_view(
                view,
                &request.columns,
                row_count,
                views.len() == 1,
            )?);
        }
        let mut pushed = Vec::with_capacity(views.len());
        for (view, rows) in views.iter().zip(batches) {
            let summary = self
                .write_path
                .write(view, WriteLane::Direct, rows)
                .await
                .map_err(|error| match error {
                    WriteError::Store(store_error) => ServingError::from(store_error),
                    other => ServingError::invalid(other.to_string()),
                })?;
            metrics::counter!("larder_direct_rows_written_total", "feature_view" => view.name.clone()).increment(summary.written);
            pushed.push(PushedView {
                feature_view: view.name.clone(),
                rows: row_count as u64,
                written: summary.written,
                skipped_stale: summary.skipped_stale,
            });
        }
        Ok(pushed)
    }
}

fn column_length(columns: &HashMap<String, Vec<serde_json::Value>>) -> Result<usize, ServingError> {
    let mut length = None;
    for (name, values) in columns {
        match length {
            Some(expected) if expected != values.len() => {
                return Err(ServingError::invalid(format!(
                    "columns have different lengths ({expected} and {} for '{name}')",
                    values.len()
                )));
            }
            _ => length = Some(values.len()),
        }
    }
    length.ok_or_else(|| ServingError::invalid("the request has no columns ('df' is empty)"))
}

/// Builds and checks one view's rows. With `exact`, columns the view does not use are refused
/// (a typo would otherwise drop a value silently); a push source feeding several views may
/// carry columns for each of them.
fn rows_for_view(
    view: &FeatureView,
    columns: &HashMap<String, Vec<serde_json::Value>>,
    row_count: usize,
    exact: bool,
) -> Result<Vec<FeatureRow>, ServingError> {
    let column = |name: &str| {
        columns.get(name).ok_or_else(|| {
            ServingError::invalid(format!(
                "feature view '{}': missing column '{name}'",
                view.name
            ))
        })
    };
    if exact {
        for name in columns.keys() {
            let known = view.join_keys.iter().any(|key| key.name == *name)
                || view.timestamp_field == *name
                || view.feature_index(name).is_some();
            if !known {
                return Err(ServingError::invalid(format!(
                    "feature view '{}' has no column '{name}'",
                    view.name
                )));
            }
        }
    }
    let key_columns: Vec<(&larder_core::JoinKey, &Vec<serde_json::Value>)> = view
        .join_keys
        .iter()
        .map(|key| column(&key.name).map(|values| (key, values)))
        .collect::<Result<_, _>>()?;
    let timestamps = column(&view.timestamp_field)?;
    let feature_columns: Vec<&Vec<serde_json::Value>> = view
        .features
        .iter()
        .map(|feature| column(&feature.name))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::with_capacity(row_count);
    for row in 0..row_count {
        let invalid = |name: &str, message: String| {
            ServingError::invalid(format!(
                "feature view '{}', row {row}, column '{name}': {message}",
                view.name
            ))
        };
        let mut key_values = Vec::with_capacity(key_columns.len());
        for (key, values) in &key_columns {
            let value = Value::from_json(&values[row], &key.dtype)
                .map_err(|error| invalid(&key.name, error.to_string()))?;
            if value.is_null() {
                return Err(invalid(&key.name, "a join key cannot be null".to_string()));
            }
            key_values.push(value);
        }
        let entity_key = EntityKey::from_values(&key_values)
            .map_err(|error| invalid("join keys", error.to_string()))?;
        let event_timestamp =
            match Value::from_json(&timestamps[row], &larder_core::ValueType::Timestamp) {
                Ok(Value::Timestamp(timestamp)) => timestamp,
                Ok(_) => {
                    return Err(invalid(
                        &view.timestamp_field,
                        "the event timestamp cannot be null".to_string(),
                    ));
                }
                Err(error) => {
                    return Err(invalid(
                        &view.timestamp_field,
                        format!("{error} (RFC 3339 text or seconds since the epoch)"),
                    ));
                }
            };
        let mut values = Vec::with_capacity(view.features.len());
        for (feature, feature_values) in view.features.iter().zip(&feature_columns) {
            values.push(
                Value::from_json(&feature_values[row], &feature.dtype)
                    .map_err(|error| invalid(&feature.name, error.to_string()))?,
            );
        }
        rows.push(FeatureRow {
            entity_key,
            event_timestamp: Timestamp(event_timestamp.as_micros()),
            values,
        });
    }
    Ok(rows)
}
