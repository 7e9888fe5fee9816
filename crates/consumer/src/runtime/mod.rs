//! The runtime's loop: one tokio task owning all partition and key state, fed by the
//! polling thread (records, assignments, revocations), by the tasks it spawns
//! (handler calls, produce acknowledgements, watermark probes) and by timers.
//!
//! Everything that decides order happens in this one task, so there are no locks
//! around the state, and produces to the retry topic are enqueued in the order the
//! loop decides them (the idempotent producer keeps that order per partition).
//!
//! | file          | concern                                                        |
//! |---------------|----------------------------------------------------------------|
//! | `mod.rs`      | starting, the handle, the loop                                 |
//! | `start.rs`    | topic checks; probing a retry partition when its pair arrives  |
//! | `state.rs`    | partition-pair and key state; what spawned tasks send back     |
//! | `intake.rs`   | assignments, source and retry records, the gate                |
//! | `dispatch.rs` | scheduling keys, handler calls, what their outcomes do         |
//! | `produce.rs`  | producing to the retry and DLQ topics, acknowledgements        |
//! | `flow.rs`     | storing finished offsets; pausing partitions over the bounds   |
//! | `drain.rs`    | revoke and shutdown                                            |
//!
//! # The ordering invariants (what every file keeps)
//!
//! For every key of a partition pair (source p, retry p), with "finished" meaning
//! handled, skipped as already moved, or handed to the retry or DLQ topic with the
//! produce acknowledged:
//!
//! 1. **One at a time.** At most one handler call of the key runs, and nothing of the
//!    key is started while a produce that decides its place is unacknowledged: a
//!    dead letter of the key (`KeyState::dlq_pending`) or a move to the retry topic
//!    (`KeyState::producing`, which parks the key).
//! 2. **Parked means behind.** While any record of the key is in (or on its way to)
//!    the retry topic and not finished (`KeyState::is_parked`), every later source
//!    record of the key is produced behind it into retry p, never handled directly.
//!    A key unparks only when the last of those is finished, so after a crash the
//!    retry topic still holds everything that was ahead of the key's next record.
//! 3. **The retry topic is the parked set.** After an assignment, source p is held
//!    (the gate) until retry p has been read up to the high watermark seen at
//!    assignment, so every parked key is known before a source record of it runs.
//!    Source records already in retry p (found by their original-offset header) are
//!    skipped when they come again from the source, whether they were held or not,
//!    and so are the key's source records below the highest such offset: by 1,
//!    they were finished before it was moved, and running them again would apply
//!    them after it (the replay above a commit point stays in source order).
//! 4. **Commit below finished only.** The stored offset of each topic-partition is
//!    the lowest unfinished offset ([`crate::offsets::OffsetTracker`]); an
//!    unacknowledged produce keeps its record unfinished.
//! 5. **A failed produce stops the runtime** rather than let a later record of the
//!    key overtake the record it could not place, except a record too large for its
//!    topic, which is dead-lettered without its payload (the archive has it).
//! 6. **Bounded memory.** Records held in memory are counted in bytes; past their
//!    share of the bound the source or the retry partitions are paused (flow.rs). A parked key's
//!    unread retry records keep it parked through `KeyState::retry_known`, so
//!    pausing the retry partition never unparks a key.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::Message;
use slackline_kafka::KafkaSettings;
use slackline_service::Shutdown;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

mod dispatch;
mod drain;
mod flow;
mod intake;
mod produce;
mod start;
mod state;

use self::drain::store_committed;
use self::start::{check_topics, drop_consumer};
use self::state::{Completion, PartitionState, RevokeDrain, TaskInfo, Timer};
use crate::metrics::GroupMetrics;
use crate::poller::{poll_loop, Input, LagReporter, RuntimeContext, CHANNEL_CAPACITY};
use crate::{ConsumerError, ConsumerMetrics, Event, HandlerError, HeaderList, RuntimeConfig};

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
type BoxedHandler = Arc<dyn Fn(Event) -> HandlerFuture + Send + Sync>;
type Key = Option<Vec<u8>>;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// How long blocking metadata, watermark and commit requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts consumer runtimes (see the crate documentation for what one does).
pub struct ConsumerRuntime;

