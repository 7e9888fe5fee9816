//! `slackline dev`: the whole pipeline on one machine.
//!
//! Kafka is one of three ([`KafkaChoice`], `--kafka`): librdkafka's mock cluster
//! (the default: three brokers in this process, speaking the real Kafka protocol
//! over TCP, nothing to install), a single-node Apache Kafka broker under the state
//! directory (`embedded`: [`slackline_kafka::embedded`], its jars fetched once by
//! the repository's `scripts/fetch-kafka`, its log directory kept between runs), or
//! an existing cluster (`--kafka=host:port`). Every topic is created where missing,
//! through the path of `slackline topics create`. The archive is a directory under
//! `./.slackline/`, the edge listens on the given port, the normalizer turns raw
//! events into Avro message events, and thread-state, timeline-writer and the
//! notifier consume them into PostgreSQL ([`crate::postgres`]: `DATABASE_URL`, else
//! the local server, else a throwaway cluster under the state directory), and the
//! slack-sender posts the agents' replies of `support.replies` to the Slack Web API at
//! `SLACK_API_BASE_URL`; without it, to a Slack API stand-in of its own
//! ([`slackline_slack_stand_in`]) whose accepted posts `dev` sends back to the
//! edge as Slack would (the echo of our own message), so that replies work offline.
//! Every service's configuration is built one way: its own `from_env` constructor
//! (what its binary runs) over one environment per service ([`service_env`]): the
//! user's variables ([`DevOptions::service_env`]: `SLACK_SIGNING_SECRETS`,
//! `SLACK_BOT_TOKENS`, `GROUPING_MODE`, `NOTIFY_*`, ...), then what `dev` decides
//! (Kafka, topic and group names from [`DevOptions::topic_names`], database,
//! archive, admin addresses, log format).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use slackline_consumer::GroupService;
use slackline_edge::{Edge, EdgeConfig};
use slackline_kafka::embedded::{self, BrokerConfig, EmbeddedBroker, EmbeddedError};
use slackline_kafka::topics::{Created, TopicNames, NORMALIZER_GROUP};
use slackline_kafka::KafkaSettings;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::Env;
use slackline_service::Shutdown;
use slackline_slack_sender::SlackSender;
use slackline_slack_stand_in::{
    SlackApiStandIn, STAND_IN_APP_ID, STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID,
};

use crate::postgres::{DatabaseChoice, DevDatabase};

/// The signing secret `dev` uses when `SLACK_SIGNING_SECRETS` is not set.
pub const DEV_SECRET: &str = "slackline-dev-signing-secret";

/// librdkafka's mock broker answers an empty fetch only after the consumer's whole
/// `fetch.wait.max.ms` (500 ms by default), even when records arrive meanwhile; a
/// real broker answers as soon as there is data. Against the mock cluster every
/// consumer hop would add up to half a second, so `dev` asks the mock's consumers
/// for short fetch waits (unless `KAFKA_PROPERTIES` says otherwise). A real broker
/// gets the product's defaults.
pub const MOCK_KAFKA_PROPERTIES: &str = "fetch.wait.max.ms=25";

/// The file in the state directory holding the database URL of the last `dev` run.
pub const DATABASE_URL_FILE: &str = "database-url";

/// The embedded broker's folder under the state directory.
pub const KAFKA_DIR: &str = "kafka";

/// The file in the embedded broker's folder holding the pid of the broker a `dev`
/// started (so that the next `dev` can stop one a killed `dev` left running).
pub const KAFKA_PID_FILE: &str = "dev.pid";

/// The consumer groups `dev` runs (besides the normalizer), in start order.
const GROUPS: [&str; 4] = [
    "thread-state",
    "timeline-writer",
    "notifier",
    "slack-sender",
];

/// The bot token the slack-sender uses when `SLACK_BOT_TOKENS` is not set (any team;
/// `dev`'s own Slack API stand-in takes any token).
pub const STAND_IN_TOKENS: &str = "*=xoxb-slackline-dev-stand-in";

/// Environment variables `dev` decides for each service; the user's values of these
/// are ignored (one value for six services would be wrong).
const DEV_OWNED_ENV: [&str; 17] = [
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_PROPERTIES",
    "DATABASE_URL",
    "ADMIN_ADDR",
    "EDGE_ADDR",
    "ARCHIVE_URL",
    "LOG_FORMAT",
    "GROUP_ID",
    "SOURCE_TOPIC",
    "RETRY_TOPIC",
    "DLQ_TOPIC",
    "THREAD_EVENTS_TOPIC",
    "RAW_TOPIC",
    "MESSAGES_TOPIC",
    "RAW_DLQ_TOPIC",
    "NORMALIZER_GROUP_ID",
    "SLACK_API_BASE_URL",
];

/// `dev`'s shutdown grace for the edge and the normalizer (unless the user sets
/// `EDGE_SHUTDOWN_GRACE_MS` / `SHUTDOWN_GRACE_MS`): a local stack stops quickly.
const DEV_SHUTDOWN_GRACE_MS: &str = "5000";

/// `slackline dev`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Kafka: `mock` (librdkafka's mock cluster in this process, nothing to
    /// install), `embedded` (a single-node Apache Kafka broker under the state
    /// directory; needs Java 17+, and Maven once to fetch its jars), or the
    /// bootstrap servers of an existing cluster (`host:port`).
    #[arg(long, default_value = "mock", value_name = "mock|embedded|BOOTSTRAP")]
    pub kafka: KafkaChoice,
    /// A prefix for every topic and consumer-group name (several stacks on one
    /// cluster).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Edge port (Slack's requests).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Admin port (/metrics, /healthz, /readyz).
    #[arg(long, default_value_t = 9000)]
    pub admin_port: u16,
    /// State directory.
    #[arg(long, default_value = ".slackline")]
    pub dir: PathBuf,
    /// Partitions per topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Signing secrets accepted (comma-separated).
    #[arg(long, env = "SLACK_SIGNING_SECRETS", default_value = DEV_SECRET, hide_env_values = true)]
    pub secrets: String,
    /// Always start a throwaway PostgreSQL cluster under the state directory, even
    /// when DATABASE_URL is set or a local server answers.
    #[arg(long)]
    pub embedded_postgres: bool,
}

