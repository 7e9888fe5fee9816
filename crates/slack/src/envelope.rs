//! Just enough of a Slack request body to route it, and nothing that could refuse it.
//!
//! The edge must never reject a verified body for its content (SYSTEM.md, guarantee 1),
//! so [`inspect`] is total: a body that is not JSON, or JSON of a shape we have never
//! seen, still gets a routing key (`"unknown"` at worst) and goes to the archive and
//! Kafka. Only the fields below are read; everything else is skipped without being
//! built, which keeps the edge's hot path cheap.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The routing key used when a body names neither a channel nor a team.
pub const UNKNOWN_KEY: &str = "unknown";

/// What kind of request a body is, as far as the edge cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeKind {
    /// `url_verification`: answered with its challenge, nothing else.
    UrlVerification {
        /// The value to echo back.
        challenge: String,
    },
    /// `event_callback`: a real event.
    EventCallback,
    /// `app_rate_limited`: Slack dropped events for this workspace; alert on it.
    AppRateLimited,
    /// A JSON body with another (or no) top-level `type`; still archived and produced.
    Other,
    /// Not a JSON object at all; still archived and produced.
    NotJson,
}

/// The routing facts of one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// What the body is.
    pub kind: EnvelopeKind,
    /// `event_id`, Slack's delivery key, when present.
    pub event_id: Option<String>,
    /// The inner `event.type` (or the top-level `type` when there is no inner event).
    pub event_type: Option<String>,
    /// The Kafka key: the channel id, else the team id, else [`UNKNOWN_KEY`].
    pub routing_key: String,
    /// Whether [`EnvelopeInfo::routing_key`] is a channel id.
    pub keyed_by_channel: bool,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    challenge: Option<Text<'a>>,
    #[serde(borrow)]
    event_id: Option<Text<'a>>,
    #[serde(borrow)]
    team_id: Option<Text<'a>>,
    #[serde(borrow)]
    context_team_id: Option<Text<'a>>,
    #[serde(borrow)]
    event: Option<EventRef<'a>>,
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow)]
    channel: Option<ChannelRef<'a>>,
    #[serde(borrow)]
    channel_id: Option<ChannelRef<'a>>,
    #[serde(borrow)]
    item: Option<ItemRef<'a>>,
    #[serde(borrow)]
    team: Option<ChannelRef<'a>>,
}

