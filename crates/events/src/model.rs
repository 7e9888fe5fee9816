//! The typed message events on `slack.messages.v1`: one record per fact.
//!
//! These types are the contract between the normalizer and every downstream service.
//! Their Avro form is `schemas/slack.messages.v1.avsc` (namespace
//! `io.slackline.messages.v1`); see the crate docs for the wire format.

/// One fact about a Slack conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageEvent {
    /// Slack's `event_id` of the delivery that carried this fact (the delivery key).
    pub event_id: String,
    /// The installing workspace (whose token to use): `authorizations[0].team_id`,
    /// else `context_team_id`, else the envelope's `team_id`.
    pub team_id: String,
    /// The channel, when the payload names one.
    pub channel_id: Option<String>,
    /// The message's `ts` (for reactions: the reacted-to message's ts; for edits and
    /// deletes: the edited or deleted message's ts).
    pub ts: Option<String>,
    /// The thread root's ts when the message is in a thread (equal to `ts` for a root
    /// that has replies, absent for a top-level message).
    pub thread_ts: Option<String>,
    /// Slack's `event_time` (seconds) or `event_ts`, in milliseconds since the epoch.
    pub event_time_ms: Option<i64>,
    /// Who did it, as far as we know.
    pub author: Option<Author>,
    /// The message text as Slack sent it (`text`), possibly empty.
    pub text: Option<String>,
    /// Text rendered from `blocks`: code blocks kept as ``` fenced code, links as
    /// `<url|label>` → `label (url)`, mentions as `@U123`, emoji as `:name:`.
    pub rendered_text: Option<String>,
    /// Files attached to the message.
    pub files: Vec<FileRef>,
    /// The archive object holding the raw request (from the edge's header).
    pub archive_key: String,
    /// Full, or degraded with a reason.
    pub mode: Mode,
    /// Why the event is degraded (set exactly when `mode` is `Degraded`).
    pub degraded_reason: Option<String>,
    /// What happened.
    pub kind: Kind,
}

/// Whether the normalizer could understand the payload fully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything the event could tell is here.
    Full,
    /// The minimum: channel, ts, author id, whatever text, archive key, reason.
    Degraded,
}

/// Who wrote or did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// Slack user id (`U…`/`W…`), or bot id (`B…`) for bot messages.
    pub user_id: Option<String>,
    /// The author's own workspace (`user_team` / `team`), when known.
    pub team_id: Option<String>,
    /// Agent, customer, bot or unknown.
    pub kind: AuthorKind,
    /// Display or real name, when known.
    pub display_name: Option<String>,
    /// Email, only when Slack shows it (often hidden for Slack Connect users).
    pub email: Option<String>,
}

/// The role of an author in a support conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorKind {
    /// A user of the installing workspace.
    Agent,
    /// A user of another workspace (the customer's).
    Customer,
    /// A bot or app.
    Bot,
    /// Hidden by Slack, or not determinable.
    Unknown,
}

/// A file attached to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// File id (`F…`).
    pub id: String,
    /// File name.
    pub name: Option<String>,
    /// MIME type.
    pub mimetype: Option<String>,
    /// Size in bytes.
    pub size: Option<i64>,
    /// Authenticated download URL.
    pub url_private: Option<String>,
    /// Thumbnail URLs, smallest first.
    pub thumbs: Vec<String>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A message was posted (top level, thread reply, broadcast, bot or file share).
    Posted(Posted),
    /// A message was edited (`message_changed`).
    Edited(Edited),
    /// A message was deleted (`message_deleted`, or a `tombstone` edit).
    Deleted(Deleted),
    /// A reaction was added to a message.
    ReactionAdded(Reaction),
    /// A reaction was removed from a message.
    ReactionRemoved(Reaction),
    /// A user joined the channel.
    MemberJoined(Member),
    /// A user left the channel.
    MemberLeft(Member),
    /// The payload could not be understood; see `degraded_reason`.
    Degraded(Degraded),
}

/// Details of a posted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// Slack's subtype, if any (`thread_broadcast`, `bot_message`, `me_message`,
    /// `file_share`, ...).
    pub subtype: Option<String>,
    /// Whether it is a reply in a thread (`thread_ts` present and different from `ts`).
    pub is_reply: bool,
    /// Whether a thread reply was also sent to the channel.
    pub is_broadcast: bool,
}

/// Details of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    /// The text before the edit, when Slack sent it.
    pub previous_text: Option<String>,
    /// When the edit happened (`edited.ts`, or the event ts).
    pub edited_ts: Option<String>,
}

/// Details of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The text before the delete, when Slack sent it.
    pub previous_text: Option<String>,
}

/// Details of a reaction change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The emoji name without colons (`white_check_mark`, custom names too).
    pub name: String,
    /// The author of the message reacted to, when Slack sent it.
    pub item_user_id: Option<String>,
}

/// Details of a membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who invited the user, when Slack sent it.
    pub inviter_id: Option<String>,
}

/// Details of a payload the normalizer could not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    /// The event's `type`, when there was one.
    pub event_type: Option<String>,
    /// The event's `subtype`, when there was one.
    pub subtype: Option<String>,
}

impl MessageEvent {
    /// The kind-of-change part of the message key (guarantee 2): with
    /// `(team_id, channel_id, ts)` it names one fact, so every consumer group records
    /// at most one effect for it, whatever redelivers it.
    ///
    /// - `posted` and `deleted`: one per message (a message event and an
    ///   `app_mention` of the same message are one fact);
    /// - `edited:<edited_ts>`: one per edit (`event_id` when Slack gave no edit ts);
    /// - `reaction_added:<name>:<user>:<event_id>` and `reaction_removed:…`: one per
    ///   delivery, since a user may add, remove and add the same reaction again;
    /// - `member_joined:<user>:<event_id>`, `member_left:…` likewise;
    /// - `degraded:<event_id>`: what could not be understood, once per delivery.
    pub fn fact(&self) -> String {
        let user = self
            .author
            .as_ref()
            .and_then(|a| a.user_id.as_deref())
            .unwrap_or("-");
        match &self.kind {
            Kind::Posted(_) => "posted".to_owned(),
            Kind::Edited(edit) => {
                format!(
                    "edited:{}",
                    edit.edited_ts.as_deref().unwrap_or(&self.event_id)
                )
            }
            Kind::Deleted(_) => "deleted".to_owned(),
            Kind::ReactionAdded(r) => {
                format!("reaction_added:{}:{user}:{}", r.name, self.event_id)
            }
            Kind::ReactionRemoved(r) => {
                format!("reaction_removed:{}:{user}:{}", r.name, self.event_id)
            }
            Kind::MemberJoined(_) => format!("member_joined:{user}:{}", self.event_id),
            Kind::MemberLeft(_) => format!("member_left:{user}:{}", self.event_id),
            Kind::Degraded(_) => format!("degraded:{}", self.event_id),
        }
    }
}
