//! Shared set-up for the edge's integration tests: a Kafka cluster (the shared Apache
//! Kafka broker, or the mock cluster for a test that injects faults) with this test's
//! raw topic, an archive, an edge on port 0, and a way to read back what reached
//! Kafka.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use slackline_archive::S3Settings;
use slackline_edge::{Edge, EdgeConfig};
use slackline_kafka::KafkaSettings;
use slackline_service::{LogFormat, Shutdown};
use slackline_slack::{sign, SigningSecrets};
pub use slackline_testkit::kafka::TestCluster;

pub const SECRET: &str = "test-signing-secret";
pub const PARTITIONS: i32 = 4;

/// One record as read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
}

/// The shared Apache Kafka broker with this test's raw topic
/// (`cluster.names().raw_events()`, [`PARTITIONS`] partitions).
pub fn kafka_cluster() -> TestCluster {
    with_raw_topic(TestCluster::kafka())
}

/// librdkafka's mock cluster with this test's raw topic: only for a test that injects
/// a fault a real broker cannot give on cue; `reason` names it.
pub fn mock_cluster(reason: &str) -> TestCluster {
    with_raw_topic(TestCluster::mock(reason))
}

fn with_raw_topic(cluster: TestCluster) -> TestCluster {
    cluster.create_topic(&cluster.names().raw_events(), PARTITIONS);
    cluster
}

pub fn config(bootstrap: &str, topic: &str, archive_url: &str, s3: S3Settings) -> EdgeConfig {
    EdgeConfig {
        kafka: KafkaSettings::new(bootstrap),
        secrets: SigningSecrets::new(["old-secret", SECRET]).unwrap(),
        archive_url: archive_url.to_owned(),
        s3,
        archive: Default::default(),
        edge_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        raw_topic: topic.to_owned(),
        deadline: Duration::from_millis(2000),
        max_body_bytes: slackline_edge::config::DEFAULT_MAX_BODY_BYTES,
        shutdown_grace: Duration::from_secs(10),
        limits: slackline_edge::Limits::default(),
        log_format: LogFormat::Text,
    }
}

pub fn s3_settings(garage: &slackline_testkit::Garage) -> S3Settings {
    S3Settings::for_endpoint(
        &garage.endpoint,
        &garage.region,
        &garage.access_key_id,
        &garage.secret_access_key,
        Duration::from_millis(500),
    )
}

pub async fn start_edge(config: EdgeConfig) -> (Edge, Shutdown) {
    let shutdown = Shutdown::new();
    let edge = Edge::start(config, shutdown.clone())
        .await
        .expect("edge starts");
    (edge, shutdown)
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Posts a body signed with `secret` at time `ts`.
pub async fn post_signed(
    http: &reqwest::Client,
    addr: SocketAddr,
    body: &[u8],
    secret: &str,
    ts: i64,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http
        .post(format!("http://{addr}/slack/events"))
        .header("content-type", "application/json")
        .header("X-Slack-Request-Timestamp", ts.to_string())
        .header("X-Slack-Signature", sign(secret, ts, body))
        .body(body.to_vec());
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    request.send().await.expect("request sent")
}

pub async fn post(http: &reqwest::Client, addr: SocketAddr, body: &[u8]) -> u16 {
    post_signed(http, addr, body, SECRET, now(), &[])
        .await
        .status()
        .as_u16()
}

/// A message event of `channel` with a unique event id.
pub fn message_event(channel: &str, event_id: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "token": "x",
        "team_id": "T0CUSTOMER",
        "api_app_id": "A0APP",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1_700_000_000,
        "authorizations": [{"team_id": "T0HOME", "user_id": "U0BOT", "is_bot": true}],
        "event": {
            "type": "message",
            "channel": channel,
            "user": "U0CUST",
            "text": text,
            "ts": "1700000000.000100",
            "channel_type": "channel"
        }
    }))
    .unwrap()
}

/// Reads every record of `topic` until `want` have arrived or `timeout` passes.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Vec<Record> {
    slackline_testkit::kafka::read_topic(bootstrap, topic, PARTITIONS, want, timeout)
        .await
        .into_iter()
        .map(|r| Record {
            partition: r.partition,
            offset: r.offset,
            key: r.key,
            headers: r.headers.into_iter().collect(),
            payload: r.payload,
        })
        .collect()
}

/// The value of a counter (with its labels) from the edge's registry.
pub fn counter(edge: &Edge, name: &str, label: Option<(&str, &str)>) -> u64 {
    let labels: Vec<(&str, &str)> = label.into_iter().collect();
    slackline_testkit::metrics::metric(&edge.registry, name, &labels) as u64
}

/// Every request in the archive (read through its segments): (locator, record).
#[allow(dead_code)]
pub async fn archived_requests(
    archive: &slackline_archive::Archive,
) -> Vec<(String, slackline_archive::ArchiveRecord)> {
    let mut out = Vec::new();
    for key in archive.list("raw/").await.expect("list the archive") {
        for entry in archive.read_object(&key).await.expect("read a segment") {
            let record = entry.record.expect("every archived line is a request");
            out.push((entry.locator.to_string(), record));
        }
    }
    out
}
