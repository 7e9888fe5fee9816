//! The typed message events on `slack.messages.v1`, and their wire format.
//!
//! The normalizer turns every raw Slack event into at most one [`MessageEvent`] and
//! publishes it on `slack.messages.v1` (key = channel id); thread-state,
//! timeline-writer and the notifier consume it, and `slackline tail` shows it. This
//! crate is that contract: the Rust [`model`], its Avro schema
//! (`schemas/slack.messages.v1.avsc`, compiled in as [`MESSAGES_SCHEMA_JSON`]) and the
//! codec.
//!
//! Wire format: Avro single-object encoding, as the Avro specification defines it:
//! the two bytes `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of
//! the writer schema's canonical form, then the Avro binary body. The fingerprint tells
//! a consumer which schema wrote a record: [`decode_message`] knows every committed
//! version of the schema (`schemas/history/slack.messages.v1/`) and resolves data
//! written with an older one to the current model, so producers and consumers can be
//! upgraded in any order as long as schemas only evolve compatibly (see
//! `schemas/README.md`; the crate's tests enforce it).
//!
//! The crate also carries the support thread transitions that thread-state publishes
//! on `support.thread-events` ([`thread`]: [`ThreadEvent`], same wire format), and the
//! agents' replies the slack-sender reads from `support.replies` ([`reply`]:
//! [`Reply`], same wire format).
//!
//! Decoding fails with a typed [`EventsError`]; each failure is permanent for those
//! bytes, so a consumer sends the record to its DLQ rather than retrying.

pub mod model;

mod decode;
mod encode;
mod error;
mod json;
mod names;
mod path;
mod registry;
pub mod reply;
mod resolve;
pub mod thread;

#[cfg(test)]
mod tests;

pub use error::EventsError;
pub use model::{
    Author, AuthorKind, Degraded, Deleted, Edited, FileRef, Kind, Member, MessageEvent, Mode,
    Posted, Reaction,
};
pub use reply::{
    decode_reply, encode_reply, reply_schema_fingerprint, Agent, Reply, REPLY_SCHEMA_JSON,
};
pub use thread::{
    decode_thread_event, encode_thread_event, thread_event_schema_fingerprint, ThreadEvent,
    ThreadStatus, UnknownStatus, THREAD_EVENTS_SCHEMA_JSON,
};

/// The current Avro schema of `slack.messages.v1` (record
/// `io.slackline.messages.v1.MessageEvent`), as committed in `schemas/`.
pub const MESSAGES_SCHEMA_JSON: &str = include_str!("../../../schemas/slack.messages.v1.avsc");

/// Encodes an event as an Avro single-object record with the current schema.
///
/// The result is `C3 01`, [`message_schema_fingerprint`], then the Avro binary body;
/// one allocation, sized up front.
///
/// # Errors
///
/// None today: every [`MessageEvent`] has an encoding. The `Result` leaves room for
/// checks on the model's invariants.
pub fn encode_message(event: &MessageEvent) -> Result<Vec<u8>, EventsError> {
    let mut buf = Vec::with_capacity(registry::HEADER_LEN + encode::size_hint(event));
    encode_message_into(event, &mut buf)?;
    Ok(buf)
}

/// Like [`encode_message`], but appends to `buf`, so a caller can reuse one buffer.
///
/// # Errors
///
/// As [`encode_message`]; `buf` is left as it was on error.
pub fn encode_message_into(event: &MessageEvent, buf: &mut Vec<u8>) -> Result<(), EventsError> {
    buf.extend_from_slice(&registry::MAGIC);
    buf.extend_from_slice(&registry::current_fingerprint());
    encode::write_message(buf, event);
    Ok(())
}

/// Decodes an Avro single-object record into an event.
///
/// Checks the `C3 01` marker, looks the writer schema up by its fingerprint among the
/// current and every committed schema version, decodes the body with it and, for an
/// older version, resolves the data to the current schema (by name: added fields take
/// their defaults, removed ones are skipped, unknown enum symbols take the enum's
/// default).
///
/// # Errors
///
/// [`EventsError::BadMagic`] when the bytes are not single-object encoded,
/// [`EventsError::UnknownFingerprint`] when no known schema has the fingerprint,
/// [`EventsError::Avro`] or [`EventsError::TrailingBytes`] when the body is truncated
/// or corrupt, [`EventsError::Resolution`] when an older writer's data cannot be read
/// with the current schema, and [`EventsError::Model`] when the value does not fit the
/// Rust model.
pub fn decode_message(bytes: &[u8]) -> Result<MessageEvent, EventsError> {
    let (decoder, body) = registry::split(bytes)?;
    let value = decoder.read_current(body)?;
    decode::message_from_value(value)
}

/// The 8-byte fingerprint that [`encode_message`] writes: the CRC-64-AVRO (Rabin)
/// fingerprint of the current schema's Parsing Canonical Form, little-endian.
pub fn message_schema_fingerprint() -> [u8; 8] {
    registry::current_fingerprint()
}

/// A readable JSON form of an event, for `slackline tail` and logs.
///
/// Absent optional fields and an empty `files` are left out; enums are lower-case
/// (`"mode": "full"`, `"kind": "customer"`); `kind` is an object whose `type` names
/// the variant (`{"type": "reaction_added", "name": "eyes"}`).
pub fn message_to_json(event: &MessageEvent) -> serde_json::Value {
    json::message_to_json(event)
}

/// The decoded record as JSON, if `bytes` are an Avro single-object record written
/// with a schema this build knows; `None` for anything else (plain JSON, other
/// formats, unknown fingerprints, corrupt bodies).
///
/// A record that decodes as Avro but does not fit the model is still shown, as the
/// plain JSON form of its Avro value.
pub fn decode_any_to_json(bytes: &[u8]) -> Option<serde_json::Value> {
    let (decoder, body) = registry::split(bytes).ok()?;
    let event = decoder
        .read_current(body)
        .and_then(decode::message_from_value);
    match event {
        Ok(event) => Some(json::message_to_json(&event)),
        // Rare: show what the writer wrote, as it wrote it.
        Err(_) => decoder.read_own(body).ok().map(json::value_to_json),
    }
}
