//! From a raw Slack request body to exactly one outcome: a full message event, a
//! degraded one, or "ignored" with a named reason. Pure: no I/O, so every decision is
//! unit-tested and benchmarked on its own; author enrichment and deduplication happen
//! around it in the service.
//!
//! The rule is "degrade, never drop": a message-type payload we cannot fully
//! understand (unknown subtype, missing ts, broken shape, not JSON) still becomes an
//! event with whatever it has and the reason. Only payloads that are not about a
//! conversation are ignored, each with a reason that is counted.

use std::collections::HashSet;

use serde_json::{Map, Value};
use slackline_events::{
    Author, AuthorKind, Degraded, Deleted, Edited, FileRef, Kind, Member, MessageEvent, Mode,
    Posted, Reaction,
};

/// Why a raw event produced no message event. Each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// The installing workspace or the channel is not enabled.
    NotEnabled,
    /// An event type that is not about a conversation (`app_home_opened`, ...).
    IrrelevantType,
    /// Our own bot's or app's message coming back to us.
    OwnEcho,
    /// An event id already processed (a Slack retry).
    Duplicate,
    /// `url_verification` or `app_rate_limited` (handled and alerted at the edge).
    NotAnEvent,
    /// A notice that duplicates another event Slack sends (`app_mention` duplicates
    /// the `message`; `file_shared` duplicates the `file_share` message; a
    /// `channel_join` / `channel_leave` message duplicates `member_joined_channel` /
    /// `member_left_channel`).
    CoveredByOtherEvent,
    /// Slack's own notice about the channel (topic, purpose, name, archive, pins,
    /// reminders, huddles, ...): nobody's support message.
    Housekeeping,
    /// A message from Slackbot (`USLACKBOT`: `/remind`, custom responses).
    Slackbot,
    /// The hidden summary of a thread root (`message_replied`, or a `message_changed`
    /// whose only change is the root's reply count): the reply itself is its own event.
    ParentSummary,
}

impl IgnoreReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            IgnoreReason::NotEnabled => "not_enabled",
            IgnoreReason::IrrelevantType => "irrelevant_type",
            IgnoreReason::OwnEcho => "own_echo",
            IgnoreReason::Duplicate => "duplicate",
            IgnoreReason::NotAnEvent => "not_an_event",
            IgnoreReason::CoveredByOtherEvent => "covered_by_other_event",
            IgnoreReason::Housekeeping => "housekeeping",
            IgnoreReason::Slackbot => "slackbot",
            IgnoreReason::ParentSummary => "parent_summary",
        }
    }

    /// Every reason, for initialising metrics.
    pub const ALL: [IgnoreReason; 9] = [
        IgnoreReason::NotEnabled,
        IgnoreReason::IrrelevantType,
        IgnoreReason::OwnEcho,
        IgnoreReason::Duplicate,
        IgnoreReason::NotAnEvent,
        IgnoreReason::CoveredByOtherEvent,
        IgnoreReason::Housekeeping,
        IgnoreReason::Slackbot,
        IgnoreReason::ParentSummary,
    ];
}

/// The outcome of normalising one raw event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An event to produce (full or degraded).
    Event(Box<MessageEvent>),
    /// Nothing to produce, for this reason.
    Ignored {
        /// Why.
        reason: IgnoreReason,
        /// The event id, when known (for deduplication and logs).
        event_id: Option<String>,
        /// The inner event's type, when known (a metric label).
        event_type: Option<String>,
    },
}

/// What the normaliser knows besides the body.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `ENABLED_TEAMS`: installing workspaces to ingest; empty means all.
    pub enabled_teams: HashSet<String>,
    /// `ENABLED_CHANNELS`: channels to ingest; empty means all.
    pub enabled_channels: HashSet<String>,
    /// `SELF_BOT_IDS`: our bot ids (`B…`) and bot user ids (`U…`).
    pub self_bot_ids: HashSet<String>,
    /// `SELF_APP_IDS`: our app ids (`A…`).
    pub self_app_ids: HashSet<String>,
}

