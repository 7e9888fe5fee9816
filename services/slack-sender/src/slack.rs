//! `chat.postMessage`, with every outcome sorted by what it means for "at most one
//! Slack message per reply":
//!
//! - [`PostOutcome::Posted`]: Slack answered `ok` with the message's `ts`;
//! - [`PostOutcome::NotPosted`]: Slack certainly did not post it. Retryable: 429 (with
//!   its `Retry-After`), `ratelimited`, `service_unavailable`, `request_timeout`
//!   (Slack got no or a truncated body), HTTP 5xx other than 502/504 and 408 (with
//!   no error in the body, or one of those retryable codes), and a
//!   connection that could not be made (connect errors and connect timeouts: no
//!   byte of the request left). Permanent: every other Slack error
//!   (`channel_not_found`, `not_in_channel`, `is_archived`, `invalid_auth`,
//!   `msg_too_long`, `invalid_blocks`, ...) and other 4xx, and no token for the team;
//! - [`PostOutcome::Ambiguous`]: the request left and may have been posted: a timeout
//!   or a cut connection after connecting, an unreadable answer, 502/504 (a gateway
//!   that gave up waiting for Slack), `internal_error` and `fatal_error` (Slack's
//!   documentation says part of the operation may have succeeded; whatever the HTTP
//!   status, a 5xx included), a 5xx with any other error code, or `ok` without a
//!   `ts`. Such a reply is never posted again automatically.
//!
//! [`SlackPoster::find_posted`] asks Slack whether an ambiguous send landed after
//! all: `conversations.replies` of the thread, looking for our message whose metadata
//! names the reply id (see [`crate::handler`]).

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde_json::{json, Value};
use slackline_events::Reply;
use slackline_slack_api::BotTokens;

use crate::config::SlackConfig;

/// The `metadata.event_type` of every message the sender posts. Slack returns the
/// metadata in the echo event it sends back to the posting app, which is how the
/// normalizer turns the echo into the agent's reply.
pub const METADATA_EVENT_TYPE: &str = "slackline_reply";

/// When a 429 carries no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long an idle pooled connection is kept. Below the idle timeout of Slack's
/// front end (not documented by Slack; 60 s is the usual load-balancer default), so
/// that a request is never written into a connection the server has just closed: such
/// a send fails after its bytes left, which is ambiguous.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Slack error codes after which the same call may succeed and that say nothing was
/// posted.
const RETRYABLE_ERRORS: [&str; 3] = ["ratelimited", "service_unavailable", "request_timeout"];

/// Messages per `conversations.replies` page (Slack recommends at most 200).
const REPLIES_PAGE: &str = "200";

/// Pages of a thread read before giving up (200 messages each).
const MAX_REPLIES_PAGES: usize = 50;

/// Slack error codes that say the call may have partly succeeded.
const AMBIGUOUS_ERRORS: [&str; 2] = ["internal_error", "fatal_error"];

/// What became of one `chat.postMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// Posted; the message's ts.
    Posted {
        /// The ts Slack gave the message.
        ts: String,
    },
    /// Certainly not posted.
    NotPosted {
        /// Whether trying again later may succeed.
        retryable: bool,
        /// Slack's error code, or a short label (`http_503`, `connect`, `no_token`).
        error: String,
        /// What Slack said or what failed, for logs and the DLQ.
        detail: String,
        /// A 429's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// May or may not have been posted.
    Ambiguous {
        /// Why we cannot tell.
        reason: String,
    },
}

/// Posts replies to Slack.
#[derive(Debug, Clone)]
pub struct SlackPoster {
    http: reqwest::Client,
    url: String,
    replies_url: String,
    tokens: BotTokens,
    as_agent: bool,
    timeout: std::time::Duration,
}

