//! slackline's way out to Slack: a small Slack Web API client shared by the services
//! that must ask Slack something or say something to it.
//!
//! The normalizer enriches message authors with `users.info` (display name, team,
//! email when visible), and must never hold a partition for long while doing it: a
//! failed or hidden lookup degrades the author, not the message. The slack-sender
//! posts support replies into Slack threads with `chat.postMessage`. Both go through
//! [`SlackApi`], which picks the bot token of the installing workspace from
//! [`BotTokens`] (the `SLACK_BOT_TOKENS` setting), bounds every request with a
//! timeout, honours a 429's `Retry-After` once (and fails fast when Slack asks for
//! longer than [`ApiOptions::max_retry_after`]), and caches `users.info` answers,
//! including `user_not_found` / `user_not_visible` for a shorter time, so that a
//! Slack Connect user we may not see does not cost one call per message. Failures are
//! typed ([`SlackApiError`]) and say whether trying again later can help.

mod cache;
mod client;
mod error;
mod model;
mod tokens;

pub use cache::CacheStats;
pub use client::{ApiOptions, SlackApi, DEFAULT_BASE_URL};
pub use error::SlackApiError;
pub use model::{PostedMessage, UserInfo};
pub use tokens::BotTokens;