/// Facts about the raw record from Kafka, not from the body.
#[derive(Debug, Clone, Copy)]
pub struct RawMeta<'a> {
    /// The archive key header.
    pub archive_key: &'a str,
    /// The record key (the edge's routing key: channel, team or `unknown`).
    pub record_key: Option<&'a str>,
    /// The event id header.
    pub event_id: Option<&'a str>,
}

/// Message subtypes people and bots post with, understood fully. Which subtype gets
/// which outcome, and why, is the table in the README ("What the normalizer does").
const POSTED_SUBTYPES: [&str; 4] = [
    "thread_broadcast",
    "bot_message",
    "me_message",
    "file_share",
];

/// Slack's own notices about the channel: who changed the topic, pinned a message,
/// started a huddle. Nobody's support message, so ignored as `housekeeping` (an
/// agent's topic change must not look like a reply).
const HOUSEKEEPING_SUBTYPES: [&str; 24] = [
    "channel_topic",
    "channel_purpose",
    "channel_name",
    "channel_archive",
    "channel_unarchive",
    "channel_convert_to_private",
    "channel_convert_to_public",
    "channel_posting_permissions",
    "group_topic",
    "group_purpose",
    "group_name",
    "group_archive",
    "group_unarchive",
    "pinned_item",
    "unpinned_item",
    "reminder_add",
    "huddle_thread",
    "sh_room_created",
    "assistant_app_thread",
    "bot_add",
    "bot_remove",
    "bot_enable",
    "bot_disable",
    "channel_canvas_updated",
];

/// Joins and leaves told as messages. The dedicated events `member_joined_channel` /
/// `member_left_channel` tell the same fact (with the member's team and the inviter),
/// so these are `covered_by_other_event`: one membership fact per join or leave.
const MEMBERSHIP_SUBTYPES: [&str; 4] =
    ["channel_join", "group_join", "channel_leave", "group_leave"];

/// Legacy subtypes Slack no longer sends (file comments went in 2018): someone's words
/// in a shape we do not read, so degraded rather than ignored.
const LEGACY_SUBTYPES: [&str; 2] = ["file_comment", "file_mention"];

/// Slackbot's user id.
const SLACKBOT: &str = "USLACKBOT";

/// Slack's placeholder author of a message whose content the workspace revoked
/// (`ekm_access_denied`): not a user.
const REVOKED_USER: &str = "UREVOKEDU";

/// Fields of a thread root that Slack updates as replies come in. A `message_changed`
/// that changes only these is the root's reply summary, not an edit.
const THREAD_SUMMARY_FIELDS: [&str; 10] = [
    "thread_ts",
    "reply_count",
    "reply_users",
    "reply_users_count",
    "latest_reply",
    "replies",
    "subscribed",
    "last_read",
    "unread_count",
    "is_locked",
];

/// Fields Slack updates for pins and stars: a `message_changed` that changes only these
/// (and thread summary fields) is housekeeping, not an edit.
const PIN_FIELDS: [&str; 3] = ["pinned_to", "pinned_info", "is_starred"];

/// Event types that duplicate another event Slack sends for the same fact.
const COVERED_TYPES: [&str; 2] = ["app_mention", "file_shared"];

