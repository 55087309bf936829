//! Entity keys: the identity of one entity of a feature view.

use std::fmt;

use crate::codec::write_varint;
use crate::error::CoreError;
use crate::value::{Value, ValueType};

/// The canonical byte encoding of an entity's join key values, in the order of the feature
/// view's join keys. Two keys are equal exactly when their join key values are equal.
///
/// Each component is a tag byte and its payload: integers as 8 big-endian bytes (int32 is
/// widened, so `1` is the same key whether it arrived as int32 or int64), strings as a varint
/// length and UTF-8 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey(Vec<u8>);

const KEY_TAG_INT: u8 = 1;
const KEY_TAG_STRING: u8 = 2;

impl EntityKey {
    /// Encodes join key values. Only integers and strings can be join key values.
    pub fn from_values(values: &[Value]) -> Result<Self, CoreError> {
        let mut encoded = Vec::with_capacity(values.len() * 9);
        Self::encode_values_into(values, &mut encoded)?;
        Ok(Self(encoded))
    }

    /// A single-column integer key, without building a [`Value`].
    pub fn from_int(number: i64) -> Self {
        let mut encoded = Vec::with_capacity(9);
        push_int(number, &mut encoded);
        Self(encoded)
    }

    /// A single-column string key, without building a [`Value`].
    pub fn from_str_key(text: &str) -> Self {
        let mut encoded = Vec::with_capacity(text.len() + 2);
        push_str(text, &mut encoded);
        Self(encoded)
    }

    /// Appends the encoding of join key values to `out` (what [`EntityKey::from_values`]
    /// would hold), without allocating a key.
    pub fn encode_values_into(values: &[Value], out: &mut Vec<u8>) -> Result<(), CoreError> {
        for value in values {
            match value {
                Value::Int32(number) => push_int(i64::from(*number), out),
                Value::Int64(number) => push_int(*number, out),
                Value::String(text) => push_str(text, out),
                other => {
                    return Err(CoreError::UnsupportedJoinKeyType(
                        other.kind_name().to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Appends the encoding of a single-column integer key to `out`.
    pub fn encode_int_into(number: i64, out: &mut Vec<u8>) {
        push_int(number, out);
    }

    /// Appends the encoding of a single-column string key to `out`.
    pub fn encode_str_into(text: &str, out: &mut Vec<u8>) {
        push_str(text, out);
    }

    /// Wraps bytes previously produced by [`EntityKey::as_bytes`].
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The canonical encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes the join key values (integers come back as int64).
    pub fn values(&self) -> Result<Vec<Value>, CoreError> {
        let mut values = Vec::new();
        let mut position = 0;
        let bytes = &self.0;
        while position < bytes.len() {
            let tag = bytes[position];
            position += 1;
            match tag {
                KEY_TAG_INT => {
                    let slice = bytes
                        .get(position..position + 8)
                        .ok_or(CoreError::Corrupt("entity key ends inside an integer"))?;
                    let mut array = [0u8; 8];
                    array.copy_from_slice(slice);
                    values.push(Value::Int64((u64::from_be_bytes(array) ^ (1 << 63)) as i64));
                    position += 8;
                }
                KEY_TAG_STRING => {
                    let mut length: usize = 0;
                    let mut shift = 0;
                    loop {
                        let byte = *bytes
                            .get(position)
                            .ok_or(CoreError::Corrupt("entity key ends inside a length"))?;
                        position += 1;
                        length |= usize::from(byte & 0x7f) << shift;
                        shift += 7;
                        if byte & 0x80 == 0 || shift > 56 {
                            break;
                        }
                    }
                    let slice = bytes
                        .get(position..position + length)
                        .ok_or(CoreError::Corrupt("entity key ends inside a string"))?;
                    let text = std::str::from_utf8(slice)
                        .map_err(|_| CoreError::Corrupt("entity key string is not UTF-8"))?;
                    values.push(Value::String(text.to_string()));
                    position += length;
                }
                _ => return Err(CoreError::Corrupt("unknown entity key tag")),
            }
        }
        Ok(values)
    }
}

impl std::borrow::Borrow<[u8]> for EntityKey {
    /// Maps keyed by [`EntityKey`] can be searched with the bytes of a key
    /// ([`EntityKeyList::get`]); both hash and compare like the bytes.
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// Byte strings packed end to end in one buffer, with one end offset each: a batch of
/// thousands of small values in two allocations instead of one per value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackedBytes {
    bytes: Vec<u8>,
    /// The end offset of each item in `bytes`.
    ends: Vec<usize>,
}

impl PackedBytes {
    /// Room for `items` items of `bytes` bytes in total.
    pub fn with_capacity(items: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(items),
        }
    }

    /// Appends an item.
    pub fn push(&mut self, item: &[u8]) {
        self.bytes.extend_from_slice(item);
        self.ends.push(self.bytes.len());
    }

    /// Appends an item written by `write` straight into the buffer. If `write` fails, nothing
    /// is appended.
    pub fn push_with<Failure>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let start = self.bytes.len();
        match write(&mut self.bytes) {
            Ok(()) => {
                self.ends.push(self.bytes.len());
                Ok(())
            }
            Err(failure) => {
                self.bytes.truncate(start);
                Err(failure)
            }
        }
    }

    /// Item `index`; empty for an index out of range.
    pub fn get(&self, index: usize) -> &[u8] {
        let Some(&end) = self.ends.get(index) else {
            return &[];
        };
        let start = index
            .checked_sub(1)
            .map_or(0, |previous| self.ends[previous]);
        &self.bytes[start..end]
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no item.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The items, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|index| self.get(index))
    }
}

/// Many entity keys packed in one buffer: what a batch of thousands of rows carries instead
/// of one allocation per key. Keys keep their insertion order and may repeat.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EntityKeyList(PackedBytes);

impl EntityKeyList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty list with room for `keys` keys of `bytes` bytes in total.
    pub fn with_capacity(keys: usize, bytes: usize) -> Self {
        Self(PackedBytes::with_capacity(keys, bytes))
    }

    /// Appends a key given by its canonical bytes ([`EntityKey::as_bytes`]).
    pub fn push_bytes(&mut self, key: &[u8]) {
        self.0.push(key);
    }

    /// Appends a key written by `encode` (one of the `EntityKey::encode_*_into` functions)
    /// straight into the list's buffer. If `encode` fails, the list is left unchanged.
    pub fn push_with<Failure>(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.0.push_with(encode)
    }

    /// The canonical bytes of key `index`; empty for an index out of range.
    pub fn get(&self, index: usize) -> &[u8] {
        self.0.get(index)
    }

    /// Key `index` as an owned [`EntityKey`].
    pub fn key(&self, index: usize) -> EntityKey {
        EntityKey(self.get(index).to_vec())
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list holds no key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys' bytes, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.0.iter()
    }
}

impl<'key> FromIterator<&'key EntityKey> for EntityKeyList {
    fn from_iter<Keys: IntoIterator<Item = &'key EntityKey>>(keys: Keys) -> Self {
        let mut list = Self::new();
        for key in keys {
            list.push_bytes(key.as_bytes());
        }
        list
    }
}

impl fmt::Debug for EntityKeyList {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries((0..self.len()).map(|index| self.key(index)))
            .finish()
    }
}

