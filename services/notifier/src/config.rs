//! The notifier's configuration, from environment variables (see the README's table):
//! Kafka, PostgreSQL, the consumer runtime, the admin port, the log format, and the
//! notification targets (each optional).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use reqwest::Url;
use slackline_consumer::RuntimeConfig;
use slackline_kafka::{topics, KafkaSettings};
use slackline_service::{ConfigError, Env, LogFormat};
use slackline_store::StoreSettings;

/// The consumer group, and the default of `GROUP_ID`.
pub const GROUP: &str = "notifier";

/// Default of `NOTIFY_HTTP_TIMEOUT_MS`.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_millis(5000);

/// Default of `NOTIFY_SMTP_TIMEOUT_MS`.
pub const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_millis(10_000);

/// Everything the notifier needs to run.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_PROPERTIES`.
    pub kafka: KafkaSettings,
    /// `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`, `DATABASE_STATEMENT_TIMEOUT_MS`,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`.
    pub store: StoreSettings,
    /// `GROUP_ID` (default `notifier`), `SOURCE_TOPIC` (default `slack.messages.v1`),
    /// `RETRY_TOPIC`, `DLQ_TOPIC`, `RETRY_DELAYS_MS`, `QUICK_RETRIES`,
    /// `MAX_CONCURRENT_KEYS`.
    pub runtime: RuntimeConfig,
    /// `ADMIN_ADDR` (default `0.0.0.0:9000`): `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// `LOG_FORMAT` (`json` or `text`, default `json`).
    pub log_format: LogFormat,
    /// Where notifications go.
    pub targets: TargetsConfig,
}

/// The notification targets. None configured is allowed: events are then consumed
/// and counted as skipped with reason `no_target`.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetsConfig {
    /// `NOTIFY_SLACK_WEBHOOK_URL`: a Slack incoming webhook.
    pub slack_webhook_url: Option<Url>,
    /// `NOTIFY_DISCORD_WEBHOOK_URL`: a Discord webhook.
    pub discord_webhook_url: Option<Url>,
    /// `NOTIFY_HTTP_TIMEOUT_MS` (default 5000): the whole webhook request.
    pub http_timeout: Duration,
    /// `NOTIFY_SMTP_URL`, `NOTIFY_EMAIL_FROM`, `NOTIFY_EMAIL_TO`,
    /// `NOTIFY_SMTP_TIMEOUT_MS`.
    pub email: Option<EmailConfig>,
}

/// Email over SMTP.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailConfig {
    /// `NOTIFY_SMTP_URL`: `smtp://host:port`, `smtps://user:pass@host`,
    /// `smtp://host?tls=required` (lettre's connection URL).
    pub smtp_url: String,
    /// `NOTIFY_EMAIL_FROM`: the sender mailbox (`Name <addr>` or `addr`).
    pub from: Mailbox,
    /// `NOTIFY_EMAIL_TO`: the recipients (comma-separated mailboxes).
    pub to: Vec<Mailbox>,
    /// `NOTIFY_SMTP_TIMEOUT_MS` (default 10000): each SMTP step.
    pub timeout: Duration,
}

/// Webhook URLs and SMTP URLs carry credentials: never print them.
fn redacted<T>(value: &Option<T>) -> &'static str {
    if value.is_some() {
        "<set>"
    } else {
        "<unset>"
    }
}

impl fmt::Debug for TargetsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetsConfig")
            .field("slack_webhook_url", &redacted(&self.slack_webhook_url))
            .field("discord_webhook_url", &redacted(&self.discord_webhook_url))
            .field("http_timeout", &self.http_timeout)
            .field("email", &self.email)
            .finish()
    }
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to: Vec<String> = self.to.iter().map(ToString::to_string).collect();
        f.debug_struct("EmailConfig")
            .field("smtp_url", &"<set>")
            .field("from", &self.from.to_string())
            .field("to", &to)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TargetsConfig {
    /// No target at all.
    pub fn none() -> Self {
        TargetsConfig {
            slack_webhook_url: None,
            discord_webhook_url: None,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            email: None,
        }
    }

    /// Whether at least one target is configured.
    pub fn any(&self) -> bool {
        self.slack_webhook_url.is_some()
            || self.discord_webhook_url.is_some()
            || self.email.is_some()
    }

    /// The targets from the environment, recording every problem in `env`.
    pub fn from_env(env: &mut Env) -> TargetsConfig {
        let slack_webhook_url = webhook_url(env, "NOTIFY_SLACK_WEBHOOK_URL");
        let discord_webhook_url = webhook_url(env, "NOTIFY_DISCORD_WEBHOOK_URL");
        let http_timeout = millis(env, "NOTIFY_HTTP_TIMEOUT_MS", DEFAULT_HTTP_TIMEOUT);
        let email = email_from_env(env);
        TargetsConfig {
            slack_webhook_url,
            discord_webhook_url,
            http_timeout,
            email,
        }
    }
}

