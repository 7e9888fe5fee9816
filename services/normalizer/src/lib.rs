//! The normalizer: raw Slack events in, typed Avro message events out.
//!
//! It consumes `slack.events.raw` in its own consumer group and turns every raw event
//! into exactly one outcome (guarantee 5): a full event, a degraded event, ignored
//! with a named reason, or a DLQ record on `slack.events.raw.dlq` when even the
//! degraded event cannot be produced. Events are produced to `slack.messages.v1` with
//! the channel as key, so per-channel order carries through (guarantee 3).
//!
//! Offsets are stored only after the outcome is durable: for events, when Kafka has
//! acknowledged the produced record; for ignored events, after every earlier record's
//! outcome. Outcomes are acknowledged in consumption order, so a stored offset never
//! passes an unfinished record. A crash between producing and storing redelivers the
//! raw event; downstream effects are idempotent on the message key (guarantee 2).
//!
//! Why not the consumer runtime (`crates/consumer`): it awaits one handler call per channel at a time and retries through a retry topic, while the normalizer's only effect is one produce per raw event to another topic, pipelined per channel (kept in order by the idempotent producer), with no retry topic (a refused produce goes straight to the DLQ).
//!
//! Modules: [`normalize`] decides each raw event's outcome, [`render`] renders
//! blocks, `authors` enriches authors through `users.info`, `consume` is the loop
//! (concurrent lookups, per-channel order, offsets), `dlq` writes dead letters.

mod authors;
pub mod config;
mod consume;
mod dedup;
mod dlq;
pub mod echo;
pub mod metrics;
pub mod normalize;
pub mod render;

use std::time::Duration;

use prometheus::Registry;
use rdkafka::consumer::{Consumer, StreamConsumer};
use slackline_service::{serve_admin, Readiness, Shutdown};
use slackline_slack_api::{ApiOptions, SlackApi, SlackApiError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::NormalizerConfig;
pub use metrics::NormalizerMetrics;

/// Why the normalizer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NormalizerError {
    /// Kafka failed in a way that needs a restart.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Creating a client failed.
    #[error(transparent)]
    Settings(#[from] slackline_kafka::KafkaError),
    /// A raw event could neither be produced nor dead-lettered; its offset was not
    /// stored, so it is redelivered after the restart.
    #[error("raw event {partition}/{offset} could not be produced or dead-lettered: {reason}")]
    Stuck {
        /// Partition of the raw event.
        partition: i32,
        /// Offset of the raw event.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// The Slack API client could not be built.
    #[error("slack api client: {0}")]
    SlackApi(#[from] SlackApiError),
    /// Binding the admin port failed.
    #[error("binding ADMIN_ADDR {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Registering metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The task panicked.
    #[error("normalizer task failed: {0}")]
    Task(String),
    /// The normalizer stopped without committing everything it had finished, or cut
    /// off outcomes still in flight when the grace ended; they are read again after
    /// the restart.
    #[error("normalizer stopped uncleanly: {0}")]
    Shutdown(String),
}

/// A running normalizer.
pub struct Normalizer {
    /// The admin address (`/metrics`, `/healthz`, `/readyz`).
    pub admin_addr: std::net::SocketAddr,
    /// The metrics registry.
    pub registry: Registry,
    task: JoinHandle<Result<(), NormalizerError>>,
}

impl Normalizer {
    /// Subscribes to the raw topic and starts the loop; stops when `shutdown` fires.
    pub async fn start(
        config: NormalizerConfig,
        shutdown: Shutdown,
    ) -> Result<Normalizer, NormalizerError> {
        let consumer: StreamConsumer = config
            .kafka
            .consumer_config("slackline-normalizer", &config.group_id)
            .create()?;
        consumer.subscribe(&[&config.raw_topic])?;
        // The producer waits for Kafka rather than giving up quickly: the raw event's
        // offset is only stored after its outcome is acknowledged.
        let producer = config
            .kafka
            .producer("slackline-normalizer", Duration::from_secs(300))?;
        if let Some(warning) = config.self_ids_warning() {
            tracing::warn!("{warning}");
        }
        let registry = Registry::new();
        let metrics = NormalizerMetrics::new(&registry)?;
        let authors = if config.bot_tokens.is_empty() {
            None
        } else {
            let api = SlackApi::new(
                &config.slack_api_base_url,
                config.bot_tokens.clone(),
                ApiOptions::default(),
            )?;
            Some(authors::Authors::new(
                api,
                metrics.clone(),
                config.author_lookup_concurrency,
            ))
        };
        let listener = TcpListener::bind(config.admin_addr)
            .await
            .map_err(|source| NormalizerError::Bind {
                addr: config.admin_addr.to_string(),
                source,
            })?;
        let admin_addr = listener
            .local_addr()
            .map_err(|source| NormalizerError::Bind {
                addr: config.admin_addr.to_string(),
                source,
            })?;
        let readiness = {
            let producer = producer.clone();
            let topic = config.messages_topic.clone();
            Readiness::new(move || {
                let producer = producer.clone();
                let topic = topic.clone();
                async move { slackline_kafka::topic_ready(&producer, &topic).await }
            })
        };
        let admin = serve_admin(listener, registry.clone(), readiness, shutdown.clone());
        let dead_letters = dlq::DeadLetters::new(
            producer.clone(),
            &config.dlq_topic,
            &config.raw_topic,
            &config.group_id,
            metrics.clone(),
        );
        let stop = Shutdown::new();
        let end_offsets = consume::EndOffsetReader {
            task: dead_letters.spawn_end_offset_reader(stop.clone()),
            stop,
        };
        let worker = consume::Worker::new(
            producer,
            authors,
            dead_letters,
            end_offsets,
            metrics,
            config,
        );
        let task = tokio::spawn(async move {
            let result = worker.run(consumer, shutdown.clone()).await;
            if result.is_err() {
                // One failing task stops the rest: the process exits non-zero.
                shutdown.trigger();
            }
            let _ = admin.await;
            result
        });
        Ok(Normalizer {
            admin_addr,
            registry,
            task,
        })
    }

    /// Waits for the normalizer to stop.
    pub async fn wait(self) -> Result<(), NormalizerError> {
        self.task
            .await
            .map_err(|e| NormalizerError::Task(e.to_string()))?
    }
}

/// Runs the normalizer until `shutdown` fires (also during the start).
pub async fn run(config: NormalizerConfig, shutdown: Shutdown) -> Result<(), NormalizerError> {
    match shutdown
        .unless_fired(Normalizer::start(config, shutdown.clone()))
        .await
    {
        Some(normalizer) => normalizer?.wait().await,
        None => {
            tracing::info!("normalizer stopped while starting");
            Ok(())
        }
    }
}
