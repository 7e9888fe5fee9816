//! The consume loop: read a raw event, normalise it, enrich its author, produce its
//! outcome, store its offset.
//!
//! Every raw event read becomes one future in a [`FuturesOrdered`]: its author
//! lookup ([`crate::authors`]), its produce and, when the produce fails, its DLQ
//! write run concurrently with the other events', while the outcomes are finished
//! (counted, offset stored, without waiting on anything) strictly in consumption
//! order, so a stored offset never passes an unfinished record. A slow DLQ write
//! holds back only the offsets after its record, never the other events' lookups
//! and produces (and so never trips the lookup pause). Each channel's events are
//! handed to the producer in the order they were read (a chain of turns per
//! channel, see [`Lanes`]), and the idempotent producer keeps that order on the
//! partition, so a lookup that finishes early never lets a later event of its
//! channel overtake an earlier one.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use slackline_consumer::FINAL_COMMIT_BUDGET;
use slackline_events::{encode_message, Kind, MessageEvent, Mode};
use slackline_kafka::headers;
use slackline_service::Shutdown;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::authors::Authors;
use crate::dedup::{Coordinates, RecentIds};
use crate::dlq::{DeadLetters, RawCopy};
use crate::metrics::{self, NormalizerMetrics};
use crate::normalize::{normalize, IgnoreReason, Outcome, RawMeta};
use crate::{NormalizerConfig, NormalizerError};

/// Most raw events whose outcome is in flight at once.
const MAX_IN_FLIGHT: usize = 1024;
/// Event ids remembered to drop Slack's retries.
const RECENT_IDS: usize = 100_000;

type Pending = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// A raw event whose outcome has resolved (and is durable, unless `Stuck`).
struct Finished {
    partition: i32,
    offset: i64,
    ending: Ending,
    event_type: &'static str,
    /// What was produced, counted once Kafka has acknowledged it (`None`: ignored,
    /// already counted).
    produced: Option<Produced>,
}

/// How a raw event's outcome ended.
enum Ending {
    /// Produced and acknowledged, or ignored (nothing to produce).
    Done,
    /// Could not be encoded or produced; its DLQ record is acknowledged.
    DeadLettered,
    /// Could neither be produced nor dead-lettered (why).
    Stuck(String),
}

/// An event whose outcome is counted when its delivery is acknowledged.
struct Produced {
    mode: Mode,
    degraded_reason: Option<String>,
    /// The delivery key to remember against Slack's retries, with the record that
    /// carried it (`None` for fallback ids and replayed records).
    event_id: Option<(String, Coordinates)>,
}

/// Per channel (output key), the turn of its latest event to hand its record to the
/// producer: an event waits for the previous one of its channel, then passes the
/// turn on once its own record is handed over (or once it knows it has none).
#[derive(Default)]
struct Lanes {
    latest: HashMap<String, oneshot::Receiver<()>>,
}

/// One event's place in its channel's lane.
struct Turn {
    previous: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
}

