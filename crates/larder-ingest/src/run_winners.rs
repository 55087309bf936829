//! The winning row of each entity within one batch run.

use std::collections::HashMap;

use larder_online::RowDigest;

/// The best row seen so far for each entity in one batch run, ranked as
/// [`RowDigest`]'s order ranks them: newer event time, then larger content hash.
///
/// A view's transformation may produce several rows of one entity with the same event time,
/// and in any order (parallel scans interleave files). Within one batch the write path keeps
/// the best; this map carries the decision across the run's batches, so that the row that
/// ends up online is the same on every run over the same sources, and the same row a
/// training set picks. It holds one entry per entity of the run (about 60 bytes each),
/// which is also the set of entities a full run saw (for `on_missing: delete`).
#[derive(Debug, Default)]
pub struct RunWinners {
    best: HashMap<Box<[u8]>, RowDigest>,
}

impl RunWinners {
    /// An empty map, for a new run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers the row `digest` of entity `key`: `true` when no earlier row of the entity in
    /// this run outranks it (it is then the entity's best), `false` when one does.
    pub fn offer(&mut self, key: &[u8], digest: RowDigest) -> bool {
        match self.best.get_mut(key) {
            Some(best) if *best > digest => false,
            Some(best) => {
                *best = digest;
                true
            }
            None => {
                self.best.insert(Box::from(key), digest);
                true
            }
        }
    }

    /// Whether the run saw entity `key`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.best.contains_key(key)
    }

    /// How many entities the run saw.
    pub fn len(&self) -> usize {
        self.best.len()
    }

    /// Whether the run saw no entity.
    pub fn is_empty(&self) -> bool {
        self.best.is_empty()
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
}
