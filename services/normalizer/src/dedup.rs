//! Recently seen event ids, to drop Slack's retries of a delivery already handled.
//! Bounded and in memory: after a restart a retry may pass again, which downstream
//! effects tolerate (they are idempotent on the message key).
//!
//! Each id remembers the raw record that first carried it (partition and offset):
//! a Slack retry is a *different* record with the same event id and is dropped; the
//! same record read again (after a rewind of the `normalizer` group, or a partition
//! handed back by a rebalance before its offsets were committed) is not a retry and
//! is normalized again. Records of `slackline replay` (the
//! [`slackline_kafka::headers::REPLAY`] header) never reach this set's verdict.

use std::collections::{HashMap, VecDeque};

/// Where a raw record is: (partition, offset) on the raw topic.
pub(crate) type Coordinates = (i32, i64);

/// A bounded map from event id to the record that first carried it, forgetting the
/// oldest ids first.
pub(crate) struct RecentIds {
    first: HashMap<String, Coordinates>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentIds {
            first: HashMap::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
        }
    }

    /// Whether the record at `at` carrying `id` is a retry of a delivery already
    /// seen: the id is known from another record.
    pub(crate) fn is_retry(&self, id: &str, at: Coordinates) -> bool {
        self.first.get(id).is_some_and(|first| *first != at)
    }

    /// Remembers that the record at `at` carried `id` (the first record is kept).
    pub(crate) fn insert(&mut self, id: String, at: Coordinates) {
        if self.first.contains_key(&id) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.first.remove(&oldest);
            }
        }
        self.first.insert(id.clone(), at);
        self.order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut ids = RecentIds::new(2);
        ids.insert("a".into(), (0, 1));
        ids.insert("b".into(), (0, 2));
        ids.insert("a".into(), (0, 3));
        assert!(ids.is_retry("a", (0, 9)) && ids.is_retry("b", (0, 9)));
        ids.insert("c".into(), (0, 4));
        assert!(!ids.is_retry("a", (0, 9)));
        assert!(ids.is_retry("b", (0, 9)) && ids.is_retry("c", (0, 9)));
    }

    #[test]
    fn the_same_record_read_again_is_not_a_retry() {
        let mut ids = RecentIds::new(8);
        ids.insert("Ev1".into(), (3, 40));
        // Re-read after a rewind: same partition and offset.
        assert!(!ids.is_retry("Ev1", (3, 40)));
        // Slack's retry: another record (another offset, or another partition).
        assert!(ids.is_retry("Ev1", (3, 41)));
        assert!(ids.is_retry("Ev1", (2, 40)));
        // The first record stays the reference.
        ids.insert("Ev1".into(), (3, 41));
        assert!(!ids.is_retry("Ev1", (3, 40)));
        assert!(!ids.is_retry("Never", (0, 0)));
    }
}
