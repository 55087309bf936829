//! Training sets: point-in-time correct historical retrieval (Feast's
//! `get_historical_features`).
//!
//! # Semantics
//!
//! For each entity row and each requested feature view, the feature values are those of the
//! view's row with the same join keys and the **latest event time `t` with
//! `t <= entity_ts` and `t > entity_ts - ttl`** (no lower bound when the view has no TTL or a
//! zero TTL). Of several rows with equal join keys and event time, the one whose encoded
//! feature values have the larger content hash wins ([`larder_core::codec::content_hash`]),
//! the rule the batch lane uses online: the choice comes from the values alone, never from
//! storage order, so two materializations of the same sources give the same training set and
//! the same online row. An entity row with a null time gets null features. When no row
//! qualifies the features are null and **the entity row is still returned**. The output has
//! exactly one row per entity row, in the entity table's order, with every entity column
//! (labels included) carried through unchanged. Entity timestamps may have any unit and time
//! zone; naive timestamps are taken as UTC.
//!
//! # Engine
//!
//! Per view: (1)–(2) the entity side (join keys, timestamp, row number) and the feature side
//! (join keys, event time, ordinal) are projected to narrow rows, and each entity row's
//! matching feature ordinal is found. When the narrow entity rows fit a quarter of the
//! session's memory pool (the budget counts about 140 bytes an entity row), they are indexed
//! by key in memory and the feature rows stream past once, unsorted (`hash_asof`). Otherwise both
//! sides are sorted by `(keys, time, id)` with DataFusion's external sort, which spills to
//! disk under the pool, and merged in one forward pass ([`asof::asof_match`]); both give the
//! same matches. If an entity row matched one of several rows of its key at one
//! event time, (1)–(2) run again with each feature row's content hash read as a tie-break
//! column, so only views whose offline rows hold such ties pay for reading all features;
//! (3) the matches are sorted by ordinal and the wide feature values
//! are fetched in a second sequential pass over the view's rows; (4) those are sorted back by
//! entity row number. Finally the entity table is read once more in order and zipped with
//! every view's columns. Memory is bounded by the pool plus a few batches per stream.

pub mod asof;
mod hash_asof;
mod sources;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{
    CastOptions, cast_with_options, concat_batches, filter_record_batch, is_not_null, take,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryLimit};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use larder_core::{FeatureView, ValueType};

pub use sources::{EntityFile, EntityFileFormat, MemoryRows, OfflineViewRows, RowSource};

use crate::OfflineError;
use crate::arrow_types::{arrow_type_of, value_type_of};
use crate::columns::ViewBatch;
use asof::{ORDINAL_COLUMN, ROW_COLUMN, TIE_COLUMN, TIMESTAMP_COLUMN};

/// A stream of record batches (DataFusion's, re-exported so callers need not name DataFusion).
pub type SendableBatches = SendableRecordBatchStream;

/// The most rows in one batch of gathered feature values.
const GATHER_BATCH_ROWS: usize = 4096;

/// The in-memory as-of join budget when the session's memory pool has no limit.
const DEFAULT_IN_MEMORY_JOIN_BYTES: usize = 256 << 20;

/// The default entity timestamp column (Feast's name).
pub const DEFAULT_ENTITY_TIMESTAMP_COLUMN: &str = "event_timestamp";

/// Which of several rows of one entity with the same event time a training set takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TieBreak {
    /// The row whose encoded feature values have the larger content hash: the batch lane's
    /// rule online, for views materialized from batch sources (one run writes all their
    /// offline rows, in whatever order its parallel scan produced them).
    #[default]
    ContentHash,
    /// The row written later (read later from the offline store): the rule of direct writes
    /// online, for views fed by pushes, where a later push at the same event time is a
    /// correction.
    LaterWrite,
}

/// The features requested from one feature view, and where its rows are.
#[derive(Debug, Clone)]
pub struct ViewRequest {
    /// The view (its join keys, timestamp field, TTL and feature types are used).
    pub view: FeatureView,
    /// The requested features, in output order.
    pub features: Vec<String>,
    /// The view's rows, in the view's canonical schema.
    pub rows: Arc<dyn RowSource>,
    /// How ties at one key and event time are broken.
    pub ties: TieBreak,
}