/// A positive number of milliseconds.
fn millis(env: &mut Env, name: &str, default: Duration) -> Duration {
    let ms: u64 = env.parse_or(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX));
    if ms == 0 {
        env.problem(name, "must be at least 1 millisecond");
        return default;
    }
    Duration::from_millis(ms)
}

/// An absolute `http(s)` URL with a host.
fn webhook_url(env: &mut Env, name: &str) -> Option<Url> {
    let raw = env.get(name)?.trim().to_owned();
    match Url::parse(&raw) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            env.problem(
                name,
                format!("must be an http or https URL, not {}:", url.scheme()),
            );
            None
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            env.problem(name, "the URL has no host");
            None
        }
        Ok(url) => Some(url),
        // The parser's message does not echo the URL (which may hold a token).
        Err(e) => {
            env.problem(name, format!("not a URL: {e}"));
            None
        }
    }
}

fn mailbox(env: &mut Env, name: &str, raw: &str) -> Option<Mailbox> {
    match raw.trim().parse::<Mailbox>() {
        Ok(mailbox) => Some(mailbox),
        Err(e) => {
            env.problem(name, format!("{:?} is not a mailbox: {e}", raw.trim()));
            None
        }
    }
}

fn email_from_env(env: &mut Env) -> Option<EmailConfig> {
    let smtp_url = env.get("NOTIFY_SMTP_URL").map(|s| s.trim().to_owned());
    let from_raw = env.get("NOTIFY_EMAIL_FROM").map(str::to_owned);
    let to_raw = env.get("NOTIFY_EMAIL_TO").map(str::to_owned);
    let timeout = millis(env, "NOTIFY_SMTP_TIMEOUT_MS", DEFAULT_SMTP_TIMEOUT);
    let Some(smtp_url) = smtp_url else {
        for (name, value) in [
            ("NOTIFY_EMAIL_FROM", &from_raw),
            ("NOTIFY_EMAIL_TO", &to_raw),
        ] {
            if value.is_some() {
                env.problem(
                    name,
                    "set, but NOTIFY_SMTP_URL is not: no email would be sent",
                );
            }
        }
        return None;
    };
    let mut ok = true;
    if let Err(e) = AsyncSmtpTransport::<Tokio1Executor>::from_url(&smtp_url) {
        // lettre's message names the part that is wrong, not the credentials.
        env.problem(
            "NOTIFY_SMTP_URL",
            format!("not an SMTP URL (smtp://host:port, smtps://user:pass@host): {e}"),
        );
        ok = false;
    }
    let from = match &from_raw {
        None => {
            env.problem("NOTIFY_EMAIL_FROM", "required when NOTIFY_SMTP_URL is set");
            None
        }
        Some(raw) => mailbox(env, "NOTIFY_EMAIL_FROM", raw),
    };
    let mut to = Vec::new();
    match &to_raw {
        None => {
            env.problem("NOTIFY_EMAIL_TO", "required when NOTIFY_SMTP_URL is set");
            ok = false;
        }
        Some(raw) => {
            for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match mailbox(env, "NOTIFY_EMAIL_TO", part) {
                    Some(m) => to.push(m),
                    None => ok = false,
                }
            }
            if to.is_empty() && ok {
                env.problem("NOTIFY_EMAIL_TO", "lists no recipient");
                ok = false;
            }
        }
    }
    let from = from?;
    ok.then_some(EmailConfig {
        smtp_url,
        from,
        to,
        timeout,
    })
}

