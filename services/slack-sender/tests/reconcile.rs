//! A send whose outcome is unknown is reconciled with the thread before it is called
//! ambiguous, and again when an ambiguous reply's record comes back (a redrive): the
//! sender reads the thread (`conversations.replies`, `include_all_metadata=true`,
//! page by page) for our message naming the reply id. Found → `sent` with that
//! message's ts, nothing posted again; not found → `ambiguous` (tests/post_once.rs,
//! tests/crash.rs), never posted automatically.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ROOT: &str = "1764000000.000100";

/// Slack posts the fourth reply of the thread, but its answer comes after the
/// sender's 1.5 s timeout; the thread is read two messages a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_post_that_landed_is_recorded_sent_with_its_ts() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    slack.set_page_size(2);
    for _ in 0..3 {
        slack.script("C0REC", Answer::Ok);
    }
    slack.script("C0REC", Answer::delayed(Duration::from_secs(4), Answer::Ok));
    let mut sender = start(config(
        &cluster,
        &db.url,
        &slack,
        &[("SLACK_SENDER_CHANNEL_INTERVAL_MS", "50")],
    ))
    .await;
    let replies: Vec<_> = (1..=5)
        .map(|i| reply(&format!("r-{i}"), "C0REC", ROOT, &format!("reply {i}")))
        .collect();
    produce_replies(&cluster, &replies).await;
    wait_until("every reply posted", Duration::from_secs(40), || async {
        posted_texts(&slack, "C0REC").len() == 5
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;

    let calls = calls_to(&slack, "C0REC");
    let texts: Vec<_> = calls.iter().map(|c| c.field("text").unwrap()).collect();
    assert_eq!(
        texts,
        ["reply 1", "reply 2", "reply 3", "reply 4", "reply 5"],
        "one post each: {calls:#?}"
    );
    let (state, ts, error) = reply_row(&pool, "r-4").await.unwrap();
    assert_eq!(state, "sent", "{error:?}");
    assert_eq!(ts, calls[3].ts, "the ts of the message found in the thread");
    assert_eq!(
        sender.counter("slackline_slack_sender_reconciled_total", &[]),
        1
    );
    assert_eq!(
        sender.counter("slackline_slack_sender_ambiguous_total", &[]),
        0
    );
    assert_eq!(sender.counter("slackline_dlq_records_total", &[]), 0);
    // The parent and four replies, two a page: found on the third page.
    let lookups = slack.calls_of("conversations.replies");
    assert_eq!(lookups.len(), 3, "{lookups:#?}");
    assert_eq!(lookups[0].field("cursor"), None);
    assert_eq!(lookups[1].field("cursor"), Some("page:2"));
    assert_eq!(lookups[2].field("cursor"), Some("page:4"));
    for lookup in &lookups {
        assert_eq!(lookup.field("channel"), Some("C0REC"));
        assert_eq!(lookup.field("ts"), Some(ROOT));
        assert_eq!(lookup.field("include_all_metadata"), Some("true"));
        assert_eq!(lookup.token.as_deref(), Some(TOKEN));
    }
    sender.stop().await;
    pool.close().await;
    db.drop_database().await;
}

/// Not in the thread when the post timed out: ambiguous (DLQ). Slack finishes the
/// post later; the redrive of the dead letter finds it and records it, posting
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ambiguous_reply_found_in_its_thread_at_its_redrive_is_recorded_sent() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    slack.script(
        "C0LATE",
        Answer::delayed(Duration::from_secs(4), Answer::Status(500)),
    );
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    produce_replies(
        &cluster,
        &[
            reply("r-late", "C0LATE", ROOT, "late"),
            reply("r-late-next", "C0LATE", ROOT, "next"),
        ],
    )
    .await;
    let dlq = dlq_records(&cluster, 1).await;
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert!(dlq[0].error.contains("r-late"), "{}", dlq[0].error);
    wait_until("the next reply posted", Duration::from_secs(30), || async {
        posted_texts(&slack, "C0LATE").len() == 1
    })
    .await;
    assert_eq!(reply_row(&pool, "r-late").await.unwrap().0, "ambiguous");

    // Slack's post completes after all (the metadata the sender sent).
    let first = calls_to(&slack, "C0LATE").remove(0);
    let late_ts = slack.add_message(
        "C0LATE",
        json!({
            "text": "late", "thread_ts": ROOT,
            "metadata": first.body["metadata"].clone(),
        }),
    );
    redrive(&cluster, &dlq[0]).await;
    wait_until(
        "the redrive found it in the thread",
        Duration::from_secs(30),
        || async { sender.counter("slackline_slack_sender_reconciled_total", &[]) == 1 },
    )
    .await;
    let (state, ts, error) = reply_row(&pool, "r-late").await.unwrap();
    assert_eq!(state, "sent");
    assert_eq!(ts.as_deref(), Some(late_ts.as_str()));
    assert_eq!(error, None);
    let calls = calls_to(&slack, "C0LATE");
    let texts: Vec<_> = calls.iter().map(|c| c.field("text").unwrap()).collect();
    assert_eq!(texts, ["late", "next"], "nothing posted again: {calls:#?}");
    sender.stop().await;
    pool.close().await;
    db.drop_database().await;
}
