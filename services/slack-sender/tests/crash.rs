//! A slack-sender process killed mid-send, and redelivery to the next one: at most
//! one Slack message per reply (the stand-in's log of every call is counted exactly),
//! and the reply ends as the design says: `sent` with the posted message's ts when
//! its post landed (found in the thread, `reconciled`), `ambiguous` (DLQ, never
//! posted again) when it did not.
//!
//! A "process" here is the consumer runtime and its handler on a tokio runtime of
//! their own ([`Process`]): the kill crashes the consumer runtime (no offsets
//! committed) and then drops every task of that runtime, the send tasks that outlive
//! a handler call included. Without the second step the crashed runtime's send task
//! would still finish the post and record it in this test process, which a killed
//! process never does.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_store::sqlx;

const ROOT: &str = "1764000000.000100";

fn crash_config(
    cluster: &TestCluster,
    db: &TestDatabase,
    slack: &SlackApiStandIn,
) -> slackline_slack_sender::SlackSenderConfig {
    config(
        cluster,
        &db.url,
        slack,
        &[
            ("SLACK_SENDER_CHANNEL_INTERVAL_MS", "50"),
            ("SLACK_SENDER_HTTP_TIMEOUT_MS", "20000"),
            ("DATABASE_STATEMENT_TIMEOUT_MS", "60000"),
        ],
    )
}

/// The process dies while Slack holds its `chat.postMessage` open. On C0HELD the post
/// landed (Slack took it, its answer never reached the process); on C0LOST it did
/// not (Slack refused it with a 503 the process never saw). The next process of the
/// group gets both records again (nothing was committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_during_the_request_posts_nothing_twice() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    let held = slack.hold("C0HELD");
    slack.script("C0LOST", Answer::Status(503));
    let lost = slack.hold("C0LOST");
    let first = Process::start(crash_config(&cluster, &db, &slack)).await;
    produce_replies(
        &cluster,
        &[
            reply("r-held", "C0HELD", ROOT, "held 1"),
            reply("r-lost", "C0LOST", ROOT, "lost 1"),
            reply("r-held-next", "C0HELD", ROOT, "held 2"),
            reply("r-lost-next", "C0LOST", ROOT, "lost 2"),
        ],
    )
    .await;
    wait_until("both posts held", Duration::from_secs(30), || async {
        held.arrived() && lost.arrived()
    })
    .await;
    first.kill().await;
    for id in ["r-held", "r-lost"] {
        assert_eq!(reply_row(&pool, id).await.unwrap().0, "sending", "{id}");
    }
    // The answers go to a dead connection.
    held.release();
    lost.release();

    let second = Process::start(crash_config(&cluster, &db, &slack)).await;
    wait_until(
        "the next replies posted",
        Duration::from_secs(40),
        || async {
            posted_texts(&slack, "C0HELD").len() == 2 && posted_texts(&slack, "C0LOST").len() == 1
        },
    )
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;

    // Exactly one call per reply, in reply order.
    let held_calls = calls_to(&slack, "C0HELD");
    let texts: Vec<_> = held_calls
        .iter()
        .map(|c| c.field("text").unwrap())
        .collect();
    assert_eq!(texts, ["held 1", "held 2"], "{held_calls:#?}");
    let lost_calls = calls_to(&slack, "C0LOST");
    let texts: Vec<_> = lost_calls
        .iter()
        .map(|c| c.field("text").unwrap())
        .collect();
    assert_eq!(texts, ["lost 1", "lost 2"], "{lost_calls:#?}");
    assert_eq!(slack.post_calls().len(), 4);

    // The landed post is found in its thread: `sent` with its ts.
    let (state, ts, error) = reply_row(&pool, "r-held").await.unwrap();
    assert_eq!(state, "sent", "{error:?}");
    assert_eq!(ts, held_calls[0].ts);
    assert_eq!(
        second.counter("slackline_slack_sender_reconciled_total", &[]),
        1
    );
    // The other is not in its thread: ambiguous, dead-lettered, never posted again.
    let (state, ts, error) = reply_row(&pool, "r-lost").await.unwrap();
    assert_eq!((state.as_str(), ts), ("ambiguous", None));
    let error = error.unwrap();
    assert!(error.contains("never recorded its outcome"), "{error}");
    assert!(error.contains("not found in its thread"), "{error}");
    let dlq = dlq_records(&cluster, 1).await;
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert!(dlq[0].error.contains("r-lost"), "{}", dlq[0].error);
    assert_eq!(
        second.counter("slackline_slack_sender_ambiguous_total", &[]),
        1
    );
    // r-held once (found); r-lost twice: before and after waiting one request
    // timeout from its claim (a live process could still have been sending it).
    let lookups = slack.calls_of("conversations.replies");
    assert_eq!(lookups.len(), 3, "{lookups:#?}");
    for lookup in &lookups {
        assert_eq!(lookup.field("ts"), Some(ROOT));
        assert_eq!(lookup.field("include_all_metadata"), Some("true"));
        assert_eq!(lookup.token.as_deref(), Some(TOKEN));
    }
    second.stop().await;
    pool.close().await;
    db.drop_database().await;
}

