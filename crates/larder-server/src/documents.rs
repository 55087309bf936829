//! Nearest-neighbour search over a view's indexed `vector<N>` feature
//! (`POST /retrieve-online-documents`, gRPC `RetrieveOnlineDocuments`).
//!
//! The index proposes candidates; the online store has the last word. Every candidate's
//! row is read from the store, as `/get-online-features` would read it: a key without a row
//! or with an expired one (the view's TTL) is dropped, a row newer than the indexed vector
//! (the index lagging after a crash) is scored with the stored vector, and the filters run
//! on the stored values. When filters drop candidates the search asks the index for four
//! times as many, until it has `top_k` hits or the index has no more, so a selective filter
//! costs more reads but never returns fewer hits than exist.

use std::cmp::Ordering;

use larder_core::{EntityKey, FeatureView, Timestamp, Value, ValueType, VectorMetric, codec};
use larder_online::{OnlineRow, SharedOnlineStore};
use larder_vector::{SearchRequest, SharedVectorIndex, VectorIndexError};

use crate::error::{ErrorKind, ServingError};
use crate::registry_handle::RegistryHandle;
use crate::serving::{FeatureSelection, OnlineFeaturesResult, index_view_rows};
use std::sync::Arc;

/// The name of the distance column in answers.
pub const DISTANCE_COLUMN: &str = "distance";

/// A comparison of one feature of the view with a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    /// Equal.
    Eq,
    /// Not equal (null values never match).
    Ne,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
}

impl FilterOp {
    /// Parses `eq`, `ne`, `gt`, `gte`, `lt`, `lte`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            _ => return None,
        })
    }

    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::Ne => ordering != Ordering::Equal,
            Self::Gt => ordering == Ordering::Greater,
            Self::Gte => ordering != Ordering::Less,
            Self::Lt => ordering == Ordering::Less,
            Self::Lte => ordering != Ordering::Greater,
        }
    }
}

/// One filter of a search: `feature <op> value`, or `feature in values`.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentFilter {
    /// A feature of the searched view.
    pub feature: String,
    /// What is compared.
    pub condition: FilterCondition,
}

/// The condition of a [`DocumentFilter`]; values are untyped until checked against the
/// feature's type.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterCondition {
    /// `feature <op> value`.
    Compare(FilterOp, Value),
    /// `feature` equals one of the values.
    In(Vec<Value>),
}

/// A nearest-neighbour search request, whatever the protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentsRequest {
    /// Features to return with each hit, all of one view: the view searched is theirs.
    pub selection: FeatureSelection,
    /// The query vector.
    pub query: Vec<f32>,
    /// How many hits at most (1 to `serving.max_top_k`); `None`: 10.
    pub top_k: Option<usize>,
    /// Filters on other features of the view, all of which must hold.
    pub filters: Vec<DocumentFilter>,
    /// The metric the client expects (Feast's `distance_metric`); must be the index's.
    pub distance_metric: Option<String>,
    /// Search breadth (HNSW `ef_search`) for this request; `None`: the index's.
    pub ef_search: Option<usize>,
    /// Compare with every vector instead of walking the graph (slow; for checking recall).
    pub exact: bool,
    /// Name columns `view__feature`.
    pub full_feature_names: bool,
}

/// A filter checked against the view: the feature's position and typed values.
struct TypedFilter {
    position: usize,
    condition: TypedCondition,
}

enum TypedCondition {
    Compare(FilterOp, Value),
    In(Vec<Value>),
}

/// How many hits a request gets without `top_k`.
pub const DEFAULT_TOP_K: usize = 10;

/// The search service: registry snapshot, online store and vector index.
#[derive(Debug)]
pub struct DocumentSearch {
    registry: Arc<RegistryHandle>,
    store: SharedOnlineStore,
    index: SharedVectorIndex,
    max_top_k: usize,
}

impl DocumentSearch {
    /// A search service; `max_top_k` bounds `top_k`.
    pub fn new(
        registry: Arc<RegistryHandle>,
        store: SharedOnlineStore,
        index: SharedVectorIndex,
        max_top_k: usize,
    ) -> Self {
        Self {
            registry,
            store,
            index,
            max_top_k,
        }
    }

