//! Shared set-up for the notifier's tests: the shared Kafka broker with every
//! slackline topic under the test's own prefix, a throwaway database, webhook receivers on real sockets, message events,
//! and the service with short retry delays.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use prometheus::Registry;
use slackline_consumer::GroupService;
use slackline_events::{
    Author, AuthorKind, Degraded, Edited, Kind, MessageEvent, Mode, Posted, Reaction,
};
use slackline_notifier::NotifierConfig;
use slackline_service::{Env, Shutdown};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PARTITIONS: i32 = 2;
pub const TEAM: &str = "T0AGENTS";

/// The service's consumer group, unprefixed (the cluster's is `names().group(GROUP)`).
pub const GROUP: &str = slackline_notifier::config::GROUP;

pub use slackline_testkit::kafka::TestCluster;

/// The shared Kafka broker with every slackline topic (2 partitions per flow topic)
/// under a prefix of this test's own.
pub fn cluster() -> TestCluster {
    TestCluster::kafka_with_topics(PARTITIONS)
}

// ---------------------------------------------------------------- webhook receiver

#[derive(Clone)]
struct Shared {
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    status: Arc<AtomicU16>,
    ok_status: u16,
    refused: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
}

/// A webhook receiver on 127.0.0.1: records every JSON body it accepts; can answer
/// 503 for a while, or be stopped (connections refused) and started again on the
/// same port.
pub struct Receiver {
    addr: SocketAddr,
    shared: Shared,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// Records the body (when answering with success) before the delay, so a client
/// that gives up waiting has still delivered: an ambiguous send.
async fn receive(State(s): State<Shared>, Json(body): Json<serde_json::Value>) -> StatusCode {
    let status = s.status.load(Ordering::SeqCst);
    if status == s.ok_status {
        s.bodies.lock().unwrap().push(body);
    } else {
        s.refused.fetch_add(1, Ordering::SeqCst);
    }
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    /// A Slack-like receiver (answers 200).
    pub async fn slack() -> Receiver {
        Receiver::start(200).await
    }

    /// A Discord-like receiver (answers 204).
    pub async fn discord() -> Receiver {
        Receiver::start(204).await
    }

    async fn start(ok_status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            bodies: Arc::default(),
            status: Arc::new(AtomicU16::new(ok_status)),
            ok_status,
            refused: Arc::default(),
            delay_ms: Arc::default(),
        };
        let mut receiver = Receiver {
            addr,
            shared,
            server: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(self.shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        self.server = Some((stop, task));
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook/secret-token", self.addr)
    }

    /// Answer 503 (true) or the normal success status (false).
    pub fn set_failing(&self, failing: bool) {
        let status = if failing { 503 } else { self.shared.ok_status };
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Answer every request with `status`.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Each request waits this long before it is answered.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests answered with an error status.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Closes the port: connections are refused until [`Receiver::restart`].
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// The text of every accepted notification, in arrival order (`text` for Slack,
    /// `content` for Discord).
    pub fn texts(&self) -> Vec<String> {
        self.shared
            .bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                b.get("text")
                    .or_else(|| b.get("content"))
                    .and_then(|t| t.as_str())
                    .unwrap_or_else(|| panic!("no text in {b}"))
                    .to_owned()
            })
            .collect()
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.shared.bodies.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.bodies.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------- message events

fn base(
    event_id: &str,
    channel: &str,
    ts: &str,
    author: Option<Author>,
    kind: Kind,
) -> MessageEvent {
    MessageEvent {
        event_id: event_id.to_owned(),
        team_id: TEAM.to_owned(),
        channel_id: Some(channel.to_owned()),
        ts: Some(ts.to_owned()),
        thread_ts: None,
        event_time_ms: None,
        author,
        text: None,
        rendered_text: None,
        files: vec![],
        archive_key: format!("raw/2026/11/24/22/{event_id}.json"),
        mode: Mode::Full,
        degraded_reason: None,
        kind,
    }
}

fn author(user: &str, kind: AuthorKind, name: Option<&str>) -> Option<Author> {
    Some(Author {
        user_id: Some(user.to_owned()),
        team_id: Some(
            if kind == AuthorKind::Agent {
                TEAM
            } else {
                "T1CUSTOMER"
            }
            .to_owned(),
        ),
        kind,
        display_name: name.map(str::to_owned),
        email: None,
    })
}

fn posted() -> Kind {
    Kind::Posted(Posted {
        subtype: None,
        is_reply: false,
        is_broadcast: false,
    })
}

/// A customer's top-level post with `text` (rendered text set too).
pub fn customer_post(event_id: &str, channel: &str, ts: &str, text: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        author("U0CUST", AuthorKind::Customer, Some("Carla")),
        posted(),
    );
    e.text = Some(format!("raw {text}"));
    e.rendered_text = Some(text.to_owned());
    e
}

/// A post whose author Slack hid (unknown kind, no name), with plain text only.
pub fn unknown_post(event_id: &str, channel: &str, ts: &str, text: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        author("U0HIDDEN", AuthorKind::Unknown, None),
        posted(),
    );
    e.text = Some(text.to_owned());
    e
}

/// An agent's reply in the thread of `thread_ts`.
pub fn agent_reply(event_id: &str, channel: &str, ts: &str, thread_ts: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        author("U0AGENT", AuthorKind::Agent, Some("Agnes")),
        Kind::Posted(Posted {
            subtype: None,
            is_reply: true,
            is_broadcast: false,
        }),
    );
    e.thread_ts = Some(thread_ts.to_owned());
    e.text = Some("we are on it".into());
    e
}

