//! Property tests of the row codec ([`crate::codec`]) and of entity keys
//! ([`crate::entity_key`]): round trips for every value type, offsets that read every value
//! back, determinism, no panics on garbage, and the integer key order that `push_int`
//! promises.

use proptest::prelude::*;

use crate::codec::{
    ValueRef, content_hash, decode_row, encode_row, encode_row_to_vec, encode_value, index_row,
    value_at, write_varint,
};
use crate::{EntityKey, Timestamp, Value};

/// A value with its floats as bits, so that `-0.0 != 0.0` and equality is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bits {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(u32),
    Float64(u64),
    String(String),
    Bytes(Vec<u8>),
    Timestamp(i64),
    List(Vec<Bits>),
    Vector(Vec<u32>),
}

fn bits(value: &Value) -> Bits {
    match value {
        Value::Null => Bits::Null,
        Value::Bool(flag) => Bits::Bool(*flag),
        Value::Int32(number) => Bits::Int32(*number),
        Value::Int64(number) => Bits::Int64(*number),
        Value::Float32(number) => Bits::Float32(number.to_bits()),
        Value::Float64(number) => Bits::Float64(number.to_bits()),
        Value::String(text) => Bits::String(text.clone()),
        Value::Bytes(bytes) => Bits::Bytes(bytes.clone()),
        Value::Timestamp(timestamp) => Bits::Timestamp(timestamp.as_micros()),
        Value::List(elements) => Bits::List(elements.iter().map(bits).collect()),
        Value::Vector(components) => Bits::Vector(
            components
                .iter()
                .map(|component| component.to_bits())
                .collect(),
        ),
    }
}

fn row_bits(row: &[Value]) -> Vec<Bits> {
    row.iter().map(bits).collect()
}

/// Finite float32s: normal, subnormal, ±0.0, and the extremes.
fn finite_f32() -> BoxedStrategy<f32> {
    use proptest::num::f32 as flags;
    prop_oneof![
        6 => flags::NORMAL | flags::SUBNORMAL | flags::ZERO | flags::POSITIVE | flags::NEGATIVE,
        1 => prop::sample::select(vec![
            -0.0,
            0.0,
            f32::MIN,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(1),
        ]),
    ]
    .boxed()
}

/// Finite float64s: normal, subnormal, ±0.0, and the extremes.
fn finite_f64() -> BoxedStrategy<f64> {
    use proptest::num::f64 as flags;
    prop_oneof![
        6 => flags::NORMAL | flags::SUBNORMAL | flags::ZERO | flags::POSITIVE | flags::NEGATIVE,
        1 => prop::sample::select(vec![
            -0.0,
            0.0,
            f64::MIN,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            -f64::from_bits(1),
        ]),
    ]
    .boxed()
}

/// Strings: arbitrary Unicode (often non-ASCII), empty, and a few chosen ones.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => any::<String>(),
        1 => prop::sample::select(vec!["", "héllo", "日本語", "🦀\u{0}", "a\"b\\c"])
            .prop_map(str::to_string),
    ]
    .boxed()
}

/// The number of scalar kinds [`scalar`] knows.
const SCALAR_KINDS: usize = 8;

/// A non-null value of scalar kind `kind` (bool, int32, int64, float32, float64, string,
/// bytes, timestamp).
fn scalar(kind: usize) -> BoxedStrategy<Value> {
    match kind {
        0 => any::<bool>().prop_map(Value::Bool).boxed(),
        1 => any::<i32>().prop_map(Value::Int32).boxed(),
        2 => any::<i64>().prop_map(Value::Int64).boxed(),
        3 => finite_f32().prop_map(Value::Float32).boxed(),
        4 => finite_f64().prop_map(Value::Float64).boxed(),
        5 => text().prop_map(Value::String).boxed(),
        6 => prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(Value::Bytes)
            .boxed(),
        _ => prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(-1i64),
            -1_000_000_000_000i64..0,
        ]
        .prop_map(|micros| Value::Timestamp(Timestamp(micros)))
        .boxed(),
    }
}

/// A `list<T>` of one scalar type, possibly empty, with nulls among the elements.
fn list() -> BoxedStrategy<Value> {
    (0..SCALAR_KINDS)
        .prop_flat_map(|kind| {
            prop::collection::vec(prop_oneof![5 => scalar(kind), 1 => Just(Value::Null)], 0..6)
        })
        .prop_map(Value::List)
        .boxed()
}

/// Any value a row may hold: every scalar type, lists, vectors, nulls.
fn value() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => (0..SCALAR_KINDS).prop_flat_map(scalar),
        2 => list(),
        2 => prop::collection::vec(finite_f32(), 1..9).prop_map(Value::Vector),
        1 => Just(Value::Null),
    ]
    .boxed()
}

fn row() -> BoxedStrategy<Vec<Value>> {
    prop::collection::vec(value(), 0..12).boxed()
}

