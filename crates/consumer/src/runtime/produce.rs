//! Producing to the retry and DLQ topics, and what an acknowledgement finishes.
//!
//! A record that is too large for its topic (the producer's `message.max.bytes`, or
//! the topic's `max.message.bytes`) can never be produced, and stopping on it would
//! meet it again after every restart: a crash loop for every key of the group. So a
//! DLQ record that would not fit is written without the payload (and, if still too
//! large, without the headers) and says so; a record too large for the retry topic
//! is dead-lettered that way instead. The archive keeps the original
//! (`archive-key` header, kept in the DLQ record). Any other produce failure stops
//! the runtime (invariant 5 in `mod.rs`).

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::state::{Completion, DeadLetter, ProduceFailure, Produced, TaskInfo};
use super::{now_ms, Runtime};
use crate::retry_headers::{self, RetryMeta};
use crate::{ConsumerError, DlqRecord, Event};

/// Room left in a record for Kafka's own framing and the record's headers when a
/// DLQ value is fitted under the producer's `message.max.bytes`.
const RECORD_OVERHEAD: usize = 16 * 1024;

impl Runtime {
    pub(super) async fn on_produced(
        &mut self,
        p: i32,
        epoch: u64,
        what: Produced,
        result: Result<(i32, i64), ProduceFailure>,
        topic: String,
    ) {
        let Some(st) = self.current(p, epoch) else {
            if let Err(failure) = result {
                tracing::warn!(
                    topic,
                    reason = failure.reason,
                    "produce for a revoked partition failed"
                );
            }
            return;
        };
        st.produces_pending -= 1;
        let at = match result {
            Ok(at) => at,
            Err(failure) => {
                self.on_produce_failed(p, what, failure, topic).await;
                return;
            }
        };
        match what {
            Produced::ToRetry { event, .. } => self.on_moved_to_retry(p, &event, at.1).await,
            Produced::ToDlq(letter) => self.on_dead_lettered(p, *letter, at).await,
        }
    }

    async fn on_moved_to_retry(&mut self, p: i32, event: &Event, dest_offset: i64) {
        let key = event.key.clone();
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        st.main.finished(event.offset);
        let received = st.retry.next().is_some_and(|n| dest_offset < n);
        let ks = st.keys.entry(key.clone()).or_default();
        ks.producing = ks.producing.saturating_sub(1);
        // Already received back (and maybe finished): the receive counted it.
        if !received {
            ks.retry_known.insert(dest_offset);
        }
        self.refresh_parked(p, &key);
        self.schedule(p, &key).await;
    }

    async fn on_dead_lettered(&mut self, p: i32, letter: DeadLetter, (dlq_p, dlq_o): (i32, i64)) {
        let key = letter.event.key.clone();
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        if letter.from_retry {
            st.retry.finished(letter.offset);
        } else {
            st.main.finished(letter.offset);
        }
        if let Some(ks) = st.keys.get_mut(&key) {
            ks.dlq_pending = ks.dlq_pending.saturating_sub(1);
            if letter.from_retry {
                ks.retry_known.remove(&letter.offset);
            }
        }
        self.metrics.dead_lettered();
        if let Some(end) = usize::try_from(dlq_p)
            .ok()
            .and_then(|i| self.dlq_ends.get_mut(i))
        {
            *end = (*end).max(dlq_o + 1);
            self.metrics.dlq_end_offset(self.dlq_ends.iter().sum());
        }
        let event = &letter.event;
        // The one log line of a DLQ record, in the fields every DLQ writer uses (the
        // normalizer's too): Sentry reporting turns them into tags.
        tracing::error!(
            group = self.config.group_id,
            event_id = event
                .header_str(slackline_kafka::headers::EVENT_ID)
                .unwrap_or_default(),
            channel = %event.key_str(),
            archive_key = event
                .header_str(slackline_kafka::headers::ARCHIVE_KEY)
                .unwrap_or_default(),
            topic = event.topic,
            partition = event.partition,
            offset = event.offset,
            reason = letter.error,
            attempts = letter.attempts,
            payload_omitted = letter.stripped,
            dlq_partition = dlq_p,
            dlq_offset = dlq_o,
            "record sent to the DLQ"
        );
        self.refresh_parked(p, &key);
        self.schedule(p, &key).await;
    }

    async fn on_produce_failed(
        &mut self,
        p: i32,
        what: Produced,
        failure: ProduceFailure,
        topic: String,
    ) {
        match what {
            Produced::ToRetry { event, meta } if failure.too_large => {
                let key = event.key.clone();
                if let Some(ks) = self
                    .partitions
                    .get_mut(&p)
                    .and_then(|st| st.keys.get_mut(&key))
                {
                    ks.producing = ks.producing.saturating_sub(1);
                }
                let error = match &meta.last_error {
                    Some(e) => format!("{e}; then too large for {topic}: {}", failure.reason),
                    None => format!(
                        "queued behind its key, but too large for {topic}: {}",
                        failure.reason
                    ),
                };
                tracing::warn!(
                    topic,
                    offset = event.offset,
                    reason = failure.reason,
                    "record too large for the retry topic; dead-lettering it"
                );
                let letter = DeadLetter {
                    from_retry: false,
                    offset: event.offset,
                    event: *event,
                    error,
                    retryable: meta.attempt > 0,
                    attempts: meta.attempt,
                    stripped: false,
                };
                self.dead_letter(p, letter).await;
                self.refresh_parked(p, &key);
            }
            Produced::ToDlq(mut letter) if failure.too_large && !letter.stripped => {
                tracing::warn!(
                    topic,
                    offset = letter.event.offset,
                    reason = failure.reason,
                    "DLQ record too large for its topic; writing it without the payload"
                );
                if let Some(ks) = self
                    .partitions
                    .get_mut(&p)
                    .and_then(|st| st.keys.get_mut(&letter.event.key))
                {
                    ks.dlq_pending = ks.dlq_pending.saturating_sub(1);
                }
                letter.stripped = true;
                self.dead_letter(p, *letter).await;
            }
            what => {
                let partition = matches!(what, Produced::ToRetry { .. }).then_some(p);
                self.fail(ConsumerError::Produce {
                    topic,
                    partition,
                    reason: failure.reason,
                });
            }
        }
    }