pub fn bot_post(event_id: &str, channel: &str, ts: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        author("B0BOT", AuthorKind::Bot, Some("deploy-bot")),
        Kind::Posted(Posted {
            subtype: Some("bot_message".into()),
            is_reply: false,
            is_broadcast: false,
        }),
    );
    e.text = Some("deployed".into());
    e
}

pub fn customer_edit(event_id: &str, channel: &str, ts: &str, edited_ts: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        author("U0CUST", AuthorKind::Customer, Some("Carla")),
        Kind::Edited(Edited {
            previous_text: Some("before".into()),
            edited_ts: Some(edited_ts.to_owned()),
        }),
    );
    e.text = Some("after".into());
    e
}

pub fn customer_reaction(event_id: &str, channel: &str, ts: &str) -> MessageEvent {
    base(
        event_id,
        channel,
        ts,
        author("U0CUST", AuthorKind::Customer, Some("Carla")),
        Kind::ReactionAdded(Reaction {
            name: "eyes".into(),
            item_user_id: Some("U0AGENT".into()),
        }),
    )
}

pub fn degraded(event_id: &str, channel: &str, ts: &str, reason: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        Some(Author {
            user_id: Some("U0CUST".into()),
            team_id: None,
            kind: AuthorKind::Unknown,
            display_name: None,
            email: None,
        }),
        Kind::Degraded(Degraded {
            event_type: Some("message".into()),
            subtype: Some("huddle_thread".into()),
        }),
    );
    e.mode = Mode::Degraded;
    e.degraded_reason = Some(reason.to_owned());
    e
}

/// The notification text expected for a customer post built by [`customer_post`].
pub fn expected_post_text(channel: &str, ts: &str, text: &str) -> String {
    format!("New message from Carla in {channel} (thread {ts}): {text}")
}

/// `count` customer posts in each of `channels`, interleaved (message-major), with
/// unique ts and texts `"<channel> message <i>"`.
pub fn customer_batch(channels: &[&str], count: usize) -> Vec<MessageEvent> {
    let mut events = Vec::new();
    for i in 0..count {
        for (c, channel) in channels.iter().enumerate() {
            let ts = format!("{}.{:06}", 1_760_000_000 + i, c);
            let id = format!("Ev{channel}{i:04}");
            events.push(customer_post(
                &id,
                channel,
                &ts,
                &format!("{channel} message {i:04}"),
            ));
        }
    }
    events
}

/// Produces `events` to `slack.messages.v1`, key = channel, in order.
// Not every test binary sharing this module produces records.
#[allow(unused_imports)]
pub use slackline_testkit::kafka::produce_messages as produce;

// ---------------------------------------------------------------- the service

/// Targets for [`config`].
#[derive(Default)]
pub struct Targets {
    pub slack: Option<String>,
    pub discord: Option<String>,
    pub smtp: Option<String>,
}

