//! The timeline-writer: every fact about a Slack message, as a timeline entry in
//! PostgreSQL.
//!
//! It consumes `slack.messages.v1` in its own consumer group (`timeline-writer`, with
//! its own retry and DLQ topics) on the consumer runtime, which keeps each channel's
//! events in order under retries. Each [`slackline_events::MessageEvent`] becomes one
//! row of `timeline.entries`, keyed by the message key `(team, channel, ts, fact)`;
//! a replay, a Slack retry or a second event id for the same post changes nothing
//! (guarantee 2). Degraded events are entries too, with their reason and archive key.
//! The writer knows nothing of threads beyond each message's `thread_ts`.
//!
//! The posted entry of a message shows its current text: edits are applied in
//! edited-ts order, each once, with the earlier texts in `history`; a delete marks it
//! `deleted` and keeps the row. Edits and deletes that arrive before their post (a
//! DLQ redrive) wait in their own rows and are applied when the post arrives.

pub mod config;
mod entry;
pub mod handler;
pub mod metrics;
mod store;

use std::sync::Arc;

use prometheus::Registry;
use slackline_consumer::{ConsumerError, GroupService};
use slackline_service::Shutdown;
use slackline_store::{StoreError, StoreSettings};

pub use config::TimelineWriterConfig;
pub use handler::Handler;
pub use metrics::TimelineMetrics;

/// The PostgreSQL schema the timeline lives in.
pub const SCHEMA: &str = "timeline";

/// The timeline's migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the timeline-writer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TimelineWriterError {
    /// Connecting to or migrating the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consumer runtime or the admin server failed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// Registering metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Connects to the database and brings the `timeline` schema up to date (used by
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
/// When the database cannot be reached or migrated, or the consumer cannot start
/// (missing or not co-partitioned topics, the admin port taken).
pub async fn start(
    config: TimelineWriterConfig,
    shutdown: Shutdown,
) -> Result<GroupService, TimelineWriterError> {
    let pool = slackline_store::connect_migrated(&config.store, SCHEMA, &MIGRATOR).await?;
    let registry = Registry::new();
    let metrics = TimelineMetrics::register(&registry)?;
    let readiness = slackline_store::readiness(&pool);
    let handler = Arc::new(Handler::new(pool, metrics));
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

/// Runs the timeline-writer until `shutdown` fires.
///
/// A signal during the start (a database that does not answer, say) stops it there:
/// nothing was consumed, so nothing is left to commit.
///
/// # Errors
///
/// As [`start`], or the runtime's error when it stopped with one.
pub async fn run(
    config: TimelineWriterConfig,
    shutdown: Shutdown,
) -> Result<(), TimelineWriterError> {
    match shutdown.unless_fired(start(config, shutdown.clone())).await {
        Some(service) => service?.wait().await?,
        None => tracing::info!("timeline-writer stopped while starting"),
    }
    Ok(())
}
