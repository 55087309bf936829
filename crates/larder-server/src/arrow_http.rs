//! Arrow IPC over HTTP: typed bodies and answers for clients that hold data frames (the Python
//! SDK), so values keep their exact types and skip JSON.
//!
//! * `POST /get-online-features` with `Accept: application/vnd.apache.arrow.stream` answers
//!   one record batch: the entity columns, then per feature `NAME` (its declared type, null
//!   unless present), `NAME__status` and `NAME__event_timestamp`.
//! * `POST /push?push_source_name=S&to=online` and
//!   `POST /write-to-online-store?feature_view_name=V[&partial=true]` with
//!   `Content-Type: application/vnd.apache.arrow.stream` take the rows as an Arrow IPC stream.
//! * `POST /get-historical-features?features=v:f,v:g` (or repeated `features=`, or
//!   `feature_service=S`; `entity_timestamp_column=`, `full_feature_names=true`) with an
//!   Arrow IPC body takes the entity table as Arrow.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use larder_offline::{CanonicalColumn, array_of_values, arrow_type_of, value_type_of};

use crate::error::ServingError;
use crate::push::{PushColumn, PushRequest, PushTarget, PushTo};
use crate::serving::{FeatureSelection, FieldStatus, OnlineFeaturesResult};
use crate::training::{HistoricalFeaturesQuery, entities_from_arrow_ipc, read_arrow_ipc};

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Whether a header value (`Content-Type` or `Accept`) names an Arrow IPC stream.
pub fn names_arrow_stream(header: Option<&axum::http::HeaderValue>) -> bool {
    header
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().split(';').next() == Some(ARROW_STREAM))
        })
}

/// The parameters of a query string, each name with its values in order.
#[derive(Debug, Default)]
pub struct QueryParameters(HashMap<String, Vec<String>>);

