//! Support thread transitions on `support.thread-events`, written by thread-state.
//!
//! Each [`ThreadEvent`] is one status transition of a support thread (the first one of
//! a thread has no `from_status` and cause `opened`). Its Avro schema is
//! `schemas/support.thread-events.v1.avsc` (record
//! `io.slackline.threads.v1.ThreadEvent`, compiled in as
//! [`THREAD_EVENTS_SCHEMA_JSON`]); the wire format is the same Avro single-object
//! encoding as the message events: `C3 01`, the schema's 8-byte little-endian
//! CRC-64-AVRO (Rabin) fingerprint, then the Avro binary body.
//!
//! Delivery is at least once: consumers deduplicate by `transition_id`.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::error::EventsError;
use crate::registry::{fingerprint, Strict, HEADER_LEN, MAGIC};

/// The current Avro schema of `support.thread-events` (record
/// `io.slackline.threads.v1.ThreadEvent`), as committed in `schemas/`.
pub const THREAD_EVENTS_SCHEMA_JSON: &str =
    include_str!("../../../schemas/support.thread-events.v1.avsc");

/// A support thread's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadStatus {
    /// The customer waits for us.
    Todo,
    /// We wait for the customer.
    Waiting,
    /// Closed (until the customer writes again).
    Done,
}

impl ThreadStatus {
    /// Every status, in the schema's symbol order.
    pub const ALL: [ThreadStatus; 3] = [
        ThreadStatus::Todo,
        ThreadStatus::Waiting,
        ThreadStatus::Done,
    ];

    /// The lower-case name, as in the schema and the database: `todo`, `waiting`, `done`.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadStatus::Todo => "todo",
            ThreadStatus::Waiting => "waiting",
            ThreadStatus::Done => "done",
        }
    }

    /// The enum symbol's index in the schema.
    fn index(self) -> u32 {
        match self {
            ThreadStatus::Todo => 0,
            ThreadStatus::Waiting => 1,
            ThreadStatus::Done => 2,
        }
    }
}

impl fmt::Display for ThreadStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not `todo`, `waiting` or `done`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown thread status {0:?} (expected todo, waiting or done)")]
pub struct UnknownStatus(pub String);

impl FromStr for ThreadStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ThreadStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// One status transition of a support thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadEvent {
    /// `<thread_id>/<trigger_ts>/<fact>`: deterministic, the consumers' deduplication key.
    pub transition_id: String,
    /// `<team_id>-<channel_id>-<root_ts>`.
    pub thread_id: String,
    /// The installing workspace.
    pub team_id: String,
    /// The channel.
    pub channel_id: String,
    /// The ts of the thread's root message.
    pub root_ts: String,
    /// The status before; `None` when the transition opened the thread.
    pub from_status: Option<ThreadStatus>,
    /// The status after.
    pub to_status: ThreadStatus,
    /// `opened`, `customer_message`, `agent_reply`, `reopened` or `reaction`.
    pub cause: String,
    /// The ts of the message whose fact caused the transition.
    pub trigger_ts: String,
    /// Slack's event id of the delivery that carried the fact.
    pub trigger_event_id: String,
    /// The kind-of-change part of the fact's message key.
    pub trigger_fact: String,
    /// `agent`, `customer`, `bot` or `unknown`, when known.
    pub author_kind: Option<String>,
    /// The reaction name, for reaction-caused transitions.
    pub reaction: Option<String>,
    /// Slack's event time of the trigger (ms since the epoch), when known.
    pub event_time_ms: Option<i64>,
}

/// The parsed schema and its fingerprint.
struct Parsed {
    schema: Schema,
    fingerprint: [u8; 8],
}

static PARSED: LazyLock<Parsed> = LazyLock::new(|| {
    // The text is compiled in and parsed by the crate's tests: a failure here is a
    // broken build, not a runtime condition.
    #[allow(clippy::panic)]
    let schema = match Schema::parse_str(THREAD_EVENTS_SCHEMA_JSON) {
        Ok(schema) => schema,
        Err(e) => panic!("embedded Avro schema support.thread-events.v1.avsc does not parse: {e}"),
    };
    Parsed {
        fingerprint: fingerprint(&schema),
        schema,
    }
});

/// A writer and a reader of the schema, built once.
struct Codec {
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    let schema = &PARSED.schema;
    #[allow(clippy::panic)]
    match (
        GenericDatumWriter::builder(schema).build(),
        GenericDatumReader::builder(schema).build(),
    ) {
        (Ok(writer), Ok(reader)) => Codec { writer, reader },
        (Err(e), _) | (_, Err(e)) => {
            panic!("embedded Avro schema support.thread-events.v1.avsc does not resolve: {e}")
        }
    }
});

/// The 8-byte fingerprint that [`encode_thread_event`] writes (CRC-64-AVRO of the
/// schema's canonical form, little-endian).
pub fn thread_event_schema_fingerprint() -> [u8; 8] {
    PARSED.fingerprint
}

fn status_value(status: ThreadStatus) -> Value {
    Value::Enum(status.index(), status.as_str().to_owned())
}

