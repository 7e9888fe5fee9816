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

pub mod config;
mod dedup;
mod dlq;
pub mod metrics;
pub mod normalize;
pub mod render;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use prometheus::Registry;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use slackline_consumer::FINAL_COMMIT_BUDGET;
use slackline_events::{encode_message, AuthorKind, Kind, MessageEvent, Mode};
use slackline_kafka::headers;
use slackline_service::{serve_admin, Readiness, Shutdown};
use slackline_slack_api::{ApiOptions, SlackApi, SlackApiError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use config::NormalizerConfig;
use dedup::RecentIds;
pub use metrics::NormalizerMetrics;
use normalize::{normalize, IgnoreReason, Outcome, RawMeta};

/// Most raw events whose outcome is in flight at once.
const MAX_IN_FLIGHT: usize = 1024;
/// Event ids remembered to drop Slack's retries.
const RECENT_IDS: usize = 100_000;
/// Longest an author lookup may hold up the partition.
const LOOKUP_BUDGET: Duration = Duration::from_millis(1500);
/// After a lookup times out or fails in a retryable way, lookups pause this long, so
/// a slow or failing Slack API costs one budget per pause, not one per event.
const LOOKUP_PAUSE: Duration = Duration::from_secs(30);

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
        let api = if config.bot_tokens.is_empty() {
            None
        } else {
            Some(SlackApi::new(
                &config.slack_api_base_url,
                config.bot_tokens.clone(),
                ApiOptions::default(),
            )?)
        };
        let registry = Registry::new();
        let metrics = NormalizerMetrics::new(&registry)?;
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
        let worker = Worker {
            producer,
            api,
            metrics,
            recent: RecentIds::new(RECENT_IDS),
            in_flight: std::collections::HashMap::new(),
            config: Arc::new(config),
            lookups_paused_until: None,
        };
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

type Pending = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// A raw event whose outcome has resolved.
struct Finished {
    partition: i32,
    offset: i64,
    /// `Err` when the produced event was not acknowledged: it then goes to the DLQ.
    result: Result<(), String>,
    /// Kept for the DLQ path only.
    raw: Option<dlq::RawCopy>,
    event_type: &'static str,
    /// What was produced, counted once Kafka has acknowledged it (`None`: ignored,
    /// already counted).
    produced: Option<Produced>,
}

/// An event whose outcome is counted when its delivery is acknowledged.
struct Produced {
    mode: Mode,
    degraded_reason: Option<String>,
    /// The delivery key to remember against Slack's retries (`None` for fallback ids).
    event_id: Option<String>,
}

struct Worker {
    producer: FutureProducer,
    api: Option<SlackApi>,
    metrics: NormalizerMetrics,
    recent: RecentIds,
    /// Event ids produced but not yet acknowledged: a Slack retry arriving meanwhile
    /// is a duplicate too.
    in_flight: std::collections::HashMap<String, u32>,
    config: Arc<NormalizerConfig>,
    /// Lookups are skipped until then (see [`LOOKUP_PAUSE`]).
    lookups_paused_until: Option<tokio::time::Instant>,
}

impl Worker {
    /// Consumes until `shutdown` fires, lets the outcomes in flight finish within
    /// the grace, then commits what is finished and leaves the group.
    ///
    /// Everything after the signal is bounded, whatever Kafka is doing: the reading,
    /// the draining and any produce or DLQ write they wait on are cut off when the
    /// grace ends (their raw events are not stored, so they are read again after the
    /// restart), and the final commit and the consumer's close run on a thread of
    /// their own that is given [`FINAL_COMMIT_BUDGET`] (with the brokers gone both
    /// wait for a coordinator for as long as the session lasts, or longer). A stop
    /// that left outcomes unfinished or could not commit returns
    /// [`NormalizerError::Shutdown`], so the process exits non-zero.
    async fn run(
        mut self,
        consumer: StreamConsumer,
        shutdown: Shutdown,
    ) -> Result<(), NormalizerError> {
        let grace = self.config.shutdown_grace;
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        let worked = {
            let work = self.consume(&consumer, &mut pending, &shutdown);
            let grace_over = async {
                shutdown.wait().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                result = work => result.map(|()| None),
                () = grace_over => Ok(Some(pending.len())),
            }
        };
        let unfinished = match &worked {
            Ok(Some(n)) => {
                tracing::warn!(
                    grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                    queued = n,
                    "outcomes still in flight when the grace ended: not committed, read again after the restart"
                );
                Some(*n)
            }
            _ => None,
        };
        // Their delivery futures hold nothing the commit needs.
        drop(pending);
        let Worker { producer, .. } = self;
        let committed = close(consumer, producer).await;
        match (worked, unfinished, committed) {
            (Err(e), _, _) => Err(e),
            (Ok(_), _, Err(reason)) => Err(NormalizerError::Shutdown(reason)),
            (Ok(_), Some(n), Ok(())) => Err(NormalizerError::Shutdown(format!(
                "the grace ended before every outcome in flight was finished ({n} still queued)"
            ))),
            (Ok(_), None, Ok(())) => {
                tracing::info!("offsets committed; normalizer stopped");
                Ok(())
            }
        }
    }

    /// Reads and handles until `shutdown` fires, then waits for every started
    /// outcome.
    async fn consume(
        &mut self,
        consumer: &StreamConsumer,
        pending: &mut FuturesOrdered<Pending>,
        shutdown: &Shutdown,
    ) -> Result<(), NormalizerError> {
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                Some(done) = pending.next(), if !pending.is_empty() => self.finish(consumer, done).await?,
                received = consumer.recv(), if pending.len() < MAX_IN_FLIGHT => {
                    match received {
                        Ok(message) => {
                            let span = tracing::debug_span!(
                                "raw_event",
                                partition = message.partition(),
                                offset = message.offset(),
                                channel = message.key().map(String::from_utf8_lossy).as_deref().unwrap_or("-"),
                            );
                            let item = self.handle(&message).instrument(span).await;
                            pending.push_back(item);
                        }
                        Err(e) => tracing::warn!(error = %e, "consume error"),
                    }
                }
            }
        }
        tracing::info!(in_flight = pending.len(), "normalizer stopping");
        // Drain: every started outcome is finished before the final commit.
        while let Some(done) = pending.next().await {
            self.finish(consumer, done).await?;
        }
        Ok(())
    }

    /// Normalises one raw event and starts producing its outcome.
    async fn handle(&mut self, message: &BorrowedMessage<'_>) -> Pending {
        self.metrics.consumed();
        let partition = message.partition();
        let offset = message.offset();
        let header = |name: &str| header_value(message, name);
        let archive_key = header(headers::ARCHIVE_KEY).unwrap_or_default();
        let record_key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let event_id = header(headers::EVENT_ID);
        let payload = message.payload().unwrap_or_default();
        let meta = RawMeta {
            archive_key: &archive_key,
            record_key,
            event_id: event_id.as_deref(),
        };
        let outcome = normalize(payload, meta, &self.config.rules);
        let ready = |event_type| -> Pending {
            Box::pin(std::future::ready(Finished {
                partition,
                offset,
                result: Ok(()),
                raw: None,
                event_type,
                produced: None,
            }))
        };
        let mut event = match outcome {
            Outcome::Ignored {
                reason, event_type, ..
            } => {
                let label = metrics::event_type_label(event_type.as_deref());
                self.metrics.ignored(reason, label);
                tracing::debug!(reason = reason.label(), "ignored");
                return ready(label);
            }
            Outcome::Event(event) => event,
        };
        let label = metrics::event_type_label(event_type_of(&event));
        if event.mode == Mode::Full
            && !event.event_id.starts_with("archive:")
            && (self.recent.contains(&event.event_id)
                || self.in_flight.contains_key(&event.event_id))
        {
            self.metrics.ignored(IgnoreReason::Duplicate, label);
            return ready(label);
        }
        if let Some(api) = &self.api {
            let now = tokio::time::Instant::now();
            if self.lookups_paused_until.is_some_and(|until| now < until) {
                self.metrics.author_lookup("paused");
            } else if enrich(api, &mut event, &self.metrics).await == Lookup::Unhealthy {
                tracing::warn!(
                    pause_s = LOOKUP_PAUSE.as_secs(),
                    "Slack API slow or failing: pausing author lookups"
                );
                self.lookups_paused_until = Some(now + LOOKUP_PAUSE);
            }
        }
        let raw = dlq::RawCopy::of(message);
        let bytes = match encode_message(&event) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Box::pin(std::future::ready(Finished {
                    partition,
                    offset,
                    result: Err(format!("encoding the event: {e}")),
                    raw: Some(raw),
                    event_type: label,
                    produced: None,
                }));
            }
        };
        if event.mode == Mode::Degraded {
            let reason = event.degraded_reason.as_deref().unwrap_or_default();
            tracing::info!(reason, archive_key, "degraded event");
        }
        let produced = Produced {
            mode: event.mode,
            degraded_reason: event.degraded_reason.clone(),
            // Fallback ids (`archive:…`) are not Slack's delivery key: never dedupe on them.
            event_id: (!event.event_id.starts_with("archive:")).then(|| event.event_id.clone()),
        };
        if let Some(id) = &produced.event_id {
            *self.in_flight.entry(id.clone()).or_default() += 1;
        }
        let key = event
            .channel_id
            .clone()
            .or_else(|| record_key.map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        let mut out_headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::ARCHIVE_KEY,
                value: Some(archive_key.as_str()),
            })
            .insert(Header {
                key: headers::EVENT_ID,
                value: Some(event.event_id.as_str()),
            });
        if let Some(received) = header(headers::RECEIVED_AT) {
            out_headers = out_headers.insert(Header {
                key: headers::RECEIVED_AT,
                value: Some(received.as_str()),
            });
        }
        let record = FutureRecord::to(&self.config.messages_topic)
            .key(key.as_str())
            .payload(&bytes)
            .headers(out_headers);
        let delivery = send_with_backpressure(&self.producer, record).await;
        Box::pin(async move {
            let result = match delivery {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("delivery cancelled".to_owned()),
                },
            };
            Finished {
                partition,
                offset,
                raw: result.is_err().then_some(raw),
                result,
                event_type: label,
                produced: Some(produced),
            }
        })
    }

    /// Stores the offset of a finished outcome (after a DLQ record when it failed).
    async fn finish(
        &mut self,
        consumer: &StreamConsumer,
        done: Finished,
    ) -> Result<(), NormalizerError> {
        if let Some(id) = done.produced.as_ref().and_then(|p| p.event_id.as_ref()) {
            if let Some(count) = self.in_flight.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    self.in_flight.remove(id);
                }
            }
        }
        if let Err(reason) = done.result {
            let raw = done.raw.unwrap_or_default();
            tracing::error!(
                partition = done.partition,
                offset = done.offset,
                reason,
                "dead-lettering raw event"
            );
            dlq::send(
                &self.producer,
                &self.config.dlq_topic,
                &self.config.raw_topic,
                &self.config.group_id,
                &raw,
                &reason,
            )
            .await
            .map_err(|e| NormalizerError::Stuck {
                partition: done.partition,
                offset: done.offset,
                reason: format!("{reason}; then the DLQ failed too: {e}"),
            })?;
            self.metrics.dead_lettered(done.event_type);
        } else if let Some(produced) = done.produced {
            match produced.mode {
                Mode::Full => self.metrics.produced_full(done.event_type),
                Mode::Degraded => self.metrics.produced_degraded(
                    produced.degraded_reason.as_deref().unwrap_or_default(),
                    done.event_type,
                ),
            }
            if let Some(id) = produced.event_id {
                self.recent.insert(id);
            }
        }
        // librdkafka stores `offset + 1` itself: the next record to read.
        match consumer.store_offset(&self.config.raw_topic, done.partition, done.offset) {
            Ok(()) => Ok(()),
            // The partition was revoked (rebalance) while this outcome was in flight:
            // its new owner reads it again from the last commit; nothing is lost.
            Err(rdkafka::error::KafkaError::StoreOffset(
                rdkafka::types::RDKafkaErrorCode::State,
            )) => {
                tracing::info!(
                    partition = done.partition,
                    offset = done.offset,
                    "partition revoked; offset not stored"
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Commits the stored offsets (each one's outcome is durable), then leaves the group
/// and drops the clients, on a thread of its own: with the brokers gone the commit
/// waits for a coordinator and closing the consumer can wait far longer, and neither
/// can be cancelled. Both together are given [`FINAL_COMMIT_BUDGET`]; past it the
/// thread is left behind (the process is exiting). `Err` when the commit was not
/// made; a close that did not finish in time is only logged (the partitions then
/// move on after the session timeout).
async fn close(consumer: StreamConsumer, producer: FutureProducer) -> Result<(), String> {
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("slackline-close".to_owned())
        .spawn(move || {
            let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing new since the last automatic commit.
                Ok(())
                | Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                )) => Ok(()),
                Err(e) => Err(format!("the final commit failed: {e}")),
            };
            let _ = committed_tx.send(committed);
            // Leave the group now, so the partitions move to another member at once
            // instead of after the session timeout.
            consumer.unsubscribe();
            drop(consumer);
            drop(producer);
            let _ = closed_tx.send(());
        });
    if let Err(e) = spawned {
        return Err(format!("starting the closing thread: {e}"));
    }
    let deadline = tokio::time::Instant::now() + FINAL_COMMIT_BUDGET;
    let result = match tokio::time::timeout_at(deadline, committed_rx).await {
        Ok(Ok(committed)) => committed,
        Ok(Err(_)) => Err("the closing thread stopped".to_owned()),
        Err(_) => Err(format!(
            "the final commit did not finish within {FINAL_COMMIT_BUDGET:?} (brokers unreachable?)"
        )),
    };
    match &result {
        Err(reason) => tracing::error!(reason, "normalizer stopped without its final commit"),
        Ok(()) => {
            if tokio::time::timeout_at(deadline, closed_rx).await.is_err() {
                tracing::warn!(
                    "offsets committed, but leaving the group did not finish within {FINAL_COMMIT_BUDGET:?}"
                );
            }
        }
    }
    result
}

/// Sends a record, waiting while the producer's local queue is full (backpressure
/// is not a failure: it must never send a good event to the DLQ).
async fn send_with_backpressure(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, str, Vec<u8>>,
) -> Result<rdkafka::producer::DeliveryFuture, String> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e.to_string()),
        }
    }
}

