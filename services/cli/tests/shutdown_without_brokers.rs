//! Issue 11, defect 6: every service binary stops within its bound after SIGTERM,
//! whatever Kafka and PostgreSQL are doing, and says with its exit status whether
//! it could commit.
//!
//! The five service binaries (`slackline-edge`, `-normalizer`, `-thread-state`,
//! `-timeline-writer`, `-notifier`), each its own process configured from its
//! environment as in production, run against ONE private Apache Kafka broker of this
//! test and a PostgreSQL database of its own (a `file://` archive for the edge), each
//! with a short grace ([`GRACE`]). Once every one is ready (`/readyz` answers 200)
//! and has handled the events the test posted to the edge (its counters), the broker
//! is killed with SIGKILL and every service gets one SIGTERM at the same moment. For
//! each binary the test asserts (the Kafka clients run with the product's settings,
//! so with the brokers gone a commit or a close waits for a coordinator for as long
//! as librdkafka lets it: the 45 s session timeout, or longer):
//!
//! - it exited within its bound: its grace plus
//!   [`slackline_service::shutdown::STOP_MARGIN`] (8 s), the fixed margin every
//!   service promises (it covers the final commit's budget,
//!   `slackline_consumer::FINAL_COMMIT_BUDGET`, and the edge's producer flush);
//! - it was not stopped by its watchdog (exit status `EXIT_STOP_TIMEOUT`): the normal
//!   path ends in time by itself;
//! - its exit status is the one its code promises:
//!   - the consumer groups (thread-state, timeline-writer, notifier) handled records
//!     whose offsets they commit on the way out; with the broker gone that final
//!     commit cannot be made: exit status 1;
//!   - the normalizer runs with `auto.commit.interval.ms` set to an hour, so the
//!     offsets it stored for the events it handled are still uncommitted at the kill
//!     and its final commit cannot be made either; and one more event is in flight
//!     at the kill: the test posts it (with its author, where Slack hid the others')
//!     and kills the broker while the normalizer looks its author up on a Slack API
//!     that never answers, so its outcome is then produced to a dead broker (a
//!     delivery that may wait 300 s) and must be cut off when the grace ends: exit
//!     status 1;
//!   - the edge has nothing to commit: every 200 it answered waited for Kafka's
//!     acknowledgement, so its producer queue is empty and it stops cleanly: exit 0.
//!
//! Two more processes cover the paths around it:
//!
//! - `slackline-thread-state (database silent)`: its database accepts connections and
//!   never answers (a TCP listener of the test, with a long
//!   `DATABASE_ACQUIRE_TIMEOUT_MS`), so it is still starting when SIGTERM comes; it
//!   must stop within the same bound with exit status 0 (nothing was consumed, so
//!   nothing is left to commit);
//! - `slackline-notifier (second signal)`: a member of a group of its own whose
//!   webhook accepts the request and never answers, with a long grace
//!   (`SHUTDOWN_GRACE_MS` = 60 s), so a handler call is in flight and the stop waits
//!   for it; once it has logged the first SIGTERM, a second SIGTERM must end it at
//!   once (within a second) with exit status `EXIT_SECOND_SIGNAL`.
//!
//! The binaries are built first (`cargo build` of the five, a no-op when they are up
//! to date) into this test's own target directory and profile, so the test never
//! runs stale binaries (`SLACKLINE_SERVICE_BIN_DIR` points it at other binaries
//! instead, such as an older commit's, and skips the build). It prints a table: per binary the bound, the measured time
//! from SIGTERM to exit, the exit status and the last log line. A binary still
//! running past its bound plus [`OVERRUN`] has its threads' stacks printed (gdb when
//! installed, else `/proc/<pid>/task/*/stack`) before it is killed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use slackline_kafka::embedded::{BrokerConfig, EmbeddedBroker};
use slackline_kafka::topics::{self, TopicNames, TopicSpec, NORMALIZER_GROUP};
use slackline_kafka::KafkaSettings;
use slackline_service::shutdown::{EXIT_SECOND_SIGNAL, EXIT_STOP_TIMEOUT, STOP_MARGIN};
use slackline_testkit::postgres::TestDatabase;

