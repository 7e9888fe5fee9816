//! Which message events are worth a notification, and its text.

use sha2::{Digest, Sha256};
use slackline_events::{AuthorKind, Kind, MessageEvent, Mode};

/// How much of a message's text goes into a notification (in characters).
pub const MAX_TEXT_CHARS: usize = 500;

/// What a notification is about (the `kind` label of the sent counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    /// A customer posted a message.
    Message,
    /// A message could not be fully processed.
    Degraded,
}

impl NotificationKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            NotificationKind::Message => "message",
            NotificationKind::Degraded => "degraded",
        }
    }
}

/// Why an event gets no notification (the `reason` label of the skipped counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// An edit, delete, reaction or membership change.
    NotAPost,
    /// A post by an agent (a user of the installing workspace).
    Agent,
    /// A post by a bot or app.
    Bot,
}

impl SkipReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::NotAPost => "not_a_post",
            SkipReason::Agent => "agent",
            SkipReason::Bot => "bot",
        }
    }
}

/// The message key of a fact: `(team, channel or "", ts or "", fact)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FactKey {
    /// The installing team.
    pub team_id: String,
    /// The channel, or "".
    pub channel_id: String,
    /// The message ts, or "".
    pub ts: String,
    /// [`MessageEvent::fact`].
    pub fact: String,
}

impl FactKey {
    /// The key of `event`'s fact.
    pub fn of(event: &MessageEvent) -> FactKey {
        FactKey {
            team_id: event.team_id.clone(),
            channel_id: event.channel_id.clone().unwrap_or_default(),
            ts: event.ts.clone().unwrap_or_default(),
            fact: event.fact(),
        }
    }

    /// A stable, email-safe `Message-ID` for this fact (`<hex@slackline.notifier>`),
    /// so mail clients can drop a duplicate too.
    pub fn message_id(&self) -> String {
        let mut hash = Sha256::new();
        for part in [&self.team_id, &self.channel_id, &self.ts, &self.fact] {
            hash.update(part.as_bytes());
            hash.update([0u8]);
        }
        let digest = hash.finalize();
        format!("<{}@slackline.notifier>", hex::encode(&digest[..16]))
    }
}

impl std::fmt::Display for FactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.team_id, self.channel_id, self.ts, self.fact
        )
    }
}

/// One notification, the same for every target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// What it is about.
    pub kind: NotificationKind,
    /// The fact it notifies.
    pub key: FactKey,
    /// The event that carried the fact (recorded with the claim).
    pub event_id: String,
    /// The email subject.
    pub subject: String,
    /// The text (webhook message, email body).
    pub text: String,
}

/// The first `max` characters of `text`, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
    }
}

