//! `slackline dev` wiring end to end: start the local stack, send the testdata
//! conversation with `send`, read it back with `tail`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use slackline::postgres::{self, DatabaseChoice};
use slackline::{dev, send, tail};
use slackline_kafka::KafkaSettings;
use slackline_service::Shutdown;
use slackline_slack::SigningSecrets;
use slackline_testkit::postgres::TestDatabase;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/events")
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_stack_accepts_sent_events_and_tail_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await;
    let shutdown = Shutdown::new();
    let stack = dev::start(
        dev::DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: dir.path().to_path_buf(),
            partitions: 3,
            secrets: SigningSecrets::new([dev::DEV_SECRET]).unwrap(),
            bot_tokens: Default::default(),
            slack_api_base_url: "http://127.0.0.1:9".into(),
            rules: Default::default(),
            database: DatabaseChoice::Url(db.url.clone()),
            service_env: Vec::new(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();

    let files = send::collect_files(&[testdata()]).unwrap();
    assert!(files.len() >= 10, "{files:?}");
    let options = send::SendOptions {
        url: stack.webhook_url(),
        secret: dev::DEV_SECRET.to_owned(),
        retry_num: None,
        raw: false,
    };
    let results = send::send_files(&files, &options).await.unwrap();
    assert!(
        results.iter().all(|r| r.status == Some(200)),
        "{}",
        send::summary(&results)
    );

    // A wrong secret is refused for every file.
    let wrong = send::SendOptions {
        secret: "not-the-secret".into(),
        ..options.clone()
    };
    let refused = send::send_files(&files[..2], &wrong).await.unwrap();
    assert!(refused.iter().all(|r| r.status == Some(401)));

    let settings = KafkaSettings::new(&stack.bootstrap);
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let n = tail::tail(
            &settings,
            "slack.events.raw",
            true,
            &AtomicBool::new(false),
            &mut out,
        )
        .unwrap();
        (n, String::from_utf8(out).unwrap())
    })
    .await
    .unwrap();
    let (printed, text) = lines;
    assert_eq!(printed as usize, files.len());
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), files.len());
    let question = records
        .iter()
        .find(|r| r["headers"]["slack-event-id"] == "Ev0TD01")
        .expect("the first message is on the topic");
    assert_eq!(question["key"], "C0SHARED01");
    assert_eq!(
        question["value"]["event"]["user"], "U0CUSTA",
        "JSON values are printed as JSON"
    );
    assert!(question["headers"]["archive-key"]
        .as_str()
        .unwrap()
        .starts_with("raw/"));
    // Archive objects exist for every record.
    let archive_root = dir.path().join("archive");
    for r in &records {
        let key = r["headers"]["archive-key"].as_str().unwrap();
        assert!(archive_root.join(key).is_file(), "{key}");
    }

    // The normalizer turned the conversation into Avro events; tail decodes them.
    let settings = KafkaSettings::new(&stack.bootstrap);
    let messages = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let mut out = Vec::new();
            tail::tail(
                &settings,
                "slack.messages.v1",
                true,
                &AtomicBool::new(false),
                &mut out,
            )
            .unwrap();
            let text = String::from_utf8(out).unwrap();
            // 11 files: app_home_opened and app_rate_limited are ignored, 9 are events.
            if text.lines().count() >= 9 || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    let events: Vec<serde_json::Value> = messages
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 9, "{messages}");
    assert!(events.iter().all(|e| e["value_format"] == "avro"));
    let question = events
        .iter()
        .find(|e| e["value"]["event_id"] == "Ev0TD01")
        .expect("the question");
    assert_eq!(question["value"]["mode"], "full");
    assert_eq!(question["value"]["author"]["kind"], "customer");
    assert_eq!(question["key"], "C0SHARED01");
    let edit = events
        .iter()
        .find(|e| e["value"]["event_id"] == "Ev0TD03")
        .expect("the edit");
    assert_eq!(edit["value"]["kind"]["type"], "edited");

    // tail on a topic that does not exist says so.
    let settings = KafkaSettings::new(&stack.bootstrap);
    let missing = tokio::task::spawn_blocking(move || {
        tail::tail(
            &settings,
            "no.such.topic",
            true,
            &AtomicBool::new(false),
            &mut Vec::new(),
        )
    })
    .await
    .unwrap();
    assert!(missing.is_err());

    shutdown.trigger();
    stack.wait().await.unwrap();
    // dev wrote down its database for `slackline threads`.
    let written = std::fs::read_to_string(dir.path().join(dev::DATABASE_URL_FILE)).unwrap();
    assert_eq!(written, db.url);
    db.drop_database().await;
}

/// With `--embedded-postgres` (or when no server answers), dev makes and starts a
/// cluster of its own under the state directory, and stops it with the stack.
#[tokio::test(flavor = "multi_thread")]
async fn dev_starts_and_stops_a_throwaway_postgres_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // As root the cluster runs as `postgres`, which must be able to reach the folder.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let database = postgres::provide(&DatabaseChoice::Embedded, dir.path())
        .await
        .unwrap();
    assert!(database.is_embedded(), "{}", database.description);
    assert!(dir.path().join("postgres/data/PG_VERSION").is_file());
    let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database.url)
        .await
        .unwrap();
    let name: String = slackline_store::sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, postgres::DEV_DATABASE);
    pool.close().await;
    // A second `dev` while the first one's cluster still runs (as after a `dev` that
    // was killed): it takes the cluster over, on a new port, with the same data.
    std::mem::forget(database);
    let database = postgres::provide(&DatabaseChoice::Embedded, dir.path())
        .await
        .unwrap();
    let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database.url)
        .await
        .unwrap();
    pool.close().await;
    let url = database.url.clone();
    drop(database);
    // Stopped: nothing answers on its port any more.
    let refused = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect(&url)
        .await;
    assert!(
        refused.is_err(),
        "the cluster still answers after the stack stopped"
    );
}
