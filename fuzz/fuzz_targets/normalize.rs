//! The normaliser over arbitrary bytes, seeded at run time from the Slack corpus
//! (`cargo +nightly fuzz run normalize fuzz/corpus/normalize ../shared/slack-corpus/events`,
//! see the README's "Fuzzing" paragraph). Every input ends as exactly one outcome, the
//! same on a second call; every event has `degraded_reason` set exactly when it is
//! degraded and survives the Avro codec unchanged; a body that is not a JSON object
//! degrades; a message-shaped payload is never dropped as an irrelevant type or a
//! non-event (nor as not enabled or our own echo under default rules).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use slackline_events::{decode_message, encode_message, Mode};
use slackline_normalizer::normalize::{
    normalize, repair_lone_surrogates, IgnoreReason, Outcome, RawMeta, Rules,
};

const MESSAGE_TYPES: [&str; 5] = [
    "message",
    "reaction_added",
    "reaction_removed",
    "member_joined_channel",
    "member_left_channel",
];

const META: RawMeta<'static> = RawMeta {
    archive_key: "raw/2026/11/24/22/fuzz.json",
    record_key: Some("C0SHARED01"),
    event_id: None,
};

fn restrictive() -> Rules {
    let set = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    Rules {
        enabled_teams: set(&["T0HOME", "T0HOMEORG"]),
        enabled_channels: set(&["C0CHAN", "C0SHARED01"]),
        self_bot_ids: set(&["B0SELF", "U0BOT"]),
        self_app_ids: set(&["A0SLACKLINE"]),
    }
}

/// Whether the body is a JSON object, and its inner event's type when that is one of
/// the message types (and the root is not url_verification / app_rate_limited).
fn shape(body: &[u8]) -> (bool, Option<String>) {
    let parsed = serde_json::from_slice::<Value>(body).or_else(|e| {
        repair_lone_surrogates(body).map_or(Err(e), |repaired| {
            serde_json::from_slice::<Value>(&repaired)
        })
    });
    let Ok(Value::Object(root)) = parsed else {
        return (false, None);
    };
    if matches!(
        root.get("type").and_then(Value::as_str),
        Some("url_verification" | "app_rate_limited")
    ) {
        return (true, None);
    }
    let event = match root.get("event") {
        Some(Value::Object(event)) => event,
        Some(_) => return (true, None),
        None => &root,
    };
    let kind = event.get("type").and_then(Value::as_str);
    (
        true,
        kind.filter(|t| MESSAGE_TYPES.contains(t))
            .map(str::to_owned),
    )
}

fn check(body: &[u8], rules: &Rules, default_rules: bool) {
    let outcome = normalize(body, META, rules);
    assert_eq!(outcome, normalize(body, META, rules), "normalize is pure");
    match &outcome {
        Outcome::Event(event) => {
            assert_eq!(
                event.degraded_reason.is_some(),
                event.mode == Mode::Degraded,
                "degraded_reason set exactly when degraded: {event:?}"
            );
            assert_eq!(event.archive_key, META.archive_key);
            assert!(!event.event_id.is_empty());
            let bytes = encode_message(event).expect("every event encodes");
            let back = decode_message(&bytes).expect("every encoded event decodes");
            assert_eq!(&back, event.as_ref(), "Avro roundtrip");
        }
        Outcome::Ignored {
            reason, event_id, ..
        } => {
            let (is_object, message) = shape(body);
            assert!(
                is_object,
                "a body that is not a JSON object degrades: {outcome:?}"
            );
            assert!(event_id.is_some());
            if let Some(kind) = message {
                let mut never = vec![IgnoreReason::IrrelevantType, IgnoreReason::NotAnEvent];
                if default_rules {
                    never.extend([IgnoreReason::NotEnabled, IgnoreReason::OwnEcho]);
                }
                assert!(
                    !never.contains(reason),
                    "a {kind} payload was dropped as {}",
                    reason.label()
                );
            }
        }
    }
}

fuzz_target!(|body: &[u8]| {
    check(body, &Rules::default(), true);
    check(body, &restrictive(), false);
});
