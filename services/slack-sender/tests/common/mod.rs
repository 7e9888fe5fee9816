//! Shared set-up for the slack-sender's tests: the shared Kafka broker with every
//! slackline topic under the test's own prefix, a throwaway database, the Slack Web
//! API stand-in on a real socket, replies, and the service with short retry delays.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::time::Duration;

use prometheus::Registry;
use slackline_consumer::GroupService;
use slackline_events::{Agent, Reply};
use slackline_service::{Env, Shutdown};
use slackline_slack_sender::SlackSenderConfig;
use slackline_store::sqlx;

pub use slackline_testkit::kafka::{produce_replies, read_topic, TestCluster};
pub use slackline_testkit::postgres::TestDatabase;
pub use slackline_testkit::slack_api::{Answer, Call, SlackApiStandIn};
pub use slackline_testkit::wait_until;

pub const PARTITIONS: i32 = 2;
pub const TEAM: &str = "T0HOME";
pub const TOKEN: &str = "xoxb-home-team-token";
pub const OTHER_TEAM: &str = "T0OTHER";
pub const OTHER_TOKEN: &str = "xoxb-other-team-token";

/// The service's consumer group, unprefixed.
pub const GROUP: &str = slackline_slack_sender::config::GROUP;

pub fn cluster() -> TestCluster {
    TestCluster::kafka_with_topics(PARTITIONS)
}

/// A reply of the agent Ada in the thread rooted at `root_ts` of `channel`.
pub fn reply(id: &str, channel: &str, root_ts: &str, text: &str) -> Reply {
    Reply {
        reply_id: id.to_owned(),
        thread_id: format!("{TEAM}-{channel}-{root_ts}"),
        team_id: TEAM.to_owned(),
        channel_id: channel.to_owned(),
        thread_ts: root_ts.to_owned(),
        agent: Agent {
            id: "U0ADA".to_owned(),
            display_name: "Ada".to_owned(),
        },
        text: text.to_owned(),
        blocks_json: None,
        reply_broadcast: false,
        created_at_ms: 1_764_000_000_000,
    }
}

/// The service's config for tests: through `from_env` with the cluster's topics and
/// group, then quick retries and commits.
pub fn config(
    cluster: &TestCluster,
    database_url: &str,
    slack: &SlackApiStandIn,
    extra: &[(&str, &str)],
) -> SlackSenderConfig {
    let names = cluster.names();
    let mut pairs: Vec<(String, String)> = vec![
        (
            "KAFKA_BOOTSTRAP_SERVERS".into(),
            cluster.bootstrap_servers(),
        ),
        ("GROUP_ID".into(), names.group(GROUP)),
        ("SOURCE_TOPIC".into(), names.replies()),
        ("DATABASE_URL".into(), database_url.to_owned()),
        ("ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("SLACK_API_BASE_URL".into(), slack.base_url.clone()),
        (
            "SLACK_BOT_TOKENS".into(),
            format!("{TEAM}={TOKEN},{OTHER_TEAM}={OTHER_TOKEN}"),
        ),
        ("SLACK_SENDER_HTTP_TIMEOUT_MS".into(), "1500".into()),
    ];
    for (k, v) in extra {
        pairs.push(((*k).to_owned(), (*v).to_owned()));
    }
    let mut config = SlackSenderConfig::from_env(Env::from_pairs(pairs)).unwrap();
    config.kafka.properties = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "200".into()),
        ("log_level".into(), "3".into()),
    ];
    let runtime = &mut config.runtime;
    assert_eq!(runtime.retry_topic, names.retry(GROUP));
    assert_eq!(runtime.dlq_topic, names.dlq(GROUP));
    runtime.retry_delays = vec![Duration::from_millis(300); 20];
    runtime.quick_retries = 2;
    runtime.quick_backoff = Duration::from_millis(20);
    runtime.shutdown_grace = Duration::from_secs(10);
    runtime.revoke_grace = Duration::from_secs(5);
    runtime.store_interval = Duration::from_millis(20);
    runtime.commit_interval = Duration::from_millis(100);
    runtime.lag_interval = Duration::from_millis(500);
    config
}

/// A running slack-sender with its own shutdown.
pub struct Running {
    pub service: Option<GroupService>,
    pub registry: Registry,
    pub shutdown: Shutdown,
}

pub async fn start(config: SlackSenderConfig) -> Running {
    let shutdown = Shutdown::new();
    let service = slackline_slack_sender::start(config, shutdown.clone())
        .await
        .expect("slack-sender starts");
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
                .expect("slack-sender stops in time")
                .expect("slack-sender stops cleanly");
        }
    }

    /// A counter of the registry with these label values (others summed).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        slackline_testkit::metrics::metric(&self.registry, name, labels) as u64
    }
}

/// A pool on the test database.
pub async fn pool(db: &TestDatabase) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap()
}

