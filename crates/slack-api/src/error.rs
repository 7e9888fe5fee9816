//! What can go wrong when calling the Slack Web API.

use std::time::Duration;

/// Slack `error` codes that Slack documents as transient: the same call may succeed
/// later, so [`SlackApiError::is_retryable`] says yes for them.
const TRANSIENT_API_ERRORS: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "ratelimited",
];

/// A failed Slack Web API call.
///
/// Cloneable because one `users.info` result is shared by every caller that waited
/// for the same in-flight request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackApiError {
    /// No bot token is configured for the installing team, so no request was made.
    #[error("no bot token configured for team {team}")]
    NoToken {
        /// The installing team id that was asked for.
        team: String,
    },
    /// Slack answered `user_not_found`.
    #[error("Slack says the user does not exist (user_not_found)")]
    UserNotFound,
    /// Slack answered `user_not_visible`: typically a Slack Connect user of another
    /// organisation that this workspace may not look up.
    #[error("Slack hides the user from this workspace (user_not_visible)")]
    UserNotVisible,
    /// Slack answered 429 and we did not wait: its `Retry-After` was longer than
    /// `max_retry_after`, we already waited once, or an earlier 429 for the same
    /// workspace (and channel, for `chat.postMessage`) is still in force.
    #[error("rate limited by Slack, retry after {}s", retry_after.as_secs_f64())]
    RateLimited {
        /// How long Slack asked us to wait (what remains of it, when an earlier 429
        /// is still in force).
        retry_after: Duration,
    },
    /// Slack answered `"ok": false` with an error other than the ones above
    /// (`invalid_auth`, `channel_not_found`, `not_in_channel`, ...).
    #[error("Slack API error: {error}")]
    Api {
        /// Slack's `error` code.
        error: String,
    },
    /// Slack answered with an HTTP status that is neither success nor 429.
    #[error("Slack answered HTTP {status}")]
    Http {
        /// The HTTP status code.
        status: u16,
    },
    /// The request took longer than `request_timeout`.
    #[error("request to Slack timed out")]
    Timeout,
    /// The request could not be sent or the response could not be read.
    #[error("could not reach Slack: {0}")]
    Transport(String),
    /// Slack answered 2xx with a body we cannot use (not JSON, no `ok`, no user, ...).
    #[error("unexpected response from Slack: {0}")]
    BadResponse(String),
}

impl SlackApiError {
    /// Whether the same call may succeed if tried again later.
    ///
    /// True for timeouts, transport failures, 429, 5xx (and 408) statuses, and the
    /// Slack error codes documented as transient (`internal_error`, `fatal_error`,
    /// `service_unavailable`, `request_timeout`, `ratelimited`). False for a missing
    /// token, `user_not_found`, `user_not_visible`, any other Slack error code, other
    /// 4xx statuses and malformed responses.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout | Self::Transport(_) | Self::RateLimited { .. } => true,
            Self::Http { status } => *status >= 500 || *status == 408,
            Self::Api { error } => TRANSIENT_API_ERRORS.contains(&error.as_str()),
            Self::NoToken { .. }
            | Self::UserNotFound
            | Self::UserNotVisible
            | Self::BadResponse(_) => false,
        }
    }

    /// A short, stable label for metrics and degraded-event reasons
    /// (`no_token`, `user_not_found`, `user_not_visible`, `rate_limited`, `api_error`,
    /// `http_error`, `timeout`, `transport`, `bad_response`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoToken { .. } => "no_token",
            Self::UserNotFound => "user_not_found",
            Self::UserNotVisible => "user_not_visible",
            Self::RateLimited { .. } => "rate_limited",
            Self::Api { .. } => "api_error",
            Self::Http { .. } => "http_error",
            Self::Timeout => "timeout",
            Self::Transport(_) => "transport",
            Self::BadResponse(_) => "bad_response",
        }
    }

    /// Maps a `reqwest` failure to `Timeout` or `Transport`.
    pub(crate) fn from_reqwest(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout
        } else {
            // `{:#}` is not supported by reqwest's Display; walk the sources instead
            // so "error sending request" carries its cause (connection refused, ...).
            let mut message = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            Self::Transport(message)
        }
    }
}
