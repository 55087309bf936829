//! The compact binary row encoding used by every online store.
//!
//! A row is a varint count followed by that many tagged values. Each value is one tag byte and
//! a payload in little-endian order. The encoding is self-describing (a reader needs no schema)
//! so that a store can hand rows back untouched and a reader can check them against the
//! schema it expects.

pub use crate::base64::{base64_decode, base64_encode};
use crate::error::CoreError;
use crate::time::Timestamp;
use crate::value::Value;

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT32: u8 = 3;
const TAG_INT64: u8 = 4;
const TAG_FLOAT32: u8 = 5;
const TAG_FLOAT64: u8 = 6;
const TAG_STRING: u8 = 7;
const TAG_BYTES: u8 = 8;
const TAG_TIMESTAMP: u8 = 9;
const TAG_LIST: u8 = 10;
const TAG_VECTOR: u8 = 11;

/// Appends the encoding of a row of values to `out`.
pub fn encode_row(values: &[Value], out: &mut Vec<u8>) {
    encode_row_header(values.len(), out);
    for value in values {
        encode_value(value, out);
    }
}

/// The content hash of a row's encoded values (xxh3-64 of [`encode_row`]'s bytes).
///
/// Change detection stores it, and it settles which of several rows of one entity with the
/// same event time wins, in the batch lane and in training sets alike: the larger hash. That
/// order comes from the values alone, so it is the same whatever order the rows were read in.
pub fn content_hash(encoded_values: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(encoded_values)
}

/// Encodes a row of values into a new buffer.
pub fn encode_row_to_vec(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 9 + 2);
    encode_row(values, &mut out);
    out
}

/// Appends the encoding of one value to `out`.
pub fn encode_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => encode_null(out),
        Value::Bool(flag) => encode_bool(*flag, out),
        Value::Int32(number) => encode_int32(*number, out),
        Value::Int64(number) => encode_int64(*number, out),
        Value::Float32(number) => encode_float32(*number, out),
        Value::Float64(number) => encode_float64(*number, out),
        Value::String(text) => encode_str(text, out),
        Value::Bytes(bytes) => encode_bytes(bytes, out),
        Value::Timestamp(timestamp) => encode_timestamp(*timestamp, out),
        Value::List(elements) => {
            encode_list_header(elements.len(), out);
            for element in elements {
                encode_value(element, out);
            }
        }
        Value::Vector(components) => encode_vector(components, out),
    }
}

// The encoders of each kind of value, for callers that encode straight from columns
// without building `Value`s (the batch lane); `encode_value` is made of them.

/// Appends a null.
pub fn encode_null(out: &mut Vec<u8>) {
    out.push(TAG_NULL);
}

/// Appends a `bool`.
pub fn encode_bool(flag: bool, out: &mut Vec<u8>) {
    out.push(if flag { TAG_TRUE } else { TAG_FALSE });
}

/// Appends an `int32`.
pub fn encode_int32(number: i32, out: &mut Vec<u8>) {
    out.push(TAG_INT32);
    out.extend_from_slice(&number.to_le_bytes());
}

/// Appends an `int64`.
pub fn encode_int64(number: i64, out: &mut Vec<u8>) {
    out.push(TAG_INT64);
    out.extend_from_slice(&number.to_le_bytes());
}

/// Appends a `float32`.
pub fn encode_float32(number: f32, out: &mut Vec<u8>) {
    out.push(TAG_FLOAT32);
    out.extend_from_slice(&number.to_le_bytes());
}

/// Appends a `float64`.
pub fn encode_float64(number: f64, out: &mut Vec<u8>) {
    out.push(TAG_FLOAT64);
    out.extend_from_slice(&number.to_le_bytes());
}