fn header_value(message: &BorrowedMessage<'_>, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

fn event_type_of(event: &MessageEvent) -> Option<&str> {
    Some(match &event.kind {
        Kind::Posted(_) | Kind::Edited(_) | Kind::Deleted(_) => "message",
        Kind::ReactionAdded(_) => "reaction_added",
        Kind::ReactionRemoved(_) => "reaction_removed",
        Kind::MemberJoined(_) => "member_joined_channel",
        Kind::MemberLeft(_) => "member_left_channel",
        Kind::Degraded(d) => return d.event_type.as_deref(),
    })
}

/// How a lookup went, for the pause logic.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// Answered (or nothing to look up, or a permanent answer such as not visible).
    Healthy,
    /// Timed out or failed in a retryable way.
    Unhealthy,
}

/// Fills the author's name, email and team from `users.info`. A failure degrades
/// the author (left as the event had it), never the message.
async fn enrich(api: &SlackApi, event: &mut MessageEvent, metrics: &NormalizerMetrics) -> Lookup {
    let Some(author) = event.author.as_mut() else {
        return Lookup::Healthy;
    };
    let Some(user_id) = author.user_id.clone() else {
        return Lookup::Healthy;
    };
    if author.kind == AuthorKind::Bot || !(user_id.starts_with('U') || user_id.starts_with('W')) {
        return Lookup::Healthy;
    }
    match tokio::time::timeout(LOOKUP_BUDGET, api.users_info(&event.team_id, &user_id)).await {
        Ok(Ok(user)) => {
            metrics.author_lookup("ok");
            if author.display_name.is_none() {
                author.display_name = user.display_name;
            }
            author.email = user.email;
            if author.team_id.is_none() {
                author.team_id = user.team_id;
            }
            if user.is_bot {
                author.kind = AuthorKind::Bot;
            } else if author.kind == AuthorKind::Unknown {
                author.kind = normalize::author_kind(author.team_id.as_deref(), &event.team_id);
            }
            Lookup::Healthy
        }
        Ok(Err(e)) => {
            metrics.author_lookup(e.kind());
            tracing::debug!(error = %e, user_id, "author lookup failed; keeping what the event says");
            if e.is_retryable() {
                Lookup::Unhealthy
            } else {
                Lookup::Healthy
            }
        }
        Err(_) => {
            metrics.author_lookup("timeout");
            tracing::debug!(
                user_id,
                "author lookup over budget; keeping what the event says"
            );
            Lookup::Unhealthy
        }
    }
}
