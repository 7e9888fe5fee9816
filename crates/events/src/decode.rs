//! From a decoded Avro value (in the current schema's shape) to the Rust model.
//!
//! Each record is read field by field by name, and every mismatch names its field path
//! (`MessageEvent.author.kind`), so a schema and model that drifted apart are easy to
//! find.

use apache_avro::types::Value;

use crate::encode::KIND_BRANCHES;
use crate::error::EventsError;
use crate::model::{
    Author, AuthorKind, Degraded, Deleted, Edited, FileRef, Kind, Member, MessageEvent, Mode,
    Posted, Reaction,
};
use crate::path::Path;

fn mismatch(path: Path<'_>, expected: &'static str) -> EventsError {
    EventsError::Model {
        path: path.to_string(),
        expected,
    }
}

fn fields(value: Value, path: Path<'_>) -> Result<Vec<(String, Value)>, EventsError> {
    match value {
        Value::Record(fields) => Ok(fields),
        _ => Err(mismatch(path, "a record")),
    }
}

fn required<T>(value: Option<T>, path: Path<'_>, expected: &'static str) -> Result<T, EventsError> {
    value.ok_or_else(|| mismatch(path, expected))
}

fn string(value: Value, path: Path<'_>) -> Result<String, EventsError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(mismatch(path, "a string")),
    }
}

/// Peels a `["null", T]` union: `None` for null, else the branch's value.
fn nullable(value: Value) -> Option<Value> {
    match value {
        Value::Union(_, inner) => nullable(*inner),
        Value::Null => None,
        other => Some(other),
    }
}

fn opt_string(value: Value, path: Path<'_>) -> Result<Option<String>, EventsError> {
    nullable(value).map(|v| string(v, path)).transpose()
}

fn opt_long(value: Value, path: Path<'_>) -> Result<Option<i64>, EventsError> {
    nullable(value)
        .map(|v| match v {
            Value::Long(l) | Value::TimestampMillis(l) => Ok(l),
            Value::Int(i) => Ok(i64::from(i)),
            _ => Err(mismatch(path, "a long")),
        })
        .transpose()
}

fn boolean(value: Value, path: Path<'_>) -> Result<bool, EventsError> {
    match value {
        Value::Boolean(b) => Ok(b),
        _ => Err(mismatch(path, "a boolean")),
    }
}

fn string_array(value: Value, path: Path<'_>) -> Result<Vec<String>, EventsError> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| string(item, path.index(i)))
            .collect(),
        _ => Err(mismatch(path, "an array of strings")),
    }
}

/// The model of a record decoded with (or resolved to) the current schema.
pub(crate) fn message_from_value(value: Value) -> Result<MessageEvent, EventsError> {
    let root = Path::Root("MessageEvent");
    let mut event_id = None;
    let mut team_id = None;
    let mut channel_id = None;
    let mut ts = None;
    let mut thread_ts = None;
    let mut event_time_ms = None;
    let mut author = None;
    let mut text = None;
    let mut rendered_text = None;
    let mut files = Vec::new();
    let mut archive_key = None;
    let mut mode = None;
    let mut degraded_reason = None;
    let mut kind = None;
    for (name, value) in fields(value, root)? {
        let path = root.field(&name);
        match name.as_str() {
            "event_id" => event_id = Some(string(value, path)?),
            "team_id" => team_id = Some(string(value, path)?),
            "channel_id" => channel_id = opt_string(value, path)?,
            "ts" => ts = opt_string(value, path)?,
            "thread_ts" => thread_ts = opt_string(value, path)?,
            "event_time_ms" => event_time_ms = opt_long(value, path)?,
            "author" => author = nullable(value).map(|v| author_from(v, path)).transpose()?,
            "text" => text = opt_string(value, path)?,
            "rendered_text" => rendered_text = opt_string(value, path)?,
            "files" => files = files_from(value, path)?,
            "archive_key" => archive_key = Some(string(value, path)?),
            "mode" => mode = Some(mode_from(value, path)?),
            "degraded_reason" => degraded_reason = opt_string(value, path)?,
            "kind" => kind = Some(kind_from(value, path)?),
            // A field of a newer model than this build's: not ours to interpret.
            _ => {}
        }
    }
    Ok(MessageEvent {
        event_id: required(event_id, root.field("event_id"), "a string")?,
        team_id: required(team_id, root.field("team_id"), "a string")?,
        channel_id,
        ts,
        thread_ts,
        event_time_ms,
        author,
        text,
        rendered_text,
        files,
        archive_key: required(archive_key, root.field("archive_key"), "a string")?,
        mode: required(mode, root.field("mode"), "a Mode symbol")?,
        degraded_reason,
        kind: required(kind, root.field("kind"), "a kind record")?,
    })
}