/// A running consumer runtime.
pub struct RuntimeHandle {
    task: JoinHandle<Result<(), ConsumerError>>,
    /// For [`RuntimeHandle::crash`] only: a strong reference would keep the consumer
    /// open past the runtime's own end.
    consumer: Weak<BaseConsumer<RuntimeContext>>,
    closing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    poll_thread: PollThread,
}

/// The polling thread, joined by whoever stops the runtime (its end, or a crash).
type PollThread = Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>;

fn take_thread(thread: &PollThread) -> Option<std::thread::JoinHandle<()>> {
    match thread.lock() {
        Ok(mut t) => t.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

/// How long the final commit and leaving the group may take once the grace is over;
/// past it the runtime gives up on them (brokers unreachable) and returns
/// [`ConsumerError::Shutdown`].
pub const FINAL_COMMIT_BUDGET: Duration = Duration::from_secs(5);

impl RuntimeHandle {
    /// Stops the runtime the way a killed process stops, for tests of crash
    /// recovery: no draining, no revoke answer, no final commit; in-flight handler
    /// calls are dropped. librdkafka would commit the stored offsets when the
    /// consumer closes, which a killed process never does, so they are first set
    /// back to what the group has committed (the beginning where nothing is). Only
    /// what was auto-committed before stays. Unlike a killed process, the member
    /// leaves the group at once instead of after its session timeout; nothing else
    /// differs. Returns once the consumer is closed.
    pub async fn crash(self) {
        let consumer = self.consumer.upgrade();
        self.closing.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        self.task.abort();
        let _ = self.task.await;
        let thread = take_thread(&self.poll_thread);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            if let Some(consumer) = consumer {
                if let Err(e) = store_committed(&consumer) {
                    tracing::warn!(error = %e, "crash: resetting the stored offsets");
                }
                // Closing leaves the group and commits the offsets just reset.
                drop(consumer);
            }
        })
        .await;
    }

    /// Waits until the runtime has stopped (after `shutdown` fired, or after a fatal
    /// error, which also fires `shutdown`) and its offsets are committed.
    pub async fn wait(self) -> Result<(), ConsumerError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ConsumerError::Task(e.to_string())),
        }
    }
}