/// Slack posted the reply and answered, and the process died before its `sent`
/// write committed: the write is held up by a row lock the test takes, the process is
/// killed, and its blocked statement's backend is terminated (what PostgreSQL does
/// to a dead client's session) before the lock goes. The next process finds the row
/// `sending` under a claim nobody knows and the post in the thread: `sent`, one post.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_between_slacks_answer_and_the_sent_write_posts_once() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    let held = slack.hold("C0REC");
    let first = Process::start(crash_config(&cluster, &db, &slack)).await;
    produce_replies(
        &cluster,
        &[
            reply("r-rec", "C0REC", ROOT, "answered"),
            reply("r-rec-next", "C0REC", ROOT, "next"),
        ],
    )
    .await;
    held.wait_arrived().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM slack_sender.replies WHERE reply_id = 'r-rec' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    held.release();
    let blocked_writes = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                          AND query LIKE 'UPDATE replies SET state = ''sent''%'";
    wait_until(
        "the sent write waits on the lock",
        Duration::from_secs(20),
        || async {
            !sqlx::query_as::<_, (i32,)>(blocked_writes)
                .fetch_all(&pool)
                .await
                .unwrap()
                .is_empty()
        },
    )
    .await;
    first.kill().await;
    let killed: Vec<(bool,)> = sqlx::query_as(&format!(
        "SELECT pg_terminate_backend(pid) FROM ({blocked_writes}) AS blocked"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!killed.is_empty());
    lock.rollback().await.unwrap();
    assert_eq!(calls_to(&slack, "C0REC").len(), 1);
    let (state, ts, _) = reply_row(&pool, "r-rec").await.unwrap();
    assert_eq!(
        (state.as_str(), ts),
        ("sending", None),
        "the write never landed"
    );

    let second = Process::start(crash_config(&cluster, &db, &slack)).await;
    wait_until("the next reply posted", Duration::from_secs(40), || async {
        posted_texts(&slack, "C0REC").len() == 2
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;
    let calls = calls_to(&slack, "C0REC");
    let texts: Vec<_> = calls.iter().map(|c| c.field("text").unwrap()).collect();
    assert_eq!(texts, ["answered", "next"], "one post each: {calls:#?}");
    let (state, ts, error) = reply_row(&pool, "r-rec").await.unwrap();
    assert_eq!(state, "sent", "{error:?}");
    assert_eq!(ts, calls[0].ts);
    assert_eq!(
        second.counter("slackline_slack_sender_reconciled_total", &[]),
        1
    );
    assert_eq!(
        second.counter("slackline_slack_sender_ambiguous_total", &[]),
        0
    );
    second.stop().await;
    pool.close().await;
    db.drop_database().await;
}
