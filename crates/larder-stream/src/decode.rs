//! Decoding stream messages into typed columns.

use larder_core::{
    DataSource, EntityKey, FeatureView, MessageFormat, StreamPayload, Timestamp, TimestampUnit,
    Value, ValueType,
};

use crate::StreamError;

/// One column to read: where it is in the message and its type.
#[derive(Debug, Clone)]
struct ColumnReader {
    name: String,
    path: Vec<String>,
    dtype: ValueType,
}

impl ColumnReader {
    fn new(payload: &StreamPayload, name: &str, dtype: &ValueType) -> Self {
        let path = payload
            .field(name)
            .map_or_else(|| vec![name.to_string()], |field| field.path.clone());
        Self {
            name: name.to_string(),
            path,
            dtype: dtype.clone(),
        }
    }

    fn find<'a>(&self, message: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.path
            .iter()
            .try_fold(message, |node, key| node.as_object()?.get(key))
    }

    fn read(&self, message: &serde_json::Value) -> Result<Value, StreamError> {
        let Some(json) = self.find(message) else {
            return Ok(Value::Null);
        };
        Value::from_json(json, &self.dtype).map_err(|error| {
            StreamError::Decode(format!(
                "field '{}' ({}): {error}",
                self.name,
                self.path.join(".")
            ))
        })
    }
}

/// A decoded message: entity, event time and the requested columns.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedMessage {
    /// The entity.
    pub entity_key: EntityKey,
    /// When it happened.
    pub event_timestamp: Timestamp,
    /// One value per requested column, in order.
    pub values: Vec<Value>,
}

/// Reads a view's join keys, its event time and a list of columns out of a source's
/// messages, as the source's payload declares them (undeclared names are top-level keys).
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    /// `None`: JSON; otherwise the Protobuf message type.
    protobuf: Option<prost_reflect::MessageDescriptor>,
    join_keys: Vec<ColumnReader>,
    timestamp: ColumnReader,
    timestamp_unit: TimestampUnit,
    columns: Vec<ColumnReader>,
}

impl MessageDecoder {
    /// A decoder of `columns` (name and type) for a view over a stream source.
    pub fn new(
        view: &FeatureView,
        source: &DataSource,
        columns: &[(String, ValueType)],
    ) -> Result<Self, StreamError> {
        let payload = source.kind.stream_payload().ok_or_else(|| {
            StreamError::Definition(format!(
                "source '{}' of feature view '{}' is not a stream",
                source.name, view.name
            ))
        })?;
        let protobuf = match (payload.format, &payload.protobuf) {
            (MessageFormat::Json, _) => None,
            (MessageFormat::Protobuf, Some(schema)) => {
                let pool = prost_reflect::DescriptorPool::decode(schema.descriptor_set.as_slice())
                    .map_err(|error| {
                        StreamError::Definition(format!(
                            "source '{}': the compiled '{}' cannot be read: {error}",
                            source.name, schema.proto_file
                        ))
                    })?;
                Some(pool.get_message_by_name(&schema.message).ok_or_else(|| {
                    StreamError::Definition(format!(
                        "source '{}': '{}' declares no message '{}'",
                        source.name, schema.proto_file, schema.message
                    ))
                })?)
            }
            (MessageFormat::Protobuf, None) => {
                return Err(StreamError::Definition(format!(
                    "source '{}' reads protobuf messages but has no compiled schema (apply the repo again)",
                    source.name
                )));
            }
        };
        Ok(Self {
            protobuf,
            join_keys: view
                .join_keys
                .iter()
                .map(|join_key| ColumnReader::new(payload, &join_key.name, &join_key.dtype))
                .collect(),
            timestamp: ColumnReader::new(payload, &view.timestamp_field, &ValueType::Timestamp),
            timestamp_unit: payload.timestamp_unit,
            columns: columns
                .iter()
                .map(|(name, dtype)| ColumnReader::new(payload, name, dtype))
                .collect(),
        })
    }

    /// Decodes one message (JSON, or Protobuf read through its JSON mapping with the
    /// `.proto` field names and 64-bit integers as numbers, so paths and types work alike).
    pub fn decode(&self, bytes: &[u8]) -> Result<DecodedMessage, StreamError> {
        let message: serde_json::Value = match &self.protobuf {
            None => serde_json::from_slice(bytes)
                .map_err(|error| StreamError::Decode(format!("not a JSON message: {error}")))?,
            Some(descriptor) => {
                let decoded = prost_reflect::DynamicMessage::decode(descriptor.clone(), bytes)
                    .map_err(|error| {
                        StreamError::Decode(format!(
                            "not a protobuf {} message: {error}",
                            descriptor.full_name()
                        ))
                    })?;
                let options = prost_reflect::SerializeOptions::new()
                    .stringify_64_bit_integers(false)
                    .use_proto_field_name(true)
                    .skip_default_fields(false);
                decoded
                    .serialize_with_options(serde_json::value::Serializer, &options)
                    .map_err(|error| {
                        StreamError::Decode(format!(
                            "protobuf {} message: {error}",
                            descriptor.full_name()
                        ))
                    })?
            }
        };
        if !message.is_object() {
            return Err(StreamError::Decode(
                "the message is not a JSON object".to_string(),
            ));
        }
        let mut key_values = Vec::with_capacity(self.join_keys.len());
        for join_key in &self.join_keys {
            let value = join_key.read(&message)?;
            if value.is_null() {
                return Err(StreamError::Decode(format!(
                    "join key '{}' ({}) is missing",
                    join_key.name,
                    join_key.path.join(".")
                )));
            }
            key_values.push(value);
        }
        let entity_key = EntityKey::from_values(&key_values)
            .map_err(|error| StreamError::Decode(error.to_string()))?;
        let event_timestamp = self.read_timestamp(&message)?;
        let values = self
            .columns
            .iter()
            .map(|column| column.read(&message))
            .collect::<Result<_, _>>()?;
        Ok(DecodedMessage {
            entity_key,
            event_timestamp,
            values,
        })
    }

    fn read_timestamp(&self, message: &serde_json::Value) -> Result<Timestamp, StreamError> {
        let reader = &self.timestamp;
        let missing = || {
            StreamError::Decode(format!(
                "event time '{}' ({}) is missing",
                reader.name,
                reader.path.join(".")
            ))
        };
        let json = reader.find(message).ok_or_else(missing)?;
        let unit = self.timestamp_unit.micros_per_unit();
        match json {
            serde_json::Value::String(text) => Timestamp::parse(text).ok_or_else(|| {
                StreamError::Decode(format!(
                    "event time '{}' is not an RFC 3339 time: {text:?}",
                    reader.name
                ))
            }),
            serde_json::Value::Number(number) => match number.as_i64() {
                Some(integer) => Ok(Timestamp(integer.saturating_mul(unit))),
                None => number
                    .as_f64()
                    .filter(|float| float.is_finite())
                    // Toward the past, like every reduction to microseconds.
                    .map(|float| Timestamp((float * unit as f64).floor() as i64))
                    .ok_or_else(missing),
            },
            serde_json::Value::Null => Err(missing()),
            _ => Err(StreamError::Decode(format!(
                "event time '{}' must be RFC 3339 text or a number",
                reader.name
            ))),
        }
    }
}
