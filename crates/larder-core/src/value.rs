//! Value types and values.

use std::fmt;
use std::str::FromStr;

use crate::error::CoreError;
use crate::time::Timestamp;

/// The declared type of a feature or join key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `bool`
    Bool,
    /// `int32`
    Int32,
    /// `int64`
    Int64,
    /// `float32`
    Float32,
    /// `float64`
    Float64,
    /// `string` (UTF-8)
    String,
    /// `bytes`
    Bytes,
    /// `timestamp`: an instant in UTC, microsecond precision
    Timestamp,
    /// `list<T>` of a scalar type
    List(Box<ValueType>),
    /// `vector<N>`: a float32 embedding of exactly N dimensions
    Vector(u32),
}

impl ValueType {
    /// Whether this type can be an element of `list<T>`.
    pub fn is_scalar(&self) -> bool {
        !matches!(self, Self::List(_) | Self::Vector(_))
    }

    /// Whether values of this type can identify an entity.
    pub fn is_join_key_type(&self) -> bool {
        matches!(self, Self::Int32 | Self::Int64 | Self::String)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool => formatter.write_str("bool"),
            Self::Int32 => formatter.write_str("int32"),
            Self::Int64 => formatter.write_str("int64"),
            Self::Float32 => formatter.write_str("float32"),
            Self::Float64 => formatter.write_str("float64"),
            Self::String => formatter.write_str("string"),
            Self::Bytes => formatter.write_str("bytes"),
            Self::Timestamp => formatter.write_str("timestamp"),
            Self::List(element) => write!(formatter, "list<{element}>"),
            Self::Vector(dimension) => write!(formatter, "vector<{dimension}>"),
        }
    }
}

impl FromStr for ValueType {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || CoreError::UnknownType(text.to_string());
        let normalized = text.trim().to_ascii_lowercase().replace(' ', "");
        if let Some(inner) = normalized
            .strip_prefix("list<")
            .and_then(|rest| rest.strip_suffix('>'))
        {
            let element: ValueType = inner.parse().map_err(|_| unknown())?;
            if !element.is_scalar() {
                return Err(unknown());
            }
            return Ok(Self::List(Box::new(element)));
        }
        if let Some(inner) = normalized
            .strip_prefix("vector<")
            .and_then(|rest| rest.strip_suffix('>'))
        {
            let dimension: u32 = inner.parse().map_err(|_| unknown())?;
            if dimension == 0 {
                return Err(unknown());
            }
            return Ok(Self::Vector(dimension));
        }
        match normalized.as_str() {
            "bool" | "boolean" => Ok(Self::Bool),
            "int32" => Ok(Self::Int32),
            "int64" | "int" => Ok(Self::Int64),
            "float32" | "float" => Ok(Self::Float32),
            "float64" | "double" => Ok(Self::Float64),
            "string" | "str" => Ok(Self::String),
            "bytes" => Ok(Self::Bytes),
            "timestamp" | "unix_timestamp" | "unixtimestamp" => Ok(Self::Timestamp),
            _ => Err(unknown()),
        }
    }
}

impl serde::Serialize for ValueType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ValueType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One feature value. `Null` stands for a missing value of any type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// A `bool`.
    Bool(bool),
    /// An `int32`.
    Int32(i32),
    /// An `int64`.
    Int64(i64),
    /// A `float32`.
    Float32(f32),
    /// A `float64`.
    Float64(f64),
    /// A `string`.
    String(String),
    /// A `bytes` value.
    Bytes(Vec<u8>),
    /// A `timestamp`.
    Timestamp(Timestamp),
    /// A `list<T>`; elements are scalar values (never nested lists).
    List(Vec<Value>),
    /// A `vector<N>`.
    Vector(Vec<f32>),
}