    /// Runs a search.
    pub async fn search(
        &self,
        request: DocumentsRequest,
    ) -> Result<OnlineFeaturesResult, ServingError> {
        let registry = self.registry.snapshot();
        let (view, features) = resolve_view(&registry, &request.selection)?;
        let feature_names: Vec<String> = features
            .iter()
            .map(|index| {
                let name = &view.features[*index].name;
                if request.full_feature_names {
                    format!("{}__{name}", view.name)
                } else {
                    name.clone()
                }
            })
            .collect();
        let indexed = view.vector_index().ok_or_else(|| {
            ServingError::invalid(format!(
                "feature view '{}' has no vector_index: declare one on its vector<N> feature to search it",
                view.name
            ))
        })?;
        let top_k = request.top_k.unwrap_or(DEFAULT_TOP_K);
        if top_k == 0 || top_k > self.max_top_k {
            return Err(ServingError::invalid(format!(
                "top_k must be between 1 and {} (serving.max_top_k), got {top_k}",
                self.max_top_k
            )));
        }
        if let Some(metric) = &request.distance_metric {
            match VectorMetric::parse(metric) {
                Some(parsed) if parsed == indexed.spec.metric => {}
                Some(_) | None => {
                    return Err(ServingError::invalid(format!(
                        "distance_metric '{metric}' does not match the index of '{}', which uses {}",
                        view.name, indexed.spec.metric
                    )));
                }
            }
        }
        if request.query.len() != indexed.dimension as usize {
            return Err(ServingError::invalid(format!(
                "the query vector has {} components; '{}:{}' is vector<{}>",
                request.query.len(),
                view.name,
                view.features[indexed.position].name,
                indexed.dimension
            )));
        }
        if let Some(position) = request
            .query
            .iter()
            .position(|component| !component.is_finite())
        {
            return Err(ServingError::invalid(format!(
                "the query vector has a non-finite component at position {position}"
            )));
        }
        if request.ef_search.is_some_and(|ef| ef == 0 || ef > 4096) {
            return Err(ServingError::invalid(
                "ef_search must be between 1 and 4096",
            ));
        }
        let filters = type_filters(view, &request.filters)?;

        let table = view.id();
        let now = Timestamp::now();
        let not_before = view
            .ttl
            .filter(|ttl| ttl.as_seconds() > 0)
            .map(|ttl| now.saturating_sub(ttl));
        let metric = indexed.spec.metric;
        let mut fetch = if filters.is_empty() { top_k } else { top_k * 4 };
        let mut hits: Vec<(f32, OnlineRow)>;
        loop {
            let candidates = match self
                .index
                .search(
                    &table,
                    SearchRequest {
                        query: &request.query,
                        k: fetch,
                        expansion: request.ef_search,
                        exact: request.exact,
                        not_before,
                    },
                )
                .await
            {
                Ok(candidates) => candidates,
                // Nothing was ever written to the view's index.
                Err(VectorIndexError::NotPrepared(_)) => Vec::new(),
                Err(error) => return Err(index_error(error)),
            };
            let exhausted = candidates.len() < fetch;
            let keys: Vec<EntityKey> = candidates.iter().map(|hit| hit.key.clone()).collect();
            let rows = self.store.read_rows(&table, &keys).await?;
            hits = Vec::with_capacity(top_k);
            let mut offsets = Vec::new();
            for (candidate, row) in candidates.into_iter().zip(rows) {
                let Some(row) = row else { continue };
                if not_before.is_some_and(|cutoff| row.event_timestamp < cutoff) {
                    continue;
                }
                offsets.clear();
                if codec::index_row(&row.values, &mut offsets).is_err() {
                    continue;
                }
                let distance = if row.event_timestamp == candidate.event_timestamp {
                    candidate.distance
                } else {
                    match stored_vector(&row.values, &offsets, indexed.position) {
                        Some(vector) => metric.distance(&request.query, &vector),
                        None => continue,
                    }
                };
                if filters
                    .iter()
                    .all(|filter| filter_holds(filter, &row.values, &offsets))
                {
                    hits.push((distance, row));
                }
            }
            if hits.len() >= top_k || exhausted {
                break;
            }
            fetch = fetch.saturating_mul(4);
        }
        hits.sort_by(|left, right| {
            left.0.total_cmp(&right.0).then_with(|| {
                left.1
                    .entity_key
                    .as_bytes()
                    .cmp(right.1.entity_key.as_bytes())
            })
        });
        hits.truncate(top_k);

        let mut entity_columns: Vec<Vec<Value>> =
            vec![Vec::with_capacity(hits.len()); view.join_keys.len()];
        for (_, row) in &hits {
            let values = row.entity_key.values().map_err(|error| {
                ServingError::internal("a stored entity key is unreadable", error)
            })?;
            for (column, value) in entity_columns.iter_mut().zip(values) {
                column.push(value);
            }
        }
        let distances: Vec<f32> = hits.iter().map(|(distance, _)| *distance).collect();
        let rows: Vec<Option<OnlineRow>> = hits.into_iter().map(|(_, row)| Some(row)).collect();
        let view_rows = index_view_rows(view, rows, now)?;
        let mut column_names: Vec<String> = view
            .join_keys
            .iter()
            .map(|join_key| join_key.name.clone())
            .collect();
        column_names.extend(feature_names);
        column_names.push(DISTANCE_COLUMN.to_string());
        let column_types: Vec<ValueType> = view
            .join_keys
            .iter()
            .map(|join_key| join_key.dtype.clone())
            .chain(
                features
                    .iter()
                    .map(|index| view.features[*index].dtype.clone()),
            )
            .chain(std::iter::once(ValueType::Float32))
            .collect();
        Ok(OnlineFeaturesResult::nearest_neighbours(
            column_names,
            column_types,
            entity_columns,
            view_rows,
            &features,
            distances,
        ))
    }
}