const PARTITIONS: i32 = 2;
/// Every service's shutdown grace in this test (but the second-signal subject's).
const GRACE: Duration = Duration::from_secs(2);
const SECRET: &str = "shutdown-test-secret";
const HOME: &str = "T0HOME";
/// Events posted before the kill, one per channel.
const EVENTS: usize = 6;
/// Generous bounds for starting (JVM, migrations, group joins) and for the events
/// to go through; the shutdown bounds under test are the services' own.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long past its bound a service is watched before the test gives up on it
/// (and SIGKILLs it, after recording where its threads were).
const OVERRUN: Duration = Duration::from_secs(20);
/// How soon a second SIGTERM must end a process.
const AT_ONCE: Duration = Duration::from_secs(1);
/// The consumer-group binaries.
const GROUP_BINARIES: [&str; 3] = [
    "slackline-thread-state",
    "slackline-timeline-writer",
    "slackline-notifier",
];
/// The group of the second-signal subject (a notifier of its own).
const SECOND_GROUP: &str = "notifier-second-signal";

/// The target directory's profile folder this test binary was built into
/// (`target/debug` for `target/debug/deps/shutdown_without_brokers-…`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary sits in <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds the service binaries into this test's target directory and profile (a
/// no-op when they are up to date), so the test never runs stale ones; or, when
/// `SLACKLINE_SERVICE_BIN_DIR` is set, takes the binaries found there as they are
/// (to measure another build, such as an older commit's).
fn build_service_binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLACKLINE_SERVICE_BIN_DIR") {
        println!(
            "service binaries from SLACKLINE_SERVICE_BIN_DIR={} (not built)",
            Path::new(&dir).display()
        );
        return dir.into();
    }
    let dir = profile_dir();
    let target_dir = dir.parent().expect("<target>/<profile>").to_path_buf();
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => "dev".to_owned(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--profile")
        .arg(&profile);
    for package in [
        "slackline-edge",
        "slackline-normalizer",
        "slackline-thread-state",
        "slackline-timeline-writer",
        "slackline-notifier",
    ] {
        command.args(["-p", package, "--bin", package]);
    }
    let started = Instant::now();
    let status = command
        .status()
        .expect("running cargo build for the service binaries");
    assert!(
        status.success(),
        "cargo build of the service binaries failed ({status})"
    );
    println!(
        "service binaries built or up to date in {:.1?} ({})",
        started.elapsed(),
        dir.display()
    );
    dir
}

/// A log line with the time it was read.
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// One running service binary.
struct Service {
    /// The binary, or the binary and a role (`slackline-thread-state (second signal)`).
    label: String,
    child: Child,
    log: Log,
    admin: SocketAddr,
    /// Its shutdown grace.
    grace: Duration,
}