/// `slackline dev`: starts the stack, prints where everything is, runs until ctrl-c.
///
/// # Errors
///
/// A service's configuration is invalid, or something fails to start or stops with
/// an error.
pub async fn run(args: Args) -> anyhow::Result<()> {
    slackline_service::init_telemetry("slackline-dev", slackline_service::LogFormat::Text);
    let shutdown = Shutdown::on_signals();
    let mut service_env: Vec<(String, String)> = std::env::vars().collect();
    // The flag (or SLACK_SIGNING_SECRETS, or the dev secret) is what the edge takes.
    service_env.push(("SLACK_SIGNING_SECRETS".to_owned(), args.secrets));
    // Unset: dev runs a Slack API stand-in of its own.
    let slack_api_base_url = std::env::var("SLACK_API_BASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty());
    let database = match (args.embedded_postgres, std::env::var("DATABASE_URL")) {
        (true, _) => DatabaseChoice::Embedded,
        (false, Ok(url)) if !url.trim().is_empty() => DatabaseChoice::Url(url),
        (false, _) => DatabaseChoice::Auto,
    };
    let options = DevOptions {
        bind: [127, 0, 0, 1].into(),
        port: args.port,
        admin_port: args.admin_port,
        dir: args.dir,
        kafka: args.kafka,
        topic_names: TopicNames::with_prefix(args.prefix),
        partitions: args.partitions,
        slack_api_base_url,
        database,
        service_env,
    };
    let stack = start(options, shutdown).await?;
    stack.print_banner();
    stack.wait().await?;
    Ok(())
}

/// Which Kafka `dev` runs on (`--kafka`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KafkaChoice {
    /// librdkafka's mock cluster in this process (`mock`, the default).
    #[default]
    Mock,
    /// A single-node Apache Kafka broker under the state directory (`embedded`).
    Embedded,
    /// An existing cluster at these bootstrap servers.
    Bootstrap(String),
}

impl std::str::FromStr for KafkaChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" => Err("expected mock, embedded or bootstrap servers (host:port)".to_owned()),
            "mock" => Ok(KafkaChoice::Mock),
            "embedded" => Ok(KafkaChoice::Embedded),
            servers
                if servers.split(',').all(|server| {
                    server
                        .trim()
                        .rsplit_once(':')
                        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                }) =>
            {
                Ok(KafkaChoice::Bootstrap(servers.to_owned()))
            }
            other => Err(format!(
                "{other:?}: expected mock, embedded or bootstrap servers (host:port[,host:port])"
            )),
        }
    }
}

impl std::fmt::Display for KafkaChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaChoice::Mock => f.write_str("mock"),
            KafkaChoice::Embedded => f.write_str("embedded"),
            KafkaChoice::Bootstrap(servers) => f.write_str(servers),
        }
    }
}

/// Options of `slackline dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Address to bind (127.0.0.1 by default: nothing is exposed).
    pub bind: IpAddr,
    /// The edge's port (0 picks a free one).
    pub port: u16,
    /// The admin port (0 picks a free one).
    pub admin_port: u16,
    /// State directory (archive, embedded broker, throwaway PostgreSQL).
    pub dir: PathBuf,
    /// Which Kafka to run on.
    pub kafka: KafkaChoice,
    /// Topic and consumer-group names (a prefix lets several stacks share a cluster).
    pub topic_names: TopicNames,
    /// Partitions per flow topic.
    pub partitions: i32,
    /// Slack Web API base URL (`SLACK_API_BASE_URL`); `None`: `dev` runs a Slack API
    /// stand-in of its own and delivers the echo of every reply it accepts to the
    /// edge, as Slack would.
    pub slack_api_base_url: Option<String>,
    /// Which PostgreSQL the consumer groups use.
    pub database: DatabaseChoice,
    /// The services' environment, read by each service's own `from_env` as its
    /// binary reads the process environment: `SLACK_SIGNING_SECRETS` (default
    /// [`DEV_SECRET`]; the first one also signs the stand-in's echoes), the
    /// normalizer's `SLACK_BOT_TOKENS`, `ENABLED_*`, `SELF_*`, the groups' grouping,
    /// reaction commands, notification targets, retry delays, and
    /// `KAFKA_PROPERTIES`. Kafka bootstrap, topic and group names, database, archive,
    /// admin addresses and log format are set by `dev` itself ([`DEV_OWNED_ENV`]).
    /// `KAFKA_PROPERTIES` here applies to every Kafka client of the stack (security
    /// settings for an existing cluster, say).
    pub service_env: Vec<(String, String)>,
}