/// Normalises one raw request body.
pub fn normalize(body: &[u8], meta: RawMeta<'_>, rules: &Rules) -> Outcome {
    let parsed =
        serde_json::from_slice::<Value>(body).or_else(|first| match repair_lone_surrogates(body) {
            Some(repaired) => serde_json::from_slice::<Value>(&repaired).map_err(|_| first),
            None => Err(first),
        });
    let root = match parsed {
        Ok(Value::Object(root)) => root,
        Ok(_) => return degraded_without_body(meta, "body is JSON but not an object"),
        Err(e) => return degraded_without_body(meta, &format!("body is not JSON: {e}")),
    };
    // An empty header is no id (found by fuzzing: it would be one shared dedup key).
    let event_id = str_field(&root, "event_id")
        .or(meta.event_id.filter(|id| !id.is_empty()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("archive:{}", meta.archive_key));
    let ignored = |reason, event_type: Option<&str>| Outcome::Ignored {
        reason,
        event_id: Some(event_id.clone()),
        event_type: event_type.map(str::to_owned),
    };
    if let Some(t @ ("url_verification" | "app_rate_limited")) = str_field(&root, "type") {
        return ignored(IgnoreReason::NotAnEvent, Some(t));
    }
    // A bare inner event (no envelope) is treated as its own event.
    let event = match root.get("event") {
        Some(Value::Object(event)) => event,
        Some(_) => return degraded(&root, None, meta, event_id, "event is not an object"),
        None if root.contains_key("channel") || root.contains_key("ts") => &root,
        None => return degraded(&root, None, meta, event_id, "no event in the envelope"),
    };
    let team_id = installing_team(&root);
    let event_type = str_field(event, "type").unwrap_or("");
    let type_label = Some(event_type).filter(|t| !t.is_empty());
    if !rules.enabled_teams.is_empty() && !rules.enabled_teams.contains(&team_id) {
        return ignored(IgnoreReason::NotEnabled, type_label);
    }
    let is_message_like = matches!(
        event_type,
        "message"
            | "reaction_added"
            | "reaction_removed"
            | "member_joined_channel"
            | "member_left_channel"
    );
    if COVERED_TYPES.contains(&event_type) {
        return ignored(IgnoreReason::CoveredByOtherEvent, type_label);
    }
    if !is_message_like {
        if event_type.is_empty() {
            return degraded(&root, Some(event), meta, event_id, "event has no type");
        }
        return ignored(IgnoreReason::IrrelevantType, type_label);
    }
    let channel = slackline_slack::event_channel(event).or_else(|| {
        meta.record_key
            .filter(|k| slackline_slack::is_channel_id(k))
            .map(str::to_owned)
    });
    if let Some(channel) = &channel {
        if !rules.enabled_channels.is_empty() && !rules.enabled_channels.contains(channel) {
            return ignored(IgnoreReason::NotEnabled, type_label);
        }
    }
    // Our own messages are ignored, except the slack-sender's replies (crate::echo).
    let reply_agent = match event_type {
        "message" => crate::echo::reply_agent(&root, event, rules, &team_id),
        _ => None,
    };
    if reply_agent.is_none() && is_own_echo(event, rules) {
        return ignored(IgnoreReason::OwnEcho, type_label);
    }
    if event_type == "message" {
        if let Some(reason) = not_a_support_message(event) {
            return ignored(reason, type_label);
        }
    }

    let mut builder = Builder {
        root: &root,
        event,
        team_id,
        channel,
        event_id,
        archive_key: meta.archive_key,
    };
    let result = match event_type {
        "message" => builder.message(),
        "reaction_added" | "reaction_removed" => builder.reaction(event_type == "reaction_added"),
        _ => builder.membership(event_type == "member_joined_channel"),
    };
    let mut outcome = match result {
        Ok(event) => Outcome::Event(Box::new(event)),
        Err(reason) => builder.degrade(&reason),
    };
    // Our echo stays the agent's reply when degraded too: never a customer message.
    if let (Outcome::Event(event), Some(agent)) = (&mut outcome, reply_agent) {
        crate::echo::as_agent_reply(event, agent);
    }
    outcome
}

struct Builder<'a> {
    root: &'a Map<String, Value>,
    event: &'a Map<String, Value>,
    team_id: String,
    channel: Option<String>,
    event_id: String,
    archive_key: &'a str,
}