fn opt_string(value: Option<&str>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(s) => Value::Union(1, Box::new(Value::String(s.to_owned()))),
    }
}

fn to_value(event: &ThreadEvent) -> Value {
    let s = |v: &str| Value::String(v.to_owned());
    Value::Record(vec![
        ("transition_id".to_owned(), s(&event.transition_id)),
        ("thread_id".to_owned(), s(&event.thread_id)),
        ("team_id".to_owned(), s(&event.team_id)),
        ("channel_id".to_owned(), s(&event.channel_id)),
        ("root_ts".to_owned(), s(&event.root_ts)),
        (
            "from_status".to_owned(),
            match event.from_status {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(status) => Value::Union(1, Box::new(status_value(status))),
            },
        ),
        ("to_status".to_owned(), status_value(event.to_status)),
        ("cause".to_owned(), s(&event.cause)),
        ("trigger_ts".to_owned(), s(&event.trigger_ts)),
        ("trigger_event_id".to_owned(), s(&event.trigger_event_id)),
        ("trigger_fact".to_owned(), s(&event.trigger_fact)),
        (
            "author_kind".to_owned(),
            opt_string(event.author_kind.as_deref()),
        ),
        ("reaction".to_owned(), opt_string(event.reaction.as_deref())),
        (
            "event_time_ms".to_owned(),
            match event.event_time_ms {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(ms) => Value::Union(1, Box::new(Value::Long(ms))),
            },
        ),
    ])
}

/// Encodes a thread event as an Avro single-object record: `C3 01`,
/// [`thread_event_schema_fingerprint`], then the Avro binary body.
///
/// # Errors
///
/// [`EventsError::Avro`] if the value does not fit the schema (a model and schema that
/// drifted apart; the crate's tests check they do not).
pub fn encode_thread_event(event: &ThreadEvent) -> Result<Vec<u8>, EventsError> {
    let body = CODEC.writer.write_value_to_vec(to_value(event))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PARSED.fingerprint);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes an Avro single-object record written by [`encode_thread_event`].
///
/// # Errors
///
/// [`EventsError::BadMagic`] when the bytes do not start with `C3 01` and a
/// fingerprint, [`EventsError::UnknownFingerprint`] when the fingerprint is not the
/// current schema's, [`EventsError::Avro`] or [`EventsError::TrailingBytes`] for a
/// truncated or corrupt body, [`EventsError::Model`] when the value does not fit.
pub fn decode_thread_event(bytes: &[u8]) -> Result<ThreadEvent, EventsError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(EventsError::BadMagic);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    if fp != PARSED.fingerprint {
        return Err(EventsError::UnknownFingerprint(fp));
    }
    let mut rest = Strict(&bytes[HEADER_LEN..]);
    let value = CODEC.reader.read_value(&mut rest)?;
    if !rest.0.is_empty() {
        return Err(EventsError::TrailingBytes(rest.0.len()));
    }
    from_value(value)
}

fn mismatch(field: &str, expected: &'static str) -> EventsError {
    EventsError::Model {
        path: format!("ThreadEvent.{field}"),
        expected,
    }
}

fn unwrap_union(value: Value) -> Option<Value> {
    match value {
        Value::Union(_, inner) => match *inner {
            Value::Null => None,
            other => Some(other),
        },
        Value::Null => None,
        other => Some(other),
    }
}

fn status_from(value: Value, field: &str) -> Result<ThreadStatus, EventsError> {
    match value {
        Value::Enum(_, symbol) => symbol
            .parse()
            .map_err(|_| mismatch(field, "todo, waiting or done")),
        _ => Err(mismatch(field, "a ThreadStatus enum")),
    }
}

fn from_value(value: Value) -> Result<ThreadEvent, EventsError> {
    let Value::Record(fields) = value else {
        return Err(mismatch("", "a record"));
    };
    let mut strings = std::collections::HashMap::new();
    let mut from_status = None;
    let mut to_status = None;
    let mut event_time_ms = None;
    for (name, value) in fields {
        match name.as_str() {
            "from_status" => {
                from_status = unwrap_union(value)
                    .map(|v| status_from(v, "from_status"))
                    .transpose()?;
            }
            "to_status" => to_status = Some(status_from(value, "to_status")?),
            "event_time_ms" => {
                event_time_ms = match unwrap_union(value) {
                    None => None,
                    Some(Value::Long(ms)) => Some(ms),
                    Some(_) => return Err(mismatch("event_time_ms", "null or a long")),
                };
            }
            _ => {
                let text = match unwrap_union(value) {
                    None => None,
                    Some(Value::String(s)) => Some(s),
                    Some(_) => return Err(mismatch("string field", "a string")),
                };
                strings.insert(name, text);
            }
        }
    }
    let mut required = |field: &'static str| -> Result<String, EventsError> {
        strings
            .remove(field)
            .flatten()
            .ok_or_else(|| mismatch(field, "a string"))
    };
    let event = ThreadEvent {
        transition_id: required("transition_id")?,
        thread_id: required("thread_id")?,
        team_id: required("team_id")?,
        channel_id: required("channel_id")?,
        root_ts: required("root_ts")?,
        from_status,
        to_status: to_status.ok_or_else(|| mismatch("to_status", "a ThreadStatus enum"))?,
        cause: required("cause")?,
        trigger_ts: required("trigger_ts")?,
        trigger_event_id: required("trigger_event_id")?,
        trigger_fact: required("trigger_fact")?,
        author_kind: strings.remove("author_kind").flatten(),
        reaction: strings.remove("reaction").flatten(),
        event_time_ms,
    };
    Ok(event)
}

