//! At most one Slack message per reply (guarantee 2 for the outbound half): a reply
//! reaches `chat.postMessage` once with the right channel, `thread_ts`, token, text
//! and metadata; delivering the record again, replaying the topic from the start in
//! a fresh consumer group (a rewind) and a restart post nothing new; a send with no
//! answer that is not in its thread is marked ambiguous, reported in the DLQ and never
//! posted again, and so is a send a dead process left `sending` (tests/reconcile.rs:
//! one that is in its thread).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_is_posted_once_and_redelivery_replay_and_restart_post_nothing() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    let mut first = reply(
        "r-once",
        "C0ONE",
        "1764000000.000100",
        "We *fixed* the export",
    );
    first.reply_broadcast = true;
    let other_team = {
        let mut r = reply("r-other", "C0TWO", "1764000000.000200", "Other workspace");
        r.team_id = OTHER_TEAM.into();
        r
    };
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    produce_replies(&cluster, &[first.clone(), other_team.clone()]).await;
    wait_until("both replies posted", Duration::from_secs(30), || async {
        slack.posted().len() == 2
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;

    let calls = calls_to(&slack, "C0ONE");
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = &calls[0];
    assert_eq!(call.token.as_deref(), Some(TOKEN));
    assert_eq!(call.field("thread_ts"), Some("1764000000.000100"));
    assert_eq!(call.field("text"), Some("We *fixed* the export"));
    assert_eq!(call.field("username"), Some("Ada"));
    assert_eq!(call.body["reply_broadcast"], true);
    assert_eq!(call.body["metadata"]["event_type"], "slackline_reply");
    assert_eq!(call.body["metadata"]["event_payload"]["reply_id"], "r-once");
    assert_eq!(call.body["metadata"]["event_payload"]["agent_id"], "U0ADA");
    let other = calls_to(&slack, "C0TWO");
    assert_eq!(other.len(), 1);
    assert_eq!(
        other[0].token.as_deref(),
        Some(OTHER_TOKEN),
        "the installing team's token"
    );
    // The ts Slack gave it is recorded: (team, channel, ts) of every posted message.
    let (state, ts, error) = reply_row(&pool, "r-once").await.unwrap();
    assert_eq!(state, "sent");
    assert_eq!(ts, call.ts);
    assert_eq!(error, None);
    assert_eq!(sender.counter("slackline_slack_sender_sent_total", &[]), 2);

    // The producer delivers the same reply again (its own retry): nothing new.
    produce_replies(&cluster, &[first.clone()]).await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;
    assert_eq!(slack.post_calls().len(), 2);
    assert_eq!(
        sender.counter(
            "slackline_slack_sender_skipped_total",
            &[("reason", "already_sent")]
        ),
        1
    );
    sender.stop().await;

    // A restart of the group (its commits kept) and a replay of the whole topic in a
    // fresh group (as after a rewind to the start): still nothing new.
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    let mut replay_config = config(&cluster, &db.url, &slack, &[]);
    replay_config.runtime.group_id = cluster.names().group("slack-sender-replay");
    replay_config.admin_addr = "127.0.0.1:0".parse().unwrap();
    let mut replay = start(replay_config).await;
    wait_until(
        "the replay saw all three records",
        Duration::from_secs(30),
        || async {
            replay.counter(
                "slackline_slack_sender_skipped_total",
                &[("reason", "already_sent")],
            ) == 3
        },
    )
    .await;
    assert_eq!(slack.post_calls().len(), 2, "{:#?}", slack.post_calls());
    replay.stop().await;
    sender.stop().await;
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_without_an_answer_is_ambiguous_reported_and_never_repeated() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    // Slack does not post it, and its answer comes after the sender's 1.5 s timeout:
    // the sender cannot tell, and the message is not in the thread.
    slack.script(
        "C0SLOW",
        Answer::delayed(Duration::from_secs(4), Answer::Status(500)),
    );
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    let lost = reply(
        "r-lost",
        "C0SLOW",
        "1764000000.000100",
        "Are you still there?",
    );
    let next = reply("r-next", "C0SLOW", "1764000000.000100", "Next one");
    produce_replies(&cluster, &[lost.clone(), next.clone()]).await;

    let dlq = dlq_records(&cluster, 1).await;
    assert_eq!(dlq.len(), 1, "{dlq:#?}");
    assert!(dlq[0].error.contains("r-lost"), "{}", dlq[0].error);
    assert!(dlq[0].error.contains("ambiguous"), "{}", dlq[0].error);
    assert!(!dlq[0].retryable);
    wait_until("the next reply posted", Duration::from_secs(30), || async {
        posted_texts(&slack, "C0SLOW").len() == 1
    })
    .await;
    let (state, _, error) = reply_row(&pool, "r-lost").await.unwrap();
    assert_eq!(state, "ambiguous");
    let error = error.unwrap();
    assert!(error.contains("no answer"), "{error}");
    assert!(error.contains("not found in its thread"), "{error}");
    assert_eq!(
        sender.counter("slackline_slack_sender_ambiguous_total", &[]),
        1
    );

    // The redriven DLQ record (or a replay) posts nothing: still not in the thread.
    redrive(&cluster, &dlq[0]).await;
    wait_until(
        "the redrive was skipped",
        Duration::from_secs(30),
        || async {
            sender.counter(
                "slackline_slack_sender_skipped_total",
                &[("reason", "ambiguous")],
            ) == 1
        },
    )
    .await;
    let calls = calls_to(&slack, "C0SLOW");
    assert_eq!(calls.len(), 2, "one call per reply: {calls:#?}");
    assert_eq!(calls[0].field("text"), Some("Are you still there?"));
    sender.stop().await;

    // A send a dead process left `sending` (its claim unknown to anyone alive) is
    // ambiguous too: not posted.
    slackline_store::sqlx::query(
        "INSERT INTO slack_sender.replies (reply_id, thread_id, team_id, channel_id, thread_ts, \
         agent_id, agent_name, text, state, claim_token, created_at) \
         VALUES ('r-crashed', 't', $1, 'C0CRASH', '1.2', 'U0ADA', 'Ada', 'x', 'sending', \
         gen_random_uuid(), now())",
    )
    .bind(TEAM)
    .execute(&pool)
    .await
    .unwrap();
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    produce_replies(
        &cluster,
        &[reply(
            "r-crashed",
            "C0CRASH",
            "1.2",
            "from before the crash",
        )],
    )
    .await;
    let dlq = dlq_records(&cluster, 2).await;
    assert_eq!(dlq.len(), 2);
    assert!(
        dlq[1].error.contains("never recorded its outcome"),
        "{}",
        dlq[1].error
    );
    assert!(calls_to(&slack, "C0CRASH").is_empty());
    assert_eq!(reply_row(&pool, "r-crashed").await.unwrap().0, "ambiguous");
    sender.stop().await;
    pool.close().await;
    db.drop_database().await;
}