/// Appends a `string`.
pub fn encode_str(text: &str, out: &mut Vec<u8>) {
    out.push(TAG_STRING);
    write_varint(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// Appends `bytes`.
pub fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(TAG_BYTES);
    write_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Appends a `timestamp`.
pub fn encode_timestamp(timestamp: Timestamp, out: &mut Vec<u8>) {
    out.push(TAG_TIMESTAMP);
    out.extend_from_slice(&timestamp.as_micros().to_le_bytes());
}

/// Appends the header of a list of `length` elements; the elements follow, each encoded as a
/// value.
pub fn encode_list_header(length: usize, out: &mut Vec<u8>) {
    out.push(TAG_LIST);
    write_varint(length as u64, out);
}

/// Appends a `vector<N>`.
pub fn encode_vector(components: &[f32], out: &mut Vec<u8>) {
    out.push(TAG_VECTOR);
    write_varint(components.len() as u64, out);
    for component in components {
        out.extend_from_slice(&component.to_le_bytes());
    }
}

/// Appends the header of a row of `length` values; the values follow.
pub fn encode_row_header(length: usize, out: &mut Vec<u8>) {
    write_varint(length as u64, out);
}

/// Decodes a whole row.
pub fn decode_row(bytes: &[u8]) -> Result<Vec<Value>, CoreError> {
    let mut reader = Reader { bytes, position: 0 };
    let count = reader.varint()? as usize;
    if count > bytes.len() {
        return Err(CoreError::Corrupt("value count larger than the row"));
    }
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(reader.value(0)?);
    }
    if reader.position != bytes.len() {
        return Err(CoreError::Corrupt("trailing bytes after the last value"));
    }
    Ok(values)
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], CoreError> {
        let end = self
            .position
            .checked_add(length)
            .ok_or(CoreError::Corrupt("length overflow"))?;
        let slice = self
            .bytes
            .get(self.position..end)
            .ok_or(CoreError::Corrupt("row ends inside a value"))?;
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CoreError> {
        let slice = self.take(N)?;
        let mut array = [0u8; N];
        array.copy_from_slice(slice);
        Ok(array)
    }

    fn varint(&mut self) -> Result<u64, CoreError> {
        let mut result: u64 = 0;
        for shift in (0..64).step_by(7) {
            let [byte] = self.array::<1>()?;
            result |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(result);
            }
        }
        Err(CoreError::Corrupt("varint longer than 64 bits"))
    }

    fn length(&mut self) -> Result<usize, CoreError> {
        let length =
            usize::try_from(self.varint()?).map_err(|_| CoreError::Corrupt("length overflow"))?;
        if length > self.bytes.len() {
            return Err(CoreError::Corrupt("length larger than the row"));
        }
        Ok(length)
    }

    fn value_ref(&mut self, depth: u8) -> Result<ValueRef<'a>, CoreError> {
        let [tag] = self.array::<1>()?;
        let value = match tag {
            TAG_NULL => ValueRef::Null,
            TAG_FALSE => ValueRef::Bool(false),
            TAG_TRUE => ValueRef::Bool(true),
            TAG_INT32 => ValueRef::Int32(i32::from_le_bytes(self.array()?)),
            TAG_INT64 => ValueRef::Int64(i64::from_le_bytes(self.array()?)),
            TAG_FLOAT32 => ValueRef::Float32(f32::from_le_bytes(self.array()?)),
            TAG_FLOAT64 => ValueRef::Float64(f64::from_le_bytes(self.array()?)),
            TAG_STRING => {
                let length = self.length()?;
                ValueRef::String(
                    std::str::from_utf8(self.take(length)?)
                        .map_err(|_| CoreError::Corrupt("string is not UTF-8"))?,
                )
            }
            TAG_BYTES => {
                let length = self.length()?;
                ValueRef::Bytes(self.take(length)?)
            }
            TAG_TIMESTAMP => ValueRef::Timestamp(Timestamp(i64::from_le_bytes(self.array()?))),
            TAG_LIST if depth == 0 => {
                let count = self.length()?;
                let start = self.position;
                for _ in 0..count {
                    self.value_ref(depth + 1)?;
                }
                ValueRef::List {
                    count,
                    bytes: &self.bytes[start..self.position],
                }
            }
            TAG_VECTOR if depth == 0 => {
                let dimension = self.length()?;
                let length = dimension
                    .checked_mul(4)
                    .ok_or(CoreError::Corrupt("length overflow"))?;
                ValueRef::Vector {
                    dimension,
                    bytes: self.take(length)?,
                }
            }
            _ => return Err(CoreError::Corrupt("unknown value tag")),
        };
        Ok(value)
    }

    fn value(&mut self, depth: u8) -> Result<Value, CoreError> {
        let [tag] = self.array::<1>()?;
        let value = match tag {
            TAG_NULL => Value::Null,
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_INT32 => Value::Int32(i32::from_le_bytes(self.array()?)),
            TAG_INT64 => Value::Int64(i64::from_le_bytes(self.array()?)),
            TAG_FLOAT32 => Value::Float32(f32::from_le_bytes(self.array()?)),
            TAG_FLOAT64 => Value::Float64(f64::from_le_bytes(self.array()?)),
            TAG_STRING => {
                let length = self.length()?;
                let text = std::str::from_utf8(self.take(length)?)
                    .map_err(|_| CoreError::Corrupt("string is not UTF-8"))?;
                Value::String(text.to_string())
            }
            TAG_BYTES => {
                let length = self.length()?;
                Value::Bytes(self.take(length)?.to_vec())
            }
            TAG_TIMESTAMP => Value::Timestamp(Timestamp(i64::from_le_bytes(self.array()?))),
            TAG_LIST if depth == 0 => {
                let count = self.length()?;
                let mut elements = Vec::with_capacity(count);
                for _ in 0..count {
                    elements.push(self.value(depth + 1)?);
                }
                Value::List(elements)
            }
            TAG_VECTOR if depth == 0 => {
                let dimension = self.length()?;
                let mut components = Vec::with_capacity(dimension);
                for _ in 0..dimension {
                    components.push(f32::from_le_bytes(self.array()?));
                }
                Value::Vector(components)
            }
            _ => return Err(CoreError::Corrupt("unknown value tag")),
        };
        Ok(value)
    }
}

