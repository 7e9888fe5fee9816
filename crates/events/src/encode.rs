//! The Avro binary body of a [`MessageEvent`], written straight from the Rust types.
//!
//! The normalizer encodes every event, so this path builds no intermediate
//! `apache_avro::types::Value` tree (which would clone every string and field name):
//! it appends the Avro binary encoding of `schemas/slack.messages.v1.avsc` to one
//! buffer. The field order, union branch indices and enum symbol indices below follow
//! that schema; the crate's tests check that this output is byte for byte what
//! apache-avro writes for the same record, for every kind, so the two cannot drift
//! apart unnoticed.

use crate::model::{
    Author, AuthorKind, Degraded, Deleted, Edited, FileRef, Kind, Member, MessageEvent, Mode,
    Posted, Reaction,
};

/// The `kind` union's branches, in schema order (the index is the branch number).
pub(crate) const KIND_BRANCHES: [&str; 8] = [
    "Posted",
    "Edited",
    "Deleted",
    "ReactionAdded",
    "ReactionRemoved",
    "MemberJoined",
    "MemberLeft",
    "Degraded",
];

/// A guess of the encoded size, so that the buffer is allocated once.
pub(crate) fn size_hint(event: &MessageEvent) -> usize {
    fn len(s: &Option<String>) -> usize {
        s.as_ref().map_or(0, String::len)
    }
    let mut n = 64
        + event.event_id.len()
        + event.team_id.len()
        + len(&event.channel_id)
        + len(&event.ts)
        + len(&event.thread_ts)
        + len(&event.text)
        + len(&event.rendered_text)
        + event.archive_key.len()
        + len(&event.degraded_reason);
    if let Some(author) = &event.author {
        n += 16 + len(&author.user_id) + len(&author.team_id);
        n += len(&author.display_name) + len(&author.email);
    }
    for file in &event.files {
        n += 32 + file.id.len() + len(&file.name) + len(&file.mimetype) + len(&file.url_private);
        n += file.thumbs.iter().map(|t| t.len() + 4).sum::<usize>();
    }
    n += match &event.kind {
        Kind::Posted(p) => len(&p.subtype),
        Kind::Edited(e) => len(&e.previous_text) + len(&e.edited_ts),
        Kind::Deleted(d) => len(&d.previous_text),
        Kind::ReactionAdded(r) | Kind::ReactionRemoved(r) => r.name.len() + len(&r.item_user_id),
        Kind::MemberJoined(m) | Kind::MemberLeft(m) => len(&m.inviter_id),
        Kind::Degraded(d) => len(&d.event_type) + len(&d.subtype),
    };
    n
}

/// Appends the Avro binary body of `event` (no single-object header) to `buf`.
pub(crate) fn write_message(buf: &mut Vec<u8>, event: &MessageEvent) {
    put_str(buf, &event.event_id);
    put_str(buf, &event.team_id);
    put_opt_str(buf, event.channel_id.as_deref());
    put_opt_str(buf, event.ts.as_deref());
    put_opt_str(buf, event.thread_ts.as_deref());
    put_opt_long(buf, event.event_time_ms);
    match &event.author {
        None => put_long(buf, 0),
        Some(author) => {
            put_long(buf, 1);
            write_author(buf, author);
        }
    }
    put_opt_str(buf, event.text.as_deref());
    put_opt_str(buf, event.rendered_text.as_deref());
    put_array(buf, &event.files, write_file);
    put_str(buf, &event.archive_key);
    put_long(
        buf,
        match event.mode {
            Mode::Full => 0,
            Mode::Degraded => 1,
        },
    );
    put_opt_str(buf, event.degraded_reason.as_deref());
    write_kind(buf, &event.kind);
}