/// The request body for `reply`.
pub fn request_body(reply: &Reply, blocks: Option<&Value>, as_agent: bool) -> Value {
    let mut body = json!({
        "channel": reply.channel_id,
        "thread_ts": reply.thread_ts,
        "text": reply.text,
        "metadata": {
            "event_type": METADATA_EVENT_TYPE,
            "event_payload": {
                "reply_id": reply.reply_id,
                "thread_id": reply.thread_id,
                "agent_id": reply.agent.id,
                "agent_name": reply.agent.display_name,
            },
        },
    });
    if reply.reply_broadcast {
        body["reply_broadcast"] = Value::Bool(true);
    }
    if let Some(blocks) = blocks {
        body["blocks"] = blocks.clone();
    }
    if as_agent && !reply.agent.display_name.trim().is_empty() {
        body["username"] = Value::from(reply.agent.display_name.as_str());
    }
    body
}

fn not_posted(retryable: bool, error: impl Into<String>, detail: impl Into<String>) -> PostOutcome {
    PostOutcome::NotPosted {
        retryable,
        error: error.into(),
        detail: detail.into(),
        retry_after: None,
    }
}

/// The reqwest error and its sources, as one line.
fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

impl SlackPoster {
    /// A poster for `config`.
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built (TLS initialisation).
    pub fn new(config: &SlackConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!(
                "slackline-slack-sender/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(SlackPoster {
            http,
            url: format!("{}/chat.postMessage", config.base_url),
            replies_url: format!("{}/conversations.replies", config.base_url),
            tokens: config.tokens.clone(),
            as_agent: config.as_agent,
            timeout: config.http_timeout,
        })
    }

    /// The longest a request lasts (`SLACK_SENDER_HTTP_TIMEOUT_MS`): a request of any
    /// process is answered or given up within it.
    pub fn request_timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// The token for `team`: its own, else the `*` entry.
    fn token(&self, team: &str) -> Option<&str> {
        self.tokens.get(team).or_else(|| self.tokens.get("*"))
    }

    /// Whether a token is configured for `team`.
    pub fn has_token(&self, team: &str) -> bool {
        self.token(team).is_some()
    }

    /// Posts `reply` (with `blocks`, already parsed) as a reply in its thread.
    pub async fn post(&self, reply: &Reply, blocks: Option<&Value>) -> PostOutcome {
        let Some(token) = self.token(&reply.team_id) else {
            return not_posted(
                false,
                "no_token",
                format!("no bot token configured for team {}", reply.team_id),
            );
        };
        let body = request_body(reply, blocks, self.as_agent);
        let response = match self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                return not_posted(
                    true,
                    "connect",
                    format!("could not reach Slack: {}", describe(&e)),
                )
            }
            // The request could not even be built: nothing left.
            Err(e) if e.is_builder() => return not_posted(false, "request", describe(&e)),
            Err(e) => {
                return PostOutcome::Ambiguous {
                    reason: format!("no answer from Slack after sending: {}", describe(&e)),
                }
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status == StatusCode::TOO_MANY_REQUESTS || matches!(status.as_u16(), 502 | 504) {
            // Decided by the status alone: no need to wait for the body.
            return classify(status, retry_after.as_deref(), &[]);
        }
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            Err(e) if status.is_success() => {
                return PostOutcome::Ambiguous {
                    reason: format!("the answer was cut off: {}", describe(&e)),
                }
            }
            Err(_) => Vec::new(),
        };
        classify(status, retry_after.as_deref(), &bytes)
    }
}

