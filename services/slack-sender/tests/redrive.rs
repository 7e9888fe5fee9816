//! A reply Slack refused is tried again only by a redrive of its dead letter (the
//! `slackline-redrive` header `slackline dlq redrive` sets): re-reading its record (a
//! producer's retry, a rewind of the group, a replay in a fresh group, the redriven
//! record read again) posts nothing (`skipped{reason="already_failed"}`); each
//! redrive tries once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

const ROOT: &str = "1764000000.000100";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_reply_is_sent_again_only_by_a_redrive() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    // Refused, refused again at the first redrive, posted at the second.
    slack.script("C0REF", Answer::error("not_in_channel"));
    slack.script("C0REF", Answer::Ok);
    slack.script("C0REF", Answer::error("not_in_channel"));
    let refused = reply("r-ref", "C0REF", ROOT, "refused");
    let next = reply("r-ref-next", "C0REF", ROOT, "next");
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    produce_replies(&cluster, &[refused.clone(), next.clone()]).await;
    let dlq = dlq_records(&cluster, 1).await;
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    wait_until("the next reply posted", Duration::from_secs(30), || async {
        posted_texts(&slack, "C0REF").len() == 1
    })
    .await;
    assert_eq!(reply_row(&pool, "r-ref").await.unwrap().0, "failed");
    let skipped_failed = |s: &Running| {
        s.counter(
            "slackline_slack_sender_skipped_total",
            &[("reason", "already_failed")],
        )
    };

    // The record read again (the producer's retry): nothing.
    produce_replies(&cluster, std::slice::from_ref(&refused)).await;
    wait_until("the re-read skipped", Duration::from_secs(30), || async {
        skipped_failed(&sender) == 1
    })
    .await;
    // A replay of the whole topic in a fresh group (a rewind): nothing.
    let mut replay_config = config(&cluster, &db.url, &slack, &[]);
    replay_config.runtime.group_id = cluster.names().group("slack-sender-replay");
    let mut replay = start(replay_config).await;
    wait_until(
        "the replay skipped both records of r-ref",
        Duration::from_secs(30),
        || async { skipped_failed(&replay) == 2 },
    )
    .await;
    replay.stop().await;
    assert_eq!(
        calls_to(&slack, "C0REF").len(),
        2,
        "{:#?}",
        slack.post_calls()
    );

    // A redrive before the cause is fixed: one more try, refused, a new dead letter.
    redrive(&cluster, &dlq[0]).await;
    let dlq = dlq_records(&cluster, 2).await;
    assert_eq!(dlq.len(), 2, "{dlq:#?}");
    assert_eq!(calls_to(&slack, "C0REF").len(), 3);
    assert_eq!(reply_row(&pool, "r-ref").await.unwrap().0, "failed");
    // That redrive read again (the same dead letter redriven twice, or the topic
    // replayed past it): nothing.
    redrive(&cluster, &dlq[0]).await;
    wait_until(
        "the second copy of the redrive skipped",
        Duration::from_secs(30),
        || async { skipped_failed(&sender) == 2 },
    )
    .await;
    assert_eq!(calls_to(&slack, "C0REF").len(), 3);

    // The cause fixed, the new dead letter redriven: posted once.
    redrive(&cluster, &dlq[1]).await;
    wait_until("the redrive posted", Duration::from_secs(30), || async {
        posted_texts(&slack, "C0REF").len() == 2
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;
    let calls = calls_to(&slack, "C0REF");
    let answers: Vec<_> = calls
        .iter()
        .map(|c| (c.field("text").unwrap(), c.answer.as_str()))
        .collect();
    assert_eq!(
        answers,
        [
            ("refused", "error not_in_channel"),
            ("next", "ok"),
            ("refused", "error not_in_channel"),
            ("refused", "ok"),
        ]
    );
    let (state, ts, _) = reply_row(&pool, "r-ref").await.unwrap();
    assert_eq!(state, "sent");
    assert_eq!(ts, calls[3].ts);
    sender.stop().await;
    pool.close().await;
    db.drop_database().await;
}

/// A reply refused, then refused again by two redrives (two dead letters, two
/// `slackline-redrive` ids): a rewind of `support.replies` (the topic re-read from
/// offset 0 in a fresh group) re-reads the original record and both redriven ones,
/// and posts nothing for any of them: every redrive that claimed the reply is
/// remembered (`reply_redrives`), not only the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rewind_after_two_failed_redrives_posts_nothing() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    for _ in 0..3 {
        slack.script("C0TWICE", Answer::error("not_in_channel"));
    }
    let refused = reply("r-twice", "C0TWICE", ROOT, "refused");
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    produce_replies(&cluster, std::slice::from_ref(&refused)).await;
    let dlq = dlq_records(&cluster, 1).await;
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    // Redrive 1 (id A): refused again, a second dead letter.
    redrive(&cluster, &dlq[0]).await;
    let dlq = dlq_records(&cluster, 2).await;
    assert_eq!(dlq.len(), 2, "{dlq:#?}");
    // Redrive 2 (id B, of the second dead letter): refused again.
    redrive(&cluster, &dlq[1]).await;
    let dlq = dlq_records(&cluster, 3).await;
    assert_eq!(dlq.len(), 3, "{dlq:#?}");
    assert_eq!(calls_to(&slack, "C0TWICE").len(), 3);
    assert_eq!(reply_row(&pool, "r-twice").await.unwrap().0, "failed");
    wait_caught_up(&cluster, Duration::from_secs(30)).await;
    sender.stop().await;

    // The rewind: a fresh group reads the topic from offset 0 (the original record,
    // then the records of redrives A and B). The stand-in now answers `ok`, so any
    // claim would post.
    let mut replay_config = config(&cluster, &db.url, &slack, &[]);
    replay_config.runtime.group_id = cluster.names().group("slack-sender-rewind");
    let mut replay = start(replay_config).await;
    wait_until(
        "the rewind skipped all three records",
        Duration::from_secs(30),
        || async {
            replay.counter(
                "slackline_slack_sender_skipped_total",
                &[("reason", "already_failed")],
            ) == 3
        },
    )
    .await;
    replay.stop().await;
    let calls = calls_to(&slack, "C0TWICE");
    assert_eq!(calls.len(), 3, "no post after the rewind: {calls:#?}");
    assert!(calls.iter().all(|c| c.ts.is_none()), "{calls:#?}");
    assert_eq!(reply_row(&pool, "r-twice").await.unwrap().0, "failed");
    assert_eq!(
        replay.counter("slackline_slack_sender_sent_total", &[]),
        0,
        "nothing sent by the rewind"
    );
    pool.close().await;
    db.drop_database().await;
}