/// The same checks for [`ValueRef`]: it reads back as the value, and a list's elements and a
/// vector's dimension are those of the value.
fn check_value_ref(read: ValueRef<'_>, expected: &Value) -> Result<(), TestCaseError> {
    prop_assert_eq!(bits(&read.to_value()), bits(expected));
    match expected {
        Value::List(elements) => {
            let read_elements: Vec<Bits> = read
                .list_elements()
                .map(|element| bits(&element.to_value()))
                .collect();
            prop_assert_eq!(read_elements, elements.iter().map(bits).collect::<Vec<_>>());
        }
        Value::Vector(components) => {
            let is_vector =
                matches!(read, ValueRef::Vector { dimension, .. } if dimension == components.len());
            prop_assert!(is_vector, "{:?}", read);
        }
        _ => prop_assert_eq!(read.list_elements().count(), 0),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every row decodes to itself, float bits included.
    #[test]
    fn rows_round_trip(row in row()) {
        let encoded = encode_row_to_vec(&row);
        let decoded = decode_row(&encoded);
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        prop_assert_eq!(row_bits(&decoded.unwrap_or_default()), row_bits(&row));
    }

    /// The row is its header and the values' encodings back to back; `index_row` finds
    /// exactly where each value starts, and `value_at` reads each back.
    #[test]
    fn offsets_read_back_every_value(row in row()) {
        let encoded = encode_row_to_vec(&row);
        let mut offsets = vec![7]; // index_row appends
        prop_assert_eq!(index_row(&encoded, &mut offsets), Ok(row.len()));
        prop_assert_eq!(offsets.remove(0), 7);
        let mut expected_bytes = Vec::new();
        write_varint(row.len() as u64, &mut expected_bytes);
        let mut expected_offsets = Vec::new();
        for value in &row {
            expected_offsets.push(expected_bytes.len() as u32);
            encode_value(value, &mut expected_bytes);
        }
        prop_assert_eq!(&offsets, &expected_offsets);
        prop_assert_eq!(&encoded, &expected_bytes);
        for (offset, expected) in offsets.iter().zip(&row) {
            let read = value_at(&encoded, *offset);
            prop_assert!(read.is_ok(), "{:?} at {}", read, offset);
            check_value_ref(read.unwrap_or(ValueRef::Null), expected)?;
        }
    }

    /// Encoding is deterministic: the same row gives the same bytes and hash, whether
    /// encoded into a new buffer or appended after other bytes; and two rows that differ
    /// (by bits) never share an encoding.
    #[test]
    fn encoding_is_deterministic_and_injective(
        row in row(),
        other in row(),
        prefix in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let encoded = encode_row_to_vec(&row);
        let again = encode_row_to_vec(&row.clone());
        prop_assert_eq!(&encoded, &again);
        prop_assert_eq!(content_hash(&encoded), content_hash(&again));
        let mut appended = prefix.clone();
        encode_row(&row, &mut appended);
        prop_assert_eq!(&appended[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&appended[prefix.len()..], &encoded[..]);

        let other_encoded = encode_row_to_vec(&other);
        prop_assert_eq!(
            encoded == other_encoded,
            row_bits(&row) == row_bits(&other),
            "{:?} vs {:?}", row, other
        );
    }

    /// Random bytes are never a panic: decoding, indexing and reading at any offset answer
    /// `Ok` or `Err`, and whatever decodes round-trips (the bytes themselves need not come
    /// back: a varint may be written with redundant continuation bytes).
    #[test]
    fn garbage_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        offset in 0u32..80,
    ) {
        if let Ok(values) = decode_row(&bytes) {
            let again = decode_row(&encode_row_to_vec(&values)).unwrap_or_default();
            prop_assert_eq!(row_bits(&again), row_bits(&values));
        }
        let _ = index_row(&bytes, &mut Vec::new());
        if let Ok(read) = value_at(&bytes, offset) {
            let _ = read.to_value();
            let _ = read.list_elements().count();
        }
    }

    /// Valid rows with one byte changed or cut short are never a panic either (random
    /// bytes rarely get past the header; these reach every branch of the decoder).
    #[test]
    fn corrupted_rows_never_panic(
        row in row(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut encoded = encode_row_to_vec(&row);
        let at = position.index(encoded.len());
        encoded[at] = byte;
        let decoded = decode_row(&encoded);
        let mut offsets = Vec::new();
        let indexed = index_row(&encoded, &mut offsets);
        prop_assert_eq!(decoded.is_ok(), indexed.is_ok(), "decode and index agree");
        for offset in offsets {
            if let Ok(read) = value_at(&encoded, offset) {
                let _ = read.to_value();
                let _ = read.list_elements().count();
            }
        }
        let end = cut.index(encoded.len());
        let _ = decode_row(&encoded[..end]);
        let _ = index_row(&encoded[..end], &mut Vec::new());
    }
}

/// A join key value: int32, int64 or string.
fn key_value() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::Int32),
        any::<i64>().prop_map(Value::Int64),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), Just(-1i64)].prop_map(Value::Int64),
        text().prop_map(Value::String),
    ]
    .boxed()
}

