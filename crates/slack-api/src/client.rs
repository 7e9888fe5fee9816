//! The client: configuration, the shared request path with 429 handling, and the two
//! Web API methods slackline calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cache::{CacheStats, Key, Lookup, UserCache};
use crate::{BotTokens, PostedMessage, SlackApiError, UserInfo};

/// Where the Slack Web API lives; tests point the client at a loopback server instead.
pub const DEFAULT_BASE_URL: &str = "https://slack.com/api";

/// How long to wait when a 429 carries no usable `Retry-After` (Slack always sends
/// one, in seconds).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Timeouts, rate-limit patience and cache sizing of a [`SlackApi`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiOptions {
    /// Limit on one HTTP request, connect to last body byte (default 2 s).
    pub request_timeout: Duration,
    /// The longest `Retry-After` we wait out (once) before retrying; a 429 asking for
    /// longer fails fast with [`SlackApiError::RateLimited`] (default 10 s).
    pub max_retry_after: Duration,
    /// How long a successful `users.info` answer is reused (default 1 h).
    pub cache_ttl: Duration,
    /// How long `user_not_found` / `user_not_visible` is reused (default 5 min).
    pub negative_cache_ttl: Duration,
    /// Most users cached at once; the oldest entry is evicted when full
    /// (default 10 000; 0 disables the cache).
    pub cache_capacity: usize,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(10),
            cache_ttl: Duration::from_secs(3600),
            negative_cache_ttl: Duration::from_secs(300),
            cache_capacity: 10_000,
        }
    }
}

