//! The normaliser's decisions on hand-written payloads: what becomes a full event,
//! what degrades (and keeps what it can), what is ignored and why. Every event also
//! goes through the Avro codec, as it would on its way to Kafka.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::{json, Value};
use slackline_events::{decode_message, encode_message, AuthorKind, Kind, MessageEvent, Mode};
use slackline_normalizer::normalize::{normalize, IgnoreReason, Outcome, RawMeta, Rules};

const HOME: &str = "T0HOME";

fn envelope(event: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "event_callback",
        "team_id": "T0CUST",
        "event_id": "Ev0001",
        "event_time": 1_764_000_000,
        "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}],
        "event": event,
    }))
    .unwrap()
}

fn meta() -> RawMeta<'static> {
    RawMeta {
        archive_key: "raw/2026/11/24/22/x.json",
        record_key: Some("C0CHAN"),
        event_id: Some("Ev0001"),
    }
}

fn run(body: &[u8], rules: &Rules) -> Outcome {
    let outcome = normalize(body, meta(), rules);
    if let Outcome::Event(event) = &outcome {
        let bytes = encode_message(event).expect("every event encodes");
        assert_eq!(
            &decode_message(&bytes).unwrap(),
            event.as_ref(),
            "Avro roundtrip"
        );
    }
    outcome
}

fn event(body: &[u8]) -> MessageEvent {
    match run(body, &Rules::default()) {
        Outcome::Event(e) => *e,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn ignored(body: &[u8], rules: &Rules) -> IgnoreReason {
    match run(body, rules) {
        Outcome::Ignored { reason, .. } => reason,
        other => panic!("expected ignored, got {other:?}"),
    }
}

#[test]
fn customer_message_is_full_with_author_team_and_rendered_blocks() {
    let e = event(&envelope(json!({
        "type": "message", "channel": "C0CHAN", "user": "U0CUST", "user_team": "T0CUST",
        "text": "exports fail", "ts": "1764000000.000100", "event_ts": "1764000000.000100",
        "blocks": [{"type": "rich_text", "elements": [
            {"type": "rich_text_section", "elements": [
                {"type": "text", "text": "exports fail "},
                {"type": "emoji", "name": "party_parrot"},
                {"type": "text", "text": " see "},
                {"type": "link", "url": "https://x.test/j/1", "text": "job"},
                {"type": "text", "text": " cc "},
                {"type": "user", "user_id": "U0AGENT"}]},
            {"type": "rich_text_preformatted", "elements": [{"type": "text", "text": "error: 42"}]},
            {"type": "rich_text_list", "style": "ordered", "elements": [
                {"type": "rich_text_section", "elements": [{"type": "text", "text": "one"}]},
                {"type": "rich_text_section", "elements": [{"type": "text", "text": "two", "style": {"code": true}}]}]}
        ]}]
    })));
    assert_eq!(e.mode, Mode::Full);
    assert_eq!(
        e.team_id, HOME,
        "installing team from authorizations, not the sender's team_id"
    );
    assert_eq!(e.channel_id.as_deref(), Some("C0CHAN"));
    let author = e.author.unwrap();
    assert_eq!(author.kind, AuthorKind::Customer);
    assert_eq!(author.user_id.as_deref(), Some("U0CUST"));
    assert_eq!(
        e.rendered_text.as_deref(),
        Some("exports fail :party_parrot: see job (https://x.test/j/1) cc @U0AGENT\n```\nerror: 42\n```\n1. one\n2. `two`")
    );
    assert_eq!(e.event_time_ms, Some(1_764_000_000_000));
    assert!(matches!(e.kind, Kind::Posted(ref p) if !p.is_reply && p.subtype.is_none()));
}

#[test]
fn agent_is_a_user_of_the_installing_team() {
    let e = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "user": "U0AG", "team": HOME, "text": "hi", "ts": "1.2"}),
    ));
    assert_eq!(e.author.unwrap().kind, AuthorKind::Agent);
}

#[test]
fn thread_ts_different_from_ts_is_a_reply_even_without_subtype() {
    let e = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "user": "U1", "text": "r", "ts": "2.0", "thread_ts": "1.0"}),
    ));
    assert!(matches!(e.kind, Kind::Posted(ref p) if p.is_reply && !p.is_broadcast));
    assert_eq!(e.thread_ts.as_deref(), Some("1.0"));
    let root = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "user": "U1", "text": "r", "ts": "1.0", "thread_ts": "1.0"}),
    ));
    assert!(matches!(root.kind, Kind::Posted(ref p) if !p.is_reply));
    let broadcast = event(&envelope(
        json!({"type": "message", "subtype": "thread_broadcast", "channel": "C0CHAN", "user": "U1", "text": "b", "ts": "3.0", "thread_ts": "1.0"}),
    ));
    assert!(matches!(broadcast.kind, Kind::Posted(ref p) if p.is_reply && p.is_broadcast));
}