/// Errors starting the local stack.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The mock cluster failed.
    #[error("mock Kafka cluster: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The embedded broker cannot be had (jars, java, Maven).
    #[error("embedded Kafka: {0}")]
    KafkaSetup(String),
    /// The embedded broker failed to start or stop.
    #[error("embedded Kafka: {0}")]
    Embedded(#[from] EmbeddedError),
    /// No broker answers at the given bootstrap servers.
    #[error("no Kafka broker answers at {bootstrap}: {reason}")]
    Unreachable {
        /// The bootstrap servers.
        bootstrap: String,
        /// What the client said.
        reason: String,
    },
    /// Creating the topics failed.
    #[error("creating the topics: {0}")]
    Topics(#[from] slackline_kafka::KafkaError),
    /// `KAFKA_PROPERTIES` cannot be parsed.
    #[error("KAFKA_PROPERTIES: {0}")]
    KafkaProperties(String),
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
    /// The Slack Web API stand-in could not listen.
    #[error("Slack API stand-in: {0}")]
    SlackStandIn(#[source] std::io::Error),
    /// A consumer group failed to start or stopped with an error.
    #[error("{service}: {message}")]
    Group {
        /// The service.
        service: &'static str,
        /// What failed.
        message: String,
    },
}

/// The Kafka cluster `dev` runs on, when `dev` started it.
pub enum DevKafka {
    /// librdkafka's mock cluster (stops when dropped).
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// The embedded Apache Kafka broker (stopped cleanly by [`DevKafka::stop`]).
    Embedded(EmbeddedBroker),
    /// A cluster `dev` did not start (left as it is).
    External,
}

impl DevKafka {
    /// Stops a cluster `dev` started: the embedded broker cleanly (SIGTERM, waiting
    /// for it to exit), the mock cluster by dropping it.
    pub async fn stop(self) -> Result<(), DevError> {
        match self {
            DevKafka::Mock(mock) => {
                drop(mock);
                Ok(())
            }
            DevKafka::Embedded(mut broker) => {
                let pid_file = broker.dir().join(KAFKA_PID_FILE);
                tokio::task::spawn_blocking(move || broker.stop())
                    .await
                    .map_err(|e| DevError::KafkaSetup(format!("stopping the broker: {e}")))??;
                let _ = std::fs::remove_file(pid_file);
                Ok(())
            }
            DevKafka::External => Ok(()),
        }
    }
}

/// The running local stack. Keep it alive: dropping it stops the mock cluster (and
/// kills the embedded broker; [`DevStack::wait`] stops it cleanly).
pub struct DevStack {
    /// The Kafka cluster (the one `dev` started, if it did).
    pub kafka: DevKafka,
    /// Its bootstrap servers.
    pub bootstrap: String,
    /// A line for the operator: which Kafka this is.
    pub kafka_description: String,
    /// The stack's topic and group names.
    pub names: TopicNames,
    /// What happened to each topic at start (created, or already there).
    pub topics: Vec<Created>,
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
    /// The slack-sender (its posts in flight are waited for at shutdown).
    pub slack_sender: SlackSender,
    /// How long the slack-sender's posts in flight may take after the shutdown.
    pub slack_sender_grace: Duration,
    /// The stack's shutdown.
    pub shutdown: Shutdown,
    /// The Slack Web API the normalizer and the slack-sender call.
    pub slack_api_base_url: String,
    /// `dev`'s own Slack API stand-in, when `SLACK_API_BASE_URL` was not given.
    pub slack_api: Option<SlackApiStandIn>,
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

    /// Prints where everything is and what to try.
    pub fn print_banner(&self) {
        let created = self
            .topics
            .iter()
            .filter(|t| matches!(t, Created::Created(_)))
            .count();
        println!("slackline dev is running (ctrl-c to stop)");
        println!("  Slack webhook URL:  {}", self.webhook_url());
        println!("  Kafka:              {}", self.kafka_description);
        println!(
            "  Kafka bootstrap:    {}  ({} topics: {created} created, {} already there)",
            self.bootstrap,
            self.topics.len(),
            self.topics.len() - created
        );
        println!(
            "  edge admin:         {}/metrics  /healthz  /readyz",
            self.admin_url()
        );
        println!(
            "  normalizer admin:   {}/metrics",
            self.normalizer_admin_url()
        );
        println!(
            "  consumer groups:    thread-state {}, timeline-writer {}, notifier {}, slack-sender {} (admin)",
            self.thread_state.admin_addr,
            self.timeline_writer.admin_addr,
            self.notifier.admin_addr,
            self.slack_sender.service.admin_addr
        );
        println!(
            "  Slack Web API:      {}{}",
            self.slack_api_base_url,
            if self.slack_api.is_some() {
                "  (dev's stand-in: replies are recorded and echoed back to the edge)"
            } else {
                ""
            }
        );
        println!("  archive:            {}", self.archive_url);
        println!("  PostgreSQL:         {}", self.database.description);
        println!("try:");
        println!(
            "  cargo run -q -p slackline -- send --url {} testdata/events",
            self.webhook_url()
        );
        println!(
            "  cargo run -q -p slackline -- tail {} --bootstrap {} --exit-at-end",
            self.names.messages(),
            self.bootstrap
        );
        println!("  cargo run -q -p slackline -- threads");
        println!(
            "  cargo run -q -p slackline -- reply <thread id> 'On it!' --bootstrap {} --topic {}",
            self.bootstrap,
            self.names.replies()
        );
    }

    /// Waits until the stack has stopped (after the shutdown signal). Kafka goes
    /// last, so that every client closes against a live cluster.
    pub async fn wait(self) -> Result<(), DevError> {
        let DevStack {
            kafka,
            edge,
            normalizer,
            thread_state,
            timeline_writer,
            notifier,
            slack_sender,
            slack_sender_grace,
            shutdown,
            slack_api,
            database,
            ..
        } = self;
        let edge = edge.wait().await;
        let normalizer = normalizer.wait().await;
        let groups = [
            ("thread-state", thread_state.wait().await),
            ("timeline-writer", timeline_writer.wait().await),
            ("notifier", notifier.wait().await),
            (
                "slack-sender",
                slack_sender.wait(&shutdown, slack_sender_grace).await,
            ),
        ];
        drop(slack_api);
        let kafka = kafka.stop().await;
        drop(database);
        edge?;
        normalizer?;
        for (service, result) in groups {
            result.map_err(|e| DevError::Group {
                service,
                message: e.to_string(),
            })?;
        }
        kafka
    }
}

/// `KAFKA_PROPERTIES` from the services' environment, parsed (`None` when unset).
fn user_kafka_properties(options: &DevOptions) -> Result<Option<Vec<(String, String)>>, DevError> {
    options
        .service_env
        .iter()
        .rev()
        .find(|(k, v)| k == "KAFKA_PROPERTIES" && !v.trim().is_empty())
        .map(|(_, v)| slackline_kafka::parse_properties(v).map_err(DevError::KafkaProperties))
        .transpose()
}

/// The Kafka properties of the stack's consumers: the user's `KAFKA_PROPERTIES`,
/// else [`MOCK_KAFKA_PROPERTIES`] on the mock cluster, else none (the product's
/// defaults on a real broker).
fn consumer_properties(
    kafka: &KafkaChoice,
    user: Option<&Vec<(String, String)>>,
) -> Vec<(String, String)> {
    match (user, kafka) {
        (Some(user), _) => user.clone(),
        (None, KafkaChoice::Mock) => {
            slackline_kafka::parse_properties(MOCK_KAFKA_PROPERTIES).unwrap_or_default()
        }
        (None, _) => Vec::new(),
    }
}

/// Which service an environment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// The edge.
    Edge,
    /// The normalizer.
    Normalizer,
    /// A consumer group (its base name, one of [`GROUPS`]).
    Group(&'static str),
}

/// What `dev` decided, shared by every service's environment.
struct StackEnv<'a> {
    /// Bootstrap servers.
    bootstrap: &'a str,
    /// The user's `KAFKA_PROPERTIES` (the edge's producer).
    user_properties: &'a [(String, String)],
    /// The consumers' Kafka properties ([`consumer_properties`]).
    consumer_properties: &'a [(String, String)],
    /// The groups' database.
    database_url: &'a str,
    /// The archive.
    archive_url: &'a str,
    /// The Slack Web API the normalizer and the slack-sender call.
    slack_api_base_url: &'a str,
    /// Whether that is `dev`'s own stand-in.
    own_stand_in: bool,
}

/// The environment of one service: `dev`'s defaults, the user's variables, then what
/// `dev` decides ([`DEV_OWNED_ENV`]). Each service reads it with its own `from_env`.
fn service_env(options: &DevOptions, service: Service, stack: &StackEnv<'_>) -> Env {
    let names = &options.topic_names;
    let user = |name: &str| {
        options
            .service_env
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.clone())
    };
    // Defaults the user may override.
    let mut pairs: Vec<(String, String)> = vec![
        ("SLACK_SIGNING_SECRETS".to_owned(), DEV_SECRET.to_owned()),
        (
            "EDGE_SHUTDOWN_GRACE_MS".to_owned(),
            DEV_SHUTDOWN_GRACE_MS.to_owned(),
        ),
    ];
    if service == Service::Normalizer {
        pairs.push((
            "SHUTDOWN_GRACE_MS".to_owned(),
            DEV_SHUTDOWN_GRACE_MS.to_owned(),
        ));
    }
    pairs.extend(
        options
            .service_env
            .iter()
            .filter(|(k, _)| !DEV_OWNED_ENV.contains(&k.as_str()))
            .cloned(),
    );
    let kafka_properties = match service {
        Service::Edge => stack.user_properties,
        Service::Normalizer | Service::Group(_) => stack.consumer_properties,
    };
    if !kafka_properties.is_empty() {
        let joined = kafka_properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        pairs.push(("KAFKA_PROPERTIES".to_owned(), joined));
    }
    let admin = match service {
        Service::Edge => admin_addr(options, 0),
        Service::Normalizer => admin_addr(options, 1),
        Service::Group(group) => {
            let index = GROUPS.iter().position(|g| *g == group).unwrap_or(0);
            admin_addr(options, 2 + u16::try_from(index).unwrap_or(0))
        }
    };
    pairs.extend([
        (
            "KAFKA_BOOTSTRAP_SERVERS".to_owned(),
            stack.bootstrap.to_owned(),
        ),
        ("ADMIN_ADDR".to_owned(), admin.to_string()),
        ("LOG_FORMAT".to_owned(), "text".to_owned()),
        (
            "SLACK_API_BASE_URL".to_owned(),
            stack.slack_api_base_url.to_owned(),
        ),
    ]);
    match service {
        Service::Edge => pairs.extend([
            (
                "EDGE_ADDR".to_owned(),
                SocketAddr::new(options.bind, options.port).to_string(),
            ),
            ("ARCHIVE_URL".to_owned(), stack.archive_url.to_owned()),
            ("RAW_TOPIC".to_owned(), names.raw_events()),
        ]),
        Service::Normalizer => {
            pairs.extend([
                ("RAW_TOPIC".to_owned(), names.raw_events()),
                ("MESSAGES_TOPIC".to_owned(), names.messages()),
                ("RAW_DLQ_TOPIC".to_owned(), names.raw_dlq()),
                (
                    "NORMALIZER_GROUP_ID".to_owned(),
                    names.group(NORMALIZER_GROUP),
                ),
            ]);
            if stack.own_stand_in {
                // The stand-in's bot is ours: the normalizer recognises the echoes.
                let with = |name: &str, ids: &[&str]| {
                    let mut list: Vec<String> = user(name).into_iter().collect();
                    list.extend(ids.iter().map(|id| (*id).to_owned()));
                    (name.to_owned(), list.join(","))
                };
                pairs.push(with(
                    "SELF_BOT_IDS",
                    &[STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID],
                ));
                pairs.push(with("SELF_APP_IDS", &[STAND_IN_APP_ID]));
            }
        }
        Service::Group(group) => {
            pairs.extend([
                ("DATABASE_URL".to_owned(), stack.database_url.to_owned()),
                ("GROUP_ID".to_owned(), names.group(group)),
                (
                    "SOURCE_TOPIC".to_owned(),
                    if group == "slack-sender" {
                        names.replies()
                    } else {
                        names.messages()
                    },
                ),
                ("THREAD_EVENTS_TOPIC".to_owned(), names.thread_events()),
            ]);
            if group == "slack-sender" && stack.own_stand_in && user("SLACK_BOT_TOKENS").is_none() {
                // Only dev's own stand-in gets the made-up token: a real Slack API
                // without tokens sends every reply to the DLQ with `no bot token
                // configured for team …`.
                pairs.push(("SLACK_BOT_TOKENS".to_owned(), STAND_IN_TOKENS.to_owned()));
            }
        }
    }
    Env::from_pairs(pairs)
}

