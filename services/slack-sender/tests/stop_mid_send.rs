//! A send the runtime abandons (its shutdown grace over, or a revoke's) still
//! records its outcome: the request and the recording run in a task that outlives
//! the handler call, and the service's stop waits for it within its grace.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_service::Shutdown;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_cut_off_by_the_shutdown_is_recorded_sent_with_its_ts() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    // Slack takes the post at once and answers 3 s later, within the 6 s request
    // timeout but after the runtime's 1 s shutdown grace abandoned the handler call.
    slack.script(
        "C0STOP",
        Answer::delayed(Duration::from_secs(3), Answer::Ok),
    );
    let mut config = config(
        &cluster,
        &db.url,
        &slack,
        &[("SLACK_SENDER_HTTP_TIMEOUT_MS", "6000")],
    );
    config.runtime.shutdown_grace = Duration::from_secs(1);
    let shutdown = Shutdown::new();
    let sender = slackline_slack_sender::start_sender(config, shutdown.clone())
        .await
        .expect("slack-sender starts");
    produce_replies(
        &cluster,
        &[reply(
            "r-stop",
            "C0STOP",
            "1764000000.000100",
            "Still there?",
        )],
    )
    .await;
    wait_until(
        "the post reached Slack",
        Duration::from_secs(30),
        || async { !calls_to(&slack, "C0STOP").is_empty() },
    )
    .await;

    let stopping = tokio::time::Instant::now();
    shutdown.trigger();
    tokio::time::timeout(
        Duration::from_secs(20),
        sender.wait(&shutdown, Duration::from_secs(8)),
    )
    .await
    .expect("the sender stops in time")
    .expect("the sender stops cleanly");
    // Bounded: the send's answer (3 s), well within the grace given to the wait.
    assert!(
        stopping.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopping.elapsed()
    );

    let posted = slack.posted();
    assert_eq!(posted.len(), 1, "{posted:#?}");
    let (state, ts, error) = reply_row(&pool, "r-stop").await.unwrap();
    assert_eq!(state, "sent", "{error:?}");
    assert_eq!(ts, posted[0].ts);
    pool.close().await;
    db.drop_database().await;
}
