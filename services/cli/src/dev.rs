//! `slackline dev`: the whole pipeline on one machine with embedded defaults.
//!
//! Kafka is librdkafka's mock cluster (three brokers in this process, speaking the
//! real Kafka protocol over TCP, so any Kafka client can connect to the bootstrap
//! address printed), the archive is a directory under `./.slackline/`, the edge
//! listens on the given port, the normalizer turns raw events into Avro message
//! events, and thread-state, timeline-writer and the notifier consume them into
//! PostgreSQL ([`crate::postgres`]: `DATABASE_URL`, else the local server, else a
//! throwaway cluster under the state directory). The three consumer groups read their
//! own settings (`GROUPING_MODE`, `NOTIFY_*`, ...) from [`DevOptions::service_env`],
//! as their binaries do from the process environment.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use slackline_archive::S3Settings;
use slackline_consumer::GroupService;
use slackline_edge::{Edge, EdgeConfig};
use slackline_kafka::topics::all_topics;
use slackline_kafka::KafkaSettings;
use slackline_normalizer::normalize::Rules;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::Env;
use slackline_service::{LogFormat, Shutdown};
use slackline_slack::SigningSecrets;
use slackline_slack_api::BotTokens;

use crate::postgres::{DatabaseChoice, DevDatabase};

/// The signing secret `dev` uses when `SLACK_SIGNING_SECRETS` is not set.
pub const DEV_SECRET: &str = "slackline-dev-signing-secret";

/// librdkafka's mock broker answers an empty fetch only after the consumer's whole
/// `fetch.wait.max.ms` (500 ms by default), even when records arrive meanwhile; a
/// real broker answers as soon as there is data. Against the mock cluster every
/// consumer hop would add up to half a second, so `dev` asks for short fetch waits
/// (unless `KAFKA_PROPERTIES` says otherwise).
pub const MOCK_KAFKA_PROPERTIES: &str = "fetch.wait.max.ms=25";

