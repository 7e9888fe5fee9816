//! A target that is down for a while (answering 503, or refusing connections, or an
//! SMTP relay that is stopped): once it is back, every notification arrives exactly
//! once and each channel's in its original order; the other targets are not
//! notified twice meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_events::MessageEvent;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::smtp::SmtpSink;

const CHANNELS: [&str; 2] = ["C1", "C2"];
const PER_CHANNEL: usize = 15;

fn expected(events: &[MessageEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            expected_post_text(
                e.channel_id.as_deref().unwrap(),
                e.ts.as_deref().unwrap(),
                e.rendered_text.as_deref().unwrap(),
            )
        })
        .collect()
}

fn assert_in_channel_order(target: &str, texts: &[String], expected: &[String]) {
    assert_exactly_once(target, texts, expected);
    for channel in CHANNELS {
        assert_eq!(
            of_channel(texts, channel),
            of_channel(expected, channel),
            "{target}: order of {channel}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_answering_503_gets_everything_once_in_order_later() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    discord.set_failing(true);
    let targets = Targets {
        slack: Some(slack.url()),
        discord: Some(discord.url()),
        smtp: None,
    };
    let events = customer_batch(&CHANNELS, PER_CHANNEL);
    let expected = expected(&events);
    let mut service = start(config(&cluster, &db.url, &targets)).await;
    produce(&cluster, &events).await;

    // Down for a while: several retry rounds of each channel's first event.
    wait_until(
        "Discord refusing for a while",
        Duration::from_secs(60),
        || async { discord.refused() >= 20 },
    )
    .await;
    // Each channel is parked behind its first event; Slack got that event once, and
    // its retries skipped Slack.
    let firsts: Vec<String> = CHANNELS
        .iter()
        .map(|c| of_channel(&expected, c)[0].clone())
        .collect();
    assert_exactly_once("slack while discord is down", &slack.texts(), &firsts);
    assert_eq!(discord.count(), 0);
    assert!(
        service.counter(
            "slackline_notifier_failed_total",
            &[("target", "discord"), ("retryable", "true")]
        ) >= 20
    );
    assert!(
        service.counter(
            "slackline_notifier_skipped_total",
            &[("reason", "already_sent")]
        ) >= 18,
        "retries skip the target that was notified"
    );

    discord.set_failing(false);
    let total = events.len();
    wait_until("every notification", Duration::from_secs(60), || async {
        slack.count() >= total && discord.count() >= total
    })
    .await;
    assert_in_channel_order("slack", &slack.texts(), &expected);
    assert_in_channel_order("discord", &discord.texts(), &expected);
    assert_eq!(
        service.counter("slackline_notifier_ambiguous_total", &[]),
        0
    );
    assert_eq!(
        service.counter("slackline_notifier_failed_total", &[("retryable", "false")]),
        0
    );
    service.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_refusing_connections_gets_everything_once_in_order_later() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let mut slack = Receiver::slack().await;
    slack.stop().await;
    let targets = Targets {
        slack: Some(slack.url()),
        ..Targets::default()
    };
    let events = customer_batch(&CHANNELS, PER_CHANNEL);
    let expected = expected(&events);
    let mut service = start(config(&cluster, &db.url, &targets)).await;
    produce(&cluster, &events).await;

    wait_until(
        "connections refused for a while",
        Duration::from_secs(60),
        || async {
            service.counter(
                "slackline_notifier_failed_total",
                &[("target", "slack"), ("retryable", "true")],
            ) >= 10
        },
    )
    .await;
    assert_eq!(slack.count(), 0);
    slack.restart().await;
    let total = events.len();
    wait_until("every notification", Duration::from_secs(60), || async {
        slack.count() >= total
    })
    .await;
    assert_in_channel_order("slack", &slack.texts(), &expected);
    assert_eq!(
        service.counter("slackline_notifier_ambiguous_total", &[]),
        0
    );
    service.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_relay_stopped_then_restarted_gets_each_mail_once() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let mut smtp = SmtpSink::start().await.unwrap();
    smtp.stop().await;
    let targets = Targets {
        slack: Some(slack.url()),
        smtp: Some(smtp.url()),
        ..Targets::default()
    };
    let events = customer_batch(&CHANNELS, PER_CHANNEL);
    let expected = expected(&events);
    let mut service = start(config(&cluster, &db.url, &targets)).await;
    produce(&cluster, &events).await;

    wait_until(
        "the relay refusing for a while",
        Duration::from_secs(60),
        || async {
            service.counter(
                "slackline_notifier_failed_total",
                &[("target", "email"), ("retryable", "true")],
            ) >= 10
        },
    )
    .await;
    assert!(smtp.mails().is_empty());
    let firsts: Vec<String> = CHANNELS
        .iter()
        .map(|c| of_channel(&expected, c)[0].clone())
        .collect();
    assert_exactly_once("slack while email is down", &slack.texts(), &firsts);

    smtp.restart().await.unwrap();
    let total = events.len();
    wait_until("every mail", Duration::from_secs(60), || async {
        smtp.mails().len() >= total && slack.count() >= total
    })
    .await;
    let mails: Vec<String> = smtp
        .mails()
        .iter()
        .map(|m| m.text().trim().to_owned())
        .collect();
    assert_in_channel_order("email", &mails, &expected);
    assert_in_channel_order("slack", &slack.texts(), &expected);
    assert_eq!(
        service.counter("slackline_notifier_ambiguous_total", &[]),
        0
    );
    service.stop().await;
    db.drop_database().await;
}
