//! The notification targets (Slack and Discord webhooks, email over SMTP) and how
//! their failures are classified.
//!
//! What matters for "at most once" is not only whether a retry may succeed, but
//! whether the failed attempt may have been delivered anyway:
//!
//! - **not delivered**: the target refused or answered with an error before taking
//!   the notification (connection refused or failed, a 5xx other than 502/504, a 429,
//!   a 408, another 4xx, an SMTP 4xx/5xx reply). 500, 503 and other 5xx, 429, 408,
//!   SMTP 4xx and connection failures are retryable; other 4xx and SMTP 5xx are
//!   permanent (the event goes to the DLQ).
//! - **ambiguous**: the request may have reached the target but no answer came (a
//!   timeout after the connection was made, a connection cut mid-request or
//!   mid-session), or a proxy answered 502 or 504 (the webhook behind it may have
//!   processed it). It is not sent again.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use reqwest::{StatusCode, Url};

use crate::config::{EmailConfig, TargetsConfig};
use crate::notification::Notification;

/// Idle webhook connections are dropped before the usual load balancer idle timeouts
/// (60 s and more), so a request rarely meets a connection the server just closed
/// (which would make its outcome ambiguous).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The target did not take the notification; sending again is safe.
    #[error("{reason}")]
    NotDelivered {
        /// Whether a later attempt may succeed.
        retryable: bool,
        /// What happened.
        reason: String,
    },
    /// The notification may or may not have been delivered.
    #[error("{reason}")]
    Ambiguous {
        /// What happened.
        reason: String,
    },
}

impl SendError {
    fn retryable(reason: impl Into<String>) -> Self {
        SendError::NotDelivered {
            retryable: true,
            reason: reason.into(),
        }
    }

    fn permanent(reason: impl Into<String>) -> Self {
        SendError::NotDelivered {
            retryable: false,
            reason: reason.into(),
        }
    }
}

/// Why a target could not be built.
#[derive(Debug, thiserror::Error)]
#[error("notification target {target}: {reason}")]
pub struct TargetError {
    target: &'static str,
    reason: String,
}

/// Which kind of webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WebhookKind {
    Slack,
    Discord,
}

/// One configured target.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Slack incoming webhook (`{"text": ...}`) or a Discord webhook
    /// (`{"content": ...}`).
    Webhook(Webhook),
    /// Email over SMTP.
    Email(Email),
}

impl Target {
    /// The name in the `sent` table and the metrics: `slack`, `discord` or `email`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Webhook(w) => match w.kind {
                WebhookKind::Slack => "slack",
                WebhookKind::Discord => "discord",
            },
            Target::Email(_) => "email",
        }
    }

    /// Sends one notification.
    ///
    /// # Errors
    ///
    /// How it failed: see the module docs.
    pub async fn send(&self, notification: &Notification) -> Result<(), SendError> {
        match self {
            Target::Webhook(w) => w.send(notification).await,
            Target::Email(e) => e.send(notification).await,
        }
    }
}

/// The targets of `config`, in a fixed order: slack, discord, email.
///
/// # Errors
///
/// When the HTTP client or the SMTP transport cannot be built.
pub fn build_targets(config: &TargetsConfig) -> Result<Vec<Target>, TargetError> {
    let mut targets = Vec::new();
    if config.slack_webhook_url.is_some() || config.discord_webhook_url.is_some() {
        let client = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("slackline-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TargetError {
                target: "slack/discord",
                reason: format!("building the HTTP client: {e}"),
            })?;
        for (kind, url) in [
            (WebhookKind::Slack, &config.slack_webhook_url),
            (WebhookKind::Discord, &config.discord_webhook_url),
        ] {
            if let Some(url) = url {
                targets.push(Target::Webhook(Webhook {
                    kind,
                    url: url.clone(),
                    client: client.clone(),
                }));
            }
        }
    }
    if let Some(email) = &config.email {
        targets.push(Target::Email(Email::new(email)?));
    }
    Ok(targets)
}

/// A webhook target.
#[derive(Clone)]
pub struct Webhook {
    kind: WebhookKind,
    url: Url,
    client: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL is a credential.
        f.debug_struct("Webhook").field("kind", &self.kind).finish()
    }
}

/// Slack mrkdwn control characters, so a customer's text cannot mention `@channel`
/// or forge links in the notification.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Discord's `retry_after` (JSON body, seconds) or the `Retry-After` header.
fn retry_after(headers: &reqwest::header::HeaderMap, body: &str) -> Option<String> {
    let from_body = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("retry_after").and_then(serde_json::Value::as_f64))
        .map(|s| format!("{s}s"));
    from_body.or_else(|| {
        headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(|v| format!("{v}s"))
    })
}

impl Webhook {
    fn body(&self, notification: &Notification) -> serde_json::Value {
        match self.kind {
            WebhookKind::Slack => serde_json::json!({ "text": slack_escape(&notification.text) }),
            WebhookKind::Discord => serde_json::json!({
                "content": notification.text,
                // Never ping anyone from a customer's text.
                "allowed_mentions": { "parse": [] },
            }),
        }
    }