/// A value borrowed from an encoded row: decoding it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
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
    String(&'a str),
    /// A `bytes` value.
    Bytes(&'a [u8]),
    /// A `timestamp`.
    Timestamp(Timestamp),
    /// A `list<T>`: `count` encoded elements in `bytes`.
    List {
        /// Number of elements.
        count: usize,
        /// The elements' encodings, back to back.
        bytes: &'a [u8],
    },
    /// A `vector<N>`: `dimension` little-endian float32s in `bytes`.
    Vector {
        /// Number of components.
        dimension: usize,
        /// The components' bytes.
        bytes: &'a [u8],
    },
}

impl ValueRef<'_> {
    /// An owned copy.
    pub fn to_value(&self) -> Value {
        match *self {
            Self::Null => Value::Null,
            Self::Bool(value) => Value::Bool(value),
            Self::Int32(value) => Value::Int32(value),
            Self::Int64(value) => Value::Int64(value),
            Self::Float32(value) => Value::Float32(value),
            Self::Float64(value) => Value::Float64(value),
            Self::String(value) => Value::String(value.to_string()),
            Self::Bytes(value) => Value::Bytes(value.to_vec()),
            Self::Timestamp(value) => Value::Timestamp(value),
            Self::List { count, bytes } => {
                let mut reader = Reader { bytes, position: 0 };
                Value::List((0..count).map_while(|_| reader.value(1).ok()).collect())
            }
            Self::Vector { bytes, .. } => Value::Vector(vector_components(bytes).collect()),
        }
    }

    /// The elements of a list value (empty for any other kind).
    pub fn list_elements(&self) -> ListElements<'_> {
        match *self {
            Self::List { count, bytes } => ListElements {
                reader: Reader { bytes, position: 0 },
                remaining: count,
            },
            _ => ListElements {
                reader: Reader {
                    bytes: &[],
                    position: 0,
                },
                remaining: 0,
            },
        }
    }
}

/// The float32 components of a vector value's bytes.
pub fn vector_components(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
}

