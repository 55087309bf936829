//! Dense ids for byte keys: a hash index whose keys are kept back to back in one buffer.

use hashbrown::HashTable;

/// Numbers distinct byte keys `0, 1, 2, …` in order of first insertion.
///
/// Every key lives in one shared buffer (no allocation per key), and the index holds one
/// entry of about 24 bytes per key. Callers keep their per-key data in plain vectors indexed
/// by id, which is denser and faster than a map of owned keys.
#[derive(Debug, Default, Clone)]
pub struct KeyIds {
    table: HashTable<usize>,
    spans: Vec<KeySpan>,
    bytes: Vec<u8>,
}

/// Where one key's bytes are in [`KeyIds::bytes`], and its hash (for rehashing).
#[derive(Debug, Clone, Copy)]
struct KeySpan {
    hash: u64,
    start: usize,
    length: usize,
}

fn hash_of(key: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(key)
}

impl KeyIds {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index with room for `keys` keys before it grows.
    pub fn with_capacity(keys: usize) -> Self {
        Self {
            table: HashTable::with_capacity(keys),
            spans: Vec::with_capacity(keys),
            bytes: Vec::new(),
        }
    }

    /// The id of `key`, if it was inserted.
    pub fn get(&self, key: &[u8]) -> Option<usize> {
        let Self {
            table,
            spans,
            bytes,
        } = self;
        table
            .find(hash_of(key), |id| span_bytes(bytes, spans[*id]) == key)
            .copied()
    }

    /// The id of `key`, inserting it when new: `(id, true)` for a new key.
    pub fn insert(&mut self, key: &[u8]) -> (usize, bool) {
        let hash = hash_of(key);
        let Self {
            table,
            spans,
            bytes,
        } = self;
        if let Some(id) = table.find(hash, |id| span_bytes(bytes, spans[*id]) == key) {
            return (*id, false);
        }
        let id = spans.len();
        spans.push(KeySpan {
            hash,
            start: bytes.len(),
            length: key.len(),
        });
        bytes.extend_from_slice(key);
        table.insert_unique(hash, id, |id| spans[*id].hash);
        (id, true)
    }

    /// The bytes of the key numbered `id` (`None` for an id never handed out).
    pub fn key(&self, id: usize) -> Option<&[u8]> {
        self.spans
            .get(id)
            .map(|span| span_bytes(&self.bytes, *span))
    }

    /// Every key, in id order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.spans.iter().map(|span| span_bytes(&self.bytes, *span))
    }

    /// How many keys were inserted.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether no key was inserted.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The bytes the index holds, roughly (its table, spans and key bytes).
    pub fn memory_size(&self) -> usize {
        self.table.capacity() * (std::mem::size_of::<usize>() + 1)
            + self.spans.capacity() * std::mem::size_of::<KeySpan>()
            + self.bytes.capacity()
    }
}

fn span_bytes(bytes: &[u8], span: KeySpan) -> &[u8] {
    &bytes[span.start..span.start + span.length]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_in_insertion_order_and_keys_come_back() {
        let mut ids = KeyIds::new();
        assert_eq!(ids.insert(b"b"), (0, true));
        assert_eq!(ids.insert(b""), (1, true));
        assert_eq!(ids.insert(b"ab"), (2, true));
        assert_eq!(ids.insert(b"b"), (0, false));
        assert_eq!(ids.get(b"ab"), Some(2));
        assert_eq!(ids.get(b"a"), None);
        assert_eq!(ids.key(1), Some(&b""[..]));
        assert_eq!(ids.key(3), None);
        assert_eq!(ids.keys().collect::<Vec<_>>(), vec![&b"b"[..], b"", b"ab"]);
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn many_keys_survive_the_table_growing() {
        let mut ids = KeyIds::with_capacity(4);
        for user in 0..50_000u64 {
            assert_eq!(ids.insert(&user.to_le_bytes()), (user as usize, true));
        }
        for user in (0..50_000u64).rev() {
            assert_eq!(ids.get(&user.to_le_bytes()), Some(user as usize));
        }
        assert_eq!(ids.get(&50_000u64.to_le_bytes()), None);
        assert!(ids.memory_size() >= 50_000 * 8);
    }
}
