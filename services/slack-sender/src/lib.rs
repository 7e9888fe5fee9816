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
use std::time::Duration;

use prometheus::Registry;
use slackline_consumer::{
    ConsumerError, ConsumerMetrics, ConsumerRuntime, GroupService, RuntimeHandle,
};
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

/// A started slack-sender: its consumer group and its handler (whose send tasks may
/// outlive the group's handler calls).
pub struct SlackSender {
    /// The consumer group service.
    pub service: GroupService,
    /// The handler.
    pub handler: Arc<Handler>,
}

impl SlackSender {
    /// Waits until the service has stopped, then for the sends still under way (the
    /// tasks of handler calls the runtime abandoned: each records its outcome when
    /// Slack answers) until `grace` after the shutdown fired.
    ///
    /// # Errors
    ///
    /// The runtime's error, when it stopped with one.
    pub async fn wait(self, shutdown: &Shutdown, grace: Duration) -> Result<(), ConsumerError> {
        let fired = async {
            shutdown.wait().await;
            tokio::time::Instant::now()
        };
        let (result, fired_at) = tokio::join!(self.service.wait(), fired);
        let in_flight = self.handler.sends_in_flight();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                "waiting for the sends under way to record their outcome"
            );
            if !self.handler.wait_sends(fired_at + grace).await {
                tracing::warn!(
                    in_flight = self.handler.sends_in_flight(),
                    "shutdown grace over with sends under way: their replies stay `sending` \
                     and are found ambiguous later"
                );
            }
        }
        result
    }
}

/// Connects and migrates the database, then starts the consumer group and the admin
/// server (`/readyz` pings the database). Stops when `shutdown` fires; sends under
/// way then finish in the background (see [`start_sender`] to wait for them).
///
/// # Errors
///
/// As [`start_sender`].
pub async fn start(
    config: SlackSenderConfig,
    shutdown: Shutdown,
) -> Result<GroupService, SlackSenderError> {
    Ok(start_sender(config, shutdown).await?.service)
}

/// Connects and migrates the database, then starts the consumer group and the admin
/// server (`/readyz` pings the database). Stops when `shutdown` fires.
///
/// # Errors
///
/// When the database cannot be reached or migrated, the HTTP client cannot be built,
/// or the consumer cannot start (missing or not co-partitioned topics, the admin port
/// taken).
pub async fn start_sender(
    config: SlackSenderConfig,
    shutdown: Shutdown,
) -> Result<SlackSender, SlackSenderError> {
    let (handler, registry, readiness) = build(&config).await?;
    let service = GroupService::start(
        &config.kafka,
        config.runtime,
        config.admin_addr,
        registry,
        readiness,
        {
            let handler = handler.clone();
            move |event| {
                let handler = handler.clone();
                async move { handler.handle(event).await }
            }
        },
        shutdown,
    )
    .await?;
    Ok(SlackSender { service, handler })
}

/// The slack-sender's consumer runtime alone (no admin server), for tests that crash
/// it ([`RuntimeHandle::crash`]) as a killed process stops.
pub struct SenderRuntime {
    /// The consumer runtime.
    pub runtime: RuntimeHandle,
    /// The handler.
    pub handler: Arc<Handler>,
    /// The metrics registry (the sender's and the runtime's families).
    pub registry: Registry,
}

/// Connects and migrates the database and starts the consumer runtime with the
/// sender's handler, without the admin server: for crash tests.
///
/// # Errors
///
/// As [`start_sender`].
pub async fn start_runtime(
    config: SlackSenderConfig,
    shutdown: Shutdown,
) -> Result<SenderRuntime, SlackSenderError> {
    let (handler, registry, _readiness) = build(&config).await?;
    let metrics = ConsumerMetrics::register(&registry)?;
    let runtime = ConsumerRuntime::start(
        &config.kafka,
        config.runtime,
        {
            let handler = handler.clone();
            move |event| {
                let handler = handler.clone();
                async move { handler.handle(event).await }
            }
        },
        &metrics,
        shutdown,
    )
    .await?;
    Ok(SenderRuntime {
        runtime,
        handler,
        registry,
    })
}

/// The handler on a migrated database, its registry and the readiness check.
async fn build(
    config: &SlackSenderConfig,
) -> Result<(Arc<Handler>, Registry, slackline_service::Readiness), SlackSenderError> {
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
    let handler = Arc::new(
        Handler::new(
            ReplyStore::new(pool),
            poster,
            Pacer::new(config.slack.channel_interval),
            metrics,
        )
        .with_retry_rounds(config.runtime.retry_delays.len()),
    );
    Ok((handler, registry, readiness))
}

/// Runs the slack-sender until `shutdown` fires.
///
/// # Errors
///
/// As [`start`], or the runtime's error when it stopped with one.
pub async fn run(config: SlackSenderConfig, shutdown: Shutdown) -> Result<(), SlackSenderError> {
    let grace = config.runtime.shutdown_grace;
    match shutdown
        .unless_fired(start_sender(config, shutdown.clone()))
        .await
    {
        Some(sender) => sender?.wait(&shutdown, grace).await?,
        None => tracing::info!("slack-sender stopped while starting"),
    }
    Ok(())
}
