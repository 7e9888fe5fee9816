//! The edge's configuration, from environment variables (see the README's table).

use std::net::SocketAddr;
use std::time::Duration;

use slackline_archive::{ArchiveOptions, S3Settings};
use slackline_kafka::{topics, KafkaSettings};
use slackline_service::{ConfigError, Env, LogFormat};
use slackline_slack::SigningSecrets;

/// Everything the edge needs to run.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_PROPERTIES`.
    pub kafka: KafkaSettings,
    /// `SLACK_SIGNING_SECRETS`: every secret accepted at once.
    pub secrets: SigningSecrets,
    /// `ARCHIVE_URL`: `s3://bucket/prefix` or `file:///path`.
    pub archive_url: String,
    /// The `AWS_*` settings used for an `s3://` archive.
    pub s3: S3Settings,
    /// `ARCHIVE_QUEUE_CAPACITY`, `ARCHIVE_S3_LINGER_MS`, `ARCHIVE_S3_MAX_PUTS`.
    pub archive: ArchiveOptions,
    /// `EDGE_ADDR`: where Slack's requests arrive.
    pub edge_addr: SocketAddr,
    /// `ADMIN_ADDR`: `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// `RAW_TOPIC`.
    pub raw_topic: String,
    /// `EDGE_DEADLINE_MS`: counted from the request's headers, the body's arrival, the
    /// archive write and Kafka's acknowledgement must all finish within this, else
    /// 503 (408 when the body is what did not arrive). Kept under Slack's 3 s so that
    /// Slack sees our answer, not its own timeout.
    pub deadline: Duration,
    /// `EDGE_MAX_BODY_BYTES`: larger bodies get 413.
    pub max_body_bytes: usize,
    /// `EDGE_SHUTDOWN_GRACE_MS`: how long in-flight requests may take to finish on
    /// SIGTERM before the producer is flushed and the process exits.
    pub shutdown_grace: Duration,
    /// `EDGE_HEADER_READ_TIMEOUT_MS`, `EDGE_BODY_READ_TIMEOUT_MS`,
    /// `EDGE_IDLE_TIMEOUT_MS`, `EDGE_MAX_CONNECTIONS`, `EDGE_MAX_IN_FLIGHT`.
    pub limits: Limits,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
}

/// Default for `EDGE_DEADLINE_MS`.
pub const DEFAULT_DEADLINE_MS: u64 = 2500;
/// Default for `EDGE_MAX_BODY_BYTES`: Slack's event bodies are far below this, and it
/// stays under librdkafka's default `message.max.bytes` (1,000,000 bytes including
/// headers), so an accepted body can always be produced rather than failing forever.
pub const DEFAULT_MAX_BODY_BYTES: usize = 900_000;

/// What keeps slow or too many clients from tying up the edge. Slack sends a whole
/// request at once and waits at most 3 s for the answer, so a client that takes
/// seconds to send its request is broken or hostile; and when the edge is full it
/// answers 503 at once (Slack retries) rather than letting requests queue past
/// Slack's 3 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `EDGE_HEADER_READ_TIMEOUT_MS`: a request's headers must be complete within
    /// this, counted from the connection's accept (first request) or from the first
    /// byte of the request (later requests on a keep-alive connection); else the
    /// connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// `EDGE_BODY_READ_TIMEOUT_MS`: the body must be complete within this after the
    /// headers, else 408 and the connection is closed. Never more than
    /// `EDGE_DEADLINE_MS`, which counts from the headers too: reading the body is
    /// part of the deadline.
    pub body_read_timeout: Duration,
    /// `EDGE_IDLE_TIMEOUT_MS`: a keep-alive connection with no request in progress is
    /// closed after this. Keep it above the keep-alive timeout of the load balancer
    /// in front, or it may send a request on a connection the edge is closing.
    pub idle_timeout: Duration,
    /// `EDGE_MAX_CONNECTIONS`: open connections on the Slack port; a connection over
    /// it is closed at once (the client sees a connection error and retries).
    pub max_connections: usize,
    /// `EDGE_MAX_IN_FLIGHT`: requests being handled (from their headers to their
    /// answer); one more is answered 503 with `Retry-After` at once.
    pub max_in_flight: usize,
}

