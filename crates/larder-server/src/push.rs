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

use larder_core::{CoreError, EntityKey, FeatureView, Timestamp, Value, ValueType, WriteLane};
use larder_ingest::{FeatureRow, WriteError, WritePath};
use larder_offline::{OfflineStore, ViewBatch};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, FeastErrorClass, ServingError};
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

/// One pushed column: JSON values (HTTP) or typed values (gRPC), one per row.
#[derive(Debug, Clone, PartialEq)]
pub enum PushColumn {
    /// Values as JSON, read as the column's declared type.
    Json(Vec<serde_json::Value>),
    /// Typed values, converted to the column's declared type where nothing is lost.
    Typed(Vec<Value>),
}

impl PushColumn {
    fn len(&self) -> usize {
        match self {
            Self::Json(values) => values.len(),
            Self::Typed(values) => values.len(),
        }
    }

    /// The value of `row` as `value_type`; `row` is below [`PushColumn::len`].
    fn value(&self, row: usize, value_type: &ValueType) -> Result<Value, CoreError> {
        match self {
            Self::Json(values) => Value::from_json(&values[row], value_type),
            Self::Typed(values) => values[row].clone().coerce_to(value_type),
        }
    }
}

/// A direct write: target, columns and destination.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRequest {
    /// The target views.
    pub target: PushTarget,
    /// Columns by name, each with one value per row.
    pub columns: HashMap<String, PushColumn>,
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
    /// Rows not stored online because a newer value (by event time) was stored already.
    pub skipped_stale: u64,
    /// Rows appended to the offline store.
    pub written_offline: u64,
}

/// Feast's `/push` body. Unknown keys are refused (a typo would otherwise be ignored);
/// Feast's own optional keys are accepted: `allow_registry_cache` (Larder always serves from
/// its current registry snapshot) and `transform_on_write` (Larder has no on-demand
/// transformations, so there is nothing to skip).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPush {
    push_source_name: String,
    df: HashMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    to: PushTo,
    #[serde(default, rename = "allow_registry_cache")]
    _allow_registry_cache: Option<bool>,
    #[serde(default, rename = "transform_on_write")]
    _transform_on_write: Option<bool>,
}

/// Feast's `/write-to-online-store` body; the same keys as [`JsonPush`] are accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonWriteToOnlineStore {
    feature_view_name: String,
    df: HashMap<String, Vec<serde_json::Value>>,
    #[serde(default, rename = "allow_registry_cache")]
    _allow_registry_cache: Option<bool>,
    #[serde(default, rename = "transform_on_write")]
    _transform_on_write: Option<bool>,
}

/// The column in which Feast's client sends each row's created timestamp (its tie-break at
/// equal event times). Accepted when the view has no column of that name, checked to hold
/// timestamps or nulls, and not stored: at equal event time Larder's later write wins.
pub const FEAST_CREATED_COLUMN: &str = "created";

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
        columns: json_columns(body.df),
        to: body.to,
    })
}

/// Parses Feast's `/write-to-online-store` body.
pub fn parse_write_to_online_store(bytes: &[u8]) -> Result<PushRequest, ServingError> {
    let body: JsonWriteToOnlineStore = parse(bytes)?;
    Ok(PushRequest {
        target: PushTarget::FeatureView(body.feature_view_name),
        columns: json_columns(body.df),
        to: PushTo::Online,
    })
}

fn json_columns(df: HashMap<String, Vec<serde_json::Value>>) -> HashMap<String, PushColumn> {
    df.into_iter()
        .map(|(name, values)| (name, PushColumn::Json(values)))
        .collect()
}

/// The direct-write lane.
#[derive(Debug)]
pub struct PushService {
    registry: Arc<RegistryHandle>,
    write_path: Arc<WritePath>,
    offline_store: Option<Arc<dyn OfflineStore>>,
    max_rows: usize,
}

impl PushService {
    /// A push service writing through `write_path`, refusing requests of more than `max_rows`.
    pub fn new(registry: Arc<RegistryHandle>, write_path: Arc<WritePath>, max_rows: usize) -> Self {
        Self {
            registry,
            write_path,
            offline_store: None,
            max_rows,
        }
    }

