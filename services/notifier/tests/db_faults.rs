//! PostgreSQL connections killed during a run (a failover, a restart of the server):
//! each fact is still notified exactly once on every target.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::smtp::SmtpSink;

const CHANNELS: [&str; 4] = ["C1", "C2", "C3", "C4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_cost_no_notification_and_duplicate_none() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    let smtp = SmtpSink::start().await.unwrap();
    slack.set_delay(Duration::from_millis(5));
    let targets = Targets {
        slack: Some(slack.url()),
        discord: Some(discord.url()),
        smtp: Some(smtp.url()),
    };
    let events = customer_batch(&CHANNELS, 30);
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
    let mut service = start(config(&cluster, &db.url, &targets)).await;
    produce(&cluster, &events).await;

    wait_until(
        "the first notifications",
        Duration::from_secs(60),
        || async { slack.count() >= 5 },
    )
    .await;
    // Kill every connection of the database, again and again, while it runs.
    let mut killed = 0;
    let mut rounds = 0;
    while slack.count() < total && rounds < 40 {
        killed += db.terminate_connections().await;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(killed > 0, "connections were terminated");

    wait_until("every notification", Duration::from_secs(120), || async {
        slack.count() >= total && discord.count() >= total && smtp.mails().len() >= total
    })
    .await;
    let mails: Vec<String> = smtp
        .mails()
        .iter()
        .map(|m| m.text().trim().to_owned())
        .collect();
    assert_exactly_once("slack", &slack.texts(), &expected);
    assert_exactly_once("discord", &discord.texts(), &expected);
    assert_exactly_once("email", &mails, &expected);
    for channel in CHANNELS {
        let want = of_channel(&expected, channel);
        assert_eq!(of_channel(&slack.texts(), channel), want, "slack {channel}");
        assert_eq!(
            of_channel(&discord.texts(), channel),
            want,
            "discord {channel}"
        );
        assert_eq!(of_channel(&mails, channel), want, "email {channel}");
    }
    assert_eq!(
        service.counter("slackline_notifier_ambiguous_total", &[]),
        0
    );
    service.stop().await;
    db.drop_database().await;
}
