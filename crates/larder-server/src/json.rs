//! The JSON encoding of the HTTP API: request parsing without a generic JSON tree, and a
//! response writer that encodes values straight from the stored row bytes.

use std::fmt;

use larder_core::codec::{ValueRef, base64_encode, vector_components};
use larder_core::{Timestamp, Value};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::ser::{CompactFormatter, Formatter};

use crate::error::ServingError;
use crate::serving::{FeatureSelection, OnlineFeaturesRequest, OnlineFeaturesResult};

/// The JSON request body of `/get-online-features` (Feast's shape).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    feature_service: Option<String>,
    entities: EntityColumns,
    #[serde(default)]
    full_feature_names: bool,
    /// Sent by Feast's client on every read (0.67); honoured.
    #[serde(default)]
    include_feature_view_version_metadata: bool,
}

/// Entity columns in request order.
#[derive(Debug)]
struct EntityColumns(Vec<(String, Vec<Value>)>);

impl<'de> Deserialize<'de> for EntityColumns {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnsVisitor;
        impl<'de> Visitor<'de> for ColumnsVisitor {
            type Value = EntityColumns;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object of entity columns, e.g. {\"user_id\": [1, 2]}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut columns = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let EntityValues(values) = map.next_value()?;
                    columns.push((name, values));
                }
                Ok(EntityColumns(columns))
            }
        }
        deserializer.deserialize_map(ColumnsVisitor)
    }
}

struct EntityValues(Vec<Value>);

impl<'de> Deserialize<'de> for EntityValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;
        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = EntityValues;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an array of entity key values")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut sequence: A,
            ) -> Result<Self::Value, A::Error> {
                let mut values = Vec::with_capacity(sequence.size_hint().unwrap_or(16).min(65_536));
                while let Some(EntityValue(value)) = sequence.next_element()? {
                    values.push(value);
                }
                Ok(EntityValues(values))
            }
        }
        deserializer.deserialize_seq(ValuesVisitor)
    }
}

struct EntityValue(Value);

