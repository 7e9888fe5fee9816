//! thread-state: which support thread each message belongs to, and the thread's status.
//!
//! It consumes `slack.messages.v1` in consumer group `thread-state` (through the
//! consumer runtime: per-channel order, retry topic, DLQ) and keeps PostgreSQL schema
//! `thread_state`: `threads`, `thread_messages`, `facts` and `transitions`. Grouping is
//! per channel (`slack-thread`, `time-window`, `manual`); a customer message moves a
//! thread to `todo`, an agent message to `waiting`, and configured reactions set a
//! status when an agent (or, if configured, anyone) reacts (see
//! [`config::Grouping::reaction_commands`]).
//!
//! Guarantee 2: each fact is applied in one transaction that first inserts its message
//! key into `facts`; a fact recorded before changes nothing. After the commit, the
//! channel's transitions that Kafka has not acknowledged yet are published on
//! `support.thread-events` (Avro [`slackline_events::ThreadEvent`], key = channel id)
//! and marked `published_at`. A crash between the commit and the acknowledgement
//! redelivers the fact, which publishes them then: every transition is published at
//! least once, and consumers deduplicate by `transition_id`.

mod apply;
pub mod config;
mod handler;
pub mod metrics;
mod store;

use std::sync::Arc;

use prometheus::Registry;
use slackline_consumer::{ConsumerError, GroupService};
use slackline_service::Shutdown;
use slackline_store::{StoreError, StoreSettings};

pub use config::{CommandAuthors, Grouping, GroupingMode, ReactionCommand, ThreadStateConfig};
pub use handler::TRANSITION_ID_HEADER;
pub use metrics::ThreadStateMetrics;

/// thread-state's PostgreSQL schema.
pub const SCHEMA: &str = "thread_state";

/// The migrations of [`SCHEMA`].
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why thread-state could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ThreadStateError {
    /// PostgreSQL could not be reached or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The thread-events producer could not be created.
    #[error(transparent)]
    Kafka(#[from] slackline_kafka::KafkaError),
    /// The consumer runtime or the admin server failed.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// Registering metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Connects to PostgreSQL and runs thread-state's migrations (`slackline migrate`).
///
/// # Errors
///
/// When the database cannot be reached or a migration fails.
pub async fn migrate(settings: &StoreSettings) -> Result<(), StoreError> {
    slackline_store::migrate_schema(settings, SCHEMA, &MIGRATOR).await
}

/// Logs the configuration (its `Debug` hides the database password and secret Kafka
/// properties), connects, migrates, and starts the consumer group with its admin
/// server; stops when `shutdown` fires. Readiness is a database ping.
///
/// # Errors
///
/// When the database, the producer, the metrics or the consumer runtime fail to start.
pub async fn start(
    config: ThreadStateConfig,
    shutdown: Shutdown,
) -> Result<GroupService, ThreadStateError> {
    tracing::info!(?config, "thread-state starting");
    let pool = slackline_store::connect_migrated(&config.store, SCHEMA, &MIGRATOR).await?;
    let producer = config
        .kafka
        .producer("slackline-thread-state", config.delivery_timeout)?;
    let registry = Registry::new();
    let metrics = ThreadStateMetrics::register(&registry)?;
    let readiness = slackline_store::readiness(&pool);
    let handler = Arc::new(handler::Handler {
        pool,
        producer,
        topic: config.thread_events_topic,
        delivery_timeout: config.delivery_timeout,
        grouping: config.grouping,
        metrics,
    });
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

/// [`start`], then waits until the service stops.
///
/// A signal during the start (a database that does not answer, say) stops it there:
/// nothing was consumed, so nothing is left to commit.
///
/// # Errors
///
/// As [`start`], or the runtime's error when it stopped with one.
pub async fn run(config: ThreadStateConfig, shutdown: Shutdown) -> Result<(), ThreadStateError> {
    match shutdown.unless_fired(start(config, shutdown.clone())).await {
        Some(service) => service?.wait().await?,
        None => tracing::info!("thread-state stopped while starting"),
    }
    Ok(())
}
