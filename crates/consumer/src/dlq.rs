//! DLQ records: what the runtime writes to `<group>.dlq` when an event cannot be
//! handled, and how to read one back to put the event where it came from (redrive).
//!
//! The value is JSON so that Kafka UI shows it as it is; the Kafka key is the
//! original key, so a key's dead letters stay in one DLQ partition in the order they
//! died. Redriving the records of each DLQ partition in offset order, producing each
//! [`Redrive`] to its topic with its key and waiting for the acknowledgement (or
//! through one idempotent producer), puts every key's events back in their order.
//! They land after whatever the key received meanwhile: a redrive applies them late,
//! not in their old place.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ConsumerError, Event, HeaderList};

/// The longest error text a DLQ record keeps (a DLQ record must always fit).
const ERROR_MAX: usize = 16 * 1024;

/// One DLQ record, as written to the DLQ topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DlqRecord {
    /// The consumer group that gave up on the event.
    pub group: String,
    /// The last error.
    pub error: String,
    /// Whether that error was retryable (true: the retries ran out).
    pub retryable: bool,
    /// Delivery rounds that failed (each round: one call plus the quick retries).
    pub attempts: u32,
    /// Where the event was in the source topic.
    pub original: DlqOriginal,
    /// The original headers: a string, `{"base64": ...}` for a value that is not
    /// UTF-8, null for a null value; a header that repeats has an array of those.
    pub headers: Map<String, Value>,
    /// The payload, when it is JSON (else null).
    pub payload_json: Value,
    /// The payload's exact bytes.
    pub payload_base64: String,
    /// When the record was written (RFC 3339, UTC).
    pub dead_lettered_at: String,
    /// Set when the payload (and the headers other than [`DlqRecord::KEPT_HEADERS`])
    /// were left out because the record would not fit in the DLQ topic: why, and
    /// how large it was. The original is in the archive (`archive-key` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_omitted: Option<String>,
}

/// The coordinates of the original record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqOriginal {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The original record's timestamp (unix ms).
    pub timestamp_ms: Option<i64>,
    /// The key as text (null for a null key).
    pub key: Option<String>,
    /// The key's bytes, only when they are not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
}

/// What to produce to put a dead-lettered event back into its source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// The source topic.
    pub topic: String,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original headers, in order.
    pub headers: HeaderList,
    /// The original payload.
    pub payload: Vec<u8>,
}

impl Redrive {
    /// The headers as rdkafka wants them for producing.
    pub fn owned_headers(&self) -> OwnedHeaders {
        self.headers
            .iter()
            .fold(OwnedHeaders::new(), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: value.as_deref(),
                })
            })
    }
}

/// Reads a DLQ record's value back into the record to re-produce: its original
/// headers, with [`slackline_kafka::headers::REDRIVE`] naming this dead letter
/// (`<topic>:<partition>:<offset>@<dead_lettered_at>`) in place of any earlier one,
/// so that a handler can tell a redrive from a re-read of the topic.
pub fn redrive(dlq_value: &[u8]) -> Result<Redrive, ConsumerError> {
    let record = DlqRecord::from_json(dlq_value)?;
    let mut headers = record.header_list()?;
    headers.retain(|(name, _)| name != slackline_kafka::headers::REDRIVE);
    let original = &record.original;
    let id = format!(
        "{}:{}:{}@{}",
        original.topic, original.partition, original.offset, record.dead_lettered_at
    );
    headers.push((
        slackline_kafka::headers::REDRIVE.to_owned(),
        Some(id.into_bytes()),
    ));
    Ok(Redrive {
        topic: record.original.topic.clone(),
        key: record.key()?,
        headers,
        payload: record.payload()?,
    })
}

impl DlqRecord {
    /// The headers a record cut down to fit still carries: enough to find the event
    /// in the archive and to tell which Slack event it was.
    pub const KEPT_HEADERS: [&'static str; 4] = [
        slackline_kafka::headers::ARCHIVE_KEY,
        slackline_kafka::headers::EVENT_ID,
        slackline_kafka::headers::EVENT_TYPE,
        slackline_kafka::headers::RECEIVED_AT,
    ];

