//! Our own replies coming back: the slack-sender posts each agent reply with
//! `chat.postMessage` and metadata (`event_type` `slackline_reply`, the reply id and
//! the agent), and Slack sends the message back to us as a `message` event from our
//! bot, with that metadata (Slack returns metadata to the app that posted it).
//!
//! Such an echo is the agent's reply as Slack stored it, with the ts Slack gave it:
//! instead of being ignored as `own_echo` it becomes a posted message whose author
//! is the agent (kind agent, the installing team), so the timeline shows the reply
//! once and thread-state moves the thread to `waiting`. No lookup is needed, so the
//! echo is recognised even when it arrives before the sender has recorded the ts;
//! the message key `(team, channel, ts, posted)` makes its redeliveries no-ops.
//! Only a message posted by our bot is trusted: its `bot_id` or `user` is one of
//! `SELF_BOT_IDS`, or its `user` is the installing team's bot user
//! (`authorizations[0].user_id` with `is_bot`). A matching `app_id` alone is not
//! enough: another installation of the same app (a Slack Connect partner's) posts
//! with our app id and could forge the metadata. Any other own message (an edit of
//! our reply, a message without our metadata) stays ignored as `own_echo`.

use serde_json::{Map, Value};
use slackline_events::{Author, AuthorKind, Kind, MessageEvent};

use crate::normalize::Rules;

/// The `metadata.event_type` of the slack-sender's messages.
pub const REPLY_EVENT_TYPE: &str = "slackline_reply";

fn text<'v>(object: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    object
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Whether `event` was posted by our bot: its `bot_id` or `user` in `SELF_BOT_IDS`,
/// or its `user` the installing team's bot user (`authorizations[0]`, `is_bot`).
fn posted_by_our_bot(root: &Map<String, Value>, event: &Map<String, Value>, rules: &Rules) -> bool {
    let bot = text(event, "bot_id").is_some_and(|b| rules.self_bot_ids.contains(b));
    let user = text(event, "user");
    if bot || user.is_some_and(|u| rules.self_bot_ids.contains(u)) {
        return true;
    }
    let installer = root
        .get("authorizations")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_object)
        .filter(|a| a.get("is_bot").and_then(Value::as_bool) == Some(true))
        .and_then(|a| text(a, "user_id"));
    user.is_some() && user == installer
}

/// The agent of an echoed reply: `Some` for a newly posted message (no subtype,
/// `bot_message`, or `thread_broadcast` for a reply also sent to the channel) posted
/// by our bot (`root` is the envelope) and carrying the slack-sender's metadata with
/// an agent id.
pub fn reply_agent(
    root: &Map<String, Value>,
    event: &Map<String, Value>,
    rules: &Rules,
    installing_team: &str,
) -> Option<Author> {
    if !matches!(
        text(event, "subtype"),
        None | Some("bot_message" | "thread_broadcast")
    ) {
        return None;
    }
    if !posted_by_our_bot(root, event, rules) {
        return None;
    }
    let metadata = event.get("metadata")?.as_object()?;
    if text(metadata, "event_type") != Some(REPLY_EVENT_TYPE) {
        return None;
    }
    let payload = metadata.get("event_payload")?.as_object()?;
    let agent_id = text(payload, "agent_id")?;
    Some(Author {
        user_id: Some(agent_id.to_owned()),
        team_id: Some(installing_team.to_owned()),
        kind: AuthorKind::Agent,
        display_name: text(payload, "agent_name").map(str::to_owned),
        email: None,
    })
}

