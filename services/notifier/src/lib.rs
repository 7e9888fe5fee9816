//! The notifier: tells people about new customer messages and about messages that
//! could not be fully processed, on Slack, Discord and by email.
//!
//! It consumes `slack.messages.v1` in its own consumer group (`notifier`, with its own
//! retry and DLQ topics) on the consumer runtime, which keeps each channel's events in
//! order under retries and keeps a failing target from delaying the other groups
//! (guarantees 3 and 4). A new customer (or unknown) author's post in full mode
//! becomes "New message from …"; any degraded event becomes "A message could not be
//! fully processed …" with its archive key. Agents' and bots' posts, edits, deletes,
//! reactions and membership changes are counted and skipped.
//!
//! Each (target, fact) is notified at most once (guarantee 2), through the `sent`
//! table of the `notifier` schema: see [`handler`] for the claim protocol and why a
//! send whose outcome is unknown is counted as ambiguous and not repeated.

pub mod config;
pub mod handler;
pub mod metrics;
pub mod notification;
mod store;
pub mod targets;

use std::sync::Arc;

use prometheus::Registry;
use slackline_consumer::{ConsumerError, GroupService};
use slackline_service::Shutdown;
use slackline_store::{StoreError, StoreSettings};

pub use config::{EmailConfig, NotifierConfig, TargetsConfig};
pub use handler::Handler;
pub use metrics::NotifierMetrics;
pub use store::SentStore;
pub use targets::TargetError;

/// The PostgreSQL schema of the notifier.
pub const SCHEMA: &str = "notifier";

/// The notifier's migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why the notifier could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// Connecting to or migrating the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consumer runtime or the admin server failed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// Registering metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A notification target could not be set up.
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// Connects to the database and brings the `notifier` schema up to date (used by
/// `slackline migrate` and at start-up).
///
/// # Errors
///
/// When the database cannot be reached or a migration fails.
pub async fn migrate(settings: &StoreSettings) -> Result<(), StoreError> {
    slackline_store::migrate_schema(settings, SCHEMA, &MIGRATOR).await
}

/// Connects and migrates the database, builds the targets, then starts the consumer
/// group and the admin server (`/readyz` pings the database). Stops when `shutdown`
/// fires.
///
/// # Errors
///
/// When the database cannot be reached or migrated, a target cannot be built, or the
/// consumer cannot start (missing or not co-partitioned topics, the admin port taken).
pub async fn start(
    config: NotifierConfig,
    shutdown: Shutdown,
) -> Result<GroupService, NotifierError> {
    let targets = targets::build_targets(&config.targets)?;
    let pool = slackline_store::connect_migrated(&config.store, SCHEMA, &MIGRATOR).await?;
    let registry = Registry::new();
    let names: Vec<&str> = targets.iter().map(targets::Target::name).collect();
    let metrics = NotifierMetrics::register(&registry, &names)?;
    if targets.is_empty() {
        tracing::warn!("no notification target configured: events are only counted");
    } else {
        tracing::info!(targets = ?names, "notification targets");
    }
    let readiness = slackline_store::readiness(&pool);
    let handler = Arc::new(Handler::new(SentStore::new(pool), targets, metrics));
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

/// Runs the notifier until `shutdown` fires.
///
/// A signal during the start (a database that does not answer, say) stops it there:
/// nothing was consumed, so nothing is left to commit.
///
/// # Errors
///
/// As [`start`], or the runtime's error when it stopped with one.
pub async fn run(config: NotifierConfig, shutdown: Shutdown) -> Result<(), NotifierError> {
    match shutdown.unless_fired(start(config, shutdown.clone())).await {
        Some(service) => service?.wait().await?,
        None => tracing::info!("notifier stopped while starting"),
    }
    Ok(())
}