impl Service {
    fn start(bin_dir: &Path, binary: &str, label: &str, env: &[(String, String)]) -> Service {
        let admin: SocketAddr = ([127, 0, 0, 1], slackline_testkit::free_port()).into();
        let mut command = Command::new(bin_dir.join(binary));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env("ADMIN_ADDR", admin.to_string())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        let log: Log = Arc::default();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Service {
            label: label.to_owned(),
            child,
            log,
            admin,
            grace: GRACE,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn has_logged(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(needle))
    }

    fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn last_line(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .last()
            .map(|(_, l)| strip_ansi(l))
            .unwrap_or_default()
    }

    /// Panics with the service's log when it has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "{} exited early ({status}); its log:\n{}",
                self.label,
                self.log_text()
            );
        }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid()).unwrap())
            .expect("a child's pid is positive");
        rustix::process::kill_process(pid, signal).expect("signalling a child we did not reap");
    }

    /// Waits up to `limit` for the process to exit; on overrun records where its
    /// threads are, SIGKILLs it and returns `None`.
    fn wait_exit(&mut self, since: Instant, limit: Duration) -> (Option<ExitStatus>, Duration) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (Some(status), since.elapsed());
            }
            if since.elapsed() > limit {
                let stacks = thread_stacks(self.pid());
                println!(
                    "{} still running {:.1?} after SIGTERM; its threads:\n{stacks}",
                    self.label,
                    since.elapsed()
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
                return (None, since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where each thread of `pid` is: `gdb`'s backtraces when gdb is installed, else the
/// kernel's view (`comm`, `wchan`, `stack`).
fn thread_stacks(pid: u32) -> String {
    if let Ok(out) = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 25",
        ])
        .stdin(Stdio::null())
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("Thread") {
            return text
                .lines()
                .filter(|l| l.starts_with("Thread") || l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    let mut out = String::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path();
            let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
            out.push_str(&format!(
                "{} {} wchan={}\n{}\n",
                path.display(),
                read("comm").trim(),
                read("wchan").trim(),
                read("stack")
            ));
        }
    }
    out
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The sum of the samples of `metric` whose labels contain every `labels` pair.
fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Waits until `check` is `Ok`, failing with its last state after `timeout`; every
/// service in `services` must keep running meanwhile.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, services: &mut [Service], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        let state = match check().await {
            Ok(()) => return,
            Err(state) => state,
        };
        for s in services.iter_mut() {
            s.assert_running();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: {state}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Message `i` of `channel` as Slack delivers it; without its author (hidden by
/// Slack, so the notifier notifies it as from an unknown author) unless
/// `with_author`, so that only that message makes the normalizer look its author up.
fn event_body(channel: &str, event_id: &str, i: usize, with_author: bool) -> Vec<u8> {
    let ts = format!("{}.000100", 1_764_000_000 + 10 * i);
    let mut event = json!({
        "type": "message", "team": "T0CUST",
        "text": format!("message {i}"), "ts": ts, "channel": channel,
        "channel_type": "channel", "event_ts": ts,
    });
    if with_author {
        event["user"] = json!("U0CUST");
    }
    let body = json!({
        "token": "unused",
        "team_id": HOME,
        "context_team_id": HOME,
        "api_app_id": "A0SLACKLINE",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1_764_000_000 + 10 * i,
        "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}],
        "is_ext_shared_channel": true,
    });
    serde_json::to_vec(&body).unwrap()
}

/// Posts `body` to the edge until it answers 200.
async fn post_until_accepted(http: &reqwest::Client, url: &str, body: Vec<u8>) {
    let started = Instant::now();
    loop {
        let status = slackline::send::send_body(http, url, SECRET, body.clone(), None).await;
        if matches!(status, Ok(200)) {
            return;
        }
        assert!(
            started.elapsed() < START_DEADLINE,
            "the edge did not accept an event: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pairs(list: &[(&str, String)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// The environment of a consumer-group binary.
fn group_env(group: &str, names: &TopicNames, bootstrap: &str, db: &str) -> Vec<(String, String)> {
    pairs(&[
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_owned()),
        ("DATABASE_URL", db.to_owned()),
        ("GROUP_ID", names.group(group)),
        ("SOURCE_TOPIC", names.messages()),
        ("RETRY_TOPIC", names.retry(group)),
        ("DLQ_TOPIC", names.dlq(group)),
        ("THREAD_EVENTS_TOPIC", names.thread_events()),
        ("SHUTDOWN_GRACE_MS", GRACE.as_millis().to_string()),
    ])
}

/// A TCP listener that accepts connections and never answers (a database or a
/// webhook that hangs), counting the connections it accepted.
struct SilentServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        held.push(s);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
        });
        SilentServer { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// What a binary's code promises for this run: its exit status (see the file's doc
/// comment).
fn promised_status(label: &str) -> i32 {
    if label == "slackline-edge" || label.ends_with("(database silent)") {
        0
    } else {
        1
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "HUNG".to_owned(),
        Some(s) => s.code().map_or_else(|| s.to_string(), |c| c.to_string()),
    }
}

/// One binary's shutdown, as measured.
struct Outcome {
    label: String,
    bound: Duration,
    took: Duration,
    status: Option<ExitStatus>,
    last_line: String,
    log: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_binary_stops_within_its_bound_after_sigterm_with_the_brokers_gone() {
    let test_start = Instant::now();
    let bin_dir = tokio::task::spawn_blocking(build_service_binaries)
        .await
        .unwrap();

    // A private broker: this test kills it, which it must never do to the shared one.
    let broker_dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::new(broker_dir.path());
    let mut broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(config))
        .await
        .unwrap()
        .expect("start the private broker (scripts/fetch-kafka fetches its jars)");
    let bootstrap = broker.bootstrap_servers().to_owned();
    slackline_testkit::cluster::report_private_broker(&bootstrap);
    println!("private broker up after {:.1?}", test_start.elapsed());
    let names = TopicNames::with_prefix(format!("{}.", slackline_testkit::unique_name("shutdown")));
    let settings = KafkaSettings {
        bootstrap_servers: bootstrap.clone(),
        properties: Vec::new(),
    };
    let mut specs = names.specs(PARTITIONS);
    for topic in [names.retry(SECOND_GROUP), names.dlq(SECOND_GROUP)] {
        specs.push(TopicSpec {
            name: topic,
            partitions: PARTITIONS,
            configs: Vec::new(),
        });
    }
    topics::create(&settings, &specs, 1)
        .await
        .expect("creating the topics");

    let db = TestDatabase::create().await;
    let archive = tempfile::tempdir().unwrap();
    let edge_port = slackline_testkit::free_port();
    let edge_url = format!("http://127.0.0.1:{edge_port}/slack/events");
    let grace_ms = GRACE.as_millis().to_string();

    let silent_api = SilentServer::start();
    let mut services = vec![Service::start(
        &bin_dir,
        "slackline-edge",
        "slackline-edge",
        &pairs(&[
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("SLACK_SIGNING_SECRETS", SECRET.to_owned()),
            (
                "ARCHIVE_URL",
                format!("file://{}", archive.path().display()),
            ),
            ("EDGE_ADDR", format!("127.0.0.1:{edge_port}")),
            ("RAW_TOPIC", names.raw_events()),
            ("EDGE_DEADLINE_MS", "1000".to_owned()),
            ("EDGE_SHUTDOWN_GRACE_MS", grace_ms.clone()),
        ]),
    )];
    services.push(Service::start(
        &bin_dir,
        "slackline-normalizer",
        "slackline-normalizer",
        &pairs(&[
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            // Offsets stored for handled events stay uncommitted until the final
            // commit, which the dead broker then refuses: a known exit status.
            (
                "KAFKA_PROPERTIES",
                "auto.commit.interval.ms=3600000".to_owned(),
            ),
            ("RAW_TOPIC", names.raw_events()),
            ("MESSAGES_TOPIC", names.messages()),
            ("RAW_DLQ_TOPIC", names.raw_dlq()),
            ("NORMALIZER_GROUP_ID", names.group(NORMALIZER_GROUP)),
            // Author lookups go to a Slack API that never answers: a person's message
            // holds the normalizer for the lookup budget (1.5 s).
            (
                "SLACK_API_BASE_URL",
                format!("http://{}/api", silent_api.addr),
            ),
            ("SLACK_BOT_TOKENS", format!("{HOME}=xoxb-shutdown-test")),
            ("SHUTDOWN_GRACE_MS", grace_ms.clone()),
        ]),
    ));
    for binary in GROUP_BINARIES {
        let group = binary.trim_start_matches("slackline-");
        services.push(Service::start(
            &bin_dir,
            binary,
            binary,
            &group_env(group, &names, &bootstrap, &db.url),
        ));
    }
    // Still starting at SIGTERM: its database accepts connections and never answers.
    let silent_db = SilentServer::start();
    let mut env = group_env(
        "thread-state",
        &names,
        &bootstrap,
        &format!(
            "postgres://slackline:slackline@{}/slackline",
            silent_db.addr
        ),
    );
    env.push(("DATABASE_ACQUIRE_TIMEOUT_MS".into(), "600000".into()));
    let starting = Service::start(
        &bin_dir,
        "slackline-thread-state",
        "slackline-thread-state (database silent)",
        &env,
    );
    // The second-signal subject: a handler call in flight on a webhook that never
    // answers, and a grace long enough to wait for it.
    let silent_hook = SilentServer::start();
    let mut env = group_env(SECOND_GROUP, &names, &bootstrap, &db.url);
    env.retain(|(k, _)| k != "SHUTDOWN_GRACE_MS");
    env.extend(pairs(&[
        ("SHUTDOWN_GRACE_MS", "60000".to_owned()),
        (
            "NOTIFY_SLACK_WEBHOOK_URL",
            format!("http://{}/hook", silent_hook.addr),
        ),
        ("NOTIFY_HTTP_TIMEOUT_MS", "600000".to_owned()),
        ("QUICK_RETRIES", "0".to_owned()),
    ]));
    let second = Service::start(
        &bin_dir,
        "slackline-notifier",
        "slackline-notifier (second signal)",
        &env,
    );

    // Ready: every admin port answers /readyz with 200.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let admins: Vec<(String, SocketAddr)> = services
        .iter()
        .chain([&second])
        .map(|s| (s.label.clone(), s.admin))
        .collect();
    services.push(second);
    services.push(starting);
    wait_for("every service ready", START_DEADLINE, &mut services, || {
        let (http, admins) = (&http, &admins);
        async move {
            let mut waiting = Vec::new();
            for (label, admin) in admins {
                match get(http, &format!("http://{admin}/readyz")).await {
                    Ok((200, _)) => {}
                    Ok((status, body)) => waiting.push(format!("{label}: {status} {body}")),
                    Err(e) => waiting.push(format!("{label}: {e}")),
                }
            }
            waiting.is_empty().then_some(()).ok_or(waiting.join("; "))
        }
    })
    .await;
    println!("all services ready after {:.1?}", test_start.elapsed());

    // Traffic, so that every consumer has offsets to commit: EVENTS messages, each
    // answered 200 by the edge (retried while the groups are still joining).
    for i in 0..EVENTS {
        let body = event_body(&format!("C0STOP{i}"), &format!("Ev0STOP{i:02}"), i, false);
        post_until_accepted(&http, &edge_url, body).await;
    }
    let counted: Vec<(String, SocketAddr)> = admins
        .iter()
        .filter(|(label, _)| !label.ends_with(')'))
        .cloned()
        .collect();
    wait_for(
        "every consumer to handle the events, the silent database and webhook to be called",
        START_DEADLINE,
        &mut services,
        || {
            let (http, counted, names) = (&http, &counted, &names);
            let (db_calls, hook_calls) = (silent_db.accepted(), silent_hook.accepted());
            async move {
                let mut waiting = Vec::new();
                for (label, admin) in counted {
                    let text = match get(http, &format!("http://{admin}/metrics")).await {
                        Ok((200, text)) => text,
                        other => {
                            waiting.push(format!("{label}: {other:?}"));
                            continue;
                        }
                    };
                    let done = match label.as_str() {
                        "slackline-edge" => metric_sum(&text, "slackline_edge_accepted_total", &[]),
                        "slackline-normalizer" => {
                            metric_sum(&text, "slackline_normalizer_outcomes_total", &[])
                        }
                        group_binary => {
                            let group = names.group(group_binary.trim_start_matches("slackline-"));
                            metric_sum(
                                &text,
                                "slackline_consumer_handled_total",
                                &[("group", &group)],
                            )
                        }
                    };
                    if done < EVENTS as f64 {
                        waiting.push(format!("{label}: {done}/{EVENTS}"));
                    }
                }
                if db_calls == 0 {
                    waiting.push("no connection to the silent database yet".to_owned());
                }
                if hook_calls == 0 {
                    waiting.push("no request to the silent webhook yet".to_owned());
                }
                waiting.is_empty().then_some(()).ok_or(waiting.join("; "))
            }
        },
    )
    .await;
    println!(
        "every consumer handled the {EVENTS} events after {:.1?}",
        test_start.elapsed()
    );
    let starting = services.pop().expect("the starting subject");
    let mut second = services.pop().expect("the second-signal subject");
    assert!(
        starting.has_logged("thread-state starting") && !starting.has_logged("partitions assigned"),
        "{} must still be starting:\n{}",
        starting.label,
        starting.log_text()
    );
    services.push(starting);

    // One more event, with its author: once the normalizer is looking it up,
    // the broker dies, so the event's outcome is produced to a dead broker and stays
    // in flight (up to the producer's 300 s delivery timeout) when SIGTERM comes.
    let body = event_body("C0STOPLAST", "Ev0STOPLAST", EVENTS, true);
    post_until_accepted(&http, &edge_url, body).await;
    wait_for(
        "the normalizer to look the last event's author up",
        START_DEADLINE,
        &mut services,
        || {
            let calls = silent_api.accepted();
            async move {
                (calls > 0)
                    .then_some(())
                    .ok_or("no users.info call yet".to_owned())
            }
        },
    )
    .await;

    // The brokers go away first, as in the field; then every service gets SIGTERM.
    tokio::task::spawn_blocking(move || {
        broker.kill().expect("killing the broker");
        broker
    })
    .await
    .unwrap();
    let killed_at = Instant::now();
    for s in services.iter().chain([&second]) {
        s.signal(rustix::process::Signal::TERM);
    }
    let sigterm_at = Instant::now();
    println!(
        "broker killed; SIGTERM sent to {} processes {:.0?} later",
        services.len() + 1,
        sigterm_at - killed_at
    );

    // Every binary, measured from the same SIGTERM, in parallel.
    let mut waits = Vec::new();
    for mut s in services {
        let bound = s.grace + STOP_MARGIN;
        waits.push(tokio::task::spawn_blocking(move || {
            let (status, took) = s.wait_exit(sigterm_at, bound + OVERRUN);
            Outcome {
                label: s.label.clone(),
                bound,
                took,
                status,
                last_line: s.last_line(),
                log: s.log_text(),
            }
        }));
    }

    // The second signal: once the first is logged (and the process still runs,
    // waiting for its handler call), a second SIGTERM ends it at once.
    let first_logged = Instant::now();
    while !second.has_logged("shutdown signal received") {
        assert!(
            first_logged.elapsed() < Duration::from_secs(5),
            "the second-signal subject never logged its first SIGTERM:\n{}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    second.assert_running();
    let second_at = Instant::now();
    second.signal(rustix::process::Signal::TERM);
    let (second, second_status, second_took) = tokio::task::spawn_blocking(move || {
        let (status, took) = second.wait_exit(second_at, AT_ONCE + OVERRUN);
        (second, status, took)
    })
    .await
    .unwrap();

    let mut outcomes = Vec::new();
    for w in waits {
        outcomes.push(w.await.unwrap());
    }
    println!(
        "\n{:<42} {:>7} {:>8} {:>8} {:>6}  last log line",
        "binary", "bound", "exited", "status", "wanted"
    );
    for o in &outcomes {
        println!(
            "{:<42} {:>6.1}s {:>7.2}s {:>8} {:>6}  {}",
            o.label,
            o.bound.as_secs_f64(),
            o.took.as_secs_f64(),
            describe(o.status),
            promised_status(&o.label),
            o.last_line
        );
    }
    println!(
        "{:<42} {:>6.1}s {:>7.2}s {:>8} {:>6}  {}  (from the second SIGTERM)",
        second.label,
        AT_ONCE.as_secs_f64(),
        second_took.as_secs_f64(),
        describe(second_status),
        EXIT_SECOND_SIGNAL,
        second.last_line()
    );
    println!("test took {:.1?}", test_start.elapsed());

    let mut failures = Vec::new();
    for o in &outcomes {
        let Some(code) = o.status.and_then(|s| s.code()) else {
            failures.push(format!(
                "{} still ran {:.1?} after SIGTERM (bound {:.1?}); its threads are printed above",
                o.label, o.took, o.bound
            ));
            continue;
        };
        if o.took > o.bound {
            failures.push(format!(
                "{} exited after {:.2?}, over its bound {:.1?}",
                o.label, o.took, o.bound
            ));
        }
        if o.label == "slackline-normalizer"
            && !o
                .log
                .contains("outcomes still in flight when the grace ended")
        {
            failures.push(
                "slackline-normalizer did not have the last event's outcome in flight at SIGTERM \
                 (or did not cut it off when the grace ended)"
                    .to_owned(),
            );
        }
        if code == i32::from(EXIT_STOP_TIMEOUT) {
            failures.push(format!(
                "{} was stopped by its watchdog (exit {code}): its own stop did not end in time",
                o.label
            ));
        } else if code != promised_status(&o.label) {
            failures.push(format!(
                "{} exited with {code}, its code promises {}",
                o.label,
                promised_status(&o.label)
            ));
        }
    }
    match second_status.and_then(|s| s.code()) {
        Some(code) if code == i32::from(EXIT_SECOND_SIGNAL) && second_took <= AT_ONCE => {}
        other => failures.push(format!(
            "{}: a second SIGTERM must end it within {AT_ONCE:?} with exit {EXIT_SECOND_SIGNAL}; got {} after {second_took:.2?}",
            second.label,
            other.map_or_else(|| "no exit".to_owned(), |c| c.to_string()),
        )),
    }
    if !failures.is_empty() {
        for o in &outcomes {
            println!("\n----- {} -----\n{}", o.label, o.log);
        }
        println!("\n----- {} -----\n{}", second.label, second.log_text());
        panic!("{}", failures.join("\n"));
    }
    drop(second);
    db.drop_database().await;
}
