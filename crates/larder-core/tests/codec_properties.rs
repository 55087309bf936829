//! Property tests of the two encodings every store shares: entity keys (compared as bytes by
//! every backend) and the row codec (what the online stores hold).
#![allow(missing_docs, clippy::unwrap_used)]

use larder_core::codec::{decode_row, encode_row_to_vec, index_row, value_at};
use larder_core::{EntityKey, Timestamp, Value};
use proptest::prelude::*;

fn not_nan_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN never equals itself", |number| !number.is_nan())
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::Int32),
        any::<i64>().prop_map(Value::Int64),
        not_nan_f32().prop_map(Value::Float32),
        any::<f64>()
            .prop_filter("NaN never equals itself", |number| !number.is_nan())
            .prop_map(Value::Float64),
        ".{0,40}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        any::<i64>().prop_map(|micros| Value::Timestamp(Timestamp(micros))),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        1 => proptest::collection::vec(scalar(), 0..8).prop_map(Value::List),
        1 => proptest::collection::vec(not_nan_f32(), 0..16).prop_map(Value::Vector),
    ]
}

fn key_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int64),
        ".{0,24}".prop_map(Value::String)
    ]
}

proptest! {
    #[test]
    fn rows_round_trip_through_the_codec(values in proptest::collection::vec(value(), 0..20)) {
        let bytes = encode_row_to_vec(&values);
        prop_assert_eq!(decode_row(&bytes).unwrap(), values.clone());
        // Random access by offset gives the same values as decoding the whole row.
        let mut offsets = Vec::new();
        let count = index_row(&bytes, &mut offsets).unwrap();
        prop_assert_eq!(count, values.len());
        for (offset, expected) in offsets.iter().zip(&values) {
            prop_assert_eq!(&value_at(&bytes, *offset).unwrap().to_value(), expected);
        }
    }

    #[test]
    fn truncated_rows_are_errors_never_panics(
        values in proptest::collection::vec(value(), 1..10),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode_row_to_vec(&values);
        let cut = cut.index(bytes.len());
        prop_assert!(decode_row(&bytes[..cut]).is_err() || cut == bytes.len());
        let mut offsets = Vec::new();
        let _ = index_row(&bytes[..cut], &mut offsets);
    }

    #[test]
    fn integer_keys_sort_like_their_integers(left in any::<i64>(), right in any::<i64>()) {
        let (left_key, right_key) = (EntityKey::from_int(left), EntityKey::from_int(right));
        prop_assert_eq!(left_key.as_bytes().cmp(right_key.as_bytes()), left.cmp(&right));
    }

    #[test]
    fn int32_and_int64_give_the_same_key(number in any::<i32>()) {
        let narrow = EntityKey::from_values(&[Value::Int32(number)]).unwrap();
        let wide = EntityKey::from_values(&[Value::Int64(i64::from(number))]).unwrap();
        prop_assert_eq!(narrow.as_bytes(), wide.as_bytes());
    }

    #[test]
    fn keys_round_trip_and_differ_when_values_differ(
        left in proptest::collection::vec(key_value(), 1..4),
        right in proptest::collection::vec(key_value(), 1..4),
    ) {
        let left_key = EntityKey::from_values(&left).unwrap();
        prop_assert_eq!(left_key.values().unwrap(), left.clone());
        let right_key = EntityKey::from_values(&right).unwrap();
        prop_assert_eq!(left_key.as_bytes() == right_key.as_bytes(), left == right);
        // The fast single-key encoders write the same bytes as the general one.
        if let [Value::Int64(number)] = left.as_slice() {
            prop_assert_eq!(EntityKey::from_int(*number), left_key.clone());
        }
        if let [Value::String(text)] = left.as_slice() {
            prop_assert_eq!(EntityKey::from_str_key(text), left_key.clone());
        }
    }
}