/// The one view of a selection and the selected features' indices in it.
fn resolve_view<'registry>(
    registry: &'registry larder_registry::Registry,
    selection: &FeatureSelection,
) -> Result<(&'registry FeatureView, Vec<usize>), ServingError> {
    let resolved = match selection {
        FeatureSelection::Features(features) => registry.resolve_feature_refs(features)?,
        FeatureSelection::Service(service) => registry.resolve_feature_service(service)?,
    };
    let Some(first) = resolved.first() else {
        return Err(ServingError::invalid("the request names no features"));
    };
    let view = first.view;
    if let Some(other) = resolved
        .iter()
        .find(|feature| feature.view.name != view.name)
    {
        return Err(ServingError::invalid(format!(
            "a search covers one feature view; the request names features of '{}' and '{}'",
            view.name, other.view.name
        )));
    }
    if !view.online {
        return Err(ServingError::from(
            larder_registry::ResolveError::NotOnline(view.name.clone()),
        ));
    }
    Ok((
        view,
        resolved
            .iter()
            .map(|feature| feature.feature_index)
            .collect(),
    ))
}

fn index_error(error: VectorIndexError) -> ServingError {
    match error {
        VectorIndexError::InvalidInput(message) => ServingError::invalid(message),
        VectorIndexError::Unavailable { .. } | VectorIndexError::Locked { .. } => {
            ServingError::new(ErrorKind::Unavailable, error.to_string())
        }
        other => ServingError::internal("the vector index failed", other),
    }
}

/// The stored vector at `position` of a row, if it holds one.
fn stored_vector(values: &[u8], offsets: &[u32], position: usize) -> Option<Vec<f32>> {
    match codec::value_at(values, *offsets.get(position)?).ok()? {
        codec::ValueRef::Vector { bytes, .. } => Some(codec::vector_components(bytes).collect()),
        _ => None,
    }
}

/// Checks every filter against the view: a known feature, a comparable type, values of
/// the feature's type.
fn type_filters(
    view: &FeatureView,
    filters: &[DocumentFilter],
) -> Result<Vec<TypedFilter>, ServingError> {
    filters
        .iter()
        .map(|filter| {
            let position = view
                .features
                .iter()
                .position(|feature| feature.name == filter.feature)
                .ok_or_else(|| {
                    let known: Vec<&str> = view
                        .features
                        .iter()
                        .map(|feature| feature.name.as_str())
                        .collect();
                    ServingError::invalid(format!(
                        "unknown filter feature '{}' in feature view '{}' (features: {})",
                        filter.feature,
                        view.name,
                        known.join(", ")
                    ))
                })?;
            let dtype = &view.features[position].dtype;
            if matches!(
                dtype,
                ValueType::List(_) | ValueType::Vector(_) | ValueType::Bytes
            ) {
                return Err(ServingError::invalid(format!(
                    "filter feature '{}' is {dtype}; filters compare scalar features",
                    filter.feature
                )));
            }
            let typed = |value: &Value| {
                filter_value(value, dtype).ok_or_else(|| {
                    ServingError::invalid(format!(
                        "filter on '{}' compares with {}, which is not a {dtype}",
                        filter.feature,
                        value.kind_name()
                    ))
                })
            };
            let condition = match &filter.condition {
                FilterCondition::Compare(op, value) => {
                    if matches!(dtype, ValueType::Bool)
                        && !matches!(op, FilterOp::Eq | FilterOp::Ne)
                    {
                        return Err(ServingError::invalid(format!(
                            "filter on bool feature '{}' can only be eq or ne",
                            filter.feature
                        )));
                    }
                    TypedCondition::Compare(*op, typed(value)?)
                }
                FilterCondition::In(values) => {
                    TypedCondition::In(values.iter().map(typed).collect::<Result<_, _>>()?)
                }
            };
            Ok(TypedFilter {
                position,
                condition,
            })
        })
        .collect()
}