/// The notification for `event`, or why there is none.
pub fn notification_for(event: &MessageEvent) -> Result<Notification, SkipReason> {
    let key = FactKey::of(event);
    let channel = event.channel_id.as_deref().unwrap_or("an unknown channel");
    if event.mode == Mode::Degraded || matches!(event.kind, Kind::Degraded(_)) {
        let ts = event.ts.as_deref().unwrap_or("unknown");
        let reason = event.degraded_reason.as_deref().unwrap_or("unknown reason");
        return Ok(Notification {
            kind: NotificationKind::Degraded,
            subject: format!("[slackline] A message could not be fully processed in {channel}"),
            text: format!(
                "A message could not be fully processed in {channel} (ts {ts}): {reason}. \
                 Archive key: {}",
                event.archive_key
            ),
            event_id: event.event_id.clone(),
            key,
        });
    }
    if !matches!(event.kind, Kind::Posted(_)) {
        return Err(SkipReason::NotAPost);
    }
    let author_kind = event
        .author
        .as_ref()
        .map_or(AuthorKind::Unknown, |a| a.kind);
    match author_kind {
        AuthorKind::Agent => return Err(SkipReason::Agent),
        AuthorKind::Bot => return Err(SkipReason::Bot),
        AuthorKind::Customer | AuthorKind::Unknown => {}
    }
    let name = event
        .author
        .as_ref()
        .and_then(|a| a.display_name.as_deref().or(a.user_id.as_deref()))
        .unwrap_or("an unknown author");
    let text = event
        .rendered_text
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .or(event.text.as_deref())
        .unwrap_or_default();
    let thread = event
        .thread_ts
        .as_deref()
        .or(event.ts.as_deref())
        .unwrap_or("unknown");
    Ok(Notification {
        kind: NotificationKind::Message,
        subject: format!("[slackline] New message from {name} in {channel}"),
        text: format!(
            "New message from {name} in {channel} (thread {thread}): {}",
            truncate(text.trim(), MAX_TEXT_CHARS)
        ),
        event_id: event.event_id.clone(),
        key,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use slackline_events::{Author, Degraded, Edited, Posted, Reaction};

    use super::*;

    fn post(author: Option<Author>) -> MessageEvent {
        MessageEvent {
            event_id: "Ev1".into(),
            team_id: "T1".into(),
            channel_id: Some("C1".into()),
            ts: Some("100.1".into()),
            thread_ts: None,
            event_time_ms: None,
            author,
            text: Some("raw <@U2>".into()),
            rendered_text: Some("hello @U2".into()),
            files: vec![],
            archive_key: "raw/k.json".into(),
            mode: Mode::Full,
            degraded_reason: None,
            kind: Kind::Posted(Posted {
                subtype: None,
                is_reply: false,
                is_broadcast: false,
            }),
        }
    }

    fn author(kind: AuthorKind, name: Option<&str>) -> Option<Author> {
        Some(Author {
            user_id: Some("U9".into()),
            team_id: Some("TX".into()),
            kind,
            display_name: name.map(str::to_owned),
            email: None,
        })
    }

    #[test]
    fn customer_post() {
        let n = notification_for(&post(author(AuthorKind::Customer, Some("Ana")))).unwrap();
        assert_eq!(n.kind, NotificationKind::Message);
        assert_eq!(
            n.text,
            "New message from Ana in C1 (thread 100.1): hello @U2"
        );
        assert_eq!(n.key.to_string(), "T1/C1/100.1/posted");

        let mut reply = post(author(AuthorKind::Unknown, None));
        reply.thread_ts = Some("90.0".into());
        reply.rendered_text = None;
        let n = notification_for(&reply).unwrap();
        assert_eq!(n.text, "New message from U9 in C1 (thread 90.0): raw <@U2>");

        let n = notification_for(&post(None)).unwrap();
        assert!(n
            .text
            .starts_with("New message from an unknown author in C1"));
    }

    #[test]
    fn agents_bots_and_other_kinds_are_skipped() {
        let e = post(author(AuthorKind::Agent, None));
        assert_eq!(notification_for(&e), Err(SkipReason::Agent));
        let e = post(author(AuthorKind::Bot, None));
        assert_eq!(notification_for(&e), Err(SkipReason::Bot));
        let mut e = post(author(AuthorKind::Customer, None));
        e.kind = Kind::Edited(Edited {
            previous_text: None,
            edited_ts: Some("101.0".into()),
        });
        assert_eq!(notification_for(&e), Err(SkipReason::NotAPost));
        e.kind = Kind::ReactionAdded(Reaction {
            name: "eyes".into(),
            item_user_id: None,
        });
        assert_eq!(notification_for(&e), Err(SkipReason::NotAPost));
    }

    #[test]
    fn degraded_events_are_notified_whatever_their_kind() {
        let mut e = post(author(AuthorKind::Agent, None));
        e.mode = Mode::Degraded;
        e.degraded_reason = Some("unknown_subtype".into());
        let n = notification_for(&e).unwrap();
        assert_eq!(n.kind, NotificationKind::Degraded);
        assert_eq!(
            n.text,
            "A message could not be fully processed in C1 (ts 100.1): unknown_subtype. \
             Archive key: raw/k.json"
        );
        e.kind = Kind::Degraded(Degraded {
            event_type: None,
            subtype: None,
        });
        e.channel_id = None;
        e.ts = None;
        let n = notification_for(&e).unwrap();
        assert!(
            n.text.starts_with(
                "A message could not be fully processed in an unknown channel (ts unknown)"
            ),
            "{}",
            n.text
        );
        assert_eq!(n.key.fact, "degraded:Ev1");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let text = "é".repeat(600);
        let cut = truncate(&text, MAX_TEXT_CHARS);
        assert_eq!(cut.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn message_ids_are_stable_per_fact() {
        let a = FactKey::of(&post(None));
        let mut other = post(None);
        other.event_id = "Ev2".into(); // app_mention of the same post: same fact
        assert_eq!(a.message_id(), FactKey::of(&other).message_id());
        other.ts = Some("100.2".into());
        assert_ne!(a.message_id(), FactKey::of(&other).message_id());
        let id = a.message_id();
        assert!(
            id.starts_with('<') && id.ends_with("@slackline.notifier>"),
            "{id}"
        );
    }
}