/// A training set request.
#[derive(Debug, Clone)]
pub struct TrainingSetRequest {
    /// The entity table: join keys, a timestamp column and any other columns.
    pub entities: Arc<dyn RowSource>,
    /// The entity table's timestamp column.
    pub entity_timestamp_column: String,
    /// The views and features to join.
    pub views: Vec<ViewRequest>,
    /// Name output features `view__feature` instead of `feature`.
    pub full_feature_names: bool,
}

/// The least sort memory a training set runs with: below it, the sorts that run side by side
/// cannot each keep back the memory they need to merge their spills.
pub const MIN_TRAINING_MEMORY_BYTES: usize = 16 << 20;

/// A DataFusion session for training sets: sorts spill to the OS temporary folder once
/// `memory_limit_bytes` are in use. Less than [`MIN_TRAINING_MEMORY_BYTES`] is refused.
pub fn training_session(memory_limit_bytes: usize) -> Result<SessionContext, OfflineError> {
    if memory_limit_bytes < MIN_TRAINING_MEMORY_BYTES {
        return Err(OfflineError::InvalidRequest(format!(
            "a training set needs at least {} MiB of sort memory (it spills to disk beyond it), not {} MiB",
            MIN_TRAINING_MEMORY_BYTES >> 20,
            memory_limit_bytes >> 20
        )));
    }
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit_bytes)))
        .build_arc()
        .map_err(|source| OfflineError::Query {
            context: "creating the training session".to_string(),
            source,
        })?;
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_batch_size(8192);
    // The memory each sort keeps back for merging its spills: a slice of the pool, so that
    // several sorts fit side by side even in a small pool.
    config.options_mut().execution.sort_spill_reservation_bytes =
        (memory_limit_bytes / 32).clamp(64 << 10, 10 << 20);
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

fn external(error: OfflineError) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

fn arrow_error(context: &str) -> impl FnOnce(arrow::error::ArrowError) -> OfflineError {
    let context = context.to_string();
    move |source| OfflineError::Arrow { context, source }
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
}

fn strict_cast(
    array: &ArrayRef,
    target: &DataType,
    context: &str,
) -> Result<ArrayRef, OfflineError> {
    if array.data_type() == target {
        return Ok(Arc::clone(array));
    }
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    cast_with_options(array, target, &options).map_err(arrow_error(context))
}

/// Timestamps of any unit and zone (naive = UTC), dates or RFC 3339 text, as UTC microseconds
/// (sub-microsecond parts rounded toward the past).
fn timestamps_as_micros(array: &ArrayRef, column: &str) -> Result<ArrayRef, OfflineError> {
    let context = format!("timestamp column '{column}'");
    let floored =
        crate::arrow_types::floor_nanos_to_micros(array).map_err(arrow_error(&context))?;
    let as_timestamp = strict_cast(&floored, &utc_micros(), &context)?;
    strict_cast(&as_timestamp, &DataType::Int64, &context)
}

/// The output name of a feature.
fn output_name(view: &FeatureView, feature: &str, full_feature_names: bool) -> String {
    if full_feature_names {
        format!("{}__{feature}", view.name)
    } else {
        feature.to_string()
    }
}

