//! Storing finished offsets for the auto-commit, and flow control (pausing
//! partitions whose unfinished work is over the bounds).

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::state::Gate;
use super::Runtime;

impl Runtime {
    pub(super) fn store_offsets(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        let mut any = false;
        for (p, st) in &mut self.partitions {
            // Origins the source has gone past can no longer skip anything (held
            // records, below the position, are only processed when the gate opens).
            if st.gate == Gate::Open && !st.retry_origins.is_empty() {
                let next = st.main.next();
                st.retry_origins
                    .retain(|_, origin| next.is_none_or(|n| *origin >= n));
            }
            for (topic, tracker) in [
                (&self.config.source_topic, &mut st.main),
                (&self.config.retry_topic, &mut st.retry),
            ] {
                if let Some(offset) = tracker.take_store() {
                    any |= tpl
                        .add_partition_offset(topic, *p, Offset::Offset(offset))
                        .is_ok();
                }
            }
        }
        if any {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::debug!(error = %e, "storing offsets");
            }
        }
        self.flow_control();
    }

    /// Pauses and resumes fetching to keep memory bounded (invariant 6 in mod.rs):
    ///
    /// - a source partition with [`RuntimeConfig::max_buffered_per_partition`]
    ///   unfinished records pauses, and resumes at half;
    /// - a source partition pauses while its source records held (held, queued,
    ///   being handled or being produced) reach its share of a fifth of
    ///   [`RuntimeConfig::max_buffered_bytes`] (the fifth over the partitions
    ///   assigned), and resumes at half of it;
    /// - a retry partition pauses the same way on its retry records held.
    ///
    /// A fifth per side, because what librdkafka had fetched and what the polling
    /// thread has already handed over come on top of a pause (both sized from the
    /// bound: the consumer config in mod.rs, the poller's batch bytes), and each
    /// side may be at its peak at the same time. Per partition, so
    /// that a backlog in one partition (a channel whose target is down) pauses that
    /// partition only: the channels of the others keep flowing. A parked key's
    /// unread retry records keep it parked by offset alone (`KeyState::retry_known`),
    /// so pausing the retry side never reorders anything; but while a retry
    /// partition is paused before its gate opened, its source partition waits.
    ///
    /// [`RuntimeConfig::max_buffered_per_partition`]: crate::RuntimeConfig::max_buffered_per_partition
    /// [`RuntimeConfig::max_buffered_bytes`]: crate::RuntimeConfig::max_buffered_bytes
    pub(super) fn flow_control(&mut self) {
        let side_max = self.config.max_buffered_bytes / 5;
        let (mut main_bytes, mut retry_bytes) = (0, 0);
        for st in self.partitions.values() {
            main_bytes += st.main.pending_bytes();
            retry_bytes += st.retry.pending_bytes();
        }
        self.metrics
            .buffered_bytes(&self.config.source_topic, main_bytes);
        self.metrics
            .buffered_bytes(&self.config.retry_topic, retry_bytes);
        let share = side_max / self.partitions.len().max(1);
        let Some(consumer) = &self.consumer else {
            return;
        };
        let max_records = self.config.max_buffered_per_partition;
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        let mut changed = Vec::new();
        for (p, st) in &mut self.partitions {
            st.over_records = hysteresis(st.over_records, st.main.pending_len(), max_records);
            st.main_over_bytes = hysteresis(st.main_over_bytes, st.main.pending_bytes(), share);
            st.retry_over_bytes = hysteresis(st.retry_over_bytes, st.retry.pending_bytes(), share);
            let main = st.over_records || st.main_over_bytes;
            let retry = st.retry_over_bytes;
            for (topic, want, paused) in [
                (&self.config.source_topic, main, &mut st.main_paused),
                (&self.config.retry_topic, retry, &mut st.retry_paused),
            ] {
                if want != *paused {
                    let list = if want { &mut pause } else { &mut resume };
                    list.add_partition(topic, *p);
                    *paused = want;
                    changed.push((topic.clone(), *p, want));
                }
            }
        }
        for (list, paused) in [(&pause, true), (&resume, false)] {
            if list.count() == 0 {
                continue;
            }
            let result = if paused {
                consumer.pause(list)
            } else {
                consumer.resume(list)
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, paused, "pause/resume failed");
            }
        }
        if !changed.is_empty() {
            tracing::debug!(?changed, main_bytes, retry_bytes, "flow control");
        }
    }
}

/// Over at `max`, back under at half of it.
fn hysteresis(over: bool, value: usize, max: usize) -> bool {
    if over {
        value > max / 2
    } else {
        value >= max
    }
}
