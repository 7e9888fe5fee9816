//! Slack's pace: about one message per second per channel, and a 429's
//! `Retry-After` holds back that channel only, in order, while the other channels'
//! replies go out meanwhile (guarantee 3); 5xx answers are retried in order.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;

const ROOT: &str = "1764000000.000100";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_delays_one_channel_in_order_while_another_flows() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    slack.script(
        "C0LIMITED",
        Answer::RateLimited {
            retry_after_secs: 2,
        },
    );
    let mut sender = start(config(&cluster, &db.url, &slack, &[])).await;
    let mut replies = Vec::new();
    for i in 0..3 {
        replies.push(reply(
            &format!("r-a{i}"),
            "C0LIMITED",
            ROOT,
            &format!("limited {i}"),
        ));
        replies.push(reply(
            &format!("r-b{i}"),
            "C0FREE",
            ROOT,
            &format!("free {i}"),
        ));
    }
    produce_replies(&cluster, &replies).await;
    wait_until("every reply posted", Duration::from_secs(40), || async {
        slack.posted().len() == 6
    })
    .await;

    let limited = calls_to(&slack, "C0LIMITED");
    let answers: Vec<&str> = limited.iter().map(|c| c.answer.as_str()).collect();
    assert_eq!(
        answers,
        ["429 retry-after 2", "ok", "ok", "ok"],
        "{limited:#?}"
    );
    let texts: Vec<&str> = limited.iter().filter_map(|c| c.field("text")).collect();
    assert_eq!(
        texts,
        ["limited 0", "limited 0", "limited 1", "limited 2"],
        "in order"
    );
    let waited = limited[1].at - limited[0].at;
    assert!(
        waited >= Duration::from_millis(1950),
        "Retry-After honoured: {waited:?}"
    );
    // ... while the free channel went on: its first two replies were out before the
    // limited channel's retry.
    let free = calls_to(&slack, "C0FREE");
    let free_texts: Vec<&str> = free.iter().filter_map(|c| c.field("text")).collect();
    assert_eq!(free_texts, ["free 0", "free 1", "free 2"]);
    assert!(
        free[1].at < limited[1].at,
        "free 1 {:?} vs retry {:?}",
        free[1].at,
        limited[1].at
    );
    // Paced: about one message per second per channel.
    for pair in free.windows(2).chain(limited[1..].windows(2)) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(950), "gap {gap:?}");
    }
    assert_eq!(
        sender.counter(
            "slackline_slack_sender_retried_total",
            &[("reason", "rate_limited")]
        ),
        1
    );
    assert_eq!(sender.counter("slackline_slack_sender_sent_total", &[]), 6);
    sender.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_errors_and_no_connection_are_retried_in_order() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    for answer in [
        Answer::Status(503),
        Answer::Status(500),
        Answer::error("service_unavailable"),
        Answer::Status(503),
    ] {
        slack.script("C0FLAKY", answer);
    }
    let mut sender = start(config(
        &cluster,
        &db.url,
        &slack,
        &[("SLACK_SENDER_CHANNEL_INTERVAL_MS", "100")],
    ))
    .await;
    let replies: Vec<_> = (0..3)
        .map(|i| reply(&format!("r-{i}"), "C0FLAKY", ROOT, &format!("flaky {i}")))
        .collect();
    produce_replies(&cluster, &replies).await;
    wait_until("every reply posted", Duration::from_secs(40), || async {
        slack.posted().len() == 3
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;
    let calls = calls_to(&slack, "C0FLAKY");
    let texts: Vec<&str> = calls.iter().filter_map(|c| c.field("text")).collect();
    assert_eq!(
        texts,
        ["flaky 0", "flaky 0", "flaky 0", "flaky 0", "flaky 0", "flaky 1", "flaky 2"],
        "{calls:#?}"
    );
    assert_eq!(
        posted_texts(&slack, "C0FLAKY"),
        ["flaky 0", "flaky 1", "flaky 2"]
    );
    assert_eq!(
        sender.counter(
            "slackline_slack_sender_retried_total",
            &[("reason", "http_5xx")]
        ),
        3
    );
    sender.stop().await;

    // Slack unreachable (nothing listens): nothing was sent, so it is retried, and
    // posted once Slack is back.
    let port = slackline_testkit::free_port();
    let down = format!("http://127.0.0.1:{port}/api");
    let mut config = config(&cluster, &db.url, &slack, &[]);
    config.slack.base_url = down;
    let mut sender = start(config).await;
    produce_replies(&cluster, &[reply("r-down", "C0DOWN", ROOT, "while down")]).await;
    wait_until(
        "a connect failure was retried",
        Duration::from_secs(20),
        || async {
            sender.counter(
                "slackline_slack_sender_retried_total",
                &[("reason", "connect")],
            ) >= 2
        },
    )
    .await;
    let pool = pool(&db).await;
    // Between two tries (a try in progress shows `sending`).
    wait_until(
        "pending with the connect error",
        Duration::from_secs(10),
        || async {
            let (state, _, error) = reply_row(&pool, "r-down").await.unwrap();
            state == "pending" && error.unwrap_or_default().contains("could not reach Slack")
        },
    )
    .await;
    sender.stop().await;
    let mut sender = start(config_with_slack(&cluster, &db.url, &slack)).await;
    wait_until(
        "posted once Slack is back",
        Duration::from_secs(30),
        || async { posted_texts(&slack, "C0DOWN").len() == 1 },
    )
    .await;
    assert_eq!(reply_row(&pool, "r-down").await.unwrap().0, "sent");
    sender.stop().await;
    pool.close().await;
    db.drop_database().await;
}

fn config_with_slack(
    cluster: &TestCluster,
    url: &str,
    slack: &SlackApiStandIn,
) -> slackline_slack_sender::SlackSenderConfig {
    config(cluster, url, slack, &[])
}

/// A `Retry-After` above the runtime's in-process limit (5 s): the record goes to the
/// retry topic at once with the channel's later replies parked behind it, in order;
/// another channel is not delayed; the reply is posted once, after the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_retry_after_goes_through_the_retry_topic_in_order() {
    assert!(slackline_consumer::MAX_IN_PROCESS_RETRY_AFTER < Duration::from_secs(7));
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = SlackApiStandIn::start().await;
    slack.script(
        "C0LONG",
        Answer::RateLimited {
            retry_after_secs: 7,
        },
    );
    let mut sender = start(config(
        &cluster,
        &db.url,
        &slack,
        &[("SLACK_SENDER_CHANNEL_INTERVAL_MS", "200")],
    ))
    .await;
    let mut replies = Vec::new();
    for i in 0..3 {
        replies.push(reply(
            &format!("r-long{i}"),
            "C0LONG",
            ROOT,
            &format!("long {i}"),
        ));
        replies.push(reply(
            &format!("r-free{i}"),
            "C0FREE",
            ROOT,
            &format!("free {i}"),
        ));
    }
    produce_replies(&cluster, &replies).await;
    wait_until("every reply posted", Duration::from_secs(60), || async {
        slack.posted().len() == 6
    })
    .await;
    wait_caught_up(&cluster, Duration::from_secs(30)).await;

    let long = calls_to(&slack, "C0LONG");
    let calls: Vec<_> = long
        .iter()
        .map(|c| (c.field("text").unwrap(), c.answer.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("long 0", "429 retry-after 7"),
            ("long 0", "ok"),
            ("long 1", "ok"),
            ("long 2", "ok"),
        ],
        "posted once each, in order"
    );
    let waited = long[1].at - long[0].at;
    assert!(
        waited >= Duration::from_millis(6950),
        "Retry-After honoured: {waited:?}"
    );
    // The other channel went on meanwhile.
    let free = calls_to(&slack, "C0FREE");
    assert_eq!(
        posted_texts(&slack, "C0FREE"),
        ["free 0", "free 1", "free 2"]
    );
    assert_eq!(free.len(), 3);
    assert!(
        free[2].at < long[0].at + Duration::from_secs(5),
        "free 2 at {:?} after the 429",
        free[2].at - long[0].at
    );
    // Through the retry topic (not waited out in process), the channel's later
    // replies parked behind it in order; nothing of the other channel.
    let retried = retry_topic_replies(&cluster, 3).await;
    assert_eq!(
        retried,
        [
            ("C0LONG".to_owned(), "r-long0".to_owned()),
            ("C0LONG".to_owned(), "r-long1".to_owned()),
            ("C0LONG".to_owned(), "r-long2".to_owned()),
        ]
    );
    assert_eq!(sender.counter("slackline_slack_sender_sent_total", &[]), 6);
    sender.stop().await;
    db.drop_database().await;
}