impl Builder<'_> {
    fn base(&self, source: &Map<String, Value>, kind: Kind) -> MessageEvent {
        MessageEvent {
            event_id: self.event_id.clone(),
            team_id: self.team_id.clone(),
            channel_id: self.channel.clone(),
            ts: str_field(source, "ts").map(str::to_owned),
            thread_ts: str_field(source, "thread_ts").map(str::to_owned),
            event_time_ms: event_time_ms(self.root, self.event),
            author: author(source, &self.team_id, str_field(self.root, "team_id")),
            text: str_field(source, "text").map(str::to_owned),
            rendered_text: source.get("blocks").and_then(crate::render::render_blocks),
            files: files(source),
            archive_key: self.archive_key.to_owned(),
            mode: Mode::Full,
            degraded_reason: None,
            kind,
        }
    }

    fn require_channel(&self) -> Result<(), String> {
        match self.channel {
            Some(_) => Ok(()),
            None => Err("no channel".into()),
        }
    }

    fn message(&mut self) -> Result<MessageEvent, String> {
        self.require_channel()?;
        let subtype = str_field(self.event, "subtype");
        match subtype {
            Some("message_changed") => {
                let Some(Value::Object(inner)) = self.event.get("message") else {
                    return Err(format!(
                        "{} without a message object",
                        subtype.unwrap_or_default()
                    ));
                };
                let previous = match self.event.get("previous_message") {
                    Some(Value::Object(p)) => str_field(p, "text").map(str::to_owned),
                    _ => None,
                };
                if str_field(inner, "ts").is_none() {
                    return Err("edited message has no ts".into());
                }
                let kind = if str_field(inner, "subtype") == Some("tombstone") {
                    // A thread root deleted while it had replies stays as a tombstone.
                    Kind::Deleted(Deleted {
                        previous_text: previous,
                    })
                } else {
                    Kind::Edited(Edited {
                        previous_text: previous,
                        edited_ts: match inner.get("edited") {
                            Some(Value::Object(e)) => str_field(e, "ts").map(str::to_owned),
                            _ => None,
                        }
                        .or_else(|| str_field(self.event, "event_ts").map(str::to_owned)),
                    })
                };
                Ok(self.base(inner, kind))
            }
            Some("message_deleted") => {
                let previous = match self.event.get("previous_message") {
                    Some(Value::Object(p)) => Some(p),
                    _ => None,
                };
                let deleted_ts = str_field(self.event, "deleted_ts")
                    .or_else(|| previous.and_then(|p| str_field(p, "ts")))
                    .ok_or("message_deleted without deleted_ts")?;
                let mut event = self.base(
                    previous.unwrap_or(self.event),
                    Kind::Deleted(Deleted {
                        previous_text: previous
                            .and_then(|p| str_field(p, "text"))
                            .map(str::to_owned),
                    }),
                );
                event.ts = Some(deleted_ts.to_owned());
                event.text = None;
                event.rendered_text = None;
                event.files = Vec::new();
                Ok(event)
            }
            other => {
                match other {
                    // Someone's message whose content the workspace revoked: the team
                    // must know there was one.
                    Some(s @ "ekm_access_denied") => {
                        return Err(format!("{s}: content revoked by the workspace"));
                    }
                    Some(s) if LEGACY_SUBTYPES.contains(&s) => {
                        return Err(format!("legacy message subtype {s:?}"));
                    }
                    Some(s) if !POSTED_SUBTYPES.contains(&s) => {
                        return Err(format!("unknown message subtype {s:?}"));
                    }
                    _ => {}
                }
                let ts = str_field(self.event, "ts").ok_or("message without ts")?;
                // Slack hid the author (no user, no bot, no subtype saying who posts):
                // nobody can tell a customer's request from an agent's reply, so the
                // team must look (the degraded path keeps channel, ts, team, text).
                if other.is_none() && author(self.event, &self.team_id, None).is_none() {
                    return Err("missing_author".into());
                }
                let thread_ts = str_field(self.event, "thread_ts");
                Ok(self.base(
                    self.event,
                    Kind::Posted(Posted {
                        subtype: other.map(str::to_owned),
                        // A reply, with or without its subtype: thread_ts differs from ts.
                        is_reply: thread_ts.is_some_and(|t| t != ts),
                        is_broadcast: other == Some("thread_broadcast"),
                    }),
                ))
            }
        }
    }

    fn reaction(&mut self, added: bool) -> Result<MessageEvent, String> {
        let item = match self.event.get("item") {
            Some(Value::Object(item)) => item,
            _ => return Err("reaction without an item".into()),
        };
        if str_field(item, "type") != Some("message") {
            return Err(format!(
                "reaction on a {}, not a message",
                str_field(item, "type").unwrap_or("missing item type")
            ));
        }
        self.require_channel()?;
        let name = str_field(self.event, "reaction").ok_or("reaction without a name")?;
        let reaction = Reaction {
            name: name.to_owned(),
            item_user_id: str_field(self.event, "item_user").map(str::to_owned),
        };
        let mut event = self.base(
            self.event,
            if added {
                Kind::ReactionAdded(reaction)
            } else {
                Kind::ReactionRemoved(reaction)
            },
        );
        event.ts = Some(
            str_field(item, "ts")
                .ok_or("reaction item without ts")?
                .to_owned(),
        );
        Ok(event)
    }

    fn membership(&mut self, joined: bool) -> Result<MessageEvent, String> {
        self.require_channel()?;
        let member = Member {
            inviter_id: str_field(self.event, "inviter").map(str::to_owned),
        };
        let mut event = self.base(
            self.event,
            if joined {
                Kind::MemberJoined(member)
            } else {
                Kind::MemberLeft(member)
            },
        );
        event.ts = str_field(self.event, "event_ts").map(str::to_owned);
        Ok(event)
    }

    /// The minimum: channel, ts, author id, whatever text, archive key, reason.
    fn degrade(&self, reason: &str) -> Outcome {
        degraded(
            self.root,
            Some(self.event),
            RawMeta {
                archive_key: self.archive_key,
                record_key: self.channel.as_deref(),
                event_id: None,
            },
            self.event_id.clone(),
            reason,
        )
    }
}

