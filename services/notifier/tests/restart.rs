//! A restart in the middle of a batch, and the whole input produced twice: every
//! fact is notified exactly once on every target.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::smtp::SmtpSink;

const CHANNELS: [&str; 4] = ["C1", "C2", "C3", "C4"];
const PER_CHANNEL: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_batch_and_a_second_copy_notify_each_fact_once() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    let smtp = SmtpSink::start().await.unwrap();
    // Slow targets, so the first instance is stopped partway through.
    slack.set_delay(Duration::from_millis(10));
    discord.set_delay(Duration::from_millis(10));
    let targets = Targets {
        slack: Some(slack.url()),
        discord: Some(discord.url()),
        smtp: Some(smtp.url()),
    };

    let events = customer_batch(&CHANNELS, PER_CHANNEL);
    let total = events.len();
    let expected: Vec<String> = events
        .iter()
        .map(|e| {
            expected_post_text(
                e.channel_id.as_deref().unwrap(),
                e.ts.as_deref().unwrap(),
                e.rendered_text.as_deref().unwrap(),
            )
        })
        .collect();
    produce(&cluster, &events).await;

    let mut first = start(config(&cluster, &db.url, &targets)).await;
    wait_until(
        "the first notifications",
        Duration::from_secs(60),
        || async { slack.count() >= 20 },
    )
    .await;
    first.stop().await;
    let after_first = slack.count();
    assert!(
        after_first < total,
        "the first instance should stop partway ({after_first} of {total})"
    );

    let mut second = start(config(&cluster, &db.url, &targets)).await;
    let mail_texts = || -> Vec<String> {
        smtp.mails()
            .iter()
            .map(|m| m.text().trim().to_owned())
            .collect()
    };
    wait_until("every notification", Duration::from_secs(120), || async {
        slack.count() >= total && discord.count() >= total && smtp.mails().len() >= total
    })
    .await;
    assert_exactly_once("slack", &slack.texts(), &expected);
    assert_exactly_once("discord", &discord.texts(), &expected);
    assert_exactly_once("email", &mail_texts(), &expected);
    // Each channel in order on every target.
    for channel in CHANNELS {
        let want = of_channel(&expected, channel);
        assert_eq!(of_channel(&slack.texts(), channel), want, "slack {channel}");
        assert_eq!(
            of_channel(&discord.texts(), channel),
            want,
            "discord {channel}"
        );
        assert_eq!(of_channel(&mail_texts(), channel), want, "email {channel}");
    }

    // The whole input again: every fact is already sent on every target. (Records the
    // first instance had not committed were handled again before the last
    // notification above, in partition order, so the counter moves only by the copy.)
    let already_sent = || {
        second.counter(
            "slackline_notifier_skipped_total",
            &[("reason", "already_sent")],
        )
    };
    let sent_before = second.counter("slackline_notifier_sent_total", &[]);
    let skipped_before = already_sent();
    produce(&cluster, &events).await;
    wait_until("the copy handled", Duration::from_secs(120), || async {
        already_sent() >= skipped_before + 3 * total as u64
    })
    .await;
    assert_eq!(already_sent(), skipped_before + 3 * total as u64);
    assert_eq!(
        second.counter("slackline_notifier_sent_total", &[]),
        sent_before
    );
    assert_exactly_once("slack", &slack.texts(), &expected);
    assert_exactly_once("discord", &discord.texts(), &expected);
    assert_exactly_once("email", &mail_texts(), &expected);
    for target in ["slack", "discord", "email"] {
        assert_eq!(
            second.counter("slackline_notifier_ambiguous_total", &[("target", target)]),
            0,
            "{target}"
        );
    }
    second.stop().await;
    db.drop_database().await;
}