impl Value {
    /// A short name of the value's kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "bool",
            Self::Int32(_) => "int32",
            Self::Int64(_) => "int64",
            Self::Float32(_) => "float32",
            Self::Float64(_) => "float64",
            Self::String(_) => "string",
            Self::Bytes(_) => "bytes",
            Self::Timestamp(_) => "timestamp",
            Self::List(_) => "list",
            Self::Vector(_) => "vector",
        }
    }

    /// Whether the value is `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    /// Whether this value may be stored under the declared type (`Null` always may).
    pub fn conforms_to(&self, value_type: &ValueType) -> bool {
        match (self, value_type) {
            (Self::Null, _) => true,
            (Self::Bool(_), ValueType::Bool)
            | (Self::Int32(_), ValueType::Int32)
            | (Self::Int64(_), ValueType::Int64)
            | (Self::Float32(_), ValueType::Float32)
            | (Self::Float64(_), ValueType::Float64)
            | (Self::String(_), ValueType::String)
            | (Self::Bytes(_), ValueType::Bytes)
            | (Self::Timestamp(_), ValueType::Timestamp) => true,
            (Self::List(elements), ValueType::List(element_type)) => {
                elements.iter().all(|element| {
                    !matches!(element, Self::List(_) | Self::Vector(_))
                        && element.conforms_to(element_type)
                })
            }
            (Self::Vector(components), ValueType::Vector(dimension)) => {
                components.len() == *dimension as usize
            }
            _ => false,
        }
    }

    /// Converts a value to the declared type where no information is lost: integers widen to
    /// wider integers and to floats, `float32` to `float64`, an `int64` narrows to `int32`
    /// when in range, and list elements convert one by one. Anything else that does not
    /// already conform is a [`CoreError::TypeMismatch`] describing what was given.
    pub fn coerce_to(self, value_type: &ValueType) -> Result<Self, CoreError> {
        if self.conforms_to(value_type) {
            return Ok(self);
        }
        let mismatch = |value: &Self| CoreError::TypeMismatch {
            expected: value_type.to_string(),
            got: value.described(),
        };
        let converted = match (self, value_type) {
            (Self::Int32(number), ValueType::Int64) => Self::Int64(i64::from(number)),
            (Self::Int64(number), ValueType::Int32) => {
                Self::Int32(i32::try_from(number).map_err(|_| CoreError::TypeMismatch {
                    expected: value_type.to_string(),
                    got: format!("{number} (out of range)"),
                })?)
            }
            (Self::Int32(number), ValueType::Float32) => Self::Float32(number as f32),
            (Self::Int32(number), ValueType::Float64) => Self::Float64(f64::from(number)),
            (Self::Int64(number), ValueType::Float32) => Self::Float32(number as f32),
            (Self::Int64(number), ValueType::Float64) => Self::Float64(number as f64),
            (Self::Float32(number), ValueType::Float64) => Self::Float64(f64::from(number)),
            (Self::List(elements), ValueType::List(element_type)) => Self::List(
                elements
                    .into_iter()
                    .map(|element| element.coerce_to(element_type))
                    .collect::<Result<_, _>>()?,
            ),
            (Self::List(elements), ValueType::Vector(dimension))
                if elements.len() == *dimension as usize =>
            {
                let mut components = Vec::with_capacity(elements.len());
                for element in elements {
                    // Embeddings are float32 whatever precision the producer computed.
                    match element {
                        Self::Float64(component) => components.push(component as f32),
                        other => match other.coerce_to(&ValueType::Float32)? {
                            Self::Float32(component) => components.push(component),
                            other => return Err(mismatch(&other)),
                        },
                    }
                }
                Self::Vector(components)
            }
            (other, _) => return Err(mismatch(&other)),
        };
        Ok(converted)
    }

    /// The value itself if every float in it (scalars, list elements, vector components) is
    /// finite: NaN and infinities are refused, since JSON cannot carry them back and a model
    /// fed one silently misbehaves.
    pub fn ensure_finite(self) -> Result<Self, CoreError> {
        match self.first_non_finite() {
            Some((number, dtype)) => Err(CoreError::TypeMismatch {
                expected: format!("a finite {dtype} (NaN and infinities are refused)"),
                got: number.to_string(),
            }),
            None => Ok(self),
        }
    }

    /// The first float in the value that is NaN or infinite, with its kind.
    fn first_non_finite(&self) -> Option<(f64, &'static str)> {
        match self {
            Self::Float32(number) if !number.is_finite() => Some((f64::from(*number), "float32")),
            Self::Float64(number) if !number.is_finite() => Some((*number, "float64")),
            Self::Vector(components) => components
                .iter()
                .find(|component| !component.is_finite())
                .map(|component| (f64::from(*component), "vector component")),
            Self::List(elements) => elements.iter().find_map(Self::first_non_finite),
            _ => None,
        }
    }

    /// The value's kind with an article, for error messages ("an integer", "a string").
    pub fn described(&self) -> String {
        match self {
            Self::Null => "null".to_string(),
            Self::Int32(_) | Self::Int64(_) => "an integer".to_string(),
            Self::Float32(_) | Self::Float64(_) => "a decimal number".to_string(),
            Self::String(_) => "a string".to_string(),
            Self::Bool(_) => "a bool".to_string(),
            Self::Vector(components) => format!("a vector of {} components", components.len()),
            Self::List(elements) => format!("a list of {} elements", elements.len()),
            other => format!("a {}", other.kind_name()),
        }
    }

    /// Reads a JSON value as the declared type. Integers are accepted for float types and,
    /// for timestamps, RFC 3339 strings or integer seconds since the epoch.
    pub fn from_json(json: &serde_json::Value, value_type: &ValueType) -> Result<Self, CoreError> {
        let mismatch = || CoreError::TypeMismatch {
            expected: value_type.to_string(),
            got: json_kind(json).to_string(),
        };
        if json.is_null() {
            return Ok(Self::Null);
        }
        let value = match value_type {
            ValueType::Bool => Self::Bool(json.as_bool().ok_or_else(mismatch)?),
            ValueType::Int32 => {
                let wide = json.as_i64().ok_or_else(mismatch)?;
                Self::Int32(i32::try_from(wide).map_err(|_| CoreError::TypeMismatch {
                    expected: "int32".to_string(),
                    got: format!("{wide} (out of range)"),
                })?)
            }
            ValueType::Int64 => Self::Int64(json.as_i64().ok_or_else(mismatch)?),
            ValueType::Float32 => {
                let wide = json.as_f64().ok_or_else(mismatch)?;
                let narrow = wide as f32;
                if !narrow.is_finite() {
                    return Err(CoreError::TypeMismatch {
                        expected: "float32 (a finite number up to ±3.4e38)".to_string(),
                        got: format!("{wide} (out of float32's range)"),
                    });
                }
                Self::Float32(narrow)
            }
            ValueType::Float64 => Self::Float64(json.as_f64().ok_or_else(mismatch)?),
            ValueType::String => Self::String(json.as_str().ok_or_else(mismatch)?.to_string()),
            ValueType::Bytes => {
                let text = json.as_str().ok_or_else(mismatch)?;
                Self::Bytes(crate::base64::base64_decode(text).ok_or_else(|| {
                    CoreError::TypeMismatch {
                        expected: "bytes (base64 text)".to_string(),
                        got: "text that is not base64".to_string(),
                    }
                })?)
            }
            ValueType::Timestamp => match json {
                serde_json::Value::String(text) => {
                    Self::Timestamp(Timestamp::parse(text).ok_or_else(mismatch)?)
                }
                serde_json::Value::Number(number) => Self::Timestamp(
                    number
                        .as_i64()
                        .and_then(Timestamp::checked_from_seconds)
                        .ok_or_else(|| CoreError::TypeMismatch {
                            expected: value_type.to_string(),
                            got: format!("{number} seconds since the epoch (not a calendar date)"),
                        })?,
                ),
                _ => return Err(mismatch()),
            },
            ValueType::List(element_type) => {
                let elements = json.as_array().ok_or_else(mismatch)?;
                Self::List(
                    elements
                        .iter()
                        .map(|element| Self::from_json(element, element_type))
                        .collect::<Result<_, _>>()?,
                )
            }
            ValueType::Vector(dimension) => {
                let components = json.as_array().ok_or_else(mismatch)?;
                if components.len() != *dimension as usize {
                    return Err(CoreError::TypeMismatch {
                        expected: value_type.to_string(),
                        got: format!("an array of {} numbers", components.len()),
                    });
                }
                Self::Vector(
                    components
                        .iter()
                        .map(|component| {
                            let wide = component.as_f64().ok_or_else(mismatch)?;
                            let narrow = wide as f32;
                            if narrow.is_finite() {
                                Ok(narrow)
                            } else {
                                Err(CoreError::TypeMismatch {
                                    expected: "vector components that are finite float32 \
                                               numbers (up to ±3.4e38)"
                                        .to_string(),
                                    got: format!("{wide} (out of float32's range)"),
                                })
                            }
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
        };
        Ok(value)
    }
}

/// The JSON kind of a value, for error messages.
pub fn json_kind(json: &serde_json::Value) -> &'static str {
    match json {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(number) if number.is_f64() => "a decimal number",
        serde_json::Value::Number(_) => "an integer",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => serializer.serialize_unit(),
            Self::Bool(value) => serializer.serialize_bool(*value),
            Self::Int32(value) => serializer.serialize_i32(*value),
            Self::Int64(value) => serializer.serialize_i64(*value),
            Self::Float32(value) if value.is_finite() => serializer.serialize_f32(*value),
            Self::Float64(value) if value.is_finite() => serializer.serialize_f64(*value),
            Self::Float32(_) | Self::Float64(_) => serializer.serialize_unit(),
            Self::String(value) => serializer.serialize_str(value),
            Self::Bytes(value) => serializer.serialize_str(&crate::base64::base64_encode(value)),
            Self::Timestamp(value) => serializer.collect_str(value),
            Self::List(values) => serializer.collect_seq(values),
            Self::Vector(components) => {
                serializer.collect_seq(components.iter().map(|component| {
                    if component.is_finite() {
                        Self::Float32(*component)
                    } else {
                        Self::Null
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_floats_are_refused_wherever_they_hide() {
        assert!(Value::Float64(f64::NAN).ensure_finite().is_err());
        assert!(Value::Float32(f32::NEG_INFINITY).ensure_finite().is_err());
        assert!(
            Value::List(vec![Value::Float64(1.0), Value::Float64(f64::INFINITY)])
                .ensure_finite()
                .is_err()
        );
        assert!(Value::Vector(vec![0.5, f32::NAN]).ensure_finite().is_err());
        let fine = Value::List(vec![Value::Float64(1.0), Value::Null]);
        assert_eq!(fine.clone().ensure_finite(), Ok(fine));
        let overflow = Value::from_json(&serde_json::json!(1e39), &ValueType::Float32);
        assert!(overflow.is_err(), "{overflow:?}");
        assert_eq!(
            Value::from_json(&serde_json::json!(3.0e38), &ValueType::Float32),
            Ok(Value::Float32(3.0e38))
        );
    }

    #[test]
    fn coerce_widens_without_loss_and_refuses_the_rest() {
        assert_eq!(
            Value::Int32(7).coerce_to(&ValueType::Int64).ok(),
            Some(Value::Int64(7))
        );
        assert_eq!(
            Value::Int64(7).coerce_to(&ValueType::Float64).ok(),
            Some(Value::Float64(7.0))
        );
        assert_eq!(
            Value::Int64(7).coerce_to(&ValueType::Int32).ok(),
            Some(Value::Int32(7))
        );
        assert_eq!(
            Value::Null.coerce_to(&ValueType::String).ok(),
            Some(Value::Null)
        );
        assert_eq!(
            Value::List(vec![Value::Int32(1), Value::Int64(2)])
                .coerce_to(&ValueType::List(Box::new(ValueType::Int64)))
                .ok(),
            Some(Value::List(vec![Value::Int64(1), Value::Int64(2)]))
        );
        assert_eq!(
            Value::List(vec![Value::Float64(0.5), Value::Int64(2)])
                .coerce_to(&ValueType::Vector(2))
                .ok(),
            Some(Value::Vector(vec![0.5, 2.0]))
        );
        let refused = |value: Value, value_type: ValueType| match value.coerce_to(&value_type) {
            Err(CoreError::TypeMismatch { got, .. }) => got,
            other => panic!("expected a type mismatch, got {other:?}"),
        };
        assert_eq!(
            refused(Value::Int64(1 << 40), ValueType::Int32),
            format!("{} (out of range)", 1_i64 << 40)
        );
        assert_eq!(
            refused(Value::Float64(1.5), ValueType::Int64),
            "a decimal number"
        );
        assert_eq!(
            refused(Value::String("x".into()), ValueType::Int64),
            "a string"
        );
        assert_eq!(
            refused(Value::Vector(vec![1.0]), ValueType::Vector(2)),
            "a vector of 1 components"
        );
    }

    #[test]
    fn value_types_round_trip_through_text() {
        for text in [
            "bool",
            "int32",
            "int64",
            "float32",
            "float64",
            "string",
            "bytes",
            "timestamp",
            "list<int64>",
            "list<string>",
            "vector<128>",
        ] {
            let parsed: ValueType = text
                .parse()
                .unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!("Float32".parse::<ValueType>(), Ok(ValueType::Float32));
        for bad in [
            "float16",
            "list<list<int64>>",
            "vector<0>",
            "vector<x>",
            "list<>",
        ] {
            assert!(
                bad.parse::<ValueType>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn json_values_are_checked_against_the_declared_type() {
        let json: serde_json::Value = serde_json::json!([1, 2, 3]);
        assert_eq!(
            Value::from_json(&json, &ValueType::List(Box::new(ValueType::Int64))),
            Ok(Value::List(vec![
                Value::Int64(1),
                Value::Int64(2),
                Value::Int64(3)
            ]))
        );
        assert!(Value::from_json(&serde_json::json!("7"), &ValueType::Int64).is_err());
        assert!(Value::from_json(&serde_json::json!(1.5), &ValueType::Int64).is_err());
        assert!(
            Value::from_json(&serde_json::json!(3_000_000_000_i64), &ValueType::Int32).is_err()
        );
        assert_eq!(
            Value::from_json(&serde_json::json!(2), &ValueType::Float64),
            Ok(Value::Float64(2.0))
        );
        assert!(Value::from_json(&serde_json::json!([1.0, 2.0]), &ValueType::Vector(3)).is_err());
        // Seconds since the epoch become a timestamp; seconds beyond any calendar date are
        // refused, not clamped (schemathesis once read one back as the smallest instant).
        assert_eq!(
            Value::from_json(&serde_json::json!(1_700_000_000), &ValueType::Timestamp),
            Ok(Value::Timestamp(Timestamp(1_700_000_000_000_000)))
        );
        for huge in [i64::MAX, i64::MIN, 9_300_000_000_000] {
            match Value::from_json(&serde_json::json!(huge), &ValueType::Timestamp) {
                Err(error) => assert!(error.to_string().contains("not a calendar date"), "{error}"),
                Ok(value) => panic!("{huge} seconds became {value:?}"),
            }
        }
    }

    #[test]
    fn non_finite_floats_serialize_as_null() {
        let text = serde_json::to_string(&vec![Value::Float64(f64::NAN), Value::Float32(1.5)])
            .unwrap_or_default();
        assert_eq!(text, "[null,1.5]");
    }
}