/// A join key value from a tiny domain, so that equal values come up often.
fn small_key_value() -> BoxedStrategy<Value> {
    prop_oneof![
        (-2i32..3).prop_map(Value::Int32),
        (-2i64..3).prop_map(Value::Int64),
        prop::sample::select(vec!["", "a", "b", "1", "é"])
            .prop_map(|text| Value::String(text.to_string())),
    ]
    .boxed()
}

/// What `values()` gives back: int32 widened to int64.
fn widened(values: &[Value]) -> Vec<Value> {
    values
        .iter()
        .map(|value| match value {
            Value::Int32(number) => Value::Int64(i64::from(*number)),
            other => other.clone(),
        })
        .collect()
}

/// Integers, often the extremes and near zero.
fn key_int() -> BoxedStrategy<i64> {
    prop_oneof![
        4 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX]),
        2 => -3i64..3,
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Keys of one or more int32/int64/string components decode to their values (int32
    /// widened), and survive `as_bytes`/`from_bytes`.
    #[test]
    fn keys_round_trip(values in prop::collection::vec(key_value(), 1..5)) {
        let key = EntityKey::from_values(&values);
        prop_assert!(key.is_ok(), "{:?}", key);
        let key = key.unwrap_or_else(|_| EntityKey::from_int(0));
        prop_assert_eq!(key.values(), Ok(widened(&values)));
        prop_assert_eq!(EntityKey::from_bytes(key.as_bytes().to_vec()), key.clone());
        let mut appended = Vec::new();
        prop_assert_eq!(EntityKey::encode_values_into(&values, &mut appended), Ok(()));
        prop_assert_eq!(&appended[..], key.as_bytes());
    }

    /// The single-column shortcuts are the same keys as `from_values`, and int32 and int64
    /// of the same number are the same key.
    #[test]
    fn single_column_keys_agree(number in key_int(), small in any::<i32>(), text in text()) {
        prop_assert_eq!(EntityKey::from_values(&[Value::Int64(number)]), Ok(EntityKey::from_int(number)));
        prop_assert_eq!(
            EntityKey::from_values(&[Value::Int32(small)]),
            Ok(EntityKey::from_int(i64::from(small)))
        );
        prop_assert_eq!(
            EntityKey::from_values(&[Value::String(text.clone())]),
            Ok(EntityKey::from_str_key(&text))
        );
        prop_assert_eq!(EntityKey::from_int(number).values(), Ok(vec![Value::Int64(number)]));
        prop_assert_eq!(EntityKey::from_str_key(&text).values(), Ok(vec![Value::String(text.clone())]));
        prop_assert_ne!(EntityKey::from_int(number), EntityKey::from_str_key(&text));
    }

    /// Two keys are equal exactly when their (widened) values are: distinct values never
    /// share a key, composite ones included.
    #[test]
    fn keys_are_equal_exactly_when_values_are(
        left in prop::collection::vec(small_key_value(), 1..4),
        right in prop::collection::vec(small_key_value(), 1..4),
    ) {
        let left_key = EntityKey::from_values(&left);
        let right_key = EntityKey::from_values(&right);
        prop_assert!(left_key.is_ok() && right_key.is_ok());
        prop_assert_eq!(
            left_key == right_key,
            widened(&left) == widened(&right),
            "{:?} vs {:?}", left, right
        );
    }

    /// `push_int` flips the sign bit "so that byte order matches numeric order": integer
    /// keys (and their bytes) sort like the integers, negatives and extremes included.
    #[test]
    fn integer_keys_sort_like_integers(left in key_int(), right in key_int()) {
        let (left_key, right_key) = (EntityKey::from_int(left), EntityKey::from_int(right));
        prop_assert_eq!(left_key.cmp(&right_key), left.cmp(&right));
        prop_assert_eq!(left_key.as_bytes().cmp(right_key.as_bytes()), left.cmp(&right));
    }

    /// Decoding arbitrary key bytes is never a panic, and neither is showing them.
    #[test]
    fn garbage_keys_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
        let key = EntityKey::from_bytes(bytes);
        let _ = key.values();
        let _ = key.to_string();
    }
}

/// The documented order at the edges, spelled out.
#[test]
fn integer_key_order_at_the_edges() {
    let ordered = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
    for pair in ordered.windows(2) {
        assert!(
            EntityKey::from_int(pair[0]) < EntityKey::from_int(pair[1]),
            "{} < {}",
            pair[0],
            pair[1]
        );
    }
    let int32_key = |number| EntityKey::from_values(&[Value::Int32(number)]).ok();
    assert!(int32_key(i32::MIN) < int32_key(-1));
    assert!(int32_key(-1) < Some(EntityKey::from_int(0)));
}
