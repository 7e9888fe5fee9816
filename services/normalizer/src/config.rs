//! The normalizer's configuration, from environment variables (see the README's table).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use slackline_kafka::{topics, KafkaSettings};
use slackline_service::{ConfigError, Env, LogFormat};
use slackline_slack_api::BotTokens;

use crate::normalize::Rules;

/// Default for `SLACK_API_BASE_URL`.
pub const DEFAULT_SLACK_API: &str = "https://slack.com/api";

/// Everything the normalizer needs to run.
#[derive(Debug, Clone)]
pub struct NormalizerConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_PROPERTIES`.
    pub kafka: KafkaSettings,
    /// `RAW_TOPIC`.
    pub raw_topic: String,
    /// `MESSAGES_TOPIC`.
    pub messages_topic: String,
    /// `RAW_DLQ_TOPIC`.
    pub dlq_topic: String,
    /// `NORMALIZER_GROUP_ID`.
    pub group_id: String,
    /// `ADMIN_ADDR`.
    pub admin_addr: SocketAddr,
    /// `SLACK_API_BASE_URL`.
    pub slack_api_base_url: String,
    /// `SLACK_BOT_TOKENS`: installing team → bot token, for `users.info`.
    pub bot_tokens: BotTokens,
    /// `ENABLED_TEAMS`, `ENABLED_CHANNELS`, `SELF_BOT_IDS`, `SELF_APP_IDS`.
    pub rules: Rules,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `SHUTDOWN_GRACE_MS` (default 10 s): after SIGTERM, how long the outcomes in
    /// flight may take to finish before the normalizer commits what is finished and
    /// stops (the rest is read again after the restart). The process exits within
    /// this plus [`slackline_service::shutdown::STOP_MARGIN`].
    pub shutdown_grace: Duration,
    /// `AUTHOR_LOOKUP_CONCURRENCY` (default 16, at least 1): most `users.info`
    /// lookups in flight at once, across channels (and users of one channel); the
    /// events still come out in each channel's order. 1 looks authors up one at a
    /// time, in reading order.
    pub author_lookup_concurrency: usize,
}

/// The default of `SHUTDOWN_GRACE_MS`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The default of `AUTHOR_LOOKUP_CONCURRENCY`: with a 300 ms Slack API and a cold
/// cache, about 50 lookups per second, under Slack's burst allowance for
/// `users.info` (a 429 pauses the lookups; the events still flow).
pub const DEFAULT_AUTHOR_LOOKUP_CONCURRENCY: usize = 16;

fn id_set(env: &Env, name: &str) -> HashSet<String> {
    env.get(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `ENABLED_TEAMS`, `ENABLED_CHANNELS`, `SELF_BOT_IDS`, `SELF_APP_IDS`.
pub fn rules_from_env(env: &Env) -> Rules {
    Rules {
        enabled_teams: id_set(env, "ENABLED_TEAMS"),
        enabled_channels: id_set(env, "ENABLED_CHANNELS"),
        self_bot_ids: id_set(env, "SELF_BOT_IDS"),
        self_app_ids: id_set(env, "SELF_APP_IDS"),
    }
}

/// `SLACK_BOT_TOKENS` (empty when unset; a malformed value is a recorded problem).
pub fn bot_tokens_from_env(env: &mut Env) -> BotTokens {
    match env.get("SLACK_BOT_TOKENS").map(BotTokens::parse) {
        None => BotTokens::default(),
        Some(Ok(tokens)) => tokens,
        Some(Err(e)) => {
            env.problem("SLACK_BOT_TOKENS", e);
            BotTokens::default()
        }
    }
}

impl NormalizerConfig {
    /// A normalizer on `names`' topics and group with every other setting at its
    /// default (no bot tokens, so no author lookups), its admin port ephemeral on
    /// loopback: for embedding it (`slackline dev`, tests, benches); override fields
    /// with struct update syntax.
    pub fn new(kafka: KafkaSettings, names: &topics::TopicNames) -> NormalizerConfig {
        NormalizerConfig {
            kafka,
            raw_topic: names.raw_events(),
            messages_topic: names.messages(),
            dlq_topic: names.raw_dlq(),
            group_id: names.group(topics::NORMALIZER_GROUP),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            slack_api_base_url: DEFAULT_SLACK_API.to_owned(),
            bot_tokens: BotTokens::default(),
            rules: Rules::default(),
            log_format: LogFormat::Text,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            author_lookup_concurrency: DEFAULT_AUTHOR_LOOKUP_CONCURRENCY,
        }
    }

    /// The start-up warning when bot tokens are set but `SELF_BOT_IDS` is empty: our
    /// bot's replies then come back as bot messages of our own team, not as the
    /// agent's, and never move a thread to `waiting` (the installing bot user of
    /// `authorizations[0]` is still recognised when Slack sends it).
    pub fn self_ids_warning(&self) -> Option<&'static str> {
        (!self.bot_tokens.is_empty() && self.rules.self_bot_ids.is_empty()).then_some(
            "SLACK_BOT_TOKENS is set but SELF_BOT_IDS is empty (SELF_APP_IDS alone is not \
             trusted): set SELF_BOT_IDS to our bot id (B...) and bot user id (U...), else \
             agents' replies may not be recognised as theirs and threads stay todo",
        )
    }

    /// Reads the configuration, reporting every problem at once.
    pub fn from_env(mut env: Env) -> Result<NormalizerConfig, ConfigError> {
        let kafka = KafkaSettings::from_env(&mut env);
        let bot_tokens = bot_tokens_from_env(&mut env);
        let config = NormalizerConfig {
            kafka,
            raw_topic: env.string_or("RAW_TOPIC", topics::RAW_EVENTS),
            messages_topic: env.string_or("MESSAGES_TOPIC", topics::MESSAGES),
            dlq_topic: env.string_or("RAW_DLQ_TOPIC", topics::RAW_DLQ),
            group_id: env.string_or("NORMALIZER_GROUP_ID", topics::NORMALIZER_GROUP),
            admin_addr: env.parse_or("ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9000))),
            slack_api_base_url: env.string_or("SLACK_API_BASE_URL", DEFAULT_SLACK_API),
            bot_tokens,
            rules: rules_from_env(&env),
            log_format: env.parse_or("LOG_FORMAT", LogFormat::Json),
            shutdown_grace: Duration::from_millis(env.parse_or(
                "SHUTDOWN_GRACE_MS",
                u64::try_from(DEFAULT_SHUTDOWN_GRACE.as_millis()).unwrap_or(u64::MAX),
            )),
            author_lookup_concurrency: env.parse_or(
                "AUTHOR_LOOKUP_CONCURRENCY",
                DEFAULT_AUTHOR_LOOKUP_CONCURRENCY,
            ),
        };
        if config.author_lookup_concurrency == 0 {
            env.problem("AUTHOR_LOOKUP_CONCURRENCY", "must be at least 1");
        }
        env.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_lists() {
        let config = NormalizerConfig::from_env(Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("ENABLED_CHANNELS", "C1, C2,,"),
            ("SELF_BOT_IDS", "B1"),
        ]))
        .unwrap();
        assert_eq!(config.messages_topic, "slack.messages.v1");
        assert_eq!(config.dlq_topic, "slack.events.raw.dlq");
        assert_eq!(config.slack_api_base_url, DEFAULT_SLACK_API);
        assert_eq!(config.rules.enabled_channels.len(), 2);
        assert!(config.rules.enabled_teams.is_empty(), "empty means all");
        assert!(config.rules.self_bot_ids.contains("B1"));
        assert_eq!(config.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert_eq!(
            config.author_lookup_concurrency,
            DEFAULT_AUTHOR_LOOKUP_CONCURRENCY
        );
        let config = NormalizerConfig::from_env(Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("SHUTDOWN_GRACE_MS", "2500"),
            ("AUTHOR_LOOKUP_CONCURRENCY", "1"),
        ]))
        .unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_millis(2500));
        assert_eq!(config.author_lookup_concurrency, 1);
    }

    #[test]
    fn bad_variables_are_named() {
        let err = NormalizerConfig::from_env(Env::from_pairs([
            ("SLACK_BOT_TOKENS", "garbage"),
            ("ADMIN_ADDR", "x"),
            ("SHUTDOWN_GRACE_MS", "10s"),
            ("AUTHOR_LOOKUP_CONCURRENCY", "0"),
        ]))
        .unwrap_err()
        .to_string();
        for name in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "SLACK_BOT_TOKENS",
            "ADMIN_ADDR",
            "SHUTDOWN_GRACE_MS",
            "AUTHOR_LOOKUP_CONCURRENCY",
        ] {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn bot_tokens_without_self_bot_ids_warn() {
        let mut config =
            NormalizerConfig::from_env(Env::from_pairs([("KAFKA_BOOTSTRAP_SERVERS", "k:9092")]))
                .unwrap();
        assert_eq!(
            config.self_ids_warning(),
            None,
            "no tokens: nothing to post"
        );
        config.bot_tokens = BotTokens::parse("T1=xoxb-1").unwrap();
        let warning = config.self_ids_warning().unwrap();
        assert!(warning.contains("SELF_BOT_IDS"), "{warning}");
        config.rules.self_app_ids.insert("A1".into());
        assert!(
            config.self_ids_warning().is_some(),
            "app ids alone are not trusted"
        );
        config.rules.self_bot_ids.insert("B1".into());
        assert_eq!(config.self_ids_warning(), None);
    }
}