fn mode_from(value: Value, path: Path<'_>) -> Result<Mode, EventsError> {
    match value {
        Value::Enum(_, symbol) => match symbol.as_str() {
            "FULL" => Ok(Mode::Full),
            "DEGRADED" => Ok(Mode::Degraded),
            _ => Err(mismatch(path, "FULL or DEGRADED")),
        },
        _ => Err(mismatch(path, "a Mode symbol")),
    }
}

fn author_kind_from(value: Value, path: Path<'_>) -> Result<AuthorKind, EventsError> {
    match value {
        Value::Enum(_, symbol) => match symbol.as_str() {
            "AGENT" => Ok(AuthorKind::Agent),
            "CUSTOMER" => Ok(AuthorKind::Customer),
            "BOT" => Ok(AuthorKind::Bot),
            "UNKNOWN" => Ok(AuthorKind::Unknown),
            _ => Err(mismatch(path, "AGENT, CUSTOMER, BOT or UNKNOWN")),
        },
        _ => Err(mismatch(path, "an AuthorKind symbol")),
    }
}

fn author_from(value: Value, path: Path<'_>) -> Result<Author, EventsError> {
    let mut author = Author {
        user_id: None,
        team_id: None,
        kind: AuthorKind::Unknown,
        display_name: None,
        email: None,
    };
    let mut kind = None;
    for (name, value) in fields(value, path)? {
        let path = path.field(&name);
        match name.as_str() {
            "user_id" => author.user_id = opt_string(value, path)?,
            "team_id" => author.team_id = opt_string(value, path)?,
            "kind" => kind = Some(author_kind_from(value, path)?),
            "display_name" => author.display_name = opt_string(value, path)?,
            "email" => author.email = opt_string(value, path)?,
            _ => {}
        }
    }
    author.kind = required(kind, path.field("kind"), "an AuthorKind symbol")?;
    Ok(author)
}

fn files_from(value: Value, path: Path<'_>) -> Result<Vec<FileRef>, EventsError> {
    let Value::Array(items) = value else {
        return Err(mismatch(path, "an array of FileRef"));
    };
    let mut files = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = path.index(i);
        let mut id = None;
        let mut file = FileRef {
            id: String::new(),
            name: None,
            mimetype: None,
            size: None,
            url_private: None,
            thumbs: Vec::new(),
        };
        for (name, value) in fields(item, path)? {
            let path = path.field(&name);
            match name.as_str() {
                "id" => id = Some(string(value, path)?),
                "name" => file.name = opt_string(value, path)?,
                "mimetype" => file.mimetype = opt_string(value, path)?,
                "size" => file.size = opt_long(value, path)?,
                "url_private" => file.url_private = opt_string(value, path)?,
                "thumbs" => file.thumbs = string_array(value, path)?,
                _ => {}
            }
        }
        file.id = required(id, path.field("id"), "a string")?;
        files.push(file);
    }
    Ok(files)
}

