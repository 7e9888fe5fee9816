//! The codec: roundtrips, golden bytes, typed errors, JSON, and agreement with
//! apache-avro's own encoder.

use apache_avro::schema::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::GenericSingleObjectWriter;

use super::samples::{all_events, bare_event, full_event, kinds};
use crate::encode::KIND_BRANCHES;
use crate::model::{AuthorKind, Kind, MessageEvent, Mode, Posted, Reaction};
use crate::{
    decode_any_to_json, decode_message, encode_message, encode_message_into,
    message_schema_fingerprint, message_to_json, EventsError, MESSAGES_SCHEMA_JSON,
};

/// The fingerprint of `schemas/slack.messages.v1.avsc` as written on the wire. A
/// change of the schema's canonical form changes it: then add the new version to
/// `schemas/history/` (the compatibility test insists) and update this constant.
const CURRENT_FINGERPRINT_HEX: &str = "64d1edf0f271507c";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn roundtrip(event: &MessageEvent) {
    let bytes = encode_message(event).expect("encodes");
    let decoded = decode_message(&bytes).unwrap_or_else(|e| panic!("decode {event:?}: {e}"));
    assert_eq!(&decoded, event);
}

#[test]
fn every_kind_roundtrips_with_all_optional_fields_set() {
    for kind in kinds(true) {
        roundtrip(&full_event(kind));
    }
}

#[test]
fn every_kind_roundtrips_with_no_optional_field_set() {
    for kind in kinds(false) {
        roundtrip(&bare_event(kind));
    }
}

#[test]
fn every_author_kind_and_mode_roundtrips() {
    for event in all_events() {
        roundtrip(&event);
    }
}

#[test]
fn awkward_text_roundtrips() {
    let long: String = "a😀é\u{0}".chars().cycle().take(40_000).collect();
    let texts = [
        "nul \u{0} in the middle\u{0}".to_owned(),
        "emoji 😀👍🏽 🇫🇷 and ZWJ 👩‍💻".to_owned(),
        "x".repeat(40_000),
        long,
        String::new(),
    ];
    for text in texts {
        let mut event = full_event(Kind::Posted(Posted {
            subtype: None,
            is_reply: false,
            is_broadcast: false,
        }));
        event.text = Some(text.clone());
        event.rendered_text = Some(text.clone());
        event
            .author
            .as_mut()
            .expect("full event has an author")
            .display_name = Some(text);
        roundtrip(&event);
    }
}

#[test]
fn extreme_numbers_roundtrip() {
    for n in [i64::MIN, -1, 0, 1, 63, 64, 127, 128, i64::MAX] {
        let mut event = full_event(kinds(true).remove(0));
        event.event_time_ms = Some(n);
        event.files[0].size = Some(n);
        roundtrip(&event);
    }
}

#[test]
fn reactions_added_and_removed_stay_apart() {
    let reaction = Reaction {
        name: "ticket".to_owned(),
        item_user_id: None,
    };
    let added = bare_event(Kind::ReactionAdded(reaction.clone()));
    let removed = bare_event(Kind::ReactionRemoved(reaction));
    let a = encode_message(&added).expect("encodes");
    let r = encode_message(&removed).expect("encodes");
    assert_ne!(a, r);
    assert!(matches!(
        decode_message(&r).expect("decodes").kind,
        Kind::ReactionRemoved(_)
    ));
    assert!(matches!(
        decode_message(&a).expect("decodes").kind,
        Kind::ReactionAdded(_)
    ));
}

#[test]
fn golden_header_and_body() {
    let event = bare_event(Kind::ReactionAdded(Reaction {
        name: "eyes".to_owned(),
        item_user_id: None,
    }));
    let bytes = encode_message(&event).expect("encodes");
    println!("fingerprint {}", hex(&message_schema_fingerprint()));
    println!("golden record {}", hex(&bytes));
    assert_eq!(bytes[..2], [0xC3, 0x01]);
    assert_eq!(bytes[2..10], message_schema_fingerprint());
    assert_eq!(
        hex(&bytes[2..10]),
        CURRENT_FINGERPRINT_HEX,
        "the schema's canonical form changed: record it in schemas/history and update this test"
    );
    // The Avro body, field by field: "Ev1", "T1", five nulls, author null, text null,
    // rendered_text null, no files, "" archive key, FULL, no reason, branch 3
    // (ReactionAdded) with "eyes" and a null item_user_id.
    assert_eq!(
        hex(&bytes[10..]),
        "06457631045431000000000000000000000006086579657300"
    );
}