/// The file in the state directory holding the database URL of the last `dev` run.
pub const DATABASE_URL_FILE: &str = "database-url";

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
    /// Which PostgreSQL the consumer groups use.
    pub database: DatabaseChoice,
    /// Environment of the three consumer groups (grouping, reaction commands,
    /// notification targets, retry delays); Kafka, database, admin address and log
    /// format are set by `dev` itself.
    pub service_env: Vec<(String, String)>,
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
    /// No database could be provided.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] crate::postgres::PostgresError),
    /// A consumer group's configuration is invalid.
    #[error("{service}: {source}")]
    Config {
        /// The service.
        service: &'static str,
        /// The problems.
        #[source]
        source: slackline_service::ConfigError,
    },
    /// A consumer group failed to start or stopped with an error.
    #[error("{service}: {message}")]
    Group {
        /// The service.
        service: &'static str,
        /// What failed.
        message: String,
    },
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
    /// thread-state.
    pub thread_state: GroupService,
    /// timeline-writer.
    pub timeline_writer: GroupService,
    /// The notifier.
    pub notifier: GroupService,
    /// The database the groups use (a cluster `dev` started stops with the stack).
    pub database: DevDatabase,
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
            thread_state,
            timeline_writer,
            notifier,
            database,
            ..
        } = self;
        let edge = edge.wait().await;
        let normalizer = normalizer.wait().await;
        let groups = [
            ("thread-state", thread_state.wait().await),
            ("timeline-writer", timeline_writer.wait().await),
            ("notifier", notifier.wait().await),
        ];
        drop(mock);
        drop(database);
        edge?;
        normalizer?;
        for (service, result) in groups {
            result.map_err(|e| DevError::Group {
                service,
                message: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// The environment of one consumer group: the user's, then what `dev` decides.
fn group_env(options: &DevOptions, bootstrap: &str, database_url: &str, admin: SocketAddr) -> Env {
    let mut pairs = options.service_env.clone();
    if !pairs.iter().any(|(k, _)| k == "KAFKA_PROPERTIES") {
        pairs.push((
            "KAFKA_PROPERTIES".to_owned(),
            MOCK_KAFKA_PROPERTIES.to_owned(),
        ));
    }
    pairs.extend([
        ("KAFKA_BOOTSTRAP_SERVERS".to_owned(), bootstrap.to_owned()),
        ("DATABASE_URL".to_owned(), database_url.to_owned()),
        ("ADMIN_ADDR".to_owned(), admin.to_string()),
        ("LOG_FORMAT".to_owned(), "text".to_owned()),
    ]);
    Env::from_pairs(pairs)
}

/// The normalizer's Kafka settings: [`MOCK_KAFKA_PROPERTIES`].
fn mock_kafka_settings(bootstrap: &str) -> KafkaSettings {
    let mut settings = KafkaSettings::new(bootstrap);
    settings.properties =
        slackline_kafka::parse_properties(MOCK_KAFKA_PROPERTIES).unwrap_or_default();
    settings
}

fn admin_addr(options: &DevOptions, offset: u16) -> SocketAddr {
    let port = if options.admin_port == 0 {
        0
    } else {
        options.admin_port.saturating_add(offset)
    };
    SocketAddr::new(options.bind, port)
}

/// Starts the mock cluster with every topic, the database, the edge, the normalizer
/// and the three consumer groups.
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
    let database = crate::postgres::provide(&options.database, &options.dir).await?;
    // `slackline threads` and `thread` read this when DATABASE_URL is not set.
    let url_file = options.dir.join(DATABASE_URL_FILE);
    std::fs::write(&url_file, &database.url).map_err(|source| DevError::Dir {
        path: url_file.display().to_string(),
        source,
    })?;
    let group_envs = [2, 3, 4].map(|offset| {
        group_env(
            &options,
            &bootstrap,
            &database.url,
            admin_addr(&options, offset),
        )
    });
    let [thread_state_env, timeline_env, notifier_env] = group_envs;
    let thread_state_config = slackline_thread_state::ThreadStateConfig::from_env(thread_state_env)
        .map_err(|source| DevError::Config {
            service: "thread-state",
            source,
        })?;
    let timeline_config = slackline_timeline_writer::TimelineWriterConfig::from_env(timeline_env)
        .map_err(|source| DevError::Config {
        service: "timeline-writer",
        source,
    })?;
    let notifier_config =
        slackline_notifier::NotifierConfig::from_env(notifier_env).map_err(|source| {
            DevError::Config {
                service: "notifier",
                source,
            }
        })?;
    let normalizer_admin = admin_addr(&options, 1);
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
    let normalizer = Normalizer::start(
        NormalizerConfig {
            kafka: mock_kafka_settings(&bootstrap),
            raw_topic: slackline_kafka::topics::RAW_EVENTS.to_owned(),
            messages_topic: slackline_kafka::topics::MESSAGES.to_owned(),
            dlq_topic: slackline_kafka::topics::RAW_DLQ.to_owned(),
            group_id: slackline_kafka::topics::NORMALIZER_GROUP.to_owned(),
            admin_addr: normalizer_admin,
            slack_api_base_url: options.slack_api_base_url,
            bot_tokens: options.bot_tokens,
            rules: options.rules,
            log_format: LogFormat::Text,
        },
        shutdown.clone(),
    )
    .await?;
    let thread_state = slackline_thread_state::start(thread_state_config, shutdown.clone())
        .await
        .map_err(|e| DevError::Group {
            service: "thread-state",
            message: e.to_string(),
        })?;
    let timeline_writer = slackline_timeline_writer::start(timeline_config, shutdown.clone())
        .await
        .map_err(|e| DevError::Group {
            service: "timeline-writer",
            message: e.to_string(),
        })?;
    let notifier = slackline_notifier::start(notifier_config, shutdown)
        .await
        .map_err(|e| DevError::Group {
            service: "notifier",
            message: e.to_string(),
        })?;
    Ok(DevStack {
        mock,
        bootstrap,
        edge,
        normalizer,
        archive_url,
        thread_state,
        timeline_writer,
        notifier,
        database,
    })
}