impl QueryParameters {
    /// Parses `a=1&b=2&a=3` (percent-decoded; `+` is a space). Names outside `known` are
    /// refused, so a typo is an error instead of being ignored.
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, ServingError> {
        let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !known.contains(&name.as_ref()) {
                return Err(ServingError::invalid(format!(
                    "unknown query parameter '{name}' (known: {})",
                    known.join(", ")
                )));
            }
            parameters
                .entry(name.into_owned())
                .or_default()
                .push(value.into_owned());
        }
        Ok(Self(parameters))
    }

    /// The one value of `name`, if given; given twice is an error.
    pub fn single(&self, name: &str) -> Result<Option<&str>, ServingError> {
        match self.0.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([value]) => Ok(Some(value.as_str())),
            Some(_) => Err(ServingError::invalid(format!(
                "query parameter '{name}' is given more than once"
            ))),
        }
    }

    /// The one value of `name`, which must be given.
    fn required(&self, name: &str) -> Result<&str, ServingError> {
        self.single(name)?
            .ok_or_else(|| ServingError::invalid(format!("query parameter '{name}' is missing")))
    }

    /// A `true`/`false` flag (absent: `false`).
    fn flag(&self, name: &str) -> Result<bool, ServingError> {
        match self.single(name)? {
            None => Ok(false),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(ServingError::invalid(format!(
                "query parameter '{name}' must be true or false, not '{other}'"
            ))),
        }
    }

    /// Every value of `name`, each split at commas, empty parts dropped.
    fn list(&self, name: &str) -> Vec<String> {
        self.0
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The columns of an Arrow IPC body as typed push columns, by name.
fn push_columns(bytes: &[u8]) -> Result<HashMap<String, PushColumn>, ServingError> {
    let (schema, batches) = read_arrow_ipc(bytes).map_err(|error| {
        ServingError::invalid(format!(
            "the body is not a readable Arrow IPC stream: {error}"
        ))
    })?;
    let mut columns = HashMap::with_capacity(schema.fields().len());
    for (index, field) in schema.fields().iter().enumerate() {
        let name = field.name();
        let value_type = value_type_of(field.data_type()).ok_or_else(|| {
            ServingError::invalid(format!(
                "column '{name}' has Arrow type {}, which Larder cannot store",
                field.data_type()
            ))
        })?;
        let mut values = Vec::new();
        for batch in &batches {
            let column = CanonicalColumn::from_array(batch.column(index), &value_type, name)
                .map_err(|error| ServingError::invalid(error.to_string()))?;
            values.extend((0..batch.num_rows()).map(|row| column.value(row)));
        }
        if columns
            .insert(name.clone(), PushColumn::Typed(values))
            .is_some()
        {
            return Err(ServingError::invalid(format!(
                "column '{name}' appears twice"
            )));
        }
    }
    Ok(columns)
}

/// A `/push` with an Arrow IPC body and its target in the query string.
pub fn parse_arrow_push(query: Option<&str>, bytes: &[u8]) -> Result<PushRequest, ServingError> {
    let parameters = QueryParameters::parse(query, &["push_source_name", "to"])?;
    let to = match parameters.single("to")? {
        None | Some("online") => PushTo::Online,
        Some("offline") => PushTo::Offline,
        Some("online_and_offline") => PushTo::OnlineAndOffline,
        Some(other) => {
            return Err(ServingError::invalid(format!(
                "query parameter 'to' must be online, offline or online_and_offline, not '{other}'"
            )));
        }
    };
    Ok(PushRequest {
        target: PushTarget::PushSource(parameters.required("push_source_name")?.to_string()),
        columns: push_columns(bytes)?,
        to,
        partial: false,
    })
}

/// A `/write-to-online-store` with an Arrow IPC body and its target in the query string.
pub fn parse_arrow_write_to_online_store(
    query: Option<&str>,
    bytes: &[u8],
) -> Result<PushRequest, ServingError> {
    let parameters = QueryParameters::parse(query, &["feature_view_name", "partial"])?;
    Ok(PushRequest {
        target: PushTarget::FeatureView(parameters.required("feature_view_name")?.to_string()),
        columns: push_columns(bytes)?,
        to: PushTo::Online,
        partial: parameters.flag("partial")?,
    })
}

/// A `/get-historical-features` with an Arrow IPC entity table and the rest in the query
/// string.
pub fn parse_arrow_historical_features(
    query: Option<&str>,
    bytes: &[u8],
) -> Result<HistoricalFeaturesQuery, ServingError> {
    let parameters = QueryParameters::parse(
        query,
        &[
            "features",
            "feature_service",
            "entity_timestamp_column",
            "full_feature_names",
        ],
    )?;
    let features = parameters.list("features");
    let selection = match (parameters.single("feature_service")?, features.is_empty()) {
        (Some(_), false) => {
            return Err(ServingError::invalid(
                "give either 'features' or 'feature_service', not both",
            ));
        }
        (Some(service), true) => FeatureSelection::Service(service.to_string()),
        (None, false) => FeatureSelection::Features(features),
        (None, true) => {
            return Err(ServingError::invalid(
                "the request names no features: give query parameter 'features' or \
                 'feature_service'",
            ));
        }
    };
    let entity_timestamp_column = parameters
        .single("entity_timestamp_column")?
        .map(str::to_string);
    let timestamp_column = entity_timestamp_column
        .as_deref()
        .unwrap_or(larder_offline::training::DEFAULT_ENTITY_TIMESTAMP_COLUMN);
    Ok(HistoricalFeaturesQuery {
        selection,
        entities: entities_from_arrow_ipc(bytes, timestamp_column)?,
        entity_timestamp_column,
        full_feature_names: parameters.flag("full_feature_names")?,
    })
}

/// The name of a feature's status column in an Arrow answer.
pub fn status_column(feature: &str) -> String {
    format!("{feature}__status")
}

/// The name of a feature's event time column in an Arrow answer.
pub fn event_timestamp_column(feature: &str) -> String {
    format!("{feature}__event_timestamp")
}

/// An online answer as one Arrow record batch (see the module docs).
pub fn online_features_batch(result: &OnlineFeaturesResult) -> Result<RecordBatch, ServingError> {
    let failed = |error: &dyn std::fmt::Display| {
        ServingError::internal("encoding the answer as Arrow failed", error.to_string())
    };
    let utc_micros = DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")));
    let entity_count = result.entity_columns.len();
    let mut fields = Vec::with_capacity(entity_count + 3 * result.feature_column_count());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(fields.capacity());
    for ((name, values), dtype) in result
        .feature_names
        .iter()
        .zip(&result.entity_columns)
        .zip(&result.column_types)
    {
        fields.push(Field::new(name, arrow_type_of(dtype), true));
        arrays.push(array_of_values(values.iter().cloned(), dtype).map_err(|e| failed(&e))?);
    }
    let features = result.feature_names.iter().skip(entity_count);
    let types = result.column_types.iter().skip(entity_count);
    for (column, (name, dtype)) in features.zip(types).enumerate() {
        let cells: Vec<_> = (0..result.entity_count)
            .map(|row| result.cell(column, row))
            .collect();
        let values = cells.iter().map(|cell| cell.value.to_value());
        fields.push(Field::new(name, arrow_type_of(dtype), true));
        arrays.push(array_of_values(values, dtype).map_err(|e| failed(&e))?);
        fields.push(Field::new(status_column(name), DataType::Utf8, false));
        arrays.push(Arc::new(StringArray::from_iter_values(
            cells.iter().map(|cell| cell.status.as_str()),
        )));
        fields.push(Field::new(
            event_timestamp_column(name),
            utc_micros.clone(),
            true,
        ));
        arrays.push(Arc::new(
            TimestampMicrosecondArray::from_iter(cells.iter().map(|cell| {
                (cell.status != FieldStatus::NotFound).then_some(cell.event_timestamp.as_micros())
            }))
            .with_timezone("UTC"),
        ));
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, arrays).map_err(|error| failed(&error))
}

/// The bytes of one record batch as an Arrow IPC stream.
pub fn ipc_stream_bytes(batch: &RecordBatch) -> Result<Vec<u8>, ServingError> {
    let failed = |error: arrow::error::ArrowError| {
        ServingError::internal("encoding the answer as Arrow failed", error.to_string())
    };
    let mut bytes = Vec::new();
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())
            .map_err(failed)?;
        writer.write(batch).map_err(failed)?;
        writer.finish().map_err(failed)?;
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use larder_core::Value;

    #[test]
    fn query_parameters_decode_repeat_and_refuse_unknown_names() {
        let parameters = QueryParameters::parse(
            Some("features=a%3Ab,c:d&features=e:f&full_feature_names=true"),
            &["features", "full_feature_names"],
        )
        .unwrap();
        assert_eq!(parameters.list("features"), ["a:b", "c:d", "e:f"]);
        assert!(parameters.flag("full_feature_names").unwrap());
        let error = QueryParameters::parse(Some("featurs=a:b"), &["features"]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unknown query parameter 'featurs'")
        );
        let twice = QueryParameters::parse(Some("to=online&to=offline"), &["to"]).unwrap();
        assert!(twice.single("to").is_err());
    }

    #[test]
    fn accept_headers_name_arrow_among_others() {
        let header = |text: &'static str| axum::http::HeaderValue::from_static(text);
        assert!(names_arrow_stream(Some(&header(ARROW_STREAM))));
        assert!(names_arrow_stream(Some(&header(
            "application/json, application/vnd.apache.arrow.stream;q=0.9"
        ))));
        assert!(!names_arrow_stream(Some(&header("application/json"))));
        assert!(!names_arrow_stream(None));
    }

    #[test]
    fn arrow_bodies_become_typed_columns_and_garbage_is_refused() {
        let batch = RecordBatch::try_from_iter([
            (
                "user_id",
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])) as ArrayRef,
            ),
            (
                "score",
                Arc::new(arrow::array::Float32Array::from(vec![Some(0.5), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        let bytes = ipc_stream_bytes(&batch).unwrap();
        let push = parse_arrow_write_to_online_store(
            Some("feature_view_name=scores&partial=true"),
            &bytes,
        )
        .unwrap();
        assert!(push.partial);
        assert_eq!(push.target, PushTarget::FeatureView("scores".into()));
        assert_eq!(
            push.columns.get("score"),
            Some(&PushColumn::Typed(vec![Value::Float32(0.5), Value::Null]))
        );
        let error = parse_arrow_push(Some("push_source_name=s"), b"\x01\x02garbage").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not a readable Arrow IPC stream")
        );
        let error = parse_arrow_push(None, &bytes).unwrap_err();
        assert!(error.to_string().contains("'push_source_name' is missing"));
    }
}
