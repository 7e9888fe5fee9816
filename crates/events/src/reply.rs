//! Agents' replies on `support.replies`, read by the slack-sender.
//!
//! Each [`Reply`] asks for one message in a Slack thread. Its Avro schema is
//! `schemas/reply.avsc` (record `io.slackline.replies.v1.Reply`, compiled in as
//! [`REPLY_SCHEMA_JSON`]); the wire format is the same Avro single-object encoding as
//! the message events: `C3 01`, the schema's 8-byte little-endian CRC-64-AVRO (Rabin)
//! fingerprint, then the Avro binary body.
//!
//! Delivery is at least once: the slack-sender posts at most one Slack message per
//! `reply_id`.

use std::sync::LazyLock;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::error::EventsError;
use crate::registry::{fingerprint, Decoder, Known, HEADER_LEN, MAGIC};

/// The current Avro schema of `support.replies` (record
/// `io.slackline.replies.v1.Reply`), as committed in `schemas/`.
pub const REPLY_SCHEMA_JSON: &str = include_str!("../../../schemas/reply.avsc");

/// The agent who wrote a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Their Slack user id when the support platform knows it, else its own id.
    pub id: String,
    /// The name shown with the reply.
    pub display_name: String,
}

/// One agent reply to post into a Slack thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The idempotency key, chosen by the producer.
    pub reply_id: String,
    /// `<team_id>-<channel_id>-<root_ts>`.
    pub thread_id: String,
    /// The installing workspace (whose bot token posts).
    pub team_id: String,
    /// The channel (also the record key).
    pub channel_id: String,
    /// The thread's root ts (Slack's `thread_ts`).
    pub thread_ts: String,
    /// Who wrote it.
    pub agent: Agent,
    /// Slack mrkdwn.
    pub text: String,
    /// Optional Block Kit blocks (a JSON array, as text).
    pub blocks_json: Option<String>,
    /// Also post to the channel.
    pub reply_broadcast: bool,
    /// When the agent sent it (ms since the epoch).
    pub created_at_ms: i64,
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
    let schema = match Schema::parse_str(REPLY_SCHEMA_JSON) {
        Ok(schema) => schema,
        Err(e) => panic!("embedded Avro schema reply.avsc does not parse: {e}"),
    };
    Parsed {
        fingerprint: fingerprint(&schema),
        schema,
    }
});

/// Every committed version of `reply.avsc`, oldest first: the file name under
/// `schemas/history/reply/` and its text. A new version of the schema adds a line here
/// (a test checks that this list and the folder agree).
const REPLY_HISTORY: &[(&str, &str)] = &[(
    "0001.avsc",
    include_str!("../../../schemas/history/reply/0001.avsc"),
)];

/// Every known schema of `support.replies`; index 0 is the current one. Versions whose
/// canonical form equals a later one's appear once.
static SCHEMAS: LazyLock<Vec<Known>> = LazyLock::new(|| {
    let mut known = vec![crate::registry::parse(
        "reply.avsc".to_owned(),
        REPLY_SCHEMA_JSON,
    )];
    for (file, text) in REPLY_HISTORY.iter().rev() {
        let entry = crate::registry::parse(format!("history/reply/{file}"), text);
        if known.iter().all(|k| k.fingerprint != entry.fingerprint) {
            known.push(entry);
        }
    }
    known
});

/// Decoders for [`SCHEMAS`], same order.
static DECODERS: LazyLock<Vec<Decoder>> =
    LazyLock::new(|| SCHEMAS.iter().map(Decoder::new).collect());

/// A writer of the schema, built once.
struct Codec {
    writer: GenericDatumWriter<'static>,
}

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    #[allow(clippy::panic)]
    match GenericDatumWriter::builder(&PARSED.schema).build() {
        Ok(writer) => Codec { writer },
        Err(e) => panic!("embedded Avro schema reply.avsc does not resolve: {e}"),
    }
});

/// The 8-byte fingerprint that [`encode_reply`] writes.
pub fn reply_schema_fingerprint() -> [u8; 8] {
    PARSED.fingerprint
}

fn to_value(reply: &Reply) -> Value {
    let s = |v: &str| Value::String(v.to_owned());
    Value::Record(vec![
        ("reply_id".to_owned(), s(&reply.reply_id)),
        ("thread_id".to_owned(), s(&reply.thread_id)),
        ("team_id".to_owned(), s(&reply.team_id)),
        ("channel_id".to_owned(), s(&reply.channel_id)),
        ("thread_ts".to_owned(), s(&reply.thread_ts)),
        (
            "agent".to_owned(),
            Value::Record(vec![
                ("id".to_owned(), s(&reply.agent.id)),
                ("display_name".to_owned(), s(&reply.agent.display_name)),
            ]),
        ),
        ("text".to_owned(), s(&reply.text)),
        (
            "blocks_json".to_owned(),
            match &reply.blocks_json {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(b) => Value::Union(1, Box::new(s(b))),
            },
        ),
        (
            "reply_broadcast".to_owned(),
            Value::Boolean(reply.reply_broadcast),
        ),
        ("created_at_ms".to_owned(), Value::Long(reply.created_at_ms)),
    ])
}

