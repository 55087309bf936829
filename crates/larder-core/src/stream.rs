//! Definitions of the streaming lane: how a stream message is decoded into typed columns, and
//! the windowed aggregations of a stream feature view.
//!
//! A *stream feature view* is an ordinary [`crate::FeatureView`] (served like any other) whose
//! source is a Kafka or NATS stream and which carries a [`StreamAggregations`] beside it in the
//! registry: its features are then computed by the aggregations rather than copied from the
//! messages. A view over a stream source without aggregations copies each message's values.

use serde::{Deserialize, Serialize};

use crate::time::TtlDuration;
use crate::value::ValueType;

/// How the bytes of a stream message are decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    /// One JSON object per message.
    #[default]
    Json,
    /// One Protobuf message per message, of the type named in [`StreamPayload::protobuf`].
    Protobuf,
}

/// The Protobuf schema of a stream's messages, compiled from a `.proto` file of the feature
/// repo when it is applied (so serving needs no protobuf compiler and no repo files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtobufSchema {
    /// The `.proto` file, relative to the repo root.
    pub proto_file: String,
    /// Full name of the message type (`acme.events.Click`).
    pub message: String,
    /// The compiled file and its imports, an encoded `google.protobuf.FileDescriptorSet`.
    pub descriptor_set: Vec<u8>,
}

/// The unit of a numeric event time in a message (text is always RFC 3339).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimestampUnit {
    /// Seconds since the epoch (as in the push API).
    #[default]
    #[serde(rename = "s")]
    Seconds,
    /// Milliseconds since the epoch.
    #[serde(rename = "ms")]
    Milliseconds,
    /// Microseconds since the epoch.
    #[serde(rename = "us")]
    Microseconds,
}

impl TimestampUnit {
    /// Microseconds per unit.
    pub fn micros_per_unit(self) -> i64 {
        match self {
            Self::Seconds => 1_000_000,
            Self::Milliseconds => 1_000,
            Self::Microseconds => 1,
        }
    }
}

/// One typed column read from every message of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamField {
    /// Column name, as aggregations and join keys refer to it.
    pub name: String,
    /// Where the value is in the message: object keys from the top, e.g. `["user", "id"]`.
    pub path: Vec<String>,
    /// Its type.
    pub dtype: ValueType,
}

/// How the messages of a stream source are decoded into columns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPayload {
    /// The message encoding.
    #[serde(default)]
    pub format: MessageFormat,
    /// The unit of numeric event times.
    #[serde(default)]
    pub timestamp_unit: TimestampUnit,
    /// Declared columns. Join keys, the timestamp field and the features of a view without
    /// aggregations that are not declared here are read from the top-level key of their
    /// own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<StreamField>,
    /// The message schema when the format is Protobuf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protobuf: Option<ProtobufSchema>,
}

impl StreamPayload {
    /// The declared field of that name.
    pub fn field(&self, name: &str) -> Option<&StreamField> {
        self.fields.iter().find(|field| field.name == name)
    }
}

/// What a windowed aggregation computes over the events of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "function")]
pub enum AggregationFunction {
    /// Number of events (of non-null values when a column is given); `int64`, 0 when empty.
    Count,
    /// Sum of the values; `int64` for integer columns, `float64` otherwise; 0 when empty.
    Sum,
    /// Arithmetic mean; `float64`, null when empty.
    Mean,
    /// Smallest value; `int64` or `float64`, null when empty.
    Min,
    /// Largest value; `int64` or `float64`, null when empty.
    Max,
    /// The value of the newest event (by event time); the column's type, null when empty.
    Last,
    /// The values of the `n` newest events, newest first; `list<T>`.
    LastN {
        /// How many values.
        n: u32,
    },
}