/// Iterator over the elements of a borrowed list value.
pub struct ListElements<'a> {
    reader: Reader<'a>,
    remaining: usize,
}

impl<'a> Iterator for ListElements<'a> {
    type Item = ValueRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.reader.value_ref(1).ok()
    }
}

/// Finds where each value of an encoded row starts, without decoding any of them, appending
/// one offset per value to `offsets`; returns the number of values. Use [`value_at`] to read
/// a value by its offset.
pub fn index_row(bytes: &[u8], offsets: &mut Vec<u32>) -> Result<usize, CoreError> {
    let mut reader = Reader { bytes, position: 0 };
    let count = reader.varint()? as usize;
    if count > bytes.len() {
        return Err(CoreError::Corrupt("value count larger than the row"));
    }
    for _ in 0..count {
        offsets.push(
            u32::try_from(reader.position)
                .map_err(|_| CoreError::Corrupt("row larger than 4 GiB"))?,
        );
        reader.value_ref(0)?;
    }
    if reader.position != bytes.len() {
        return Err(CoreError::Corrupt("trailing bytes after the last value"));
    }
    Ok(count)
}

/// Reads the value that starts at `offset` (as found by [`index_row`]).
pub fn value_at(bytes: &[u8], offset: u32) -> Result<ValueRef<'_>, CoreError> {
    let mut reader = Reader {
        bytes,
        position: offset as usize,
    };
    reader.value_ref(0)
}

/// Appends an unsigned LEB128 varint.
pub fn write_varint(mut number: u64, out: &mut Vec<u8>) {
    while number >= 0x80 {
        out.push((number as u8) | 0x80);
        number >>= 7;
    }
    out.push(number as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let row = vec![
            Value::Null,
            Value::Bool(true),
            Value::Int32(-7),
            Value::Int64(i64::MAX),
            Value::Float32(1.25),
            Value::Float64(-0.5),
            Value::String("héllo".to_string()),
            Value::Bytes(vec![0, 255, 3]),
            Value::Timestamp(Timestamp(1_700_000_000_123_456)),
            Value::List(vec![Value::Int64(1), Value::Null, Value::Int64(3)]),
            Value::Vector(vec![0.5, -1.0, 2.0]),
        ];
        let encoded = encode_row_to_vec(&row);
        assert_eq!(decode_row(&encoded), Ok(row));
    }

    #[test]
    fn truncated_or_garbage_rows_are_errors_not_panics() {
        let encoded = encode_row_to_vec(&[Value::String("abcdef".to_string()), Value::Int64(9)]);
        for cut in 0..encoded.len() {
            assert!(decode_row(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_row(&[5, 200, 200, 200]).is_err());
        assert!(
            decode_row(&[1, 10, 1, 10, 0]).is_err(),
            "nested lists are refused"
        );
    }

    #[test]
    fn indexed_rows_read_back_every_value() {
        let row = vec![
            Value::String("héllo".to_string()),
            Value::List(vec![Value::Int64(1), Value::Null]),
            Value::Vector(vec![0.5, -1.0]),
            Value::Float64(2.5),
            Value::Bytes(vec![1, 2]),
        ];
        let encoded = encode_row_to_vec(&row);
        let mut offsets = Vec::new();
        assert_eq!(index_row(&encoded, &mut offsets), Ok(row.len()));
        for (offset, expected) in offsets.iter().zip(&row) {
            let value = value_at(&encoded, *offset).map(|value| value.to_value());
            assert_eq!(value.as_ref(), Ok(expected));
        }
        let list = value_at(&encoded, offsets[1]).unwrap_or(ValueRef::Null);
        assert_eq!(
            list.list_elements().collect::<Vec<_>>(),
            vec![ValueRef::Int64(1), ValueRef::Null]
        );
        for cut in 0..encoded.len() {
            assert!(
                index_row(&encoded[..cut], &mut Vec::new()).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn base64_round_trips() {
        for length in 0..10 {
            let bytes: Vec<u8> = (0..length).map(|index| (index * 37) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)), Some(bytes));
        }
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_decode("not*base64"), None);
    }
}
