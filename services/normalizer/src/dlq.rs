//! Dead letters of the normalizer: a raw event whose outcome could not be produced
//! goes to `slack.events.raw.dlq` as a JSON record readable in Kafka UI, with the
//! error, the original coordinates and the payload.
//!
//! Each record written logs one error event (`record sent to the DLQ`, with the
//! event id, channel, archive key and raw coordinates as fields, never message
//! text), and the DLQ topic's end offsets are exported as
//! `slackline_dlq_end_offset{group}` (read at start, every [`END_OFFSET_INTERVAL`]
//! and moved on each acknowledgement), like every consumer group's: unlike the
//! in-process outcome counter, a record written just before a crash still shows in
//! the next process's first reading, so the DLQ alert never misses it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use slackline_consumer::{DlqOriginal, DlqRecord};
use slackline_kafka::headers;
use slackline_service::Shutdown;
use tokio::task::JoinHandle;

use crate::metrics::NormalizerMetrics;

/// How often the DLQ topic's end offsets are read (as the consumer groups' lag
/// interval).
pub(crate) const END_OFFSET_INTERVAL: Duration = Duration::from_secs(15);
/// Limit on one metadata or watermark request of that reading. The requests block a
/// thread of the blocking pool and cannot be cancelled: a reading under way when the
/// normalizer stops finishes its current request (at most this long) and skips the
/// rest (the stop is checked between requests).
const END_OFFSET_TIMEOUT: Duration = Duration::from_secs(2);