impl NotifierConfig {
    /// Reads the configuration, reporting every problem at once.
    ///
    /// # Errors
    ///
    /// Every missing or malformed variable, each named.
    pub fn from_env(mut env: Env) -> Result<NotifierConfig, ConfigError> {
        let kafka = KafkaSettings::from_env(&mut env);
        let store = StoreSettings::from_env(&mut env);
        let runtime = RuntimeConfig::from_env(&mut env, GROUP, topics::MESSAGES);
        if let Err(e) = runtime.validate() {
            env.problem(
                "GROUP_ID/SOURCE_TOPIC/RETRY_TOPIC/DLQ_TOPIC/MAX_CONCURRENT_KEYS",
                e,
            );
        }
        let targets = TargetsConfig::from_env(&mut env);
        let config = NotifierConfig {
            kafka,
            store,
            runtime,
            admin_addr: env.parse_or("ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9000))),
            log_format: env.parse_or("LOG_FORMAT", LogFormat::Json),
            targets,
        };
        env.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn with_required(extra: &[(&'static str, &'static str)]) -> Env {
        let mut pairs = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("DATABASE_URL", "postgres://u@db:5432/slackline"),
        ];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    fn problems(extra: &[(&'static str, &'static str)]) -> String {
        NotifierConfig::from_env(with_required(extra))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_have_no_target() {
        let config = NotifierConfig::from_env(with_required(&[])).unwrap();
        assert_eq!(
            config.runtime,
            RuntimeConfig::new("notifier", "slack.messages.v1")
        );
        assert_eq!(config.admin_addr, SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert_eq!(config.targets, TargetsConfig::none());
        assert!(!config.targets.any());
    }

    #[test]
    fn every_target() {
        let config = NotifierConfig::from_env(with_required(&[
            (
                "NOTIFY_SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T/B/secret",
            ),
            (
                "NOTIFY_DISCORD_WEBHOOK_URL",
                "https://discord.com/api/webhooks/1/tok",
            ),
            ("NOTIFY_HTTP_TIMEOUT_MS", "1500"),
            ("NOTIFY_SMTP_URL", "smtps://user:pass@mail.example.com"),
            ("NOTIFY_EMAIL_FROM", "Slackline <slackline@example.com>"),
            ("NOTIFY_EMAIL_TO", "a@example.com, Bea <b@example.com>,"),
            ("NOTIFY_SMTP_TIMEOUT_MS", "3000"),
            // Real secrets in the shared settings too.
            (
                "DATABASE_URL",
                "postgres://notifier:pg-hunter2@db:5432/slackline?sslmode=require",
            ),
            (
                "KAFKA_PROPERTIES",
                "security.protocol=SASL_SSL;sasl.mechanisms=PLAIN;sasl.username=svc;\
                 sasl.password=sasl-hunter2;ssl.key.password=key-hunter2;\
                 sasl.oauthbearer.client.secret=oauth-hunter2",
            ),
        ]))
        .unwrap();
        let t = &config.targets;
        assert!(t.any());
        assert_eq!(
            t.slack_webhook_url.as_ref().unwrap().host_str(),
            Some("hooks.slack.com")
        );
        assert!(t.discord_webhook_url.is_some());
        assert_eq!(t.http_timeout, Duration::from_millis(1500));
        let email = t.email.as_ref().unwrap();
        assert_eq!(email.from.email.to_string(), "slackline@example.com");
        let to: Vec<String> = email.to.iter().map(|m| m.email.to_string()).collect();
        assert_eq!(to, ["a@example.com", "b@example.com"]);
        assert_eq!(email.timeout, Duration::from_secs(3));
        // Secrets stay out of logs.
        let debug = format!("{config:?}");
        for secret in ["T/B/secret", "1/tok", "user:pass", "hunter2"] {
            assert!(!debug.contains(secret), "{secret}: {debug}");
        }
        assert!(debug.contains("notifier:<redacted>@db:5432"), "{debug}");
    }

    #[test]
    fn smtp_without_from_and_to_is_named() {
        let err = problems(&[("NOTIFY_SMTP_URL", "smtp://127.0.0.1:2525")]);
        assert!(err.contains("NOTIFY_EMAIL_FROM: required"), "{err}");
        assert!(err.contains("NOTIFY_EMAIL_TO: required"), "{err}");
    }

    #[test]
    fn from_and_to_without_smtp_are_named() {
        let err = problems(&[
            ("NOTIFY_EMAIL_FROM", "a@example.com"),
            ("NOTIFY_EMAIL_TO", "b@example.com"),
        ]);
        assert!(
            err.contains("NOTIFY_EMAIL_FROM: set, but NOTIFY_SMTP_URL"),
            "{err}"
        );
        assert!(
            err.contains("NOTIFY_EMAIL_TO: set, but NOTIFY_SMTP_URL"),
            "{err}"
        );
    }

    #[test]
    fn bad_urls_and_mailboxes_are_named_all_at_once() {
        let err = problems(&[
            ("NOTIFY_SLACK_WEBHOOK_URL", "hooks.slack.com/services/x"),
            (
                "NOTIFY_DISCORD_WEBHOOK_URL",
                "ftp://discord.com/api/webhooks/1",
            ),
            ("NOTIFY_SMTP_URL", "http://mail.example.com"),
            ("NOTIFY_EMAIL_FROM", "not a mailbox"),
            ("NOTIFY_EMAIL_TO", "ok@example.com, @@"),
            ("NOTIFY_HTTP_TIMEOUT_MS", "0"),
            ("NOTIFY_SMTP_TIMEOUT_MS", "soon"),
        ]);
        for name in [
            "NOTIFY_SLACK_WEBHOOK_URL",
            "NOTIFY_DISCORD_WEBHOOK_URL",
            "NOTIFY_SMTP_URL",
            "NOTIFY_EMAIL_FROM",
            "NOTIFY_EMAIL_TO",
            "NOTIFY_HTTP_TIMEOUT_MS",
            "NOTIFY_SMTP_TIMEOUT_MS",
        ] {
            assert!(err.contains(&format!("{name}:")), "{name} missing in {err}");
        }
        assert!(!err.contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn missing_base_variables_are_named_too() {
        let err = NotifierConfig::from_env(Env::from_pairs([("NOTIFY_SMTP_URL", "smtp://h")]))
            .unwrap_err()
            .to_string();
        for name in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "DATABASE_URL",
            "NOTIFY_EMAIL_FROM",
        ] {
            assert!(err.contains(name), "{err}");
        }
    }
}