/// Encodes a reply as an Avro single-object record: `C3 01`,
/// [`reply_schema_fingerprint`], then the Avro binary body.
///
/// # Errors
///
/// [`EventsError::Avro`] if the value does not fit the schema (a model and schema that
/// drifted apart; the crate's tests check they do not).
pub fn encode_reply(reply: &Reply) -> Result<Vec<u8>, EventsError> {
    let body = CODEC.writer.write_value_to_vec(to_value(reply))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PARSED.fingerprint);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes an Avro single-object record written by [`encode_reply`] with the current
/// schema or any committed version of it (`schemas/history/reply/`): the fingerprint
/// picks the writer schema, and data of an older version is resolved to the current
/// schema by name, as [`crate::decode_message`] does (added fields take their
/// defaults).
///
/// # Errors
///
/// [`EventsError::BadMagic`], [`EventsError::UnknownFingerprint`] (no known version's),
/// [`EventsError::Avro`] or [`EventsError::TrailingBytes`] for a truncated or corrupt
/// body, [`EventsError::Resolution`] when older data does not resolve,
/// [`EventsError::Model`] when the value does not fit.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, EventsError> {
    decode_among(&DECODERS, bytes)
}

/// Decodes `bytes` with its writer among `decoders` (index 0 the current schema).
fn decode_among(decoders: &[Decoder], bytes: &[u8]) -> Result<Reply, EventsError> {
    let (writer, body) = crate::registry::split_among(decoders, bytes)?;
    from_value(writer.read_as(body, &decoders[0], "Reply")?)
}

fn mismatch(field: &str, expected: &'static str) -> EventsError {
    EventsError::Model {
        path: format!("Reply.{field}"),
        expected,
    }
}

fn string(value: Value, field: &str) -> Result<String, EventsError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(mismatch(field, "a string")),
    }
}

