//! Issue 12, items 3, 6 and 5 (normalizer side): what the normaliser makes of Slack's
//! housekeeping messages, of a join or leave that Slack reports twice, and of a
//! customer's bot.
//!
//! - Housekeeping (topic, purpose, name, archive, pins, reminders, huddles, ...),
//!   Slackbot's messages and the hidden `message_replied` parent summary are neither a
//!   customer's nor an agent's message: each is ignored with a named reason, never a
//!   posted or edited message (a topic change used to look like an agent's reply, a
//!   reply-count update like an edit of the root).
//! - A join or leave is one membership fact even when Slack sends both
//!   `member_joined_channel` and a `channel_join` message.
//! - A customer's bot keeps kind `bot` and carries its own workspace as its team.
//!
//! Fixtures: `testdata/housekeeping/` (written for slackline). The corpus sweep reads
//! `../shared/slack-corpus` (or `SLACKLINE_CORPUS_DIR`) and prints a notice and checks
//! nothing where it is absent.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use slackline_events::{decode_message, encode_message, AuthorKind, Kind, MessageEvent, Mode};
use slackline_normalizer::normalize::{normalize, IgnoreReason, Outcome, RawMeta, Rules};
use slackline_slack::{is_bare_event, wrap_bare_event};

const HOME: &str = "T0HOMEORG";
const CUST: &str = "T0CUSTORG";

/// Slack's housekeeping subtypes (the channel's own notices, not anyone's words).
const HOUSEKEEPING: [&str; 24] = [
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

/// Membership told as a message; `member_joined_channel` / `member_left_channel` tell it.
const MEMBERSHIP_MESSAGES: [&str; 4] =
    ["channel_join", "group_join", "channel_leave", "group_leave"];

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/housekeeping")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

fn envelope(event_id: &str, sender_team: &str, event: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "event_callback",
        "team_id": sender_team,
        "context_team_id": HOME,
        "event_id": event_id,
        "event_time": 1_764_000_000,
        "authorizations": [{"team_id": HOME, "user_id": "U0SLBOT", "is_bot": true}],
        "event": event,
    }))
    .unwrap()
}

fn meta() -> RawMeta<'static> {
    RawMeta {
        archive_key: "raw/2026/11/24/22/hk.json",
        record_key: Some("C0SHARED01"),
        event_id: None,
    }
}

fn rules() -> Rules {
    Rules {
        self_bot_ids: ["B0SLBOT".to_owned(), "U0SLBOT".to_owned()].into(),
        self_app_ids: ["A0SLACKLINE".to_owned()].into(),
        ..Rules::default()
    }
}

/// Normalises, and sends every event through the Avro codec as on its way to Kafka.
fn run(body: &[u8]) -> Outcome {
    let outcome = normalize(body, meta(), &rules());
    if let Outcome::Event(event) = &outcome {
        let bytes = encode_message(event).expect("every event encodes");
        assert_eq!(
            &decode_message(&bytes).expect("decodes"),
            event.as_ref(),
            "Avro roundtrip"
        );
    }
    outcome
}