fn degraded(
    root: &Map<String, Value>,
    event: Option<&Map<String, Value>>,
    meta: RawMeta<'_>,
    event_id: String,
    reason: &str,
) -> Outcome {
    let team_id = installing_team(root);
    let source = event.unwrap_or(root);
    let inner = match source.get("message") {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let pick = |name: &str| {
        str_field(source, name)
            .or_else(|| inner.and_then(|m| str_field(m, name)))
            .map(str::to_owned)
    };
    let channel = event.and_then(slackline_slack::event_channel).or_else(|| {
        meta.record_key
            .filter(|k| slackline_slack::is_channel_id(k))
            .map(str::to_owned)
    });
    let sender_team = str_field(root, "team_id");
    let author = author(source, &team_id, sender_team)
        .or_else(|| inner.and_then(|m| author(m, &team_id, sender_team)));
    Outcome::Event(Box::new(MessageEvent {
        event_id,
        team_id,
        channel_id: channel,
        ts: pick("ts").or_else(|| pick("deleted_ts")),
        thread_ts: pick("thread_ts"),
        event_time_ms: event.and_then(|e| event_time_ms(root, e)),
        author: author.map(|a| Author {
            // The minimum is the id; the rest may be from a shape we misread.
            display_name: None,
            email: None,
            ..a
        }),
        text: pick("text"),
        rendered_text: None,
        files: Vec::new(),
        archive_key: meta.archive_key.to_owned(),
        mode: Mode::Degraded,
        degraded_reason: Some(reason.to_owned()),
        kind: Kind::Degraded(Degraded {
            event_type: str_field(source, "type")
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            subtype: str_field(source, "subtype").map(str::to_owned),
        }),
    }))
}

fn degraded_without_body(meta: RawMeta<'_>, reason: &str) -> Outcome {
    degraded(
        &Map::new(),
        None,
        meta,
        meta.event_id
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("archive:{}", meta.archive_key)),
        reason,
    )
}

