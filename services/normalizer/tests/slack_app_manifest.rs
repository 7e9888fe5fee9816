//! The Slack app manifest (`deploy/slack/app-manifest.json`) subscribes to every event
//! the normalizer turns into a fact, with the scopes Slack requires for it.
//!
//! The normalizer ignores some of Slack's events because another event carries the
//! same fact (a `channel_join` message repeats `member_joined_channel`, issue 12 item
//! 6). That is only safe when the app receives the event it keeps: an app without
//! `member_joined_channel` would lose every join. So this test asks the normalizer
//! which event of each pair becomes a fact and requires that one in the manifest.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use serde_json::{json, Value};
use slackline_events::Kind;
use slackline_normalizer::normalize::{normalize, Outcome, RawMeta, Rules};

const CHANNEL: &str = "C0SHARED01";

fn manifest() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/slack/app-manifest.json");
    let text = std::fs::read_to_string(&path).expect("deploy/slack/app-manifest.json is readable");
    serde_json::from_str(&text).expect("the manifest is JSON")
}

fn strings(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{pointer} is a list"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

fn envelope(event: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "token": "x", "team_id": "T0HOMEORG", "api_app_id": "A0APP",
        "type": "event_callback", "event_id": "Ev0MANIFEST", "event_time": 1764000000,
        "authorizations": [{"team_id": "T0HOMEORG", "user_id": "U0BOT", "is_bot": true}],
        "event": event,
    }))
    .expect("serialises")
}

/// The fact the normalizer makes of `event`, if any.
fn fact(event: Value) -> Option<Kind> {
    let meta = RawMeta {
        archive_key: "raw/manifest.json",
        record_key: Some(CHANNEL),
        event_id: Some("Ev0MANIFEST"),
    };
    match normalize(&envelope(event), meta, &Rules::default()) {
        Outcome::Event(e) => Some(e.kind),
        Outcome::Ignored { .. } => None,
    }
}

/// The Slack subscription that delivers an inner event of `event_type` in a public
/// channel (`message` comes as `message.channels`, `message.groups` in private ones).
fn subscription(event_type: &str) -> &str {
    match event_type {
        "message" => "message.channels",
        other => other,
    }
}

#[test]
fn every_event_the_normalizer_keeps_is_subscribed_with_its_scopes() {
    let manifest = manifest();
    let events = strings(&manifest, "/settings/event_subscriptions/bot_events");
    let scopes = strings(&manifest, "/oauth_config/scopes/bot");

    // Each pair: Slack's two deliveries of one fact. The normalizer must keep exactly
    // one, and the manifest must subscribe to the one it keeps.
    let join = json!({"type": "member_joined_channel", "user": "U0CUST1", "channel": CHANNEL,
        "channel_type": "C", "team": "T0CUSTORG", "event_ts": "1764000001.000100"});
    let join_msg = json!({"type": "message", "subtype": "channel_join", "user": "U0CUST1",
        "channel": CHANNEL, "text": "<@U0CUST1> has joined the channel", "ts": "1764000001.000200"});
    let leave = json!({"type": "member_left_channel", "user": "U0CUST1", "channel": CHANNEL,
        "channel_type": "C", "team": "T0CUSTORG", "event_ts": "1764000002.000100"});
    let leave_msg = json!({"type": "message", "subtype": "channel_leave", "user": "U0CUST1",
        "channel": CHANNEL, "text": "<@U0CUST1> has left the channel", "ts": "1764000002.000200"});
    for (a, b) in [(join, join_msg), (leave, leave_msg)] {
        let kept: Vec<&Value> = [&a, &b]
            .into_iter()
            .filter(|e| fact((*e).clone()).is_some())
            .collect();
        assert_eq!(
            kept.len(),
            1,
            "one membership fact per join or leave: {a} / {b}"
        );
        let event_type = kept[0]["type"].as_str().expect("a type");
        assert!(
            events.iter().any(|e| e == subscription(event_type)),
            "the normalizer makes the membership fact from `{event_type}` only, so the app must \
             subscribe to `{}`; the manifest has {events:?}",
            subscription(event_type)
        );
    }

    // The conversation itself: messages (public and private channels) and reactions.
    let message = json!({"type": "message", "user": "U0CUST1", "channel": CHANNEL,
        "text": "help", "ts": "1764000003.000100"});
    let reaction = json!({"type": "reaction_added", "user": "U0AGENT1", "reaction": "white_check_mark",
        "item": {"type": "message", "channel": CHANNEL, "ts": "1764000003.000100"},
        "event_ts": "1764000004.000100"});
    let unreaction = json!({"type": "reaction_removed", "user": "U0AGENT1", "reaction": "white_check_mark",
        "item": {"type": "message", "channel": CHANNEL, "ts": "1764000003.000100"},
        "event_ts": "1764000005.000100"});
    for event in [message, reaction, unreaction] {
        assert!(
            fact(event.clone()).is_some(),
            "the normalizer keeps {event}"
        );
    }
    // Slack's documented scope for each subscription, and users:read for users.info.
    let required: [(&str, &str); 7] = [
        ("message.channels", "channels:history"),
        ("message.groups", "groups:history"),
        ("reaction_added", "reactions:read"),
        ("reaction_removed", "reactions:read"),
        ("member_joined_channel", "channels:read"),
        ("member_left_channel", "channels:read"),
        ("(users.info)", "users:read"),
    ];
    for (event, scope) in required {
        if !event.starts_with('(') {
            assert!(
                events.iter().any(|e| e == event),
                "the manifest subscribes to {event}"
            );
        }
        assert!(
            scopes.iter().any(|s| s == scope),
            "{event} needs the scope {scope}"
        );
    }
    // The slack-sender posts agents' replies (chat.postMessage) under the agent's
    // name (`username`, which needs chat:write.customize).
    for scope in ["chat:write", "chat:write.customize"] {
        assert!(
            scopes.iter().any(|s| s == scope),
            "replies need the scope {scope}"
        );
    }
    // Private shared channels: membership events there need groups:read.
    assert!(
        scopes.iter().any(|s| s == "groups:read"),
        "membership in private channels needs groups:read"
    );
}
