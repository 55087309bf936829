//! The protocol-agnostic online read path.
//!
//! A request is resolved against the registry snapshot, its features grouped by feature
//! view, and each view read with one batched `read_rows` call, all views concurrently. The
//! stored row bytes are kept as they came from the store and indexed once
//! ([`larder_core::codec::index_row`]); protocols encode values straight from those bytes,
//! so a value is copied once, from the store's buffer into the response.

use std::collections::HashMap;
use std::sync::Arc;

use larder_core::codec::{self, ValueRef};
use larder_core::{EntityKey, FeatureView, JoinKey, Timestamp, Value, ValueType};
use larder_online::{OnlineRow, SharedOnlineStore};
use serde::Serialize;

use crate::error::{ErrorKind, ServingError};
use crate::registry_handle::RegistryHandle;

/// Limits that protect the server from oversized requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingLimits {
    /// Most entities one request may ask for.
    pub max_entities_per_request: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most requests served at once; more are answered 503 with Retry-After.
    pub max_concurrent_requests: usize,
    /// Most training-set requests served at once; more are answered 503 with Retry-After.
    pub max_concurrent_historical_requests: usize,
    /// How long a client may take to send a request's headers (and how long a kept-alive
    /// connection may stay idle) before the connection is closed.
    pub read_header_timeout: std::time::Duration,
    /// How long a client may take to send a request's body before it is answered 408.
    pub read_body_timeout: std::time::Duration,
}

impl Default for ServingLimits {
    fn default() -> Self {
        Self {
            max_entities_per_request: 10_000,
            max_body_bytes: 8 * 1024 * 1024,
            max_concurrent_requests: 256,
            max_concurrent_historical_requests: 2,
            read_header_timeout: std::time::Duration::from_secs(10),
            read_body_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Which features a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureSelection {
    /// Feature references, `view:feature`.
    Features(Vec<String>),
    /// A feature service name.
    Service(String),
}

/// A request for online features, whatever the protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineFeaturesRequest {
    /// The features.
    pub selection: FeatureSelection,
    /// Entity columns in request order: join key name and one value per entity. Values are
    /// converted to the join key's declared type (integers for int32/int64, strings).
    pub entities: Vec<(String, Vec<Value>)>,
    /// Name features `view__feature` instead of `feature`.
    pub full_feature_names: bool,
    /// Answer with the name and version of each feature view read (Feast's
    /// `include_feature_view_version_metadata`).
    pub include_feature_view_version_metadata: bool,
}

/// The status of one served value, as Feast names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FieldStatus {
    /// A value was found and is within the view's TTL.
    Present,
    /// No value for this entity.
    NotFound,
    /// The stored value is older than the view's TTL; it is served as null.
    OutsideMaxAge,
}

impl FieldStatus {
    /// The name clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "PRESENT",
            Self::NotFound => "NOT_FOUND",
            Self::OutsideMaxAge => "OUTSIDE_MAX_AGE",
        }
    }
}

/// The rows read for one feature view of a request, indexed for random access.
#[derive(Debug)]
pub(crate) struct ViewRows {
    name: String,
    rows: Vec<Option<OnlineRow>>,
    /// Per row, the status that applies to every feature of that row.
    row_statuses: Vec<FieldStatus>,
    /// `feature_count` value offsets per present row (rows × feature_count; zeros otherwise).
    offsets: Vec<u32>,
    feature_count: usize,
}

/// Where one output feature column comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ColumnSource {
    /// A feature of a stored row.
    Stored {
        /// The view's slot in `views`.
        view_slot: usize,
        /// The feature's index in the view.
        feature_index: usize,
    },
    /// The distance of a nearest-neighbour hit (`distances`).
    Distance,
}