fn str_field<'v>(object: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    object
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The installing workspace: `authorizations[0].team_id`, else `context_team_id`,
/// else the envelope's `team_id` (in shared channels that one is the sender's).
fn installing_team(root: &Map<String, Value>) -> String {
    root.get("authorizations")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_object)
        .and_then(|a| str_field(a, "team_id"))
        .or_else(|| str_field(root, "context_team_id"))
        .or_else(|| str_field(root, "team_id"))
        .unwrap_or("unknown")
        .to_owned()
}

fn is_own_echo(event: &Map<String, Value>, rules: &Rules) -> bool {
    let inner = match event.get("message") {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    };
    let bot_profile_app = |o: &Map<String, Value>| match o.get("bot_profile") {
        Some(Value::Object(p)) => str_field(p, "app_id").map(str::to_owned),
        _ => None,
    };
    [Some(event), inner].into_iter().flatten().any(|o| {
        let bot = str_field(o, "bot_id").is_some_and(|b| rules.self_bot_ids.contains(b));
        let user = str_field(o, "user").is_some_and(|u| rules.self_bot_ids.contains(u));
        let app = str_field(o, "app_id")
            .map(str::to_owned)
            .or_else(|| bot_profile_app(o))
            .is_some_and(|a| rules.self_app_ids.contains(&a));
        bot || user || app
    })
}

/// The author's user id: `user` as a string or an object; Slack's placeholder for
/// revoked content (`UREVOKEDU`) is nobody.
fn user_field(source: &Map<String, Value>) -> Option<&str> {
    match source.get("user") {
        Some(Value::String(u)) => Some(u.as_str()),
        // Some payloads carry the user as an object.
        Some(Value::Object(u)) => str_field(u, "id"),
        _ => None,
    }
    .filter(|u| !u.is_empty() && *u != REVOKED_USER)
}

fn is_bot(source: &Map<String, Value>) -> bool {
    str_field(source, "bot_id").is_some()
        || str_field(source, "subtype") == Some("bot_message")
        || matches!(source.get("bot_profile"), Some(Value::Object(_)))
}

/// Who wrote `source`. A bot's team is its own workspace: `bot_profile.team_id`, else
/// the message's `user_team` / `team`, else the envelope's `team_id` (`sender_team`,
/// the sender's workspace), so that a customer's bot is known as the customer's.
fn author(
    source: &Map<String, Value>,
    installing_team: &str,
    sender_team: Option<&str>,
) -> Option<Author> {
    let user_id = user_field(source).map(str::to_owned);
    let bot_id = str_field(source, "bot_id");
    let is_bot = is_bot(source);
    let profile = match source.get("user_profile") {
        Some(Value::Object(p)) => Some(p),
        _ => None,
    };
    let bot_profile = match source.get("bot_profile") {
        Some(Value::Object(p)) => Some(p),
        _ => None,
    };
    let message_team = str_field(source, "user_team")
        .or_else(|| str_field(source, "team"))
        .or_else(|| profile.and_then(|p| str_field(p, "team")));
    let team_id = if is_bot {
        bot_profile
            .and_then(|p| str_field(p, "team_id"))
            .or(message_team)
            .or(sender_team)
    } else {
        message_team
    }
    .map(str::to_owned);
    if user_id.is_none() && bot_id.is_none() {
        return None;
    }
    let kind = if is_bot {
        AuthorKind::Bot
    } else {
        author_kind(team_id.as_deref(), installing_team)
    };
    let display_name = profile
        .and_then(|p| str_field(p, "display_name").or_else(|| str_field(p, "real_name")))
        .or_else(|| str_field(source, "username"))
        .or_else(|| bot_profile.and_then(|p| str_field(p, "name")))
        .map(str::to_owned);
    Some(Author {
        user_id: user_id.or_else(|| bot_id.map(str::to_owned)),
        team_id,
        kind,
        display_name,
        email: None,
    })
}

