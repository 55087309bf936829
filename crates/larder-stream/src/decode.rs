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
    /// Its index among the decoder's top-level fields, when every column is top-level.
    slot: usize,
}

/// A message's fields as the decoder read them: the whole JSON tree, or only the wanted
/// top-level fields, in [`MessageDecoder::top_level`] order.
enum Fields<'a> {
    Tree(&'a serde_json::Value),
    TopLevel(&'a [Option<serde_json::Value>]),
}

/// Reads the wanted top-level fields of a JSON object, skipping the others without building
/// them (a message's map and its keys are never allocated).
struct TopLevelFields<'a> {
    names: &'a [String],
}

impl<'de> serde::de::DeserializeSeed<'de> for TopLevelFields<'_> {
    type Value = Vec<Option<serde_json::Value>>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopLevelFields<'_> {
    type Value = Vec<Option<serde_json::Value>>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = vec![None; self.names.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.names.iter().position(|name| *name == key) {
                // The last of repeated keys wins, as when reading the whole tree.
                Some(slot) => found[slot] = Some(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
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
            slot: 0,
        }
    }

    fn find<'a>(&self, message: &Fields<'a>) -> Option<&'a serde_json::Value> {
        match message {
            Fields::Tree(tree) => self
                .path
                .iter()
                .try_fold(*tree, |node, key| node.as_object()?.get(key)),
            Fields::TopLevel(fields) => fields.get(self.slot)?.as_ref(),
        }
    }

    fn read(&self, message: &Fields<'_>) -> Result<Value, StreamError> {
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
    /// For JSON whose columns are all top-level fields: their names, in slot order.
    top_level: Option<Vec<String>>,
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
        let mut decoder = Self {
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
            top_level: None,
        };
        decoder.plan_top_level();
        Ok(decoder)
    }

    /// Whether messages are read field by field (JSON whose columns are all top-level).
    #[cfg(test)]
    pub(crate) fn reads_field_by_field(&self) -> bool {
        self.top_level.is_some()
    }

    /// For JSON whose every column is a top-level field, gives each reader its slot, so that
    /// messages are decoded field by field instead of into a whole tree.
    fn plan_top_level(&mut self) {
        if self.protobuf.is_some() {
            return;
        }
        let readers = self
            .join_keys
            .iter_mut()
            .chain(std::iter::once(&mut self.timestamp))
            .chain(self.columns.iter_mut());
        let mut names: Vec<String> = Vec::new();
        for reader in readers {
            let [field] = reader.path.as_slice() else {
                return;
            };
            reader.slot = match names.iter().position(|name| name == field) {
                Some(slot) => slot,
                None => {
                    names.push(field.clone());
                    names.len() - 1
                }
            };
        }
        self.top_level = Some(names);
    }

    /// Decodes one message (JSON, or Protobuf read through its JSON mapping with the
    /// `.proto` field names and 64-bit integers as numbers, so paths and types work alike).
    pub fn decode(&self, bytes: &[u8]) -> Result<DecodedMessage, StreamError> {
        if let (None, Some(names)) = (&self.protobuf, &self.top_level) {
            let mut deserializer = serde_json::Deserializer::from_slice(bytes);
            let fields = serde::de::DeserializeSeed::deserialize(
                TopLevelFields { names },
                &mut deserializer,
            )
            .and_then(|fields| deserializer.end().map(|()| fields))
            .map_err(|error| StreamError::Decode(format!("not a JSON object: {error}")))?;
            return self.read_fields(&Fields::TopLevel(&fields));
        }
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
        self.read_fields(&Fields::Tree(&message))
    }

    /// Reads the join keys, the event time and the columns out of a message's fields.
    fn read_fields(&self, message: &Fields<'_>) -> Result<DecodedMessage, StreamError> {
        let mut key_values = Vec::with_capacity(self.join_keys.len());
        for join_key in &self.join_keys {
            let value = join_key.read(message)?;
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
        let event_timestamp = self.read_timestamp(message)?;
        let values = self
            .columns
            .iter()
            .map(|column| column.read(message))
            .collect::<Result<_, _>>()?;
        Ok(DecodedMessage {
            entity_key,
            event_timestamp,
            values,
        })
    }

    fn read_timestamp(&self, message: &Fields<'_>) -> Result<Timestamp, StreamError> {
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