/// The first signing secret of the services' environment (the stand-in's echoes are
/// signed with it), else [`DEV_SECRET`].
fn echo_secret(options: &DevOptions) -> String {
    options
        .service_env
        .iter()
        .rev()
        .find(|(k, v)| k == "SLACK_SIGNING_SECRETS" && !v.trim().is_empty())
        .and_then(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| DEV_SECRET.to_owned())
}

fn admin_addr(options: &DevOptions, offset: u16) -> SocketAddr {
    let port = if options.admin_port == 0 {
        0
    } else {
        options.admin_port.saturating_add(offset)
    };
    SocketAddr::new(options.bind, port)
}

/// Whether `program` is an executable file in a `PATH` directory.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether the JVM the embedded broker runs with is there (`JAVA_HOME`, or `java`
/// on the `PATH`), as [`EmbeddedBroker`] looks for it.
fn java_available() -> bool {
    std::env::var_os("JAVA_HOME")
        .is_some_and(|home| PathBuf::from(home).join("bin").join("java").is_file())
        || on_path("java")
}

/// The repository's `scripts/fetch-kafka`: looked for in the current directory and
/// its parents, then next to this crate's sources.
pub fn fetch_kafka_script() -> Option<PathBuf> {
    let relative = Path::new("scripts").join("fetch-kafka");
    let from_cwd = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .map(|d| d.join(&relative))
            .find(|p| p.is_file())
    });
    from_cwd.or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join(&relative))
            .find(|p| p.is_file())
    })
}