/// What the DLQ record needs from the raw message (copied, since the message is
/// borrowed from the consumer).
#[derive(Debug, Clone, Default)]
pub(crate) struct RawCopy {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

impl RawCopy {
    pub(crate) fn of(message: &BorrowedMessage<'_>) -> RawCopy {
        RawCopy {
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            payload: message.payload().unwrap_or_default().to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Builds the DLQ record, in the same format as every consumer group's
/// ([`slackline_consumer::DlqRecord`]), so one set of tools reads and redrives them.
pub(crate) fn record(raw: &RawCopy, source_topic: &str, group: &str, error: &str) -> DlqRecord {
    DlqRecord {
        group: group.to_owned(),
        error: error.to_owned(),
        retryable: false,
        attempts: 1,
        original: DlqOriginal {
            topic: source_topic.to_owned(),
            partition: raw.partition,
            offset: raw.offset,
            timestamp_ms: raw.timestamp_ms,
            key: raw
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            key_base64: None,
        },
        headers: raw
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect(),
        payload_json: serde_json::from_slice::<serde_json::Value>(&raw.payload).unwrap_or_default(),
        payload_base64: base64::engine::general_purpose::STANDARD.encode(&raw.payload),
        dead_lettered_at: chrono::Utc::now().to_rfc3339(),
        payload_omitted: None,
    }
}

/// The largest DLQ value written: under librdkafka's default `message.max.bytes`
/// (1,000,000) with room for the record's framing.
const DLQ_RECORD_BUDGET: usize = 900_000;

/// Writes the normalizer's dead letters and keeps `slackline_dlq_end_offset`.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    producer: FutureProducer,
    dlq_topic: String,
    source_topic: String,
    group: String,
    metrics: NormalizerMetrics,
    /// Highest end offset seen per DLQ partition (read or acknowledged): the gauge
    /// never goes back because of a reading older than an acknowledgement.
    ends: Arc<Mutex<Vec<i64>>>,
}

impl DeadLetters {
    pub(crate) fn new(
        producer: FutureProducer,
        dlq_topic: &str,
        source_topic: &str,
        group: &str,
        metrics: NormalizerMetrics,
    ) -> DeadLetters {
        DeadLetters {
            producer,
            dlq_topic: dlq_topic.to_owned(),
            source_topic: source_topic.to_owned(),
            group: group.to_owned(),
            metrics,
            ends: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Produces the DLQ record and waits for Kafka's acknowledgement; then moves the
    /// end-offset gauge and logs the record (one error event per DLQ record).
    pub(crate) async fn send(&self, raw: &RawCopy, error: &str) -> Result<(), String> {
        let mut dead = record(raw, &self.source_topic, &self.group, error);
        let mut bytes = dead.to_json();
        // A payload too large for the source topic is too large here too: keep the
        // coordinates and the error; the archive-key header finds the body.
        if bytes.len() > DLQ_RECORD_BUDGET {
            dead.omit_payload(bytes.len(), DLQ_RECORD_BUDGET);
            bytes = dead.to_json();
        }
        let key = raw.key.clone().unwrap_or_default();
        let delivered = self
            .producer
            .send(
                FutureRecord::to(&self.dlq_topic).key(&key).payload(&bytes),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e.to_string())?;
        self.update(|ends| {
            let p = usize::try_from(delivered.partition).unwrap_or_default();
            if ends.len() <= p {
                ends.resize(p + 1, 0);
            }
            ends[p] = ends[p].max(delivered.offset.saturating_add(1));
        });
        let channel = raw.key.as_deref().map(String::from_utf8_lossy);
        tracing::error!(
            event_id = raw.header(headers::EVENT_ID).unwrap_or("-"),
            channel = channel.as_deref().unwrap_or("-"),
            archive_key = raw.header(headers::ARCHIVE_KEY).unwrap_or("-"),
            topic = self.source_topic,
            partition = raw.partition,
            offset = raw.offset,
            reason = error,
            "record sent to the DLQ"
        );
        Ok(())
    }

    /// Applies `change` to the per-partition end offsets and publishes their sum.
    fn update(&self, change: impl FnOnce(&mut Vec<i64>)) {
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut ends);
        self.metrics.dlq_end_offset(&self.group, ends.iter().sum());
    }

    /// Reads the DLQ topic's end offsets now and then every [`END_OFFSET_INTERVAL`]
    /// until `shutdown` fires (on the blocking pool: librdkafka's calls block). The
    /// task ends as soon as `shutdown` fires; a reading under way then ends on its
    /// thread within one [`END_OFFSET_TIMEOUT`] (it checks `shutdown` between
    /// requests), well inside the runtime's stop budget.
    pub(crate) fn spawn_end_offset_reader(&self, shutdown: Shutdown) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let reader = this.clone();
                let stop = shutdown.clone();
                let read = tokio::task::spawn_blocking(move || reader.read_ends(&stop));
                let result = tokio::select! {
                    () = shutdown.wait() => return,
                    result = read => result,
                };
                match result {
                    Ok(Ok(highs)) => this.update(|ends| {
                        for (p, high) in highs {
                            if ends.len() <= p {
                                ends.resize(p + 1, 0);
                            }
                            ends[p] = ends[p].max(high);
                        }
                    }),
                    Ok(Err(reason)) => tracing::debug!(
                        topic = this.dlq_topic,
                        reason,
                        "reading the DLQ topic's end offsets"
                    ),
                    Err(e) => tracing::debug!(error = %e, "the DLQ end-offset reader stopped"),
                }
                tokio::select! {
                    () = shutdown.wait() => return,
                    () = tokio::time::sleep(END_OFFSET_INTERVAL) => {}
                }
            }
        })
    }

    /// The high watermark of every partition of the DLQ topic, by partition; cut
    /// short (an error) once `stop` has fired.
    fn read_ends(&self, stop: &Shutdown) -> Result<Vec<(usize, i64)>, String> {
        const STOPPED: &str = "stopped during the reading";
        let client = self.producer.client();
        let metadata = client
            .fetch_metadata(Some(&self.dlq_topic), END_OFFSET_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.dlq_topic)
            .ok_or_else(|| "the DLQ topic is not in the metadata".to_owned())?;
        if let Some(e) = topic.error() {
            return Err(format!("DLQ topic metadata: {e:?}"));
        }
        topic
            .partitions()
            .iter()
            .map(|p| {
                if stop.is_triggered() {
                    return Err(STOPPED.to_owned());
                }
                let index = usize::try_from(p.id()).map_err(|e| e.to_string())?;
                client
                    .fetch_watermarks(&self.dlq_topic, p.id(), END_OFFSET_TIMEOUT)
                    .map(|(_, high)| (index, high))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}
