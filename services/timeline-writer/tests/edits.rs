//! Edits and deletes that arrive before their post (as after a DLQ redrive), and
//! edits that arrive out of order, end in the same posted entry as if everything had
//! come in Slack's order: the latest edit's text, a history ordered by edited ts with
//! the posted text first, each edit applied once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use helpers::*;
use serde_json::{json, Value};
use slackline_testkit::postgres::TestDatabase;

const COLUMNS: [&str; 8] = [
    "channel_id",
    "ts",
    "fact",
    "kind",
    "text",
    "history",
    "deleted",
    "applied_edits",
];

const M1: &str = "1700000100.000100";
const M2: &str = "1700000101.000100";
const M3: &str = "1700000102.000100";
const M4: &str = "1700000103.000100";

fn edit_row(channel: &str, ts: &str, edited_ts: &str, text: &str) -> Value {
    json!({
        "channel_id": channel, "ts": ts, "fact": format!("edited:{edited_ts}"), "kind": "edited",
        "text": text, "history": [], "deleted": false, "applied_edits": [],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_before_their_post_are_applied_when_it_arrives() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let writer = Writer::start(config(&cluster, &db)).await;

    // Phase 1: what arrives before the posts. M1: two edits, the newer first, and
    // the older one redelivered under another event id. M3: its delete. M4 (another
    // channel): three edits in no order.
    let early = vec![
        edited("Ev1", "C1", M1, "1700000300.000000", CUSTOMER, "v2"),
        edited("Ev2", "C1", M1, "1700000200.000000", CUSTOMER, "v1"),
        edited("Ev2-retry", "C1", M1, "1700000200.000000", CUSTOMER, "v1"),
        deleted("Ev3", "C1", M3, CUSTOMER, "oops"),
        edited("Ev4", "C2", M4, "1700000700.000000", AGENT, "c"),
        edited("Ev5", "C2", M4, "1700000500.000000", AGENT, "a"),
        edited("Ev6", "C2", M4, "1700000600.000000", AGENT, "b"),
    ];
    produce(&cluster, &early).await;
    writer.wait_finished(early.len() as u64).await;
    let got = project(&rows(&db).await, &COLUMNS);
    assert_eq!(
        got,
        vec![
            edit_row("C1", M1, "1700000200.000000", "v1"),
            edit_row("C1", M1, "1700000300.000000", "v2"),
            json!({"channel_id": "C1", "ts": M3, "fact": "deleted", "kind": "deleted", "text": "oops",
                   "history": [], "deleted": false, "applied_edits": []}),
            edit_row("C2", M4, "1700000500.000000", "a"),
            edit_row("C2", M4, "1700000600.000000", "b"),
            edit_row("C2", M4, "1700000700.000000", "c"),
        ],
        "before the posts, only the edits and the delete are there"
    );

    // Phase 2: the posts, then M2 posted in order with its newer edit before its
    // older one, and a late redelivery of an edit of M1.
    let late = vec![
        posted("Ev10", "C1", M1, CUSTOMER, "v0"),
        posted("Ev11", "C1", M2, CUSTOMER, "draft"),
        posted("Ev12", "C1", M3, CUSTOMER, "oops"),
        posted("Ev13", "C2", M4, AGENT, "original"),
        edited("Ev14", "C1", M2, "1700000500.000000", CUSTOMER, "final"),
        edited(
            "Ev15",
            "C1",
            M2,
            "1700000400.000000",
            CUSTOMER,
            "second draft",
        ),
        edited("Ev1-retry", "C1", M1, "1700000300.000000", CUSTOMER, "v2"),
        edited("Ev16", "C2", M4, "1700000550.000000", AGENT, "a"),
    ];
    produce(&cluster, &late).await;
    writer
        .wait_finished((early.len() + late.len()) as u64)
        .await;
    let got = project(&rows(&db).await, &COLUMNS);
    let want = vec![
        edit_row("C1", M1, "1700000200.000000", "v1"),
        edit_row("C1", M1, "1700000300.000000", "v2"),
        json!({"channel_id": "C1", "ts": M1, "fact": "posted", "kind": "posted", "text": "v2",
               "history": [{"text": "v0", "edited_ts": "1700000200.000000"},
                           {"text": "v1", "edited_ts": "1700000300.000000"}],
               "deleted": false,
               "applied_edits": ["edited:1700000200.000000", "edited:1700000300.000000"]}),
        edit_row("C1", M2, "1700000400.000000", "second draft"),
        edit_row("C1", M2, "1700000500.000000", "final"),
        json!({"channel_id": "C1", "ts": M2, "fact": "posted", "kind": "posted", "text": "final",
               "history": [{"text": "draft", "edited_ts": "1700000400.000000"},
                           {"text": "second draft", "edited_ts": "1700000500.000000"}],
               "deleted": false,
               "applied_edits": ["edited:1700000400.000000", "edited:1700000500.000000"]}),
        json!({"channel_id": "C1", "ts": M3, "fact": "deleted", "kind": "deleted", "text": "oops",
               "history": [], "deleted": false, "applied_edits": []}),
        json!({"channel_id": "C1", "ts": M3, "fact": "posted", "kind": "posted", "text": "oops",
               "history": [], "deleted": true, "applied_edits": []}),
        edit_row("C2", M4, "1700000500.000000", "a"),
        edit_row("C2", M4, "1700000550.000000", "a"),
        edit_row("C2", M4, "1700000600.000000", "b"),
        edit_row("C2", M4, "1700000700.000000", "c"),
        // The edit at 550 repeats the text already shown: applied, no history item.
        json!({"channel_id": "C2", "ts": M4, "fact": "posted", "kind": "posted", "text": "c",
               "history": [{"text": "original", "edited_ts": "1700000500.000000"},
                           {"text": "a", "edited_ts": "1700000600.000000"},
                           {"text": "b", "edited_ts": "1700000700.000000"}],
               "deleted": false,
               "applied_edits": ["edited:1700000500.000000", "edited:1700000550.000000",
                                 "edited:1700000600.000000", "edited:1700000700.000000"]}),
    ];
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "row {i}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
    assert_eq!(
        metric(
            writer.registry(),
            "slackline_timeline_duplicates_skipped_total",
            &[("kind", "edited")]
        ),
        2.0
    );
    writer.stop().await;
    db.drop_database().await;
}
