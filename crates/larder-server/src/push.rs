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

    /// The value of `row` as `value_type`, its floats finite; `row` is below
    /// [`PushColumn::len`].
    fn value(&self, row: usize, value_type: &ValueType) -> Result<Value, CoreError> {
        match self {
            Self::Json(values) => Value::from_json(&values[row], value_type),
            Self::Typed(values) => values[row].clone().coerce_to(value_type),
        }?
        .ensure_finite()
    }

    /// How `row` was sent as a number of some unit since the epoch, if it was: JSON numbers
    /// are seconds, typed timestamps microseconds.
    fn sent_as_number(&self, row: usize) -> Option<(i128, &'static str)> {
        match self {
            Self::Json(values) => values[row].as_i64().map(|n| (i128::from(n), "seconds")),
            Self::Typed(values) => match &values[row] {
                Value::Timestamp(timestamp) => {
                    Some((i128::from(timestamp.as_micros()), "microseconds"))
                }
                _ => None,
            },
        }
    }
}

/// The event times a direct write may carry: not before `min`, not more than `max_ahead`
/// ahead of the server's clock. A value outside would be a unit mistake (milliseconds sent
/// as seconds lands in the year 57890) that, by the event-time order of the write path,
/// would win over every later write of the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeBounds {
    /// The earliest event time accepted.
    pub min: Timestamp,
    /// How far ahead of the server's clock an event time may be.
    pub max_ahead: std::time::Duration,
}

impl Default for EventTimeBounds {
    fn default() -> Self {
        Self {
            min: Timestamp(946_684_800_000_000), // 2000-01-01T00:00:00Z
            max_ahead: std::time::Duration::from_secs(300),
        }
    }
}

impl EventTimeBounds {
    /// The latest event time accepted at `now`.
    pub fn max_at(&self, now: Timestamp) -> Timestamp {
        let ahead = i64::try_from(self.max_ahead.as_micros()).unwrap_or(i64::MAX);
        Timestamp(now.as_micros().saturating_add(ahead))
    }