/// The schema, for tests that compare against apache-avro directly.
#[cfg(test)]
pub(crate) fn schema() -> &'static Schema {
    &PARSED.schema
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample(from: Option<ThreadStatus>, optional: bool) -> ThreadEvent {
        ThreadEvent {
            transition_id: "C1-1700000000.000100/posted".into(),
            thread_id: "C1-1700000000.000100".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            root_ts: "1700000000.000100".into(),
            from_status: from,
            to_status: ThreadStatus::Waiting,
            cause: "agent_reply".into(),
            trigger_ts: "1700000001.000200".into(),
            trigger_event_id: "Ev1".into(),
            trigger_fact: "posted".into(),
            author_kind: optional.then(|| "agent".to_owned()),
            reaction: optional.then(|| "white_check_mark 😀".to_owned()),
            event_time_ms: optional.then_some(1_700_000_001_000),
        }
    }

    #[test]
    fn round_trip_every_status_and_optional_field() {
        for from in [
            None,
            Some(ThreadStatus::Todo),
            Some(ThreadStatus::Waiting),
            Some(ThreadStatus::Done),
        ] {
            for optional in [false, true] {
                for to in ThreadStatus::ALL {
                    let mut event = sample(from, optional);
                    event.to_status = to;
                    let bytes = encode_thread_event(&event).unwrap();
                    assert_eq!(&bytes[..2], &MAGIC);
                    assert_eq!(&bytes[2..10], &thread_event_schema_fingerprint());
                    assert_eq!(decode_thread_event(&bytes).unwrap(), event);
                }
            }
        }
    }

    #[test]
    fn body_is_what_apache_avro_reads_with_the_schema() {
        let event = sample(Some(ThreadStatus::Done), true);
        let bytes = encode_thread_event(&event).unwrap();
        let value = GenericDatumReader::builder(schema())
            .build()
            .unwrap()
            .read_value(&mut &bytes[10..])
            .unwrap();
        assert_eq!(value, to_value(&event));
    }

    #[test]
    fn bad_magic_and_fingerprint_are_rejected() {
        let bytes = encode_thread_event(&sample(None, false)).unwrap();
        let mut bad = bytes.clone();
        bad[0] = 0x00;
        assert!(matches!(
            decode_thread_event(&bad),
            Err(EventsError::BadMagic)
        ));
        assert!(matches!(
            decode_thread_event(&bytes[..5]),
            Err(EventsError::BadMagic)
        ));
        assert!(matches!(
            decode_thread_event(b"{\"json\":true}"),
            Err(EventsError::BadMagic)
        ));
        let mut bad = bytes.clone();
        bad[5] ^= 0xff;
        match decode_thread_event(&bad) {
            Err(EventsError::UnknownFingerprint(fp)) => assert_eq!(fp[..], bad[2..10]),
            other => panic!("expected an unknown fingerprint, got {other:?}"),
        }
        // A message event is not a thread event.
        let mut other = bytes.clone();
        other[2..10].copy_from_slice(&crate::message_schema_fingerprint());
        assert!(matches!(
            decode_thread_event(&other),
            Err(EventsError::UnknownFingerprint(_))
        ));
    }

    #[test]
    fn truncated_and_padded_bodies_are_rejected() {
        let bytes = encode_thread_event(&sample(Some(ThreadStatus::Todo), true)).unwrap();
        for cut in [bytes.len() - 1, 11, 10] {
            assert!(decode_thread_event(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            decode_thread_event(&padded),
            Err(EventsError::TrailingBytes(1))
        ));
    }

    #[test]
    fn status_names() {
        for status in ThreadStatus::ALL {
            assert_eq!(status.as_str().parse::<ThreadStatus>().unwrap(), status);
            assert_eq!(status.to_string(), status.as_str());
        }
        let err = "closed".parse::<ThreadStatus>().unwrap_err();
        assert!(err.to_string().contains("closed"));
    }

    #[test]
    fn the_schema_file_is_the_compiled_one() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let current = std::fs::read_to_string(dir.join("support.thread-events.v1.avsc")).unwrap();
        assert_eq!(THREAD_EVENTS_SCHEMA_JSON, current);
        let history =
            std::fs::read_to_string(dir.join("history/support.thread-events.v1/0001.avsc"))
                .unwrap();
        let history = Schema::parse_str(&history).unwrap();
        assert_eq!(fingerprint(&history), thread_event_schema_fingerprint());
    }
}