/// Makes `event` the agent's reply: the agent as author, and a plain post (not a
/// bot message; a `thread_broadcast` stays one).
pub fn as_agent_reply(event: &mut MessageEvent, agent: Author) {
    if let Kind::Posted(posted) = &mut event.kind {
        if posted.subtype.as_deref() == Some("bot_message") {
            posted.subtype = None;
        }
    }
    event.author = Some(agent);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use serde_json::json;

    use crate::normalize::{normalize, Outcome, RawMeta};

    use super::*;

    fn rules() -> Rules {
        Rules {
            self_bot_ids: HashSet::from(["B0US".to_owned()]),
            self_app_ids: HashSet::from(["A0US".to_owned()]),
            ..Rules::default()
        }
    }

    fn envelope(event: Value) -> Vec<u8> {
        envelope_with(event, json!({"team_id": "T0HOME"}))
    }

    fn envelope_with(event: Value, authorization: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": "event_callback", "event_id": "Ev1", "event_time": 1_764_000_100,
            "team_id": "T0HOME", "authorizations": [authorization],
            "event": event,
        }))
        .unwrap()
    }

    fn agent_of(outcome: Outcome) -> Option<Author> {
        match outcome {
            Outcome::Event(event) => event.author.filter(|a| a.kind == AuthorKind::Agent),
            Outcome::Ignored { .. } => None,
        }
    }

    fn meta() -> RawMeta<'static> {
        RawMeta {
            archive_key: "raw/x.json",
            record_key: Some("C1"),
            event_id: Some("Ev1"),
        }
    }

    fn echo(metadata: Option<Value>, subtype: Option<&str>) -> Value {
        let mut event = json!({
            "type": "message", "user": "U0USBOT", "bot_id": "B0US", "app_id": "A0US",
            "text": "We fixed it", "ts": "1764000100.000200",
            "thread_ts": "1764000000.000100", "channel": "C1",
        });
        if let Some(metadata) = metadata {
            event["metadata"] = metadata;
        }
        if let Some(subtype) = subtype {
            event["subtype"] = json!(subtype);
        }
        event
    }

    fn ours() -> Value {
        json!({"event_type": "slackline_reply",
               "event_payload": {"reply_id": "r1", "agent_id": "U0ADA", "agent_name": "Ada"}})
    }

    #[test]
    fn our_reply_echo_is_the_agents_posted_reply() {
        let Outcome::Event(event) =
            normalize(&envelope(echo(Some(ours()), None)), meta(), &rules())
        else {
            panic!("an event")
        };
        assert_eq!(event.ts.as_deref(), Some("1764000100.000200"));
        assert_eq!(event.thread_ts.as_deref(), Some("1764000000.000100"));
        assert_eq!(event.text.as_deref(), Some("We fixed it"));
        let author = event.author.unwrap();
        assert_eq!(author.kind, AuthorKind::Agent);
        assert_eq!(author.user_id.as_deref(), Some("U0ADA"));
        assert_eq!(author.display_name.as_deref(), Some("Ada"));
        assert_eq!(author.team_id.as_deref(), Some("T0HOME"));
        match event.kind {
            Kind::Posted(p) => {
                assert!(p.is_reply);
                assert_eq!(p.subtype, None);
            }
            other => panic!("{other:?}"),
        }
        // Posted through the legacy bot_message path too.
        let bot_message = echo(Some(ours()), Some("bot_message"));
        assert!(matches!(
            normalize(&envelope(bot_message), meta(), &rules()),
            Outcome::Event(_)
        ));
    }

    #[test]
    fn other_own_messages_and_foreign_metadata_stay_ignored_or_untrusted() {
        let ignored = |event: Value| {
            matches!(
                normalize(&envelope(event), meta(), &rules()),
                Outcome::Ignored { .. }
            )
        };
        assert!(ignored(echo(None, None)), "own message without metadata");
        let other_type = json!({"event_type": "deploy", "event_payload": {"agent_id": "U0ADA"}});
        assert!(ignored(echo(Some(other_type), None)));
        let mut edit = echo(Some(ours()), Some("message_changed"));
        edit["message"] = json!({"bot_id": "B0US", "ts": "1764000100.000200", "text": "x"});
        assert!(ignored(edit), "an edit of our reply");
        // Another app's message with our metadata is not trusted as an agent reply.
        let mut foreign = echo(Some(ours()), None);
        foreign["bot_id"] = json!("B0THEM");
        foreign["app_id"] = json!("A0THEM");
        foreign["user"] = json!("U0THEMBOT");
        let Outcome::Event(event) = normalize(&envelope(foreign), meta(), &rules()) else {
            panic!("a bot message")
        };
        assert_eq!(event.author.unwrap().kind, AuthorKind::Bot);
    }

    /// A reply posted with `reply_broadcast` comes back as a `thread_broadcast`: still
    /// the agent's reply (not ignored as `own_echo`), and still a broadcast.
    #[test]
    fn broadcast_reply_echo_is_the_agents_reply() {
        let broadcast = echo(Some(ours()), Some("thread_broadcast"));
        let Outcome::Event(event) = normalize(&envelope(broadcast), meta(), &rules()) else {
            panic!("an event, not own_echo")
        };
        assert_eq!(event.author.unwrap().kind, AuthorKind::Agent);
        match event.kind {
            Kind::Posted(p) => {
                assert!(p.is_reply);
                assert_eq!(p.subtype.as_deref(), Some("thread_broadcast"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Another installation of our app (same app id, its own bot) posting our
    /// metadata in a shared channel is not our agent.
    #[test]
    fn forged_metadata_from_another_bot_of_our_app_is_not_an_agent_reply() {
        let mut forged = echo(Some(ours()), None);
        forged["bot_id"] = json!("B0THEM");
        forged["user"] = json!("U0THEMBOT");
        forged["bot_profile"] = json!({"id": "B0THEM", "app_id": "A0US"});
        assert_eq!(forged["app_id"], json!("A0US"));
        assert!(agent_of(normalize(&envelope(forged.clone()), meta(), &rules())).is_none());
        // Nor when the installing bot user is someone else.
        let not_us = json!({"team_id": "T0HOME", "user_id": "U0USBOT", "is_bot": true});
        let no_ids = Rules::default();
        assert!(agent_of(normalize(&envelope_with(forged, not_us), meta(), &no_ids)).is_none());
    }

    /// Without `SELF_BOT_IDS`, the installing team's bot user (`authorizations[0]`,
    /// `is_bot`) is ours; a human installer's user id is not a bot to trust.
    #[test]
    fn the_installing_bot_user_is_ours_without_self_bot_ids() {
        let no_ids = Rules::default();
        let bot = json!({"team_id": "T0HOME", "user_id": "U0USBOT", "is_bot": true});
        let agent = agent_of(normalize(
            &envelope_with(echo(Some(ours()), None), bot),
            meta(),
            &no_ids,
        ));
        assert_eq!(agent.unwrap().user_id.as_deref(), Some("U0ADA"));
        let human = json!({"team_id": "T0HOME", "user_id": "U0USBOT", "is_bot": false});
        let outcome = normalize(
            &envelope_with(echo(Some(ours()), None), human),
            meta(),
            &no_ids,
        );
        assert!(agent_of(outcome).is_none());
    }

    /// An echo the normalizer cannot read fully (here: no ts) is degraded, and still
    /// the agent's: a degraded echo is not a customer message.
    #[test]
    fn a_degraded_echo_keeps_the_agent() {
        let mut broken = echo(Some(ours()), None);
        broken.as_object_mut().unwrap().remove("ts");
        let Outcome::Event(event) = normalize(&envelope(broken), meta(), &rules()) else {
            panic!("a degraded event")
        };
        assert!(event.degraded_reason.is_some(), "{event:?}");
        let author = event.author.unwrap();
        assert_eq!(author.kind, AuthorKind::Agent);
        assert_eq!(author.user_id.as_deref(), Some("U0ADA"));
        assert_eq!(author.team_id.as_deref(), Some("T0HOME"));
    }
}
