//! From a message event to the row it becomes, and how a posted entry's text and
//! history follow from its edits. Pure functions: the SQL is in `store`.

use serde_json::{json, Value};
use slackline_events::{Kind, MessageEvent, Mode};

/// `Kind::name()` of the entries that change the posted entry of their message.
pub(crate) const POSTED: &str = "posted";
/// See [`POSTED`].
pub(crate) const EDITED: &str = "edited";
/// See [`POSTED`].
pub(crate) const DELETED: &str = "deleted";

/// One row of `entries`, as first written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub team_id: String,
    /// `""` when the event named no channel.
    pub channel_id: String,
    /// `""` when the event had no ts.
    pub ts: String,
    pub fact: String,
    pub kind: &'static str,
    pub thread_ts: Option<String>,
    pub event_id: String,
    pub event_time_ms: Option<i64>,
    pub author_id: Option<String>,
    pub author_kind: Option<&'static str>,
    pub author_name: Option<String>,
    pub mode: &'static str,
    pub degraded_reason: Option<String>,
    pub archive_key: String,
    pub text: Option<String>,
    pub reaction: Option<String>,
    pub files: Value,
    /// Edited entries: the edit's ts.
    pub edited_ts: Option<String>,
}

impl Entry {
    /// The row for `event`.
    pub(crate) fn from_event(event: &MessageEvent) -> Entry {
        let shown_text = event.rendered_text.clone().or_else(|| event.text.clone());
        let (text, reaction, edited_ts) = match &event.kind {
            Kind::Deleted(d) => (d.previous_text.clone().or(shown_text), None, None),
            Kind::Edited(e) => (shown_text, None, e.edited_ts.clone()),
            Kind::ReactionAdded(r) | Kind::ReactionRemoved(r) => {
                (shown_text, Some(r.name.clone()), None)
            }
            Kind::Posted(_) | Kind::MemberJoined(_) | Kind::MemberLeft(_) | Kind::Degraded(_) => {
                (shown_text, None, None)
            }
        };
        let author = event.author.as_ref();
        let files = event
            .files
            .iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "name": f.name,
                    "mimetype": f.mimetype,
                    "size": f.size,
                    "url_private": f.url_private,
                })
            })
            .collect();
        let degraded = event.mode == Mode::Degraded || matches!(event.kind, Kind::Degraded(_));
        Entry {
            team_id: event.team_id.clone(),
            channel_id: event.channel_id.clone().unwrap_or_default(),
            ts: event.ts.clone().unwrap_or_default(),
            fact: event.fact(),
            kind: event.kind.name(),
            thread_ts: event.thread_ts.clone(),
            event_id: event.event_id.clone(),
            event_time_ms: event.event_time_ms,
            author_id: author.and_then(|a| a.user_id.clone()),
            author_kind: author.map(|a| a.kind.as_str()),
            author_name: author.and_then(|a| a.display_name.clone()),
            mode: if degraded {
                Mode::Degraded.as_str()
            } else {
                Mode::Full.as_str()
            },
            degraded_reason: event.degraded_reason.clone(),
            archive_key: event.archive_key.clone(),
            text,
            reaction,
            files: Value::Array(files),
            edited_ts,
        }
    }

    /// Whether writing this entry can change the posted entry of its message: posts,
    /// edits and deletes of a message with a ts.
    pub(crate) fn touches_posted(&self) -> bool {
        !self.ts.is_empty() && matches!(self.kind, POSTED | EDITED | DELETED)
    }
}

/// An edit entry of a message, as read back to fold it into the posted entry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct EditRow {
    pub fact: String,
    pub edited_ts: Option<String>,
    pub event_time_ms: Option<i64>,
    pub text: Option<String>,
}

/// What a posted entry shows after its edits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PostedView {
    /// The current text.
    pub text: Option<String>,
    /// Earlier versions, oldest first: `{"text": the text before the edit,
    /// "edited_ts": that edit's ts}`.
    pub history: Value,
    /// The facts of the edits folded in, in the order applied.
    pub applied_edits: Value,
}