impl Lanes {
    fn join(&mut self, key: &str) -> Turn {
        let (done, latest) = oneshot::channel();
        let previous = self.latest.insert(key.to_owned(), latest);
        if self.latest.len() > 2 * MAX_IN_FLIGHT {
            // Forget the channels whose latest event has passed its turn on.
            self.latest.retain(|_, latest| {
                matches!(latest.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            });
        }
        Turn { previous, done }
    }
}

impl Turn {
    /// Waits until every earlier event of the channel has handed its record to the
    /// producer (or has none); the caller passes the turn on by sending on, or
    /// dropping, what this returns.
    async fn wait(self) -> oneshot::Sender<()> {
        if let Some(previous) = self.previous {
            // Err: the previous event dropped its turn, which also passes it on.
            let _ = previous.await;
        }
        self.done
    }
}

/// The reader of the DLQ topic's end offsets, stopped before the clients close.
pub(crate) struct EndOffsetReader {
    pub(crate) stop: Shutdown,
    pub(crate) task: JoinHandle<()>,
}

pub(crate) struct Worker {
    producer: FutureProducer,
    authors: Option<Authors>,
    dead_letters: DeadLetters,
    end_offsets: EndOffsetReader,
    metrics: NormalizerMetrics,
    recent: RecentIds,
    /// Event ids produced but not yet acknowledged (how many, and the record that
    /// first carried the id): a Slack retry arriving meanwhile is a duplicate too.
    in_flight: HashMap<String, (u32, Coordinates)>,
    lanes: Lanes,
    config: Arc<NormalizerConfig>,
}

impl Worker {
    pub(crate) fn new(
        producer: FutureProducer,
        authors: Option<Authors>,
        dead_letters: DeadLetters,
        end_offsets: EndOffsetReader,
        metrics: NormalizerMetrics,
        config: NormalizerConfig,
    ) -> Worker {
        Worker {
            producer,
            authors,
            dead_letters,
            end_offsets,
            metrics,
            recent: RecentIds::new(RECENT_IDS),
            in_flight: HashMap::new(),
            lanes: Lanes::default(),
            config: Arc::new(config),
        }
    }

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
    pub(crate) async fn run(
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
        // Their futures hold nothing the commit needs.
        drop(pending);
        let Worker {
            producer,
            dead_letters,
            end_offsets,
            authors,
            ..
        } = self;
        // The reader holds a producer handle: it stops first, so the clients are
        // dropped on the closing thread below.
        end_offsets.stop.trigger();
        let _ = end_offsets.task.await;
        drop(authors);
        let committed = close(consumer, (producer, dead_letters)).await;
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

    /// Reads and starts outcomes until `shutdown` fires, then waits for every
    /// started outcome.
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
                // `finish` never waits: `pending` (every other event's lookup, produce
                // and DLQ write) keeps being polled.
                Some(done) = pending.next(), if !pending.is_empty() => self.finish(consumer, done)?,
                received = consumer.recv(), if pending.len() < MAX_IN_FLIGHT => {
                    match received {
                        Ok(message) => {
                            let item = self.handle(&message);
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
            self.finish(consumer, done)?;
        }
        Ok(())
    }

    /// Starts one raw event's outcome in a span naming it (at info level, so an
    /// error or panic inside the outcome carries its coordinates as tags).
    fn handle(&mut self, message: &BorrowedMessage<'_>) -> Pending {
        let header = |name: &str| header_value(message, name);
        let archive_key = header(headers::ARCHIVE_KEY).unwrap_or_default();
        let event_id = header(headers::EVENT_ID);
        let span = tracing::info_span!(
            "raw_event",
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            channel = message
                .key()
                .map(String::from_utf8_lossy)
                .as_deref()
                .unwrap_or("-"),
            event_id = event_id.as_deref().unwrap_or("-"),
            archive_key = archive_key.as_str(),
        );
        let item = span.in_scope(|| self.start(message, archive_key, event_id));
        Box::pin(item.instrument(span))
    }

    /// Normalises one raw event and returns the future of its outcome: enrich the
    /// author, wait for the channel's turn, produce, wait for the acknowledgement,
    /// and when the event could not be encoded or produced, write its DLQ record and
    /// wait for that acknowledgement.
    fn start(
        &mut self,
        message: &BorrowedMessage<'_>,
        archive_key: String,
        event_id: Option<String>,
    ) -> Pending {
        self.metrics.consumed();
        let partition = message.partition();
        let offset = message.offset();
        let header = |name: &str| header_value(message, name);
        // `slackline replay`: normalized whatever its event id (not a Slack retry).
        let replayed = header(headers::REPLAY).is_some();
        if replayed {
            self.metrics.replayed();
        }
        let record_key = message.key().and_then(|k| std::str::from_utf8(k).ok());
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
                ending: Ending::Done,
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
        // A Slack retry is another record with an id already seen; the same record
        // read again (a rewind, a rebalance before the commit) is normalized again.
        let at = (partition, offset);
        if event.mode == Mode::Full
            && !replayed
            && !event.event_id.starts_with("archive:")
            && (self.recent.is_retry(&event.event_id, at)
                || self
                    .in_flight
                    .get(&event.event_id)
                    .is_some_and(|(_, first)| *first != at))
        {
            self.metrics.ignored(IgnoreReason::Duplicate, label);
            return ready(label);
        }
        let raw = RawCopy::of(message);
        let produced = Produced {
            mode: event.mode,
            degraded_reason: event.degraded_reason.clone(),
            // Fallback ids (`archive:…`) are not Slack's delivery key, and a replayed
            // record is not a Slack delivery: never dedupe on them.
            event_id: (!replayed && !event.event_id.starts_with("archive:"))
                .then(|| (event.event_id.clone(), at)),
        };
        if let Some((id, at)) = &produced.event_id {
            self.in_flight.entry(id.clone()).or_insert((0, *at)).0 += 1;
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
        let turn = self.lanes.join(&key);
        let authors = self.authors.clone();
        let producer = self.producer.clone();
        let dead_letters = self.dead_letters.clone();
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            if let Some(authors) = &authors {
                authors.enrich(&mut event).await;
            }
            let encoded = encode_message(&event);
            let done = turn.wait().await;
            let bytes = match encoded {
                Ok(bytes) => bytes,
                Err(e) => {
                    drop(done);
                    let reason = format!("encoding the event: {e}");
                    return Finished {
                        partition,
                        offset,
                        ending: dead_letter(&dead_letters, &raw, reason).await,
                        event_type: label,
                        produced: Some(produced),
                    };
                }
            };
            if event.mode == Mode::Degraded {
                let reason = event.degraded_reason.as_deref().unwrap_or_default();
                tracing::info!(reason, archive_key, "degraded event");
            }
            let record = FutureRecord::to(&config.messages_topic)
                .key(key.as_str())
                .payload(&bytes)
                .headers(out_headers);
            let delivery = send_with_backpressure(&producer, record).await;
            // Handed over (or refused): the channel's next event may go.
            let _ = done.send(());
            let result = match delivery {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("delivery cancelled".to_owned()),
                },
            };
            let ending = match result {
                Ok(()) => Ending::Done,
                Err(reason) => dead_letter(&dead_letters, &raw, reason).await,
            };
            Finished {
                partition,
                offset,
                ending,
                event_type: label,
                produced: Some(produced),
            }
        })
    }