/// Issue 12, item 4: a message whose author Slack hid was a full message with no
/// author (neither a customer's request nor an agent's reply); it is degraded, with
/// what there is, so the team is told.
#[test]
fn hidden_author_is_degraded_with_what_there_is() {
    let e = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "text": "who?", "ts": "1.0", "thread_ts": "0.5"}),
    ));
    assert_eq!(e.mode, Mode::Degraded);
    assert_eq!(e.degraded_reason.as_deref(), Some("missing_author"));
    assert!(e.author.is_none());
    assert_eq!(e.channel_id.as_deref(), Some("C0CHAN"));
    assert_eq!(e.ts.as_deref(), Some("1.0"));
    assert_eq!(e.text.as_deref(), Some("who?"));
    assert!(!e.team_id.is_empty());
    // A bot's message has its bot id for an author: still full.
    let e = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "bot_id": "B0X", "text": "ci", "ts": "2.0"}),
    ));
    assert_eq!(e.mode, Mode::Full);
}

#[test]
fn user_given_as_an_object_is_read() {
    let e = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "user": {"id": "U0OBJ", "name": "x"}, "text": "t", "ts": "1.0"}),
    ));
    assert_eq!(e.author.unwrap().user_id.as_deref(), Some("U0OBJ"));
}

#[test]
fn missing_channel_and_missing_ts_degrade_with_what_there_is() {
    let meta_without_channel = RawMeta {
        record_key: Some("T0CUST"),
        ..meta()
    };
    let body =
        envelope(json!({"type": "message", "user": "U1", "text": "no channel", "ts": "1.0"}));
    let Outcome::Event(e) = normalize(&body, meta_without_channel, &Rules::default()) else {
        panic!()
    };
    assert_eq!(e.mode, Mode::Degraded);
    assert_eq!(e.degraded_reason.as_deref(), Some("no channel"));
    assert_eq!(e.text.as_deref(), Some("no channel"));
    assert_eq!(e.ts.as_deref(), Some("1.0"));
    assert_eq!(e.archive_key, "raw/2026/11/24/22/x.json");

    let e = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "user": "U1", "text": "no ts"}),
    ));
    assert_eq!(e.mode, Mode::Degraded);
    assert_eq!(e.degraded_reason.as_deref(), Some("message without ts"));
    assert_eq!(e.author.unwrap().user_id.as_deref(), Some("U1"));
    assert!(matches!(e.kind, Kind::Degraded(ref d) if d.event_type.as_deref() == Some("message")));
}

#[test]
fn unknown_subtype_degrades() {
    let e = event(&envelope(
        json!({"type": "message", "subtype": "brand_new_thing", "channel": "C0CHAN", "text": "?", "ts": "1.0"}),
    ));
    assert_eq!(e.mode, Mode::Degraded);
    assert!(
        matches!(e.kind, Kind::Degraded(ref d) if d.subtype.as_deref() == Some("brand_new_thing"))
    );
    assert_eq!(e.channel_id.as_deref(), Some("C0CHAN"));
}