/// A Slack ts (`"1700000000.000100"`) as (seconds, nanoseconds), to order numerically.
fn parse_ts(ts: &str) -> Option<(u64, u64)> {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    if secs.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = secs.parse().ok()?;
    let nanos = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32)
    };
    Some((secs, nanos))
}

/// When an edit happened: its edited ts, else the event time; `None` sorts last.
fn edit_time(edit: &EditRow) -> Option<(u64, u64)> {
    edit.edited_ts.as_deref().and_then(parse_ts).or_else(|| {
        let ms = u64::try_from(edit.event_time_ms?).ok()?;
        Some((ms / 1000, (ms % 1000) * 1_000_000))
    })
}

/// Applies `edits` to a message posted with `original`, in edited-ts order, each once
/// (the edits are facts, so each appears once): the current text is the latest edit's,
/// and every edit that changed the text moved the text before it into the history.
/// Edits without text, or with the text already shown (a link unfurl, a new reply
/// count), change nothing but are counted as applied. Recomputing from the stored
/// facts, rather than patching the row, makes the result the same whatever order the
/// post and its edits arrived in and however often each was redelivered.
pub(crate) fn fold_edits(original: Option<&str>, mut edits: Vec<EditRow>) -> PostedView {
    edits.sort_by(|a, b| {
        let (ka, kb) = (edit_time(a), edit_time(b));
        (ka.is_none(), ka, &a.fact).cmp(&(kb.is_none(), kb, &b.fact))
    });
    let mut text = original.map(str::to_owned);
    let mut history = Vec::new();
    let mut applied = Vec::with_capacity(edits.len());
    for edit in edits {
        applied.push(Value::String(edit.fact));
        let Some(new_text) = edit.text else { continue };
        if text.as_deref() == Some(new_text.as_str()) {
            continue;
        }
        history.push(json!({"text": text, "edited_ts": edit.edited_ts}));
        text = Some(new_text);
    }
    PostedView {
        text,
        history: Value::Array(history),
        applied_edits: Value::Array(applied),
    }
}

#[cfg(test)]
mod tests {
    use slackline_events::{Author, AuthorKind, Deleted, Posted, Reaction};

    use super::*;

    fn event(kind: Kind) -> MessageEvent {
        MessageEvent {
            event_id: "Ev1".into(),
            team_id: "T1".into(),
            channel_id: Some("C1".into()),
            ts: Some("1700000000.000100".into()),
            thread_ts: None,
            event_time_ms: Some(1_700_000_000_000),
            author: Some(Author {
                user_id: Some("U1".into()),
                team_id: None,
                kind: AuthorKind::Customer,
                display_name: Some("Carl".into()),
                email: None,
            }),
            text: Some("raw <b>".into()),
            rendered_text: Some("rendered".into()),
            files: Vec::new(),
            archive_key: "raw/k.json".into(),
            mode: Mode::Full,
            degraded_reason: None,
            kind,
        }
    }

    #[test]
    fn entries_take_the_rendered_text_and_the_fact_key() {
        let posted = Entry::from_event(&event(Kind::Posted(Posted {
            subtype: None,
            is_reply: false,
            is_broadcast: false,
        })));
        assert_eq!(posted.text.as_deref(), Some("rendered"));
        assert_eq!(
            (posted.kind, posted.fact.as_str(), posted.mode),
            ("posted", "posted", "full")
        );
        assert_eq!(posted.author_kind, Some("customer"));
        assert!(posted.touches_posted());

        let mut no_blocks = event(Kind::Posted(Posted {
            subtype: None,
            is_reply: false,
            is_broadcast: false,
        }));
        no_blocks.rendered_text = None;
        assert_eq!(
            Entry::from_event(&no_blocks).text.as_deref(),
            Some("raw <b>")
        );

        let deleted = Entry::from_event(&event(Kind::Deleted(Deleted {
            previous_text: Some("before".into()),
        })));
        assert_eq!(deleted.text.as_deref(), Some("before"));

        let reaction = Entry::from_event(&event(Kind::ReactionAdded(Reaction {
            name: "eyes".into(),
            item_user_id: None,
        })));
        assert_eq!(reaction.reaction.as_deref(), Some("eyes"));
        assert_eq!(reaction.fact, "reaction_added:eyes:U1:Ev1");
        assert!(!reaction.touches_posted());
    }