/// Checks a request before any row is read: columns, types, features and output names.
fn validate(request: &TrainingSetRequest) -> Result<SchemaRef, OfflineError> {
    let entity_schema = request.entities.schema();
    let timestamp_field = entity_schema
        .field_with_name(&request.entity_timestamp_column)
        .map_err(|_| {
            OfflineError::InvalidRequest(format!(
                "the entity table has no timestamp column '{}' (columns: {})",
                request.entity_timestamp_column,
                column_list(&entity_schema)
            ))
        })?;
    let timestamp_ok = matches!(
        timestamp_field.data_type(),
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    );
    if !timestamp_ok {
        return Err(OfflineError::InvalidRequest(format!(
            "entity timestamp column '{}' has type {}, expected a timestamp",
            request.entity_timestamp_column,
            timestamp_field.data_type()
        )));
    }
    let mut fields: Vec<Field> = entity_schema
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    for view_request in &request.views {
        let view = &view_request.view;
        for join_key in &view.join_keys {
            let field = entity_schema.field_with_name(&join_key.name).map_err(|_| {
                OfflineError::InvalidRequest(format!(
                    "the entity table has no column '{}', a join key of feature view '{}' (columns: {})",
                    join_key.name,
                    view.name,
                    column_list(&entity_schema)
                ))
            })?;
            let entity_type = value_type_of(field.data_type());
            let compatible = match (&join_key.dtype, &entity_type) {
                (
                    ValueType::Int32 | ValueType::Int64,
                    Some(ValueType::Int32 | ValueType::Int64),
                ) => true,
                (ValueType::String, Some(ValueType::String)) => true,
                (expected, Some(actual)) => expected == actual,
                (_, None) => false,
            };
            if !compatible {
                return Err(OfflineError::InvalidRequest(format!(
                    "entity column '{}' has type {}, but feature view '{}' joins on it as {}",
                    join_key.name,
                    field.data_type(),
                    view.name,
                    join_key.dtype
                )));
            }
        }
        for feature_name in &view_request.features {
            let Some(index) = view.feature_index(feature_name) else {
                return Err(OfflineError::InvalidRequest(format!(
                    "feature view '{}' has no feature '{feature_name}'",
                    view.name
                )));
            };
            let name = output_name(view, feature_name, request.full_feature_names);
            if fields.iter().any(|field| field.name() == &name) {
                let hint = if request.full_feature_names {
                    String::new()
                } else {
                    " (use full feature names: view__feature)".to_string()
                };
                return Err(OfflineError::InvalidRequest(format!(
                    "output column '{name}' would appear twice{hint}"
                )));
            }
            fields.push(Field::new(
                name,
                arrow_type_of(&view.features[index].dtype),
                true,
            ));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|field| field.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn narrow_schema(view: &FeatureView, id_column: &str, with_ties: bool) -> SchemaRef {
    let mut fields: Vec<Field> = view
        .join_keys
        .iter()
        .map(|join_key| Field::new(&join_key.name, arrow_type_of(&join_key.dtype), true))
        .collect();
    fields.push(Field::new(TIMESTAMP_COLUMN, DataType::Int64, true));
    if with_ties {
        fields.push(Field::new(TIE_COLUMN, DataType::UInt64, false));
    }
    fields.push(Field::new(id_column, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// Maps a view's feature rows in the canonical schema (`[keys..., timestamp, features...]`) to
/// the narrow `[keys..., _larder_ts, _larder_tie, _larder_ordinal]` shape: the tie column is
/// the content hash of each row's encoded feature values, the batch lane's tie-break. Ordinals
/// count rows from 0 in stream order; rows with a null key or time are dropped after
/// numbering.
fn narrow_features_with_ties(
    input: SendableRecordBatchStream,
    view: &FeatureView,
) -> SendableRecordBatchStream {
    let schema = narrow_schema(view, ORDINAL_COLUMN, true);
    let output_schema = Arc::clone(&schema);
    let view = view.clone();
    let key_count = view.join_keys.len();
    let mut next_ordinal: u64 = 0;
    let mapped = input.map(move |batch| {
        let batch = batch?;
        let rows = batch.num_rows();
        let ordinals = UInt64Array::from_iter_values(next_ordinal..next_ordinal + rows as u64);
        next_ordinal += rows as u64;
        let mut keep = arrow::array::BooleanArray::from(vec![true; rows]);
        for column in &batch.columns()[..key_count + 1] {
            keep = arrow::compute::and(&keep, &is_not_null(column)?)?;
        }
        let batch = filter_record_batch(&batch, &keep)?;
        let ordinals = arrow::compute::filter(&ordinals, &keep)?;
        let view_batch = ViewBatch::from_batch(&view, &batch).map_err(external)?;
        let mut encoded = Vec::new();
        let ties = UInt64Array::from_iter_values((0..view_batch.num_rows()).map(|row| {
            encoded.clear();
            view_batch.write_encoded_feature_values(row, &mut encoded);
            larder_core::codec::content_hash(&encoded)
        }));
        let canonical = view_batch.record_batch();
        let mut columns: Vec<ArrayRef> = canonical.columns()[..key_count].to_vec();
        columns.push(
            timestamps_as_micros(canonical.column(key_count), &view.timestamp_field)
                .map_err(external)?,
        );
        columns.push(Arc::new(ties));
        columns.push(ordinals);
        Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
    });
    Box::pin(RecordBatchStreamAdapter::new(output_schema, mapped))
}

/// Maps a `[keys..., timestamp]` stream to the narrow `[keys..., _larder_ts, id]` shape; ids
/// count rows from 0 in stream order. With `drop_null_keys`, rows with a null key or a null
/// timestamp are dropped (after numbering).
fn narrow_stream(
    input: SendableRecordBatchStream,
    view: &FeatureView,
    timestamp_column: String,
    id_column: &str,
    drop_null_rows: bool,
) -> SendableRecordBatchStream {
    let schema = narrow_schema(view, id_column, false);
    let output_schema = Arc::clone(&schema);
    let key_types: Vec<DataType> = view
        .join_keys
        .iter()
        .map(|join_key| arrow_type_of(&join_key.dtype))
        .collect();
    let key_names: Vec<String> = view.join_keys.iter().map(|key| key.name.clone()).collect();
    let mut next_id: u64 = 0;
    let mapped = input.map(move |batch| {
        let batch = batch?;
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(key_types.len() + 2);
        for (index, key_type) in key_types.iter().enumerate() {
            let context = format!("join key column '{}'", key_names[index]);
            columns.push(strict_cast(batch.column(index), key_type, &context).map_err(external)?);
        }
        columns.push(
            timestamps_as_micros(batch.column(key_types.len()), &timestamp_column)
                .map_err(external)?,
        );
        columns.push(Arc::new(UInt64Array::from_iter_values(
            next_id..next_id + rows as u64,
        )));
        next_id += rows as u64;
        let narrow = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        if !drop_null_rows
            || narrow.columns()[..key_types.len() + 1]
                .iter()
                .all(|column| column.null_count() == 0)
        {
            return Ok(narrow);
        }
        let mut keep = is_not_null(narrow.column(0))?;
        for column in &narrow.columns()[1..key_types.len() + 1] {
            keep = arrow::compute::and(&keep, &is_not_null(column)?)?;
        }
        Ok(filter_record_batch(&narrow, &keep)?)
    });
    Box::pin(RecordBatchStreamAdapter::new(output_schema, mapped))
}

/// The entity rows that matched a feature row, sorted by that row's ordinal. The first batch
/// is already read (`None`: no match at all), which runs the as-of merge to its end: the
/// sort takes in every match before it returns one.
async fn sorted_matches(
    session: &SessionContext,
    matches: SendableRecordBatchStream,
) -> Result<(Option<RecordBatch>, SendableRecordBatchStream), OfflineError> {
    let matched = matches.map(|batch| {
        let batch = batch?;
        let keep = is_not_null(batch.column(1))?;
        Ok(filter_record_batch(&batch, &keep)?)
    });
    let matched: SendableRecordBatchStream =
        Box::pin(RecordBatchStreamAdapter::new(asof::match_schema(), matched));
    let sorted = asof::sort_stream(session, matched, &[ORDINAL_COLUMN, ROW_COLUMN]).await?;
    first_and_rest(sorted).await
}

/// Runs the as-of join of one view: each entity row's matching feature ordinal, sorted by
/// ordinal (see [`sorted_matches`]).
///
/// The join first runs on keys and times alone. If an entity row matched one of several
/// rows of its key with the same event time, it runs again with each feature row's content
/// hash as a tie-break, so that the winner is the row the batch lane put online (the larger
/// hash), whatever order the offline store holds them in. Views without such ties pay nothing,
/// and [`TieBreak::LaterWrite`] views keep the later stored row.
async fn join_view(
    session: &SessionContext,
    request: &TrainingSetRequest,
    view_request: &ViewRequest,
    remote_join: Option<&dyn RemoteAsOfJoin>,
    in_memory_budget: usize,
) -> Result<(Option<RecordBatch>, SendableRecordBatchStream), OfflineError> {
    let view = &view_request.view;
    let key_names: Vec<String> = view.join_keys.iter().map(|key| key.name.clone()).collect();
    let mut entity_columns = key_names.clone();
    entity_columns.push(request.entity_timestamp_column.clone());
    let ttl_micros = view
        .ttl
        .filter(|ttl| ttl.as_seconds() > 0)
        .map(|ttl| ttl.as_micros());
    // A remote join cannot ask for the tie column after the fact: it gets it from the start
    // whenever ties are broken by content.
    let mut with_ties = remote_join.is_some() && view_request.ties == TieBreak::ContentHash;
    loop {
        let entities = narrow_stream(
            request.entities.open(&entity_columns).await?,
            view,
            request.entity_timestamp_column.clone(),
            ROW_COLUMN,
            false,
        );
        let features = if with_ties {
            let schema = ViewBatch::schema_of(view);
            let all_columns: Vec<String> = schema
                .fields()
                .iter()
                .map(|field| field.name().clone())
                .collect();
            narrow_features_with_ties(view_request.rows.open(&all_columns).await?, view)
        } else {
            let mut feature_columns = key_names.clone();
            feature_columns.push(view.timestamp_field.clone());
            narrow_stream(
                view_request.rows.open(&feature_columns).await?,
                view,
                view.timestamp_field.clone(),
                ORDINAL_COLUMN,
                true,
            )
        };
        if let Some(remote_join) = remote_join {
            let matched = remote_join
                .join(entities, features, view.join_keys.len(), ttl_micros)
                .await?;
            return first_and_rest(matched).await;
        }
        let key_count = view.join_keys.len();
        let (sorted, ties_matched) = match hash_asof::join_in_memory(
            entities,
            features,
            key_count,
            ttl_micros,
            in_memory_budget,
        )
        .await?
        {
            hash_asof::InMemoryJoin::Joined {
                matches,
                ties_matched,
            } => (first_and_rest(matches).await?, ties_matched),
            hash_asof::InMemoryJoin::TooLarge { entities, features } => {
                let matches =
                    asof::asof_match(session, entities, features, key_count, ttl_micros).await?;
                let sorted = sorted_matches(session, matches.stream).await?;
                let ties_matched = matches
                    .ties_matched
                    .load(std::sync::atomic::Ordering::Relaxed);
                (sorted, ties_matched)
            }
        };
        if with_ties || view_request.ties == TieBreak::LaterWrite || !ties_matched {
            return Ok(sorted);
        }
        with_ties = true;
    }
}

/// An as-of join that runs outside this process (on Spark): the rest of a training set (the
/// reads of entity and feature rows, the gather of feature values and the final zip) stays
/// shared with the in-process join, so both give the same rows.
#[async_trait::async_trait]
pub trait RemoteAsOfJoin: Send + Sync {
    /// Joins narrow entity rows (`[keys..., _larder_ts, _larder_row]`; keys or time may be
    /// null) with narrow feature rows (`[keys..., _larder_ts, _larder_tie?, _larder_ordinal]`,
    /// no nulls; the tie column is present when ties are broken by content hash, the larger
    /// hash winning, otherwise the larger ordinal wins). For each entity row it finds the
    /// feature row with equal keys and the greatest `(_larder_ts, _larder_tie, _larder_ordinal)`
    /// with `_larder_ts <= entity time` and, with a TTL, `_larder_ts > entity time - ttl`.
    /// Streams `[_larder_row, _larder_ordinal]` (both `UInt64`) of the matched entity rows,
    /// sorted by ordinal, then row.
    async fn join(
        &self,
        entities: SendableRecordBatchStream,
        features: SendableRecordBatchStream,
        key_count: usize,
        ttl_micros: Option<i64>,
    ) -> Result<SendableRecordBatchStream, OfflineError>;
}

/// A sorted match stream as the gather takes it: its first batch read (`None`: no match).
async fn first_and_rest(
    mut matched: SendableRecordBatchStream,
) -> Result<(Option<RecordBatch>, SendableRecordBatchStream), OfflineError> {
    let first = matched
        .next()
        .await
        .transpose()
        .map_err(|source| OfflineError::Query {
            context: "joining feature rows".to_string(),
            source,
        })?;
    Ok((first, matched))
}

/// Fetches the matched feature rows by ordinal in one sequential pass over the view's rows;
/// streams `[_larder_row, features...]` in ordinal order.
async fn gather_features(
    session: &SessionContext,
    (first, rest): (Option<RecordBatch>, SendableRecordBatchStream),
    view_request: &ViewRequest,
) -> Result<SendableRecordBatchStream, OfflineError> {
    let matched: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        asof::match_schema(),
        futures::stream::iter(first.map(Ok)).chain(rest),
    ));
    let feature_rows = view_request.rows.open(&view_request.features).await?;
    let mut fields = vec![Field::new(ROW_COLUMN, DataType::UInt64, false)];
    for feature_name in &view_request.features {
        let dtype = view_request
            .view
            .feature_index(feature_name)
            .map(|index| arrow_type_of(&view_request.view.features[index].dtype))
            .unwrap_or(DataType::Null);
        fields.push(Field::new(feature_name, dtype, true));
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let output_schema = Arc::clone(&schema);
    let feature_types: Vec<DataType> = schema.fields()[1..]
        .iter()
        .map(|field| field.data_type().clone())
        .collect();
    struct GatherState {
        matched: SendableRecordBatchStream,
        pending: Option<RecordBatch>,
        matches_done: bool,
        feature_rows: SendableRecordBatchStream,
        next_ordinal: u64,
        /// Gathered batches not yet handed on.
        ready: std::collections::VecDeque<RecordBatch>,
    }
    let state = GatherState {
        matched,
        pending: None,
        matches_done: false,
        feature_rows,
        next_ordinal: 0,
        ready: std::collections::VecDeque::new(),
    };
    let output = futures::stream::try_unfold(state, move |mut state| {
        let schema = Arc::clone(&schema);
        let feature_types = feature_types.clone();
        async move {
            loop {
                if let Some(batch) = state.ready.pop_front() {
                    return Ok(Some((batch, state)));
                }
                if state.matches_done && state.pending.is_none() {
                    return Ok(None);
                }
                let Some(feature_batch) = state.feature_rows.next().await else {
                    return Ok(None);
                };
                let feature_batch = feature_batch?;
                let base = state.next_ordinal;
                let end = base + feature_batch.num_rows() as u64;
                state.next_ordinal = end;
                let mut rows: Vec<u64> = Vec::new();
                let mut indices: Vec<u32> = Vec::new();
                loop {
                    let batch = match state.pending.take() {
                        Some(batch) => batch,
                        None if state.matches_done => break,
                        None => match state.matched.next().await {
                            Some(batch) => batch?,
                            None => {
                                state.matches_done = true;
                                break;
                            }
                        },
                    };
                    let row_ids = downcast_u64(batch.column(0))?;
                    let ordinals = downcast_u64(batch.column(1))?;
                    let split = ordinals.values().partition_point(|ordinal| *ordinal < end);
                    for position in 0..split {
                        rows.push(row_ids.value(position));
                        indices.push((ordinals.value(position) - base) as u32);
                    }
                    if split < batch.num_rows() {
                        state.pending = Some(batch.slice(split, batch.num_rows() - split));
                        break;
                    }
                }
                if rows.is_empty() {
                    continue;
                }
                // Many entity rows may match one feature batch: hand them on in batches of
                // at most GATHER_BATCH_ROWS fresh rows, so that the sort that follows can
                // take each one within a small memory pool (it cannot spill half a batch).
                for (row_chunk, index_chunk) in rows
                    .chunks(GATHER_BATCH_ROWS)
                    .zip(indices.chunks(GATHER_BATCH_ROWS))
                {
                    let take_indices = UInt32Array::from(index_chunk.to_vec());
                    let mut columns: Vec<ArrayRef> =
                        vec![Arc::new(UInt64Array::from(row_chunk.to_vec()))];
                    for (index, feature_type) in feature_types.iter().enumerate() {
                        let taken = take(feature_batch.column(index), &take_indices, None)?;
                        columns.push(
                            strict_cast(&taken, feature_type, "feature column")
                                .map_err(external)?,
                        );
                    }
                    state
                        .ready
                        .push_back(RecordBatch::try_new(Arc::clone(&schema), columns)?);
                }
            }
        }
    });
    let gathered: SendableRecordBatchStream =
        Box::pin(RecordBatchStreamAdapter::new(output_schema, output));
    asof::sort_stream(session, gathered, &[ROW_COLUMN]).await
}

fn downcast_u64(array: &ArrayRef) -> Result<UInt64Array, DataFusionError> {
    array
        .as_any()
        .downcast_ref::<UInt64Array>()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("expected a uint64 column".to_string()))
}

/// One view's joined features, sorted by entity row, consumed in entity row ranges.
struct JoinedView {
    stream: SendableRecordBatchStream,
    pending: Option<RecordBatch>,
    feature_count: usize,
}

impl JoinedView {
    /// The view's feature columns for entity rows `[base, base + length)`, null where no
    /// feature row matched.
    async fn columns_for(
        &mut self,
        base: u64,
        length: usize,
    ) -> Result<Vec<ArrayRef>, DataFusionError> {
        let end = base + length as u64;
        let schema = self.stream.schema();
        let mut parts: Vec<RecordBatch> = Vec::new();
        loop {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.stream.next().await {
                    Some(batch) => batch?,
                    None => break,
                },
            };
            let row_ids = downcast_u64(batch.column(0))?;
            let split = row_ids.values().partition_point(|row| *row < end);
            if split < batch.num_rows() {
                self.pending = Some(batch.slice(split, batch.num_rows() - split));
                parts.push(batch.slice(0, split));
                break;
            }
            parts.push(batch);
        }
        let combined = concat_batches(&schema, &parts)?;
        let row_ids = downcast_u64(combined.column(0))?;
        let mut indices: Vec<Option<u32>> = vec![None; length];
        for (position, row) in row_ids.values().iter().enumerate() {
            let Some(offset) = row.checked_sub(base) else {
                return Err(DataFusionError::Internal(
                    "joined rows out of order".to_string(),
                ));
            };
            indices[offset as usize] = Some(position as u32);
        }
        let take_indices = UInt32Array::from(indices);
        (1..=self.feature_count)
            .map(|index| Ok(take(combined.column(index), &take_indices, None)?))
            .collect()
    }
}

/// Builds a training set: streams the entity rows in their order, each with its point-in-time
/// correct features appended (see the module documentation for the exact semantics).
pub async fn build_training_set(
    session: &SessionContext,
    request: &TrainingSetRequest,
) -> Result<SendableRecordBatchStream, OfflineError> {
    build_training_set_joined_by(session, request, None).await
}

/// Builds a training set as [`build_training_set`] does, with each view's as-of join run by
/// `remote_join` when one is given (the gather and zip still run in `session`).
pub async fn build_training_set_joined_by(
    session: &SessionContext,
    request: &TrainingSetRequest,
    remote_join: Option<&dyn RemoteAsOfJoin>,
) -> Result<SendableRecordBatchStream, OfflineError> {
    build_training_set_with(
        session,
        request,
        remote_join,
        in_memory_join_budget(session),
    )
    .await
}

/// The most memory an in-process as-of join spends holding its entity side in memory (see
/// `hash_asof`): a quarter of the session's memory pool. Larger entity sides are sorted and
/// merged, spilling to disk.
fn in_memory_join_budget(session: &SessionContext) -> usize {
    match session.runtime_env().memory_pool.memory_limit() {
        MemoryLimit::Finite(bytes) => bytes / 4,
        MemoryLimit::Infinite | MemoryLimit::Unknown => DEFAULT_IN_MEMORY_JOIN_BYTES,
    }
}

/// [`build_training_set_joined_by`] with an explicit budget for in-memory as-of joins (`0`:
/// always sort and merge).
async fn build_training_set_with(
    session: &SessionContext,
    request: &TrainingSetRequest,
    remote_join: Option<&dyn RemoteAsOfJoin>,
    in_memory_budget: usize,
) -> Result<SendableRecordBatchStream, OfflineError> {
    let output_schema = validate(request)?;
    let mut joined_views = Vec::with_capacity(request.views.len());
    for view_request in &request.views {
        let matches = join_view(
            session,
            request,
            view_request,
            remote_join,
            in_memory_budget,
        )
        .await?;
        let gathered = gather_features(session, matches, view_request).await?;
        joined_views.push(JoinedView {
            stream: gathered,
            pending: None,
            feature_count: view_request.features.len(),
        });
    }
    let entity_schema = request.entities.schema();
    let all_columns: Vec<String> = entity_schema
        .fields()
        .iter()
        .map(|field| field.name().clone())
        .collect();
    let entities = request.entities.open(&all_columns).await?;
    let schema = Arc::clone(&output_schema);
    let state = (entities, joined_views, 0u64);
    let output =
        futures::stream::try_unfold(state, move |(mut entities, mut joined_views, base)| {
            let schema = Arc::clone(&schema);
            async move {
                loop {
                    let Some(batch) = entities.next().await else {
                        return Ok(None);
                    };
                    let batch = batch?;
                    let length = batch.num_rows();
                    if length == 0 {
                        continue;
                    }
                    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
                    for joined_view in &mut joined_views {
                        columns.extend(joined_view.columns_for(base, length).await?);
                    }
                    let output = RecordBatch::try_new(schema, columns)?;
                    return Ok(Some((
                        output,
                        (entities, joined_views, base + length as u64),
                    )));
                }
            }
        });
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        output_schema,
        output,
    )))
}