/// The answer to a request, holding the stored bytes; protocols encode from it.
#[derive(Debug)]
pub struct OnlineFeaturesResult {
    /// Column names: entity join keys first, then features in request order.
    pub feature_names: Vec<String>,
    /// The declared type of every column of `feature_names`: join keys, then features.
    pub column_types: Vec<ValueType>,
    /// The typed entity columns, one per join key, in the order of `feature_names`.
    pub entity_columns: Vec<Vec<Value>>,
    /// Number of entities (rows).
    pub entity_count: usize,
    /// Name and version of each feature view read, in order of first use, when the request
    /// asked for them.
    pub feature_view_metadata: Option<Vec<(String, u32)>>,
    views: Vec<ViewRows>,
    columns: Vec<ColumnSource>,
    /// Per row, the distance to the query (nearest-neighbour searches only).
    distances: Vec<f32>,
}

/// One served cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell<'a> {
    /// The value (`Null` unless present).
    pub value: ValueRef<'a>,
    /// Why it is or is not there.
    pub status: FieldStatus,
    /// Its event time (the epoch where there is none).
    pub event_timestamp: Timestamp,
}

impl OnlineFeaturesResult {
    /// Number of feature columns (excluding entity columns).
    pub fn feature_column_count(&self) -> usize {
        self.columns.len()
    }

    /// The cell of feature column `column` (0-based among features) for entity `row`.
    pub fn cell(&self, column: usize, row: usize) -> Cell<'_> {
        let missing = |status| Cell {
            value: ValueRef::Null,
            status,
            event_timestamp: Timestamp::EPOCH,
        };
        let (view_slot, feature_index) = match self.columns.get(column) {
            None => return missing(FieldStatus::NotFound),
            Some(ColumnSource::Stored {
                view_slot,
                feature_index,
            }) => (*view_slot, *feature_index),
            Some(ColumnSource::Distance) => {
                let event_timestamp = self
                    .views
                    .first()
                    .and_then(|view| view.rows.get(row))
                    .and_then(|stored| stored.as_ref())
                    .map_or(Timestamp::EPOCH, |stored| stored.event_timestamp);
                return match self.distances.get(row) {
                    Some(distance) => Cell {
                        value: ValueRef::Float32(*distance),
                        status: FieldStatus::Present,
                        event_timestamp,
                    },
                    None => missing(FieldStatus::NotFound),
                };
            }
        };
        let view = &self.views[view_slot];
        let Some(Some(stored)) = view.rows.get(row) else {
            return missing(FieldStatus::NotFound);
        };
        let status = view.row_statuses[row];
        if status != FieldStatus::Present {
            return Cell {
                value: ValueRef::Null,
                status,
                event_timestamp: stored.event_timestamp,
            };
        }
        let offset = view.offsets[row * view.feature_count + feature_index];
        let value = codec::value_at(&stored.values, offset).unwrap_or(ValueRef::Null);
        Cell {
            value,
            status,
            event_timestamp: stored.event_timestamp,
        }
    }

    /// The answer of a nearest-neighbour search: one row per hit of one view, its
    /// `features` (indices into the view) as columns, then the distance column.
    pub(crate) fn nearest_neighbours(
        feature_names: Vec<String>,
        column_types: Vec<ValueType>,
        entity_columns: Vec<Vec<Value>>,
        rows: ViewRows,
        features: &[usize],
        distances: Vec<f32>,
    ) -> Self {
        let mut columns: Vec<ColumnSource> = features
            .iter()
            .map(|feature_index| ColumnSource::Stored {
                view_slot: 0,
                feature_index: *feature_index,
            })
            .collect();
        columns.push(ColumnSource::Distance);
        Self {
            feature_names,
            column_types,
            entity_count: distances.len(),
            entity_columns,
            feature_view_metadata: None,
            views: vec![rows],
            columns,
            distances,
        }
    }

    /// Rows read per feature view, for metrics.
    pub fn rows_read_per_view(&self) -> impl Iterator<Item = (&str, usize)> {
        self.views
            .iter()
            .map(|view| (view.name.as_str(), view.rows.len()))
    }

    /// An owned copy in Feast's response shape (for the CLI and tests).
    pub fn to_response(&self) -> OnlineFeaturesResponse {
        let mut results = Vec::with_capacity(self.entity_columns.len() + self.columns.len());
        for values in &self.entity_columns {
            results.push(FeatureColumn {
                values: values.clone(),
                statuses: vec![FieldStatus::Present; self.entity_count],
                event_timestamps: vec![Timestamp::EPOCH; self.entity_count],
            });
        }
        for column in 0..self.columns.len() {
            let cells: Vec<Cell<'_>> = (0..self.entity_count)
                .map(|row| self.cell(column, row))
                .collect();
            results.push(FeatureColumn {
                values: cells.iter().map(|cell| cell.value.to_value()).collect(),
                statuses: cells.iter().map(|cell| cell.status).collect(),
                event_timestamps: cells.iter().map(|cell| cell.event_timestamp).collect(),
            });
        }
        OnlineFeaturesResponse {
            metadata: ResponseMetadata {
                feature_names: self.feature_names.clone(),
            },
            results,
        }
    }
}