fn from_value(value: Value) -> Result<Reply, EventsError> {
    let Value::Record(fields) = value else {
        return Err(mismatch("", "a record"));
    };
    let mut strings = std::collections::HashMap::new();
    let mut agent = None;
    let mut blocks_json = None;
    let mut reply_broadcast = false;
    let mut created_at_ms = None;
    for (name, value) in fields {
        match name.as_str() {
            "agent" => {
                let Value::Record(agent_fields) = value else {
                    return Err(mismatch("agent", "an Agent record"));
                };
                let mut id = None;
                let mut display_name = None;
                for (name, value) in agent_fields {
                    match name.as_str() {
                        "id" => id = Some(string(value, "agent.id")?),
                        "display_name" => {
                            display_name = Some(string(value, "agent.display_name")?);
                        }
                        _ => {}
                    }
                }
                agent = Some(Agent {
                    id: id.ok_or_else(|| mismatch("agent.id", "a string"))?,
                    display_name: display_name
                        .ok_or_else(|| mismatch("agent.display_name", "a string"))?,
                });
            }
            "blocks_json" => {
                blocks_json = match value {
                    Value::Union(_, inner) => match *inner {
                        Value::Null => None,
                        Value::String(s) => Some(s),
                        _ => return Err(mismatch("blocks_json", "null or a string")),
                    },
                    Value::Null => None,
                    _ => return Err(mismatch("blocks_json", "null or a string")),
                };
            }
            "reply_broadcast" => {
                reply_broadcast = match value {
                    Value::Boolean(b) => b,
                    _ => return Err(mismatch("reply_broadcast", "a boolean")),
                };
            }
            "created_at_ms" => {
                created_at_ms = match value {
                    Value::Long(ms) => Some(ms),
                    _ => return Err(mismatch("created_at_ms", "a long")),
                };
            }
            _ => {
                let text = string(value, &name)?;
                strings.insert(name, text);
            }
        }
    }
    let mut required = |field: &'static str| -> Result<String, EventsError> {
        strings
            .remove(field)
            .ok_or_else(|| mismatch(field, "a string"))
    };
    Ok(Reply {
        reply_id: required("reply_id")?,
        thread_id: required("thread_id")?,
        team_id: required("team_id")?,
        channel_id: required("channel_id")?,
        thread_ts: required("thread_ts")?,
        agent: agent.ok_or_else(|| mismatch("agent", "an Agent record"))?,
        text: required("text")?,
        blocks_json,
        reply_broadcast,
        created_at_ms: created_at_ms.ok_or_else(|| mismatch("created_at_ms", "a long"))?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use apache_avro::reader::datum::GenericDatumReader;

    use super::*;

    fn sample(optional: bool) -> Reply {
        Reply {
            reply_id: "r-1".into(),
            thread_id: "T1-C1-1700000000.000100".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            thread_ts: "1700000000.000100".into(),
            agent: Agent {
                id: "U0AGENT".into(),
                display_name: "Ada 😀".into(),
            },
            text: "*Fixed*, see <https://status.example|status>".into(),
            blocks_json: optional.then(|| r#"[{"type":"divider"}]"#.to_owned()),
            reply_broadcast: optional,
            created_at_ms: 1_700_000_001_000,
        }
    }

    #[test]
    fn round_trip_with_and_without_optional_fields() {
        for optional in [false, true] {
            let reply = sample(optional);
            let bytes = encode_reply(&reply).unwrap();
            assert_eq!(&bytes[..2], &MAGIC);
            assert_eq!(&bytes[2..10], &reply_schema_fingerprint());
            assert_eq!(decode_reply(&bytes).unwrap(), reply);
        }
    }

    #[test]
    fn body_is_what_apache_avro_reads_with_the_schema() {
        let reply = sample(true);
        let bytes = encode_reply(&reply).unwrap();
        let value = GenericDatumReader::builder(&PARSED.schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[10..])
            .unwrap();
        assert_eq!(value, to_value(&reply));
    }

    #[test]
    fn other_records_and_broken_bytes_are_rejected() {
        let bytes = encode_reply(&sample(false)).unwrap();
        assert!(matches!(decode_reply(b"{}"), Err(EventsError::BadMagic)));
        let mut other = bytes.clone();
        other[2..10].copy_from_slice(&crate::thread_event_schema_fingerprint());
        assert!(matches!(
            decode_reply(&other),
            Err(EventsError::UnknownFingerprint(_))
        ));
        assert!(decode_reply(&bytes[..bytes.len() - 1]).is_err());
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            decode_reply(&padded),
            Err(EventsError::TrailingBytes(1))
        ));
    }

    /// A record written with an older version of the schema (here one without
    /// `blocks_json` and `reply_broadcast`, which the current schema defaults) is
    /// resolved to the current schema, as message events are.
    #[test]
    fn older_writer_schemas_resolve_to_the_current_one() {
        let mut older: serde_json::Value = serde_json::from_str(REPLY_SCHEMA_JSON).unwrap();
        older["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|f| !matches!(f["name"].as_str(), Some("blocks_json" | "reply_broadcast")));
        let older: &'static Known = Box::leak(Box::new(crate::registry::parse(
            "older".to_owned(),
            &older.to_string(),
        )));
        assert_ne!(older.fingerprint, reply_schema_fingerprint());
        let decoders = [Decoder::new(&SCHEMAS[0]), Decoder::new(older)];
        let reply = sample(false);
        let mut record = to_value(&reply);
        if let Value::Record(fields) = &mut record {
            fields.retain(|(name, _)| name != "blocks_json" && name != "reply_broadcast");
        }
        let body = GenericDatumWriter::builder(&older.schema)
            .build()
            .unwrap()
            .write_value_to_vec(record)
            .unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&older.fingerprint);
        bytes.extend_from_slice(&body);
        assert_eq!(decode_among(&decoders, &bytes).unwrap(), reply);
        // The current schema's records still decode through the same path.
        let current = encode_reply(&sample(true)).unwrap();
        assert_eq!(decode_among(&decoders, &current).unwrap(), sample(true));
        // Without the older version known, its records are unknown.
        assert!(matches!(
            decode_among(&decoders[..1], &bytes),
            Err(EventsError::UnknownFingerprint(_))
        ));
    }

    #[test]
    fn history_list_and_folder_agree() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/history/reply");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let listed: Vec<&str> = REPLY_HISTORY.iter().map(|(f, _)| *f).collect();
        assert_eq!(files, listed);
        for (file, text) in REPLY_HISTORY {
            assert_eq!(
                std::fs::read_to_string(dir.join(file)).unwrap(),
                *text,
                "{file}"
            );
        }
    }

    #[test]
    fn the_schema_file_is_the_compiled_one_and_in_history() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let current = std::fs::read_to_string(dir.join("reply.avsc")).unwrap();
        assert_eq!(REPLY_SCHEMA_JSON, current);
        let history = std::fs::read_to_string(dir.join("history/reply/0001.avsc")).unwrap();
        let history = Schema::parse_str(&history).unwrap();
        assert_eq!(fingerprint(&history), reply_schema_fingerprint());
    }
}