/// Whether a stored row's value satisfies the filter (a null value satisfies none).
fn filter_holds(filter: &TypedFilter, values: &[u8], offsets: &[u32]) -> bool {
    let Some(offset) = offsets.get(filter.position) else {
        return false;
    };
    let Ok(stored) = codec::value_at(values, *offset) else {
        return false;
    };
    if matches!(stored, codec::ValueRef::Null) {
        return false;
    }
    let stored = stored.to_value();
    match &filter.condition {
        TypedCondition::Compare(op, value) => {
            compare(&stored, value).is_some_and(|ordering| op.accepts(ordering))
        }
        TypedCondition::In(values) => values
            .iter()
            .any(|value| compare(&stored, value) == Some(Ordering::Equal)),
    }
}

/// A filter constant as a value comparable with a feature of type `dtype`: any number for
/// a numeric feature, an RFC 3339 string or integer seconds for a timestamp.
fn filter_value(value: &Value, dtype: &ValueType) -> Option<Value> {
    let numeric = |value: &Value| {
        matches!(
            value,
            Value::Int32(_) | Value::Int64(_) | Value::Float32(_) | Value::Float64(_)
        )
    };
    match (dtype, value) {
        (ValueType::Int32 | ValueType::Int64 | ValueType::Float32 | ValueType::Float64, value)
            if numeric(value) =>
        {
            Some(value.clone())
        }
        (ValueType::Timestamp, Value::Timestamp(_))
        | (ValueType::String, Value::String(_))
        | (ValueType::Bool, Value::Bool(_)) => Some(value.clone()),
        (ValueType::Timestamp, Value::String(text)) => Timestamp::parse(text).map(Value::Timestamp),
        (ValueType::Timestamp, Value::Int64(seconds)) => {
            Timestamp::checked_from_seconds(*seconds).map(Value::Timestamp)
        }
        _ => None,
    }
}

/// Orders two values: numbers by value (integers exactly), strings, bools and timestamps
/// among themselves; `None` for incomparable ones.
fn compare(left: &Value, right: &Value) -> Option<Ordering> {
    let integer = |value: &Value| match value {
        Value::Int32(number) => Some(i64::from(*number)),
        Value::Int64(number) => Some(*number),
        _ => None,
    };
    let float = |value: &Value| match value {
        Value::Int32(number) => Some(f64::from(*number)),
        Value::Int64(number) => Some(*number as f64),
        Value::Float32(number) => Some(f64::from(*number)),
        Value::Float64(number) => Some(*number),
        _ => None,
    };
    if let (Some(a), Some(b)) = (integer(left), integer(right)) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (float(left), float(right)) {
        return a.partial_cmp(&b);
    }
    match (left, right) {
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// The JSON body of `POST /retrieve-online-documents`: Feast's fields, plus Larder's
/// `filters`, `ef_search` and `exact`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentsBody {
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    feature_service: Option<String>,
    #[serde(default)]
    full_feature_names: bool,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    query: Option<Vec<f64>>,
    #[serde(default)]
    query_string: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<i64>,
    #[serde(default)]
    distance_metric: Option<String>,
    #[serde(default)]
    filters: Vec<FilterBody>,
    #[serde(default)]
    ef_search: Option<i64>,
    #[serde(default)]
    exact: bool,
}

/// One filter object: a feature and one or more conditions
/// (`{"feature": "age", "gte": 18, "lt": 65}`, `{"feature": "country", "in": ["FR", "DE"]}`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    feature: String,
    #[serde(default)]
    eq: Option<serde_json::Value>,
    #[serde(default)]
    ne: Option<serde_json::Value>,
    #[serde(default)]
    gt: Option<serde_json::Value>,
    #[serde(default)]
    gte: Option<serde_json::Value>,
    #[serde(default)]
    lt: Option<serde_json::Value>,
    #[serde(default)]
    lte: Option<serde_json::Value>,
    #[serde(default, rename = "in")]
    one_of: Option<Vec<serde_json::Value>>,
}

