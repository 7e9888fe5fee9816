//! The timeline-writer's configuration, from environment variables (see the README's
//! table): Kafka, PostgreSQL, the consumer runtime, the admin port and the log format.

use std::net::SocketAddr;

use slackline_consumer::RuntimeConfig;
use slackline_kafka::{topics, KafkaSettings};
use slackline_service::{ConfigError, Env, LogFormat};
use slackline_store::StoreSettings;

/// The consumer group, and the default of `GROUP_ID`.
pub const GROUP: &str = "timeline-writer";

/// Everything the timeline-writer needs to run.
#[derive(Debug, Clone)]
pub struct TimelineWriterConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_PROPERTIES`.
    pub kafka: KafkaSettings,
    /// `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`, `DATABASE_STATEMENT_TIMEOUT_MS`,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`.
    pub store: StoreSettings,
    /// `GROUP_ID` (default `timeline-writer`), `SOURCE_TOPIC` (default
    /// `slack.messages.v1`), `RETRY_TOPIC`, `DLQ_TOPIC`, `RETRY_DELAYS_MS`,
    /// `QUICK_RETRIES`, `MAX_CONCURRENT_KEYS`.
    pub runtime: RuntimeConfig,
    /// `ADMIN_ADDR` (default `0.0.0.0:9000`): `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// `LOG_FORMAT` (`json` or `text`, default `json`).
    pub log_format: LogFormat,
}

impl TimelineWriterConfig {
    /// Reads the configuration, reporting every problem at once.
    ///
    /// # Errors
    ///
    /// Every missing or malformed variable, each named.
    pub fn from_env(mut env: Env) -> Result<TimelineWriterConfig, ConfigError> {
        let kafka = KafkaSettings::from_env(&mut env);
        let store = StoreSettings::from_env(&mut env);
        let runtime = RuntimeConfig::from_env(&mut env, GROUP, topics::MESSAGES);
        if let Err(e) = runtime.validate() {
            env.problem(
                "GROUP_ID/SOURCE_TOPIC/RETRY_TOPIC/DLQ_TOPIC/MAX_CONCURRENT_KEYS",
                e,
            );
        }
        let config = TimelineWriterConfig {
            kafka,
            store,
            runtime,
            admin_addr: env.parse_or("ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9000))),
            log_format: env.parse_or("LOG_FORMAT", LogFormat::Json),
        };
        env.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn required() -> Vec<(&'static str, &'static str)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("DATABASE_URL", "postgres://u@db:5432/slackline"),
        ]
    }

    #[test]
    fn defaults() {
        let config = TimelineWriterConfig::from_env(Env::from_pairs(required())).unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "k:9092");
        assert_eq!(
            config.store,
            StoreSettings::new("postgres://u@db:5432/slackline")
        );
        assert_eq!(
            config.runtime,
            RuntimeConfig::new("timeline-writer", "slack.messages.v1")
        );
        assert_eq!(config.runtime.retry_topic, "timeline-writer.retry");
        assert_eq!(config.runtime.dlq_topic, "timeline-writer.dlq");
        assert_eq!(config.admin_addr, SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn overrides() {
        let mut pairs = required();
        pairs.extend([
            ("GROUP_ID", "timeline-writer-blue"),
            ("RETRY_DELAYS_MS", "100,1000"),
            ("QUICK_RETRIES", "1"),
            ("MAX_CONCURRENT_KEYS", "4"),
            ("DATABASE_MAX_CONNECTIONS", "3"),
            ("DATABASE_STATEMENT_TIMEOUT_MS", "750"),
            ("KAFKA_PROPERTIES", "security.protocol=ssl"),
            ("ADMIN_ADDR", "127.0.0.1:9102"),
            ("LOG_FORMAT", "text"),
        ]);
        let config = TimelineWriterConfig::from_env(Env::from_pairs(pairs)).unwrap();
        assert_eq!(config.runtime.group_id, "timeline-writer-blue");
        assert_eq!(config.runtime.retry_topic, "timeline-writer-blue.retry");
        assert_eq!(config.runtime.source_topic, "slack.messages.v1");
        assert_eq!(
            config.runtime.retry_delays,
            vec![Duration::from_millis(100), Duration::from_secs(1)]
        );
        assert_eq!(config.runtime.quick_retries, 1);
        assert_eq!(config.runtime.max_concurrent_keys, 4);
        assert_eq!(config.store.max_connections, 3);
        assert_eq!(config.store.statement_timeout, Duration::from_millis(750));
        assert_eq!(
            config.kafka.properties,
            vec![("security.protocol".to_owned(), "ssl".to_owned())]
        );
        assert_eq!(config.admin_addr, SocketAddr::from(([127, 0, 0, 1], 9102)));
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let err = TimelineWriterConfig::from_env(Env::from_pairs([
            ("ADMIN_ADDR", "nowhere"),
            ("LOG_FORMAT", "xml"),
            ("RETRY_DELAYS_MS", "5s"),
            ("MAX_CONCURRENT_KEYS", "0"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for name in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "DATABASE_URL",
            "DATABASE_MAX_CONNECTIONS",
            "ADMIN_ADDR",
            "LOG_FORMAT",
            "RETRY_DELAYS_MS",
            "max_concurrent_keys",
        ] {
            assert!(text.contains(name), "{name} missing from: {text}");
        }
        assert_eq!(err.problems.len(), 7, "{text}");
    }

    #[test]
    fn retry_and_dlq_topics_must_differ() {
        let mut pairs = required();
        pairs.extend([("RETRY_TOPIC", "same"), ("DLQ_TOPIC", "same")]);
        let err = TimelineWriterConfig::from_env(Env::from_pairs(pairs))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retry and DLQ topics must differ"), "{err}");
    }
}
