//! Failures: the database's connections killed again and again while a batch is
//! written (every fact ends written once, no history item twice), and a record that
//! is not a message event (to the DLQ, while every other record is still written).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use helpers::*;
use serde_json::{json, Value};
use slackline_consumer::DlqRecord;
use slackline_events::encode_message;
use slackline_testkit::postgres::TestDatabase;

const COLUMNS: [&str; 9] = [
    "team_id",
    "channel_id",
    "ts",
    "fact",
    "kind",
    "text",
    "history",
    "deleted",
    "applied_edits",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing_and_duplicate_nothing() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let mut config = config(&cluster, &db);
    // Enough rounds that a record outlives any run of kills (it would otherwise end
    // in the DLQ, which the test rules out below).
    config.runtime.quick_retries = 5;
    config.runtime.quick_backoff = Duration::from_millis(10);
    config.runtime.retry_delays = vec![Duration::from_millis(100); 30];
    let writer = Writer::start(config).await;

    const CHANNELS: usize = 4;
    const MESSAGES: usize = 15;
    let mut events = Vec::new();
    let mut want = Vec::new();
    for i in 0..MESSAGES {
        for c in 0..CHANNELS {
            let channel = format!("C{c}");
            let user = if i % 2 == 0 { CUSTOMER } else { AGENT };
            let secs = 1_700_001_000 + i as u64 * 10;
            let ts = format!("{secs}.{c:06}");
            let (e1, e2) = (
                format!("{}.000000", secs + 1),
                format!("{}.000000", secs + 2),
            );
            let id = |what: &str| format!("Ev-{c}-{i}-{what}");
            let post = posted(&id("post"), &channel, &ts, user, &format!("m{i} v0"));
            let edit1 = edited(&id("e1"), &channel, &ts, &e1, user, &format!("m{i} v1"));
            let edit2 = edited(&id("e2"), &channel, &ts, &e2, user, &format!("m{i} v2"));
            // Odd messages get their edits in the wrong order.
            if i % 2 == 0 {
                events.extend([post, edit1, edit2]);
            } else {
                events.extend([post, edit2, edit1]);
            }
            let deleted_too = i % 5 == 0;
            want.push(json!({
                "team_id": TEAM, "channel_id": channel, "ts": ts, "fact": "posted", "kind": "posted",
                "text": format!("m{i} v2"),
                "history": [{"text": format!("m{i} v0"), "edited_ts": e1},
                            {"text": format!("m{i} v1"), "edited_ts": e2}],
                "deleted": deleted_too,
                "applied_edits": [format!("edited:{e1}"), format!("edited:{e2}")],
            }));
            for (e, n) in [(&e1, 1), (&e2, 2)] {
                want.push(json!({
                    "team_id": TEAM, "channel_id": channel, "ts": ts, "fact": format!("edited:{e}"),
                    "kind": "edited", "text": format!("m{i} v{n}"), "history": [], "deleted": false,
                    "applied_edits": [],
                }));
            }
            if i % 3 == 0 {
                let event_id = id("reaction");
                events.push(reaction(&event_id, &channel, &ts, AGENT, "eyes", true));
                want.push(json!({
                    "team_id": TEAM, "channel_id": channel, "ts": ts,
                    "fact": format!("reaction_added:eyes:{AGENT}:{event_id}"),
                    "kind": "reaction_added", "text": null, "history": [], "deleted": false,
                    "applied_edits": [],
                }));
            }
            if deleted_too {
                events.push(deleted(
                    &id("delete"),
                    &channel,
                    &ts,
                    user,
                    &format!("m{i} v2"),
                ));
                want.push(json!({
                    "team_id": TEAM, "channel_id": channel, "ts": ts, "fact": "deleted",
                    "kind": "deleted", "text": format!("m{i} v2"), "history": [], "deleted": false,
                    "applied_edits": [],
                }));
            }
        }
    }
    sort_rows(&mut want);

    // Kill every connection of the database every few milliseconds while the batch
    // is written.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let db = db.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut rounds, mut killed) = (0u32, 0i64);
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                let n = db.terminate_connections().await;
                killed += n;
                if n > 0 {
                    rounds += 1;
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            (rounds, killed)
        })
    };
    produce(&cluster, &events).await;
    writer.wait_finished(events.len() as u64).await;
    stop.store(true, Ordering::SeqCst);
    let (rounds, killed) = killer.await.unwrap();
    assert!(
        rounds >= 3,
        "connections were killed in {rounds} rounds ({killed} in all): the test did not test"
    );

    let failures = metric(
        writer.registry(),
        "slackline_timeline_write_failures_total",
        &[("error", "retryable")],
    );
    assert!(
        failures > 0.0,
        "no write was interrupted: the test did not test"
    );
    assert_eq!(
        metric(writer.registry(), "slackline_dlq_records_total", &[]),
        0.0,
        "nothing may end in the DLQ for a database blip"
    );
    let got = project(&rows(&db).await, &COLUMNS);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "row {i}");
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(
        metric(
            writer.registry(),
            "slackline_timeline_entries_written_total",
            &[]
        ) + metric(
            writer.registry(),
            "slackline_timeline_duplicates_skipped_total",
            &[]
        ),
        events.len() as f64,
        "each event counted once, as written or as a duplicate"
    );
    eprintln!(
        "{} events, connections killed in {rounds} rounds ({killed} in all), {failures} writes interrupted",
        events.len()
    );
    writer.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_is_not_a_message_event_goes_to_the_dlq() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let writer = Writer::start(config(&cluster, &db)).await;

    let garbage = b"\xc3\x01 certainly not avro".to_vec();
    let event = |e: slackline_events::MessageEvent| {
        let key = e.channel_id.clone().unwrap();
        (key, encode_message(&e).unwrap(), e.event_id.clone())
    };
    let records = vec![
        event(posted("Ev1", "C1", "1700000001.000100", CUSTOMER, "before")),
        ("C1".to_owned(), garbage.clone(), "EvBad".to_owned()),
        event(posted(
            "Ev2",
            "C2",
            "1700000002.000100",
            CUSTOMER,
            "other channel",
        )),
        event(posted(
            "Ev3",
            "C1",
            "1700000003.000100",
            AGENT,
            "after, same channel",
        )),
        event(posted(
            "Ev4",
            "C3",
            "1700000004.000100",
            CUSTOMER,
            "third channel",
        )),
    ];
    produce_raw(&cluster, &records).await;
    writer.wait_finished(records.len() as u64).await;

    let dlq = slackline_testkit::kafka::read_topic(
        &cluster.bootstrap_servers(),
        &cluster.names().dlq(GROUP),
        1,
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        slackline_testkit::kafka::topic_len(
            &cluster.bootstrap_servers(),
            &cluster.names().dlq(GROUP),
            1
        ),
        1,
        "one DLQ record, no more"
    );
    assert_eq!(dlq[0].key.as_deref(), Some("C1"));
    let record: DlqRecord = serde_json::from_slice(&dlq[0].payload).unwrap();
    assert_eq!(record.group, cluster.names().group(GROUP));
    assert!(!record.retryable);
    assert!(
        record.error.contains("not a message event"),
        "{}",
        record.error
    );
    assert_eq!(record.original.topic, cluster.names().messages());
    assert_eq!(record.original.key.as_deref(), Some("C1"));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&record.payload_base64)
            .unwrap(),
        garbage
    );
    assert_eq!(
        metric(writer.registry(), "slackline_dlq_records_total", &[]),
        1.0
    );

    let got = project(&rows(&db).await, &["channel_id", "ts", "fact", "text"]);
    let want: Vec<Value> = vec![
        json!({"channel_id": "C1", "ts": "1700000001.000100", "fact": "posted", "text": "before"}),
        json!({"channel_id": "C1", "ts": "1700000003.000100", "fact": "posted", "text": "after, same channel"}),
        json!({"channel_id": "C2", "ts": "1700000002.000100", "fact": "posted", "text": "other channel"}),
        json!({"channel_id": "C3", "ts": "1700000004.000100", "fact": "posted", "text": "third channel"}),
    ];
    assert_eq!(got, want);
    writer.stop().await;
    db.drop_database().await;
}