/// Default for `EDGE_HEADER_READ_TIMEOUT_MS`.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 2000;
/// Default for `EDGE_BODY_READ_TIMEOUT_MS`: Slack's bodies are kilobytes; this leaves
/// at least 1.5 s of the default deadline to the archive and Kafka.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 1000;
/// Default for `EDGE_IDLE_TIMEOUT_MS`: above the 60 s upstream keep-alive of nginx
/// and of AWS load balancers.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 75_000;
/// Default for `EDGE_MAX_CONNECTIONS`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default for `EDGE_MAX_IN_FLIGHT`: Slack sends at most 30,000 events an hour per
/// workspace (about 8 a second), each answered in tens of milliseconds; 256 in
/// flight is hundreds of events a second at the full 2.5 s deadline, and bounds the
/// bodies held in memory (at most 256 × `EDGE_MAX_BODY_BYTES`).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            body_read_timeout: Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// A duration in milliseconds within `range` (`why` explains the bound).
fn millis(env: &mut Env, name: &str, default: u64, range: (u64, u64), why: &str) -> Duration {
    let ms: u64 = env.parse_or(name, default);
    if !(range.0..=range.1).contains(&ms) {
        env.problem(
            name,
            format!("must be between {} and {}{why}", range.0, range.1),
        );
    }
    Duration::from_millis(ms)
}

