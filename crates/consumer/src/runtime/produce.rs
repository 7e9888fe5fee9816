//! Producing to the retry and DLQ topics, and what an acknowledgement finishes.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::state::{Completion, KeyState, Produced, TaskInfo};
use super::{now_ms, Runtime};
use crate::retry_headers::{self, RetryMeta};
use crate::{ConsumerError, DlqRecord, Event};

impl Runtime {
    pub(super) fn on_produced(
        &mut self,
        p: i32,
        epoch: u64,
        what: Produced,
        result: Result<(i32, i64), String>,
        topic: String,
    ) {
        let metrics = self.metrics.clone();
        let group = self.config.group_id.clone();
        let Some(st) = self.current(p, epoch) else {
            if let Err(reason) = result {
                tracing::warn!(topic, reason, "produce for a revoked partition failed");
            }
            return;
        };
        st.produces_pending -= 1;
        let (dest_partition, dest_offset) = match result {
            Ok(at) => at,
            Err(reason) => {
                let partition = matches!(what, Produced::ToRetry { .. }).then_some(p);
                self.fail(ConsumerError::Produce {
                    topic,
                    partition,
                    reason,
                });
                return;
            }
        };
        match what {
            Produced::ToRetry { key, main_offset } => {
                st.main.finished(main_offset);
                let received = st.retry.next().is_some_and(|n| dest_offset < n);
                let ks = st.keys.entry(key.clone()).or_default();
                ks.producing = ks.producing.saturating_sub(1);
                // Already received back (and maybe finished): the receive counted it.
                if !received {
                    ks.retry_known.insert(dest_offset);
                }
                self.refresh_parked(p, &key);
                if let Some(st) = self.partitions.get_mut(&p) {
                    if st.keys.get(&key).is_some_and(KeyState::is_idle) {
                        st.keys.remove(&key);
                    }
                }
            }
            Produced::ToDlq {
                retry,
                offset,
                event,
                error,
                attempts,
            } => {
                if retry {
                    st.retry.finished(offset);
                } else {
                    st.main.finished(offset);
                }
                metrics.dead_lettered();
                tracing::error!(
                    group,
                    topic = event.topic,
                    partition = event.partition,
                    offset = event.offset,
                    key = %event.key_str(),
                    attempts,
                    error,
                    dlq_partition = dest_partition,
                    dlq_offset = dest_offset,
                    "event dead-lettered"
                );
            }
        }
    }

    /// Enqueues a record, waiting while the producer's queue is full (order matters,
    /// so a record is never skipped).
    pub(super) async fn enqueue(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<DeliveryFuture, String> {
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e.to_string()),
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
        let what = Produced::ToRetry {
            key,
            main_offset: event.offset,
        };
        let enqueued = self.enqueue(record).await;
        self.track_produce(p, epoch, topic, what, enqueued);
    }

    /// Writes the DLQ record for `event`; `offset` (of the source topic, or of the
    /// retry topic when `from_retry`) finishes on ack.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dead_letter(
        &mut self,
        p: i32,
        from_retry: bool,
        offset: i64,
        event: Event,
        error: String,
        retryable: bool,
        attempts: u32,
    ) {
        let Some(st) = self.partitions.get(&p) else {
            return;
        };
        let epoch = st.epoch;
        let value =
            DlqRecord::new(&self.config.group_id, &event, &error, retryable, attempts).to_json();
        let headers = event.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(rdkafka::message::Header {
                key: k,
                value: v.as_deref(),
            })
        });
        let topic = self.config.dlq_topic.clone();
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
            .payload(&value)
            .headers(headers);
        if let Some(k) = &event.key {
            record = record.key(k.as_slice());
        }
        let enqueued = self.enqueue(record).await;
        let what = Produced::ToDlq {
            retry: from_retry,
            offset,
            event: Box::new(event),
            error,
            attempts,
        };
        self.track_produce(p, epoch, topic, what, enqueued);
    }

    pub(super) fn track_produce(
        &mut self,
        p: i32,
        epoch: u64,
        topic: String,
        what: Produced,
        enqueued: Result<DeliveryFuture, String>,
    ) {
        let Some(st) = self.current(p, epoch) else {
            return;
        };
        st.produces_pending += 1;
        let abort = self.tasks.spawn(async move {
            let result = match enqueued {
                Ok(future) => match future.await {
                    Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was dropped".to_owned()),
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
