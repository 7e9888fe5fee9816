//! Replies Slack refuses for good land in `slack-sender.dlq` with Slack's error,
//! counted (guarantee 5), the channel's next reply goes on, and a redrive puts them
//! back once the cause is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

const ROOT: &str = "1764000000.000100";
const CODES: [&str; 5] = [
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_auth",
    "msg_too_long",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_slack_errors_go_to_the_dlq_with_the_error_and_redrive_brings_them_back() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    let pool = pool(&db).await;
    let mut replies = Vec::new();
    for (i, code) in CODES.iter().enumerate() {
        let channel = format!("C0ERR{i}");
        slack.script(&channel, Answer::error(code));
        replies.push(reply(
            &format!("r-{code}"),
            &channel,
            ROOT,
            &format!("to {code}"),
        ));
        replies.push(reply(
            &format!("r-{code}-next"),
            &channel,
            ROOT,
            "the next one",
        ));
    }
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    produce_replies(&cluster, &replies).await;

    let dlq = dlq_records(&cluster, CODES.len()).await;
    assert_eq!(dlq.len(), CODES.len(), "{dlq:#?}");
    for code in CODES {
        let record = dlq
            .iter()
            .find(|r| r.error.contains(&format!("r-{code} ")))
            .unwrap_or_else(|| panic!("no DLQ record for {code}: {dlq:#?}"));
        assert!(record.error.contains(code), "{}", record.error);
        assert!(!record.retryable);
        assert_eq!(record.original.topic, cluster.names().replies());
        let (state, ts, error) = reply_row(&pool, &format!("r-{code}")).await.unwrap();
        assert_eq!((state.as_str(), ts), ("failed", None));
        assert!(error.unwrap().contains(code));
    }
    // Each channel's next reply went on.
    wait_until(
        "the next replies posted",
        Duration::from_secs(30),
        || async { slack.posted().len() == CODES.len() },
    )
    .await;
    for code in CODES {
        assert_eq!(
            sender.counter("slackline_slack_sender_failed_total", &[("error", code)]),
            1,
            "{code}"
        );
    }
    assert_eq!(
        sender.counter("slackline_dlq_records_total", &[]),
        CODES.len() as u64
    );

    // The cause is fixed (the bot invited, the text shortened...): redrive.
    for record in &dlq {
        redrive(&cluster, record).await;
    }
    wait_until(
        "the redriven replies posted",
        Duration::from_secs(30),
        || async { slack.posted().len() == 2 * CODES.len() },
    )
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;
    for (i, code) in CODES.iter().enumerate() {
        let texts = posted_texts(&slack, &format!("C0ERR{i}"));
        assert_eq!(texts, ["the next one".to_owned(), format!("to {code}")]);
        assert_eq!(
            reply_row(&pool, &format!("r-{code}")).await.unwrap().0,
            "sent"
        );
    }
    assert_eq!(
        slack.post_calls().len(),
        3 * CODES.len(),
        "nothing posted twice"
    );

    // A team without a token and an undecodable record: DLQ too, nothing posted.
    let mut stranger = reply("r-stranger", "C0STRANGE", ROOT, "hello");
    stranger.team_id = "T0UNKNOWN".into();
    produce_replies(&cluster, &[stranger]).await;
    slackline_testkit::kafka::produce_records(
        &cluster,
        &cluster.names().replies(),
        &[(
            "C0STRANGE".into(),
            b"{\"not\":\"avro\"}".to_vec(),
            "junk".into(),
        )],
    )
    .await;
    let dlq = dlq_records(&cluster, CODES.len() + 2).await;
    assert_eq!(dlq.len(), CODES.len() + 2);
    assert!(dlq.iter().any(|r| r
        .error
        .contains("no bot token configured for team T0UNKNOWN")));
    assert!(dlq
        .iter()
        .any(|r| r.error.contains("undecodable reply record")));
    assert!(calls_to(&slack, "C0STRANGE").is_empty());
    sender.stop().await;
    pool.close().await;
    db.drop_database().await;
}
