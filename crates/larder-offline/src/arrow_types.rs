//! The mapping between Larder value types and Arrow data types.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use larder_core::ValueType;

/// The Larder type of an Arrow column, or `None` when it has no Larder equivalent.
///
/// String, binary and list variants (`Utf8View`, `LargeBinary`, `LargeList`, ...) all map to
/// their one Larder type; timestamps of any unit and zone map to `timestamp`; a
/// fixed-size list of floats maps to `vector<N>`.
pub fn value_type_of(data_type: &DataType) -> Option<ValueType> {
    let value_type = match data_type {
        DataType::Boolean => ValueType::Bool,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            ValueType::Int32
        }
        DataType::Int64 | DataType::UInt32 => ValueType::Int64,
        DataType::Float16 | DataType::Float32 => ValueType::Float32,
        DataType::Float64 => ValueType::Float64,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ValueType::String,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => ValueType::Bytes,
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => ValueType::Timestamp,
        DataType::List(element)
        | DataType::LargeList(element)
        | DataType::ListView(element)
        | DataType::LargeListView(element) => {
            let element_type = value_type_of(element.data_type())?;
            if !element_type.is_scalar() {
                return None;
            }
            ValueType::List(Box::new(element_type))
        }
        DataType::FixedSizeList(element, size)
            if matches!(element.data_type(), DataType::Float32 | DataType::Float64) =>
        {
            ValueType::Vector(u32::try_from(*size).ok()?)
        }
        DataType::Dictionary(_, value) => value_type_of(value)?,
        _ => return None,
    };
    Some(value_type)
}

/// The canonical Arrow type that Larder stores a value type as.
pub fn arrow_type_of(value_type: &ValueType) -> DataType {
    match value_type {
        ValueType::Bool => DataType::Boolean,
        ValueType::Int32 => DataType::Int32,
        ValueType::Int64 => DataType::Int64,
        ValueType::Float32 => DataType::Float32,
        ValueType::Float64 => DataType::Float64,
        ValueType::String => DataType::Utf8,
        ValueType::Bytes => DataType::Binary,
        ValueType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
        ValueType::List(element) => {
            DataType::List(Arc::new(Field::new("item", arrow_type_of(element), true)))
        }
        ValueType::Vector(dimension) => DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, true)),
            i32::try_from(*dimension).unwrap_or(i32::MAX),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_types_map_back_to_themselves() {
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
            "vector<8>",
        ] {
            let value_type: ValueType = text.parse().unwrap_or(ValueType::Bool);
            assert_eq!(
                value_type_of(&arrow_type_of(&value_type)),
                Some(value_type),
                "{text}"
            );
        }
        assert_eq!(value_type_of(&DataType::Utf8View), Some(ValueType::String));
        assert_eq!(value_type_of(&DataType::Decimal128(10, 2)), None);
    }
}