/// Makes sure the embedded broker can run: java is there, and the broker's jars are
/// in [`embedded::libs_dir`], fetched with `scripts/fetch-kafka` (Maven) when
/// missing. Blocking (the fetch takes a minute or two, once).
pub fn ensure_kafka_jars() -> Result<(), DevError> {
    if !java_available() {
        return Err(DevError::KafkaSetup(
            "java not found (JAVA_HOME or PATH): the embedded Apache Kafka broker needs a \
             Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless); or run \
             `slackline dev --kafka=mock`"
                .to_owned(),
        ));
    }
    if embedded::jars_present() {
        return Ok(());
    }
    let version = embedded::kafka_version();
    let libs = embedded::libs_dir();
    if !on_path("mvn") {
        return Err(DevError::KafkaSetup(format!(
            "the Apache Kafka {version} jars are not in {} and Maven (mvn) is not \
             installed to fetch them: install Maven (e.g. apt-get install maven) and run \
             again, or set SLACKLINE_KAFKA_LIBS to a folder holding the jars",
            libs.display()
        )));
    }
    let Some(script) = fetch_kafka_script() else {
        return Err(DevError::KafkaSetup(format!(
            "the Apache Kafka {version} jars are not in {} and scripts/fetch-kafka was not \
             found: run `slackline dev` from the slackline repository, or run its \
             scripts/fetch-kafka once",
            libs.display()
        )));
    };
    eprintln!(
        "fetching Apache Kafka {version} from Maven Central with {} (once) into {}",
        script.display(),
        libs.display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| DevError::KafkaSetup(format!("running {}: {e}", script.display())))?;
    if !status.success() {
        return Err(DevError::KafkaSetup(format!(
            "{} failed ({status}); its output is above",
            script.display()
        )));
    }
    if !embedded::jars_present() {
        return Err(DevError::KafkaSetup(format!(
            "{} ran, but the jars are still not in {}",
            script.display(),
            libs.display()
        )));
    }
    Ok(())
}