/// Why a `message` event is nobody's support message, if it is: Slack's housekeeping,
/// Slackbot, a thread root's reply summary, a join or leave told as a message. An edit
/// or delete of such a message is ignored for the same reason (there is no support
/// message to edit or delete), except that of a join or leave message: no other event
/// covers the edit or delete, so it is `housekeeping`. A root deleted while it had
/// replies (a Slackbot `tombstone`) stays a delete.
fn not_a_support_message(event: &Map<String, Value>) -> Option<IgnoreReason> {
    let object = |name: &str| match event.get(name) {
        Some(Value::Object(o)) => Some(o),
        _ => None,
    };
    match str_field(event, "subtype") {
        Some("message_replied") => Some(IgnoreReason::ParentSummary),
        Some("message_changed") => {
            // Without a message object the edit degrades (as before).
            let inner = object("message")?;
            let previous = object("previous_message");
            if let Some(reason) = previous.and_then(changed_ignore_reason) {
                return Some(reason);
            }
            if str_field(inner, "subtype") == Some("tombstone") {
                return None;
            }
            changed_ignore_reason(inner).or_else(|| summary_only_change(inner, previous))
        }
        Some("message_deleted") => object("previous_message").and_then(changed_ignore_reason),
        _ => posted_ignore_reason(event),
    }
}

/// Why a message as posted is nobody's support message, if it is.
fn posted_ignore_reason(message: &Map<String, Value>) -> Option<IgnoreReason> {
    match str_field(message, "subtype") {
        Some(s) if HOUSEKEEPING_SUBTYPES.contains(&s) => Some(IgnoreReason::Housekeeping),
        Some(s) if MEMBERSHIP_SUBTYPES.contains(&s) => Some(IgnoreReason::CoveredByOtherEvent),
        Some("slackbot_response") => Some(IgnoreReason::Slackbot),
        Some("tombstone") => None,
        _ if user_field(message) == Some(SLACKBOT) => Some(IgnoreReason::Slackbot),
        _ => None,
    }
}

/// Why an edit or delete of `message` is nobody's: the reason of the message as
/// posted, but `housekeeping` for a join or leave message (only the message itself is
/// covered by the membership event, not its edit or delete).
fn changed_ignore_reason(message: &Map<String, Value>) -> Option<IgnoreReason> {
    posted_ignore_reason(message).map(|reason| match reason {
        IgnoreReason::CoveredByOtherEvent => IgnoreReason::Housekeeping,
        other => other,
    })
}

/// A `message_changed` that is not an edit: only the thread summary of a root changed
/// (`parent_summary`), or only pins and stars (`housekeeping`). Without
/// `previous_message` to compare with: no `edited` mark and the root's reply counters.
fn summary_only_change(
    inner: &Map<String, Value>,
    previous: Option<&Map<String, Value>>,
) -> Option<IgnoreReason> {
    let Some(previous) = previous else {
        let summary = !inner.contains_key("edited")
            && ["reply_count", "latest_reply", "reply_users"]
                .iter()
                .any(|f| inner.contains_key(*f));
        return summary.then_some(IgnoreReason::ParentSummary);
    };
    let changed: Vec<&str> = inner
        .keys()
        .chain(previous.keys())
        .filter(|k| inner.get(*k) != previous.get(*k))
        .map(String::as_str)
        .collect();
    if changed.is_empty() {
        return None;
    }
    if changed.iter().all(|k| THREAD_SUMMARY_FIELDS.contains(k)) {
        return Some(IgnoreReason::ParentSummary);
    }
    if changed
        .iter()
        .all(|k| THREAD_SUMMARY_FIELDS.contains(k) || PIN_FIELDS.contains(k))
    {
        return Some(IgnoreReason::Housekeeping);
    }
    None
}