fn event(body: &[u8]) -> MessageEvent {
    match run(body) {
        Outcome::Event(e) => *e,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn ignored(body: &[u8]) -> IgnoreReason {
    match run(body) {
        Outcome::Ignored { reason, .. } => reason,
        Outcome::Event(e) => panic!("expected ignored, got {:?} ({:?})", e.kind, e.mode),
    }
}

fn message(subtype: Option<&str>, user: &str, team: &str, ts: &str) -> Value {
    let mut m = json!({
        "type": "message", "user": user, "team": team, "text": "some text",
        "ts": ts, "channel": "C0SHARED01", "channel_type": "channel", "event_ts": ts,
    });
    if let Some(s) = subtype {
        m["subtype"] = json!(s);
    }
    m
}

/// Item 3: a topic change by an agent used to be a posted agent message (the thread
/// went to `waiting`); every housekeeping subtype is ignored as `housekeeping`, by
/// whoever, in channels and private channels alike.
#[test]
fn channel_housekeeping_is_ignored_as_housekeeping() {
    assert_eq!(
        ignored(&fixture("channel-topic-by-agent.json")),
        IgnoreReason::Housekeeping
    );
    assert_eq!(
        ignored(&fixture("pin-added-message.json")),
        IgnoreReason::Housekeeping
    );
    for (i, subtype) in HOUSEKEEPING.iter().enumerate() {
        for (user, team) in [("U0AGENT", HOME), ("U0CUSTA", CUST)] {
            let ts = format!("1764002000.{i:06}");
            let body = envelope(
                &format!("EvHk{i}{user}"),
                team,
                message(Some(subtype), user, team, &ts),
            );
            assert_eq!(
                ignored(&body),
                IgnoreReason::Housekeeping,
                "{subtype} by {user}"
            );
        }
    }
}

/// Item 3: Slackbot's messages (`/remind` firing, custom responses) are nobody's
/// support message: ignored as `slackbot`.
#[test]
fn slackbot_messages_are_ignored_as_slackbot() {
    assert_eq!(
        ignored(&fixture("slackbot-reminder.json")),
        IgnoreReason::Slackbot
    );
    let response = envelope(
        "EvSb2",
        HOME,
        message(
            Some("slackbot_response"),
            "USLACKBOT",
            HOME,
            "1764002100.000100",
        ),
    );
    assert_eq!(ignored(&response), IgnoreReason::Slackbot);
    // Slackbot's reply inside a customer's thread is not an agent's reply either.
    let mut in_thread = message(None, "USLACKBOT", HOME, "1764002100.000200");
    in_thread["thread_ts"] = json!("1764000000.000100");
    assert_eq!(
        ignored(&envelope("EvSb3", HOME, in_thread)),
        IgnoreReason::Slackbot
    );
}

/// Item 3: the hidden `message_replied` summary of a thread root used to become an
/// edit of the root; it is ignored as `parent_summary`, as is the `message_changed`
/// whose only change is the root's reply count.
#[test]
fn thread_root_summaries_are_ignored_as_parent_summary() {
    assert_eq!(
        ignored(&fixture("message-replied.json")),
        IgnoreReason::ParentSummary
    );
    assert_eq!(
        ignored(&fixture("reply-count-update.json")),
        IgnoreReason::ParentSummary
    );
    // Without previous_message: no `edited` mark and reply counters.
    let mut body: Value = serde_json::from_slice(&fixture("reply-count-update.json")).unwrap();
    body["event"]
        .as_object_mut()
        .unwrap()
        .remove("previous_message");
    assert_eq!(
        ignored(&serde_json::to_vec(&body).unwrap()),
        IgnoreReason::ParentSummary
    );
}

/// The same root, really edited while it has replies: still an edit. And a root
/// deleted while it has replies (a Slackbot-authored tombstone): still a delete.
#[test]
fn a_real_edit_or_delete_of_a_thread_root_is_kept() {
    let mut body: Value = serde_json::from_slice(&fixture("reply-count-update.json")).unwrap();
    body["event"]["message"]["text"] = json!("Our nightly export fails with error 43");
    body["event"]["message"]["edited"] = json!({"user": "U0CUSTA", "ts": "1764001130.000000"});
    let e = event(&serde_json::to_vec(&body).unwrap());
    assert_eq!(e.mode, Mode::Full);
    assert!(
        matches!(e.kind, Kind::Edited(ref x) if x.previous_text.as_deref() == Some("Our nightly export fails with error 42")),
        "{:?}",
        e.kind
    );
    assert_eq!(e.ts.as_deref(), Some("1764000000.000100"));

    // A change of the text alone (no `edited` mark, e.g. an unfurl) is kept as before.
    let mut body: Value = serde_json::from_slice(&fixture("reply-count-update.json")).unwrap();
    body["event"]["message"]["attachments"] =
        json!([{"title": "job 42", "from_url": "https://x.test/j/42"}]);
    assert!(matches!(
        event(&serde_json::to_vec(&body).unwrap()).kind,
        Kind::Edited(_)
    ));

    let mut body: Value = serde_json::from_slice(&fixture("reply-count-update.json")).unwrap();
    body["event"]["message"] = json!({
        "type": "message", "subtype": "tombstone", "user": "USLACKBOT", "hidden": true,
        "text": "This message was deleted.", "ts": "1764000000.000100",
        "thread_ts": "1764000000.000100", "reply_count": 2
    });
    let e = event(&serde_json::to_vec(&body).unwrap());
    assert!(matches!(e.kind, Kind::Deleted(_)), "{:?}", e.kind);
}

/// A pin shows as `pinned_to` on the pinned message (a `message_changed` without an
/// edit): housekeeping, not an edit.
#[test]
fn a_pin_seen_as_a_message_change_is_housekeeping() {
    let mut body: Value = serde_json::from_slice(&fixture("reply-count-update.json")).unwrap();
    let previous = body["event"]["previous_message"].clone();
    let mut pinned = previous.clone();
    pinned["pinned_to"] = json!(["C0SHARED01"]);
    body["event"]["message"] = pinned;
    assert_eq!(
        ignored(&serde_json::to_vec(&body).unwrap()),
        IgnoreReason::Housekeeping
    );
}

/// Edits and deletes of a message that was never a support message (Slack's huddle
/// notice is updated as people join; a topic message deleted) are ignored with that
/// message's reason, not turned into edits or deletes of a message nobody has.
#[test]
fn edits_and_deletes_of_ignored_messages_are_ignored_alike() {
    let huddle = message(
        Some("huddle_thread"),
        "USLACKBOT",
        HOME,
        "1764002200.000100",
    );
    let mut huddle_after = huddle.clone();
    huddle_after["room"] = json!({"id": "R0HUDDLE", "participant_history": ["U0AGENT", "U0CUSTA"]});
    huddle_after["edited"] = json!({"user": "USLACKBOT", "ts": "1764002300.000000"});
    let changed = envelope(
        "EvEd1",
        HOME,
        json!({"type": "message", "subtype": "message_changed", "hidden": true, "channel": "C0SHARED01",
            "ts": "1764002300.000200", "message": huddle_after, "previous_message": huddle}),
    );
    assert_eq!(ignored(&changed), IgnoreReason::Housekeeping);

    let topic = message(Some("channel_topic"), "U0AGENT", HOME, "1764002400.000100");
    let deleted = envelope(
        "EvEd2",
        HOME,
        json!({"type": "message", "subtype": "message_deleted", "hidden": true, "channel": "C0SHARED01",
            "ts": "1764002500.000100", "deleted_ts": "1764002400.000100", "previous_message": topic}),
    );
    assert_eq!(ignored(&deleted), IgnoreReason::Housekeeping);

    let reminder = message(None, "USLACKBOT", HOME, "1764002600.000100");
    let deleted = envelope(
        "EvEd3",
        HOME,
        json!({"type": "message", "subtype": "message_deleted", "hidden": true, "channel": "C0SHARED01",
            "ts": "1764002700.000100", "deleted_ts": "1764002600.000100", "previous_message": reminder}),
    );
    assert_eq!(ignored(&deleted), IgnoreReason::Slackbot);
}

/// An edit or delete of a join or leave message is `housekeeping`: the membership
/// event covers the join or leave, not what later happens to Slack's message about it.
#[test]
fn edits_and_deletes_of_join_or_leave_messages_are_housekeeping() {
    for (i, subtype) in MEMBERSHIP_MESSAGES.into_iter().enumerate() {
        let joined = message(Some(subtype), "U0CUSTB", CUST, "1764002800.000100");
        let mut after = joined.clone();
        after["text"] = json!("<@U0CUSTB> has joined the channel (edited)");
        let changed = envelope(
            &format!("EvMmEd{i}"),
            CUST,
            json!({"type": "message", "subtype": "message_changed", "hidden": true, "channel": "C0SHARED01",
                "ts": "1764002900.000100", "message": after, "previous_message": joined}),
        );
        assert_eq!(
            ignored(&changed),
            IgnoreReason::Housekeeping,
            "{subtype} edited"
        );
        let deleted = envelope(
            &format!("EvMmDel{i}"),
            CUST,
            json!({"type": "message", "subtype": "message_deleted", "hidden": true, "channel": "C0SHARED01",
                "ts": "1764002900.000200", "deleted_ts": "1764002800.000100", "previous_message": joined}),
        );
        assert_eq!(
            ignored(&deleted),
            IgnoreReason::Housekeeping,
            "{subtype} deleted"
        );
    }
}

/// Item 6: Slack reports one join twice (the `member_joined_channel` event and the
/// `channel_join` message, with different event ids); the member event is the
/// canonical one, so the pair is exactly one membership fact. Likewise for leaves.
#[test]
fn a_join_or_leave_reported_twice_is_one_membership_fact() {
    for (pair, joined) in [
        (
            ["member-joined-event.json", "member-joined-message.json"],
            true,
        ),
        (
            ["member-left-event.json", "member-left-message.json"],
            false,
        ),
    ] {
        for order in [[0, 1], [1, 0]] {
            let mut facts = Vec::new();
            for i in order {
                match run(&fixture(pair[i])) {
                    Outcome::Event(e) => facts.push(*e),
                    Outcome::Ignored { reason, .. } => {
                        assert_eq!(reason, IgnoreReason::CoveredByOtherEvent, "{}", pair[i])
                    }
                }
            }
            assert_eq!(facts.len(), 1, "{pair:?} in order {order:?}: {facts:#?}");
            let fact = &facts[0];
            assert_eq!(fact.mode, Mode::Full);
            let author = fact.author.as_ref().expect("the member");
            assert_eq!(author.user_id.as_deref(), Some("U0CUSTB"));
            assert_eq!(author.team_id.as_deref(), Some(CUST));
            if joined {
                assert!(
                    matches!(fact.kind, Kind::MemberJoined(ref m) if m.inviter_id.as_deref() == Some("U0AGENT"))
                );
            } else {
                assert!(matches!(fact.kind, Kind::MemberLeft(_)));
            }
        }
    }
    // The private-channel forms too.
    for subtype in MEMBERSHIP_MESSAGES {
        let body = envelope(
            "EvMm1",
            CUST,
            message(Some(subtype), "U0CUSTB", CUST, "1764002800.000100"),
        );
        assert_eq!(
            ignored(&body),
            IgnoreReason::CoveredByOtherEvent,
            "{subtype}"
        );
    }
}

/// Item 5: a customer's monitoring bot posting in the shared channel carries kind
/// `bot` and the customer's workspace as its team (from `bot_profile.team_id`, else
/// the message's `team` / `user_team`, else the envelope's sender team), so that
/// thread-state can let it speak for the customer.
#[test]
fn a_customer_bot_carries_its_workspace() {
    let e = event(&fixture("customer-bot-alert.json"));
    assert_eq!(e.mode, Mode::Full);
    let author = e.author.expect("the bot");
    assert_eq!(author.kind, AuthorKind::Bot);
    assert_eq!(author.team_id.as_deref(), Some(CUST));
    assert_eq!(author.user_id.as_deref(), Some("B0CUSTMON"));
    assert_eq!(author.display_name.as_deref(), Some("Acme Monitoring"));
    assert!(matches!(e.kind, Kind::Posted(ref p) if p.subtype.as_deref() == Some("bot_message")));

    // An app posting as its bot user (a `bot_id`, no subtype), team on the message.
    let app = envelope(
        "EvBot2",
        CUST,
        json!({"type": "message", "user": "U0CUSTCI", "bot_id": "B0CUSTCI", "team": CUST,
            "text": "build 981 failed", "ts": "1764002900.000100", "channel": "C0SHARED01"}),
    );
    let author = event(&app).author.expect("the app");
    assert_eq!(author.kind, AuthorKind::Bot);
    assert_eq!(author.team_id.as_deref(), Some(CUST));

    // An incoming webhook: no profile, no team on the message; the envelope's
    // `team_id` is the sender's workspace.
    let webhook = envelope(
        "EvBot3",
        CUST,
        json!({"type": "message", "subtype": "bot_message", "bot_id": "B0CUSTHOOK",
            "text": "disk 91% full", "ts": "1764002900.000200", "channel": "C0SHARED01"}),
    );
    let author = event(&webhook).author.expect("the webhook");
    assert_eq!(author.kind, AuthorKind::Bot);
    assert_eq!(author.team_id.as_deref(), Some(CUST));

    // A bot of our own workspace (not our app) is a bot of the home team.
    let ours = envelope(
        "EvBot4",
        HOME,
        json!({"type": "message", "subtype": "bot_message", "bot_id": "B0DEPLOY",
            "bot_profile": {"id": "B0DEPLOY", "app_id": "A0DEPLOY", "name": "deploy", "team_id": HOME},
            "text": "deployed", "ts": "1764002900.000300", "channel": "C0SHARED01"}),
    );
    let author = event(&ours).author.expect("the bot");
    assert_eq!(author.kind, AuthorKind::Bot);
    assert_eq!(author.team_id.as_deref(), Some(HOME));

    // Our own app's echo stays out.
    let echo = envelope(
        "EvBot5",
        HOME,
        json!({"type": "message", "subtype": "bot_message", "bot_id": "B0SLBOT",
            "bot_profile": {"id": "B0SLBOT", "app_id": "A0SLACKLINE", "team_id": HOME},
            "text": "we are on it", "ts": "1764002900.000400", "channel": "C0SHARED01"}),
    );
    assert_eq!(ignored(&echo), IgnoreReason::OwnEcho);
}

/// The subtypes people and bots post with stay posted messages.
#[test]
fn posted_subtypes_stay_posted() {
    for subtype in [
        None,
        Some("me_message"),
        Some("file_share"),
        Some("thread_broadcast"),
    ] {
        let mut m = message(subtype, "U0CUSTA", CUST, "1764003000.000100");
        m["thread_ts"] = json!("1764000000.000100");
        let e = event(&envelope("EvPs1", CUST, m));
        assert_eq!(e.mode, Mode::Full, "{subtype:?}");
        assert!(
            matches!(e.kind, Kind::Posted(ref p) if p.subtype.as_deref() == subtype),
            "{subtype:?}: {:?}",
            e.kind
        );
        assert_eq!(e.author.expect("author").kind, AuthorKind::Customer);
    }
}

/// `ekm_access_denied` stands in for a message whose content the workspace revoked:
/// someone's words we cannot read, so degraded (the team looks), and Slack's
/// placeholder user `UREVOKEDU` is nobody's id.
#[test]
fn revoked_content_is_degraded_without_the_placeholder_author() {
    let body = envelope(
        "EvEkm",
        CUST,
        json!({"type": "message", "subtype": "ekm_access_denied", "user": "UREVOKEDU",
            "text": "Your admins have suspended everyone's access to this content.",
            "ts": "1764003100.000100", "channel": "C0SHARED01", "event_ts": "1764003100.000100"}),
    );
    let e = event(&body);
    assert_eq!(e.mode, Mode::Degraded);
    assert!(e.author.is_none(), "{:?}", e.author);
    assert_eq!(e.ts.as_deref(), Some("1764003100.000100"));
    assert!(
        matches!(e.kind, Kind::Degraded(ref d) if d.subtype.as_deref() == Some("ekm_access_denied"))
    );
    // Legacy file comments are someone's words in a shape we no longer read: degraded.
    let comment = envelope(
        "EvFc",
        CUST,
        json!({"type": "message", "subtype": "file_comment", "text": "<@U0CUSTA> commented on a file",
            "comment": {"id": "Fc1", "user": "U0CUSTA", "comment": "see line 3"},
            "ts": "1764003100.000200", "channel": "C0SHARED01"}),
    );
    assert_eq!(event(&comment).mode, Mode::Degraded);
    // A subtype nobody has seen yet keeps degrading (degrade, never drop).
    let future = envelope(
        "EvFut",
        CUST,
        message(
            Some("brand_new_notice"),
            "U0CUSTA",
            CUST,
            "1764003100.000300",
        ),
    );
    let e = event(&future);
    assert_eq!(e.mode, Mode::Degraded);
    assert!(e
        .degraded_reason
        .as_deref()
        .is_some_and(|r| r.starts_with("unknown message subtype")));
}

/// Every reason is in `ALL` (the metrics start at zero for each), with its own label.
#[test]
fn every_ignore_reason_has_its_own_label() {
    let labels: HashSet<&str> = IgnoreReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), IgnoreReason::ALL.len());
    for label in ["housekeeping", "slackbot", "parent_summary"] {
        assert!(labels.contains(label), "{label} in {labels:?}");
    }
}