/// `(state, ts, last_error)` of a reply's row.
pub async fn reply_row(
    pool: &sqlx::PgPool,
    reply_id: &str,
) -> Option<(String, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT state, ts, last_error FROM slack_sender.replies WHERE reply_id = $1")
        .bind(reply_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// The `chat.postMessage` calls to `channel`, in arrival order.
pub fn calls_to(slack: &SlackApiStandIn, channel: &str) -> Vec<Call> {
    slack
        .post_calls()
        .into_iter()
        .filter(|c| c.field("channel") == Some(channel))
        .collect()
}

/// The texts Slack accepted for `channel`, in arrival order.
pub fn posted_texts(slack: &SlackApiStandIn, channel: &str) -> Vec<String> {
    calls_to(slack, channel)
        .into_iter()
        .filter(|c| c.ts.is_some())
        .map(|c| c.field("text").unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the group has committed everything on the replies topic.
pub async fn wait_caught_up(cluster: &TestCluster, within: Duration) {
    let bootstrap = cluster.bootstrap_servers();
    let group = cluster.names().group(GROUP);
    let topic = cluster.names().replies();
    wait_until("the slack-sender caught up", within, || {
        let (bootstrap, group, topic) = (bootstrap.clone(), group.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                slackline_testkit::kafka::group_lag(&bootstrap, &group, &topic, PARTITIONS) == 0
            })
            .await
            .unwrap()
        }
    })
    .await;
}

/// The DLQ records of the group, decoded.
pub async fn dlq_records(cluster: &TestCluster, want: usize) -> Vec<slackline_consumer::DlqRecord> {
    let topic = cluster.names().dlq(GROUP);
    read_topic(
        &cluster.bootstrap_servers(),
        &topic,
        1.max(PARTITIONS / 4),
        want,
        Duration::from_secs(20),
    )
    .await
    .into_iter()
    .map(|r| serde_json::from_slice(&r.payload).expect("a DLQ record"))
    .collect()
}

/// Produces a dead letter back to its topic as `slackline dlq redrive` does
/// ([`slackline_consumer::redrive`]: key, payload, the original headers and the
/// `slackline-redrive` marker).
pub async fn redrive(cluster: &TestCluster, record: &slackline_consumer::DlqRecord) {
    let back = slackline_consumer::redrive(&record.to_json()).expect("a redrivable record");
    assert!(back
        .headers
        .iter()
        .any(|(name, _)| name == slackline_kafka::headers::REDRIVE));
    let headers: Vec<(&str, String)> = back
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str(),
                String::from_utf8(value.clone().unwrap_or_default()).unwrap(),
            )
        })
        .collect();
    slackline_testkit::kafka::produce_with_headers(
        cluster,
        &back.topic,
        &[(
            String::from_utf8(back.key.clone().unwrap()).unwrap(),
            back.payload.clone(),
            headers,
        )],
    )
    .await;
}

/// A slack-sender "process": the consumer runtime and its handler on a tokio runtime
/// of their own, so that [`Process::kill`] ends every task the process started (the
/// handler calls and the send tasks that outlive them, their HTTP requests and
/// database statements cut off) as a killed process ends, after the consumer
/// runtime crashed (`RuntimeHandle::crash`: no offsets committed, no clean leave).
pub struct Process {
    rt: Option<tokio::runtime::Runtime>,
    sender: Option<slackline_slack_sender::SenderRuntime>,
    pub registry: Registry,
    shutdown: Shutdown,
}

impl Process {
    pub async fn start(config: SlackSenderConfig) -> Process {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = Shutdown::new();
        // Started on the process's runtime (its tasks are spawned there); block_on
        // because the start future is not `Send`-provable for `spawn`.
        let handle = rt.handle().clone();
        let start_shutdown = shutdown.clone();
        let sender = tokio::task::spawn_blocking(move || {
            handle.block_on(slackline_slack_sender::start_runtime(
                config,
                start_shutdown,
            ))
        })
        .await
        .unwrap()
        .expect("slack-sender starts");
        Process {
            registry: sender.registry.clone(),
            rt: Some(rt),
            sender: Some(sender),
            shutdown,
        }
    }

    /// Kills the process: its consumer runtime crashes, then every task it started
    /// is dropped where it stands.
    pub async fn kill(mut self) {
        let sender = self.sender.take().unwrap();
        sender.runtime.crash().await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Stops the process cleanly (its sends under way recorded first).
    pub async fn stop(mut self) {
        let sender = self.sender.take().unwrap();
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(60), sender.runtime.wait())
            .await
            .expect("stops in time")
            .expect("stops cleanly");
        assert!(
            sender
                .handler
                .wait_sends(tokio::time::Instant::now() + Duration::from_secs(20))
                .await
        );
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// A counter of the registry with these label values (others summed).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        slackline_testkit::metrics::metric(&self.registry, name, labels) as u64
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The `(key, reply id)` of every record of the group's retry topic, in offset order
/// per partition.
pub async fn retry_topic_replies(cluster: &TestCluster, want: usize) -> Vec<(String, String)> {
    read_topic(
        &cluster.bootstrap_servers(),
        &cluster.names().retry(GROUP),
        PARTITIONS,
        want,
        Duration::from_secs(20),
    )
    .await
    .into_iter()
    .map(|r| {
        let reply = slackline_events::decode_reply(&r.payload).expect("a reply record");
        (r.key.unwrap_or_default(), reply.reply_id)
    })
    .collect()
}