#[test]
fn edits_deletes_and_tombstones() {
    let edit = event(&envelope(
        json!({"type": "message", "subtype": "message_changed", "channel": "C0CHAN", "ts": "9.0", "event_ts": "9.0",
        "message": {"type": "message", "user": "U1", "text": "new", "ts": "1.0", "edited": {"user": "U1", "ts": "8.0"}},
        "previous_message": {"type": "message", "user": "U1", "text": "old", "ts": "1.0"}}),
    ));
    assert_eq!(
        edit.ts.as_deref(),
        Some("1.0"),
        "an edit names the edited message"
    );
    assert_eq!(edit.text.as_deref(), Some("new"));
    assert!(
        matches!(edit.kind, Kind::Edited(ref e) if e.previous_text.as_deref() == Some("old") && e.edited_ts.as_deref() == Some("8.0"))
    );

    let tombstone = event(&envelope(
        json!({"type": "message", "subtype": "message_changed", "channel": "C0CHAN", "ts": "9.0",
        "message": {"type": "message", "subtype": "tombstone", "user": "USLACKBOT", "text": "This message was deleted.", "ts": "1.0", "thread_ts": "1.0"},
        "previous_message": {"type": "message", "user": "U1", "text": "old", "ts": "1.0"}}),
    ));
    assert!(matches!(tombstone.kind, Kind::Deleted(_)));
    assert_eq!(tombstone.mode, Mode::Full);

    let delete = event(&envelope(
        json!({"type": "message", "subtype": "message_deleted", "channel": "C0CHAN", "ts": "9.0", "deleted_ts": "1.0",
        "previous_message": {"type": "message", "user": "U1", "text": "old", "ts": "1.0"}}),
    ));
    assert_eq!(delete.ts.as_deref(), Some("1.0"));
    assert!(delete.text.is_none());
    assert!(
        matches!(delete.kind, Kind::Deleted(ref d) if d.previous_text.as_deref() == Some("old"))
    );

    let broken = event(&envelope(
        json!({"type": "message", "subtype": "message_changed", "channel": "C0CHAN", "ts": "9.0"}),
    ));
    assert_eq!(broken.mode, Mode::Degraded);
}

#[test]
fn reactions_and_membership() {
    let r = event(&envelope(
        json!({"type": "reaction_added", "user": "U1", "reaction": "white_check_mark", "item_user": "U2",
        "item": {"type": "message", "channel": "C0CHAN", "ts": "1.0"}, "event_ts": "5.0"}),
    ));
    assert_eq!(r.ts.as_deref(), Some("1.0"));
    assert!(
        matches!(r.kind, Kind::ReactionAdded(ref x) if x.name == "white_check_mark" && x.item_user_id.as_deref() == Some("U2"))
    );
    let on_file = event(&envelope(
        json!({"type": "reaction_removed", "user": "U1", "reaction": "x", "item": {"type": "file", "file": "F1"}}),
    ));
    assert_eq!(on_file.mode, Mode::Degraded);
    let joined = event(&envelope(
        json!({"type": "member_joined_channel", "user": "U3", "channel": "C0CHAN", "inviter": "U1", "event_ts": "6.0"}),
    ));
    assert!(
        matches!(joined.kind, Kind::MemberJoined(ref m) if m.inviter_id.as_deref() == Some("U1"))
    );
}

#[test]
fn event_ts_without_a_dot_is_seconds() {
    let mut body: Value = serde_json::from_slice(&envelope(json!({"type": "message", "channel": "C0CHAN", "text": "t", "ts": "1.0", "event_ts": "1764000000"}))).unwrap();
    body.as_object_mut().unwrap().remove("event_time");
    let e = event(&serde_json::to_vec(&body).unwrap());
    assert_eq!(e.event_time_ms, Some(1_764_000_000_000));
}

#[test]
fn nul_lone_surrogates_and_huge_texts_survive() {
    let body = br#"{"type":"event_callback","event_id":"Ev9","authorizations":[{"team_id":"T0HOME"}],"event":{"type":"message","channel":"C0CHAN","user":"U1","ts":"1.0","text":"nul \u0000 lone \ud800 end \udc00 pair \ud83d\ude00"}}"#;
    let e = event(body);
    assert_eq!(e.mode, Mode::Full);
    assert_eq!(
        e.text.as_deref(),
        Some("nul \u{0} lone \u{FFFD} end \u{FFFD} pair 😀")
    );
    let long = "x".repeat(40_000);
    let e = event(&envelope(
        json!({"type": "message", "channel": "C0CHAN", "user": "U1", "text": long, "ts": "1.0"}),
    ));
    assert_eq!(e.text.as_deref().map(str::len), Some(40_000));
}

#[test]
fn not_json_and_odd_shapes_degrade() {
    for body in [
        &b"not json"[..],
        b"[1,2]",
        b"{\"type\":\"event_callback\",\"event\":\"str\"}",
        b"{\"type\":\"event_callback\"}",
    ] {
        let e = event(body);
        assert_eq!(e.mode, Mode::Degraded, "{body:?}");
        assert_eq!(e.archive_key, "raw/2026/11/24/22/x.json");
        assert_eq!(
            e.channel_id.as_deref(),
            Some("C0CHAN"),
            "channel from the record key"
        );
        assert!(e.degraded_reason.is_some());
    }
}

