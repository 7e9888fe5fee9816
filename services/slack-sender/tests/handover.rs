//! A rebalance moves a partition while its old owner (a live process) still has a
//! `chat.postMessage` in flight: the new owner finds the reply `sending` under a
//! claim it does not know. It must not dead-letter it as ambiguous at once: it waits
//! until one request timeout has passed since the claim and reads the row again, by
//! which time the old owner has recorded the outcome (`sent`, or back to `pending`
//! when Slack did not take the post), so that no DLQ record is produced and each
//! reply is posted exactly once (the stand-in's log of every call is counted).
//!
//! On the `503` channels the held request ends with a 503 (not posted): it is not in
//! the thread when the new owner looks, which is where marking it ambiguous at once
//! would show (a DLQ record, never posted). On the `ok` channels the old owner's
//! post completes (`sent`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const ROOT: &str = "1764000000.000100";
const REFUSED: [&str; 2] = ["C0HO503A", "C0HO503D"];
const POSTED: [&str; 2] = ["C0HOOKA", "C0HOOKD"];

fn handover_config(
    cluster: &TestCluster,
    db: &TestDatabase,
    slack: &SlackApiStandIn,
) -> slackline_slack_sender::SlackSenderConfig {
    // Long enough that the held requests are released before the old owner's client
    // gives up on them.
    config(
        cluster,
        &db.url,
        slack,
        &[("SLACK_SENDER_HTTP_TIMEOUT_MS", "20000")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_in_flight_on_the_old_owner_is_not_dead_lettered_by_the_new_one() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    let mut holds = Vec::new();
    for channel in REFUSED {
        slack.script(channel, Answer::Status(503));
        holds.push(slack.hold(channel));
    }
    for channel in POSTED {
        holds.push(slack.hold(channel));
    }
    let mut old_owner = start(handover_config(&cluster, &db, &slack)).await;
    let replies: Vec<_> = REFUSED
        .iter()
        .chain(POSTED.iter())
        .map(|c| reply(&format!("r-{c}"), c, ROOT, &format!("to {c}")))
        .collect();
    produce_replies(&cluster, &replies).await;
    // The 503 channels are on both partitions: whichever one moves, one of them does.
    let records = read_topic(
        &cluster.bootstrap_servers(),
        &cluster.names().replies(),
        PARTITIONS,
        replies.len(),
        Duration::from_secs(20),
    )
    .await;
    let refused_partitions: BTreeSet<i32> = records
        .iter()
        .filter(|r| REFUSED.contains(&r.key.as_deref().unwrap_or_default()))
        .map(|r| r.partition)
        .collect();
    assert_eq!(refused_partitions.len(), 2, "{records:#?}");
    wait_until(
        "every request held on the old owner",
        Duration::from_secs(30),
        || async { holds.iter().all(|h| h.arrived()) },
    )
    .await;

    // A second member joins and takes a partition; the old owner's requests on it
    // are still held.
    let mut new_owner = start(handover_config(&cluster, &db, &slack)).await;
    wait_until(
        "the new owner looked for a 503 reply in its thread",
        Duration::from_secs(60),
        || async {
            slack
                .calls_of("conversations.replies")
                .iter()
                .any(|c| REFUSED.contains(&c.field("channel").unwrap_or_default()))
        },
    )
    .await;
    assert!(
        slack.post_calls().len() == 4,
        "nothing posted by the new owner yet: {:#?}",
        slack.post_calls()
    );
    // The old owner's requests complete now.
    for hold in &holds {
        hold.release();
    }
    wait_until("every reply posted", Duration::from_secs(60), || async {
        REFUSED
            .iter()
            .chain(POSTED.iter())
            .all(|c| posted_texts(&slack, c).len() == 1)
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(60)).await;

    for channel in REFUSED {
        let answers: Vec<_> = calls_to(&slack, channel)
            .iter()
            .map(|c| c.answer.clone())
            .collect();
        assert_eq!(answers, ["http 503", "ok"], "{channel}");
    }
    for channel in POSTED {
        assert_eq!(calls_to(&slack, channel).len(), 1, "{channel}");
    }
    for r in &replies {
        let (state, ts, error) = reply_row(&pool, &r.reply_id).await.unwrap();
        assert_eq!(state, "sent", "{}: {error:?}", r.reply_id);
        assert_eq!(ts, calls_to(&slack, &r.channel_id).last().unwrap().ts);
    }
    let dlq = slackline_testkit::kafka::topic_len(
        &cluster.bootstrap_servers(),
        &cluster.names().dlq(GROUP),
        1,
    );
    assert_eq!(dlq, 0, "no dead letter");
    let both = |name: &str| old_owner.counter(name, &[]) + new_owner.counter(name, &[]);
    assert_eq!(both("slackline_slack_sender_ambiguous_total"), 0);
    new_owner.stop().await;
    old_owner.stop().await;
    pool.close().await;
    db.drop_database().await;
}
