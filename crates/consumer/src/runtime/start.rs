//! Starting: the topic checks, and probing a retry partition when its pair is
//! assigned (committed offset and high watermark, which decide the gate).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::state::{Completion, Gate, TaskInfo};
use super::{Runtime, REQUEST_TIMEOUT};
use crate::poller::RuntimeContext;
use crate::ConsumerError;

/// Drops the consumer off the async threads (closing it polls and may block).
pub(super) async fn drop_consumer(
    consumer: Arc<BaseConsumer<RuntimeContext>>,
    closing: &AtomicBool,
) {
    closing.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// The topics exist and source and retry are co-partitioned. Blocking.
pub(super) fn check_topics(
    consumer: &BaseConsumer<RuntimeContext>,
    (source, retry, dlq): &(String, String, String),
) -> Result<i32, ConsumerError> {
    let count = |topic: &str| -> Result<usize, ConsumerError> {
        let metadata = consumer
            .client()
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len())
            .ok_or_else(|| ConsumerError::MissingTopic(topic.to_owned()))
    };
    let source_partitions = count(source)?;
    let retry_partitions = count(retry)?;
    let dlq_partitions = count(dlq)?;
    if source_partitions != retry_partitions {
        return Err(ConsumerError::NotCoPartitioned {
            source_topic: source.clone(),
            source_partitions,
            retry_topic: retry.clone(),
            retry_partitions,
        });
    }
    Ok(i32::try_from(dlq_partitions).unwrap_or(i32::MAX))
}

/// Retry partition `p`: where this assignment starts reading it (the committed
/// offset, or the low watermark without one) and its high watermark. Blocking.
pub(super) fn probe(
    consumer: &BaseConsumer<RuntimeContext>,
    topic: &str,
    p: i32,
) -> Result<(i64, i64), KafkaError> {
    let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
    let start = committed
        .find_partition(topic, p)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(low)
        .max(low);
    Ok((start, high))
}

impl Runtime {
    /// Reads retry partition `p`'s committed offset and high watermark (blocking, on
    /// the blocking pool), after `delay`.
    pub(super) fn spawn_probe(&mut self, p: i32, epoch: u64, delay: Duration) {
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        if self.shutdown_deadline.is_some() {
            return;
        }
        let topic = self.config.retry_topic.clone();
        let abort = self.tasks.spawn_blocking(move || {
            std::thread::sleep(delay);
            let result = probe(&consumer, &topic, p).map_err(|e| e.to_string());
            Completion::Probed { p, epoch, result }
        });
        self.task_info
            .insert(abort.id(), TaskInfo { p, handler: false });
    }

    pub(super) async fn on_probed(
        &mut self,
        p: i32,
        epoch: u64,
        result: Result<(i64, i64), String>,
    ) {
        let retry_topic = self.config.retry_topic.clone();
        let Some(st) = self.current(p, epoch) else {
            return;
        };
        match result {
            Err(reason) => {
                tracing::warn!(
                    topic = retry_topic,
                    partition = p,
                    reason,
                    "probing the retry partition; trying again"
                );
                self.spawn_probe(p, epoch, Duration::from_millis(200));
            }
            Ok((start, high)) => {
                let read = st.retry.next().is_some_and(|n| n >= high);
                tracing::debug!(
                    topic = retry_topic,
                    partition = p,
                    start,
                    high,
                    "retry partition probed"
                );
                if start >= high || read {
                    self.open_gate(p).await;
                } else {
                    st.gate = Gate::Rebuilding(high);
                }
            }
        }
    }
}

impl Runtime {
    /// Reads the DLQ topic's high watermarks (on the blocking pool) for the
    /// `slackline_dlq_end_offset` gauge, unless a read is still running.
    pub(super) fn spawn_dlq_probe(&mut self) {
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        if self.dlq_probing || self.shutdown_deadline.is_some() {
            return;
        }
        self.dlq_probing = true;
        let topic = self.config.dlq_topic.clone();
        let partitions = self.dlq_ends.len();
        let abort = self.tasks.spawn_blocking(move || {
            let result = (0..partitions)
                .map(|p| {
                    let p = i32::try_from(p).unwrap_or(i32::MAX);
                    consumer
                        .fetch_watermarks(&topic, p, REQUEST_TIMEOUT)
                        .map(|(_, high)| high)
                })
                .collect::<Result<Vec<i64>, KafkaError>>()
                .map_err(|e| e.to_string());
            Completion::DlqEnds { result }
        });
        self.task_info.insert(
            abort.id(),
            TaskInfo {
                p: -1,
                handler: false,
            },
        );
    }

    /// The DLQ topic's end offsets were read: the gauge never goes back (a
    /// watermark read older than an acknowledgement seen since counts less).
    pub(super) fn on_dlq_ends(&mut self, result: Result<Vec<i64>, String>) {
        self.dlq_probing = false;
        match result {
            Ok(highs) => {
                for (end, high) in self.dlq_ends.iter_mut().zip(highs) {
                    *end = (*end).max(high);
                }
                self.metrics.dlq_end_offset(self.dlq_ends.iter().sum());
            }
            Err(reason) => tracing::debug!(
                topic = self.config.dlq_topic,
                reason,
                "reading the DLQ topic's end offsets"
            ),
        }
    }
}