fn object<'v>(v: &'v Value, name: &str) -> Option<&'v Map<String, Value>> {
    v.get(name).and_then(Value::as_object)
}

fn is_slackbot(m: &Map<String, Value>) -> bool {
    m.get("user").and_then(Value::as_str) == Some("USLACKBOT")
        && m.get("subtype").and_then(Value::as_str) != Some("tombstone")
}

fn is_housekeeping_message(m: &Map<String, Value>) -> bool {
    let subtype = m.get("subtype").and_then(Value::as_str).unwrap_or("");
    is_slackbot(m)
        || subtype == "slackbot_response"
        || HOUSEKEEPING.contains(&subtype)
        || MEMBERSHIP_MESSAGES.contains(&subtype)
}

/// Why a corpus `message` payload is housekeeping, if it is.
fn housekeeping_why(event: &Map<String, Value>) -> Option<String> {
    let subtype = event.get("subtype").and_then(Value::as_str).unwrap_or("");
    let v = Value::Object(event.clone());
    match subtype {
        "message_replied" => Some("message_replied".into()),
        "message_changed" | "message_deleted" => {
            [object(&v, "message"), object(&v, "previous_message")]
                .into_iter()
                .flatten()
                .find(|m| is_housekeeping_message(m))
                .map(|m| {
                    format!(
                        "{subtype} of {}",
                        m.get("subtype")
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .unwrap_or("a Slackbot message")
                    )
                })
        }
        _ => is_housekeeping_message(event).then(|| {
            if is_slackbot(event) {
                format!("{subtype} by USLACKBOT")
            } else {
                subtype.to_owned()
            }
        }),
    }
}