/// Agents are users of the installing workspace, customers those of other workspaces.
pub fn author_kind(author_team: Option<&str>, installing_team: &str) -> AuthorKind {
    match author_team {
        Some(team) if team == installing_team => AuthorKind::Agent,
        Some(_) => AuthorKind::Customer,
        None => AuthorKind::Unknown,
    }
}

/// When the fact happened: the event's own `event_ts` (or `ts`), which has
/// sub-second precision, so that thread-state can order a reaction against messages
/// of the same second; else the envelope's `event_time` (whole seconds).
fn event_time_ms(root: &Map<String, Value>, event: &Map<String, Value>) -> Option<i64> {
    let from_ts = || {
        let ts = str_field(event, "event_ts").or_else(|| str_field(event, "ts"))?;
        let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
        let secs: i64 = secs.parse().ok()?;
        let millis: i64 = frac
            .get(..3.min(frac.len()))
            .map_or(Ok(0), |f| format!("{f:0<3}").parse())
            .ok()?;
        Some(secs.saturating_mul(1000).saturating_add(millis))
    };
    from_ts().or_else(|| {
        root.get("event_time")
            .and_then(Value::as_i64)
            .map(|t| t.saturating_mul(1000))
    })
}

fn files(source: &Map<String, Value>) -> Vec<FileRef> {
    const THUMBS: [&str; 8] = [
        "thumb_64",
        "thumb_80",
        "thumb_160",
        "thumb_360",
        "thumb_480",
        "thumb_720",
        "thumb_960",
        "thumb_1024",
    ];
    let Some(Value::Array(files)) = source.get("files") else {
        return Vec::new();
    };
    files
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|f| {
            Some(FileRef {
                id: str_field(f, "id")?.to_owned(),
                name: str_field(f, "name").map(str::to_owned),
                mimetype: str_field(f, "mimetype").map(str::to_owned),
                size: f.get("size").and_then(Value::as_i64),
                url_private: str_field(f, "url_private").map(str::to_owned),
                thumbs: THUMBS
                    .iter()
                    .filter_map(|t| str_field(f, t).map(str::to_owned))
                    .collect(),
            })
        })
        .collect()
}

/// Replaces `\uD800`-`\uDFFF` escapes that do not form a surrogate pair with
/// `\uFFFD`, so a body with a lone surrogate (valid JSON text to some encoders,
/// rejected by serde_json) can still be read. `None` when there is nothing to repair.
pub fn repair_lone_surrogates(body: &[u8]) -> Option<Vec<u8>> {
    fn hex4(b: &[u8]) -> Option<u16> {
        let s = std::str::from_utf8(b.get(..4)?).ok()?;
        u16::from_str_radix(s, 16).ok()
    }
    let mut out = Vec::with_capacity(body.len());
    let mut changed = false;
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' && body.get(i + 1) == Some(&b'u') {
            if let Some(unit) = hex4(&body[i + 2..]) {
                let is_high = (0xD800..0xDC00).contains(&unit);
                let is_low = (0xDC00..0xE000).contains(&unit);
                let next_low = body.get(i + 6) == Some(&b'\\')
                    && body.get(i + 7) == Some(&b'u')
                    && body
                        .get(i + 8..)
                        .and_then(hex4)
                        .is_some_and(|n| (0xDC00..0xE000).contains(&n));
                if is_high && next_low {
                    out.extend_from_slice(&body[i..i + 12]);
                    i += 12;
                    continue;
                }
                if is_high || is_low {
                    out.extend_from_slice(b"\\uFFFD");
                    changed = true;
                    i += 6;
                    continue;
                }
            }
            // Any other escape (including `\\`) is copied with its next byte.
            out.extend_from_slice(&body[i..i + 2]);
            i += 2;
            continue;
        }
        if body[i] == b'\\' {
            out.extend_from_slice(&body[i..(i + 2).min(body.len())]);
            i += 2;
            continue;
        }
        out.push(body[i]);
        i += 1;
    }
    changed.then_some(out)
}