/// The names of the response's columns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseMetadata {
    /// Entity columns first, then features, in request order.
    pub feature_names: Vec<String>,
}

/// One column of the response: one slot per requested entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureColumn {
    /// The values (`null` when not present).
    pub values: Vec<Value>,
    /// Why each value is or is not there.
    pub statuses: Vec<FieldStatus>,
    /// The event time of each value (the epoch where there is none).
    pub event_timestamps: Vec<Timestamp>,
}

/// An owned answer, in the shape of Feast's `/get-online-features` response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnlineFeaturesResponse {
    /// Column names.
    pub metadata: ResponseMetadata,
    /// Columns, in the order of `metadata.feature_names`.
    pub results: Vec<FeatureColumn>,
}

/// The online read path: registry snapshot + online store.
#[derive(Debug)]
pub struct FeatureServer {
    registry: Arc<RegistryHandle>,
    store: SharedOnlineStore,
    limits: ServingLimits,
}

/// The features requested from one view, with the output column of each.
struct ViewRequest<'a> {
    view: &'a FeatureView,
    /// (feature index in the view, output column index)
    features: Vec<(usize, usize)>,
}

impl FeatureServer {
    /// A server over a registry handle and an online store.
    pub fn new(
        registry: Arc<RegistryHandle>,
        store: SharedOnlineStore,
        limits: ServingLimits,
    ) -> Self {
        Self {
            registry,
            store,
            limits,
        }
    }

    /// The registry handle (for refreshes and health).
    pub fn registry(&self) -> &Arc<RegistryHandle> {
        &self.registry
    }

    /// The limits in force.
    pub fn limits(&self) -> ServingLimits {
        self.limits
    }

