//! The slack-sender's configuration, from environment variables (see the README's
//! table): Kafka, PostgreSQL, the consumer runtime, the admin port, the log format,
//! and how to reach Slack.

use std::net::SocketAddr;
use std::time::Duration;

use slackline_consumer::RuntimeConfig;
use slackline_kafka::{topics, KafkaSettings};
use slackline_service::{ConfigError, Env, LogFormat};
use slackline_slack_api::BotTokens;
use slackline_store::StoreSettings;

/// The consumer group, and the default of `GROUP_ID`.
pub const GROUP: &str = "slack-sender";

/// Default of `SLACK_API_BASE_URL`.
pub const DEFAULT_SLACK_API: &str = slackline_slack_api::DEFAULT_BASE_URL;

/// Default of `SLACK_SENDER_CHANNEL_INTERVAL_MS`: Slack allows about one message per
/// second per channel.
pub const DEFAULT_CHANNEL_INTERVAL: Duration = Duration::from_millis(1000);

/// Default of `SLACK_SENDER_HTTP_TIMEOUT_MS`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_millis(5_000);

/// Default of `SLACK_SENDER_CONNECT_TIMEOUT_MS`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(3_000);

/// How the sender talks to Slack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackConfig {
    /// `SLACK_API_BASE_URL` (default `https://slack.com/api`).
    pub base_url: String,
    /// `SLACK_BOT_TOKENS`: `T123=xoxb-…,…`; an entry `*=xoxb-…` serves every team
    /// without one of its own. Without any, every reply goes to the DLQ (`no_token`).
    pub tokens: BotTokens,
    /// `SLACK_SENDER_CHANNEL_INTERVAL_MS` (default 1000): the least time between two
    /// posts to one channel.
    pub channel_interval: Duration,
    /// `SLACK_SENDER_HTTP_TIMEOUT_MS` (default 5000, under the shutdown and revoke
    /// graces): the whole request. A request
    /// that was sent and got no answer within it is ambiguous.
    pub http_timeout: Duration,
    /// `SLACK_SENDER_CONNECT_TIMEOUT_MS` (default 3000): connecting (TCP and TLS);
    /// nothing was sent yet, so the reply is retried.
    pub connect_timeout: Duration,
    /// `SLACK_SENDER_AS_AGENT` (default `true`): post with the agent's display name as
    /// `username` (needs the `chat:write.customize` scope); `false` posts as the app.
    pub as_agent: bool,
}

/// Everything the slack-sender needs to run.
#[derive(Debug, Clone)]
pub struct SlackSenderConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_PROPERTIES`.
    pub kafka: KafkaSettings,
    /// `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`, `DATABASE_STATEMENT_TIMEOUT_MS`,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`.
    pub store: StoreSettings,
    /// `GROUP_ID` (default `slack-sender`), `SOURCE_TOPIC` (default
    /// `support.replies`), `RETRY_TOPIC`, `DLQ_TOPIC`, `RETRY_DELAYS_MS`,
    /// `QUICK_RETRIES`, `MAX_CONCURRENT_KEYS`, ...
    pub runtime: RuntimeConfig,
    /// `ADMIN_ADDR` (default `0.0.0.0:9000`): `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// `LOG_FORMAT` (`json` or `text`, default `json`).
    pub log_format: LogFormat,
    /// Slack.
    pub slack: SlackConfig,
}

fn millis(env: &mut Env, name: &str, default: Duration, min: u64) -> Duration {
    let ms: u64 = env.parse_or(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX));
    if ms < min {
        env.problem(name, format!("must be at least {min} ms"));
        return default;
    }
    Duration::from_millis(ms)
}

