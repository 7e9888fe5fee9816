//! `slackline dev` wiring end to end: start the local stack on the shared Apache
//! Kafka broker (under a prefix of its own, topics created by `dev` as on any
//! existing cluster), send the testdata conversation with `send`, read it back with
//! `tail`. Then the `slackline` binary itself: `dev --kafka=embedded` starts its own
//! broker under its state directory, takes a signed event, shows the thread, and
//! stops the broker on SIGTERM; a second run finds the topics in the kept log
//! directory.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use slackline::postgres::{self, DatabaseChoice};
use slackline::{dev, send, tail};
use slackline_kafka::KafkaSettings;
use slackline_service::Shutdown;
use slackline_testkit::cluster::TestCluster;
use slackline_testkit::postgres::TestDatabase;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/events")
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_stack_accepts_sent_events_and_tail_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await;
    let shutdown = Shutdown::new();
    let cluster = TestCluster::kafka();
    let names = cluster.names().clone();
    let stack = dev::start(
        dev::DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: dir.path().to_path_buf(),
            kafka: dev::KafkaChoice::Bootstrap(cluster.bootstrap_servers()),
            topic_names: names.clone(),
            partitions: 3,
            slack_api_base_url: Some("http://127.0.0.1:9".into()),
            database: DatabaseChoice::Url(db.url.clone()),
            service_env: Vec::new(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert!(
        stack.kafka_description.contains("existing cluster"),
        "{}",
        stack.kafka_description
    );
    // dev created every topic of the stack (none existed under this prefix).
    assert_eq!(stack.topics.len(), names.specs(3).len());
    assert!(stack
        .topics
        .iter()
        .all(|t| matches!(t, slackline_kafka::topics::Created::Created(_))));

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
    let raw_topic = names.raw_events();
    let lines = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let n = tail::tail(
            &settings,
            &raw_topic,
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
        let locator = slackline_archive::Locator::parse(key).unwrap();
        let object = std::fs::read(archive_root.join(&locator.key)).unwrap();
        let line = slackline_archive::segment::slice(&object, &locator)
            .unwrap_or_else(|| panic!("{key} names no complete line"));
        slackline_archive::ArchiveRecord::from_json(line).unwrap();
    }

    // The normalizer turned the conversation into Avro events; tail decodes them.
    let settings = KafkaSettings::new(&stack.bootstrap);
    let messages_topic = names.messages();
    let messages = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let mut out = Vec::new();
            tail::tail(
                &settings,
                &messages_topic,
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
    let no_such_topic = names.name("no.such.topic");
    let missing = tokio::task::spawn_blocking(move || {
        tail::tail(
            &settings,
            &no_such_topic,
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

/// `dev`'s zero-install default, `--kafka=mock`, still carries an event to a thread.
/// The mock cluster here is not a stand-in for Kafka in a guarantee test: it is the
/// product mode under test (topics made through the mock's own API, the short fetch
/// waits of `MOCK_KAFKA_PROPERTIES`), so it cannot run on the shared broker.
#[tokio::test(flavor = "multi_thread")]
async fn dev_default_mock_kafka_carries_an_event_to_a_thread() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await;
    let shutdown = Shutdown::new();
    let stack = dev::start(
        dev::DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: dir.path().to_path_buf(),
            kafka: dev::KafkaChoice::default(),
            topic_names: Default::default(),
            partitions: 2,
            slack_api_base_url: Some("http://127.0.0.1:9".into()),
            database: DatabaseChoice::Url(db.url.clone()),
            service_env: Vec::new(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert!(matches!(stack.kafka, dev::DevKafka::Mock(_)));
    assert!(
        stack.kafka_description.contains("mock"),
        "{}",
        stack.kafka_description
    );
    let files = send::collect_files(&[testdata().join("01-customer-question.json")]).unwrap();
    let options = send::SendOptions {
        url: stack.webhook_url(),
        secret: dev::DEV_SECRET.to_owned(),
        retry_num: None,
        raw: false,
    };
    let results = send::send_files(&files, &options).await.unwrap();
    assert_eq!(results[0].status, Some(200));
    let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let threads = slackline::threads::list_threads(&pool, None, None, 10)
            .await
            .unwrap();
        if let Some(thread) = threads.first() {
            assert_eq!(thread.channel_id, "C0SHARED01");
            break;
        }
        assert!(Instant::now() < deadline, "no thread after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    shutdown.trigger();
    stack.wait().await.unwrap();
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

/// `slackline dev` as a child process, with its output read line by line.
struct DevProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl DevProcess {
    fn start(state: &std::path::Path, database_url: &str, stderr: PathBuf) -> DevProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_slackline"))
            .args([
                "dev",
                "--kafka=embedded",
                "--port",
                "0",
                "--admin-port",
                "0",
            ])
            .args(["--partitions", "2", "--dir"])
            .arg(state)
            .env("DATABASE_URL", database_url)
            .env_remove("SLACK_SIGNING_SECRETS")
            .env_remove("KAFKA_PROPERTIES")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        DevProcess {
            child,
            lines,
            stderr,
        }
    }

    /// The printed lines up to and including the one starting with `prefix`
    /// (trimmed), failing with dev's stderr when it exits or takes too long.
    fn wait_for_line(&mut self, prefix: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let done = line.trim_start().starts_with(prefix);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!(
                        "dev exited ({status}) before printing {prefix:?}; stdout: {seen:#?}\nstderr:\n{}",
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    );
                }
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "dev did not print {prefix:?} within {within:?}; stdout: {seen:#?}\nstderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
        }
    }

    /// SIGTERM, then the exit status (within `within`).
    fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "dev did not stop within {within:?} of SIGTERM; stderr:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn slackline(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_slackline"))
        .args(args)
        .env_remove("SLACK_SIGNING_SECRETS")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

fn value_after<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in {lines:#?}"))
}

/// The operator's path on a machine with Java: `slackline dev --kafka=embedded`
/// starts a real broker under its state directory (`kafka/`), creates the topics
/// there, takes a signed event from `slackline send`, and `slackline threads` shows
/// the thread; SIGTERM stops the stack and the broker cleanly. A second run takes
/// the kept log directory over: every topic is already there.
#[test]
fn dev_with_embedded_kafka_takes_an_event_and_stops_its_broker_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDatabase::create());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let topics = slackline_kafka::topics::TopicNames::default()
        .specs(2)
        .len();

    let mut dev = DevProcess::start(&state, &db.url, dir.path().join("dev1.stderr"));
    // The first start may fetch the jars (scripts/fetch-kafka) and formats the log
    // directory.
    let lines = dev.wait_for_line("try:", Duration::from_secs(300));
    let kafka = value_after(&lines, "Kafka:");
    assert!(
        kafka.contains(&format!(
            "Apache Kafka {}",
            slackline_kafka::embedded::kafka_version()
        )),
        "{kafka}"
    );
    let bootstrap_line = value_after(&lines, "Kafka bootstrap:");
    assert!(
        bootstrap_line.contains(&format!(
            "{topics} topics: {topics} created, 0 already there"
        )),
        "{bootstrap_line}"
    );
    let url = value_after(&lines, "Slack webhook URL:").to_owned();
    let pid: u32 = std::fs::read_to_string(state.join("kafka").join(dev::KAFKA_PID_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(slackline_kafka::embedded::process_alive(pid));

    let question = testdata().join("01-customer-question.json");
    let sent = slackline(&["send", "--url", &url, question.to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&sent.stdout);
    assert!(sent.status.success(), "{printed}");
    assert!(printed.starts_with("200 "), "{printed}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let thread = loop {
        let listed = slackline(&["threads", "--json", "--database-url", &db.url]);
        assert!(listed.status.success(), "{listed:?}");
        let text = String::from_utf8(listed.stdout).unwrap();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no thread after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(thread["channel_id"], "C0SHARED01");
    assert_eq!(thread["status"], "todo");

    let status = dev.terminate(Duration::from_secs(60));
    assert!(status.success(), "dev exited with {status}");
    assert!(
        !slackline_kafka::embedded::process_alive(pid),
        "the broker still runs after dev stopped"
    );
    assert!(!state.join("kafka").join(dev::KAFKA_PID_FILE).exists());
    assert!(state.join("kafka/data/meta.properties").is_file());

    // Again on the kept log directory (new ports): the topics are there.
    let mut dev = DevProcess::start(&state, &db.url, dir.path().join("dev2.stderr"));
    let lines = dev.wait_for_line("try:", Duration::from_secs(180));
    let bootstrap_line = value_after(&lines, "Kafka bootstrap:");
    assert!(
        bootstrap_line.contains(&format!(
            "{topics} topics: 0 created, {topics} already there"
        )),
        "{bootstrap_line}"
    );
    let status = dev.terminate(Duration::from_secs(60));
    assert!(status.success(), "dev exited with {status}");
    runtime.block_on(db.drop_database());
}

/// Without `SLACK_API_BASE_URL`, `dev` works offline: the slack-sender posts to
/// `dev`'s own Slack API stand-in, and `dev` sends the echo of each post back to the
/// edge as Slack would, so the reply lands in the timeline and the thread waits.
#[tokio::test(flavor = "multi_thread")]
async fn dev_without_a_slack_api_posts_replies_to_its_stand_in_and_echoes_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create().await;
    let shutdown = Shutdown::new();
    let cluster = TestCluster::kafka();
    let stack = dev::start(
        dev::DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: dir.path().to_path_buf(),
            kafka: dev::KafkaChoice::Bootstrap(cluster.bootstrap_servers()),
            topic_names: cluster.names().clone(),
            partitions: 2,
            slack_api_base_url: None,
            database: DatabaseChoice::Url(db.url.clone()),
            service_env: Vec::new(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let stand_in = stack.slack_api.as_ref().expect("dev runs its stand-in");
    assert_eq!(stack.slack_api_base_url, stand_in.base_url);

    let root = format!("{}.000100", chrono::Utc::now().timestamp() - 60);
    let body = serde_json::json!({
        "type": "event_callback", "event_id": "EvDEV1", "event_time": 1,
        "team_id": "T0CUST", "authorizations": [{"team_id": "T0HOME"}],
        "event": {"type": "message", "user": "U0CUST", "team": "T0CUST", "text": "help?",
                  "ts": root, "channel": "C0DEV", "event_ts": root},
    });
    let http = reqwest::Client::new();
    let status = send::send_body(
        &http,
        &stack.webhook_url(),
        dev::DEV_SECRET,
        serde_json::to_vec(&body).unwrap(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let thread_id = format!("T0HOME-C0DEV-{root}");
    let status_of = |pool: slackline_store::sqlx::PgPool, id: String| async move {
        slackline::threads::thread(&pool, &id)
            .await
            .unwrap()
            .map(|(t, _)| t.status)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_of(pool.clone(), thread_id.clone()).await.as_deref() != Some("todo") {
        assert!(Instant::now() < deadline, "no thread {thread_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let reply = slackline::replies::build(&slackline::replies::NewReply {
        thread_id: thread_id.clone(),
        text: "On it".into(),
        agent_id: "U0AGENT".into(),
        agent_name: "Ada".into(),
        reply_id: None,
        broadcast: false,
    })
    .unwrap();
    let settings = KafkaSettings::new(stack.bootstrap.clone());
    slackline::replies::produce(&settings, &stack.names.replies(), &reply)
        .await
        .unwrap();
    while status_of(pool.clone(), thread_id.clone()).await.as_deref() != Some("waiting") {
        assert!(Instant::now() < deadline, "the echo never moved the thread");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posted = stand_in.posted();
    assert_eq!(posted.len(), 1, "{posted:#?}");
    assert_eq!(posted[0].field("thread_ts"), Some(root.as_str()));
    // thread-state and timeline-writer are separate groups: wait for the entry too.
    let entries = loop {
        let (_, entries) = slackline::threads::thread(&pool, &thread_id)
            .await
            .unwrap()
            .unwrap();
        if entries.len() >= 2 || Instant::now() >= deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let agent: Vec<_> = entries
        .iter()
        .filter(|e| e.author_kind.as_deref() == Some("agent"))
        .collect();
    assert_eq!(agent.len(), 1, "{entries:#?}");
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert_eq!(agent[0].ts, posted[0].ts.clone().unwrap());
    assert_eq!(agent[0].text.as_deref(), Some("On it"));

    pool.close().await;
    shutdown.trigger();
    stack.wait().await.unwrap();
    db.drop_database().await;
}