/// A field read as a string: any other JSON type (a number where Slack sends a
/// string, an object, ...) reads as absent instead of making the whole body
/// unroutable. Read without buffering, so the hot path stays cheap.
struct Text<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn get(this: &Option<Self>) -> Option<&str> {
        this.as_ref()?.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text<'de>, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// The inner `event`: an object, or anything else read as absent (the body stays
/// routable by its team).
struct EventRef<'a>(Option<RawEvent<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for EventRef<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;
        impl<'de> Visitor<'de> for EventVisitor {
            type Value = EventRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EventRef<'de>, A::Error> {
                RawEvent::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|e| EventRef(Some(e)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventRef<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(EventRef(None))
            }
            fn visit_borrowed_str<E: de::Error>(self, _: &'de str) -> Result<EventRef<'de>, E> {
                Ok(EventRef(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<EventRef<'de>, E> {
                Ok(EventRef(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<EventRef<'de>, E> {
                Ok(EventRef(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<EventRef<'de>, E> {
                Ok(EventRef(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<EventRef<'de>, E> {
                Ok(EventRef(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<EventRef<'de>, E> {
                Ok(EventRef(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<EventRef<'de>, E> {
                Ok(EventRef(None))
            }
        }
        deserializer.deserialize_any(EventVisitor)
    }
}

/// The `item` of a reaction or pin: an object whose `channel` names the channel.
/// Anything else is ignored (it never makes the body unroutable).
#[derive(Deserialize)]
#[serde(untagged)]
enum ItemRef<'a> {
    Object {
        #[serde(borrow)]
        channel: Option<ChannelRef<'a>>,
    },
    Other(IgnoredAny),
}

impl ItemRef<'_> {
    fn channel(&self) -> Option<&ChannelRef<'_>> {
        match self {
            ItemRef::Object { channel } => channel.as_ref(),
            ItemRef::Other(_) => None,
        }
    }
}

/// A channel appears as an id string (`"C123"`) or as an object with an `id`
/// (`channel_created`, `channel_rename`, ...). Anything else is ignored.
#[derive(Deserialize)]
#[serde(untagged)]
enum ChannelRef<'a> {
    Id(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(borrow)]
        id: Cow<'a, str>,
    },
    Other(IgnoredAny),
}

impl<'a> ChannelRef<'a> {
    fn id(&self) -> Option<&str> {
        let id = match self {
            ChannelRef::Id(id) | ChannelRef::Object { id } => id.as_ref(),
            ChannelRef::Other(_) => return None,
        };
        valid_key(id).then_some(id)
    }
}

/// A key must be short and printable to be useful as a Kafka key and a log field.
fn valid_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The channel an inner event belongs to: `channel`, else `channel_id`, else
/// `item.channel`, each either an id string or an object with an `id`, and a valid
/// key (short and printable). The one rule for both the edge's routing key
/// ([`inspect`]) and the normalizer's channel ([`event_channel`]).
fn pick_channel<'s>(
    channel: Option<&'s ChannelRef<'_>>,
    channel_id: Option<&'s ChannelRef<'_>>,
    item: Option<&'s ItemRef<'_>>,
) -> Option<&'s str> {
    channel
        .and_then(ChannelRef::id)
        .or_else(|| channel_id.and_then(ChannelRef::id))
        .or_else(|| item?.channel()?.id())
}

/// The channel of an already parsed inner event (`body.event`), by the same rule as
/// the edge's routing key ([`inspect`]): `None` when it names none.
pub fn event_channel(event: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let field = |name: &str| {
        event
            .get(name)
            .and_then(|v| ChannelRef::deserialize(v).ok())
    };
    let item = event.get("item").and_then(|v| ItemRef::deserialize(v).ok());
    pick_channel(
        field("channel").as_ref(),
        field("channel_id").as_ref(),
        item.as_ref(),
    )
    .map(str::to_owned)
}

/// Whether a Kafka record key is a channel id (`C…`, `G…` or `D…`, alphanumeric):
/// the edge keys a body by its channel when it names one, else by its team (`T…`,
/// `E…`) or [`UNKNOWN_KEY`].
pub fn is_channel_id(key: &str) -> bool {
    key.len() > 1
        && matches!(key.as_bytes()[0], b'C' | b'G' | b'D')
        && key.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Inspects a body for routing. Never fails.
pub fn inspect(body: &[u8]) -> EnvelopeInfo {
    let Ok(raw) = serde_json::from_slice::<RawEnvelope<'_>>(body) else {
        return EnvelopeInfo {
            kind: EnvelopeKind::NotJson,
            event_id: None,
            event_type: None,
            routing_key: UNKNOWN_KEY.to_owned(),
            keyed_by_channel: false,
        };
    };
    let kind = match Text::get(&raw.kind) {
        Some("url_verification") => EnvelopeKind::UrlVerification {
            challenge: Text::get(&raw.challenge).unwrap_or_default().to_owned(),
        },
        Some("event_callback") => EnvelopeKind::EventCallback,
        Some("app_rate_limited") => EnvelopeKind::AppRateLimited,
        _ => EnvelopeKind::Other,
    };
    let event = raw.event.as_ref().and_then(|e| e.0.as_ref());
    let channel = event
        .and_then(|e| pick_channel(e.channel.as_ref(), e.channel_id.as_ref(), e.item.as_ref()));
    let team = || {
        [Text::get(&raw.team_id), Text::get(&raw.context_team_id)]
            .into_iter()
            .flatten()
            .find(|t| valid_key(t))
            .or_else(|| event?.team.as_ref()?.id())
    };
    let (routing_key, keyed_by_channel) = match channel {
        Some(c) => (c.to_owned(), true),
        None => (team().unwrap_or(UNKNOWN_KEY).to_owned(), false),
    };
    let event_type = event
        .and_then(|e| Text::get(&e.kind))
        .or(Text::get(&raw.kind))
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    EnvelopeInfo {
        kind,
        event_id: Text::get(&raw.event_id)
            .filter(|id| valid_key(id))
            .map(str::to_owned),
        event_type,
        routing_key,
        keyed_by_channel,
    }
}

/// Top-level `type`s that are already a whole request body.
const ENVELOPE_TYPES: [&str; 3] = ["event_callback", "url_verification", "app_rate_limited"];

/// Whether a JSON body is a bare inner event (`{"type":"message",...}`) rather than a
/// request body Slack would post: it has a `type` that is not an envelope type and
/// no `event` field. Test fixtures and SDK samples are often bare.
pub fn is_bare_event(body: &serde_json::Value) -> bool {
    let Some(object) = body.as_object() else {
        return false;
    };
    let kind = object.get("type").and_then(|t| t.as_str());
    !object.contains_key("event")
        && !object.contains_key("challenge")
        && kind.is_some_and(|t| !t.is_empty() && !ENVELOPE_TYPES.contains(&t))
}

/// Wraps a bare inner event in an `event_callback` envelope as Slack would send it,
/// with the given event id and installing team.
pub fn wrap_bare_event(
    event: serde_json::Value,
    event_id: &str,
    team_id: &str,
) -> serde_json::Value {
    let event_time = event
        .get("event_ts")
        .and_then(|t| t.as_str())
        .and_then(|t| t.split('.').next())
        .and_then(|t| t.parse::<i64>().ok())
        .unwrap_or(0);
    serde_json::json!({
        "token": "slackline-test",
        "team_id": team_id,
        "api_app_id": "A0SLACKLINE",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": event_time,
        "authorizations": [{
            "enterprise_id": null,
            "team_id": team_id,
            "user_id": "U0SLACKLINE",
            "is_bot": true,
            "is_enterprise_install": false
        }],
        "is_ext_shared_channel": false,
        "context_team_id": team_id
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_event_is_keyed_by_its_channel() {
        let info = inspect(
            br#"{"type":"event_callback","team_id":"T1","event_id":"Ev1",
                "event":{"type":"message","channel":"C42","ts":"1.2"}}"#,
        );
        assert_eq!(info.kind, EnvelopeKind::EventCallback);
        assert_eq!(info.event_id.as_deref(), Some("Ev1"));
        assert_eq!(info.event_type.as_deref(), Some("message"));
        assert_eq!(info.routing_key, "C42");
        assert!(info.keyed_by_channel);
    }

    #[test]
    fn channel_is_found_in_object_item_and_channel_id_forms() {
        for (body, want) in [
            (
                r#"{"event":{"type":"channel_created","channel":{"id":"C7","name":"x"}}}"#,
                "C7",
            ),
            (
                r#"{"event":{"type":"reaction_added","item":{"type":"message","channel":"C8"}}}"#,
                "C8",
            ),
            (
                r#"{"event":{"type":"file_shared","channel_id":"C9"}}"#,
                "C9",
            ),
            (
                r#"{"event":{"type":"x","channel":{"weird":1},"item":{"channel":"C10"}}}"#,
                "C10",
            ),
        ] {
            let info = inspect(body.as_bytes());
            assert_eq!(info.routing_key, want, "{body}");
            assert!(info.keyed_by_channel);
        }
    }

    #[test]
    fn no_channel_falls_back_to_team_then_unknown() {
        let info = inspect(
            br#"{"type":"event_callback","team_id":"T9","event":{"type":"app_home_opened"}}"#,
        );
        assert_eq!(
            (info.routing_key.as_str(), info.keyed_by_channel),
            ("T9", false)
        );
        let info =
            inspect(br#"{"type":"app_rate_limited","team_id":"T3","minute_rate_limited":1}"#);
        assert_eq!(info.kind, EnvelopeKind::AppRateLimited);
        assert_eq!(info.routing_key, "T3");
        assert_eq!(
            inspect(br#"{"type":"event_callback"}"#).routing_key,
            UNKNOWN_KEY
        );
    }

    #[test]
    fn url_verification_carries_its_challenge() {
        let info = inspect(br#"{"token":"t","challenge":"abc\u0041","type":"url_verification"}"#);
        assert_eq!(
            info.kind,
            EnvelopeKind::UrlVerification {
                challenge: "abcA".into()
            }
        );
    }

    #[test]
    fn anything_else_is_still_routable() {
        for body in [
            &b""[..],
            b"not json",
            b"[1,2]",
            b"null",
            b"{\"type\":5}",
            b"\xff\xfe",
            b"{\"event\":\"str\"}",
        ] {
            let info = inspect(body);
            assert_eq!(info.routing_key, UNKNOWN_KEY, "{body:?}");
            assert!(!info.keyed_by_channel);
        }
        let info = inspect(br#"{"event":{"channel":""}, "team_id":"T\n1"}"#);
        assert_eq!(
            info.routing_key, UNKNOWN_KEY,
            "blank channel and unprintable team are not keys"
        );
    }

    #[test]
    fn bare_events_are_recognised_and_wrapped() {
        let bare = serde_json::json!({"type": "message", "channel": "C5", "ts": "1.2", "event_ts": "1700000000.1"});
        assert!(is_bare_event(&bare));
        let wrapped = wrap_bare_event(bare, "EvW1", "T1");
        assert!(!is_bare_event(&wrapped));
        let info = inspect(&serde_json::to_vec(&wrapped).unwrap());
        assert_eq!(info.kind, EnvelopeKind::EventCallback);
        assert_eq!(info.routing_key, "C5");
        assert_eq!(info.event_id.as_deref(), Some("EvW1"));
        assert_eq!(wrapped["event_time"], 1_700_000_000);
        for body in [
            serde_json::json!({"type": "url_verification", "challenge": "x"}),
            serde_json::json!({"type": "", "event": {}}),
            serde_json::json!({"event": {"type": "message"}}),
            serde_json::json!([1]),
        ] {
            assert!(!is_bare_event(&body), "{body}");
        }
    }

    /// The normalizer's channel ([`event_channel`], on a parsed event) and the
    /// edge's routing key ([`inspect`], on the raw bytes) are one rule.
    #[test]
    fn event_channel_agrees_with_the_routing_key() {
        for event in [
            r#"{"type":"message","channel":"C42"}"#,
            r#"{"type":"channel_created","channel":{"id":"C7","name":"x"}}"#,
            r#"{"type":"reaction_added","item":{"type":"message","channel":"C8"}}"#,
            r#"{"type":"file_shared","channel_id":"C9"}"#,
            r#"{"type":"x","channel":{"weird":1},"item":{"channel":"C10"}}"#,
            r#"{"type":"x","channel":"","channel_id":{"id":"G11"}}"#,
            r#"{"type":"x","channel":"C\u0031"}"#,
            r#"{"type":"x","channel":"C 1 with spaces"}"#,
            r#"{"type":"x","channel":5,"item":"not an object"}"#,
            r#"{"type":"x","channel":{"id":""},"item":{"channel":["C1"]}}"#,
            r#"{"type":"app_home_opened"}"#,
        ] {
            let body = format!(r#"{{"type":"event_callback","team_id":"T1","event":{event}}}"#);
            let info = inspect(body.as_bytes());
            let parsed: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(event).unwrap();
            let channel = event_channel(&parsed);
            assert_eq!(
                channel.as_deref(),
                info.keyed_by_channel.then_some(info.routing_key.as_str()),
                "{event}"
            );
        }
    }

    #[test]
    fn an_item_that_is_not_an_object_leaves_the_body_routable() {
        let info = inspect(br#"{"team_id":"T4","event":{"type":"x","item":"str"}}"#);
        assert_eq!(info.kind, EnvelopeKind::Other);
        assert_eq!(
            (info.routing_key.as_str(), info.keyed_by_channel),
            ("T4", false)
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_leaves_the_rest_of_the_body_routable() {
        // Found by fuzzing: one field of an unexpected type used to make the whole
        // body "not JSON", keyed `unknown`, and a url_verification unanswered.
        let info = inspect(br#"{"type":"event_callback","event_id":5,"team_id":"T1","event":{"type":"message","channel":"C1"}}"#);
        assert_eq!(info.kind, EnvelopeKind::EventCallback);
        assert_eq!(
            (info.routing_key.as_str(), info.keyed_by_channel),
            ("C1", true)
        );
        assert_eq!(info.event_id, None);
        assert_eq!(info.event_type.as_deref(), Some("message"));

        let info = inspect(br#"{"type":5,"event_id":"Ev1","event":{"type":1,"channel":"C1"}}"#);
        assert_eq!(info.kind, EnvelopeKind::Other);
        assert_eq!(info.routing_key, "C1");
        assert_eq!(info.event_id.as_deref(), Some("Ev1"));
        assert_eq!(info.event_type, None);

        let info = inspect(
            br#"{"type":"event_callback","team_id":7,"context_team_id":"T2","event":"message"}"#,
        );
        assert_eq!(
            (info.routing_key.as_str(), info.keyed_by_channel),
            ("T2", false)
        );

        let info = inspect(br#"{"type":"url_verification","challenge":5}"#);
        assert_eq!(
            info.kind,
            EnvelopeKind::UrlVerification {
                challenge: String::new()
            }
        );

        let info =
            inspect(br#"{"type":"event_callback","event":[1,{"channel":"C9"}],"team_id":"T3"}"#);
        assert_eq!(info.routing_key, "T3");
    }

    #[test]
    fn channel_ids_are_recognised_as_record_keys() {
        for key in ["C1", "G0ABC", "D9"] {
            assert!(is_channel_id(key), "{key}");
        }
        for key in ["", "C", "T1", "E1", UNKNOWN_KEY, "C-1", "Cé"] {
            assert!(!is_channel_id(key), "{key}");
        }
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let info = inspect(br#"{"event":{"type":"message","channel":"C\u0031"}}"#);
        assert_eq!(info.routing_key, "C1");
    }
}