    /// Serves one request: one batched read per feature view, all views concurrently.
    pub async fn get_online_features(
        &self,
        request: OnlineFeaturesRequest,
    ) -> Result<OnlineFeaturesResult, ServingError> {
        let registry = self.registry.snapshot();
        let resolved = match &request.selection {
            FeatureSelection::Features(features) => registry.resolve_feature_refs(features)?,
            FeatureSelection::Service(service) => registry.resolve_feature_service(service)?,
        };
        if resolved.is_empty() {
            return Err(ServingError::invalid("the request names no features"));
        }

        // Group the features by view, in order of first appearance.
        let mut view_requests: Vec<ViewRequest<'_>> = Vec::new();
        let mut join_keys: Vec<&JoinKey> = Vec::new();
        let mut columns = Vec::with_capacity(resolved.len());
        for (position, feature) in resolved.iter().enumerate() {
            let view = feature.view;
            if !view.online {
                return Err(ServingError::from(
                    larder_registry::ResolveError::NotOnline(view.name.clone()),
                ));
            }
            let view_slot = match view_requests
                .iter()
                .position(|existing| existing.view.name == view.name)
            {
                Some(slot) => slot,
                None => {
                    for join_key in &view.join_keys {
                        if !join_keys.iter().any(|known| known.name == join_key.name) {
                            join_keys.push(join_key);
                        }
                    }
                    view_requests.push(ViewRequest {
                        view,
                        features: Vec::new(),
                    });
                    view_requests.len() - 1
                }
            };
            view_requests[view_slot]
                .features
                .push((feature.feature_index, position));
            columns.push(ColumnSource::Stored {
                view_slot,
                feature_index: feature.feature_index,
            });
        }

        let (entity_count, entity_columns) =
            self.typed_entity_columns(request.entities, &join_keys)?;

        // Entity keys per distinct join-key combination, shared by the views that use it.
        let mut keys_by_join_keys: HashMap<Vec<&str>, Arc<Vec<EntityKey>>> = HashMap::new();
        for view_request in &view_requests {
            let names: Vec<&str> = view_request
                .view
                .join_keys
                .iter()
                .map(|join_key| join_key.name.as_str())
                .collect();
            if keys_by_join_keys.contains_key(&names) {
                continue;
            }
            let key_columns: Vec<&Vec<Value>> = names
                .iter()
                .map(|name| {
                    join_keys
                        .iter()
                        .position(|join_key| join_key.name == *name)
                        .map(|index| &entity_columns[index])
                        .ok_or_else(|| {
                            ServingError::internal("serving failed", "entity column vanished")
                        })
                })
                .collect::<Result<_, _>>()?;
            let keys = build_entity_keys(&key_columns, entity_count)?;
            keys_by_join_keys.insert(names, Arc::new(keys));
        }

        let reads = view_requests.iter().map(|view_request| {
            let names: Vec<&str> = view_request
                .view
                .join_keys
                .iter()
                .map(|join_key| join_key.name.as_str())
                .collect();
            let keys = keys_by_join_keys.get(&names).cloned().unwrap_or_default();
            let store = Arc::clone(&self.store);
            let id = view_request.view.id();
            async move { store.read_rows(&id, &keys).await }
        });
        let rows_per_view = futures::future::try_join_all(reads).await?;

        let now = Timestamp::now();
        let mut views = Vec::with_capacity(view_requests.len());
        for (view_request, rows) in view_requests.iter().zip(rows_per_view) {
            views.push(index_view_rows(view_request.view, rows, now)?);
        }

        let mut feature_names: Vec<String> = join_keys
            .iter()
            .map(|join_key| join_key.name.clone())
            .collect();
        for feature in &resolved {
            feature_names.push(if request.full_feature_names {
                format!("{}__{}", feature.view.name, feature.feature_name())
            } else {
                feature.feature_name().to_string()
            });
        }
        let feature_view_metadata = request.include_feature_view_version_metadata.then(|| {
            view_requests
                .iter()
                .map(|view_request| (view_request.view.name.clone(), view_request.view.version))
                .collect()
        });
        let column_types = join_keys
            .iter()
            .map(|join_key| join_key.dtype.clone())
            .chain(
                resolved
                    .iter()
                    .map(|feature| feature.view.features[feature.feature_index].dtype.clone()),
            )
            .collect();
        Ok(OnlineFeaturesResult {
            feature_names,
            column_types,
            entity_columns,
            entity_count,
            feature_view_metadata,
            views,
            columns,
            distances: Vec::new(),
        })
    }

    /// Checks that the entity columns are exactly the join keys needed, all of one length
    /// within the limit, and converts their values to the join keys' types. Returns the
    /// entity count and the columns in the order of `join_keys`.
    fn typed_entity_columns(
        &self,
        entities: Vec<(String, Vec<Value>)>,
        join_keys: &[&JoinKey],
    ) -> Result<(usize, Vec<Vec<Value>>), ServingError> {
        let mut by_name: HashMap<String, Vec<Value>> = HashMap::with_capacity(entities.len());
        for (name, values) in entities {
            if !join_keys.iter().any(|join_key| join_key.name == name) {
                let expected: Vec<&str> = join_keys
                    .iter()
                    .map(|join_key| join_key.name.as_str())
                    .collect();
                return Err(ServingError::invalid(format!(
                    "entity column '{name}' is not a join key of the requested feature views (expected: {})",
                    expected.join(", ")
                )));
            }
            if by_name.insert(name.clone(), values).is_some() {
                return Err(ServingError::invalid(format!(
                    "entity column '{name}' is given twice"
                )));
            }
        }
        let mut entity_count: Option<usize> = None;
        let mut typed_columns = Vec::with_capacity(join_keys.len());
        for join_key in join_keys {
            let values = by_name.remove(&join_key.name).ok_or_else(|| {
                ServingError::invalid(format!("missing entity column '{}'", join_key.name))
            })?;
            match entity_count {
                Some(count) if count != values.len() => {
                    return Err(ServingError::invalid(format!(
                        "entity columns have different lengths ({count} and {} for '{}')",
                        values.len(),
                        join_key.name
                    )));
                }
                _ => entity_count = Some(values.len()),
            }
            if values.len() > self.limits.max_entities_per_request {
                return Err(ServingError::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "the request asks for {} entities; the limit is {} per request",
                        values.len(),
                        self.limits.max_entities_per_request
                    ),
                ));
            }
            let mut typed = Vec::with_capacity(values.len());
            for (index, value) in values.into_iter().enumerate() {
                typed.push(coerce_join_key_value(value, &join_key.dtype).map_err(|got| {
                    ServingError::invalid(format!("entity column '{}' at index {index}: expected a value of type {}, got {got}", join_key.name, join_key.dtype))
                })?);
            }
            typed_columns.push(typed);
        }
        Ok((entity_count.unwrap_or(0), typed_columns))
    }
}

