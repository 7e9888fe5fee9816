//! Storing finished offsets for the auto-commit, and flow control (pausing
//! partitions whose unfinished work is over the bounds).

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::Runtime;

impl Runtime {
    pub(super) fn store_offsets(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        let mut any = false;
        for (p, st) in &mut self.partitions {
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
        let ps: Vec<i32> = self.partitions.keys().copied().collect();
        for p in ps {
            self.flow_control(p);
        }
    }

    /// Pauses a source partition with too many unfinished records; resumes it at half.
    pub(super) fn flow_control(&mut self, p: i32) {
        let (Some(consumer), Some(st)) = (&self.consumer, self.partitions.get_mut(&p)) else {
            return;
        };
        let max = self.config.max_buffered_per_partition;
        let pending = st.main.pending_len();
        let change = if !st.paused && pending >= max {
            Some(true)
        } else if st.paused && pending <= max / 2 {
            Some(false)
        } else {
            None
        };
        let Some(pause) = change else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.source_topic, p);
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                st.paused = pause;
                tracing::debug!(partition = p, pending, pause, "flow control");
            }
            Err(e) => tracing::warn!(error = %e, partition = p, "pause/resume failed"),
        }
    }
}