impl<'de> Deserialize<'de> for EntityValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = EntityValue;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an entity key value (an integer or a string)")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(EntityValue(Value::Int64(value)))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                i64::try_from(value)
                    .map(|number| EntityValue(Value::Int64(number)))
                    .map_err(|_| E::custom(format!("entity key {value} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                Ok(EntityValue(Value::Float64(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(EntityValue(Value::String(value.to_string())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(EntityValue(Value::String(value)))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(EntityValue(Value::Bool(value)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(EntityValue(Value::Null))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// A JSON request body of type `T`; a body that does not parse, or does not fit `T`, is an
/// invalid argument saying which.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ServingError> {
    serde_json::from_slice(bytes).map_err(|error| {
        let what = if error.is_data() {
            "invalid request"
        } else {
            "malformed JSON"
        };
        ServingError::invalid(format!("{what}: {error}"))
    })
}

/// Parses a `/get-online-features` body.
pub fn parse_online_features_request(bytes: &[u8]) -> Result<OnlineFeaturesRequest, ServingError> {
    let request: JsonRequest = parse_body(bytes)?;
    let selection = match (request.features, request.feature_service) {
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
        (Some(features), None) => FeatureSelection::Features(features),
        (None, Some(service)) => FeatureSelection::Service(service),
    };
    Ok(OnlineFeaturesRequest {
        selection,
        entities: request.entities.0,
        full_feature_names: request.full_feature_names,
        include_feature_view_version_metadata: request.include_feature_view_version_metadata,
    })
}

/// The JSON request body of `/forget`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonForgetRequest {
    entities: EntityColumns,
    #[serde(default)]
    verify: bool,
}

/// A parsed `/forget` body: the entities' join key columns, and whether to only verify.
#[derive(Debug)]
pub struct ForgetRequest {
    /// Join key columns, one entity per position.
    pub entities: Vec<(String, Vec<Value>)>,
    /// Count what is left instead of erasing.
    pub verify: bool,
}

/// Parses a `/forget` body: `{"entities": {"user_id": [1, 2]}, "verify": false}`.
pub fn parse_forget_request(bytes: &[u8]) -> Result<ForgetRequest, ServingError> {
    let request: JsonForgetRequest = parse_body(bytes)?;
    Ok(ForgetRequest {
        entities: request.entities.0,
        verify: request.verify,
    })
}

/// Appends a JSON string.
fn write_str(out: &mut Vec<u8>, text: &str) {
    // serde_json's string escaping; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn write_f64(out: &mut Vec<u8>, number: f64) {
    if number.is_finite() {
        let _ = CompactFormatter.write_f64(out, number);
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_f32(out: &mut Vec<u8>, number: f32) {
    if number.is_finite() {
        let _ = CompactFormatter.write_f32(out, number);
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_i64(out: &mut Vec<u8>, number: i64) {
    let _ = CompactFormatter.write_i64(out, number);
}

/// Appends a borrowed value as JSON (Feast's conventions: bytes as base64, timestamps as
/// RFC 3339 strings, non-finite floats as null).
pub fn write_value_ref(out: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.extend_from_slice(b"null"),
        ValueRef::Bool(true) => out.extend_from_slice(b"true"),
        ValueRef::Bool(false) => out.extend_from_slice(b"false"),
        ValueRef::Int32(number) => write_i64(out, i64::from(number)),
        ValueRef::Int64(number) => write_i64(out, number),
        ValueRef::Float32(number) => write_f32(out, number),
        ValueRef::Float64(number) => write_f64(out, number),
        ValueRef::String(text) => write_str(out, text),
        ValueRef::Bytes(bytes) => write_str(out, &base64_encode(bytes)),
        ValueRef::Timestamp(timestamp) => write_timestamp(out, timestamp),
        ValueRef::List { .. } => {
            out.push(b'[');
            for (index, element) in value.list_elements().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_value_ref(out, element);
            }
            out.push(b']');
        }
        ValueRef::Vector { bytes, .. } => {
            out.push(b'[');
            for (index, component) in vector_components(bytes).enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_f32(out, component);
            }
            out.push(b']');
        }
    }
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Int64(number) => write_i64(out, *number),
        Value::Int32(number) => write_i64(out, i64::from(*number)),
        Value::String(text) => write_str(out, text),
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// Appends a timestamp as a quoted RFC 3339 UTC string, formatted without allocating
/// (`2025-01-31T12:00:00Z`, `…00.250Z`, `…00.000001Z`: the same text as
/// [`Timestamp::to_rfc3339`]).
pub fn write_timestamp(out: &mut Vec<u8>, timestamp: Timestamp) {
    let micros = timestamp.as_micros();
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        write_str(out, &timestamp.to_rfc3339());
        return;
    }
    let mut buffer = [0u8; 32];
    let mut length = 0;
    buffer[0] = b'"';
    length += 1;
    put_digits(&mut buffer, &mut length, year, 4);
    let parts: [(u8, i64); 5] = [
        (b'-', month),
        (b'-', day),
        (b'T', second_of_day / 3_600),
        (b':', second_of_day / 60 % 60),
        (b':', second_of_day % 60),
    ];
    for (separator, value) in parts {
        buffer[length] = separator;
        length += 1;
        put_digits(&mut buffer, &mut length, value, 2);
    }
    if fraction != 0 {
        buffer[length] = b'.';
        length += 1;
        if fraction % 1_000 == 0 {
            put_digits(&mut buffer, &mut length, fraction / 1_000, 3);
        } else {
            put_digits(&mut buffer, &mut length, fraction, 6);
        }
    }
    buffer[length] = b'Z';
    buffer[length + 1] = b'"';
    out.extend_from_slice(&buffer[..length + 2]);
}

/// Writes `value` as exactly `width` decimal digits at `buffer[*length..]`.
fn put_digits(buffer: &mut [u8; 32], length: &mut usize, mut value: i64, width: usize) {
    for position in (0..width).rev() {
        buffer[*length + position] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    *length += width;
}

/// Encodes a result as Feast's response JSON.
pub fn write_online_features_response(result: &OnlineFeaturesResult, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"metadata\":{\"feature_names\":[");
    for (index, name) in result.feature_names.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, name);
    }
    out.push(b']');
    if let Some(views) = &result.feature_view_metadata {
        out.extend_from_slice(b",\"feature_view_metadata\":[");
        for (index, (name, version)) in views.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            write_str(out, name);
            out.extend_from_slice(b",\"version\":");
            write_i64(out, i64::from(*version));
            out.push(b'}');
        }
        out.push(b']');
    }
    out.extend_from_slice(b"},\"results\":[");
    let count = result.entity_count;
    let mut first_column = true;
    let mut begin_column = |out: &mut Vec<u8>| {
        if !first_column {
            out.push(b',');
        }
        first_column = false;
        out.extend_from_slice(b"{\"values\":[");
    };
    for values in &result.entity_columns {
        begin_column(out);
        for (row, value) in values.iter().enumerate() {
            if row > 0 {
                out.push(b',');
            }
            write_value(out, value);
        }
        out.extend_from_slice(b"],\"statuses\":[");
        for row in 0..count {
            out.extend_from_slice(if row > 0 {
                b",\"PRESENT\""
            } else {
                b"\"PRESENT\""
            });
        }
        out.extend_from_slice(b"],\"event_timestamps\":[");
        for row in 0..count {
            out.extend_from_slice(if row > 0 {
                b",\"1970-01-01T00:00:00Z\""
            } else {
                b"\"1970-01-01T00:00:00Z\""
            });
        }
        out.extend_from_slice(b"]}");
    }
    // One pass per column: values straight into `out`, statuses and event times into side
    // buffers appended after. The columns of one view share each row's event time, so each
    // row remembers its last formatted timestamp and most cells reuse the text.
    let mut statuses: Vec<u8> = Vec::with_capacity(count * 12);
    let mut timestamps: Vec<u8> = Vec::with_capacity(count * 28);
    let mut last_timestamp: Vec<(i64, Vec<u8>)> = vec![(i64::MIN, Vec::new()); count];
    for column in 0..result.feature_column_count() {
        begin_column(out);
        statuses.clear();
        timestamps.clear();
        for (row, last) in last_timestamp.iter_mut().enumerate() {
            let cell = result.cell(column, row);
            if row > 0 {
                out.push(b',');
                statuses.push(b',');
                timestamps.push(b',');
            }
            write_value_ref(out, cell.value);
            statuses.push(b'"');
            statuses.extend_from_slice(cell.status.as_str().as_bytes());
            statuses.push(b'"');
            let micros = cell.event_timestamp.as_micros();
            if last.0 != micros || last.1.is_empty() {
                last.1.clear();
                write_timestamp(&mut last.1, cell.event_timestamp);
                last.0 = micros;
            }
            timestamps.extend_from_slice(&last.1);
        }
        out.extend_from_slice(b"],\"statuses\":[");
        out.extend_from_slice(&statuses);
        out.extend_from_slice(b"],\"event_timestamps\":[");
        out.extend_from_slice(&timestamps);
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_chrono() {
        let mut state: u64 = 0x1234_5678;
        let mut samples = vec![
            0_i64,
            1,
            999,
            1_000,
            1_000_000,
            -1,
            -86_400_000_000,
            951_782_400_000_000,
            253_402_300_799_999_999,
        ];
        for _ in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            samples.push((state % 8_000_000_000_000_000) as i64 - 1_000_000_000_000_000);
        }
        for micros in samples {
            let mut out = Vec::new();
            write_timestamp(&mut out, Timestamp(micros));
            let expected = format!("\"{}\"", Timestamp(micros).to_rfc3339());
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{micros}");
        }
    }

    #[test]
    fn values_encode_as_json() {
        let mut out = Vec::new();
        let encoded = larder_core::codec::encode_row_to_vec(&[
            Value::List(vec![Value::Int64(1), Value::Null]),
            Value::Vector(vec![0.5, f32::NAN]),
            Value::String("a\"b".into()),
            Value::Float32(0.1),
            Value::Bytes(b"foob".to_vec()),
        ]);
        let mut offsets = Vec::new();
        larder_core::codec::index_row(&encoded, &mut offsets).unwrap();
        for offset in offsets {
            write_value_ref(
                &mut out,
                larder_core::codec::value_at(&encoded, offset).unwrap(),
            );
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[1,null] [0.5,null] \"a\\\"b\" 0.1 \"Zm9vYg==\" "
        );
    }

    #[test]
    fn requests_parse_with_typed_entity_values() {
        let request = parse_online_features_request(
            br#"{"features":["v:f"],"entities":{"id":[1,"x",2.5,null,true]}}"#,
        )
        .unwrap();
        assert_eq!(
            request.selection,
            FeatureSelection::Features(vec!["v:f".into()])
        );
        assert_eq!(
            request.entities,
            vec![(
                "id".to_string(),
                vec![
                    Value::Int64(1),
                    Value::String("x".into()),
                    Value::Float64(2.5),
                    Value::Null,
                    Value::Bool(true)
                ]
            )]
        );
        let error = parse_online_features_request(br#"{"features":["v:f"],"entities":{"id":1}}"#)
            .unwrap_err();
        assert!(
            error
                .message
                .contains("expected an array of entity key values"),
            "{}",
            error.message
        );
        let error =
            parse_online_features_request(br#"{"features":["v:f"],"entities":{"id":[[1]]}}"#)
                .unwrap_err();
        assert!(
            error.message.contains("expected an entity key value"),
            "{}",
            error.message
        );
    }
}