/// A Slack Web API client for slackline's services: `users.info` behind a cache, and
/// `chat.postMessage`.
///
/// Cheap to clone; clones share the HTTP connection pool, the cache and the
/// rate-limit state.
///
/// Every call makes at most two HTTP requests: on a 429 whose `Retry-After` is at
/// most [`ApiOptions::max_retry_after`] it sleeps that long and tries once more. A
/// 429 also closes a gate for that workspace's method (and channel, for
/// `chat.postMessage`) until its `Retry-After` has passed: calls in that window do
/// not hit Slack, they wait (if the rest of the window is short enough) or fail fast
/// with [`SlackApiError::RateLimited`]. The worst-case duration of one call is
/// therefore `2 × request_timeout + max_retry_after`.
#[derive(Clone)]
pub struct SlackApi {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    tokens: BotTokens,
    options: ApiOptions,
    users: UserCache,
    /// Rate-limit gates: key → instant before which Slack asked us not to call.
    gates: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi")
            .field("base_url", &self.inner.base_url)
            .field("tokens", &self.inner.tokens)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl SlackApi {
    /// A client calling `{base_url}/{method}` (for example [`DEFAULT_BASE_URL`]) with
    /// the bot token of the team each call names.
    ///
    /// Fails only if the HTTP client cannot be built (TLS initialisation), as
    /// [`SlackApiError::Transport`].
    pub fn new(
        base_url: impl Into<String>,
        tokens: BotTokens,
        options: ApiOptions,
    ) -> Result<Self, SlackApiError> {
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .user_agent(concat!("slackline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SlackApiError::from_reqwest(&e))?;
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        let users = UserCache::new(
            options.cache_ttl,
            options.negative_cache_ttl,
            options.cache_capacity,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                tokens,
                options,
                users,
                gates: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The base URL calls go to (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The configured bot tokens.
    pub fn tokens(&self) -> &BotTokens {
        &self.inner.tokens
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ApiOptions {
        &self.inner.options
    }

    /// Counters of the `users.info` cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.users.stats()
    }

    /// Forgets the cached answer (positive or negative) for one user, for example on
    /// a `user_change` event; the next lookup asks Slack.
    pub fn invalidate_user(&self, team_id: &str, user_id: &str) {
        self.inner
            .users
            .invalidate(&(team_id.to_owned(), user_id.to_owned()));
    }

    /// Looks up `user_id` as the installing team `team_id` sees it
    /// (`GET {base}/users.info?user=…` with that team's bot token).
    ///
    /// Answers from the cache when it can: successes for `cache_ttl`, and
    /// [`SlackApiError::UserNotFound`] / [`SlackApiError::UserNotVisible`] for
    /// `negative_cache_ttl`; other errors are not cached. Concurrent lookups of the
    /// same (team, user) share one request. An unknown team fails with
    /// [`SlackApiError::NoToken`] without any request.
    pub async fn users_info(
        &self,
        team_id: &str,
        user_id: &str,
    ) -> Result<UserInfo, SlackApiError> {
        let token = self.token(team_id)?;
        let key: Key = (team_id.to_owned(), user_id.to_owned());
        let flight = match self.inner.users.lookup(&key) {
            Lookup::Hit(result) => return result,
            Lookup::Fetch(flight) => flight,
        };
        // If the task running the request is cancelled, the next waiter runs its own
        // (tokio's OnceCell hands initialisation over), so no waiter hangs.
        flight
            .get_or_init(|| async {
                let result = self.fetch_user(token, team_id, user_id).await;
                self.inner.users.complete(&key, &flight, &result);
                result
            })
            .await
            .clone()
    }

    async fn fetch_user(
        &self,
        token: &str,
        team_id: &str,
        user_id: &str,
    ) -> Result<UserInfo, SlackApiError> {
        let url = format!("{}/users.info", self.inner.base_url);
        let gate = format!("users.info {team_id}");
        let body = self
            .call("users.info", team_id, &gate, || {
                self.inner
                    .http
                    .get(&url)
                    .bearer_auth(token)
                    .query(&[("user", user_id)])
            })
            .await
            .map_err(|error| match error {
                SlackApiError::Api { error } if error == "user_not_found" => {
                    SlackApiError::UserNotFound
                }
                SlackApiError::Api { error } if error == "user_not_visible" => {
                    SlackApiError::UserNotVisible
                }
                other => other,
            })?;
        let user = body.get("user").ok_or_else(|| {
            SlackApiError::BadResponse("users.info answered ok without a user".to_owned())
        })?;
        UserInfo::from_user_object_or(user, user_id).ok_or_else(|| {
            SlackApiError::BadResponse(
                "users.info answered a user that is not an object".to_owned(),
            )
        })
    }

    /// Posts `text` to `channel` as the bot of `team_id`, as a reply in the thread
    /// `thread_ts` (the parent's ts) when given (`POST {base}/chat.postMessage`).
    ///
    /// A 429 is handled as for every call (one wait of at most `max_retry_after`,
    /// gated per team and channel). A [`SlackApiError::Timeout`] is ambiguous: Slack
    /// may have posted the message, so it is never retried here.
    pub async fn chat_post_message(
        &self,
        team_id: &str,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
    ) -> Result<PostedMessage, SlackApiError> {
        let token = self.token(team_id)?;
        let url = format!("{}/chat.postMessage", self.inner.base_url);
        let gate = format!("chat.postMessage {team_id} {channel}");
        let mut payload = json!({ "channel": channel, "text": text });
        if let Some(thread_ts) = thread_ts {
            payload["thread_ts"] = Value::from(thread_ts);
        }
        let body = self
            .call("chat.postMessage", team_id, &gate, || {
                self.inner.http.post(&url).bearer_auth(token).json(&payload)
            })
            .await?;
        let field = |name: &str| {
            body.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    SlackApiError::BadResponse(format!(
                        "chat.postMessage answered ok without a {name}"
                    ))
                })
        };
        Ok(PostedMessage {
            channel: field("channel")?,
            ts: field("ts")?,
        })
    }

    fn token(&self, team_id: &str) -> Result<&str, SlackApiError> {
        self.inner
            .tokens
            .get(team_id)
            .ok_or_else(|| SlackApiError::NoToken {
                team: team_id.to_owned(),
            })
    }

    /// Sends the request `build` makes, with the 429 handling described on
    /// [`SlackApi`], and returns the JSON body of an `"ok": true` answer.
    async fn call(
        &self,
        method: &'static str,
        team_id: &str,
        gate: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, SlackApiError> {
        let max_wait = self.inner.options.max_retry_after;
        let mut waited = false;
        if let Some(remaining) = self.gate_remaining(gate) {
            if remaining > max_wait {
                tracing::debug!(
                    method,
                    team_id,
                    ?remaining,
                    "rate-limit window still open; not calling Slack"
                );
                return Err(SlackApiError::RateLimited {
                    retry_after: remaining,
                });
            }
            tracing::debug!(
                method,
                team_id,
                ?remaining,
                "waiting out an open rate-limit window"
            );
            tokio::time::sleep(remaining).await;
            waited = true;
        }
        loop {
            let response = build()
                .send()
                .await
                .map_err(|e| SlackApiError::from_reqwest(&e))?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                let retry_after = retry_after(response.headers());
                self.close_gate(gate, retry_after);
                if waited || retry_after > max_wait {
                    tracing::warn!(
                        method,
                        team_id,
                        ?retry_after,
                        "rate limited by Slack; giving up"
                    );
                    return Err(SlackApiError::RateLimited { retry_after });
                }
                tracing::warn!(
                    method,
                    team_id,
                    ?retry_after,
                    "rate limited by Slack; retrying once after Retry-After"
                );
                tokio::time::sleep(retry_after).await;
                waited = true;
                continue;
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| SlackApiError::from_reqwest(&e))?;
            let body: Option<Value> = serde_json::from_slice(&bytes).ok();
            let ok = body
                .as_ref()
                .and_then(|b| b.get("ok"))
                .and_then(Value::as_bool);
            let error = body
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("unknown_error")
                .to_owned();
            if !status.is_success() {
                // A 4xx that still carries Slack's error code is more useful as that code.
                if ok == Some(false) && status.is_client_error() {
                    return Err(SlackApiError::Api { error });
                }
                return Err(SlackApiError::Http {
                    status: status.as_u16(),
                });
            }
            return match (body, ok) {
                (Some(body), Some(true)) => Ok(body),
                (Some(_), Some(false)) => {
                    tracing::debug!(method, team_id, error, "Slack answered ok:false");
                    Err(SlackApiError::Api { error })
                }
                (Some(_), None) => Err(SlackApiError::BadResponse(format!(
                    "{method} answered JSON without a boolean `ok`"
                ))),
                (None, _) => Err(SlackApiError::BadResponse(format!(
                    "{method} answered HTTP {} with a body that is not JSON ({} bytes)",
                    status.as_u16(),
                    bytes.len()
                ))),
            };
        }
    }

    fn gate_remaining(&self, gate: &str) -> Option<Duration> {
        let gates = self
            .inner
            .gates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = *gates.get(gate)?;
        let remaining = until.saturating_duration_since(Instant::now());
        (!remaining.is_zero()).then_some(remaining)
    }

    fn close_gate(&self, gate: &str, retry_after: Duration) {
        let now = Instant::now();
        // A hostile or broken Retry-After must not overflow the clock (a panic).
        let until = now
            .checked_add(retry_after.min(Duration::from_secs(24 * 60 * 60)))
            .unwrap_or(now);
        let mut gates = self
            .inner
            .gates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        gates.retain(|_, open_at| *open_at > now);
        let entry = gates.entry(gate.to_owned()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }
}

/// `Retry-After` in seconds; Slack sends an integer. Anything else gets the default.
fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_RETRY_AFTER)
}
