//! Recently seen event ids, to drop Slack's retries of a delivery already handled.
//! Bounded and in memory: after a restart a retry may pass again, which downstream
//! effects tolerate (they are idempotent on the message key).

use std::collections::{HashSet, VecDeque};

/// A bounded set that forgets the oldest ids first.
pub(crate) struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentIds {
            set: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub(crate) fn insert(&mut self, id: String) {
        if self.set.contains(&id) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut ids = RecentIds::new(2);
        ids.insert("a".into());
        ids.insert("b".into());
        ids.insert("a".into());
        assert!(ids.contains("a") && ids.contains("b"));
        ids.insert("c".into());
        assert!(!ids.contains("a"));
        assert!(ids.contains("b") && ids.contains("c"));
    }
}