/// A JSON filter constant as an untyped value (typed against the feature later).
fn untyped_value(json: &serde_json::Value, feature: &str) -> Result<Value, ServingError> {
    match json {
        serde_json::Value::Bool(flag) => Ok(Value::Bool(*flag)),
        serde_json::Value::String(text) => Ok(Value::String(text.clone())),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(integer) => Ok(Value::Int64(integer)),
            None => number.as_f64().map(Value::Float64).ok_or_else(|| {
                ServingError::invalid(format!("filter on '{feature}': {number} is out of range"))
            }),
        },
        _ => Err(ServingError::invalid(format!(
            "filter on '{feature}' compares with {json}; use a number, a string or a bool"
        ))),
    }
}

/// Parses the JSON body of `POST /retrieve-online-documents`.
pub fn parse_documents_request(body: &[u8]) -> Result<DocumentsRequest, ServingError> {
    let body: DocumentsBody = serde_json::from_slice(body)
        .map_err(|error| ServingError::invalid(format!("invalid request body: {error}")))?;
    let selection = match (body.feature_service, body.features.is_empty()) {
        (Some(service), true) => FeatureSelection::Service(service),
        (None, false) => FeatureSelection::Features(body.features),
        (Some(_), false) => {
            return Err(ServingError::invalid(
                "give either features or feature_service, not both",
            ));
        }
        (None, true) => return Err(ServingError::invalid("the request names no features")),
    };
    let query = match (body.query, body.query_string) {
        (Some(query), _) => query
            .into_iter()
            .map(|component| component as f32)
            .collect(),
        (None, Some(_)) => {
            return Err(ServingError::invalid(
                "query_string (text search) is not supported: send the query as a vector in 'query'",
            ));
        }
        (None, None) => return Err(ServingError::invalid("the request has no 'query' vector")),
    };
    let top_k = body
        .top_k
        .map(|top_k| {
            usize::try_from(top_k)
                .map_err(|_| ServingError::invalid(format!("top_k must be positive, got {top_k}")))
        })
        .transpose()?;
    let ef_search = body
        .ef_search
        .map(|ef| {
            usize::try_from(ef)
                .map_err(|_| ServingError::invalid(format!("ef_search must be positive, got {ef}")))
        })
        .transpose()?;
    let mut filters = Vec::new();
    for filter in body.filters {
        let feature = filter.feature;
        let mut conditions = Vec::new();
        for (op, value) in [
            (FilterOp::Eq, filter.eq),
            (FilterOp::Ne, filter.ne),
            (FilterOp::Gt, filter.gt),
            (FilterOp::Gte, filter.gte),
            (FilterOp::Lt, filter.lt),
            (FilterOp::Lte, filter.lte),
        ] {
            if let Some(value) = value {
                conditions.push(FilterCondition::Compare(
                    op,
                    untyped_value(&value, &feature)?,
                ));
            }
        }
        if let Some(values) = filter.one_of {
            conditions.push(FilterCondition::In(
                values
                    .iter()
                    .map(|value| untyped_value(value, &feature))
                    .collect::<Result<_, _>>()?,
            ));
        }
        if conditions.is_empty() {
            return Err(ServingError::invalid(format!(
                "the filter on '{feature}' has no condition (eq, ne, gt, gte, lt, lte or in)"
            )));
        }
        filters.extend(conditions.into_iter().map(|condition| DocumentFilter {
            feature: feature.clone(),
            condition,
        }));
    }
    Ok(DocumentsRequest {
        selection,
        query,
        top_k,
        filters,
        distance_metric: body.distance_metric,
        ef_search,
        exact: body.exact,
        full_feature_names: body.full_feature_names,
    })
}