impl AggregationFunction {
    /// The function's name as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Mean => "mean",
            Self::Min => "min",
            Self::Max => "max",
            Self::Last => "last",
            Self::LastN { .. } => "last_n",
        }
    }

    /// Whether the function needs an input column.
    pub fn needs_column(self) -> bool {
        !matches!(self, Self::Count)
    }

    /// The type of the feature the function computes from a column of type `input`
    /// (`None` for `count` without a column); `None` when the function cannot read `input`.
    pub fn output_type(self, input: Option<&ValueType>) -> Option<ValueType> {
        let numeric = |dtype: &ValueType| {
            matches!(
                dtype,
                ValueType::Int32 | ValueType::Int64 | ValueType::Float32 | ValueType::Float64
            )
        };
        let integer = |dtype: &ValueType| matches!(dtype, ValueType::Int32 | ValueType::Int64);
        match (self, input) {
            (Self::Count, _) => Some(ValueType::Int64),
            (_, None) => None,
            (Self::Sum | Self::Min | Self::Max, Some(dtype)) if numeric(dtype) => {
                Some(if integer(dtype) {
                    ValueType::Int64
                } else {
                    ValueType::Float64
                })
            }
            (Self::Mean, Some(dtype)) if numeric(dtype) => Some(ValueType::Float64),
            (Self::Last, Some(dtype)) if dtype.is_scalar() => Some(dtype.clone()),
            (Self::LastN { .. }, Some(dtype)) if dtype.is_scalar() => {
                Some(ValueType::List(Box::new(dtype.clone())))
            }
            _ => None,
        }
    }
}

/// One windowed aggregation: one feature of a stream feature view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregation {
    /// The feature it computes.
    pub feature: String,
    /// What it computes.
    #[serde(flatten)]
    pub function: AggregationFunction,
    /// The input column (a stream field); `None` only for `count`.
    pub column: Option<String>,
    /// The input column's type, as declared on the source.
    pub input_dtype: Option<ValueType>,
    /// The window length, in event time.
    pub window: TtlDuration,
}

/// The windowed aggregations of a stream feature view, kept in the registry beside the view
/// (`Registry::stream_views`). The view's features are the aggregations' outputs, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAggregations {
    /// One per feature, in the view's feature order.
    pub aggregations: Vec<Aggregation>,
    /// How far behind the newest event time seen an event may be and still count; later
    /// events are counted in a metric and dropped.
    pub allowed_lateness: TtlDuration,
}

/// The tile size of a window: the largest of a list of round sizes that divides the window
/// into at least 60 tiles (one second when none does). A window of length `W` with tiles of
/// size `s`, read at event time `t`, covers the tiles that start in `(tile(t) − W, tile(t)]`:
/// every event in `[tile(t) + s − W, t]`, a window between `W − s` and `W` long.
pub fn tile_size_seconds(window: TtlDuration) -> u64 {
    const ROUND_SIZES: [u64; 16] = [
        86_400, 43_200, 21_600, 10_800, 7_200, 3_600, 1_800, 900, 600, 300, 60, 30, 15, 10, 5, 1,
    ];
    let window_seconds = window.as_seconds().max(1);
    ROUND_SIZES
        .into_iter()
        .find(|size| window_seconds.is_multiple_of(*size) && window_seconds / size >= 60)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_sizes_divide_windows_into_at_least_60_tiles() {
        let cases = [
            ("5m", 5),
            ("1h", 60),
            ("24h", 900),
            ("7d", 7_200),
            ("90s", 1),
            ("30d", 43_200),
        ];
        for (window, expected) in cases {
            let window: TtlDuration = window.parse().unwrap_or_else(|error| panic!("{error}"));
            let tile = tile_size_seconds(window);
            assert_eq!(tile, expected, "{window}");
            assert!(window.as_seconds().is_multiple_of(tile));
        }
    }

    #[test]
    fn output_types_follow_the_input() {
        use AggregationFunction::*;
        assert_eq!(Count.output_type(None), Some(ValueType::Int64));
        assert_eq!(
            Sum.output_type(Some(&ValueType::Int32)),
            Some(ValueType::Int64)
        );
        assert_eq!(
            Sum.output_type(Some(&ValueType::Float32)),
            Some(ValueType::Float64)
        );
        assert_eq!(
            Mean.output_type(Some(&ValueType::Int64)),
            Some(ValueType::Float64)
        );
        assert_eq!(Sum.output_type(Some(&ValueType::String)), None);
        assert_eq!(
            LastN { n: 3 }.output_type(Some(&ValueType::String)),
            Some(ValueType::List(Box::new(ValueType::String)))
        );
        assert_eq!(Last.output_type(None), None);
    }
}
