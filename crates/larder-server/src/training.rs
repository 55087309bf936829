//! `POST /get-historical-features`: point-in-time correct training sets over HTTP, streamed
//! back as an Arrow IPC stream (`application/vnd.apache.arrow.stream`).
//!
//! The request is JSON in Feast's spirit, the entity table given as columns (the training
//! set keeps them in the order they were sent, then the features):
//!
//! ```json
//! {"features": ["user_activity:clicks_7d"],            // or "feature_service": "ranking"
//!  "entities": {"user_id": [1, 2], "event_timestamp": ["2026-01-01T00:00:00Z", "2026-01-02"],
//!               "label": [0, 1]},
//!  "entity_timestamp_column": "event_timestamp",        // optional
//!  "full_feature_names": false}                         // optional
//! ```
//!
//! [`TrainingService`] is the transport-neutral part, shared with gRPC
//! (`GetHistoricalFeatures`, whose entity table is itself Arrow IPC).

use std::sync::Arc;

use arrow::array::Array;
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::ipc::writer::StreamWriter;
use futures::StreamExt;
use larder_offline::training::{
    DEFAULT_ENTITY_TIMESTAMP_COLUMN, MemoryRows, OfflineViewRows, SendableBatches, TieBreak,
    TrainingSetRequest, ViewRequest,
};
use larder_offline::{DataFusionEngine, OfflineStore, SharedOfflineEngine, SharedOfflineStore};
use larder_registry::{Registry, ResolvedFeature};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ErrorKind, ServingError};
use crate::registry_handle::RegistryHandle;
use crate::serving::FeatureSelection;

/// Memory for the sorts of one training set request; beyond it they spill to disk.
const REQUEST_MEMORY_BYTES: usize = 256 << 20;

/// A training set request, whatever the transport.
#[derive(Debug)]
pub struct HistoricalFeaturesQuery {
    /// The features, by list or by feature service.
    pub selection: FeatureSelection,
    /// The entity table: join keys, a timestamp column and any labels.
    pub entities: MemoryRows,
    /// The entity table's timestamp column (default `event_timestamp`).
    pub entity_timestamp_column: Option<String>,
    /// Name output features `view__feature`.
    pub full_feature_names: bool,
}

/// Point-in-time correct training sets over the offline store, against the registry snapshot.
#[derive(Debug)]
pub struct TrainingService {
    registry: Arc<RegistryHandle>,
    store: SharedOfflineStore,
    engine: SharedOfflineEngine,
    admission: Arc<Semaphore>,
}

/// A training set being built: its batches in the entity table's row order, and the
/// admission slot the request holds until the stream is dropped.
pub struct TrainingSetStream {
    /// The joined rows.
    pub batches: SendableBatches,
    slot: Option<OwnedSemaphorePermit>,
}

impl TrainingSetStream {
    /// A stream that holds no admission slot (for tests and in-process callers).
    pub fn without_slot(batches: SendableBatches) -> Self {
        Self {
            batches,
            slot: None,
        }
    }
}

