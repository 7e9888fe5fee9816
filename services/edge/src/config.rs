//! The edge's configuration, from environment variables (see the README's table).

use std::net::SocketAddr;
use std::time::Duration;

use slackline_archive::S3Settings;
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
    /// `EDGE_ADDR`: where Slack's requests arrive.
    pub edge_addr: SocketAddr,
    /// `ADMIN_ADDR`: `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// `RAW_TOPIC`.
    pub raw_topic: String,
    /// `EDGE_DEADLINE_MS`: archive and Kafka must both succeed within this, else 503.
    /// Kept under Slack's 3 s so that Slack sees our 503, not its own timeout.
    pub deadline: Duration,
    /// `EDGE_MAX_BODY_BYTES`: larger bodies get 413.
    pub max_body_bytes: usize,
    /// `EDGE_SHUTDOWN_GRACE_MS`: how long in-flight requests may take to finish on
    /// SIGTERM before the producer is flushed and the process exits.
    pub shutdown_grace: Duration,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
}

/// Default for `EDGE_DEADLINE_MS`.
pub const DEFAULT_DEADLINE_MS: u64 = 2500;
/// Default for `EDGE_MAX_BODY_BYTES`: Slack's event bodies are far below this, and it
/// stays under librdkafka's default `message.max.bytes` (1,000,000 bytes including
/// headers), so an accepted body can always be produced rather than failing forever.
pub const DEFAULT_MAX_BODY_BYTES: usize = 900_000;

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
            edge_addr,
            admin_addr,
            raw_topic,
            deadline: Duration::from_millis(deadline_ms),
            max_body_bytes,
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
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
