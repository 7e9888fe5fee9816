//! A conversation across three channels becomes exactly the expected timeline, and
//! replaying it (twice the same records, a second event id for a post, a rewound
//! consumer group) changes nothing (guarantee 2).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use helpers::*;
use serde_json::{json, Value};
use slackline_testkit::postgres::TestDatabase;

const COLUMNS: [&str; 19] = [
    "team_id",
    "channel_id",
    "ts",
    "fact",
    "kind",
    "thread_ts",
    "event_id",
    "author_id",
    "author_kind",
    "author_name",
    "mode",
    "degraded_reason",
    "archive_key",
    "text",
    "reaction",
    "files",
    "history",
    "deleted",
    "applied_edits",
];

/// One expected row: the columns that vary are given, the rest take the usual values
/// (team T0HOME, no thread, full mode, no reason, no reaction, no files, empty
/// history, not deleted, no edits applied, archive key of the event).
fn row(channel: &str, ts: &str, fact: &str, event_id: &str, fields: Value) -> Value {
    let mut r = json!({
        "team_id": TEAM,
        "channel_id": channel,
        "ts": ts,
        "fact": fact,
        "kind": fact.split(':').next().unwrap(),
        "thread_ts": null,
        "event_id": event_id,
        "author_id": null,
        "author_kind": null,
        "author_name": null,
        "mode": "full",
        "degraded_reason": null,
        "archive_key": format!("raw/2026/11/24/22/{event_id}.json"),
        "text": null,
        "reaction": null,
        "files": [],
        "history": [],
        "deleted": false,
        "applied_edits": [],
    });
    for (k, v) in fields.as_object().unwrap() {
        assert!(r.get(k).is_some(), "unknown column {k}");
        r[k] = v.clone();
    }
    r
}

fn customer() -> Value {
    json!({"author_id": CUSTOMER, "author_kind": "customer", "author_name": "Carl Customer"})
}