/// Converts a request value to a join key's type; on failure returns what was given.
fn coerce_join_key_value(value: Value, dtype: &ValueType) -> Result<Value, String> {
    if value.is_null() {
        return Err("null".to_string());
    }
    value.coerce_to(dtype).map_err(|error| match error {
        larder_core::CoreError::TypeMismatch { got, .. } => got,
        other => other.to_string(),
    })
}

fn build_entity_keys(
    key_columns: &[&Vec<Value>],
    entity_count: usize,
) -> Result<Vec<EntityKey>, ServingError> {
    let mut keys = Vec::with_capacity(entity_count);
    if let [single] = key_columns {
        for value in single.iter() {
            let key = match value {
                Value::Int64(number) => EntityKey::from_int(*number),
                Value::Int32(number) => EntityKey::from_int(i64::from(*number)),
                Value::String(text) => EntityKey::from_str_key(text),
                other => {
                    return Err(ServingError::invalid(format!(
                        "a {} cannot be a join key value",
                        other.kind_name()
                    )));
                }
            };
            keys.push(key);
        }
        return Ok(keys);
    }
    for row in 0..entity_count {
        let values: Vec<Value> = key_columns
            .iter()
            .map(|column| column[row].clone())
            .collect();
        keys.push(
            EntityKey::from_values(&values)
                .map_err(|error| ServingError::invalid(error.to_string()))?,
        );
    }
    Ok(keys)
}

pub(crate) fn index_view_rows(
    view: &FeatureView,
    rows: Vec<Option<OnlineRow>>,
    now: Timestamp,
) -> Result<ViewRows, ServingError> {
    let feature_count = view.features.len();
    let cutoff = view
        .ttl
        .filter(|ttl| ttl.as_seconds() > 0)
        .map(|ttl| now.saturating_sub(ttl));
    let mut offsets = Vec::with_capacity(rows.len() * feature_count);
    let mut row_statuses = Vec::with_capacity(rows.len());
    for row in &rows {
        let start = offsets.len();
        let status = match row {
            None => FieldStatus::NotFound,
            Some(stored) if cutoff.is_some_and(|cutoff| stored.event_timestamp < cutoff) => {
                FieldStatus::OutsideMaxAge
            }
            Some(stored) => {
                let count = codec::index_row(&stored.values, &mut offsets).map_err(|error| {
                    ServingError::internal(
                        format!("a stored row of feature view '{}' is unreadable", view.name),
                        error,
                    )
                })?;
                if count != feature_count {
                    return Err(ServingError::internal(
                        format!("a stored row of feature view '{}' is unreadable", view.name),
                        format!("it has {count} values, the view declares {feature_count}"),
                    ));
                }
                FieldStatus::Present
            }
        };
        offsets.resize(start + feature_count, 0);
        row_statuses.push(status);
    }
    Ok(ViewRows {
        name: view.name.clone(),
        rows,
        row_statuses,
        offsets,
        feature_count,
    })
}