impl Limits {
    fn from_env(env: &mut Env, deadline_ms: u64) -> Limits {
        let header_read_timeout = millis(
            env,
            "EDGE_HEADER_READ_TIMEOUT_MS",
            DEFAULT_HEADER_READ_TIMEOUT_MS,
            (100, 60_000),
            "",
        );
        let body_read_timeout = millis(
            env,
            "EDGE_BODY_READ_TIMEOUT_MS",
            DEFAULT_BODY_READ_TIMEOUT_MS,
            (100, deadline_ms),
            " (EDGE_DEADLINE_MS: the deadline includes reading the body)",
        );
        let idle_timeout = millis(
            env,
            "EDGE_IDLE_TIMEOUT_MS",
            DEFAULT_IDLE_TIMEOUT_MS,
            (1000, 3_600_000),
            "",
        );
        let max_connections = env.parse_or("EDGE_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS);
        if !(1..=1_000_000).contains(&max_connections) {
            env.problem("EDGE_MAX_CONNECTIONS", "must be between 1 and 1000000");
        }
        let max_in_flight = env.parse_or("EDGE_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 || max_in_flight > max_connections {
            env.problem(
                "EDGE_MAX_IN_FLIGHT",
                "must be between 1 and EDGE_MAX_CONNECTIONS (each request needs a connection)",
            );
        }
        Limits {
            header_read_timeout,
            body_read_timeout,
            idle_timeout,
            max_connections,
            max_in_flight,
        }
    }
}

impl EdgeConfig {
    /// Reads the configuration, reporting every problem at once.
    pub fn from_env(mut env: Env) -> Result<EdgeConfig, ConfigError> {
        let kafka = KafkaSettings::from_env(&mut env);
        let secrets = env.required_with("SLACK_SIGNING_SECRETS", |raw| {
            SigningSecrets::parse_list(raw).map_err(|e| e.to_string())
        });
        let archive_url = env.required("ARCHIVE_URL");
        let known_scheme = archive_url.starts_with("s3://") || archive_url.starts_with("file:///");
        if !archive_url.is_empty() && !known_scheme {
            env.problem(
                "ARCHIVE_URL",
                "expected s3://bucket/prefix or file:///absolute/path",
            );
        }
        let s3 = S3Settings::from_env(&mut env);
        let archive = ArchiveOptions::from_env(&mut env);
        let edge_addr = env.parse_or("EDGE_ADDR", SocketAddr::from(([0, 0, 0, 0], 3000)));
        let admin_addr = env.parse_or("ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9000)));
        let raw_topic = env.string_or("RAW_TOPIC", topics::RAW_EVENTS);
        let deadline_ms: u64 = env.parse_or("EDGE_DEADLINE_MS", DEFAULT_DEADLINE_MS);
        if !(100..=2900).contains(&deadline_ms) {
            env.problem(
                "EDGE_DEADLINE_MS",
                "must be between 100 and 2900 (Slack waits 3000 ms)",
            );
        }
        let max_body_bytes = env.parse_or("EDGE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            env.problem("EDGE_MAX_BODY_BYTES", "must be greater than 0");
        }
        let shutdown_grace_ms: u64 = env.parse_or("EDGE_SHUTDOWN_GRACE_MS", 10_000);
        if shutdown_grace_ms < deadline_ms {
            env.problem(
                "EDGE_SHUTDOWN_GRACE_MS",
                "must be at least EDGE_DEADLINE_MS, or requests in flight at SIGTERM are cut off",
            );
        }
        let limits = Limits::from_env(&mut env, deadline_ms);
        let log_format = env.parse_or("LOG_FORMAT", LogFormat::Json);
        env.finish()?;
        let Some(secrets) = secrets else {
            // finish() reported the missing secrets already; this is unreachable.
            return Err(ConfigError {
                problems: vec!["SLACK_SIGNING_SECRETS: required but not set".into()],
            });
        };
        Ok(EdgeConfig {
            kafka,
            secrets,
            archive_url,
            s3,
            archive,
            edge_addr,
            admin_addr,
            raw_topic,
            deadline: Duration::from_millis(deadline_ms),
            max_body_bytes,
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
            limits,
            log_format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_takes_the_documented_defaults() {
        let config = EdgeConfig::from_env(Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("SLACK_SIGNING_SECRETS", "a,b"),
            ("ARCHIVE_URL", "file:///tmp/a"),
        ]))
        .unwrap();
        assert_eq!(config.edge_addr.to_string(), "0.0.0.0:3000");
        assert_eq!(config.admin_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(config.raw_topic, "slack.events.raw");
        assert_eq!(config.secrets.len(), 2);
        assert_eq!(config.deadline, Duration::from_millis(2500));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.body_read_timeout, Duration::from_secs(1));
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(75));
        assert_eq!(config.limits.max_connections, 1024);
        assert_eq!(config.limits.max_in_flight, 256);
    }

    #[test]
    fn limits_are_read_and_checked() {
        let base = [
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("SLACK_SIGNING_SECRETS", "a"),
            ("ARCHIVE_URL", "file:///tmp/a"),
        ];
        let config = EdgeConfig::from_env(Env::from_pairs(base.into_iter().chain([
            ("EDGE_HEADER_READ_TIMEOUT_MS", "500"),
            ("EDGE_BODY_READ_TIMEOUT_MS", "700"),
            ("EDGE_IDLE_TIMEOUT_MS", "30000"),
            ("EDGE_MAX_CONNECTIONS", "10"),
            ("EDGE_MAX_IN_FLIGHT", "4"),
        ])))
        .unwrap();
        assert_eq!(
            config.limits,
            Limits {
                header_read_timeout: Duration::from_millis(500),
                body_read_timeout: Duration::from_millis(700),
                idle_timeout: Duration::from_secs(30),
                max_connections: 10,
                max_in_flight: 4,
            }
        );
        let err = EdgeConfig::from_env(Env::from_pairs(base.into_iter().chain([
            ("EDGE_DEADLINE_MS", "1000"),
            ("EDGE_HEADER_READ_TIMEOUT_MS", "0"),
            ("EDGE_BODY_READ_TIMEOUT_MS", "1500"),
            ("EDGE_IDLE_TIMEOUT_MS", "10"),
            ("EDGE_MAX_CONNECTIONS", "10"),
            ("EDGE_MAX_IN_FLIGHT", "11"),
        ])))
        .unwrap_err()
        .to_string();
        for name in [
            "EDGE_HEADER_READ_TIMEOUT_MS",
            "EDGE_BODY_READ_TIMEOUT_MS",
            "EDGE_IDLE_TIMEOUT_MS",
            "EDGE_MAX_IN_FLIGHT",
        ] {
            assert!(err.contains(name), "{name} not named in:\n{err}");
        }
        assert!(!err.contains("EDGE_MAX_CONNECTIONS:"), "{err}");
    }

    #[test]
    fn every_bad_variable_is_named() {
        let err = EdgeConfig::from_env(Env::from_pairs([
            ("ARCHIVE_URL", "ftp://x"),
            ("EDGE_ADDR", "nowhere"),
            ("EDGE_DEADLINE_MS", "5000"),
            ("LOG_FORMAT", "xml"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for name in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "SLACK_SIGNING_SECRETS",
            "ARCHIVE_URL",
            "EDGE_ADDR",
            "EDGE_DEADLINE_MS",
            "LOG_FORMAT",
        ] {
            assert!(text.contains(name), "{name} not named in:\n{text}");
        }
    }
}
