//! `chat.postMessage`, with every outcome sorted by what it means for "at most one
//! Slack message per reply":
//!
//! - [`PostOutcome::Posted`]: Slack answered `ok` with the message's `ts`;
//! - [`PostOutcome::NotPosted`]: Slack certainly did not post it. Retryable: 429 (with
//!   its `Retry-After`), `ratelimited`, `service_unavailable`, `request_timeout`
//!   (Slack got no or a truncated body), HTTP 5xx other than 502/504, 408, and a
//!   connection that could not be made (connect errors and connect timeouts: no
//!   byte of the request left). Permanent: every other Slack error
//!   (`channel_not_found`, `not_in_channel`, `is_archived`, `invalid_auth`,
//!   `msg_too_long`, `invalid_blocks`, ...) and other 4xx, and no token for the team;
//! - [`PostOutcome::Ambiguous`]: the request left and may have been posted: a timeout
//!   or a cut connection after connecting, an unreadable answer, 502/504 (a gateway
//!   that gave up waiting for Slack), `internal_error` and `fatal_error` (Slack's
//!   documentation says part of the operation may have succeeded), or `ok` without a
//!   `ts`. Such a reply is never posted again automatically.

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

/// Slack error codes after which the same call may succeed and that say nothing was
/// posted.
const RETRYABLE_ERRORS: [&str; 3] = ["ratelimited", "service_unavailable", "request_timeout"];

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
    tokens: BotTokens,
    as_agent: bool,
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
            .user_agent(concat!(
                "slackline-slack-sender/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(SlackPoster {
            http,
            url: format!("{}/chat.postMessage", config.base_url),
            tokens: config.tokens.clone(),
            as_agent: config.as_agent,
        })
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
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
            return PostOutcome::NotPosted {
                retryable: true,
                error: "rate_limited".to_owned(),
                detail: format!("Slack answered 429, Retry-After {}s", retry_after.as_secs()),
                retry_after: Some(retry_after),
            };
        }
        if matches!(status.as_u16(), 502 | 504) {
            return PostOutcome::Ambiguous {
                reason: format!("Slack's gateway answered HTTP {}", status.as_u16()),
            };
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
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let ok = parsed
            .as_ref()
            .and_then(|b| b.get("ok"))
            .and_then(Value::as_bool);
        let error = parsed
            .as_ref()
            .and_then(|b| b.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return not_posted(
                true,
                format!("http_{}", status.as_u16()),
                format!("Slack answered HTTP {}", status.as_u16()),
            );
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
            (_, Some(code)) if AMBIGUOUS_ERRORS.contains(&code.as_str()) => {
                PostOutcome::Ambiguous {
                    reason: format!("Slack answered {code}, which may have posted the message"),
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
                    bytes.len()
                ),
            },
            _ => not_posted(
                false,
                format!("http_{}", status.as_u16()),
                format!("Slack answered HTTP {}", status.as_u16()),
            ),
        }
    }
}
