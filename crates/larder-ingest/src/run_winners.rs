//! The winning row of each entity within one batch run.

use larder_core::KeyIds;
use larder_online::RowDigest;

/// The best row seen so far for each entity in one batch run, ranked as
/// [`RowDigest`]'s order ranks them: newer event time, then larger content hash.
///
/// A view's transformation may produce several rows of one entity with the same event time,
/// and in any order (parallel scans interleave files). Within one batch the write path keeps
/// the best; this map carries the decision across the run's batches, so that the row that
/// ends up online is the same on every run over the same sources, and the same row a
/// training set picks. It holds one entry per entity of the run (about 56 bytes and the
/// key's bytes, kept back to back in one buffer), which is also the set of entities a full run saw
/// (for `on_missing: delete`).
#[derive(Debug, Default)]
pub struct RunWinners {
    /// Each entity key of the run, numbered.
    keys: KeyIds,
    /// The best row of each entity, by key id.
    digests: Vec<RowDigest>,
}

impl RunWinners {
    /// An empty map, for a new run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers the row `digest` of entity `key`: `true` when no earlier row of the entity in
    /// this run outranks it (it is then the entity's best), `false` when one does.
    pub fn offer(&mut self, key: &[u8], digest: RowDigest) -> bool {
        let (id, new) = self.keys.insert(key);
        if new {
            self.digests.push(digest);
            return true;
        }
        // Ids are dense and each new one pushed its digest, so `id` is in range.
        let best = &mut self.digests[id];
        if *best > digest {
            return false;
        }
        *best = digest;
        true
    }

    /// Whether the run saw entity `key`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys.get(key).is_some()
    }

    /// The entity keys the run saw, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.keys.keys()
    }

    /// How many entities the run saw.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the run saw no entity.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use larder_core::Timestamp;

    use super::*;

    fn digest(seconds: i64, hash: u64) -> RowDigest {
        RowDigest {
            event_timestamp: Timestamp::from_seconds(seconds),
            content_hash: hash,
        }
    }

    #[test]
    fn newer_times_then_larger_hashes_win_in_any_order() {
        let rows = [digest(10, 5), digest(10, 9), digest(9, 99), digest(10, 7)];
        let mut orders = vec![vec![0, 1, 2, 3], vec![3, 2, 1, 0], vec![2, 0, 3, 1]];
        for order in orders.drain(..) {
            let mut winners = RunWinners::new();
            let mut last_accepted = None;
            for index in order {
                if winners.offer(b"k", rows[index]) {
                    last_accepted = Some(rows[index]);
                }
            }
            assert_eq!(last_accepted, Some(digest(10, 9)));
            assert!(winners.contains(b"k"));
            assert!(!winners.contains(b"other"));
            assert_eq!(winners.len(), 1);
        }
    }

    #[test]
    fn many_entities_keep_their_own_best_row() {
        let mut winners = RunWinners::new();
        for round in 0..2u64 {
            for user in 0..20_000u64 {
                let key = user.to_le_bytes();
                assert!(winners.offer(&key, digest(10, user + round)));
                assert!(!winners.offer(&key, digest(10, user)) || round == 0);
            }
        }
        assert_eq!(winners.len(), 20_000);
        assert!(winners.contains(&19_999u64.to_le_bytes()));
        assert!(!winners.contains(&20_000u64.to_le_bytes()));
        assert!(!winners.contains(&[1, 2, 3]));
    }
}