    async fn send(&self, notification: &Notification) -> Result<(), SendError> {
        let response = self
            .client
            .post(self.url.clone())
            .json(&self.body(notification))
            .send()
            .await
            .map_err(|e| classify_http_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(1), response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let snippet: String = body.chars().take(200).collect();
        Err(classify_status(
            status,
            retry_after(&headers, &body),
            &snippet,
        ))
    }
}

/// A webhook's answer that is not a success: 502 and 504 come from a proxy that may
/// have passed the request on (ambiguous); 500, 503, 429 and 408 were not taken
/// (retryable); other statuses are permanent.
fn classify_status(status: StatusCode, retry_after: Option<String>, snippet: &str) -> SendError {
    match status {
        StatusCode::TOO_MANY_REQUESTS => {
            let after = retry_after.unwrap_or_else(|| "unspecified".into());
            SendError::retryable(format!("rate limited (429), retry after {after}"))
        }
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => SendError::Ambiguous {
            reason: format!("answered {status} (a proxy may have passed it on): {snippet}"),
        },
        StatusCode::REQUEST_TIMEOUT => {
            SendError::retryable(format!("answered {status}: {snippet}"))
        }
        s if s.is_server_error() => SendError::retryable(format!("answered {status}: {snippet}")),
        _ => SendError::permanent(format!("answered {status}: {snippet}")),
    }
}

/// reqwest's error without the URL (a webhook URL is a credential).
fn classify_http_error(error: &reqwest::Error) -> SendError {
    let reason = error.without_url_ref();
    if error.is_builder() {
        SendError::permanent(format!("building the request: {reason}"))
    } else if error.is_connect() {
        // Nothing was sent: refused, unreachable, TLS failure, connect timeout.
        SendError::retryable(format!("connecting: {reason}"))
    } else if error.is_timeout() {
        SendError::Ambiguous {
            reason: format!("no answer in time: {reason}"),
        }
    } else {
        SendError::Ambiguous {
            reason: format!("request failed mid-way: {reason}"),
        }
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(url.as_str(), "<webhook>");
        }
        // The source chain says why (refused, reset, ...).
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }
}

/// The email target.
#[derive(Clone)]
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish()
    }
}

impl Email {
    fn new(config: &EmailConfig) -> Result<Email, TargetError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|e| TargetError {
                target: "email",
                reason: format!("NOTIFY_SMTP_URL: {e}"),
            })?
            .timeout(Some(config.timeout))
            .build();
        Ok(Email {
            transport,
            from: config.from.clone(),
            to: config.to.clone(),
        })
    }

    fn message(&self, notification: &Notification) -> Result<Message, SendError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(notification.subject.clone())
            .message_id(Some(notification.key.message_id()))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(notification.text.clone())
            .map_err(|e| SendError::permanent(format!("building the email: {e}")))
    }

    async fn send(&self, notification: &Notification) -> Result<(), SendError> {
        let message = self.message(notification)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify_smtp_error(&e)),
        }
    }
}

fn classify_smtp_error(error: &lettre::transport::smtp::Error) -> SendError {
    let reason = error.to_string();
    if error.is_transient() {
        // A 4xx reply: the server did not take the message.
        SendError::retryable(format!("SMTP server deferred: {reason}"))
    } else if error.is_permanent() {
        SendError::permanent(format!("SMTP server refused: {reason}"))
    } else if error.is_tls() || reason.starts_with("Connection error") {
        // Connecting (or the TLS handshake) failed: no session, nothing sent.
        // lettre has no predicate for its connection errors; its Display names them.
        SendError::retryable(format!("connecting: {reason}"))
    } else {
        // Cut or timed out mid-session: the server may have accepted the message.
        SendError::Ambiguous {
            reason: format!("SMTP session failed: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(
            slack_escape("a <!channel> & b>"),
            "a &lt;!channel&gt; &amp; b&gt;"
        );
    }

    fn status(code: u16) -> SendError {
        classify_status(StatusCode::from_u16(code).unwrap(), None, "body")
    }

    #[test]
    fn statuses_are_classified() {
        for code in [500, 503, 429, 408] {
            assert!(
                matches!(
                    status(code),
                    SendError::NotDelivered {
                        retryable: true,
                        ..
                    }
                ),
                "{code}: {:?}",
                status(code)
            );
        }
        for code in [502, 504] {
            assert!(
                matches!(status(code), SendError::Ambiguous { .. }),
                "{code}: {:?}",
                status(code)
            );
        }
        for code in [400, 401, 403, 404, 410, 413] {
            assert!(
                matches!(
                    status(code),
                    SendError::NotDelivered {
                        retryable: false,
                        ..
                    }
                ),
                "{code}: {:?}",
                status(code)
            );
        }
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, Some("3s".into()), ""),
            SendError::retryable("rate limited (429), retry after 3s")
        );
    }

    #[test]
    fn retry_after_from_body_or_header() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(
            retry_after(&headers, r#"{"retry_after": 1.5, "global": false}"#).as_deref(),
            Some("1.5s")
        );
        assert_eq!(retry_after(&headers, "").as_deref(), None);
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers, "busy").as_deref(), Some("3s"));
    }
}
