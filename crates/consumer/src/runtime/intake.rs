//! What the polling thread delivers: assignments, source records and retry records,
//! and the gate that holds a source partition until its retry partition is read.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};

use super::state::{Gate, PartitionState, RetryItem};
use super::{headers_of, instant_at, Runtime};
use crate::poller::{record_bytes, Input};
use crate::retry_headers;
use crate::{ConsumerError, Event};

impl Runtime {
    pub(super) async fn on_input(&mut self, input: Input) {
        match input {
            Input::Records(records) => {
                if self.shutdown_deadline.is_some() {
                    return;
                }
                for m in records {
                    if m.topic() == self.config.source_topic {
                        self.on_main_record(&m).await;
                    } else if m.topic() == self.config.retry_topic {
                        self.on_retry_record(&m).await;
                    }
                }
                self.flow_control();
            }
            Input::Assign(partitions) => self.on_assign(partitions),
            Input::Revoke { partitions, reply } => self.on_revoke(partitions, reply),
        }
    }

    pub(super) fn on_assign(&mut self, partitions: Vec<(String, i32)>) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let mut main = BTreeSet::new();
        let mut retry = BTreeSet::new();
        for (topic, p) in &partitions {
            if *topic == self.config.source_topic {
                main.insert(*p);
            } else if *topic == self.config.retry_topic {
                retry.insert(*p);
            }
        }
        if main != retry {
            self.fail(ConsumerError::UnpairedAssignment(format!(
                "{} partitions {main:?} but {} partitions {retry:?}",
                self.config.source_topic, self.config.retry_topic
            )));
            return;
        }
        tracing::info!(group = self.config.group_id, partitions = ?main, "partitions assigned");
        // A revoke still open here is one whose callback gave up waiting for the
        // loop's answer (the loop was held up) and let librdkafka go on: settle it
        // now, so a partition given back to this member starts from fresh state
        // instead of staying in its draining state (which drops its records).
        if self.revoke.is_some() {
            tracing::warn!(
                group = self.config.group_id,
                "assignment while a revoke was unanswered; dropping the revoked state"
            );
            self.complete_revoke();
        }
        // Partitions this member keeps (incremental rebalances) keep their state.
        main.retain(|p| !self.partitions.contains_key(p));
        // A pause (flow control) may outlive a revocation in librdkafka: start clean.
        if let Some(consumer) = &self.consumer {
            let mut tpl = TopicPartitionList::new();
            for p in &main {
                tpl.add_partition(&self.config.source_topic, *p);
                tpl.add_partition(&self.config.retry_topic, *p);
            }
            if let Err(e) = consumer.resume(&tpl) {
                tracing::debug!(error = %e, "resuming assigned partitions");
            }
        }
        for p in main {
            self.next_epoch += 1;
            let epoch = self.next_epoch;
            self.partitions.insert(p, PartitionState::new(epoch));
            self.spawn_probe(p, epoch, Duration::ZERO);
        }
        self.flow_control();
    }

    pub(super) async fn on_main_record(&mut self, m: &OwnedMessage) {
        let p = m.partition();
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        if st.draining || !st.main.received(m.offset(), record_bytes(m)) {
            return;
        }
        let event = Event {
            topic: m.topic().to_owned(),
            partition: p,
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            headers: headers_of(m),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            attempt: 0,
        };
        if st.gate == Gate::Open {
            self.process_main(p, event).await;
        } else {
            st.held.push_back(event);
        }
    }

    pub(super) async fn on_retry_record(&mut self, m: &OwnedMessage) {
        let p = m.partition();
        let source_topic = self.config.source_topic.clone();
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let offset = m.offset();
        if st.draining || !st.retry.received(offset, record_bytes(m)) {
            return;
        }
        let d = retry_headers::decode(m.headers());
        let event = Event {
            topic: d.topic.unwrap_or_else(|| m.topic().to_owned()),
            partition: d.partition.unwrap_or(p),
            offset: d.offset.unwrap_or(offset),
            timestamp_ms: d.timestamp_ms,
            key: m.key().map(<[u8]>::to_vec),
            headers: d.headers,
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            attempt: d.meta.attempt,
        };
        // A source record already moved here (by a previous owner, or before a
        // restart) must not be handled or moved again when it comes from the source:
        // remember its offset unless the source record was already processed. While
        // the gate is closed, received source records are held, not processed yet.
        // And the key's source records before it were finished before it came here
        // (one record of a key at a time): remember how far that goes, per key.
        let key = event.key.clone();
        if event.topic == source_topic
            && event.partition == p
            && (st.gate != Gate::Open || st.main.next().is_none_or(|n| event.offset >= n))
        {
            st.in_retry.insert(event.offset);
            let origin = st.retry_origins.entry(key.clone()).or_insert(event.offset);
            *origin = (*origin).max(event.offset);
        }
        let ks = st.keys.entry(key.clone()).or_default();
        ks.retry_known.insert(offset);
        ks.retry_q.push_back(RetryItem {
            event,
            retry_offset: offset,
            first_error: d.meta.first_error,
            last_error: d.meta.last_error,
            due: instant_at(d.meta.not_before_ms),
        });
        if let Gate::Rebuilding(until) = st.gate {
            if offset + 1 >= until {
                self.open_gate(p).await;
            }
        }
        self.refresh_parked(p, &key);
        self.schedule(p, &key).await;
    }

    /// The retry partition is read up to the watermark seen at assignment: every
    /// parked key is known, so the held source records may go.
    pub(super) async fn open_gate(&mut self, p: i32) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        st.gate = Gate::Open;
        let held = std::mem::take(&mut st.held);
        tracing::debug!(
            partition = p,
            held = held.len(),
            "retry partition read; source partition opens"
        );
        for event in held {
            self.process_main(p, event).await;
        }
    }

    /// A source record whose gate is open: skip it if it is already in the retry
    /// topic or was finished before a later record of its key went there (both
    /// known from the retry partition's original-offset headers), move it behind
    /// its key if the key is parked, else queue it for the key.
    pub(super) async fn process_main(&mut self, p: i32, event: Event) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        while st.in_retry.first().is_some_and(|&o| o < event.offset) {
            st.in_retry.pop_first();
        }
        let key = event.key.clone();
        let skip = if st.in_retry.remove(&event.offset) {
            Some("in_retry")
        } else if st
            .retry_origins
            .get(&key)
            .is_some_and(|&origin| event.offset < origin)
        {
            // Finished before a later record of its key went to the retry topic
            // (handled or dead-lettered by a previous owner, above the commit point):
            // running it now would apply it after that later record.
            Some("finished_before_moved")
        } else {
            None
        };
        if let Some(reason) = skip {
            tracing::debug!(
                partition = p,
                offset = event.offset,
                reason,
                "replayed source record skipped"
            );
            st.main.finished(event.offset);
            self.metrics.skipped(reason);
            return;
        }
        let ks = st.keys.entry(key.clone()).or_default();
        if ks.is_parked()
            && ks.main_q.is_empty()
            && !ks.busy_main
            && ks.producing == 0
            && ks.dlq_pending == 0
        {
            self.forward(p, event).await;
        } else {
            ks.main_q.push_back(event);
            self.schedule(p, &key).await;
        }
    }
}
