//! The claim protocol of the handler, without Kafka: a `sending` claim left by a
//! process that died mid-send is not sent again (at most once), and neither is a
//! send that got no answer; targets are handled independently.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use prometheus::Registry;
use slackline_consumer::Event;
use slackline_events::{encode_message, MessageEvent};
use slackline_notifier::notification::FactKey;
use slackline_notifier::targets::build_targets;
use slackline_notifier::{Handler, NotifierMetrics, SentStore, TargetsConfig, MIGRATOR, SCHEMA};
use slackline_store::StoreSettings;
use slackline_testkit::postgres::TestDatabase;

struct Setup {
    handler: Handler,
    registry: Registry,
    pool: sqlx::PgPool,
}

async fn setup(db: &TestDatabase, targets: TargetsConfig) -> Setup {
    let pool = slackline_store::connect(&StoreSettings::new(&db.url), SCHEMA)
        .await
        .unwrap();
    slackline_store::migrate(&pool, SCHEMA, &MIGRATOR)
        .await
        .unwrap();
    let targets = build_targets(&targets).unwrap();
    let registry = Registry::new();
    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    let metrics = NotifierMetrics::register(&registry, &names).unwrap();
    Setup {
        handler: Handler::new(SentStore::new(pool.clone()), targets, metrics),
        registry,
        pool,
    }
}

fn record(event: &MessageEvent) -> Event {
    Event {
        topic: "slack.messages.v1".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: event.channel_id.clone().map(String::into_bytes),
        headers: vec![],
        payload: encode_message(event).unwrap(),
        attempt: 0,
    }
}

fn webhooks(slack: &Receiver, discord: &Receiver, timeout: Duration) -> TargetsConfig {
    TargetsConfig {
        slack_webhook_url: Some(slack.url().parse().unwrap()),
        discord_webhook_url: Some(discord.url().parse().unwrap()),
        http_timeout: timeout,
        email: None,
    }
}

async fn states(pool: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT target, state FROM sent ORDER BY target")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_mid_send_is_not_sent_again() {
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    let s = setup(&db, webhooks(&slack, &discord, Duration::from_secs(3))).await;
    let event = customer_post("Ev1", "C1", "100.000001", "hello");
    let key = FactKey::of(&event);
    // A process died while sending to Slack: its claim is still `sending`.
    sqlx::query(
        "INSERT INTO sent (target, team_id, channel_id, ts, fact, event_id, state) \
         VALUES ('slack', $1, $2, $3, $4, 'EvOld', 'sending')",
    )
    .bind(&key.team_id)
    .bind(&key.channel_id)
    .bind(&key.ts)
    .bind(&key.fact)
    .execute(&s.pool)
    .await
    .unwrap();

    s.handler.handle(record(&event)).await.unwrap();
    assert_eq!(slack.count(), 0, "ambiguous: not sent again");
    assert_eq!(discord.count(), 1, "the other target is independent");
    assert_eq!(
        counter(
            &s.registry,
            "slackline_notifier_ambiguous_total",
            &[("target", "slack")]
        ),
        1
    );
    assert_eq!(
        states(&s.pool).await,
        [
            ("discord".to_owned(), "sent".to_owned()),
            ("slack".to_owned(), "sending".to_owned())
        ]
    );
    // Redelivered: nothing more.
    s.handler.handle(record(&event)).await.unwrap();
    assert_eq!((slack.count(), discord.count()), (0, 1));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_without_an_answer_is_not_repeated() {
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    // Slack takes the request but answers after the client gave up.
    slack.set_delay(Duration::from_millis(1500));
    let s = setup(&db, webhooks(&slack, &discord, Duration::from_millis(500))).await;
    let event = customer_post("Ev1", "C1", "100.000001", "hello");

    s.handler.handle(record(&event)).await.unwrap();
    s.handler.handle(record(&event)).await.unwrap();
    wait_until(
        "the slow request to arrive",
        Duration::from_secs(10),
        || async { slack.count() == 1 },
    )
    .await;
    assert_eq!(discord.count(), 1);
    assert_eq!(
        counter(
            &s.registry,
            "slackline_notifier_ambiguous_total",
            &[("target", "slack")]
        ),
        2,
        "the timed-out send, then its claim on redelivery"
    );
    assert_eq!(
        states(&s.pool).await,
        [
            ("discord".to_owned(), "sent".to_owned()),
            ("slack".to_owned(), "sending".to_owned())
        ]
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_releases_its_claim_and_4xx_is_permanent() {
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    discord.set_failing(true);
    let s = setup(&db, webhooks(&slack, &discord, Duration::from_secs(3))).await;
    let event = customer_post("Ev1", "C1", "100.000001", "hello");

    let err = s.handler.handle(record(&event)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.message().contains("discord"), "{err:?}");
    assert_eq!(
        states(&s.pool).await,
        [("slack".to_owned(), "sent".to_owned())],
        "the refused claim is gone"
    );
    discord.set_failing(false);
    s.handler.handle(record(&event)).await.unwrap();
    assert_eq!((slack.count(), discord.count()), (1, 1));

    // A 404 (a deleted webhook): permanent, the claim released for a later redrive.
    let gone = Receiver::slack().await;
    gone.set_status(404);
    let db2 = TestDatabase::create().await;
    let config = TargetsConfig {
        slack_webhook_url: Some(gone.url().parse().unwrap()),
        ..TargetsConfig::none()
    };
    let s = setup(&db2, config).await;
    let err = s.handler.handle(record(&event)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.message().contains("404"), "{err:?}");
    assert!(states(&s.pool).await.is_empty());
    assert!(
        !err.message().contains("secret-token"),
        "no webhook URL in errors: {err:?}"
    );
    assert_eq!(
        counter(
            &s.registry,
            "slackline_notifier_failed_total",
            &[("target", "slack"), ("retryable", "false")]
        ),
        1
    );
    db.drop_database().await;
    db2.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_permanent() {
    let db = TestDatabase::create().await;
    let s = setup(&db, TargetsConfig::none()).await;
    let mut bad = record(&customer_post("Ev1", "C1", "1.0", "x"));
    bad.payload = b"{\"not\": \"avro\"}".to_vec();
    let err = s.handler.handle(bad).await.unwrap_err();
    assert!(!err.is_retryable());
    db.drop_database().await;
}