impl ConsumerRuntime {
    /// Checks the topics (they exist; source and retry have the same partition
    /// count), joins the group subscribed to the source and retry topics, and starts
    /// handling records with `handler` until `shutdown` fires.
    ///
    /// `metrics` is the registry's [`ConsumerMetrics`] (see
    /// [`ConsumerMetrics::register`]); the runtime's series carry `group`.
    pub async fn start<H, Fut>(
        settings: &KafkaSettings,
        config: RuntimeConfig,
        handler: H,
        metrics: &ConsumerMetrics,
        shutdown: Shutdown,
    ) -> Result<RuntimeHandle, ConsumerError>
    where
        H: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        config.validate()?;
        let handler: BoxedHandler = Arc::new(move |event| Box::pin(handler(event)));
        let group = config.group_id.clone();
        let producer = settings.producer(&format!("{group}-runtime"), config.produce_timeout)?;
        let max_record_bytes = settings
            .producer_config(&format!("{group}-runtime"), config.produce_timeout)
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        let mut consumer_config = settings.consumer_config(&format!("{group}-runtime"), &group);
        // Set after the user's properties: the design depends on them (crate docs).
        // Co-partitioning needs a range assignment: client-side under the classic
        // protocol; under KIP-848 (`group.protocol=consumer` in KAFKA_PROPERTIES) the
        // broker assigns, librdkafka refuses `partition.assignment.strategy`, and the
        // broker's default (`uniform`) would split source p and retry p.
        if consumer_config
            .get("group.protocol")
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("consumer"))
        {
            consumer_config.set("group.remote.assignor", "range");
        } else {
            consumer_config.set("partition.assignment.strategy", "range");
        }
        consumer_config
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.as_millis().max(1).to_string(),
            )
            .set("enable.partition.eof", "false")
            .set(
                "statistics.interval.ms",
                config.lag_interval.as_millis().max(1).to_string(),
            );
        // librdkafka's read-ahead is memory too, and pausing a partition does not
        // take back what it already fetched: size it from the same bound (a fifth,
        // and a twentieth per partition per fetch) so that what it delivers after a
        // pause stays inside it. One fetch response may land on top of a full queue:
        // librdkafka sizes `fetch.max.bytes` as the queue's size but never below
        // `message.max.bytes` (1 MB by default, half of a 2 MiB bound), so that is
        // lowered with it. A record batch larger than a fetch is still received
        // (`receive.message.max.bytes` stays at its 100 MB default).
        let read_ahead = config.max_buffered_bytes / 5;
        consumer_config
            .set(
                "queued.max.messages.kbytes",
                (read_ahead / 1024).max(64).to_string(),
            )
            .set(
                "message.max.bytes",
                read_ahead.clamp(64 * 1024, 1_000_000).to_string(),
            )
            .set(
                "max.partition.fetch.bytes",
                (config.max_buffered_bytes / 20)
                    .clamp(16 * 1024, 1024 * 1024)
                    .to_string(),
            );
        let metrics = metrics.group(&group);

        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let closing = Arc::new(AtomicBool::new(false));
        let reply_wait = config.revoke_grace + REQUEST_TIMEOUT;
        let lag = LagReporter {
            metrics: metrics.clone(),
            topics: [config.source_topic.clone(), config.retry_topic.clone()],
        };
        let context = RuntimeContext::new(
            tx,
            closing.clone(),
            reply_wait,
            lag,
            config.max_buffered_bytes,
        );
        let consumer: BaseConsumer<RuntimeContext> =
            consumer_config.create_with_context(context)?;
        let consumer = Arc::new(consumer);

        let check = consumer.clone();
        let topics = (
            config.source_topic.clone(),
            config.retry_topic.clone(),
            config.dlq_topic.clone(),
        );
        let checked = tokio::task::spawn_blocking(move || check_topics(&check, &topics)).await;
        let dlq_partitions = match checked {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                drop_consumer(consumer, &closing).await;
                return Err(e);
            }
            Err(e) => return Err(ConsumerError::Task(e.to_string())),
        };
        if let Err(e) = consumer.subscribe(&[&config.source_topic, &config.retry_topic]) {
            drop_consumer(consumer, &closing).await;
            return Err(e.into());
        }

        let stop = Arc::new(AtomicBool::new(false));
        let poller = consumer.clone();
        let poller_stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("slackline-poll".to_owned())
            .spawn(move || poll_loop(poller, poller_stop));
        let poll_thread = match spawned {
            Ok(thread) => Arc::new(std::sync::Mutex::new(Some(thread))),
            Err(e) => {
                drop_consumer(consumer, &closing).await;
                return Err(ConsumerError::Task(format!(
                    "starting the polling thread: {e}"
                )));
            }
        };

        tracing::info!(
            group,
            source = config.source_topic,
            retry = config.retry_topic,
            dlq = config.dlq_topic,
            "consumer runtime started"
        );
        let weak_consumer = Arc::downgrade(&consumer);
        let runtime = Runtime {
            config: Arc::new(config),
            handler,
            metrics,
            consumer: Some(consumer.clone()),
            producer,
            max_record_bytes,
            partitions: HashMap::new(),
            next_epoch: 0,
            tasks: JoinSet::new(),
            task_info: HashMap::new(),
            active_handlers: 0,
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            revoke: None,
            dlq_ends: vec![0; usize::try_from(dlq_partitions).unwrap_or(0)],
            dlq_probing: false,
            shutdown_deadline: None,
            fatal: None,
            closing: closing.clone(),
            stop: stop.clone(),
            poll_thread: poll_thread.clone(),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(runtime.run(rx, shutdown));
        Ok(RuntimeHandle {
            task,
            consumer: weak_consumer,
            closing,
            stop,
            poll_thread,
        })
    }
}