    /// Leaves the payload out (and the headers but [`DlqRecord::KEPT_HEADERS`]),
    /// saying why: its JSON was `size` bytes, over `budget`.
    pub fn omit_payload(&mut self, size: usize, budget: usize) {
        let payload_bytes = BASE64
            .decode(self.payload_base64.as_bytes())
            .map_or(0, |p| p.len());
        self.payload_json = Value::Null;
        self.payload_base64 = String::new();
        self.headers
            .retain(|name, _| Self::KEPT_HEADERS.contains(&name.as_str()));
        self.payload_omitted = Some(format!(
            "the DLQ record would be {size} bytes, over the {budget}-byte budget: the \
             payload ({payload_bytes} bytes) and the other headers were left out; \
             replay the event from the archive (archive-key header)"
        ));
    }

    /// The DLQ record for `event`, failed with `error` after `attempts` rounds.
    pub fn new(group: &str, event: &Event, error: &str, retryable: bool, attempts: u32) -> Self {
        let (key, key_base64) = match &event.key {
            None => (None, None),
            Some(k) => match std::str::from_utf8(k) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (
                    Some(String::from_utf8_lossy(k).into_owned()),
                    Some(BASE64.encode(k)),
                ),
            },
        };
        let mut headers = Map::new();
        for (name, value) in &event.headers {
            let v = match value {
                None => Value::Null,
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => Value::String(text.to_owned()),
                    Err(_) => serde_json::json!({ "base64": BASE64.encode(bytes) }),
                },
            };
            match headers.get_mut(name) {
                None => {
                    headers.insert(name.clone(), v);
                }
                Some(Value::Array(values)) => values.push(v),
                Some(first) => {
                    let first = first.take();
                    headers.insert(name.clone(), Value::Array(vec![first, v]));
                }
            }
        }
        DlqRecord {
            group: group.to_owned(),
            error: crate::retry_headers::clip(error, ERROR_MAX).into_owned(),
            retryable,
            attempts,
            original: DlqOriginal {
                topic: event.topic.clone(),
                partition: event.partition,
                offset: event.offset,
                timestamp_ms: event.timestamp_ms,
                key,
                key_base64,
            },
            headers,
            payload_json: serde_json::from_slice(&event.payload).unwrap_or(Value::Null),
            payload_base64: BASE64.encode(&event.payload),
            payload_omitted: None,
            dead_lettered_at: chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// The JSON value written to the DLQ topic.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a DLQ topic value.
    pub fn from_json(value: &[u8]) -> Result<Self, ConsumerError> {
        serde_json::from_slice(value).map_err(|e| ConsumerError::InvalidDlqRecord(e.to_string()))
    }

    /// The original key's bytes.
    pub fn key(&self) -> Result<Option<Vec<u8>>, ConsumerError> {
        match (&self.original.key_base64, &self.original.key) {
            (Some(b64), _) => Ok(Some(decode_b64(b64, "original.key_base64")?)),
            (None, Some(text)) => Ok(Some(text.as_bytes().to_vec())),
            (None, None) => Ok(None),
        }
    }

    /// The original payload's bytes; an error when the payload was left out.
    pub fn payload(&self) -> Result<Vec<u8>, ConsumerError> {
        if let Some(why) = &self.payload_omitted {
            return Err(ConsumerError::InvalidDlqRecord(format!(
                "no payload to redrive: {why}"
            )));
        }
        decode_b64(&self.payload_base64, "payload_base64")
    }

    /// The original headers. Headers that repeated come back grouped by name (their
    /// relative order within a name is kept; across names JSON object order is).
    pub fn header_list(&self) -> Result<HeaderList, ConsumerError> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            match value {
                Value::Array(values) => {
                    for v in values {
                        out.push((name.clone(), header_value(name, v)?));
                    }
                }
                v => out.push((name.clone(), header_value(name, v)?)),
            }
        }
        Ok(out)
    }
}