fn write_author(buf: &mut Vec<u8>, author: &Author) {
    put_opt_str(buf, author.user_id.as_deref());
    put_opt_str(buf, author.team_id.as_deref());
    put_long(
        buf,
        match author.kind {
            AuthorKind::Agent => 0,
            AuthorKind::Customer => 1,
            AuthorKind::Bot => 2,
            AuthorKind::Unknown => 3,
        },
    );
    put_opt_str(buf, author.display_name.as_deref());
    put_opt_str(buf, author.email.as_deref());
}

fn write_file(buf: &mut Vec<u8>, file: &FileRef) {
    put_str(buf, &file.id);
    put_opt_str(buf, file.name.as_deref());
    put_opt_str(buf, file.mimetype.as_deref());
    put_opt_long(buf, file.size);
    put_opt_str(buf, file.url_private.as_deref());
    put_array(buf, &file.thumbs, |buf, thumb| put_str(buf, thumb));
}

fn write_kind(buf: &mut Vec<u8>, kind: &Kind) {
    match kind {
        Kind::Posted(Posted {
            subtype,
            is_reply,
            is_broadcast,
        }) => {
            put_long(buf, 0);
            put_opt_str(buf, subtype.as_deref());
            put_bool(buf, *is_reply);
            put_bool(buf, *is_broadcast);
        }
        Kind::Edited(Edited {
            previous_text,
            edited_ts,
        }) => {
            put_long(buf, 1);
            put_opt_str(buf, previous_text.as_deref());
            put_opt_str(buf, edited_ts.as_deref());
        }
        Kind::Deleted(Deleted { previous_text }) => {
            put_long(buf, 2);
            put_opt_str(buf, previous_text.as_deref());
        }
        Kind::ReactionAdded(reaction) => {
            put_long(buf, 3);
            write_reaction(buf, reaction);
        }
        Kind::ReactionRemoved(reaction) => {
            put_long(buf, 4);
            write_reaction(buf, reaction);
        }
        Kind::MemberJoined(Member { inviter_id }) => {
            put_long(buf, 5);
            put_opt_str(buf, inviter_id.as_deref());
        }
        Kind::MemberLeft(Member { inviter_id }) => {
            put_long(buf, 6);
            put_opt_str(buf, inviter_id.as_deref());
        }
        Kind::Degraded(Degraded {
            event_type,
            subtype,
        }) => {
            put_long(buf, 7);
            put_opt_str(buf, event_type.as_deref());
            put_opt_str(buf, subtype.as_deref());
        }
    }
}

fn write_reaction(buf: &mut Vec<u8>, reaction: &Reaction) {
    put_str(buf, &reaction.name);
    put_opt_str(buf, reaction.item_user_id.as_deref());
}

/// Avro `long` (and `int`, enum index, union branch, lengths): zig-zag, then
/// little-endian base-128 varint.
fn put_long(buf: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

fn put_bool(buf: &mut Vec<u8>, value: bool) {
    buf.push(u8::from(value));
}

/// Avro `string`: byte length as a long, then the UTF-8 bytes.
fn put_str(buf: &mut Vec<u8>, value: &str) {
    put_long(buf, len_i64(value.len()));
    buf.extend_from_slice(value.as_bytes());
}

/// `["null", "string"]`: branch 0 for null, branch 1 then the string.
fn put_opt_str(buf: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => put_long(buf, 0),
        Some(s) => {
            put_long(buf, 1);
            put_str(buf, s);
        }
    }
}

/// `["null", "long"]` (also with a logical type): branch 0 for null, branch 1 then
/// the long.
fn put_opt_long(buf: &mut Vec<u8>, value: Option<i64>) {
    match value {
        None => put_long(buf, 0),
        Some(v) => {
            put_long(buf, 1);
            put_long(buf, v);
        }
    }
}

/// Avro `array`: one block (item count, items) unless empty, then the 0 terminator;
/// the same block layout apache-avro writes.
fn put_array<T>(buf: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        put_long(buf, len_i64(items.len()));
        for item in items {
            write(buf, item);
        }
    }
    buf.push(0);
}

/// A length as an Avro long. Lengths of in-memory data always fit.
fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}
