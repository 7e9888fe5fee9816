//! Sample events: every kind, with every optional field set and with none set.

use crate::model::{
    Author, AuthorKind, Degraded, Deleted, Edited, FileRef, Kind, Member, MessageEvent, Mode,
    Posted, Reaction,
};

/// Every kind, with every optional field of the kind set (`full`) or unset.
pub(crate) fn kinds(full: bool) -> Vec<Kind> {
    let s = |v: &str| full.then(|| v.to_owned());
    let reaction = || Reaction {
        name: "white_check_mark".to_owned(),
        item_user_id: s("U0CUSTOMER"),
    };
    vec![
        Kind::Posted(Posted {
            subtype: s("thread_broadcast"),
            is_reply: full,
            is_broadcast: full,
        }),
        Kind::Edited(Edited {
            previous_text: s("before"),
            edited_ts: s("1700000100.000200"),
        }),
        Kind::Deleted(Deleted {
            previous_text: s("oops"),
        }),
        Kind::ReactionAdded(reaction()),
        Kind::ReactionRemoved(reaction()),
        Kind::MemberJoined(Member {
            inviter_id: s("U0AGENT"),
        }),
        Kind::MemberLeft(Member {
            inviter_id: s("U0AGENT"),
        }),
        Kind::Degraded(Degraded {
            event_type: s("message"),
            subtype: s("huddle_thread"),
        }),
    ]
}

/// An event with every optional field set.
pub(crate) fn full_event(kind: Kind) -> MessageEvent {
    MessageEvent {
        event_id: "Ev0123456789".to_owned(),
        team_id: "T0INSTALL".to_owned(),
        channel_id: Some("C0SUPPORT".to_owned()),
        ts: Some("1700000000.000100".to_owned()),
        thread_ts: Some("1699999999.000050".to_owned()),
        event_time_ms: Some(1_700_000_000_123),
        author: Some(Author {
            user_id: Some("U0CUSTOMER".to_owned()),
            team_id: Some("T0CUSTOMER".to_owned()),
            kind: AuthorKind::Customer,
            display_name: Some("Ada Lovelace".to_owned()),
            email: Some("ada@example.com".to_owned()),
        }),
        text: Some("Hi <@U0AGENT>, the export fails :scream:".to_owned()),
        rendered_text: Some(
            "Hi @U0AGENT, the export fails :scream:\n```\nError 500\n```".to_owned(),
        ),
        files: vec![
            FileRef {
                id: "F0001".to_owned(),
                name: Some("screenshot.png".to_owned()),
                mimetype: Some("image/png".to_owned()),
                size: Some(123_456),
                url_private: Some(
                    "https://files.slack.com/files-pri/T0-F0001/screenshot.png".to_owned(),
                ),
                thumbs: vec![
                    "https://files.slack.com/thumb_64.png".to_owned(),
                    "https://files.slack.com/thumb_360.png".to_owned(),
                ],
            },
            FileRef {
                id: "F0002".to_owned(),
                name: Some("log.txt".to_owned()),
                mimetype: Some("text/plain".to_owned()),
                size: Some(0),
                url_private: Some("https://files.slack.com/files-pri/T0-F0002/log.txt".to_owned()),
                thumbs: Vec::new(),
            },
        ],
        archive_key: "raw/2023/11/14/22/Ev0123456789.json".to_owned(),
        mode: Mode::Degraded,
        degraded_reason: Some("users.info: user_not_visible".to_owned()),
        kind,
    }
}

/// An event with no optional field set.
pub(crate) fn bare_event(kind: Kind) -> MessageEvent {
    MessageEvent {
        event_id: "Ev1".to_owned(),
        team_id: "T1".to_owned(),
        channel_id: None,
        ts: None,
        thread_ts: None,
        event_time_ms: None,
        author: None,
        text: None,
        rendered_text: None,
        files: Vec::new(),
        archive_key: String::new(),
        mode: Mode::Full,
        degraded_reason: None,
        kind,
    }
}

/// Every kind in a full event with full kinds, and in a bare event with bare kinds,
/// plus a few in-between cases (author with only a kind, other author kinds).
pub(crate) fn all_events() -> Vec<MessageEvent> {
    let mut events: Vec<MessageEvent> = kinds(true).into_iter().map(full_event).collect();
    events.extend(kinds(false).into_iter().map(bare_event));
    for kind in [AuthorKind::Agent, AuthorKind::Bot, AuthorKind::Unknown] {
        let mut event = bare_event(kinds(false).remove(0));
        event.author = Some(Author {
            user_id: None,
            team_id: None,
            kind,
            display_name: None,
            email: None,
        });
        events.push(event);
    }
    events
}