    /// Enqueues a record, waiting while the producer's queue is full (order matters,
    /// so a record is never skipped).
    pub(super) async fn enqueue(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<DeliveryFuture, ProduceFailure> {
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(failure(&e)),
            }
        }
    }

    /// Moves a source record of a parked key behind it in the retry topic.
    pub(super) async fn forward(&mut self, p: i32, event: Event) {
        let meta = RetryMeta {
            attempt: 0,
            not_before_ms: now_ms(),
            first_error: None,
            last_error: None,
        };
        self.produce_retry(p, event, meta).await;
    }

    /// Produces `event` to retry partition `p` (the same number as its source
    /// partition, explicitly, not by key hash); the source offset finishes on ack.
    pub(super) async fn produce_retry(&mut self, p: i32, event: Event, meta: RetryMeta) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let epoch = st.epoch;
        let key = event.key.clone();
        let ks = st.keys.entry(key.clone()).or_default();
        ks.producing += 1;
        self.refresh_parked(p, &key);
        let headers = retry_headers::encode(&event, &meta);
        let topic = self.config.retry_topic.clone();
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
            .partition(p)
            .payload(&event.payload)
            .headers(headers);
        if let Some(k) = &event.key {
            record = record.key(k.as_slice());
        }
        let enqueued = self.enqueue(record).await;
        let what = Produced::ToRetry {
            event: Box::new(event),
            meta,
        };
        self.track_produce(p, epoch, topic, what, enqueued);
    }

    /// Writes the DLQ record for `letter`; its offset finishes on ack, and its key
    /// waits until then (invariant 1 in `mod.rs`).
    pub(super) async fn dead_letter(&mut self, p: i32, mut letter: DeadLetter) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let epoch = st.epoch;
        st.keys
            .entry(letter.event.key.clone())
            .or_default()
            .dlq_pending += 1;
        let event = &letter.event;
        let mut record = DlqRecord::new(
            &self.config.group_id,
            event,
            &letter.error,
            letter.retryable,
            letter.attempts,
        );
        let budget = self.max_record_bytes.saturating_sub(RECORD_OVERHEAD);
        let mut value = record.to_json();
        if letter.stripped || value.len() > budget {
            letter.stripped = true;
            record.omit_payload(value.len(), budget);
            value = record.to_json();
        }
        // The original headers go along as Kafka headers too (Kafka UI shows them),
        // except when the record had to be cut down.
        let kept: Vec<&(String, Option<Vec<u8>>)> = if letter.stripped {
            event
                .headers
                .iter()
                .filter(|(k, _)| DlqRecord::KEPT_HEADERS.contains(&k.as_str()))
                .collect()
        } else {
            event.headers.iter().collect()
        };
        let headers = kept.into_iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(rdkafka::message::Header {
                key: k,
                value: v.as_deref(),
            })
        });
        let topic = self.config.dlq_topic.clone();
        let mut produced = FutureRecord::<[u8], [u8]>::to(&topic)
            .payload(&value)
            .headers(headers);
        if let Some(k) = &event.key {
            produced = produced.key(k.as_slice());
        }
        let enqueued = self.enqueue(produced).await;
        self.track_produce(p, epoch, topic, Produced::ToDlq(Box::new(letter)), enqueued);
    }

    pub(super) fn track_produce(
        &mut self,
        p: i32,
        epoch: u64,
        topic: String,
        what: Produced,
        enqueued: Result<DeliveryFuture, ProduceFailure>,
    ) {
        let Some(st) = self.current(p, epoch) else {
            return;
        };
        st.produces_pending += 1;
        let abort = self.tasks.spawn(async move {
            let result = match enqueued {
                Ok(future) => match future.await {
                    Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
                    Ok(Err((e, _))) => Err(failure(&e)),
                    Err(_) => Err(ProduceFailure {
                        reason: "the producer was dropped".to_owned(),
                        too_large: false,
                    }),
                },
                Err(e) => Err(e),
            };
            Completion::Produced {
                p,
                epoch,
                what,
                result,
                topic,
            }
        });
        self.task_info
            .insert(abort.id(), TaskInfo { p, handler: false });
    }
}

fn failure(e: &KafkaError) -> ProduceFailure {
    let too_large = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    );
    ProduceFailure {
        reason: e.to_string(),
        too_large,
    }
}