    #[test]
    fn degraded_events_keep_their_reason_and_lack_of_ts() {
        let mut e = event(Kind::Degraded(slackline_events::Degraded {
            event_type: None,
            subtype: None,
        }));
        e.ts = None;
        e.channel_id = None;
        e.degraded_reason = Some("not json".into());
        let entry = Entry::from_event(&e);
        assert_eq!((entry.mode, entry.kind), ("degraded", "degraded"));
        assert_eq!((entry.ts.as_str(), entry.channel_id.as_str()), ("", ""));
        assert_eq!(entry.degraded_reason.as_deref(), Some("not json"));
        assert_eq!(entry.archive_key, "raw/k.json");
        assert!(!entry.touches_posted());
    }

    fn edit(ts: &str, text: Option<&str>) -> EditRow {
        EditRow {
            fact: format!("edited:{ts}"),
            edited_ts: Some(ts.to_owned()),
            event_time_ms: None,
            text: text.map(str::to_owned),
        }
    }

    #[test]
    fn ts_order_is_numeric() {
        assert!(parse_ts("999999999.000001") < parse_ts("1000000000.000000"));
        assert_eq!(parse_ts("1700000000.0001"), parse_ts("1700000000.000100"));
        assert_eq!(parse_ts("17"), Some((17, 0)));
        assert_eq!(parse_ts("x.1"), None);
        assert_eq!(parse_ts("1.-1"), None);
        assert_eq!(parse_ts(""), None);
    }

    #[test]
    fn edits_fold_in_ts_order_whatever_the_arrival() {
        let edits = vec![
            edit("1700000300.000000", Some("third")),
            edit("1700000100.000000", Some("first")),
            edit("1700000200.000000", Some("second")),
        ];
        let view = fold_edits(Some("original"), edits);
        assert_eq!(view.text.as_deref(), Some("third"));
        assert_eq!(
            view.history,
            json!([
                {"text": "original", "edited_ts": "1700000100.000000"},
                {"text": "first", "edited_ts": "1700000200.000000"},
                {"text": "second", "edited_ts": "1700000300.000000"},
            ])
        );
        assert_eq!(
            view.applied_edits,
            json!([
                "edited:1700000100.000000",
                "edited:1700000200.000000",
                "edited:1700000300.000000"
            ])
        );
    }

    #[test]
    fn edits_that_change_nothing_leave_no_history() {
        let view = fold_edits(
            Some("same"),
            vec![
                edit("1700000100.000000", Some("same")),
                edit("1700000200.000000", None),
            ],
        );
        assert_eq!(view.text.as_deref(), Some("same"));
        assert_eq!(view.history, json!([]));
        assert_eq!(view.applied_edits.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn edits_without_ts_use_the_event_time_and_else_go_last() {
        let by_time = EditRow {
            fact: "edited:Ev1".into(),
            edited_ts: None,
            event_time_ms: Some(1_700_000_150_000),
            text: Some("by time".into()),
        };
        let unknown = EditRow {
            fact: "edited:Ev0".into(),
            edited_ts: None,
            event_time_ms: None,
            text: Some("unknown".into()),
        };
        let view = fold_edits(
            Some("o"),
            vec![unknown, edit("1700000200.000000", Some("later")), by_time],
        );
        assert_eq!(view.text.as_deref(), Some("unknown"));
        assert_eq!(
            view.applied_edits,
            json!(["edited:Ev1", "edited:1700000200.000000", "edited:Ev0"])
        );
    }

    #[test]
    fn no_edits_keep_the_original() {
        let view = fold_edits(None, Vec::new());
        assert_eq!(view.text, None);
        assert_eq!(view.history, json!([]));
        assert_eq!(view.applied_edits, json!([]));
    }
}
