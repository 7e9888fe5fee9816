//! The claim protocol of the handler, without Kafka: a `sending` claim left by a
//! process that died mid-send is not sent again (at most once), and neither is a
//! send that got no answer (both fail the event for the DLQ, once); a `claimed` row
//! nobody started is taken over and sent once; a claim another consumer inserts
//! between our read and our insert is not taken for ours; targets are handled
//! independently.
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

/// The claim token of "another consumer" (or a crashed process).
const OTHER_TOKEN: &str = "00000000-0000-4000-8000-0000000000aa";

async fn insert_row(pool: &sqlx::PgPool, target: &str, key: &FactKey, token: &str, state: &str) {
    sqlx::query(
        "INSERT INTO sent (target, team_id, channel_id, ts, fact, event_id, claim_token, state) \
         VALUES ($1, $2, $3, $4, $5, 'EvOld', $6::uuid, $7)",
    )
    .bind(target)
    .bind(&key.team_id)
    .bind(&key.channel_id)
    .bind(&key.ts)
    .bind(&key.fact)
    .bind(token)
    .bind(state)
    .execute(pool)
    .await
    .unwrap();
}

/// (target, whether the token is [`OTHER_TOKEN`], state).
fn row(target: &str, other: Option<&str>, state: &str) -> (String, bool, String) {
    (target.to_owned(), other.is_some(), state.to_owned())
}

async fn rows(pool: &sqlx::PgPool) -> Vec<(String, bool, String)> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT target, claim_token::text, state FROM sent ORDER BY target")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(t, token, state)| (t, token == OTHER_TOKEN, state))
        .collect()
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
    insert_row(&s.pool, "slack", &key, OTHER_TOKEN, "sending").await;

    let err = s.handler.handle(record(&event)).await.unwrap_err();
    assert!(!err.is_retryable(), "ambiguous goes to the DLQ: {err:?}");
    assert!(err.message().starts_with("slack: "), "{err:?}");
    assert!(err.message().contains(&key.to_string()), "{err:?}");
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
        rows(&s.pool).await,
        [
            row("discord", None, "sent"),
            row("slack", Some(OTHER_TOKEN), "ambiguous")
        ]
    );
    // Redelivered (a DLQ redrive): nothing more, and no second DLQ record.
    s.handler.handle(record(&event)).await.unwrap();
    assert_eq!((slack.count(), discord.count()), (0, 1));
    assert_eq!(
        counter(
            &s.registry,
            "slackline_notifier_skipped_total",
            &[("reason", "ambiguous")]
        ),
        1
    );
    assert_eq!(
        counter(&s.registry, "slackline_notifier_ambiguous_total", &[]),
        1
    );
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

    let err = s.handler.handle(record(&event)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.message().contains("no answer in time"), "{err:?}");
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
        1,
        "the timed-out send; its row is skipped on redelivery"
    );
    assert_eq!(
        counter(
            &s.registry,
            "slackline_notifier_skipped_total",
            &[("reason", "ambiguous")]
        ),
        1
    );
    assert_eq!(
        states(&s.pool).await,
        [
            ("discord".to_owned(), "sent".to_owned()),
            ("slack".to_owned(), "ambiguous".to_owned())
        ]
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_claim_never_started_is_taken_over_and_sent_once() {
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    let s = setup(&db, webhooks(&slack, &discord, Duration::from_secs(3))).await;
    let event = customer_post("Ev1", "C1", "100.000001", "hello");
    let key = FactKey::of(&event);
    // A process crashed between its claim and its request.
    insert_row(&s.pool, "slack", &key, OTHER_TOKEN, "claimed").await;

    s.handler.handle(record(&event)).await.unwrap();
    s.handler.handle(record(&event)).await.unwrap();
    assert_eq!((slack.count(), discord.count()), (1, 1));
    let rows = rows(&s.pool).await;
    assert_eq!(
        rows,
        [row("discord", None, "sent"), row("slack", None, "sent")],
        "taken over: a new token"
    );
    // The crashed claimant, were it alive, could no longer start its send.
    let store = SentStore::new(s.pool.clone());
    assert!(!store
        .begin_send("slack", &key, OTHER_TOKEN.parse().unwrap())
        .await
        .unwrap());
    assert_eq!(
        counter(&s.registry, "slackline_notifier_ambiguous_total", &[]),
        0
    );
    db.drop_database().await;
}

/// Makes the handler's first insert of a `slack` claim meet a row another consumer
/// inserted between the handler's read and its insert: a BEFORE INSERT trigger
/// inserts that row (token [`OTHER_TOKEN`], `state`) just before the handler's row.
async fn race_slack_claims(pool: &sqlx::PgPool, state: &str) {
    sqlx::query(&format!(
        "CREATE FUNCTION other_consumer_claims() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF pg_trigger_depth() = 1 AND NEW.target = 'slack' THEN \
             INSERT INTO sent (target, team_id, channel_id, ts, fact, event_id, claim_token, state) \
             VALUES (NEW.target, NEW.team_id, NEW.channel_id, NEW.ts, NEW.fact, 'EvOther', \
                     '{OTHER_TOKEN}', '{state}') ON CONFLICT DO NOTHING; \
           END IF; \
           RETURN NEW; \
         END $$"
    ))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER other_consumer_claims BEFORE INSERT ON sent \
         FOR EACH ROW EXECUTE FUNCTION other_consumer_claims()",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_another_consumer_inserted_is_not_taken_for_ours() {
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    let s = setup(&db, webhooks(&slack, &discord, Duration::from_secs(3))).await;
    let event = customer_post("Ev1", "C1", "100.000001", "hello");
    let key = FactKey::of(&event);
    // The other consumer claimed it and started its request in between.
    race_slack_claims(&s.pool, "sending").await;

    let err = s.handler.handle(record(&event)).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.message().contains(&key.to_string()), "{err:?}");
    assert_eq!(slack.count(), 0, "not sent");
    assert_eq!(discord.count(), 1);
    assert_eq!(
        rows(&s.pool).await,
        [
            row("discord", None, "sent"),
            row("slack", Some(OTHER_TOKEN), "ambiguous")
        ],
        "not deleted, still the other consumer's"
    );
    // Its owner finishing the send still records it.
    let store = SentStore::new(s.pool.clone());
    assert!(store
        .mark_sent("slack", &key, OTHER_TOKEN.parse().unwrap())
        .await
        .unwrap());
    s.handler.handle(record(&event)).await.unwrap();
    assert_eq!((slack.count(), discord.count()), (0, 1));
    assert_eq!(
        rows(&s.pool).await,
        [
            row("discord", None, "sent"),
            row("slack", Some(OTHER_TOKEN), "sent")
        ]
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_another_consumer_inserted_but_never_started_is_taken_over_once() {
    let db = TestDatabase::create().await;
    let slack = Receiver::slack().await;
    let discord = Receiver::discord().await;
    let s = setup(&db, webhooks(&slack, &discord, Duration::from_secs(3))).await;
    let event = customer_post("Ev1", "C1", "100.000001", "hello");
    let key = FactKey::of(&event);
    race_slack_claims(&s.pool, "claimed").await;

    s.handler.handle(record(&event)).await.unwrap();
    assert_eq!((slack.count(), discord.count()), (1, 1));
    assert_eq!(
        rows(&s.pool).await,
        [row("discord", None, "sent"), row("slack", None, "sent")]
    );
    // The other consumer cannot start its send any more.
    let store = SentStore::new(s.pool.clone());
    assert!(!store
        .begin_send("slack", &key, OTHER_TOKEN.parse().unwrap())
        .await
        .unwrap());
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
