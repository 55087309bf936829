//! The protocol-agnostic online read path.

use std::collections::HashMap;
use std::sync::Arc;

use larder_core::{EntityKey, FeatureRef, FeatureView, JoinKey, Timestamp, Value, codec};
use larder_online::SharedOnlineStore;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorKind, ServingError};
use crate::registry_handle::RegistryHandle;

/// Limits that protect the server from oversized requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingLimits {
    /// Most entities one request may ask for.
    pub max_entities_per_request: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ServingLimits {
    fn default() -> Self {
        Self {
            max_entities_per_request: 10_000,
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

/// A request for online features, in the shape of Feast's `/get-online-features`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineFeaturesRequest {
    /// Feature references, `view:feature`. Exactly one of `features` and
    /// `feature_service` must be given.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// A feature service name.
    #[serde(default)]
    pub feature_service: Option<String>,
    /// Entity columns: join key name to one value per requested entity.
    pub entities: serde_json::Map<String, serde_json::Value>,
    /// Name features `view__feature` instead of `feature`.
    #[serde(default)]
    pub full_feature_names: bool,
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

/// The answer, in the shape of Feast's `/get-online-features` response.
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
    /// Whether a feature is asked for twice (then values are cloned, not moved).
    has_repeated_features: bool,
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
    ) -> Result<OnlineFeaturesResponse, ServingError> {
        let registry = self.registry.snapshot();
        let references: Vec<FeatureRef> = match (&request.features, &request.feature_service) {
            (Some(_), Some(_)) => {
                return Err(ServingError::invalid(
                    "give either 'features' or 'feature_service', not both",
                ));
            }
            (None, None) => {
                return Err(ServingError::invalid(
                    "the request names no features: give 'features' or 'feature_service'",
                ));
            }
            (Some(features), None) => registry.resolve_feature_refs(features)?,
            (None, Some(service)) => registry.resolve_feature_service(service)?,
        };
        if references.is_empty() {
            return Err(ServingError::invalid("the request names no features"));
        }

        // Group the references by view, in order of first appearance.
        let mut view_requests: Vec<ViewRequest<'_>> = Vec::new();
        let mut join_keys: Vec<&JoinKey> = Vec::new();
        for (position, reference) in references.iter().enumerate() {
            let view = registry.feature_views.get(&reference.view).ok_or_else(|| {
                ServingError::invalid(format!("unknown feature view '{}'", reference.view))
            })?;
            if !view.online {
                return Err(ServingError::invalid(format!(
                    "feature view '{}' is not online (online: false)",
                    view.name
                )));
            }
            let feature_index = view.feature_index(&reference.feature).ok_or_else(|| {
                ServingError::invalid(format!(
                    "feature view '{}' has no feature '{}'",
                    view.name, reference.feature
                ))
            })?;
            match view_requests
                .iter_mut()
                .find(|existing| existing.view.name == view.name)
            {
                Some(existing) => {
                    existing.has_repeated_features |= existing
                        .features
                        .iter()
                        .any(|(index, _)| *index == feature_index);
                    existing.features.push((feature_index, position));
                }
                None => {
                    for join_key in &view.join_keys {
                        if !join_keys.iter().any(|known| known.name == join_key.name) {
                            join_keys.push(join_key);
                        }
                    }
                    view_requests.push(ViewRequest {
                        view,
                        features: vec![(feature_index, position)],
                        has_repeated_features: false,
                    });
                }
            }
        }

        let entity_count = self.check_entity_columns(&request, &join_keys)?;
        let entity_columns = Self::typed_entity_columns(&request, &join_keys)?;

        // Entity keys per distinct join-key combination, shared by the views that use it.
        let mut keys_by_join_keys: HashMap<Vec<String>, Arc<Vec<EntityKey>>> = HashMap::new();
        for view_request in &view_requests {
            let names: Vec<String> = view_request
                .view
                .join_keys
                .iter()
                .map(|join_key| join_key.name.clone())
                .collect();
            if keys_by_join_keys.contains_key(&names) {
                continue;
            }
            let columns: Vec<&Vec<Value>> = names
                .iter()
                .map(|name| {
                    entity_columns.get(name.as_str()).ok_or_else(|| {
                        ServingError::new(ErrorKind::Internal, "entity column vanished")
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut keys = Vec::with_capacity(entity_count);
            for row in 0..entity_count {
                let values: Vec<Value> = columns.iter().map(|column| column[row].clone()).collect();
                keys.push(
                    EntityKey::from_values(&values)
                        .map_err(|error| ServingError::invalid(error.to_string()))?,
                );
            }
            keys_by_join_keys.insert(names, Arc::new(keys));
        }

        let reads = view_requests.iter().map(|view_request| {
            let names: Vec<String> = view_request
                .view
                .join_keys
                .iter()
                .map(|join_key| join_key.name.clone())
                .collect();
            let keys = keys_by_join_keys.get(&names).cloned().unwrap_or_default();
            let store = Arc::clone(&self.store);
            let id = view_request.view.id();
            async move { store.read_rows(&id, &keys).await }
        });
        let rows_per_view = futures::future::try_join_all(reads).await?;

        // Assemble: entity columns, then features in request order.
        let mut feature_names: Vec<String> = join_keys
            .iter()
            .map(|join_key| join_key.name.clone())
            .collect();
        let mut results: Vec<FeatureColumn> =
            Vec::with_capacity(join_keys.len() + references.len());
        for join_key in &join_keys {
            let values = entity_columns
                .get(join_key.name.as_str())
                .cloned()
                .unwrap_or_default();
            results.push(FeatureColumn {
                values,
                statuses: vec![FieldStatus::Present; entity_count],
                event_timestamps: vec![Timestamp::EPOCH; entity_count],
            });
        }
        let mut feature_columns: Vec<Option<FeatureColumn>> = vec![None; references.len()];
        for reference in &references {
            feature_names.push(if request.full_feature_names {
                format!("{}__{}", reference.view, reference.feature)
            } else {
                reference.feature.clone()
            });
        }
        let now = Timestamp::now();
        for (view_request, rows) in view_requests.iter().zip(rows_per_view) {
            let cutoff = view_request
                .view
                .ttl
                .filter(|ttl| ttl.as_seconds() > 0)
                .map(|ttl| now.saturating_sub(ttl));
            let mut columns: Vec<FeatureColumn> = view_request
                .features
                .iter()
                .map(|_| FeatureColumn {
                    values: Vec::with_capacity(entity_count),
                    statuses: Vec::with_capacity(entity_count),
                    event_timestamps: Vec::with_capacity(entity_count),
                })
                .collect();
            for row in rows {
                let Some(stored) = row else {
                    for column in &mut columns {
                        column.values.push(Value::Null);
                        column.statuses.push(FieldStatus::NotFound);
                        column.event_timestamps.push(Timestamp::EPOCH);
                    }
                    continue;
                };
                let expired = cutoff.is_some_and(|cutoff| stored.event_timestamp < cutoff);
                let mut decoded = if expired {
                    Vec::new()
                } else {
                    codec::decode_row(&stored.values).map_err(|error| {
                        ServingError::new(
                            ErrorKind::Internal,
                            format!(
                                "stored row of feature view '{}' is unreadable: {error}",
                                view_request.view.name
                            ),
                        )
                    })?
                };
                for (column, (feature_index, _)) in columns.iter_mut().zip(&view_request.features) {
                    column.event_timestamps.push(stored.event_timestamp);
                    if expired {
                        column.values.push(Value::Null);
                        column.statuses.push(FieldStatus::OutsideMaxAge);
                        continue;
                    }
                    let value = match decoded.get_mut(*feature_index) {
                        Some(slot) if view_request.has_repeated_features => slot.clone(),
                        Some(slot) => std::mem::replace(slot, Value::Null),
                        None => Value::Null,
                    };
                    column.values.push(value);
                    column.statuses.push(FieldStatus::Present);
                }
            }
            for (column, (_, position)) in columns.into_iter().zip(&view_request.features) {
                feature_columns[*position] = Some(column);
            }
        }
        results.extend(feature_columns.into_iter().flatten());
        Ok(OnlineFeaturesResponse {
            metadata: ResponseMetadata { feature_names },
            results,
        })
    }

    /// Checks that the entity columns are exactly the join keys needed, all of one length
    /// within the limit; returns that length.
    fn check_entity_columns(
        &self,
        request: &OnlineFeaturesRequest,
        join_keys: &[&JoinKey],
    ) -> Result<usize, ServingError> {
        for name in request.entities.keys() {
            if !join_keys.iter().any(|join_key| &join_key.name == name) {
                let expected: Vec<&str> = join_keys
                    .iter()
                    .map(|join_key| join_key.name.as_str())
                    .collect();
                return Err(ServingError::invalid(format!(
                    "entity column '{name}' is not a join key of the requested feature views (expected: {})",
                    expected.join(", ")
                )));
            }
        }
        let mut entity_count: Option<usize> = None;
        for join_key in join_keys {
            let column = request.entities.get(&join_key.name).ok_or_else(|| {
                ServingError::invalid(format!("missing entity column '{}'", join_key.name))
            })?;
            let values = column.as_array().ok_or_else(|| {
                ServingError::invalid(format!(
                    "entity column '{}' must be an array of values",
                    join_key.name
                ))
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
        }
        let count = entity_count.unwrap_or(0);
        if count > self.limits.max_entities_per_request {
            return Err(ServingError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the request asks for {count} entities; the limit is {} per request",
                    self.limits.max_entities_per_request
                ),
            ));
        }
        Ok(count)
    }

    fn typed_entity_columns<'a>(
        request: &OnlineFeaturesRequest,
        join_keys: &[&'a JoinKey],
    ) -> Result<HashMap<&'a str, Vec<Value>>, ServingError> {
        let mut columns = HashMap::with_capacity(join_keys.len());
        for join_key in join_keys {
            let values = request
                .entities
                .get(&join_key.name)
                .and_then(|column| column.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut typed = Vec::with_capacity(values.len());
            for (index, json) in values.iter().enumerate() {
                if json.is_null() {
                    return Err(ServingError::invalid(format!(
                        "entity column '{}' has null at index {index}",
                        join_key.name
                    )));
                }
                let value = Value::from_json(json, &join_key.dtype).map_err(|error| {
                    ServingError::invalid(format!(
                        "entity column '{}' at index {index}: {error}",
                        join_key.name
                    ))
                })?;
                typed.push(value);
            }
            columns.insert(join_key.name.as_str(), typed);
        }
        Ok(columns)
    }
}