#[test]
fn fingerprint_is_the_avro_specification_rabin() {
    // The specification's test vector: the fingerprint of "null" is the signed
    // 64-bit value 7195948357588979594 (0x63dd24e7cc258f8a), little-endian on the wire.
    let null = Schema::parse_str(r#""null""#).expect("parses");
    assert_eq!(
        crate::registry::fingerprint(&null),
        0x63dd_24e7_cc25_8f8a_u64.to_le_bytes()
    );
}

#[test]
fn encode_into_appends() {
    let event = full_event(kinds(true).remove(3));
    let mut buf = b"prefix".to_vec();
    encode_message_into(&event, &mut buf).expect("encodes");
    assert_eq!(&buf[..6], b"prefix");
    assert_eq!(buf[6..], encode_message(&event).expect("encodes")[..]);
}

#[test]
fn wrong_magic_is_bad_magic() {
    let good = encode_message(&full_event(kinds(true).remove(0))).expect("encodes");
    let mut json = br#"{"type":"event_callback"}"#.to_vec();
    json.resize(40, b' ');
    let mut swapped = good.clone();
    swapped[0] = 0xC4;
    for bytes in [
        &b""[..],
        &[0xC3],
        &[0xC3, 0x01, 1, 2, 3],
        &json,
        &swapped,
        &good[..9],
    ] {
        assert!(
            matches!(decode_message(bytes), Err(EventsError::BadMagic)),
            "{bytes:?}"
        );
        assert_eq!(decode_any_to_json(bytes), None);
    }
}

#[test]
fn unknown_fingerprint_carries_the_fingerprint() {
    let mut bytes = encode_message(&full_event(kinds(true).remove(0))).expect("encodes");
    bytes[2..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    match decode_message(&bytes) {
        Err(e @ EventsError::UnknownFingerprint(fp)) => {
            assert_eq!(fp, [1, 2, 3, 4, 5, 6, 7, 8]);
            assert!(e.to_string().contains("0102030405060708"), "{e}");
        }
        other => panic!("expected UnknownFingerprint, got {other:?}"),
    }
    assert_eq!(decode_any_to_json(&bytes), None);
}

#[test]
fn truncated_body_is_an_avro_error() {
    for event in [
        full_event(kinds(true).remove(1)),
        bare_event(kinds(false).remove(7)),
    ] {
        let bytes = encode_message(&event).expect("encodes");
        for len in 10..bytes.len() {
            match decode_message(&bytes[..len]) {
                Err(EventsError::Avro(_)) => {}
                other => panic!("truncated to {len}: expected Avro error, got {other:?}"),
            }
            assert_eq!(decode_any_to_json(&bytes[..len]), None);
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = encode_message(&bare_event(kinds(false).remove(0))).expect("encodes");
    bytes.extend_from_slice(&[0, 0, 0]);
    assert!(matches!(
        decode_message(&bytes),
        Err(EventsError::TrailingBytes(3))
    ));
}

#[test]
fn a_value_that_does_not_fit_the_model_names_the_field() {
    let event = full_event(kinds(true).remove(0));
    let mut value = message_to_value(&event);
    let Value::Record(fields) = &mut value else {
        unreachable!()
    };
    let author = &mut fields
        .iter_mut()
        .find(|(n, _)| n == "author")
        .expect("author")
        .1;
    let Value::Union(_, author) = author else {
        unreachable!()
    };
    let Value::Record(author_fields) = author.as_mut() else {
        unreachable!()
    };
    author_fields[2].1 = Value::Enum(0, "ALIEN".to_owned());
    match crate::decode::message_from_value(value) {
        Err(EventsError::Model { path, .. }) => assert_eq!(path, "MessageEvent.author.kind"),
        other => panic!("expected a Model error, got {other:?}"),
    }
}

#[test]
fn the_encoder_agrees_with_apache_avro_byte_for_byte() {
    let schema = Schema::parse_str(MESSAGES_SCHEMA_JSON).expect("schema parses");
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    let mut single = GenericSingleObjectWriter::new_with_capacity(&schema, 1024).expect("writer");
    let mut checked = 0;
    for event in all_events() {
        let value = message_to_value(&event);
        let mut body = Vec::new();
        writer
            .write_value_ref(&mut body, &value)
            .expect("apache-avro encodes");
        let ours = encode_message(&event).expect("encodes");
        assert_eq!(hex(&ours[10..]), hex(&body), "{event:?}");
        let mut whole = Vec::new();
        single
            .write_value_ref(&value, &mut whole)
            .expect("apache-avro encodes");
        assert_eq!(ours, whole, "single-object form of {event:?}");
        checked += 1;
    }
    println!("{checked} events encode exactly as apache-avro encodes them");
}

#[test]
fn branch_and_symbol_order_match_the_schema() {
    let schema = Schema::parse_str(MESSAGES_SCHEMA_JSON).expect("schema parses");
    let Schema::Record(record) = &schema else {
        panic!("not a record")
    };
    let field = |name: &str| {
        &record
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no field {name}"))
            .schema
    };
    let Schema::Union(kind) = field("kind") else {
        panic!("kind is not a union")
    };
    let names: Vec<&str> = kind
        .variants()
        .iter()
        .map(|v| v.name().expect("named").name())
        .collect();
    assert_eq!(names, KIND_BRANCHES);
    let Schema::Enum(mode) = field("mode") else {
        panic!("mode is not an enum")
    };
    assert_eq!(mode.symbols, ["FULL", "DEGRADED"]);
    let Schema::Union(author) = field("author") else {
        panic!("author is not a union")
    };
    let Schema::Record(author) = &author.variants()[1] else {
        panic!("author is not a record")
    };
    let Schema::Enum(author_kind) = &author.fields[2].schema else {
        panic!("author.kind is not an enum")
    };
    assert_eq!(author_kind.symbols, ["AGENT", "CUSTOMER", "BOT", "UNKNOWN"]);
}

#[test]
fn json_is_readable() {
    let event = full_event(Kind::ReactionRemoved(Reaction {
        name: "ticket".to_owned(),
        item_user_id: None,
    }));
    let json = message_to_json(&event);
    assert_eq!(json["mode"], "degraded");
    assert_eq!(json["author"]["kind"], "customer");
    assert_eq!(json["kind"]["type"], "reaction_removed");
    assert_eq!(json["kind"]["name"], "ticket");
    assert!(json["kind"].get("item_user_id").is_none());
    assert_eq!(json["files"][0]["size"], 123_456);
    assert_eq!(json["event_time_ms"], 1_700_000_000_123_i64);

    let bare = message_to_json(&bare_event(kinds(false).remove(0)));
    assert!(bare.get("channel_id").is_none());
    assert!(bare.get("files").is_none());
    assert_eq!(bare["kind"]["type"], "posted");
    assert_eq!(bare["mode"], Mode::Full.as_str());

    let bytes = encode_message(&event).expect("encodes");
    assert_eq!(decode_any_to_json(&bytes), Some(json));
}

/// The same event as an apache-avro value, built independently of the encoder:
/// symbols and branch names come from the model, indices from the schema's order.
pub(crate) fn message_to_value(e: &MessageEvent) -> Value {
    fn opt_str(v: &Option<String>) -> Value {
        match v {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        }
    }
    fn record(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
    let author = match &e.author {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(a) => {
            let (i, symbol) = match a.kind {
                AuthorKind::Agent => (0, "AGENT"),
                AuthorKind::Customer => (1, "CUSTOMER"),
                AuthorKind::Bot => (2, "BOT"),
                AuthorKind::Unknown => (3, "UNKNOWN"),
            };
            Value::Union(
                1,
                Box::new(record(vec![
                    ("user_id", opt_str(&a.user_id)),
                    ("team_id", opt_str(&a.team_id)),
                    ("kind", Value::Enum(i, symbol.to_owned())),
                    ("display_name", opt_str(&a.display_name)),
                    ("email", opt_str(&a.email)),
                ])),
            )
        }
    };
    let files = e
        .files
        .iter()
        .map(|f| {
            record(vec![
                ("id", Value::String(f.id.clone())),
                ("name", opt_str(&f.name)),
                ("mimetype", opt_str(&f.mimetype)),
                (
                    "size",
                    match f.size {
                        None => Value::Union(0, Box::new(Value::Null)),
                        Some(n) => Value::Union(1, Box::new(Value::Long(n))),
                    },
                ),
                ("url_private", opt_str(&f.url_private)),
                (
                    "thumbs",
                    Value::Array(f.thumbs.iter().cloned().map(Value::String).collect()),
                ),
            ])
        })
        .collect();
    let (branch, kind) = match &e.kind {
        Kind::Posted(p) => (
            "Posted",
            record(vec![
                ("subtype", opt_str(&p.subtype)),
                ("is_reply", Value::Boolean(p.is_reply)),
                ("is_broadcast", Value::Boolean(p.is_broadcast)),
            ]),
        ),
        Kind::Edited(x) => (
            "Edited",
            record(vec![
                ("previous_text", opt_str(&x.previous_text)),
                ("edited_ts", opt_str(&x.edited_ts)),
            ]),
        ),
        Kind::Deleted(x) => (
            "Deleted",
            record(vec![("previous_text", opt_str(&x.previous_text))]),
        ),
        Kind::ReactionAdded(r) | Kind::ReactionRemoved(r) => (
            if matches!(e.kind, Kind::ReactionAdded(_)) {
                "ReactionAdded"
            } else {
                "ReactionRemoved"
            },
            record(vec![
                ("name", Value::String(r.name.clone())),
                ("item_user_id", opt_str(&r.item_user_id)),
            ]),
        ),
        Kind::MemberJoined(m) | Kind::MemberLeft(m) => (
            if matches!(e.kind, Kind::MemberJoined(_)) {
                "MemberJoined"
            } else {
                "MemberLeft"
            },
            record(vec![("inviter_id", opt_str(&m.inviter_id))]),
        ),
        Kind::Degraded(d) => (
            "Degraded",
            record(vec![
                ("event_type", opt_str(&d.event_type)),
                ("subtype", opt_str(&d.subtype)),
            ]),
        ),
    };
    let branch = KIND_BRANCHES
        .iter()
        .position(|b| *b == branch)
        .expect("known branch");
    record(vec![
        ("event_id", Value::String(e.event_id.clone())),
        ("team_id", Value::String(e.team_id.clone())),
        ("channel_id", opt_str(&e.channel_id)),
        ("ts", opt_str(&e.ts)),
        ("thread_ts", opt_str(&e.thread_ts)),
        (
            "event_time_ms",
            match e.event_time_ms {
                None => Value::Union(0, Box::new(Value::Null)),
                Some(n) => Value::Union(1, Box::new(Value::TimestampMillis(n))),
            },
        ),
        ("author", author),
        ("text", opt_str(&e.text)),
        ("rendered_text", opt_str(&e.rendered_text)),
        ("files", Value::Array(files)),
        ("archive_key", Value::String(e.archive_key.clone())),
        (
            "mode",
            match e.mode {
                Mode::Full => Value::Enum(0, "FULL".to_owned()),
                Mode::Degraded => Value::Enum(1, "DEGRADED".to_owned()),
            },
        ),
        ("degraded_reason", opt_str(&e.degraded_reason)),
        (
            "kind",
            Value::Union(u32::try_from(branch).expect("small"), Box::new(kind)),
        ),
    ])
}