    /// Why `event_time` is refused at `now`, if it is; `sent` is the number the client
    /// sent and its unit, to suggest the unit it probably meant.
    fn problem(
        &self,
        event_time: Timestamp,
        now: Timestamp,
        sent: Option<(i128, &'static str)>,
    ) -> Option<String> {
        let max = self.max_at(now);
        let problem = if event_time > max {
            format!(
                "event time {} is {} ahead of this server's clock (the limit is {}s: \
                 serving.max_event_time_ahead)",
                describe_time(event_time),
                describe_span(event_time.as_micros() as i128 - now.as_micros() as i128),
                self.max_ahead.as_secs()
            )
        } else if event_time < self.min {
            format!(
                "event time {} is before {} (serving.min_event_time)",
                describe_time(event_time),
                self.min
            )
        } else {
            return None;
        };
        let hint = sent.and_then(|(number, unit)| self.unit_hint(number, unit, now));
        Some(match hint {
            Some(hint) => format!("{problem}; {hint}"),
            None => problem,
        })
    }

    /// "1764676800000 looks like milliseconds" when reading `number` in another unit gives
    /// an accepted time.
    fn unit_hint(&self, number: i128, sent_unit: &str, now: Timestamp) -> Option<String> {
        const UNITS: [(&str, i128); 4] = [
            ("seconds", 1_000_000),
            ("milliseconds", 1_000),
            ("microseconds", 1),
            ("nanoseconds", 0),
        ];
        let micros_of = |unit_micros: i128| match unit_micros {
            0 => number / 1_000,
            scale => number.saturating_mul(scale),
        };
        let (min, max) = (
            self.min.as_micros() as i128,
            self.max_at(now).as_micros() as i128,
        );
        UNITS
            .iter()
            .filter(|(unit, _)| *unit != sent_unit)
            .find(|(_, scale)| (min..=max).contains(&micros_of(*scale)))
            .map(|(unit, scale)| {
                let as_time = Timestamp(micros_of(*scale) as i64);
                let accepted = match sent_unit {
                    "seconds" => "send seconds since the epoch, or RFC 3339 text",
                    _ => "send the time in microseconds",
                };
                format!("{number} looks like {unit} since the epoch ({as_time}): {accepted}")
            })
    }
}

/// A time as RFC 3339 when it has a four-digit year, else by its year.
fn describe_time(time: Timestamp) -> String {
    let year = 1970 + time.as_micros().div_euclid(31_556_952_000_000);
    if (1..=9999).contains(&year) {
        time.to_rfc3339()
    } else {
        format!("in the year {year}")
    }
}

/// A span of microseconds in the largest sensible unit.
fn describe_span(micros: i128) -> String {
    let seconds = micros / 1_000_000;
    if seconds < 120 {
        format!("{seconds}s")
    } else if seconds < 7_200 {
        format!("{} min", seconds / 60)
    } else if seconds < 172_800 {
        format!("{} h", seconds / 3_600)
    } else if seconds < 63_072_000 {
        format!("{} days", seconds / 86_400)
    } else {
        format!("{} years", seconds / 31_556_952)
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
    /// Update only the features sent, keeping each entity's other stored features
    /// ([`WritePath::update`]); online writes to one feature view only.
    pub partial: bool,
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
    /// Larder's partial update: only the feature columns sent are changed.
    #[serde(default)]
    partial: bool,
    #[serde(default, rename = "allow_registry_cache")]
    _allow_registry_cache: Option<bool>,
    #[serde(default, rename = "transform_on_write")]
    _transform_on_write: Option<bool>,
}

/// The column in which Feast's client sends each row's created timestamp (its tie-break at
/// equal event times). Accepted when the view has no column of that name, checked to hold
/// timestamps or nulls, and not stored: at equal event time Larder's later write wins.
pub const FEAST_CREATED_COLUMN: &str = "created";

/// Parses Feast's `/push` body.
pub fn parse_push(bytes: &[u8]) -> Result<PushRequest, ServingError> {
    let body: JsonPush = crate::json::parse_body(bytes)?;
    Ok(PushRequest {
        target: PushTarget::PushSource(body.push_source_name),
        columns: json_columns(body.df),
        to: body.to,
        partial: false,
    })
}

/// Parses Feast's `/write-to-online-store` body.
pub fn parse_write_to_online_store(bytes: &[u8]) -> Result<PushRequest, ServingError> {
    let body: JsonWriteToOnlineStore = crate::json::parse_body(bytes)?;
    Ok(PushRequest {
        target: PushTarget::FeatureView(body.feature_view_name),
        columns: json_columns(body.df),
        to: PushTo::Online,
        partial: body.partial,
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
    event_time_bounds: EventTimeBounds,
}

impl PushService {
    /// A push service writing through `write_path`, refusing requests of more than `max_rows`.
    pub fn new(registry: Arc<RegistryHandle>, write_path: Arc<WritePath>, max_rows: usize) -> Self {
        Self {
            registry,
            write_path,
            offline_store: None,
            max_rows,
            event_time_bounds: EventTimeBounds::default(),
        }
    }

    /// Refuses event times outside `bounds` (default: 2000-01-01 to 5 minutes ahead).
    pub fn with_event_time_bounds(mut self, bounds: EventTimeBounds) -> Self {
        self.event_time_bounds = bounds;
        self
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

    /// The names of the views a write to `target` reaches (none for an unknown target:
    /// [`PushService::push`] gives that error).
    pub fn target_views(&self, target: &PushTarget) -> Vec<String> {
        match target {
            PushTarget::FeatureView(name) => vec![name.clone()],
            PushTarget::PushSource(name) => self
                .registry
                .snapshot()
                .feature_views
                .values()
                .filter(|view| view.source == *name)
                .map(|view| view.name.clone())
                .collect(),
        }
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
        if request.partial && (to_offline || views.len() != 1) {
            return Err(ServingError::invalid(
                "a partial update writes online to one feature view (write-to-online-store)",
            ));
        }
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
            let (rows, sent) = rows_for_view(
                view,
                &request.columns,
                row_count,
                RowShape {
                    exact: views.len() == 1,
                    partial: request.partial,
                },
                &self.event_time_bounds,
            )?;
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
            batches.push((rows, sent, offline_batch));
        }
        let mut pushed = Vec::with_capacity(views.len());
        for (view, (rows, sent, offline_batch)) in views.iter().zip(batches) {
            let mut outcome = PushedView {
                feature_view: view.name.clone(),
                rows: row_count as u64,
                written: 0,
                skipped_stale: 0,
                written_offline: 0,
            };
            if to_online {
                let rows = rows.into_iter().map(|row| row.feature_row).collect();
                let written = match request.partial {
                    true => {
                        self.write_path
                            .update(view, WriteLane::Direct, rows, &sent)
                            .await
                    }
                    false => self.write_path.write(view, WriteLane::Direct, rows).await,
                };
                let summary = written.map_err(|error| match error {
                    WriteError::Store(store_error) => ServingError::from(store_error),
                    WriteError::Contended { .. } => {
                        ServingError::new(ErrorKind::Unavailable, error.to_string())
                    }
                    WriteError::InvalidRow { .. } => ServingError::invalid(error.to_string()),
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
                        .map_err(|error| {
                            ServingError::internal("appending to the offline store failed", error)
                        })?
                        .map_err(|error| {
                            let online = if to_online {
                                " (the rows were written online; retrying the push is safe)"
                            } else {
                                ""
                            };
                            ServingError::internal(
                                format!("appending to the offline store failed{online}"),
                                error,
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

/// `POST /repair-future-event-times`: which entities of which view to repair.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRepairRequest {
    feature_view_name: String,
    entities: HashMap<String, Vec<serde_json::Value>>,
}

/// A repair of online rows whose event time is beyond [`EventTimeBounds`].
#[derive(Debug, Clone, PartialEq)]
pub struct RepairRequest {
    /// The view.
    pub feature_view: String,
    /// Join key columns, one value per entity.
    pub entities: HashMap<String, PushColumn>,
}

/// Parses the JSON body of `POST /repair-future-event-times`:
/// `{"feature_view_name": "relevance", "entities": {"user_id": [1, 2]}}`.
pub fn parse_repair(bytes: &[u8]) -> Result<RepairRequest, ServingError> {
    let body: JsonRepairRequest = crate::json::parse_body(bytes)?;
    Ok(RepairRequest {
        feature_view: body.feature_view_name,
        entities: json_columns(body.entities),
    })
}

/// One online row a repair deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairedRow {
    /// The entity's join key values, in the view's join key order.
    pub entity: Vec<serde_json::Value>,
    /// The event time the deleted row carried.
    pub event_timestamp: String,
}

impl PushService {
    /// Deletes the online rows of the given entities whose event time is further ahead than
    /// the bounds allow (rows written before the bounds existed, which no later write could
    /// replace, since an older event time never overwrites a newer one). Rows within the
    /// bounds are kept. Returns the deleted rows; the next write of each entity lands.
    pub async fn repair_future_event_times(
        &self,
        request: RepairRequest,
    ) -> Result<Vec<RepairedRow>, ServingError> {
        let registry = self.registry.snapshot();
        let view = registry
            .feature_views
            .get(&request.feature_view)
            .ok_or_else(|| {
                ServingError::from(larder_registry::ResolveError::UnknownFeatureView(
                    request.feature_view.clone(),
                ))
            })?;
        let row_count = column_length(&request.entities)?;
        if row_count > self.max_rows {
            return Err(ServingError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the request has {row_count} entities; the limit is {}",
                    self.max_rows
                ),
            ));
        }
        if let Some(name) = request
            .entities
            .keys()
            .find(|name| !view.join_keys.iter().any(|key| key.name == **name))
        {
            return Err(ServingError::invalid(format!(
                "'{name}' is not a join key of feature view '{}'",
                view.name
            )));
        }
        let mut keys = Vec::with_capacity(row_count);
        let mut shown = Vec::with_capacity(row_count);
        for row in 0..row_count {
            let mut values = Vec::with_capacity(view.join_keys.len());
            for key in &view.join_keys {
                let column = request.entities.get(&key.name).ok_or_else(|| {
                    ServingError::invalid(format!("missing entity column '{}'", key.name))
                })?;
                let value = column.value(row, &key.dtype).map_err(|error| {
                    ServingError::invalid(format!("entity {row}, column '{}': {error}", key.name))
                })?;
                values.push(value);
            }
            shown.push(
                values
                    .iter()
                    .map(|value| serde_json::to_value(value).unwrap_or_default())
                    .collect::<Vec<_>>(),
            );
            keys.push(
                EntityKey::from_values(&values)
                    .map_err(|error| ServingError::invalid(format!("entity {row}: {error}")))?,
            );
        }
        let store = self.write_path.store();
        let table = view.id();
        let ceiling = self.event_time_bounds.max_at(Timestamp::now());
        let rows = store.read_rows(&table, &keys).await?;
        let mut doomed = Vec::new();
        let mut repaired = Vec::new();
        for ((key, entity), row) in keys.into_iter().zip(shown).zip(rows) {
            if let Some(row) = row.filter(|row| row.event_timestamp > ceiling) {
                repaired.push(RepairedRow {
                    entity,
                    event_timestamp: describe_time(row.event_timestamp),
                });
                doomed.push(key);
            }
        }
        if !doomed.is_empty() {
            store.delete_rows(&table, &doomed).await?;
            metrics::counter!("larder_online_rows_repaired_total", "feature_view" => view.name.clone())
                .increment(doomed.len() as u64);
        }
        Ok(repaired)
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

/// Which columns a direct write must carry for one view.
#[derive(Debug, Clone, Copy)]
struct RowShape {
    /// Columns the view does not use are refused (a typo would otherwise drop a value
    /// silently); a push source feeding several views may carry columns for each of them.
    exact: bool,
    /// Feature columns may be left out (a partial update); at least one must be sent.
    partial: bool,
}

/// Builds and checks one view's rows, and says which features were sent (every one unless
/// the shape is partial); features not sent hold nulls.
fn rows_for_view(
    view: &FeatureView,
    columns: &HashMap<String, PushColumn>,
    row_count: usize,
    shape: RowShape,
    event_time_bounds: &EventTimeBounds,
) -> Result<(Vec<PushedRow>, Vec<bool>), ServingError> {
    let RowShape { exact, partial } = shape;
    let now = Timestamp::now();
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
    let feature_columns: Vec<Option<&PushColumn>> = view
        .features
        .iter()
        .map(|feature| match partial {
            true => Ok(columns.get(&feature.name)),
            false => column(&feature.name).map(Some),
        })
        .collect::<Result<_, _>>()?;
    let sent: Vec<bool> = feature_columns.iter().map(Option::is_some).collect();
    if !sent.contains(&true) {
        return Err(ServingError::invalid(format!(
            "feature view '{}': the partial update sends no feature column (the view's \
             features: {})",
            view.name,
            view.features
                .iter()
                .map(|feature| feature.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
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
        if let Some(problem) =
            event_time_bounds.problem(event_timestamp, now, timestamps.sent_as_number(row))
        {
            return Err(invalid(&view.timestamp_field, problem));
        }
        let mut values = Vec::with_capacity(view.features.len());
        for (feature, feature_values) in view.features.iter().zip(&feature_columns) {
            values.push(match feature_values {
                Some(feature_values) => feature_values
                    .value(row, &feature.dtype)
                    .map_err(|error| invalid(&feature.name, error.to_string()))?,
                None => Value::Null,
            });
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
    Ok((rows, sent))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn json_floats_are_read_to_the_exact_double_that_was_sent() {
        // Digits whose nearest double the fast (not round-trip) parse misses by one ulp.
        let sent = 0.094_194_961_664_841_19_f64;
        let body = format!(
            r#"{{"feature_view_name": "v", "df": {{"x": [{sent:?}, 2.2250738585072014e-308]}}}}"#
        );
        let request = parse_write_to_online_store(body.as_bytes()).unwrap();
        let Some(PushColumn::Json(values)) = request.columns.get("x") else {
            panic!("column x is missing")
        };
        assert_eq!(values[0].as_f64().map(f64::to_bits), Some(sent.to_bits()));
        assert_eq!(
            values[1].as_f64().map(f64::to_bits),
            Some(2.225_073_858_507_201_4e-308_f64.to_bits())
        );
    }
}