    /// The write path it writes through (shared with the stream consumers).
    pub fn write_path(&self) -> &Arc<WritePath> {
        &self.write_path
    }

    /// Accepts pushes `to` the offline store too, appending their rows to `store`.
    pub fn with_offline_store(mut self, store: Arc<dyn OfflineStore>) -> Self {
        self.offline_store = Some(store);
        self
    }

    /// Validates every row for every target view, then writes them: online first (so a read
    /// sees them once the call returns), then appended offline. A failure after the online
    /// write is reported as such; retrying the whole push is safe (online writes are ordered
    /// by event time, and an offline duplicate of a row changes no training set).
    pub async fn push(&self, request: PushRequest) -> Result<Vec<PushedView>, ServingError> {
        let to_online = matches!(request.to, PushTo::Online | PushTo::OnlineAndOffline);
        let to_offline = matches!(request.to, PushTo::Offline | PushTo::OnlineAndOffline);
        let offline_store = match (&self.offline_store, to_offline) {
            (Some(store), true) => Some(store),
            (None, true) => {
                return Err(ServingError::new(
                    ErrorKind::Unavailable,
                    "this server has no offline store for pushes \"to\" the offline store",
                ));
            }
            (_, false) => None,
        };
        let registry = self.registry.snapshot();
        let views: Vec<&FeatureView> = match &request.target {
            PushTarget::FeatureView(name) => {
                vec![registry.feature_views.get(name).ok_or_else(|| {
                    ServingError::from(larder_registry::ResolveError::UnknownFeatureView(
                        name.clone(),
                    ))
                })?]
            }
            PushTarget::PushSource(name) => {
                let source = registry.sources.get(name).ok_or_else(|| {
                    ServingError::invalid(format!("unknown push source '{name}'"))
                        .with_feast_class(FeastErrorClass::PushSourceNotFound)
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
            if to_online && !view.online {
                return Err(ServingError::invalid(format!(
                    "feature view '{}' is not online (online: false)",
                    view.name
                )));
            }
            if to_offline && !view.offline {
                return Err(ServingError::invalid(format!(
                    "feature view '{}' is not offline (offline: false)",
                    view.name
                )));
            }
            let reads_push_source = registry
                .sources
                .get(&view.source)
                .is_some_and(|source| matches!(source.kind, larder_core::DataSourceKind::Push));
            if to_offline && !reads_push_source {
                return Err(ServingError::invalid(format!(
                    "feature view '{}' reads source '{}', not a push source: only push views take \
                     offline pushes (the next batch run would replace the rows)",
                    view.name, view.source
                )));
            }
            let rows = rows_for_view(view, &request.columns, row_count, views.len() == 1)?;
            let offline_batch = match to_offline {
                true => Some(
                    ViewBatch::from_rows(
                        view,
                        rows.iter().map(|row| {
                            (
                                row.key_values.as_slice(),
                                row.feature_row.event_timestamp,
                                row.feature_row.values.as_slice(),
                            )
                        }),
                    )
                    .map_err(|error| ServingError::invalid(error.to_string()))?,
                ),
                false => None,
            };
            batches.push((rows, offline_batch));
        }
        let mut pushed = Vec::with_capacity(views.len());
        for (view, (rows, offline_batch)) in views.iter().zip(batches) {
            let mut outcome = PushedView {
                feature_view: view.name.clone(),
                rows: row_count as u64,
                written: 0,
                skipped_stale: 0,
                written_offline: 0,
            };
            if to_online {
                let rows = rows.into_iter().map(|row| row.feature_row).collect();
                let summary = self
                    .write_path
                    .write(view, WriteLane::Direct, rows)
                    .await
                    .map_err(|error| match error {
                        WriteError::Store(store_error) => ServingError::from(store_error),
                        other => ServingError::invalid(other.to_string()),
                    })?;
                metrics::counter!("larder_direct_rows_written_total", "feature_view" => view.name.clone()).increment(summary.written);
                outcome.written = summary.written;
                outcome.skipped_stale = summary.skipped_stale;
            }
            if let (Some(store), Some(batch)) = (offline_store, offline_batch) {
                let store = Arc::clone(store);
                let owned_view = (*view).clone();
                let appended =
                    tokio::task::spawn_blocking(move || store.append(&owned_view, &batch))
                        .await
                        .map_err(|error| ServingError::new(ErrorKind::Internal, error.to_string()))?
                        .map_err(|error| {
                            let online = if to_online {
                                " (the rows were written online; retrying the push is safe)"
                            } else {
                                ""
                            };
                            ServingError::new(
                                ErrorKind::Internal,
                                format!("appending to the offline store failed{online}: {error}"),
                            )
                        })?;
                metrics::counter!("larder_direct_rows_written_offline_total", "feature_view" => view.name.clone()).increment(appended.rows);
                outcome.written_offline = appended.rows;
            }
            pushed.push(outcome);
        }
        Ok(pushed)
    }
}

/// A validated pushed row: the online row and the join key values it was keyed by.
struct PushedRow {
    key_values: Vec<Value>,
    feature_row: FeatureRow,
}

fn column_length(columns: &HashMap<String, PushColumn>) -> Result<usize, ServingError> {
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
    columns: &HashMap<String, PushColumn>,
    row_count: usize,
    exact: bool,
) -> Result<Vec<PushedRow>, ServingError> {
    let column = |name: &str| {
        columns.get(name).ok_or_else(|| {
            ServingError::invalid(format!(
                "feature view '{}': missing column '{name}'",
                view.name
            ))
        })
    };
    let is_view_column = |name: &str| {
        view.join_keys.iter().any(|key| key.name == name)
            || view.timestamp_field == name
            || view.feature_index(name).is_some()
    };
    if !is_view_column(FEAST_CREATED_COLUMN)
        && let Some(created) = columns.get(FEAST_CREATED_COLUMN)
    {
        for row in 0..row_count {
            created.value(row, &ValueType::Timestamp).map_err(|error| {
                ServingError::invalid(format!(
                    "feature view '{}', row {row}, column '{FEAST_CREATED_COLUMN}' (Feast's \
                     created timestamp): {error}",
                    view.name
                ))
            })?;
        }
    }
    if exact {
        for name in columns.keys() {
            let known = is_view_column(name) || name == FEAST_CREATED_COLUMN;
            if !known {
                return Err(ServingError::invalid(format!(
                    "feature view '{}' has no column '{name}'",
                    view.name
                )));
            }
        }
    }
    let key_columns: Vec<(&larder_core::JoinKey, &PushColumn)> = view
        .join_keys
        .iter()
        .map(|key| column(&key.name).map(|values| (key, values)))
        .collect::<Result<_, _>>()?;
    let timestamps = column(&view.timestamp_field)?;
    let feature_columns: Vec<&PushColumn> = view
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
            let value = values
                .value(row, &key.dtype)
                .map_err(|error| invalid(&key.name, error.to_string()))?;
            if value.is_null() {
                return Err(invalid(&key.name, "a join key cannot be null".to_string()));
            }
            key_values.push(value);
        }
        let entity_key = EntityKey::from_values(&key_values)
            .map_err(|error| invalid("join keys", error.to_string()))?;
        let event_timestamp = match timestamps.value(row, &ValueType::Timestamp) {
            Ok(Value::Timestamp(timestamp)) => timestamp,
            Ok(_) => {
                return Err(invalid(
                    &view.timestamp_field,
                    "the event timestamp cannot be null".to_string(),
                ));
            }
            Err(error) => {
                let accepted = match timestamps {
                    PushColumn::Json(_) => "RFC 3339 text or seconds since the epoch",
                    PushColumn::Typed(_) => "a timestamp",
                };
                return Err(invalid(
                    &view.timestamp_field,
                    format!("{error} ({accepted})"),
                ));
            }
        };
        let mut values = Vec::with_capacity(view.features.len());
        for (feature, feature_values) in view.features.iter().zip(&feature_columns) {
            values.push(
                feature_values
                    .value(row, &feature.dtype)
                    .map_err(|error| invalid(&feature.name, error.to_string()))?,
            );
        }
        rows.push(PushedRow {
            key_values,
            feature_row: FeatureRow {
                entity_key,
                event_timestamp: Timestamp(event_timestamp.as_micros()),
                values,
            },
        });
    }
    Ok(rows)
}
