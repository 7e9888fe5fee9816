//! Which offset of a partition may be stored: the lowest offset below which every
//! received record is finished. A record is finished when its handler succeeded, or
//! it was handed to the retry or DLQ topic and that produce was acknowledged, or it
//! was skipped as already present in the retry topic.

use std::collections::BTreeMap;

/// The received-but-unfinished offsets of one partition, for one assignment.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    /// Unfinished offsets, with the bytes each record holds in memory until then.
    pending: BTreeMap<i64, usize>,
    /// The sum of `pending`'s bytes.
    bytes: usize,
    /// One past the highest received offset (the consumer's position).
    next: Option<i64>,
    stored: Option<i64>,
}

impl OffsetTracker {
    /// Registers a received record; false for an offset already received in this
    /// assignment (a redelivery after pause/resume), which must be ignored.
    /// `bytes` is what the record holds in memory until it is finished.
    pub(crate) fn received(&mut self, offset: i64, bytes: usize) -> bool {
        if self.next.is_some_and(|n| offset < n) {
            return false;
        }
        if let Some(old) = self.pending.insert(offset, bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        self.next = Some(offset + 1);
        true
    }

    /// Marks a record finished.
    pub(crate) fn finished(&mut self, offset: i64) {
        if let Some(bytes) = self.pending.remove(&offset) {
            self.bytes -= bytes;
        }
    }

    /// Bytes of the received records not finished yet.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// The consumer's position: one past the last received offset.
    pub(crate) fn next(&self) -> Option<i64> {
        self.next
    }

    /// Received records not finished yet.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The offset to commit: the lowest unfinished one, or the position when all
    /// received records are finished; `None` before anything was received.
    pub(crate) fn low_water(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next)
    }

    /// The low water, if it moved since the last call.
    pub(crate) fn take_store(&mut self) -> Option<i64> {
        let low = self.low_water()?;
        if self.stored.is_some_and(|s| s >= low) {
            return None;
        }
        self.stored = Some(low);
        Some(low)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_below_the_first_unfinished_offset() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.take_store(), None);
        for o in 10..15 {
            assert!(t.received(o, 100));
        }
        assert!(!t.received(12, 100), "redelivery is ignored");
        assert_eq!(t.pending_bytes(), 500, "a redelivery is not counted twice");
        t.finished(11);
        t.finished(12);
        assert_eq!(t.take_store(), Some(10));
        assert_eq!(t.take_store(), None, "unchanged");
        t.finished(10);
        assert_eq!(t.take_store(), Some(13));
        t.finished(14);
        assert_eq!(t.low_water(), Some(13));
        t.finished(13);
        assert_eq!(t.take_store(), Some(15));
        assert_eq!(t.pending_bytes(), 0);
        assert!(t.received(20, 7), "gaps (compaction) are fine");
        assert_eq!(t.low_water(), Some(20));
        assert_eq!(t.pending_len(), 1);
        assert_eq!(t.pending_bytes(), 7);
        assert_eq!(t.next(), Some(21));
    }
}