fn header_value(name: &str, v: &Value) -> Result<Option<Vec<u8>>, ConsumerError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        Value::Object(o) => match o.get("base64") {
            Some(Value::String(b64)) => Ok(Some(decode_b64(b64, name)?)),
            _ => Err(ConsumerError::InvalidDlqRecord(format!(
                "header {name}: expected {{\"base64\": ...}}"
            ))),
        },
        other => Err(ConsumerError::InvalidDlqRecord(format!(
            "header {name}: unexpected value {other}"
        ))),
    }
}

fn decode_b64(text: &str, field: &str) -> Result<Vec<u8>, ConsumerError> {
    BASE64
        .decode(text)
        .map_err(|e| ConsumerError::InvalidDlqRecord(format!("{field}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn event(payload: &[u8], key: Option<&[u8]>) -> Event {
        Event {
            topic: "slack.messages.v1".into(),
            partition: 2,
            offset: 17,
            timestamp_ms: Some(1_700_000_000_123),
            key: key.map(<[u8]>::to_vec),
            headers: vec![
                ("slack-event-id".into(), Some(b"Ev1".to_vec())),
                ("bin".into(), Some(vec![0xff, 0x00])),
                ("nil".into(), None),
                ("slack-event-id".into(), Some(b"Ev1-dup".to_vec())),
            ],
            payload: payload.to_vec(),
            attempt: 3,
        }
    }

    #[test]
    fn json_payload_is_readable_and_redrive_restores_everything() {
        let e = event(br#"{"text":"hi"}"#, Some(b"C0CH1"));
        let record = DlqRecord::new("notifier", &e, "discord 503", true, 6);
        let json: Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(json["payload_json"]["text"], "hi");
        assert_eq!(json["original"]["offset"], 17);
        assert_eq!(json["original"]["key"], "C0CH1");
        assert!(json["original"].get("key_base64").is_none());
        assert_eq!(json["attempts"], 6);
        assert_eq!(json["headers"]["slack-event-id"][1], "Ev1-dup");
        assert_eq!(json["headers"]["bin"]["base64"], "/wA=");
        let back = redrive(&record.to_json()).unwrap();
        assert_eq!(back.topic, "slack.messages.v1");
        assert_eq!(back.key.as_deref(), Some(&b"C0CH1"[..]));
        assert_eq!(back.payload, e.payload);
        let mut want = e.headers.clone();
        let id = format!(
            "slack.messages.v1:2:17@{}",
            json["dead_lettered_at"].as_str().unwrap()
        );
        want.push((
            slackline_kafka::headers::REDRIVE.to_owned(),
            Some(id.clone().into_bytes()),
        ));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let mut got = back.headers.clone();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want);
        assert_eq!(back.owned_headers().count(), 5);

        // Redriven again (it failed again): one marker, naming the new dead letter.
        let mut again = e.clone();
        again.headers = back.headers.clone();
        again.offset = 99;
        let back = redrive(&DlqRecord::new("notifier", &again, "x", true, 1).to_json()).unwrap();
        let markers: Vec<_> = back
            .headers
            .iter()
            .filter(|(name, _)| name == slackline_kafka::headers::REDRIVE)
            .collect();
        assert_eq!(markers.len(), 1, "{markers:?}");
        let marker = String::from_utf8(markers[0].1.clone().unwrap()).unwrap();
        assert!(marker.starts_with("slack.messages.v1:2:99@"), "{marker}");
        assert_ne!(marker, id);
    }

    #[test]
    fn binary_payload_and_key_survive() {
        let e = event(&[0, 159, 146, 150], Some(&[0xfe, 0x01]));
        let record = DlqRecord::new("g", &e, "bad", false, 1);
        assert_eq!(record.payload_json, Value::Null);
        let back = redrive(&record.to_json()).unwrap();
        assert_eq!(back.payload, e.payload);
        assert_eq!(back.key, e.key);
        assert!(matches!(
            redrive(b"not json"),
            Err(ConsumerError::InvalidDlqRecord(_))
        ));
    }
}