impl SlackConfig {
    /// The Slack settings, recording every problem in `env`.
    pub fn from_env(env: &mut Env) -> SlackConfig {
        let tokens = match env.get("SLACK_BOT_TOKENS").map(BotTokens::parse) {
            // Allowed (the service starts and says so): every reply then lands in
            // the DLQ with `no bot token configured for team …`.
            None => BotTokens::default(),
            Some(Ok(tokens)) => tokens,
            Some(Err(e)) => {
                env.problem("SLACK_BOT_TOKENS", e);
                BotTokens::default()
            }
        };
        let base_url = env
            .string_or("SLACK_API_BASE_URL", DEFAULT_SLACK_API)
            .trim_end_matches('/')
            .to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            env.problem("SLACK_API_BASE_URL", "must be an http or https URL");
        }
        SlackConfig {
            base_url,
            tokens,
            channel_interval: millis(
                env,
                "SLACK_SENDER_CHANNEL_INTERVAL_MS",
                DEFAULT_CHANNEL_INTERVAL,
                0,
            ),
            http_timeout: millis(env, "SLACK_SENDER_HTTP_TIMEOUT_MS", DEFAULT_HTTP_TIMEOUT, 1),
            connect_timeout: millis(
                env,
                "SLACK_SENDER_CONNECT_TIMEOUT_MS",
                DEFAULT_CONNECT_TIMEOUT,
                1,
            ),
            as_agent: env.parse_or("SLACK_SENDER_AS_AGENT", true),
        }
    }
}

impl SlackSenderConfig {
    /// Reads the configuration, reporting every problem at once.
    ///
    /// # Errors
    ///
    /// Every missing or malformed variable, each named.
    pub fn from_env(mut env: Env) -> Result<SlackSenderConfig, ConfigError> {
        let kafka = KafkaSettings::from_env(&mut env);
        let store = StoreSettings::from_env(&mut env);
        let runtime = RuntimeConfig::from_env(&mut env, GROUP, topics::REPLIES);
        if let Err(e) = runtime.validate() {
            env.problem(
                "GROUP_ID/SOURCE_TOPIC/RETRY_TOPIC/DLQ_TOPIC/MAX_CONCURRENT_KEYS",
                e,
            );
        }
        let slack = SlackConfig::from_env(&mut env);
        let config = SlackSenderConfig {
            kafka,
            store,
            runtime,
            admin_addr: env.parse_or("ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9000))),
            log_format: env.parse_or("LOG_FORMAT", LogFormat::Json),
            slack,
        };
        env.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(extra: &[(&'static str, &'static str)]) -> Env {
        let mut pairs = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("DATABASE_URL", "postgres://u@db:5432/slackline"),
            ("SLACK_BOT_TOKENS", "T1=xoxb-secret-one"),
        ];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    #[test]
    fn defaults() {
        let config = SlackSenderConfig::from_env(env(&[])).unwrap();
        assert_eq!(
            config.runtime,
            RuntimeConfig::new("slack-sender", "support.replies")
        );
        assert_eq!(config.slack.base_url, "https://slack.com/api");
        assert_eq!(config.slack.channel_interval, Duration::from_secs(1));
        assert!(config.slack.as_agent);
        assert_eq!(config.slack.tokens.get("T1"), Some("xoxb-secret-one"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("xoxb-secret-one"), "{debug}");
    }

    #[test]
    fn problems_are_named_at_once() {
        let err = SlackSenderConfig::from_env(Env::from_pairs([
            ("SLACK_BOT_TOKENS", "xoxb-1=T1"),
            ("SLACK_API_BASE_URL", "slack.com/api"),
            ("SLACK_SENDER_HTTP_TIMEOUT_MS", "0"),
            ("SLACK_SENDER_AS_AGENT", "maybe"),
        ]))
        .unwrap_err()
        .to_string();
        for name in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "DATABASE_URL",
            "SLACK_BOT_TOKENS",
            "SLACK_API_BASE_URL",
            "SLACK_SENDER_HTTP_TIMEOUT_MS",
            "SLACK_SENDER_AS_AGENT",
        ] {
            assert!(err.contains(name), "{name} missing in {err}");
        }
    }
}