fn agent() -> Value {
    json!({"author_id": AGENT, "author_kind": "agent", "author_name": "Ada Agent"})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn expected_conversation() -> Vec<Value> {
    let root = "1700000001.000100";
    vec![
        row(
            "C1",
            root,
            "posted",
            "Ev101",
            with(customer(), json!({"text": "Our export fails"})),
        ),
        row(
            "C1",
            root,
            "reaction_added:eyes:U0AG1:Ev103",
            "Ev103",
            with(agent(), json!({"reaction": "eyes"})),
        ),
        row(
            "C1",
            root,
            "reaction_removed:eyes:U0AG1:Ev105",
            "Ev105",
            with(agent(), json!({"reaction": "eyes"})),
        ),
        row(
            "C1",
            "1700000002.000200",
            "edited:1700000003.000000",
            "Ev104",
            with(
                agent(),
                json!({"kind": "edited", "text": "Which export job?"}),
            ),
        ),
        row(
            "C1",
            "1700000002.000200",
            "posted",
            "Ev102",
            with(
                agent(),
                json!({
                    "thread_ts": root,
                    "text": "Which export job?",
                    "history": [{"text": "Which export?", "edited_ts": "1700000003.000000"}],
                    "applied_edits": ["edited:1700000003.000000"],
                }),
            ),
        ),
        row(
            "C1",
            "1700000004.000400",
            "posted",
            "Ev106",
            with(
                customer(),
                json!({
                    "thread_ts": root,
                    "text": "here is the log",
                    "files": [{
                        "id": "F1",
                        "name": "export.log",
                        "mimetype": "text/plain",
                        "size": 1234,
                        "url_private": "https://files.slack.test/F1/export.log",
                    }],
                }),
            ),
        ),
        row(
            "C1",
            "1700000005.000500",
            "posted",
            "Ev107",
            with(
                agent(),
                json!({"text": "```fixed``` status (https://status.test)"}),
            ),
        ),
        row("C2", "", "member_joined:U0AG1:Ev201", "Ev201", agent()),
        row(
            "C2",
            "1700000021.000100",
            "deleted",
            "Ev203",
            with(customer(), json!({"text": "Please ignore"})),
        ),
        row(
            "C2",
            "1700000021.000100",
            "posted",
            "Ev202",
            with(
                customer(),
                json!({"text": "Please ignore", "deleted": true}),
            ),
        ),
        row(
            "C3",
            "1700000030.000100",
            "degraded:Ev301",
            "Ev301",
            json!({
                "author_id": CUSTOMER,
                "author_kind": "customer",
                "mode": "degraded",
                "degraded_reason": "unknown message subtype",
                "text": "huddle notes",
            }),
        ),
        row(
            "C3",
            "1700000031.000100",
            "posted",
            "Ev302",
            with(
                customer(),
                json!({
                    "mode": "degraded",
                    "degraded_reason": "blocks not understood",
                    "text": "partial text",
                }),
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_becomes_exactly_its_timeline() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let writer = Writer::start(config(&cluster, &db)).await;
    let events = conversation();
    produce(&cluster, &events).await;
    writer.wait_finished(events.len() as u64).await;

    let got = project(&rows(&db).await, &COLUMNS);
    let want = expected_conversation();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "row {i}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");

    let registry = writer.registry();
    assert_eq!(
        metric(registry, "slackline_timeline_entries_written_total", &[]),
        12.0
    );
    assert_eq!(
        metric(
            registry,
            "slackline_timeline_entries_written_total",
            &[("mode", "degraded")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            registry,
            "slackline_timeline_entries_written_total",
            &[("kind", "posted")]
        ),
        6.0
    );
    assert_eq!(
        metric(registry, "slackline_timeline_duplicates_skipped_total", &[]),
        0.0
    );
    assert_eq!(metric(registry, "slackline_dlq_records_total", &[]), 0.0);
    writer.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_retries_and_second_event_ids_change_nothing() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let events = conversation();
    let writer = Writer::start(config(&cluster, &db)).await;
    produce(&cluster, &events).await;
    writer.wait_finished(events.len() as u64).await;
    let before = rows(&db).await;
    assert_eq!(before.len(), 12);

    // Everything again (a replay, or Slack's retries getting through), plus the same
    // post under the app_mention's event id and the same edit under another event id.
    let mut again = events.clone();
    let mut mention = events[0].clone();
    mention.event_id = "Ev101-app-mention".into();
    mention.archive_key = "raw/2026/11/24/22/Ev101-app-mention.json".into();
    let mut edit = events[5].clone();
    assert_eq!(edit.kind.name(), "edited");
    edit.event_id = "Ev104-again".into();
    again.push(mention);
    again.push(edit);
    produce(&cluster, &again).await;
    let total = (events.len() + again.len()) as u64;
    writer.wait_finished(total).await;
    assert_eq!(rows(&db).await, before, "a replay changed the timeline");
    assert_eq!(
        metric(
            writer.registry(),
            "slackline_timeline_duplicates_skipped_total",
            &[]
        ),
        again.len() as f64
    );
    assert_eq!(
        metric(
            writer.registry(),
            "slackline_timeline_duplicates_skipped_total",
            &[("kind", "posted")]
        ),
        7.0,
        "six posts again and one under a second event id"
    );
    assert_eq!(
        metric(
            writer.registry(),
            "slackline_timeline_entries_written_total",
            &[]
        ),
        12.0
    );
    writer.stop().await;

    // A rewound group: another group id reads the whole topic again into the same
    // database.
    const REWOUND: &str = "timeline-writer-rewound";
    let names = cluster.names();
    for topic in [names.retry(REWOUND), names.dlq(REWOUND)] {
        cluster.create_topic(&topic, PARTITIONS);
    }
    let mut config = config(&cluster, &db);
    config.runtime = runtime(&cluster, REWOUND);
    let rewound = Writer::start(config).await;
    rewound.wait_finished(total).await;
    assert_eq!(rows(&db).await, before, "a rewind changed the timeline");
    assert_eq!(
        metric(
            rewound.registry(),
            "slackline_timeline_duplicates_skipped_total",
            &[]
        ),
        total as f64
    );
    rewound.stop().await;
    db.drop_database().await;
}
