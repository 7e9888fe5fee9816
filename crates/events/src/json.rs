//! Readable JSON for `slackline tail` and logs.
//!
//! Absent optional fields are left out rather than written as `null`, and so is an
//! empty `files`; enums are lower-case names; `kind` is an object whose `type` names
//! the variant. This JSON is for people and tools like `jq`, not a wire format: the
//! wire format is Avro.

use apache_avro::types::Value;
use serde_json::{Map, Value as Json};

use crate::model::{Author, FileRef, Kind, MessageEvent};

/// Inserts `value` under `key` when it is present.
fn put_opt<T: Into<Json>>(object: &mut Map<String, Json>, key: &str, value: Option<T>) {
    if let Some(value) = value {
        object.insert(key.to_owned(), value.into());
    }
}

fn put_str(object: &mut Map<String, Json>, key: &str, value: Option<&String>) {
    put_opt(object, key, value.cloned());
}

/// The JSON form of an event (see the module docs).
pub(crate) fn message_to_json(event: &MessageEvent) -> Json {
    let mut o = Map::new();
    o.insert("event_id".into(), event.event_id.clone().into());
    o.insert("team_id".into(), event.team_id.clone().into());
    put_str(&mut o, "channel_id", event.channel_id.as_ref());
    put_str(&mut o, "ts", event.ts.as_ref());
    put_str(&mut o, "thread_ts", event.thread_ts.as_ref());
    put_opt(&mut o, "event_time_ms", event.event_time_ms);
    put_opt(&mut o, "author", event.author.as_ref().map(author_to_json));
    put_str(&mut o, "text", event.text.as_ref());
    put_str(&mut o, "rendered_text", event.rendered_text.as_ref());
    if !event.files.is_empty() {
        let files = event.files.iter().map(file_to_json).collect::<Vec<_>>();
        o.insert("files".into(), Json::Array(files));
    }
    o.insert("archive_key".into(), event.archive_key.clone().into());
    o.insert("mode".into(), event.mode.as_str().into());
    put_str(&mut o, "degraded_reason", event.degraded_reason.as_ref());
    o.insert("kind".into(), kind_to_json(&event.kind));
    Json::Object(o)
}

fn author_to_json(author: &Author) -> Json {
    let mut o = Map::new();
    put_str(&mut o, "user_id", author.user_id.as_ref());
    put_str(&mut o, "team_id", author.team_id.as_ref());
    o.insert("kind".into(), author.kind.as_str().into());
    put_str(&mut o, "display_name", author.display_name.as_ref());
    put_str(&mut o, "email", author.email.as_ref());
    Json::Object(o)
}

fn file_to_json(file: &FileRef) -> Json {
    let mut o = Map::new();
    o.insert("id".into(), file.id.clone().into());
    put_str(&mut o, "name", file.name.as_ref());
    put_str(&mut o, "mimetype", file.mimetype.as_ref());
    put_opt(&mut o, "size", file.size);
    put_str(&mut o, "url_private", file.url_private.as_ref());
    if !file.thumbs.is_empty() {
        o.insert("thumbs".into(), file.thumbs.clone().into());
    }
    Json::Object(o)
}

fn kind_to_json(kind: &Kind) -> Json {
    let mut o = Map::new();
    o.insert("type".into(), kind.name().into());
    match kind {
        Kind::Posted(p) => {
            put_str(&mut o, "subtype", p.subtype.as_ref());
            o.insert("is_reply".into(), p.is_reply.into());
            o.insert("is_broadcast".into(), p.is_broadcast.into());
        }
        Kind::Edited(e) => {
            put_str(&mut o, "previous_text", e.previous_text.as_ref());
            put_str(&mut o, "edited_ts", e.edited_ts.as_ref());
        }
        Kind::Deleted(d) => put_str(&mut o, "previous_text", d.previous_text.as_ref()),
        Kind::ReactionAdded(r) | Kind::ReactionRemoved(r) => {
            o.insert("name".into(), r.name.clone().into());
            put_str(&mut o, "item_user_id", r.item_user_id.as_ref());
        }
        Kind::MemberJoined(m) | Kind::MemberLeft(m) => {
            put_str(&mut o, "inviter_id", m.inviter_id.as_ref());
        }
        Kind::Degraded(d) => {
            put_str(&mut o, "event_type", d.event_type.as_ref());
            put_str(&mut o, "subtype", d.subtype.as_ref());
        }
    }
    Json::Object(o)
}

/// Any Avro value as plain JSON: records as objects, unions as their branch's value,
/// enums as their symbol, bytes as arrays of numbers. For records that decode as Avro
/// but not as this build's model.
pub(crate) fn value_to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => b.into(),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => i.into(),
        Value::Long(l)
        | Value::TimeMicros(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimestampNanos(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::LocalTimestampNanos(l) => l.into(),
        Value::Float(f) => f64::from(f).into(),
        Value::Double(d) => d.into(),
        Value::String(s) | Value::Enum(_, s) => s.into(),
        Value::Bytes(b) | Value::Fixed(_, b) => b.into(),
        Value::Union(_, inner) => value_to_json(*inner),
        Value::Array(items) => Json::Array(items.into_iter().map(value_to_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => Json::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, value_to_json(v)))
                .collect(),
        ),
        Value::Uuid(u) => u.to_string().into(),
        other => format!("{other:?}").into(),
    }
}
