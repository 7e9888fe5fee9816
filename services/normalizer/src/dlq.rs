//! Dead letters of the normalizer: a raw event whose outcome could not be produced
//! goes to `slack.events.raw.dlq` as a JSON record readable in Kafka UI, with the
//! error, the original coordinates and the payload.

use std::time::Duration;

use base64::Engine;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use slackline_consumer::{DlqOriginal, DlqRecord};

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

/// Produces the DLQ record and waits for Kafka's acknowledgement.
pub(crate) async fn send(
    producer: &FutureProducer,
    dlq_topic: &str,
    source_topic: &str,
    group: &str,
    raw: &RawCopy,
    error: &str,
) -> Result<(), String> {
    let mut dead = record(raw, source_topic, group, error);
    let mut bytes = dead.to_json();
    // A payload too large for the source topic is too large here too: keep the
    // coordinates and the error; the archive-key header finds the body.
    if bytes.len() > DLQ_RECORD_BUDGET {
        dead.omit_payload(bytes.len(), DLQ_RECORD_BUDGET);
        bytes = dead.to_json();
    }
    let key = raw.key.clone().unwrap_or_default();
    producer
        .send(
            FutureRecord::to(dlq_topic).key(&key).payload(&bytes),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}