    /// Counts a finished outcome and stores its offset (its outcome, the DLQ record
    /// included, is durable by then); never waits.
    fn finish(&mut self, consumer: &StreamConsumer, done: Finished) -> Result<(), NormalizerError> {
        if let Some((id, _)) = done.produced.as_ref().and_then(|p| p.event_id.as_ref()) {
            if let Some((count, _)) = self.in_flight.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    self.in_flight.remove(id);
                }
            }
        }
        match done.ending {
            Ending::Stuck(reason) => {
                return Err(NormalizerError::Stuck {
                    partition: done.partition,
                    offset: done.offset,
                    reason,
                })
            }
            Ending::DeadLettered => self.metrics.dead_lettered(done.event_type),
            // Ignored events were counted when they were read.
            Ending::Done => {
                if let Some(produced) = done.produced {
                    match produced.mode {
                        Mode::Full => self.metrics.produced_full(done.event_type),
                        Mode::Degraded => self.metrics.produced_degraded(
                            produced.degraded_reason.as_deref().unwrap_or_default(),
                            done.event_type,
                        ),
                    }
                    if let Some((id, at)) = produced.event_id {
                        self.recent.insert(id, at);
                    }
                }
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
/// and drops the clients (`held`: the producer handles), on a thread of its own: with
/// the brokers gone the commit waits for a coordinator and closing the consumer can
/// wait far longer, and neither can be cancelled. Both together are given
/// [`FINAL_COMMIT_BUDGET`]; past it the thread is left behind (the process is
/// exiting). `Err` when the commit was not made; a close that did not finish in time
/// is only logged (the partitions then move on after the session timeout).
async fn close<H: Send + 'static>(consumer: StreamConsumer, held: H) -> Result<(), String> {
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
            drop(held);
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

/// Writes the DLQ record of a raw event that could not be produced (`reason`) and
/// waits for its acknowledgement.
async fn dead_letter(dead_letters: &DeadLetters, raw: &RawCopy, reason: String) -> Ending {
    tracing::debug!(reason, "not produced; writing the DLQ record");
    match dead_letters.send(raw, &reason).await {
        Ok(()) => Ending::DeadLettered,
        Err(e) => Ending::Stuck(format!("{reason}; then the DLQ failed too: {e}")),
    }
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