impl std::fmt::Debug for TrainingSetStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TrainingSetStream")
            .field("holds_slot", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

impl TrainingService {
    /// A service reading `store`'s history for the views of `registry`, serving at most
    /// `max_concurrent` requests at once (more are refused with
    /// [`ErrorKind::Overloaded`]: each may hold 256 MiB of sort memory).
    pub fn new(
        registry: Arc<RegistryHandle>,
        store: SharedOfflineStore,
        max_concurrent: usize,
    ) -> Self {
        Self {
            registry,
            store,
            engine: Arc::new(DataFusionEngine::without_sources()),
            admission: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// Joins training sets on `engine` instead of the in-process DataFusion engine.
    pub fn with_engine(mut self, engine: SharedOfflineEngine) -> Self {
        self.engine = engine;
        self
    }

    /// Starts a training set: takes an admission slot, resolves the features, checks the
    /// entity table and returns the joined rows as a stream of batches in the entity table's
    /// row order.
    pub async fn historical_features(
        &self,
        query: HistoricalFeaturesQuery,
    ) -> Result<TrainingSetStream, ServingError> {
        let slot = Arc::clone(&self.admission).try_acquire_owned().map_err(|_| {
            metrics::counter!("larder_historical_requests_rejected_total", "reason" => "overloaded")
                .increment(1);
            ServingError::new(
                ErrorKind::Overloaded,
                "the server is building as many training sets as it may at once \
                 (serving.max_concurrent_historical_requests); retry shortly",
            )
        })?;
        let registry = self.registry.snapshot();
        let resolved = match &query.selection {
            FeatureSelection::Service(service) => registry.resolve_feature_service(service)?,
            FeatureSelection::Features(features) => registry.resolve_feature_refs(features)?,
        };
        if resolved.is_empty() {
            return Err(ServingError::invalid("no features requested"));
        }
        let request = TrainingSetRequest {
            entities: Arc::new(query.entities),
            entity_timestamp_column: query
                .entity_timestamp_column
                .unwrap_or_else(|| DEFAULT_ENTITY_TIMESTAMP_COLUMN.to_string()),
            views: view_requests(&registry, &resolved, self.store.as_ref())?,
            full_feature_names: query.full_feature_names,
        };
        let batches = self
            .engine
            .training_set(&request, REQUEST_MEMORY_BYTES)
            .await
            .map_err(|error| match error {
                larder_offline::OfflineError::InvalidRequest(message) => {
                    ServingError::invalid(message)
                }
                other => ServingError::internal("building the training set failed", other),
            })?;
        Ok(TrainingSetStream {
            batches,
            slot: Some(slot),
        })
    }
}

/// The body of `POST /get-historical-features`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoricalFeaturesRequest {
    /// Features as `view:feature`.
    #[serde(default)]
    pub features: Vec<String>,
    /// A feature service instead of `features`.
    #[serde(default)]
    pub feature_service: Option<String>,
    /// The entity table as columns of equal length: join keys, a timestamp column, labels;
    /// kept in the order they were sent, which is the training set's column order.
    pub entities: JsonEntityColumns,
    /// The entity table's timestamp column (default `event_timestamp`).
    #[serde(default)]
    pub entity_timestamp_column: Option<String>,
    /// Name output features `view__feature`.
    #[serde(default)]
    pub full_feature_names: bool,
}

/// The entity columns of a JSON request in the order the client sent them (a JSON object's
/// key order, which `serde_json::Map` would sort). A column name given twice is refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonEntityColumns(pub Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for JsonEntityColumns {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnsVisitor;
        impl<'de> serde::de::Visitor<'de> for ColumnsVisitor {
            type Value = JsonEntityColumns;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(
                    "an object of entity columns, e.g. {\"user_id\": [1, 2], \"event_timestamp\": [...]}",
                )
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut columns: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if columns.iter().any(|(known, _)| *known == name) {
                        return Err(serde::de::Error::custom(format!(
                            "entity column '{name}' is given twice"
                        )));
                    }
                    let values = map.next_value::<serde_json::Value>()?;
                    columns.push((name, values));
                }
                Ok(JsonEntityColumns(columns))
            }
        }
        deserializer.deserialize_map(ColumnsVisitor)
    }
}

