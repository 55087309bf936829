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

/// Rounds nanosecond timestamps (also inside lists) down to whole microseconds, toward the
/// past, so that the cast to Larder's microseconds that follows is exact.
///
/// Arrow's cast divides, which rounds toward zero: a time before 1970 with a sub-microsecond
/// part would move *later* (`1969-12-31T23:59:59.9999985Z` to `…59.999999Z`) and could then
/// see a feature row from its future. Every place that reduces times to microseconds
/// (source rows, pushes, entity tables) goes through here first. Other types pass unchanged.
pub fn floor_nanos_to_micros(
    array: &arrow::array::ArrayRef,
) -> Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    use arrow::array::{Array, AsArray, ListArray, TimestampNanosecondArray};
    use arrow::datatypes::TimestampNanosecondType;
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, zone) => {
            let nanos = array.as_primitive::<TimestampNanosecondType>();
            let floored: TimestampNanosecondArray =
                nanos.unary(|value| value - value.rem_euclid(1_000));
            Ok(Arc::new(floored.with_timezone_opt(zone.clone())))
        }
        DataType::List(element)
            if matches!(
                element.data_type(),
                DataType::Timestamp(TimeUnit::Nanosecond, _)
            ) =>
        {
            let list = array.as_list::<i32>();
            let values = floor_nanos_to_micros(list.values())?;
            Ok(Arc::new(ListArray::try_new(
                Arc::clone(element),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?))
        }
        _ => Ok(Arc::clone(array)),
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

#[cfg(test)]
mod flooring_tests {
    use std::sync::Arc;

    use arrow::array::{Array, ArrayRef, ListArray, StringArray, TimestampNanosecondArray};
    use larder_core::ValueType;
    use proptest::prelude::*;

    use crate::columns::CanonicalColumn;

    fn micros_of(column: &CanonicalColumn) -> Vec<Option<i64>> {
        let CanonicalColumn::Timestamp(array) = column else {
            panic!("not a timestamp column: {column:?}");
        };
        array.iter().collect()
    }

    proptest! {
        /// Nanoseconds, before and after 1970, with any zone, reduce to the microsecond at
        /// or before them; RFC 3339 text with nine fractional digits too.
        #[test]
        fn times_reduce_to_microseconds_toward_the_past(
            nanos in prop::collection::vec(
                prop_oneof![
                    -5_000_000_000i64..5_000_000_000,
                    -9_000_000_000_000_000_000i64..9_000_000_000_000_000_000,
                ],
                1..20,
            ),
            zone in prop::option::of(prop_oneof![Just("UTC"), Just("+05:30"), Just("America/New_York")]),
        ) {
            let expected: Vec<Option<i64>> =
                nanos.iter().map(|value| Some(value.div_euclid(1_000))).collect();
            let array: ArrayRef = Arc::new(
                TimestampNanosecondArray::from(nanos.clone()).with_timezone_opt(zone),
            );
            let column = CanonicalColumn::from_array(&array, &ValueType::Timestamp, "t")
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(micros_of(&column), expected.clone());

            let text: ArrayRef = Arc::new(StringArray::from_iter_values(nanos.iter().map(|value| {
                chrono::DateTime::from_timestamp_nanos(*value)
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            })));
            let column = CanonicalColumn::from_array(&text, &ValueType::Timestamp, "t")
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(micros_of(&column), expected);
        }
    }

    #[test]
    fn the_issue_example_and_lists_of_times_round_toward_the_past() {
        // 1969-12-31T23:59:59.9999985Z is 1,500 ns before the epoch: -2 µs, not -1 µs.
        let array: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![-1_500, 1_500]));
        let column = CanonicalColumn::from_array(&array, &ValueType::Timestamp, "t");
        let column = column.unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(micros_of(&column), vec![Some(-2), Some(1)]);

        let values = TimestampNanosecondArray::from(vec![-1_500, -999, 2_999]);
        let list = ListArray::try_new(
            Arc::new(arrow::datatypes::Field::new_list_field(
                values.data_type().clone(),
                true,
            )),
            arrow::buffer::OffsetBuffer::from_lengths([2, 1]),
            Arc::new(values),
            None,
        )
        .unwrap_or_else(|error| panic!("{error}"));
        let list: ArrayRef = Arc::new(list);
        let column = CanonicalColumn::from_array(
            &list,
            &ValueType::List(Box::new(ValueType::Timestamp)),
            "l",
        )
        .unwrap_or_else(|error| panic!("{error}"));
        let CanonicalColumn::List(_, elements) = column else {
            panic!("not a list");
        };
        assert_eq!(micros_of(&elements), vec![Some(-2), Some(-1), Some(2)]);
    }
}