struct Runtime {
    config: Arc<RuntimeConfig>,
    handler: BoxedHandler,
    metrics: GroupMetrics,
    consumer: Option<Arc<BaseConsumer<RuntimeContext>>>,
    producer: FutureProducer,
    /// The producer's `message.max.bytes`: a DLQ record is fitted under it.
    max_record_bytes: usize,
    partitions: HashMap<i32, PartitionState>,
    next_epoch: u64,
    tasks: JoinSet<Completion>,
    task_info: HashMap<tokio::task::Id, TaskInfo>,
    active_handlers: usize,
    ready: VecDeque<(i32, u64, Key)>,
    timers: BinaryHeap<Reverse<Timer>>,
    timer_seq: u64,
    revoke: Option<RevokeDrain>,
    /// The DLQ topic's end offset per partition, as last read or acknowledged.
    dlq_ends: Vec<i64>,
    /// A read of the DLQ topic's end offsets is running.
    dlq_probing: bool,
    shutdown_deadline: Option<Instant>,
    fatal: Option<ConsumerError>,
    closing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    poll_thread: PollThread,
    shutdown: Shutdown,
}

pub(super) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The instant of a unix-ms time (now, if it is past).
pub(super) fn instant_at(unix_ms: i64) -> Instant {
    let wait = unix_ms.saturating_sub(now_ms()).max(0);
    Instant::now() + Duration::from_millis(u64::try_from(wait).unwrap_or(0))
}

pub(super) fn headers_of(m: &OwnedMessage) -> HeaderList {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Runtime {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        shutdown: Shutdown,
    ) -> Result<(), ConsumerError> {
        // The DLQ's end offsets at start (what earlier processes wrote), then with
        // the lag: the alert's signal that no crash can lose (metrics.rs).
        let mut dlq_tick = tokio::time::interval(self.config.lag_interval);
        dlq_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut store_tick = tokio::time::interval(self.config.store_interval);
        store_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Long-lived timers, reset when their deadline changes (not re-registered on
        // every turn of the loop).
        let far = far_future();
        let timer_sleep = tokio::time::sleep_until(far);
        let drain_sleep = tokio::time::sleep_until(far);
        let shutdown_wait = shutdown.wait();
        tokio::pin!(timer_sleep, drain_sleep, shutdown_wait);
        loop {
            let next_timer = self.timers.peek().map(|Reverse(t)| t.due);
            let drain_deadline = match (&self.revoke, self.shutdown_deadline) {
                (Some(r), Some(s)) => Some(r.deadline.min(s)),
                (Some(r), None) => Some(r.deadline),
                (None, s) => s,
            };
            if timer_sleep.deadline() != next_timer.unwrap_or(far) {
                timer_sleep.as_mut().reset(next_timer.unwrap_or(far));
            }
            if drain_sleep.deadline() != drain_deadline.unwrap_or(far) {
                drain_sleep.as_mut().reset(drain_deadline.unwrap_or(far));
            }
            tokio::select! {
                biased;
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_joined(joined).await;
                    // Whatever else finished meanwhile, without another turn.
                    while let Some(joined) = self.tasks.try_join_next_with_id() {
                        self.on_joined(joined).await;
                    }
                }
                () = &mut drain_sleep, if drain_deadline.is_some() => {
                    self.on_drain_deadline();
                }
                () = &mut timer_sleep, if next_timer.is_some() => {
                    self.on_timers().await;
                }
                input = rx.recv() => match input {
                    Some(input) => self.on_input(input).await,
                    None => {
                        self.fail(ConsumerError::Task("the polling thread stopped".into()));
                    }
                },
                _ = store_tick.tick() => self.store_offsets(),
                _ = dlq_tick.tick() => self.spawn_dlq_probe(),
                () = &mut shutdown_wait, if self.shutdown_deadline.is_none() => {
                    self.begin_shutdown(self.config.shutdown_grace);
                }
            }
            self.check_revoke_done();
            if self.shutdown_done() {
                break;
            }
        }
        self.finish(rx).await
    }

    pub(super) fn current(&mut self, p: i32, epoch: u64) -> Option<&mut PartitionState> {
        self.partitions.get_mut(&p).filter(|st| st.epoch == epoch)
    }
}