/// No corpus message with a housekeeping subtype, or from Slackbot, comes out as a
/// posted or edited message.
#[test]
fn no_corpus_housekeeping_becomes_a_posted_or_edited_message() {
    let Some(dir) = slackline_testkit::corpus_events_dir() else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut checked = 0;
    let mut problems = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let raw = std::fs::read(path).expect("read");
        let value: Value = serde_json::from_slice(&raw).expect("corpus files are JSON");
        let inner = value.get("event").unwrap_or(&value);
        let Some(event) = inner.as_object() else {
            continue;
        };
        if event.get("type").and_then(Value::as_str) != Some("message") {
            continue;
        }
        let Some(why) = housekeeping_why(event) else {
            continue;
        };
        let body = if is_bare_event(&value) {
            serde_json::to_vec(&wrap_bare_event(
                value.clone(),
                &format!("EvHkCorpus{i:04}"),
                "T0CORPUS",
            ))
            .expect("wrap")
        } else {
            raw
        };
        checked += 1;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let label = match normalize(&body, meta(), &Rules::default()) {
            Outcome::Ignored { reason, .. } => format!("ignored:{}", reason.label()),
            Outcome::Event(e) => {
                let label = match &e.kind {
                    Kind::Posted(_) => "posted",
                    Kind::Edited(_) => "edited",
                    Kind::Deleted(_) => "deleted",
                    Kind::Degraded(_) => "degraded",
                    _ => "other",
                };
                if matches!(e.kind, Kind::Posted(_) | Kind::Edited(_)) {
                    problems.push(format!("{name} ({why}) became {label}"));
                }
                label.to_owned()
            }
        };
        println!("{name:<100} {why:<40} {label}");
    }
    println!("{checked} housekeeping payloads checked");
    assert!(
        checked > 20,
        "the corpus has housekeeping payloads ({checked})"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