impl SlackPoster {
    /// Looks for the message posted for `reply` in its thread: `conversations.replies`
    /// (channel, `ts` = the thread's root ts, `include_all_metadata=true`, page by page
    /// with `cursor`) and our message whose metadata (`event_type`
    /// [`METADATA_EVENT_TYPE`]) names the reply id. `Ok(Some(ts))` when found,
    /// `Ok(None)` when the thread has no such message.
    ///
    /// # Errors
    ///
    /// Why Slack could not be asked (no token, no answer, a Slack error, a 429):
    /// nothing is known then.
    pub async fn find_posted(&self, reply: &Reply) -> Result<Option<String>, String> {
        let token = self
            .token(&reply.team_id)
            .ok_or_else(|| format!("no bot token configured for team {}", reply.team_id))?;
        let mut cursor = String::new();
        for _ in 0..MAX_REPLIES_PAGES {
            let mut query = vec![
                ("channel", reply.channel_id.as_str()),
                ("ts", reply.thread_ts.as_str()),
                ("include_all_metadata", "true"),
                ("limit", REPLIES_PAGE),
            ];
            if !cursor.is_empty() {
                query.push(("cursor", cursor.as_str()));
            }
            let response = self
                .http
                .get(&self.replies_url)
                .bearer_auth(token)
                .query(&query)
                .send()
                .await
                .map_err(|e| format!("conversations.replies: {}", describe(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("conversations.replies: HTTP {}", status.as_u16()));
            }
            let page: Value = response.json().await.map_err(|e| {
                format!("conversations.replies: unreadable answer: {}", describe(&e))
            })?;
            if page.get("ok").and_then(Value::as_bool) != Some(true) {
                let error = page
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error code");
                return Err(format!("conversations.replies: Slack error {error}"));
            }
            let messages = page
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(ts) = messages.iter().find_map(|m| ours(m, &reply.reply_id)) {
                return Ok(Some(ts.to_owned()));
            }
            cursor = page
                .pointer("/response_metadata/next_cursor")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            if cursor.is_empty() || !more {
                return Ok(None);
            }
        }
        Err(format!(
            "conversations.replies: the thread is longer than {MAX_REPLIES_PAGES} pages"
        ))
    }
}

/// The ts of `message` when it is the one we posted for `reply_id`.
fn ours<'m>(message: &'m Value, reply_id: &str) -> Option<&'m str> {
    let metadata = message.get("metadata")?;
    let is_ours = metadata.get("event_type").and_then(Value::as_str) == Some(METADATA_EVENT_TYPE)
        && metadata
            .pointer("/event_payload/reply_id")
            .and_then(Value::as_str)
            == Some(reply_id);
    if !is_ours {
        return None;
    }
    message
        .get("ts")
        .and_then(Value::as_str)
        .filter(|ts| !ts.is_empty())
}

