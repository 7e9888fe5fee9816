//! `slackline dev`: the whole pipeline on one machine with embedded defaults.
//!
//! Kafka is librdkafka's mock cluster (three brokers in this process, speaking the
//! real Kafka protocol over TCP, so any Kafka client can connect to the bootstrap
//! address printed), the archive is a directory under `./.slackline/`, the edge
//! listens on the given port and the normalizer turns raw events into Avro message
//! events. Later services join the same wiring.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use slackline_archive::S3Settings;
use slackline_edge::{Edge, EdgeConfig};
use slackline_kafka::topics::all_topics;
use slackline_kafka::KafkaSettings;
use slackline_normalizer::normalize::Rules;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::{LogFormat, Shutdown};
use slackline_slack::SigningSecrets;
use slackline_slack_api::BotTokens;

/// The signing secret `dev` uses when `SLACK_SIGNING_SECRETS` is not set.
pub const DEV_SECRET: &str = "slackline-dev-signing-secret";

/// Options of `slackline dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Address to bind (127.0.0.1 by default: nothing is exposed).
    pub bind: IpAddr,
    /// The edge's port (0 picks a free one).
    pub port: u16,
    /// The admin port (0 picks a free one).
    pub admin_port: u16,
    /// State directory (archive).
    pub dir: PathBuf,
    /// Partitions per flow topic.
    pub partitions: i32,
    /// Signing secrets the edge accepts.
    pub secrets: SigningSecrets,
    /// Bot tokens for author lookups (`SLACK_BOT_TOKENS`; empty: no lookups).
    pub bot_tokens: BotTokens,
    /// Slack Web API base URL (`SLACK_API_BASE_URL`).
    pub slack_api_base_url: String,
    /// Enablement and echo rules for the normalizer.
    pub rules: Rules,
}

/// Errors starting the local stack.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The mock cluster failed.
    #[error("mock Kafka cluster: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The state directory could not be created.
    #[error("state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The edge failed.
    #[error(transparent)]
    Edge(#[from] slackline_edge::EdgeError),
    /// The normalizer failed.
    #[error(transparent)]
    Normalizer(#[from] slackline_normalizer::NormalizerError),
}

/// The running local stack. Keep it alive: dropping it stops the mock cluster.
pub struct DevStack {
    /// The mock Kafka cluster.
    pub mock: MockCluster<'static, DefaultProducerContext>,
    /// Its bootstrap servers.
    pub bootstrap: String,
    /// The edge.
    pub edge: Edge,
    /// The normalizer.
    pub normalizer: Normalizer,
    /// The archive's URL.
    pub archive_url: String,
}

impl DevStack {
    /// The URL Slack (or `slackline send`) posts to.
    pub fn webhook_url(&self) -> String {
        format!("http://{}/slack/events", self.edge.addr)
    }

    /// The edge's admin URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.edge.admin_addr)
    }

    /// The normalizer's admin URL.
    pub fn normalizer_admin_url(&self) -> String {
        format!("http://{}", self.normalizer.admin_addr)
    }

    /// Waits until the stack has stopped (after the shutdown signal). The mock
    /// cluster goes last, so that every client closes against a live cluster.
    pub async fn wait(self) -> Result<(), DevError> {
        let DevStack {
            mock,
            edge,
            normalizer,
            ..
        } = self;
        let edge = edge.wait().await;
        let normalizer = normalizer.wait().await;
        drop(mock);
        edge?;
        normalizer?;
        Ok(())
    }
}

/// Starts the mock cluster with every topic, then the edge.
pub async fn start(options: DevOptions, shutdown: Shutdown) -> Result<DevStack, DevError> {
    let archive_dir = options.dir.join("archive");
    std::fs::create_dir_all(&archive_dir).map_err(|source| DevError::Dir {
        path: archive_dir.display().to_string(),
        source,
    })?;
    let archive_dir = archive_dir.canonicalize().map_err(|source| DevError::Dir {
        path: archive_dir.display().to_string(),
        source,
    })?;
    let mock = MockCluster::new(3)?;
    for topic in all_topics(options.partitions) {
        mock.create_topic(&topic.name, topic.partitions, 3)?;
    }
    let bootstrap = mock.bootstrap_servers();
    let archive_url = format!("file://{}", archive_dir.display());
    let edge = Edge::start(
        EdgeConfig {
            kafka: KafkaSettings::new(&bootstrap),
            secrets: options.secrets,
            archive_url: archive_url.clone(),
            s3: S3Settings::default(),
            edge_addr: SocketAddr::new(options.bind, options.port),
            admin_addr: SocketAddr::new(options.bind, options.admin_port),
            raw_topic: slackline_kafka::topics::RAW_EVENTS.to_owned(),
            deadline: Duration::from_millis(slackline_edge::config::DEFAULT_DEADLINE_MS),
            max_body_bytes: slackline_edge::config::DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: Duration::from_secs(5),
            log_format: LogFormat::Text,
        },
        shutdown.clone(),
    )
    .await?;
    let normalizer_admin_port = if options.admin_port == 0 {
        0
    } else {
        options.admin_port.saturating_add(1)
    };
    let normalizer = Normalizer::start(
        NormalizerConfig {
            kafka: KafkaSettings::new(&bootstrap),
            raw_topic: slackline_kafka::topics::RAW_EVENTS.to_owned(),
            messages_topic: slackline_kafka::topics::MESSAGES.to_owned(),
            dlq_topic: slackline_kafka::topics::RAW_DLQ.to_owned(),
            group_id: slackline_kafka::topics::NORMALIZER_GROUP.to_owned(),
            admin_addr: SocketAddr::new(options.bind, normalizer_admin_port),
            slack_api_base_url: options.slack_api_base_url,
            bot_tokens: options.bot_tokens,
            rules: options.rules,
            log_format: LogFormat::Text,
        },
        shutdown,
    )
    .await?;
    Ok(DevStack {
        mock,
        bootstrap,
        edge,
        normalizer,
        archive_url,
    })
}