/// The view requests of resolved features, one per view in order of first mention, reading
/// the views' offline rows. Views over batch sources break ties by content hash (the batch
/// lane's rule), the others (pushes) by the later write.
pub fn view_requests(
    registry: &Registry,
    resolved: &[ResolvedFeature<'_>],
    store: &dyn OfflineStore,
) -> Result<Vec<ViewRequest>, ServingError> {
    let mut requests: Vec<ViewRequest> = Vec::new();
    for feature in resolved {
        let (view, feature_name) = (feature.view, feature.feature_name());
        if let Some(existing) = requests
            .iter_mut()
            .find(|request| request.view.name == view.name)
        {
            if !existing.features.iter().any(|known| known == feature_name) {
                existing.features.push(feature_name.to_string());
            }
            continue;
        }
        let rows = OfflineViewRows::of_view(store, view)
            .map_err(|error| {
                ServingError::internal(
                    format!("reading the offline rows of feature view '{}' failed", view.name),
                    error,
                )
            })?
            .ok_or_else(|| {
                ServingError::new(
                    ErrorKind::NotFound,
                    format!(
                        "feature view '{}' (version {}) has no offline rows: run `larder materialize` first",
                        view.name, view.version
                    ),
                )
            })?;
        let batch_source = registry
            .sources
            .get(&view.source)
            .is_some_and(|source| source.kind.is_batch());
        requests.push(ViewRequest {
            view: view.clone(),
            features: vec![feature_name.to_string()],
            rows: Arc::new(rows),
            ties: if batch_source {
                TieBreak::ContentHash
            } else {
                TieBreak::LaterWrite
            },
        });
    }
    Ok(requests)
}

/// One JSON column as an Arrow array: integers, floats, booleans or strings (nulls allowed).
fn json_column(name: &str, values: &[serde_json::Value]) -> Result<ArrayRef, ServingError> {
    use serde_json::Value;
    let non_null = values.iter().find(|value| !value.is_null());
    let array: ArrayRef = match non_null {
        Some(Value::Number(_)) if values.iter().all(|v| v.is_null() || v.is_i64()) => {
            Arc::new(values.iter().map(Value::as_i64).collect::<Int64Array>())
        }
        Some(Value::Number(_)) if values.iter().all(|v| v.is_null() || v.is_number()) => {
            Arc::new(values.iter().map(Value::as_f64).collect::<Float64Array>())
        }
        Some(Value::Bool(_)) if values.iter().all(|v| v.is_null() || v.is_boolean()) => {
            Arc::new(values.iter().map(Value::as_bool).collect::<BooleanArray>())
        }
        Some(Value::String(_)) | None if values.iter().all(|v| v.is_null() || v.is_string()) => {
            Arc::new(values.iter().map(Value::as_str).collect::<StringArray>())
        }
        _ => {
            return Err(ServingError::invalid(format!(
                "entity column '{name}' must hold only numbers, only booleans or only strings"
            )));
        }
    };
    Ok(array)
}

/// The entity table of a JSON request as Arrow, its columns in request order.
fn entity_table(
    columns: &JsonEntityColumns,
    timestamp_column: &str,
) -> Result<MemoryRows, ServingError> {
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    let mut length: Option<usize> = None;
    for (name, value) in &columns.0 {
        let Some(values) = value.as_array() else {
            return Err(ServingError::invalid(format!(
                "entity column '{name}' must be an array"
            )));
        };
        if length.is_some_and(|expected| expected != values.len()) {
            return Err(ServingError::invalid(
                "entity columns must all have the same length",
            ));
        }
        length = Some(values.len());
        let array = json_column(name, values)?;
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)
        .map_err(|error| ServingError::invalid(format!("entity table: {error}")))?;
    entity_rows(schema, vec![batch], timestamp_column)
}

/// The entity table as rows, its timestamp column checked and converted first when it is
/// text: a value that is not a time is refused naming its column and row, before any
/// response starts (a training set is streamed, so a later error could only cut it short).
fn entity_rows(
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<RecordBatch>,
    timestamp_column: &str,
) -> Result<MemoryRows, ServingError> {
    let Ok(index) = schema.index_of(timestamp_column) else {
        // The training set names the missing column, before any row is read.
        return Ok(MemoryRows::new(schema, batches));
    };
    if !matches!(
        schema.field(index).data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Ok(MemoryRows::new(schema, batches));
    }
    let utc_micros = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[index] = Field::new(timestamp_column, utc_micros.clone(), true);
    let converted_schema = Arc::new(Schema::new(fields));
    let mut first_row = 0;
    let mut converted = Vec::with_capacity(batches.len());
    for batch in batches {
        let text = batch.column(index);
        // A value that does not parse becomes null; a null that was not null is the error.
        let times = arrow::compute::cast(text, &utc_micros).map_err(|error| {
            ServingError::invalid(format!("entity column '{timestamp_column}': {error}"))
        })?;
        if let Some(row) = (0..text.len()).find(|&row| text.is_valid(row) && times.is_null(row)) {
            let value = arrow::util::display::array_value_to_string(text, row).unwrap_or_default();
            return Err(ServingError::invalid(format!(
                "entity column '{timestamp_column}', row {}: '{value}' is not a time \
                 (RFC 3339, YYYY-MM-DD or YYYY-MM-DD HH:MM:SS; naive times are UTC)",
                first_row + row
            )));
        }
        first_row += batch.num_rows();
        let mut columns = batch.columns().to_vec();
        columns[index] = times;
        converted.push(
            RecordBatch::try_new(Arc::clone(&converted_schema), columns)
                .map_err(|error| ServingError::invalid(format!("entity table: {error}")))?,
        );
    }
    Ok(MemoryRows::new(converted_schema, converted))
}

/// Encodes a training set as one Arrow IPC stream, one chunk of bytes per batch; the
/// request's admission slot is released when the stream ends or is dropped.
pub fn ipc_stream(
    training_set: TrainingSetStream,
) -> Result<impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>>, ServingError> {
    let schema = training_set.batches.schema();
    let mut writer = StreamWriter::try_new(Vec::new(), &schema)
        .map_err(|error| ServingError::internal("encoding the training set failed", error))?;
    let header_bytes = std::mem::take(writer.get_mut());
    let chunks = futures::stream::unfold(Some((training_set, writer)), |state| async move {
        let (mut training_set, mut writer) = state?;
        let next = training_set.batches.next();
        let io_error = |error: String| std::io::Error::other(error);
        match next.await {
            Some(Ok(batch)) => {
                let chunk = writer
                    .write(&batch)
                    .map(|()| std::mem::take(writer.get_mut()))
                    .map_err(|error| io_error(error.to_string()));
                Some((chunk, Some((training_set, writer))))
            }
            Some(Err(error)) => Some((Err(io_error(error.to_string())), None)),
            None => {
                let chunk = writer
                    .finish()
                    .map(|()| std::mem::take(writer.get_mut()))
                    .map_err(|error| io_error(error.to_string()));
                Some((chunk, None))
            }
        }
    });
    Ok(futures::stream::once(async move { Ok(header_bytes) }).chain(chunks))
}

/// Parses the JSON body of `POST /get-historical-features`.
pub fn parse_historical_features_request(
    bytes: &[u8],
) -> Result<HistoricalFeaturesQuery, ServingError> {
    let parsed: HistoricalFeaturesRequest = serde_json::from_slice(bytes)
        .map_err(|error| ServingError::invalid(format!("invalid request: {error}")))?;
    let selection = match parsed.feature_service {
        Some(service) => FeatureSelection::Service(service),
        None => FeatureSelection::Features(parsed.features),
    };
    let timestamp_column = parsed
        .entity_timestamp_column
        .clone()
        .unwrap_or_else(|| DEFAULT_ENTITY_TIMESTAMP_COLUMN.to_string());
    Ok(HistoricalFeaturesQuery {
        selection,
        entities: entity_table(&parsed.entities, &timestamp_column)?,
        entity_timestamp_column: parsed.entity_timestamp_column,
        full_feature_names: parsed.full_feature_names,
    })
}

/// Reads an entity table sent as an Arrow IPC stream.
///
/// The stream's framing is checked before anything is decoded: every length it declares
/// (message metadata, message body, buffers, row counts) must fit in the bytes that were sent,
/// so a few garbage bytes can never make the server allocate gigabytes.
pub fn entities_from_arrow_ipc(
    bytes: &[u8],
    timestamp_column: &str,
) -> Result<MemoryRows, ServingError> {
    let invalid = |error: String| {
        ServingError::invalid(format!(
            "the entity table is not a readable Arrow IPC stream: {error}"
        ))
    };
    let (schema, batches) = read_arrow_ipc(bytes).map_err(invalid)?;
    entity_rows(schema, batches, timestamp_column)
}

/// Reads a whole Arrow IPC stream after checking its framing (see
/// [`entities_from_arrow_ipc`]); the error says what is wrong with the bytes.
pub fn read_arrow_ipc(
    bytes: &[u8],
) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), String> {
    check_ipc_framing(bytes)?;
    // arrow's IPC decoder asserts on some corrupt buffers instead of returning an error (a
    // null count with no validity buffer, found by the fuzz target `http_api`): such a panic
    // is the client's malformed body, answered 400, never a dropped connection.
    std::panic::catch_unwind(|| {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|error| error.to_string())?;
        let schema = reader.schema();
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?;
        Ok((schema, batches))
    })
    .unwrap_or_else(|_| {
        Err(
            "the Arrow IPC stream is malformed (its buffers do not match its row counts)"
                .to_string(),
        )
    })
}

