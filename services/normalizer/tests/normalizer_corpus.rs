//! Every payload of the shared Slack corpus through the normaliser and the Avro codec:
//! no panic, nothing that would go to the DLQ, every message-type payload (messages
//! and their subtypes, reactions, membership) becomes a full or degraded event unless
//! it is Slack's housekeeping (ignored with its named reason), and everything else is
//! ignored with a reason. Prints a table of outcomes per file.
//!
//! Reads `../shared/slack-corpus` (or `SLACKLINE_CORPUS_DIR`); prints a notice and
//! checks nothing where it is absent, as in a user's clone.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use slackline_events::{decode_message, encode_message, Mode};
use slackline_normalizer::normalize::{normalize, IgnoreReason, Outcome, RawMeta, Rules};
use slackline_slack::{is_bare_event, wrap_bare_event};

const MESSAGE_TYPES: [&str; 5] = [
    "message",
    "reaction_added",
    "reaction_removed",
    "member_joined_channel",
    "member_left_channel",
];

#[test]
fn every_corpus_payload_has_exactly_one_outcome() {
    let Some(dir) = slackline_testkit::corpus_events_dir() else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    println!("{:<100} outcome", "file");
    for (i, path) in files.iter().enumerate() {
        let raw = std::fs::read(path).unwrap();
        let value: Value = serde_json::from_slice(&raw).unwrap();
        let body = if is_bare_event(&value) {
            serde_json::to_vec(&wrap_bare_event(
                value.clone(),
                &format!("EvCorpus{i:04}"),
                "T0CORPUS",
            ))
            .unwrap()
        } else {
            raw
        };
        let inner_type = value
            .get("event")
            .unwrap_or(&value)
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let meta = RawMeta {
            archive_key: "raw/corpus.json",
            record_key: None,
            event_id: None,
        };
        let outcome = std::panic::catch_unwind(|| normalize(&body, meta, &Rules::default()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let label = match outcome {
            Err(_) => {
                problems.push(format!("{name}: panicked"));
                "PANIC".to_owned()
            }
            Ok(Outcome::Ignored { reason, .. }) => {
                // Slack's housekeeping, Slackbot, a root's reply summary and a join or
                // leave told as a message are `message` payloads ignored on purpose
                // (the README's table of subtypes; `normalize_housekeeping.rs`).
                let on_purpose = inner_type == "message"
                    && matches!(
                        reason,
                        IgnoreReason::Housekeeping
                            | IgnoreReason::Slackbot
                            | IgnoreReason::ParentSummary
                            | IgnoreReason::CoveredByOtherEvent
                    );
                if MESSAGE_TYPES.contains(&inner_type.as_str()) && !on_purpose {
                    problems.push(format!(
                        "{name}: a {inner_type} payload was ignored ({})",
                        reason.label()
                    ));
                }
                format!("ignored:{}", reason.label())
            }
            Ok(Outcome::Event(event)) => {
                match encode_message(&event).and_then(|b| decode_message(&b)) {
                    Err(e) => {
                        problems.push(format!("{name}: would go to the DLQ: {e}"));
                        "dlq".to_owned()
                    }
                    Ok(back) => {
                        assert_eq!(&back, event.as_ref());
                        match event.mode {
                            Mode::Full => "full".to_owned(),
                            Mode::Degraded => format!(
                                "degraded:{}",
                                event.degraded_reason.as_deref().unwrap_or("?")
                            ),
                        }
                    }
                }
            }
        };
        println!("{name:<100} {label}");
        let bucket = label.split(':').next().unwrap_or_default().to_owned();
        let bucket = if bucket == "ignored" {
            label.clone()
        } else {
            bucket
        };
        *totals.entry(bucket).or_default() += 1;
    }
    println!("totals over {} files: {totals:?}", files.len());
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(
        totals.values().sum::<usize>(),
        files.len(),
        "exactly one outcome per payload"
    );
    let full = totals.get("full").copied().unwrap_or(0);
    let degraded = totals.get("degraded").copied().unwrap_or(0);
    assert!(
        full > degraded,
        "most message payloads are understood fully ({full} full, {degraded} degraded)"
    );
}