fn kind_from(value: Value, path: Path<'_>) -> Result<Kind, EventsError> {
    let Value::Union(index, inner) = value else {
        return Err(mismatch(path, "a kind union"));
    };
    let branch = usize::try_from(index)
        .ok()
        .and_then(|i| KIND_BRANCHES.get(i))
        .copied()
        .ok_or_else(|| mismatch(path, "a known kind branch"))?;
    let path = path.branch(branch);
    let fields = fields(*inner, path)?;
    Ok(match branch {
        "Posted" => Kind::Posted(posted_from(fields, path)?),
        "Edited" => Kind::Edited(edited_from(fields, path)?),
        "Deleted" => Kind::Deleted(deleted_from(fields, path)?),
        "ReactionAdded" => Kind::ReactionAdded(reaction_from(fields, path)?),
        "ReactionRemoved" => Kind::ReactionRemoved(reaction_from(fields, path)?),
        "MemberJoined" => Kind::MemberJoined(member_from(fields, path)?),
        "MemberLeft" => Kind::MemberLeft(member_from(fields, path)?),
        _ => Kind::Degraded(degraded_from(fields, path)?),
    })
}

fn posted_from(fields: Vec<(String, Value)>, path: Path<'_>) -> Result<Posted, EventsError> {
    let mut posted = Posted {
        subtype: None,
        is_reply: false,
        is_broadcast: false,
    };
    for (name, value) in fields {
        let path = path.field(&name);
        match name.as_str() {
            "subtype" => posted.subtype = opt_string(value, path)?,
            "is_reply" => posted.is_reply = boolean(value, path)?,
            "is_broadcast" => posted.is_broadcast = boolean(value, path)?,
            _ => {}
        }
    }
    Ok(posted)
}

fn edited_from(fields: Vec<(String, Value)>, path: Path<'_>) -> Result<Edited, EventsError> {
    let mut edited = Edited {
        previous_text: None,
        edited_ts: None,
    };
    for (name, value) in fields {
        let path = path.field(&name);
        match name.as_str() {
            "previous_text" => edited.previous_text = opt_string(value, path)?,
            "edited_ts" => edited.edited_ts = opt_string(value, path)?,
            _ => {}
        }
    }
    Ok(edited)
}

fn deleted_from(fields: Vec<(String, Value)>, path: Path<'_>) -> Result<Deleted, EventsError> {
    let mut deleted = Deleted {
        previous_text: None,
    };
    for (name, value) in fields {
        if name == "previous_text" {
            deleted.previous_text = opt_string(value, path.field(&name))?;
        }
    }
    Ok(deleted)
}

fn reaction_from(fields: Vec<(String, Value)>, path: Path<'_>) -> Result<Reaction, EventsError> {
    let mut reaction_name = None;
    let mut item_user_id = None;
    for (name, value) in fields {
        let path = path.field(&name);
        match name.as_str() {
            "name" => reaction_name = Some(string(value, path)?),
            "item_user_id" => item_user_id = opt_string(value, path)?,
            _ => {}
        }
    }
    Ok(Reaction {
        name: required(reaction_name, path.field("name"), "a string")?,
        item_user_id,
    })
}

fn member_from(fields: Vec<(String, Value)>, path: Path<'_>) -> Result<Member, EventsError> {
    let mut member = Member { inviter_id: None };
    for (name, value) in fields {
        if name == "inviter_id" {
            member.inviter_id = opt_string(value, path.field(&name))?;
        }
    }
    Ok(member)
}

fn degraded_from(fields: Vec<(String, Value)>, path: Path<'_>) -> Result<Degraded, EventsError> {
    let mut degraded = Degraded {
        event_type: None,
        subtype: None,
    };
    for (name, value) in fields {
        let path = path.field(&name);
        match name.as_str() {
            "event_type" => degraded.event_type = opt_string(value, path)?,
            "subtype" => degraded.subtype = opt_string(value, path)?,
            _ => {}
        }
    }
    Ok(degraded)
}