fn push_int(number: i64, out: &mut Vec<u8>) {
    out.push(KEY_TAG_INT);
    // Flip the sign bit so that byte order matches numeric order.
    out.extend_from_slice(&((number as u64) ^ (1 << 63)).to_be_bytes());
}

fn push_str(text: &str, out: &mut Vec<u8>) {
    out.push(KEY_TAG_STRING);
    write_varint(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// Checks that a declared join key type can identify entities.
pub fn check_join_key_type(value_type: &ValueType) -> Result<(), CoreError> {
    if value_type.is_join_key_type() {
        Ok(())
    } else {
        Err(CoreError::UnsupportedJoinKeyType(value_type.to_string()))
    }
}

impl fmt::Debug for EntityKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "EntityKey({self})")
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.values() {
            Ok(values) => {
                for (index, value) in values.iter().enumerate() {
                    if index > 0 {
                        formatter.write_str(",")?;
                    }
                    match value {
                        Value::Int64(number) => write!(formatter, "{number}")?,
                        Value::String(text) => write!(formatter, "{text:?}")?,
                        other => write!(formatter, "{other:?}")?,
                    }
                }
                Ok(())
            }
            Err(_) => write!(formatter, "<{} corrupt bytes>", self.0.len()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_lists_pack_keys_in_order_and_roll_back_failed_pushes() {
        let mut list = EntityKeyList::new();
        list.push_with(|out| {
            EntityKey::encode_int_into(7, out);
            Ok::<_, CoreError>(())
        })
        .unwrap();
        let failed = list.push_with(|out| {
            EntityKey::encode_values_into(&[Value::Int64(1), Value::Bool(true)], out)
        });
        assert!(failed.is_err());
        list.push_bytes(EntityKey::from_str_key("fr").as_bytes());
        list.push_bytes(EntityKey::from_int(7).as_bytes());
        assert_eq!(list.len(), 3);
        assert_eq!(list.key(0), EntityKey::from_int(7));
        assert_eq!(list.key(1), EntityKey::from_str_key("fr"));
        assert_eq!(list.get(2), list.get(0));
        assert!(list.get(3).is_empty());
        let by_key: std::collections::HashMap<EntityKey, u32> =
            [(EntityKey::from_str_key("fr"), 1)].into_iter().collect();
        assert_eq!(by_key.get(list.get(1)), Some(&1));
        assert_eq!(by_key.get(list.get(0)), None);
        let collected: EntityKeyList = [EntityKey::from_int(7)].iter().collect();
        assert_eq!(collected.iter().collect::<Vec<_>>(), vec![list.get(0)]);
    }

    #[test]
    fn keys_round_trip_and_widen_int32() {
        let key = EntityKey::from_values(&[Value::Int64(-5), Value::String("fr".to_string())])
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            key.values(),
            Ok(vec![Value::Int64(-5), Value::String("fr".to_string())])
        );
        assert_eq!(
            EntityKey::from_values(&[Value::Int32(7)]),
            Ok(EntityKey::from_int(7))
        );
        assert_eq!(
            EntityKey::from_values(&[Value::String("x".into())]),
            Ok(EntityKey::from_str_key("x"))
        );
        assert!(EntityKey::from_values(&[Value::Float64(1.0)]).is_err());
        assert!(EntityKey::from_int(-1) < EntityKey::from_int(0));
        assert_eq!(key.to_string(), "-5,\"fr\"");
    }
}