/// Walks the messages of an Arrow IPC stream and checks that every declared length fits in
/// `bytes`: each message's metadata and body, each record batch's buffers, and row counts
/// (no column holds more rows than 8 per byte of its message body).
fn check_ipc_framing(bytes: &[u8]) -> Result<(), String> {
    let read_i32 = |offset: usize| -> Option<i32> {
        let word = bytes.get(offset..offset + 4)?;
        Some(i32::from_le_bytes([word[0], word[1], word[2], word[3]]))
    };
    let mut offset = 0;
    let mut messages = 0;
    while offset < bytes.len() {
        let mut length = read_i32(offset)
            .ok_or_else(|| format!("{} stray bytes at offset {offset}", bytes.len() - offset))?;
        offset += 4;
        if length == -1 {
            length = read_i32(offset)
                .ok_or_else(|| format!("the message length at offset {offset} is cut short"))?;
            offset += 4;
        }
        if length == 0 {
            return Ok(());
        }
        let remaining = bytes.len() - offset;
        let metadata_length = usize::try_from(length)
            .ok()
            .filter(|length| *length <= remaining)
            .ok_or_else(|| {
                format!("message {messages} declares {length} bytes of metadata, but {remaining} bytes follow")
            })?;
        let message = arrow::ipc::root_as_message(&bytes[offset..offset + metadata_length])
            .map_err(|error| format!("message {messages} is not an Arrow IPC message: {error}"))?;
        offset += metadata_length;
        let remaining = bytes.len() - offset;
        let body_length = usize::try_from(message.bodyLength())
            .ok()
            .filter(|length| *length <= remaining)
            .ok_or_else(|| {
                format!(
                    "message {messages} declares a body of {} bytes, but {remaining} bytes follow",
                    message.bodyLength()
                )
            })?;
        let batch = message.header_as_record_batch().or_else(|| {
            message
                .header_as_dictionary_batch()
                .and_then(|dictionary| dictionary.data())
        });
        if let Some(batch) = batch {
            let most_rows = i64::try_from(body_length.saturating_mul(8)).unwrap_or(i64::MAX);
            let node_lengths = batch
                .nodes()
                .into_iter()
                .flatten()
                .map(|node| node.length());
            if let Some(rows) = std::iter::once(batch.length())
                .chain(node_lengths)
                .find(|rows| !(0..=most_rows.max(64)).contains(rows))
            {
                return Err(format!(
                    "message {messages} declares {rows} rows in a body of {body_length} bytes"
                ));
            }
            for buffer in batch.buffers().into_iter().flatten() {
                let fits = buffer.offset() >= 0
                    && buffer.length() >= 0
                    && buffer
                        .offset()
                        .checked_add(buffer.length())
                        .is_some_and(|end| end <= body_length as i64);
                if !fits {
                    return Err(format!(
                        "message {messages} declares a buffer of {} bytes at {}, outside its {body_length}-byte body",
                        buffer.length(),
                        buffer.offset()
                    ));
                }
            }
        }
        offset += body_length;
        messages += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    #[test]
    fn json_entity_columns_keep_the_request_order() {
        let body = br#"{"features": ["scores:score"],
            "entities": {"user_id": [1, 2], "label": [1, 0],
                         "event_timestamp": ["2026-01-01T00:00:00Z", "2026-01-02"]}}"#;
        let query =
            parse_historical_features_request(body).unwrap_or_else(|error| panic!("{error}"));
        let names: Vec<String> = larder_offline::training::RowSource::schema(&query.entities)
            .fields()
            .iter()
            .map(|field| field.name().clone())
            .collect();
        assert_eq!(names, ["user_id", "label", "event_timestamp"]);

        let twice =
            br#"{"features": ["scores:score"], "entities": {"user_id": [1], "user_id": [2]}}"#;
        let error = parse_historical_features_request(twice)
            .err()
            .unwrap_or_else(|| panic!("a column given twice should be refused"));
        assert!(
            error
                .to_string()
                .contains("entity column 'user_id' is given twice"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn ipc_chunks_concatenate_into_one_readable_stream() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap_or_else(|error| panic!("{error}"));
        let rows = MemoryRows::new(Arc::clone(&schema), vec![batch.clone(), batch]);
        let batches = larder_offline::training::RowSource::open(&rows, &["x".to_string()])
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let chunks: Vec<Vec<u8>> = ipc_stream(TrainingSetStream::without_slot(batches))
            .unwrap_or_else(|error| panic!("{error}"))
            .map(|chunk| chunk.unwrap_or_default())
            .collect()
            .await;
        let bytes: Vec<u8> = chunks.concat();
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .unwrap_or_else(|error| panic!("{error}"));
        let rows: usize = reader
            .map(|batch| batch.map(|batch| batch.num_rows()).unwrap_or(0))
            .sum();
        assert_eq!(rows, 6);
    }
}