/// A `dev` that was killed leaves its broker running (the broker has its own
/// process group, so only `dev` stops it): stop it, so that the new one can take
/// the log directory over.
fn stop_leftover_broker(dir: &Path) -> Result<(), DevError> {
    let pid_file = dir.join(KAFKA_PID_FILE);
    let Ok(raw) = std::fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    if let Some(pid) = raw
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|pid| embedded::is_broker_of(*pid, dir))
    {
        eprintln!(
            "stopping the Kafka broker (pid {pid}) that an earlier `slackline dev` left \
             running in {}",
            dir.display()
        );
        embedded::terminate(pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        while embedded::is_broker_of(pid, dir) {
            if Instant::now() > deadline {
                return Err(DevError::KafkaSetup(format!(
                    "the broker (pid {pid}) an earlier `slackline dev` left running in {} \
                     does not stop; stop it and run again",
                    dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(())
}

/// Starts the embedded broker in `dir` (its log directory kept between runs),
/// fetching its jars first when missing. Blocking: seconds.
pub fn start_embedded_broker(dir: &Path) -> Result<EmbeddedBroker, DevError> {
    ensure_kafka_jars()?;
    std::fs::create_dir_all(dir).map_err(|source| DevError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    let dir = dir.canonicalize().map_err(|source| DevError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    stop_leftover_broker(&dir)?;
    let broker = EmbeddedBroker::start(BrokerConfig {
        own_process_group: true,
        ..BrokerConfig::new(&dir)
    })?;
    if let Some(pid) = broker.pid() {
        let pid_file = dir.join(KAFKA_PID_FILE);
        std::fs::write(&pid_file, format!("{pid}\n")).map_err(|source| DevError::Dir {
            path: pid_file.display().to_string(),
            source,
        })?;
    }
    Ok(broker)
}

/// How many brokers the cluster at `settings` has (it answers a metadata request).
async fn broker_count(settings: &KafkaSettings) -> Result<usize, DevError> {
    let config = settings.client_config("slackline-dev");
    let bootstrap = settings.bootstrap_servers.clone();
    let unreachable = |reason: String| DevError::Unreachable {
        bootstrap: bootstrap.clone(),
        reason,
    };
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| m.brokers().len())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| unreachable(e.to_string()))?
    .map_err(unreachable)
}

/// Kafka as the stack runs on it.
struct StartedKafka {
    kafka: DevKafka,
    bootstrap: String,
    description: String,
    topics: Vec<Created>,
}

/// Starts (or reaches) the chosen Kafka and creates the stack's topics where
/// missing.
async fn start_kafka(
    options: &DevOptions,
    user_properties: Option<&Vec<(String, String)>>,
) -> Result<StartedKafka, DevError> {
    let specs = options.topic_names.specs(options.partitions);
    let settings = |bootstrap: &str| KafkaSettings {
        bootstrap_servers: bootstrap.to_owned(),
        properties: user_properties.cloned().unwrap_or_default(),
    };
    match &options.kafka {
        KafkaChoice::Mock => {
            let mock = MockCluster::new(3)?;
            let mut topics = Vec::new();
            // The mock has no CreateTopics; it makes topics through its own API.
            for topic in specs {
                mock.create_topic(&topic.name, topic.partitions, 3)?;
                topics.push(Created::Created(topic.name));
            }
            let bootstrap = mock.bootstrap_servers();
            Ok(StartedKafka {
                kafka: DevKafka::Mock(mock),
                bootstrap,
                description: "librdkafka mock cluster (3 brokers in this process; \
                              --kafka=embedded for a real broker)"
                    .to_owned(),
                topics,
            })
        }
        KafkaChoice::Embedded => {
            let dir = options.dir.join(KAFKA_DIR);
            let broker = tokio::task::spawn_blocking(move || start_embedded_broker(&dir))
                .await
                .map_err(|e| DevError::KafkaSetup(format!("starting the broker: {e}")))??;
            let bootstrap = broker.bootstrap_servers().to_owned();
            let description = format!(
                "Apache Kafka {} (single-node KRaft broker started by dev; data and \
                 broker.log in {})",
                embedded::kafka_version(),
                broker.dir().display()
            );
            let kafka = DevKafka::Embedded(broker);
            match slackline_kafka::topics::create(&settings(&bootstrap), &specs, 1).await {
                Ok(topics) => Ok(StartedKafka {
                    kafka,
                    bootstrap,
                    description,
                    topics,
                }),
                Err(e) => {
                    let _ = kafka.stop().await;
                    Err(e.into())
                }
            }
        }
        KafkaChoice::Bootstrap(bootstrap) => {
            let settings = settings(bootstrap);
            let brokers = broker_count(&settings).await?;
            // As many replicas as the cluster can hold, up to the production three.
            let replication = i32::try_from(brokers).unwrap_or(3).clamp(1, 3);
            let topics = slackline_kafka::topics::create(&settings, &specs, replication).await?;
            Ok(StartedKafka {
                kafka: DevKafka::External,
                bootstrap: bootstrap.clone(),
                description: format!(
                    "Apache Kafka at {bootstrap} (an existing cluster, {brokers} broker(s); \
                     missing topics created with replication factor {replication})"
                ),
                topics,
            })
        }
    }
}

/// Starts Kafka with every topic, the database, the edge, the normalizer and the
/// three consumer groups.
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
    let user_properties = user_kafka_properties(&options)?;
    let started = start_kafka(&options, user_properties.as_ref()).await?;
    let archive_url = format!("file://{}", archive_dir.display());
    match start_services(
        options,
        shutdown,
        &started.bootstrap,
        user_properties.as_ref(),
        &archive_url,
    )
    .await
    {
        Ok(services) => Ok(DevStack {
            kafka: started.kafka,
            bootstrap: started.bootstrap,
            kafka_description: started.description,
            names: services.names,
            topics: started.topics,
            edge: services.edge,
            normalizer: services.normalizer,
            archive_url,
            thread_state: services.thread_state,
            timeline_writer: services.timeline_writer,
            notifier: services.notifier,
            slack_sender: services.slack_sender,
            slack_sender_grace: services.slack_sender_grace,
            shutdown: services.shutdown,
            slack_api_base_url: services.slack_api_base_url,
            slack_api: services.slack_api,
            database: services.database,
        }),
        Err(e) => {
            let _ = started.kafka.stop().await;
            Err(e)
        }
    }
}

struct Services {
    names: TopicNames,
    edge: Edge,
    normalizer: Normalizer,
    thread_state: GroupService,
    timeline_writer: GroupService,
    notifier: GroupService,
    slack_sender: SlackSender,
    slack_sender_grace: Duration,
    shutdown: Shutdown,
    slack_api_base_url: String,
    slack_api: Option<SlackApiStandIn>,
    database: DevDatabase,
}

/// Sends every message the stand-in accepts back to the edge as Slack's event of it
/// (from our bot, with the reply's metadata), until the stand-in is dropped.
fn forward_echoes(slack_api: &SlackApiStandIn, edge_url: String, secret: String) {
    let mut posted = slack_api.subscribe();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            let message = match posted.recv().await {
                Ok(message) => message,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "dev: echoes lost (too many at once)");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let body = crate::replies::echo_envelope(&message.channel, &message.ts, &message.body);
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            match crate::send::send_body(&http, &edge_url, &secret, bytes, None).await {
                Ok(200) => tracing::debug!(ts = message.ts, "dev: echo delivered to the edge"),
                Ok(status) => {
                    tracing::warn!(status, ts = message.ts, "dev: the edge refused an echo")
                }
                Err(e) => {
                    tracing::warn!(error = %e, ts = message.ts, "dev: could not deliver an echo")
                }
            }
        }
    });
}

async fn start_services(
    options: DevOptions,
    shutdown: Shutdown,
    bootstrap: &str,
    user_properties: Option<&Vec<(String, String)>>,
    archive_url: &str,
) -> Result<Services, DevError> {
    let database = crate::postgres::provide(&options.database, &options.dir).await?;
    // `slackline threads` and `thread` read this when DATABASE_URL is not set.
    let url_file = options.dir.join(DATABASE_URL_FILE);
    std::fs::write(&url_file, &database.url).map_err(|source| DevError::Dir {
        path: url_file.display().to_string(),
        source,
    })?;
    let consumer_properties = consumer_properties(&options.kafka, user_properties);
    let slack_api = match &options.slack_api_base_url {
        Some(_) => None,
        None => Some(
            SlackApiStandIn::start()
                .await
                .map_err(DevError::SlackStandIn)?,
        ),
    };
    let slack_api_base_url = match (&options.slack_api_base_url, &slack_api) {
        (Some(url), _) => url.clone(),
        (None, Some(stand_in)) => stand_in.base_url.clone(),
        (None, None) => slackline_slack_sender::config::DEFAULT_SLACK_API.to_owned(),
    };
    let stack = StackEnv {
        bootstrap,
        user_properties: user_properties.map(Vec::as_slice).unwrap_or_default(),
        consumer_properties: &consumer_properties,
        database_url: &database.url,
        archive_url,
        slack_api_base_url: &slack_api_base_url,
        own_stand_in: slack_api.is_some(),
    };
    let env = |service| service_env(&options, service, &stack);
    let config_error = |service: &'static str| {
        move |source: slackline_service::ConfigError| DevError::Config { service, source }
    };
    // Every configuration is read first, so that a bad variable starts nothing.
    let edge_config = EdgeConfig::from_env(env(Service::Edge)).map_err(config_error("edge"))?;
    let normalizer_config =
        NormalizerConfig::from_env(env(Service::Normalizer)).map_err(config_error("normalizer"))?;
    let thread_state_config =
        slackline_thread_state::ThreadStateConfig::from_env(env(Service::Group("thread-state")))
            .map_err(config_error("thread-state"))?;
    let timeline_config = slackline_timeline_writer::TimelineWriterConfig::from_env(env(
        Service::Group("timeline-writer"),
    ))
    .map_err(config_error("timeline-writer"))?;
    let notifier_config =
        slackline_notifier::NotifierConfig::from_env(env(Service::Group("notifier")))
            .map_err(config_error("notifier"))?;
    let sender_config =
        slackline_slack_sender::SlackSenderConfig::from_env(env(Service::Group("slack-sender")))
            .map_err(config_error("slack-sender"))?;
    if let Some(warning) = normalizer_config.self_ids_warning() {
        tracing::warn!("{warning}");
    }
    let slack_sender_grace = sender_config.runtime.shutdown_grace;
    let names = options.topic_names.clone();
    let edge = Edge::start(edge_config, shutdown.clone()).await?;
    let normalizer = Normalizer::start(normalizer_config, shutdown.clone()).await?;
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
    let notifier = slackline_notifier::start(notifier_config, shutdown.clone())
        .await
        .map_err(|e| DevError::Group {
            service: "notifier",
            message: e.to_string(),
        })?;
    // As the slack-sender's binary does: its posts in flight are waited for at
    // shutdown (`DevStack::wait`).
    let slack_sender = slackline_slack_sender::start_sender(sender_config, shutdown.clone())
        .await
        .map_err(|e| DevError::Group {
            service: "slack-sender",
            message: e.to_string(),
        })?;
    if let Some(stand_in) = &slack_api {
        forward_echoes(
            stand_in,
            format!("http://{}/slack/events", edge.addr),
            echo_secret(&options),
        );
    }
    Ok(Services {
        names,
        edge,
        normalizer,
        thread_state,
        timeline_writer,
        notifier,
        slack_sender,
        slack_sender_grace,
        shutdown,
        slack_api_base_url,
        slack_api,
        database,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kafka_choice_parses_mock_embedded_and_bootstrap_servers() {
        assert_eq!("mock".parse::<KafkaChoice>(), Ok(KafkaChoice::Mock));
        assert_eq!("embedded".parse::<KafkaChoice>(), Ok(KafkaChoice::Embedded));
        assert_eq!(
            "127.0.0.1:9092,127.0.0.1:9093".parse::<KafkaChoice>(),
            Ok(KafkaChoice::Bootstrap(
                "127.0.0.1:9092,127.0.0.1:9093".into()
            ))
        );
        assert!("  ".parse::<KafkaChoice>().is_err());
        assert_eq!(KafkaChoice::default().to_string(), "mock");
    }

    fn stack_env<'a>(props: &'a [(String, String)], own_stand_in: bool) -> StackEnv<'a> {
        StackEnv {
            bootstrap: "b:9092",
            user_properties: &[],
            consumer_properties: props,
            database_url: "postgres://x",
            archive_url: "file:///tmp/archive",
            slack_api_base_url: "http://127.0.0.1:1/api",
            own_stand_in,
        }
    }

    #[test]
    fn only_dev_own_stand_in_gets_the_made_up_token() {
        let sender = Service::Group("slack-sender");
        // A real (or user-chosen) Slack API without tokens: no made-up token.
        let o = options(KafkaChoice::Embedded, &[]);
        let env = service_env(&o, sender, &stack_env(&[], false));
        assert_eq!(env.get("SLACK_BOT_TOKENS"), None);
        assert_eq!(
            env.get("SLACK_API_BASE_URL"),
            Some("http://127.0.0.1:1/api")
        );
        // Its own stand-in without tokens: the made-up one.
        let env = service_env(&o, sender, &stack_env(&[], true));
        assert_eq!(env.get("SLACK_BOT_TOKENS"), Some(STAND_IN_TOKENS));
        // ... and never for another group.
        let env = service_env(&o, Service::Group("notifier"), &stack_env(&[], true));
        assert_eq!(env.get("SLACK_BOT_TOKENS"), None);
        // The user's tokens always win.
        let o = options(KafkaChoice::Embedded, &[("SLACK_BOT_TOKENS", "T1=xoxb-1")]);
        let env = service_env(&o, sender, &stack_env(&[], true));
        assert_eq!(env.get("SLACK_BOT_TOKENS"), Some("T1=xoxb-1"));
    }

    #[test]
    fn every_service_config_is_read_by_its_own_from_env() {
        let o = options(
            KafkaChoice::Embedded,
            &[
                ("SLACK_SIGNING_SECRETS", "s1,s2"),
                ("SELF_BOT_IDS", "BUSER"),
                ("ARCHIVE_URL", "s3://not/dev/s"),
                ("RAW_TOPIC", "not-dev-s"),
            ],
        );
        let stack = stack_env(&[], true);
        let edge = EdgeConfig::from_env(service_env(&o, Service::Edge, &stack)).unwrap();
        assert_eq!(edge.secrets.len(), 2);
        assert_eq!(edge.archive_url, "file:///tmp/archive");
        assert_eq!(edge.raw_topic, "p1.slack.events.raw");
        assert_eq!(edge.shutdown_grace, Duration::from_secs(5));
        let normalizer =
            NormalizerConfig::from_env(service_env(&o, Service::Normalizer, &stack)).unwrap();
        assert_eq!(normalizer.raw_topic, "p1.slack.events.raw");
        assert_eq!(normalizer.messages_topic, "p1.slack.messages.v1");
        assert_eq!(normalizer.dlq_topic, "p1.slack.events.raw.dlq");
        assert_eq!(normalizer.group_id, "p1.normalizer");
        assert_eq!(normalizer.slack_api_base_url, "http://127.0.0.1:1/api");
        for id in ["BUSER", STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID] {
            assert!(normalizer.rules.self_bot_ids.contains(id), "{id}");
        }
        assert!(normalizer.rules.self_app_ids.contains(STAND_IN_APP_ID));
        assert_eq!(echo_secret(&o), "s1");
        assert_eq!(echo_secret(&options(KafkaChoice::Mock, &[])), DEV_SECRET);
        // Without a stand-in, no made-up self ids.
        let normalizer = NormalizerConfig::from_env(service_env(
            &o,
            Service::Normalizer,
            &stack_env(&[], false),
        ))
        .unwrap();
        assert_eq!(normalizer.rules.self_bot_ids.len(), 1);
        // Distinct admin addresses when a port is given.
        let o = DevOptions {
            admin_port: 9000,
            ..options(KafkaChoice::Embedded, &[])
        };
        let admins: Vec<String> = [
            Service::Edge,
            Service::Normalizer,
            Service::Group("thread-state"),
            Service::Group("timeline-writer"),
            Service::Group("notifier"),
            Service::Group("slack-sender"),
        ]
        .into_iter()
        .map(|s| {
            service_env(&o, s, &stack)
                .get("ADMIN_ADDR")
                .unwrap()
                .to_owned()
        })
        .collect();
        let unique: std::collections::HashSet<_> = admins.iter().collect();
        assert_eq!(unique.len(), admins.len(), "{admins:?}");
    }

    #[test]
    fn only_the_mock_gets_short_fetch_waits() {
        let mock = consumer_properties(&KafkaChoice::Mock, None);
        assert_eq!(mock, vec![("fetch.wait.max.ms".into(), "25".into())]);
        assert!(consumer_properties(&KafkaChoice::Embedded, None).is_empty());
        assert!(consumer_properties(&KafkaChoice::Bootstrap("b:9092".into()), None).is_empty());
        let user = vec![("session.timeout.ms".to_owned(), "6000".to_owned())];
        assert_eq!(consumer_properties(&KafkaChoice::Mock, Some(&user)), user);
    }

    fn options(kafka: KafkaChoice, service_env: &[(&str, &str)]) -> DevOptions {
        DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: PathBuf::from("/tmp/unused"),
            kafka,
            topic_names: TopicNames::with_prefix("p1."),
            partitions: 2,
            slack_api_base_url: None,
            database: DatabaseChoice::Auto,
            service_env: service_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn each_group_gets_its_own_prefixed_names_whatever_the_user_set() {
        let options = options(
            KafkaChoice::Embedded,
            &[
                ("GROUP_ID", "shared-by-mistake"),
                ("DLQ_TOPIC", "one.dlq"),
                ("GROUPING_MODE", "time-window"),
            ],
        );
        let notifier = Service::Group("notifier");
        let env = service_env(&options, notifier, &stack_env(&[], false));
        assert_eq!(env.get("GROUP_ID"), Some("p1.notifier"));
        assert_eq!(env.get("SOURCE_TOPIC"), Some("p1.slack.messages.v1"));
        assert_eq!(
            env.get("THREAD_EVENTS_TOPIC"),
            Some("p1.support.thread-events")
        );
        // The runtime derives `<GROUP_ID>.retry` and `.dlq`.
        assert_eq!(env.get("DLQ_TOPIC"), None);
        assert_eq!(env.get("GROUPING_MODE"), Some("time-window"));
        // A real broker: no KAFKA_PROPERTIES unless the user set some.
        assert_eq!(env.get("KAFKA_PROPERTIES"), None);
        let props = consumer_properties(&KafkaChoice::Mock, None);
        let env = service_env(&options, notifier, &stack_env(&props, false));
        assert_eq!(env.get("KAFKA_PROPERTIES"), Some(MOCK_KAFKA_PROPERTIES));
    }

    #[test]
    fn user_kafka_properties_are_parsed_or_named() {
        let ok = options(KafkaChoice::Mock, &[("KAFKA_PROPERTIES", "a=1;b=2")]);
        assert_eq!(
            user_kafka_properties(&ok).unwrap(),
            Some(vec![("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        let bad = options(KafkaChoice::Mock, &[("KAFKA_PROPERTIES", "nonsense")]);
        assert!(user_kafka_properties(&bad)
            .unwrap_err()
            .to_string()
            .contains("KAFKA_PROPERTIES"));
        assert_eq!(
            user_kafka_properties(&options(KafkaChoice::Mock, &[])).unwrap(),
            None
        );
    }
}