/// A `Retry-After` value: delay-seconds, or an HTTP-date (RFC 9110; the wait until
/// then, zero when it is past); `None` when it is neither.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Sorts Slack's answer: its HTTP `status`, its `Retry-After` header and its body
/// (empty when it could not be read).
///
/// The body's error is looked at before the status: a 5xx whose body says
/// `internal_error` or `fatal_error` may have posted the message (Slack's
/// documentation), so only a 5xx (or 408) with no readable error or a retryable error
/// code counts as certainly not posted; a 5xx with any other error code is ambiguous.
pub(crate) fn classify(status: StatusCode, retry_after: Option<&str>, body: &[u8]) -> PostOutcome {
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = retry_after
            .and_then(parse_retry_after)
            .unwrap_or(DEFAULT_RETRY_AFTER);
        return PostOutcome::NotPosted {
            retryable: true,
            error: "rate_limited".to_owned(),
            detail: format!("Slack answered 429, Retry-After {}s", retry_after.as_secs()),
            retry_after: Some(retry_after),
        };
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let ok = parsed
        .as_ref()
        .and_then(|b| b.get("ok"))
        .and_then(Value::as_bool);
    let error = parsed
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(code) = error.as_deref().filter(|c| AMBIGUOUS_ERRORS.contains(c)) {
        return PostOutcome::Ambiguous {
            reason: format!(
                "Slack answered {code} (HTTP {}), which may have posted the message",
                status.as_u16()
            ),
        };
    }
    if matches!(status.as_u16(), 502 | 504) {
        return PostOutcome::Ambiguous {
            reason: format!("Slack's gateway answered HTTP {}", status.as_u16()),
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return match error {
            None => not_posted(
                true,
                format!("http_{}", status.as_u16()),
                format!("Slack answered HTTP {}", status.as_u16()),
            ),
            Some(code) if RETRYABLE_ERRORS.contains(&code.as_str()) => {
                let detail = format!("Slack error {code} (HTTP {})", status.as_u16());
                not_posted(true, code, detail)
            }
            Some(code) => PostOutcome::Ambiguous {
                reason: format!(
                    "Slack answered HTTP {} with error {code}, which may have posted the message",
                    status.as_u16()
                ),
            },
        };
    }
    match (ok, error) {
        (Some(true), _) if status.is_success() => {
            match parsed
                .as_ref()
                .and_then(|b| b.get("ts"))
                .and_then(Value::as_str)
                .filter(|ts| !ts.is_empty())
            {
                Some(ts) => PostOutcome::Posted { ts: ts.to_owned() },
                None => PostOutcome::Ambiguous {
                    reason: "Slack answered ok without a ts".to_owned(),
                },
            }
        }
        (_, Some(code)) => {
            let retryable = RETRYABLE_ERRORS.contains(&code.as_str());
            let detail = format!("Slack error {code} (HTTP {})", status.as_u16());
            not_posted(retryable, code, detail)
        }
        _ if status.is_success() => PostOutcome::Ambiguous {
            reason: format!(
                "Slack answered HTTP {} with a body we cannot read ({} bytes)",
                status.as_u16(),
                body.len()
            ),
        },
        _ => not_posted(
            false,
            format!("http_{}", status.as_u16()),
            format!("Slack answered HTTP {}", status.as_u16()),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    fn is_ambiguous(outcome: &PostOutcome) -> bool {
        matches!(outcome, PostOutcome::Ambiguous { .. })
    }

    fn retryable_not_posted(outcome: &PostOutcome) -> bool {
        matches!(
            outcome,
            PostOutcome::NotPosted {
                retryable: true,
                ..
            }
        )
    }

    #[test]
    fn a_5xx_saying_internal_or_fatal_error_is_ambiguous() {
        for code in [500, 503, 408] {
            for error in ["internal_error", "fatal_error"] {
                let body = format!(r#"{{"ok":false,"error":"{error}"}}"#);
                let outcome = classify(status(code), None, body.as_bytes());
                assert!(is_ambiguous(&outcome), "{code} {error}: {outcome:?}");
            }
        }
        let outcome = classify(status(500), None, br#"{"ok":false,"error":"invalid_auth"}"#);
        assert!(is_ambiguous(&outcome), "{outcome:?}");
    }

    #[test]
    fn a_5xx_without_an_error_or_with_a_retryable_one_is_not_posted() {
        for body in [&b""[..], b"{}", b"<html>oops</html>"] {
            let outcome = classify(status(500), None, body);
            assert!(retryable_not_posted(&outcome), "{outcome:?}");
        }
        let outcome = classify(
            status(503),
            None,
            br#"{"ok":false,"error":"service_unavailable"}"#,
        );
        assert!(retryable_not_posted(&outcome), "{outcome:?}");
        assert!(is_ambiguous(&classify(status(502), None, b"")));
        assert!(is_ambiguous(&classify(status(504), None, b"{}")));
    }

    #[test]
    fn other_answers_keep_their_meaning() {
        assert_eq!(
            classify(status(200), None, br#"{"ok":true,"ts":"1.2"}"#),
            PostOutcome::Posted { ts: "1.2".into() }
        );
        assert!(is_ambiguous(&classify(
            status(200),
            None,
            br#"{"ok":true}"#
        )));
        assert!(is_ambiguous(&classify(
            status(200),
            None,
            br#"{"ok":false,"error":"internal_error"}"#
        )));
        assert!(matches!(
            classify(
                status(200),
                None,
                br#"{"ok":false,"error":"channel_not_found"}"#
            ),
            PostOutcome::NotPosted {
                retryable: false,
                ..
            }
        ));
        assert!(retryable_not_posted(&classify(
            status(200),
            None,
            br#"{"ok":false,"error":"ratelimited"}"#
        )));
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let outcome = classify(status(429), Some("7"), b"");
        assert!(matches!(
            outcome,
            PostOutcome::NotPosted { retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        match classify(status(429), Some(&date), b"") {
            PostOutcome::NotPosted {
                retry_after: Some(d),
                ..
            } => assert!(
                d > Duration::from_secs(100) && d <= Duration::from_secs(120),
                "{d:?}"
            ),
            other => panic!("{other:?}"),
        }
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH);
        assert!(matches!(
            classify(status(429), Some(&past), b""),
            PostOutcome::NotPosted { retry_after: Some(d), .. } if d == Duration::ZERO
        ));
        assert!(matches!(
            classify(status(429), Some("soon"), b""),
            PostOutcome::NotPosted { retry_after: Some(d), .. } if d == DEFAULT_RETRY_AFTER
        ));
    }
}
