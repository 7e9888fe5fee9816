//! Which events become notifications, and what each target receives: one per
//! customer (or unknown) post and one per degraded event; nothing for agents, bots,
//! edits, reactions, or a second event of the same post (an `app_mention`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_notifier::notification::FactKey;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::smtp::SmtpSink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_gets_exactly_the_expected_notifications() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    let smtp = SmtpSink::start().await.unwrap();

    let events = vec![
        // C1: two customer posts, an agent reply, an edit and a reaction, and the same
        // first post again as an app_mention (another event id, the same fact).
        customer_post("EvA1", "C1", "100.000001", "printer is on fire"),
        agent_reply("EvA2", "C1", "100.000002", "100.000001"),
        customer_edit("EvA3", "C1", "100.000001", "100.000003"),
        customer_reaction("EvA4", "C1", "100.000002"),
        customer_post("EvA5", "C1", "100.000005", "also the scanner"),
        customer_post("EvA6", "C1", "100.000001", "printer is on fire"),
        // C2: a customer post, a bot message, a degraded message.
        customer_post("EvB1", "C2", "200.000001", "login fails"),
        bot_post("EvB2", "C2", "200.000002"),
        degraded("EvB3", "C2", "200.000003", "unknown_subtype"),
        // C3: a post whose author Slack hid, an agent's reply, a reaction, an edit.
        unknown_post("EvC1", "C3", "300.000001", "who sees this"),
        agent_reply("EvC2", "C3", "300.000002", "300.000001"),
        customer_reaction("EvC3", "C3", "300.000001"),
        customer_edit("EvC4", "C3", "300.000001", "300.000004"),
    ];
    produce(&cluster, &events).await;

    let targets = Targets {
        slack: Some(slack.url()),
        discord: Some(discord.url()),
        smtp: Some(smtp.url()),
    };
    let mut service = start(config(&cluster, &db.url, &targets)).await;

    let expected = vec![
        expected_post_text("C1", "100.000001", "printer is on fire"),
        expected_post_text("C1", "100.000005", "also the scanner"),
        expected_post_text("C2", "200.000001", "login fails"),
        "A message could not be fully processed in C2 (ts 200.000003): unknown_subtype. \
         Archive key: raw/2026/11/24/22/EvB3.json"
            .to_owned(),
        "New message from U0HIDDEN in C3 (thread 300.000001): who sees this".to_owned(),
    ];
    // Every event accounted for: 5 notifications per target, 1 duplicate fact per
    // target, 2 agents, 1 bot, 4 edits and reactions.
    wait_until("every event handled", Duration::from_secs(60), || async {
        let sent = service.counter("slackline_notifier_sent_total", &[]);
        let dup = service.counter(
            "slackline_notifier_skipped_total",
            &[("reason", "already_sent")],
        );
        let agent = service.counter("slackline_notifier_skipped_total", &[("reason", "agent")]);
        let bot = service.counter("slackline_notifier_skipped_total", &[("reason", "bot")]);
        let other = service.counter(
            "slackline_notifier_skipped_total",
            &[("reason", "not_a_post")],
        );
        sent == 15 && dup == 3 && agent == 2 && bot == 1 && other == 4
    })
    .await;

    assert_exactly_once("slack", &slack.texts(), &expected);
    assert_exactly_once("discord", &discord.texts(), &expected);
    for body in discord.bodies() {
        assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
    }
    let mails = smtp.mails();
    let bodies: Vec<String> = mails.iter().map(|m| m.text().trim().to_owned()).collect();
    assert_exactly_once("email", &bodies, &expected);
    for mail in &mails {
        assert_eq!(mail.from, "slackline@example.com");
        assert_eq!(mail.to, ["support@example.com", "lead@example.com"]);
        assert!(mail.header("Subject").unwrap().starts_with("[slackline] "));
        assert!(mail.header("Message-ID").is_some(), "{}", mail.data);
    }
    // The Message-ID is the fact's: the same for the post and its app_mention.
    let first_post = &events[0];
    let mail = mails
        .iter()
        .find(|m| m.text().contains("printer is on fire"))
        .unwrap();
    assert_eq!(
        mail.header("Message-ID").unwrap(),
        FactKey::of(first_post).message_id()
    );
    assert_eq!(
        FactKey::of(first_post).message_id(),
        FactKey::of(&events[5]).message_id()
    );
    let degraded_mail = mails
        .iter()
        .find(|m| m.text().contains("could not"))
        .unwrap();
    assert_eq!(
        degraded_mail.header("Subject").unwrap(),
        "[slackline] A message could not be fully processed in C2"
    );

    for target in ["slack", "discord", "email"] {
        assert_eq!(
            service.counter(
                "slackline_notifier_sent_total",
                &[("target", target), ("kind", "message")]
            ),
            4,
            "{target}"
        );
        assert_eq!(
            service.counter(
                "slackline_notifier_sent_total",
                &[("target", target), ("kind", "degraded")]
            ),
            1,
            "{target}"
        );
        assert_eq!(
            service.counter("slackline_notifier_ambiguous_total", &[("target", target)]),
            0
        );
    }
    assert_eq!(service.counter("slackline_notifier_failed_total", &[]), 0);
    assert_eq!(
        service.counter(
            "slackline_notifier_skipped_total",
            &[("reason", "no_target")]
        ),
        0
    );

    service.stop().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_targets_events_are_counted() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    produce(&cluster, &customer_batch(&["C1", "C2"], 3)).await;
    produce(&cluster, &[bot_post("EvBot", "C1", "9.000001")]).await;

    let mut service = start(config(&cluster, &db.url, &Targets::default())).await;
    wait_until("every event counted", Duration::from_secs(60), || async {
        service.counter(
            "slackline_notifier_skipped_total",
            &[("reason", "no_target")],
        ) == 6
            && service.counter("slackline_notifier_skipped_total", &[("reason", "bot")]) == 1
    })
    .await;
    assert_eq!(service.counter("slackline_notifier_sent_total", &[]), 0);
    service.stop().await;
    db.drop_database().await;
}