/// The service's config for tests: through `from_env` (so the variables are the real
/// ones) with the cluster's topics and group, then quick retries and commits.
pub fn config(cluster: &TestCluster, database_url: &str, targets: &Targets) -> NotifierConfig {
    let names = cluster.names();
    let mut pairs: Vec<(String, String)> = vec![
        (
            "KAFKA_BOOTSTRAP_SERVERS".into(),
            cluster.bootstrap_servers(),
        ),
        ("GROUP_ID".into(), names.group(GROUP)),
        ("SOURCE_TOPIC".into(), names.messages()),
        ("DATABASE_URL".into(), database_url.to_owned()),
        ("ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("NOTIFY_HTTP_TIMEOUT_MS".into(), "3000".into()),
        ("NOTIFY_SMTP_TIMEOUT_MS".into(), "3000".into()),
    ];
    if let Some(url) = &targets.slack {
        pairs.push(("NOTIFY_SLACK_WEBHOOK_URL".into(), url.clone()));
    }
    if let Some(url) = &targets.discord {
        pairs.push(("NOTIFY_DISCORD_WEBHOOK_URL".into(), url.clone()));
    }
    if let Some(url) = &targets.smtp {
        pairs.push(("NOTIFY_SMTP_URL".into(), url.clone()));
        pairs.push((
            "NOTIFY_EMAIL_FROM".into(),
            "Slackline <slackline@example.com>".into(),
        ));
        pairs.push((
            "NOTIFY_EMAIL_TO".into(),
            "support@example.com, lead@example.com".into(),
        ));
    }
    let mut config = NotifierConfig::from_env(Env::from_pairs(pairs)).unwrap();
    config.kafka.properties = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "200".into()),
        ("log_level".into(), "3".into()),
    ];
    let runtime = &mut config.runtime;
    // The runtime derives the retry and DLQ topics from the group: the cluster's.
    assert_eq!(runtime.retry_topic, names.retry(GROUP));
    assert_eq!(runtime.dlq_topic, names.dlq(GROUP));
    runtime.retry_delays = vec![Duration::from_millis(300); 20];
    runtime.quick_retries = 2;
    runtime.quick_backoff = Duration::from_millis(20);
    runtime.shutdown_grace = Duration::from_secs(10);
    runtime.revoke_grace = Duration::from_secs(5);
    runtime.produce_timeout = Duration::from_secs(30);
    runtime.store_interval = Duration::from_millis(20);
    runtime.commit_interval = Duration::from_millis(100);
    runtime.lag_interval = Duration::from_millis(500);
    config
}

/// A running notifier with its own shutdown.
pub struct Running {
    pub service: Option<GroupService>,
    pub registry: Registry,
    pub shutdown: Shutdown,
}

pub async fn start(config: NotifierConfig) -> Running {
    let shutdown = Shutdown::new();
    let service = slackline_notifier::start(config, shutdown.clone())
        .await
        .expect("notifier starts");
    Running {
        registry: service.registry.clone(),
        service: Some(service),
        shutdown,
    }
}

impl Running {
    /// Triggers the shutdown and waits until the service stopped cleanly.
    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(service) = self.service.take() {
            tokio::time::timeout(Duration::from_secs(60), service.wait())
                .await
                .expect("notifier stops in time")
                .expect("notifier stops cleanly");
        }
    }

    /// A counter of the registry with these label values (others summed).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        counter(&self.registry, name, labels)
    }
}

pub fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> u64 {
    slackline_testkit::metrics::metric(registry, name, labels) as u64
}

// Not every test binary sharing this module waits on a condition.
#[allow(unused_imports)]
pub use slackline_testkit::wait_until;

/// How often each text occurs.
pub fn occurrences(texts: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in texts {
        *counts.entry(t.clone()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that `texts` holds each of `expected` exactly once and nothing else.
pub fn assert_exactly_once(target: &str, texts: &[String], expected: &[String]) {
    let got = occurrences(texts);
    let dups: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{target}: duplicates {dups:?}");
    let want = occurrences(expected);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{target}: missing {missing:?}, unexpected {extra:?}"
    );
    assert_eq!(texts.len(), expected.len(), "{target}");
}

/// The texts of one channel, in arrival order (the channel is named as `in <C> (`).
pub fn of_channel(texts: &[String], channel: &str) -> Vec<String> {
    let marker = format!(" in {channel} (");
    texts
        .iter()
        .filter(|t| t.contains(&marker))
        .cloned()
        .collect()
}