#[test]
fn housekeeping_is_ignored_with_a_reason() {
    let rules = Rules::default();
    assert_eq!(
        ignored(
            &envelope(json!({"type": "app_home_opened", "user": "U1", "channel": "D1"})),
            &rules
        ),
        IgnoreReason::IrrelevantType
    );
    assert_eq!(
        ignored(
            &envelope(
                json!({"type": "app_mention", "user": "U1", "channel": "C1", "ts": "1.0", "text": "<@U0BOT>"})
            ),
            &rules
        ),
        IgnoreReason::CoveredByOtherEvent
    );
    assert_eq!(
        ignored(
            br#"{"type":"app_rate_limited","team_id":"T1","minute_rate_limited":1}"#,
            &rules
        ),
        IgnoreReason::NotAnEvent
    );
}

#[test]
fn our_own_echo_is_ignored() {
    let rules = Rules {
        self_bot_ids: ["B0SELF".to_owned()].into(),
        self_app_ids: ["A0SELF".to_owned()].into(),
        ..Rules::default()
    };
    let by_bot = envelope(
        json!({"type": "message", "subtype": "bot_message", "bot_id": "B0SELF", "channel": "C0CHAN", "text": "reply", "ts": "1.0"}),
    );
    assert_eq!(ignored(&by_bot, &rules), IgnoreReason::OwnEcho);
    let by_app = envelope(
        json!({"type": "message", "user": "U0BOTUSER", "bot_profile": {"app_id": "A0SELF"}, "channel": "C0CHAN", "text": "reply", "ts": "1.0"}),
    );
    assert_eq!(ignored(&by_app, &rules), IgnoreReason::OwnEcho);
    let edited_echo = envelope(
        json!({"type": "message", "subtype": "message_changed", "channel": "C0CHAN", "ts": "2.0",
        "message": {"type": "message", "bot_id": "B0SELF", "text": "x", "ts": "1.0"}}),
    );
    assert_eq!(ignored(&edited_echo, &rules), IgnoreReason::OwnEcho);
    let other_bot = envelope(
        json!({"type": "message", "subtype": "bot_message", "bot_id": "B0OTHER", "channel": "C0CHAN", "text": "hi", "ts": "1.0"}),
    );
    assert!(
        matches!(run(&other_bot, &rules), Outcome::Event(e) if e.author.as_ref().unwrap().kind == AuthorKind::Bot)
    );
}

#[test]
fn enablement_by_team_and_channel() {
    let body = envelope(json!({"type": "message", "channel": "C0CHAN", "text": "t", "ts": "1.0"}));
    let teams = Rules {
        enabled_teams: ["T0OTHER".to_owned()].into(),
        ..Rules::default()
    };
    assert_eq!(ignored(&body, &teams), IgnoreReason::NotEnabled);
    let teams = Rules {
        enabled_teams: [HOME.to_owned()].into(),
        ..Rules::default()
    };
    assert!(matches!(run(&body, &teams), Outcome::Event(_)));
    let channels = Rules {
        enabled_channels: ["C0ELSE".to_owned()].into(),
        ..Rules::default()
    };
    assert_eq!(ignored(&body, &channels), IgnoreReason::NotEnabled);
    let channels = Rules {
        enabled_channels: ["C0CHAN".to_owned()].into(),
        ..Rules::default()
    };
    assert!(matches!(run(&body, &channels), Outcome::Event(_)));
}

#[test]
fn files_are_kept() {
    let e = event(&envelope(
        json!({"type": "message", "subtype": "file_share", "channel": "C0CHAN", "user": "U1", "text": "log", "ts": "1.0",
        "files": [{"id": "F1", "name": "a.log", "mimetype": "text/plain", "size": 12, "url_private": "https://f/a", "thumb_360": "https://t/360", "thumb_64": "https://t/64"}, {"no_id": true}]}),
    ));
    assert_eq!(e.files.len(), 1);
    assert_eq!(e.files[0].thumbs, vec!["https://t/64", "https://t/360"]);
    assert_eq!(e.files[0].size, Some(12));
}

#[test]
fn an_empty_event_id_header_is_no_event_id() {
    // Found by fuzzing: an empty header became the event id, so every such event
    // would share one deduplication key.
    let meta = RawMeta {
        archive_key: "raw/2026/11/24/22/empty-id.json",
        record_key: None,
        event_id: Some(""),
    };
    for body in [&b""[..], br#"{"type":"event_callback","event":{"type":"message","channel":"C0CHAN","user":"U1","text":"hi","ts":"1764000000.000100"}}"#] {
        match normalize(body, meta, &Rules::default()) {
            Outcome::Event(e) => {
                assert_eq!(e.event_id, "archive:raw/2026/11/24/22/empty-id.json")
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
}
