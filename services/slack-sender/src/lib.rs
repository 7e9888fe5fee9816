//! The slack-sender: agents' replies from `support.replies` into their Slack threads.
//!
//! It consumes `support.replies` (Avro [`slackline_events::Reply`], key = channel id)
//! in its own consumer group (`slack-sender`, with its own retry and DLQ topics) on
//! the consumer runtime, which keeps each channel's replies in order under retries
//! (guarantee 3) and keeps a Slack outage from delaying the other groups
//! (guarantee 4). Each reply becomes at most one `chat.postMessage` reply in its
//! thread (`thread_ts` = the thread's root ts), posted with the installing team's bot
//! token (`SLACK_BOT_TOKENS`), about one per second per channel; see [`handler`] for
//! the claim protocol, [`slack`] for how Slack's answers are sorted, and the
//! `replies` table (schema `slack_sender`) for every reply's state and the `ts` Slack
//! gave it.
//!
//! Every message carries metadata (`event_type` `slackline_reply`, the reply id and
//! the agent). Slack sends the message back to us as an event; the normalizer turns
//! that echo, recognised by our bot or app id and this metadata, into the agent's
//! posted message with Slack's ts, so the timeline shows the reply once and the
//! thread moves to `waiting`, whether the echo arrives before or after the sender
//! recorded the ts.

pub mod config;
pub mod handler;
pub mod metrics;
pub mod slack;
mod store;

use std::sync::Arc;

use prometheus::Registry;
use slackline_consumer::{ConsumerError, GroupService};
use slackline_service::Shutdown;
use slackline_store::{StoreError, StoreSettings};

pub use config::{SlackConfig, SlackSenderConfig};
pub use handler::{Handler, Pacer};
pub use metrics::SenderMetrics;
pub use store::{ReplyState, ReplyStore, Row};

/// The PostgreSQL schema of the slack-sender.
pub const SCHEMA: &str = "slack_sender";

/// The slack-sender's migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the slack-sender could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SlackSenderError {
    /// Connecting to or migrating the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consumer runtime or the admin server failed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// Registering metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Connects to the database and brings the `slack_sender` schema up to date (used by
/// `slackline migrate` and at start-up).
///
/// # Errors
///
/// When the database cannot be reached or a migration fails.
pub async fn migrate(settings: &StoreSettings) -> Result<(), StoreError> {
    slackline_store::migrate_schema(settings, SCHEMA, &MIGRATOR).await
}

/// Connects and migrates the database, then starts the consumer group and the admin
/// server (`/readyz` pings the database). Stops when `shutdown` fires.
///
/// # Errors
///
/// When the database cannot be reached or migrated, the HTTP client cannot be built,
/// or the consumer cannot start (missing or not co-partitioned topics, the admin port
/// taken).
pub async fn start(
    config: SlackSenderConfig,
    shutdown: Shutdown,
) -> Result<GroupService, SlackSenderError> {
    let poster = slack::SlackPoster::new(&config.slack)?;
    let pool = slackline_store::connect_migrated(&config.store, SCHEMA, &MIGRATOR).await?;
    let registry = Registry::new();
    let metrics = SenderMetrics::register(&registry)?;
    tracing::info!(
        slack_api = config.slack.base_url,
        teams = ?config.slack.tokens.teams().collect::<Vec<_>>(),
        channel_interval = ?config.slack.channel_interval,
        "posting replies to Slack"
    );
    if config.slack.tokens.is_empty() {
        tracing::warn!(
            "SLACK_BOT_TOKENS is empty: every reply goes to the DLQ (no bot token configured)"
        );
    }
    let readiness = slackline_store::readiness(&pool);
    let handler = Arc::new(Handler::new(
        ReplyStore::new(pool),
        poster,
        Pacer::new(config.slack.channel_interval),
        metrics,
    ));
    let service = GroupService::start(
        &config.kafka,
        config.runtime,
        config.admin_addr,
        registry,
        readiness,
        move |event| {
            let handler = handler.clone();
            async move { handler.handle(event).await }
        },
        shutdown,
    )
    .await?;
    Ok(service)
}

/// Runs the slack-sender until `shutdown` fires.
///
/// # Errors
///
/// As [`start`], or the runtime's error when it stopped with one.
pub async fn run(config: SlackSenderConfig, shutdown: Shutdown) -> Result<(), SlackSenderError> {
    match shutdown.unless_fired(start(config, shutdown.clone())).await {
        Some(service) => service?.wait().await?,
        None => tracing::info!("slack-sender stopped while starting"),
    }
    Ok(())
}
