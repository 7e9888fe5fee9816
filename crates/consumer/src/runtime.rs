//! The runtime's loop: one tokio task owning all partition and key state, fed by the
//! polling thread (records, assignments, revocations), by the tasks it spawns
//! (handler calls, produce acknowledgements, watermark probes) and by timers.
//!
//! Everything that decides order happens in this one task, so there are no locks
//! around the state, and produces to the retry topic are enqueued in the order the
//! loop decides them (the idempotent producer keeps that order per partition).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use slackline_kafka::KafkaSettings;
use slackline_service::Shutdown;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::GroupMetrics;
use crate::offsets::OffsetTracker;
use crate::poller::{poll_loop, Input, LagReporter, RuntimeContext};
use crate::retry_headers::{self, RetryMeta};
use crate::{
    ConsumerError, ConsumerMetrics, DlqRecord, Event, HandlerError, HeaderList, RuntimeConfig,
};

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;
type BoxedHandler = Arc<dyn Fn(Event) -> HandlerFuture + Send + Sync>;
type Key = Option<Vec<u8>>;

/// How long blocking metadata, watermark and commit requests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts consumer runtimes (see the crate documentation for what one does).
pub struct ConsumerRuntime;

/// A running consumer runtime.
pub struct RuntimeHandle {
    task: JoinHandle<Result<(), ConsumerError>>,
}

impl RuntimeHandle {
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
        let metrics = metrics.group(&group);

        let (tx, rx) = mpsc::channel(64);
        let closing = Arc::new(AtomicBool::new(false));
        let reply_wait = config.revoke_grace + REQUEST_TIMEOUT;
        let lag = LagReporter {
            metrics: metrics.clone(),
            topics: [config.source_topic.clone(), config.retry_topic.clone()],
        };
        let context = RuntimeContext::new(tx, closing.clone(), reply_wait, lag);
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
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                drop_consumer(consumer, &closing).await;
                return Err(e);
            }
            Err(e) => return Err(ConsumerError::Task(e.to_string())),
        }
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
            Ok(thread) => thread,
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
        let runtime = Runtime {
            config: Arc::new(config),
            handler,
            metrics,
            consumer: Some(consumer),
            producer,
            partitions: HashMap::new(),
            next_epoch: 0,
            tasks: JoinSet::new(),
            task_info: HashMap::new(),
            active_handlers: 0,
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            revoke: None,
            shutdown_deadline: None,
            fatal: None,
            closing,
            stop,
            poll_thread: Some(poll_thread),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(runtime.run(rx, shutdown));
        Ok(RuntimeHandle { task })
    }
}

/// Drops the consumer off the async threads (closing it polls and may block).
async fn drop_consumer(consumer: Arc<BaseConsumer<RuntimeContext>>, closing: &AtomicBool) {
    closing.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// The topics exist and source and retry are co-partitioned. Blocking.
fn check_topics(
    consumer: &BaseConsumer<RuntimeContext>,
    (source, retry, dlq): &(String, String, String),
) -> Result<(), ConsumerError> {
    let count = |topic: &str| -> Result<usize, ConsumerError> {
        let metadata = consumer
            .client()
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len())
            .ok_or_else(|| ConsumerError::MissingTopic(topic.to_owned()))
    };
    let source_partitions = count(source)?;
    let retry_partitions = count(retry)?;
    count(dlq)?;
    if source_partitions != retry_partitions {
        return Err(ConsumerError::NotCoPartitioned {
            source_topic: source.clone(),
            source_partitions,
            retry_topic: retry.clone(),
            retry_partitions,
        });
    }
    Ok(())
}

/// Whether the source partition may be handled yet (crate docs, "parking survives").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Waiting for the retry partition's committed offset and high watermark.
    Probing,
    /// Reading the retry partition up to this high watermark (exclusive).
    Rebuilding(i64),
    /// The parked keys are known: source records flow.
    Open,
}

/// A retry record waiting at (or being handled from) the head of its key.
#[derive(Debug)]
struct RetryItem {
    event: Event,
    retry_offset: i64,
    first_error: Option<String>,
    last_error: Option<String>,
    due: Instant,
}

/// One key of one partition pair.
#[derive(Debug, Default)]
struct KeyState {
    /// Source records waiting for the key's current handler call.
    main_q: VecDeque<Event>,
    /// Retry records of the key, in retry-topic order; the head is retried in place.
    retry_q: VecDeque<RetryItem>,
    /// A handler call of the key is running.
    busy: bool,
    /// ... and it is for a source record (whose outcome decides whether the key
    /// parks, so the key's later source records must wait for it).
    busy_main: bool,
    /// The key is in the ready queue (waiting for a concurrency slot).
    waiting: bool,
    /// A timer for the head's due time is set.
    timer_due: Option<Instant>,
    /// Produces to the retry topic not acknowledged yet.
    producing: usize,
    /// Retry-topic offsets of the key not finished yet (acknowledged or received).
    retry_known: BTreeSet<i64>,
    /// Last parked state reported to the gauge.
    parked: bool,
}

impl KeyState {
    /// Parked: some event of the key is in (or on its way to) the retry topic and not
    /// finished, so the key's later source records must go behind it.
    fn is_parked(&self) -> bool {
        self.producing > 0 || !self.retry_known.is_empty()
    }

    fn is_idle(&self) -> bool {
        !self.busy
            && !self.waiting
            && !self.parked
            && self.main_q.is_empty()
            && self.retry_q.is_empty()
            && !self.is_parked()
    }
}

/// Source partition p and retry partition p, owned together (crate docs).
struct PartitionState {
    epoch: u64,
    main: OffsetTracker,
    retry: OffsetTracker,
    gate: Gate,
    /// Source records received while the gate was closed, in order.
    held: VecDeque<Event>,
    keys: HashMap<Key, KeyState>,
    /// Source offsets already present in retry partition p (from its headers): a
    /// redelivered source record among them is not handled or moved again.
    in_retry: BTreeSet<i64>,
    handlers_running: usize,
    produces_pending: usize,
    handler_tasks: HashMap<tokio::task::Id, AbortHandle>,
    /// Revoking or shutting down: no new handler calls.
    draining: bool,
    paused: bool,
    parked_keys: i64,
}

impl PartitionState {
    fn new(epoch: u64) -> Self {
        PartitionState {
            epoch,
            main: OffsetTracker::default(),
            retry: OffsetTracker::default(),
            gate: Gate::Probing,
            held: VecDeque::new(),
            keys: HashMap::new(),
            in_retry: BTreeSet::new(),
            handlers_running: 0,
            produces_pending: 0,
            handler_tasks: HashMap::new(),
            draining: false,
            paused: false,
            parked_keys: 0,
        }
    }

    fn quiet(&self) -> bool {
        self.handlers_running == 0 && self.produces_pending == 0
    }
}

/// What a handler task was given (returned with its outcome).
enum Work {
    Main(Event),
    Retry(RetryItem),
}

/// How a delivery round ended.
enum Outcome {
    Done,
    Failed {
        first_error: String,
        last_error: String,
        retryable: bool,
    },
}

/// What an acknowledged produce finishes.
enum Produced {
    /// A source record moved to the retry topic.
    ToRetry { key: Key, main_offset: i64 },
    /// A record dead-lettered; `retry` says from which topic `offset` is.
    ToDlq {
        retry: bool,
        offset: i64,
        event: Box<Event>,
        error: String,
        attempts: u32,
    },
}

enum Completion {
    Handled {
        p: i32,
        epoch: u64,
        key: Key,
        work: Work,
        outcome: Outcome,
    },
    Produced {
        p: i32,
        epoch: u64,
        what: Produced,
        result: Result<(i32, i64), String>,
        topic: String,
    },
    Probed {
        p: i32,
        epoch: u64,
        result: Result<(i64, i64), String>,
    },
}

struct TaskInfo {
    p: i32,
    handler: bool,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    due: Instant,
    seq: u64,
    p: i32,
    epoch: u64,
    key: Key,
}

struct RevokeDrain {
    partitions: HashSet<i32>,
    reply: std::sync::mpsc::SyncSender<Vec<(String, i32, i64)>>,
    deadline: Instant,
}

struct Runtime {
    config: Arc<RuntimeConfig>,
    handler: BoxedHandler,
    metrics: GroupMetrics,
    consumer: Option<Arc<BaseConsumer<RuntimeContext>>>,
    producer: FutureProducer,
    partitions: HashMap<i32, PartitionState>,
    next_epoch: u64,
    tasks: JoinSet<Completion>,
    task_info: HashMap<tokio::task::Id, TaskInfo>,
    active_handlers: usize,
    ready: VecDeque<(i32, u64, Key)>,
    timers: BinaryHeap<Reverse<Timer>>,
    timer_seq: u64,
    revoke: Option<RevokeDrain>,
    shutdown_deadline: Option<Instant>,
    fatal: Option<ConsumerError>,
    closing: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    poll_thread: Option<std::thread::JoinHandle<()>>,
    shutdown: Shutdown,
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The instant of a unix-ms time (now, if it is past).
fn instant_at(unix_ms: i64) -> Instant {
    let wait = unix_ms.saturating_sub(now_ms()).max(0);
    Instant::now() + Duration::from_millis(u64::try_from(wait).unwrap_or(0))
}

fn headers_of(m: &OwnedMessage) -> HeaderList {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// One delivery round: a call plus up to `quick_retries` quick retries.
async fn deliver(
    handler: &BoxedHandler,
    event: &Event,
    config: &RuntimeConfig,
    metrics: &GroupMetrics,
) -> Outcome {
    let mut first_error: Option<String> = None;
    let mut quick = 0;
    loop {
        let started = std::time::Instant::now();
        let call = event.clone();
        let result = AssertUnwindSafe(async { handler(call).await })
            .catch_unwind()
            .await;
        metrics.handler_finished(started.elapsed().as_secs_f64());
        let error = match result {
            Ok(Ok(())) => return Outcome::Done,
            Ok(Err(e)) => e,
            Err(panic) => HandlerError::retryable(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            )),
        };
        let message = error.message().to_owned();
        let first = first_error.get_or_insert_with(|| message.clone()).clone();
        if !error.is_retryable() || quick >= config.quick_retries {
            return Outcome::Failed {
                first_error: first,
                last_error: message,
                retryable: error.is_retryable(),
            };
        }
        quick += 1;
        tracing::debug!(error = %message, quick, "retryable failure; retrying in process");
        tokio::time::sleep(config.quick_delay(quick)).await;
    }
}

impl Runtime {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        shutdown: Shutdown,
    ) -> Result<(), ConsumerError> {
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

    // ---- inputs -------------------------------------------------------------------

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Records(records) => {
                if self.shutdown_deadline.is_some() {
                    return;
                }
                for m in records {
                    if m.topic() == self.config.source_topic {
                        self.on_main_record(&m).await;
                    } else if m.topic() == self.config.retry_topic {
                        self.on_retry_record(&m).await;
                    }
                }
            }
            Input::Assign(partitions) => self.on_assign(partitions),
            Input::Revoke { partitions, reply } => self.on_revoke(partitions, reply),
        }
    }

    fn on_assign(&mut self, partitions: Vec<(String, i32)>) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let mut main = BTreeSet::new();
        let mut retry = BTreeSet::new();
        for (topic, p) in &partitions {
            if *topic == self.config.source_topic {
                main.insert(*p);
            } else if *topic == self.config.retry_topic {
                retry.insert(*p);
            }
        }
        if main != retry {
            self.fail(ConsumerError::UnpairedAssignment(format!(
                "{} partitions {main:?} but {} partitions {retry:?}",
                self.config.source_topic, self.config.retry_topic
            )));
            return;
        }
        tracing::info!(group = self.config.group_id, partitions = ?main, "partitions assigned");
        // A pause (flow control) may outlive a revocation in librdkafka: start clean.
        if let Some(consumer) = &self.consumer {
            let mut tpl = TopicPartitionList::new();
            for p in &main {
                tpl.add_partition(&self.config.source_topic, *p);
            }
            if let Err(e) = consumer.resume(&tpl) {
                tracing::debug!(error = %e, "resuming assigned partitions");
            }
        }
        for p in main {
            if self.partitions.contains_key(&p) {
                continue;
            }
            self.next_epoch += 1;
            let epoch = self.next_epoch;
            self.partitions.insert(p, PartitionState::new(epoch));
            self.spawn_probe(p, epoch, Duration::ZERO);
        }
    }

    fn on_revoke(
        &mut self,
        partitions: Vec<(String, i32)>,
        reply: std::sync::mpsc::SyncSender<Vec<(String, i32, i64)>>,
    ) {
        if self.revoke.is_some() {
            // The previous callback gave up waiting: settle it now.
            self.complete_revoke();
        }
        let ps: HashSet<i32> = partitions
            .iter()
            .filter(|(t, _)| *t == self.config.source_topic || *t == self.config.retry_topic)
            .map(|(_, p)| *p)
            .filter(|p| self.partitions.contains_key(p))
            .collect();
        tracing::info!(group = self.config.group_id, partitions = ?ps, "partitions revoked");
        for p in &ps {
            if let Some(st) = self.partitions.get_mut(p) {
                st.draining = true;
            }
        }
        self.revoke = Some(RevokeDrain {
            partitions: ps,
            reply,
            deadline: Instant::now() + self.config.revoke_grace,
        });
    }

    async fn on_main_record(&mut self, m: &OwnedMessage) {
        let p = m.partition();
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        if st.draining || !st.main.received(m.offset()) {
            return;
        }
        let event = Event {
            topic: m.topic().to_owned(),
            partition: p,
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            headers: headers_of(m),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            attempt: 0,
        };
        if st.gate == Gate::Open {
            self.process_main(p, event).await;
        } else {
            st.held.push_back(event);
        }
        self.flow_control(p);
    }

    async fn on_retry_record(&mut self, m: &OwnedMessage) {
        let p = m.partition();
        let source_topic = self.config.source_topic.clone();
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let offset = m.offset();
        if st.draining || !st.retry.received(offset) {
            return;
        }
        let d = retry_headers::decode(m.headers());
        let event = Event {
            topic: d.topic.unwrap_or_else(|| m.topic().to_owned()),
            partition: d.partition.unwrap_or(p),
            offset: d.offset.unwrap_or(offset),
            timestamp_ms: d.timestamp_ms,
            key: m.key().map(<[u8]>::to_vec),
            headers: d.headers,
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            attempt: d.meta.attempt,
        };
        // A source record already moved here (by a previous owner, or before a
        // restart) must not be handled or moved again when it comes from the source:
        // remember its offset unless the source record was already processed. While
        // the gate is closed, received source records are held, not processed yet.
        if event.topic == source_topic
            && event.partition == p
            && (st.gate != Gate::Open || st.main.next().is_none_or(|n| event.offset >= n))
        {
            st.in_retry.insert(event.offset);
        }
        let key = event.key.clone();
        let ks = st.keys.entry(key.clone()).or_default();
        ks.retry_known.insert(offset);
        ks.retry_q.push_back(RetryItem {
            event,
            retry_offset: offset,
            first_error: d.meta.first_error,
            last_error: d.meta.last_error,
            due: instant_at(d.meta.not_before_ms),
        });
        if let Gate::Rebuilding(until) = st.gate {
            if offset + 1 >= until {
                self.open_gate(p).await;
            }
        }
        self.refresh_parked(p, &key);
        self.schedule(p, &key).await;
    }

    /// The retry partition is read up to the watermark seen at assignment: every
    /// parked key is known, so the held source records may go.
    async fn open_gate(&mut self, p: i32) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        st.gate = Gate::Open;
        let held = std::mem::take(&mut st.held);
        tracing::debug!(
            partition = p,
            held = held.len(),
            "retry partition read; source partition opens"
        );
        for event in held {
            self.process_main(p, event).await;
        }
    }

    /// A source record whose gate is open: skip it if it is already in the retry
    /// topic, move it behind its key if the key is parked, else queue it for the key.
    async fn process_main(&mut self, p: i32, event: Event) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        while st.in_retry.first().is_some_and(|&o| o < event.offset) {
            st.in_retry.pop_first();
        }
        if st.in_retry.remove(&event.offset) {
            tracing::debug!(
                partition = p,
                offset = event.offset,
                "already in the retry topic"
            );
            st.main.finished(event.offset);
            return;
        }
        let key = event.key.clone();
        let ks = st.keys.entry(key.clone()).or_default();
        if ks.is_parked() && ks.main_q.is_empty() && !ks.busy_main {
            self.forward(p, event).await;
        } else {
            ks.main_q.push_back(event);
            self.schedule(p, &key).await;
        }
    }

    // ---- scheduling ---------------------------------------------------------------

    /// Starts the key's next step if it can run now.
    async fn schedule(&mut self, p: i32, key: &Key) {
        self.schedule_inner(p, key, false).await;
    }

    /// `from_ready`: the key was just taken from the ready queue. Otherwise a key
    /// must queue behind waiting keys even when a slot is free (the slot freed by its
    /// own previous call, for instance): slots go round in arrival order, so a key
    /// with a long backlog cannot starve the others.
    async fn schedule_inner(&mut self, p: i32, key: &Key, from_ready: bool) {
        enum Next {
            Idle,
            Wait(Instant),
            ForwardAll,
            Run,
        }
        let now = Instant::now();
        let capacity = self.active_handlers < self.config.max_concurrent_keys
            && (from_ready || self.ready.is_empty());
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        if st.draining {
            return;
        }
        let epoch = st.epoch;
        let Some(ks) = st.keys.get_mut(key) else {
            return;
        };
        // A parked key's source records go behind it in the retry topic at once,
        // whatever its retry head is doing (waiting for a 30-minute delay, say):
        // holding them here would hold the source partition's offset back.
        let next = if ks.is_parked() && !ks.busy_main && !ks.main_q.is_empty() {
            Next::ForwardAll
        } else if ks.busy {
            return;
        } else if let Some(head) = ks.retry_q.front() {
            if head.due <= now {
                Next::Run
            } else {
                Next::Wait(head.due)
            }
        } else if !ks.main_q.is_empty() {
            Next::Run
        } else {
            Next::Idle
        };
        match next {
            Next::Idle => {
                if ks.is_idle() {
                    st.keys.remove(key);
                }
            }
            Next::Wait(due) => {
                if ks.timer_due != Some(due) {
                    ks.timer_due = Some(due);
                    self.timer_seq += 1;
                    self.timers.push(Reverse(Timer {
                        due,
                        seq: self.timer_seq,
                        p,
                        epoch,
                        key: key.clone(),
                    }));
                }
            }
            Next::ForwardAll => {
                let events: Vec<Event> = ks.main_q.drain(..).collect();
                for event in events {
                    self.forward(p, event).await;
                }
                // Then the retry head, if any, may run.
                Box::pin(self.schedule_inner(p, key, from_ready)).await;
            }
            Next::Run if !capacity => {
                if !ks.waiting {
                    ks.waiting = true;
                    self.ready.push_back((p, epoch, key.clone()));
                }
            }
            Next::Run => self.dispatch(p, key),
        }
    }

    /// Runs the key's next record (retry head first) in a handler task.
    fn dispatch(&mut self, p: i32, key: &Key) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let epoch = st.epoch;
        let Some(ks) = st.keys.get_mut(key) else {
            return;
        };
        let work = if let Some(item) = ks.retry_q.pop_front() {
            Work::Retry(item)
        } else if let Some(event) = ks.main_q.pop_front() {
            Work::Main(event)
        } else {
            return;
        };
        ks.busy = true;
        ks.busy_main = matches!(work, Work::Main(_));
        ks.timer_due = None;
        let event = match &work {
            Work::Main(e) => e,
            Work::Retry(item) => &item.event,
        };
        let span = tracing::info_span!(
            "event",
            group = %self.config.group_id,
            key = %event.key_str(),
            partition = event.partition,
            offset = event.offset,
            attempt = event.attempt,
            event_id = event
                .header_str(slackline_kafka::headers::EVENT_ID)
                .unwrap_or_default(),
        );
        let handler = self.handler.clone();
        let config = self.config.clone();
        let metrics = self.metrics.clone();
        let key = key.clone();
        let abort = self.tasks.spawn(
            async move {
                let event = match &work {
                    Work::Main(e) => e,
                    Work::Retry(item) => &item.event,
                };
                let outcome = deliver(&handler, event, &config, &metrics).await;
                Completion::Handled {
                    p,
                    epoch,
                    key,
                    work,
                    outcome,
                }
            }
            .instrument(span),
        );
        self.task_info
            .insert(abort.id(), TaskInfo { p, handler: true });
        st.handler_tasks.insert(abort.id(), abort);
        st.handlers_running += 1;
        self.active_handlers += 1;
    }

    /// Gives free concurrency slots to waiting keys, in arrival order.
    async fn fill_ready(&mut self) {
        while self.active_handlers < self.config.max_concurrent_keys {
            let Some((p, epoch, key)) = self.ready.pop_front() else {
                return;
            };
            let Some(st) = self.partitions.get_mut(&p) else {
                continue;
            };
            if st.epoch != epoch {
                continue;
            }
            if let Some(ks) = st.keys.get_mut(&key) {
                ks.waiting = false;
            }
            self.schedule_inner(p, &key, true).await;
        }
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|Reverse(t)| t.due <= now) {
            let Some(Reverse(timer)) = self.timers.pop() else {
                break;
            };
            let Some(st) = self.partitions.get_mut(&timer.p) else {
                continue;
            };
            if st.epoch != timer.epoch {
                continue;
            }
            if let Some(ks) = st.keys.get_mut(&timer.key) {
                if ks.timer_due == Some(timer.due) {
                    ks.timer_due = None;
                }
            }
            self.schedule(timer.p, &timer.key).await;
        }
    }

    fn refresh_parked(&mut self, p: i32, key: &Key) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let Some(ks) = st.keys.get_mut(key) else {
            return;
        };
        let parked = ks.is_parked();
        if parked == ks.parked {
            return;
        }
        ks.parked = parked;
        let delta = if parked { 1 } else { -1 };
        st.parked_keys += delta;
        self.metrics.parked_keys_changed(delta);
        let key = String::from_utf8_lossy(key.as_deref().unwrap_or_default());
        if parked {
            tracing::info!(group = self.config.group_id, partition = p, key = %key, "key parked");
        } else {
            tracing::info!(group = self.config.group_id, partition = p, key = %key, "key unparked");
        }
    }

    // ---- completions --------------------------------------------------------------

    async fn on_joined(
        &mut self,
        joined: Result<(tokio::task::Id, Completion), tokio::task::JoinError>,
    ) {
        let (id, completion) = match joined {
            Ok(ok) => (ok.0, Some(ok.1)),
            Err(e) => (e.id(), None),
        };
        if let Some(info) = self.task_info.remove(&id) {
            if info.handler {
                self.active_handlers -= 1;
                if let Some(st) = self.partitions.get_mut(&info.p) {
                    if st.handler_tasks.remove(&id).is_some() {
                        st.handlers_running -= 1;
                    }
                }
            }
        }
        match completion {
            Some(Completion::Handled {
                p,
                epoch,
                key,
                work,
                outcome,
            }) => self.on_handled(p, epoch, key, work, outcome).await,
            Some(Completion::Produced {
                p,
                epoch,
                what,
                result,
                topic,
            }) => self.on_produced(p, epoch, what, result, topic),
            Some(Completion::Probed { p, epoch, result }) => self.on_probed(p, epoch, result).await,
            None => {}
        }
        self.fill_ready().await;
    }

    fn current(&mut self, p: i32, epoch: u64) -> Option<&mut PartitionState> {
        self.partitions.get_mut(&p).filter(|st| st.epoch == epoch)
    }

    async fn on_handled(&mut self, p: i32, epoch: u64, key: Key, work: Work, outcome: Outcome) {
        enum Then {
            Nothing,
            DeadLetter {
                from_retry: bool,
                offset: i64,
                event: Event,
                error: String,
                retryable: bool,
                attempts: u32,
            },
            ToRetry(Event, RetryMeta),
        }
        let config = self.config.clone();
        let delays = &config.retry_delays;
        let metrics = self.metrics.clone();
        let Some(st) = self.current(p, epoch) else {
            return;
        };
        let Some(ks) = st.keys.get_mut(&key) else {
            return;
        };
        ks.busy = false;
        ks.busy_main = false;
        let then = match (work, outcome) {
            (Work::Main(event), Outcome::Done) => {
                metrics.handled();
                st.main.finished(event.offset);
                Then::Nothing
            }
            (Work::Retry(item), Outcome::Done) => {
                metrics.handled();
                ks.retry_known.remove(&item.retry_offset);
                st.retry.finished(item.retry_offset);
                Then::Nothing
            }
            (
                Work::Main(event),
                Outcome::Failed {
                    first_error,
                    last_error,
                    retryable,
                },
            ) => {
                if !retryable || delays.is_empty() {
                    Then::DeadLetter {
                        from_retry: false,
                        offset: event.offset,
                        event,
                        error: last_error,
                        retryable,
                        attempts: 1,
                    }
                } else {
                    tracing::warn!(
                        group = config.group_id,
                        partition = p,
                        offset = event.offset,
                        key = %event.key_str(),
                        error = %last_error,
                        "handler failed; moving the event to the retry topic and parking its key"
                    );
                    metrics.retried(1);
                    let meta = RetryMeta {
                        attempt: 1,
                        not_before_ms: now_ms().saturating_add(millis(delays[0])),
                        first_error: Some(first_error),
                        last_error: Some(last_error),
                    };
                    Then::ToRetry(event, meta)
                }
            }
            (
                Work::Retry(mut item),
                Outcome::Failed {
                    first_error,
                    last_error,
                    retryable,
                },
            ) => {
                let rounds = item.event.attempt.saturating_add(1);
                match delays.get(rounds as usize - 1).filter(|_| retryable) {
                    None => {
                        ks.retry_known.remove(&item.retry_offset);
                        Then::DeadLetter {
                            from_retry: true,
                            offset: item.retry_offset,
                            event: item.event,
                            error: last_error,
                            retryable,
                            attempts: rounds,
                        }
                    }
                    Some(&delay) => {
                        tracing::warn!(
                            group = config.group_id,
                            partition = p,
                            offset = item.event.offset,
                            key = %item.event.key_str(),
                            attempt = rounds,
                            error = %last_error,
                            retry_in = ?delay,
                            "handler failed again; retrying in place"
                        );
                        metrics.retried(rounds);
                        item.event.attempt = rounds;
                        item.first_error.get_or_insert(first_error);
                        item.last_error = Some(last_error);
                        item.due = Instant::now() + delay;
                        ks.retry_q.push_front(item);
                        Then::Nothing
                    }
                }
            }
        };
        match then {
            Then::Nothing => {}
            Then::DeadLetter {
                from_retry,
                offset,
                event,
                error,
                retryable,
                attempts,
            } => {
                self.dead_letter(p, from_retry, offset, event, error, retryable, attempts)
                    .await;
            }
            Then::ToRetry(event, meta) => self.produce_retry(p, event, meta).await,
        }
        self.refresh_parked(p, &key);
        self.schedule(p, &key).await;
    }

    fn on_produced(
        &mut self,
        p: i32,
        epoch: u64,
        what: Produced,
        result: Result<(i32, i64), String>,
        topic: String,
    ) {
        let metrics = self.metrics.clone();
        let group = self.config.group_id.clone();
        let Some(st) = self.current(p, epoch) else {
            if let Err(reason) = result {
                tracing::warn!(topic, reason, "produce for a revoked partition failed");
            }
            return;
        };
        st.produces_pending -= 1;
        let (dest_partition, dest_offset) = match result {
            Ok(at) => at,
            Err(reason) => {
                let partition = matches!(what, Produced::ToRetry { .. }).then_some(p);
                self.fail(ConsumerError::Produce {
                    topic,
                    partition,
                    reason,
                });
                return;
            }
        };
        match what {
            Produced::ToRetry { key, main_offset } => {
                st.main.finished(main_offset);
                let received = st.retry.next().is_some_and(|n| dest_offset < n);
                let ks = st.keys.entry(key.clone()).or_default();
                ks.producing = ks.producing.saturating_sub(1);
                // Already received back (and maybe finished): the receive counted it.
                if !received {
                    ks.retry_known.insert(dest_offset);
                }
                self.refresh_parked(p, &key);
                if let Some(st) = self.partitions.get_mut(&p) {
                    if st.keys.get(&key).is_some_and(KeyState::is_idle) {
                        st.keys.remove(&key);
                    }
                }
            }
            Produced::ToDlq {
                retry,
                offset,
                event,
                error,
                attempts,
            } => {
                if retry {
                    st.retry.finished(offset);
                } else {
                    st.main.finished(offset);
                }
                metrics.dead_lettered();
                tracing::error!(
                    group,
                    topic = event.topic,
                    partition = event.partition,
                    offset = event.offset,
                    key = %event.key_str(),
                    attempts,
                    error,
                    dlq_partition = dest_partition,
                    dlq_offset = dest_offset,
                    "event dead-lettered"
                );
            }
        }
    }

    async fn on_probed(&mut self, p: i32, epoch: u64, result: Result<(i64, i64), String>) {
        let retry_topic = self.config.retry_topic.clone();
        let Some(st) = self.current(p, epoch) else {
            return;
        };
        match result {
            Err(reason) => {
                tracing::warn!(
                    topic = retry_topic,
                    partition = p,
                    reason,
                    "probing the retry partition; trying again"
                );
                self.spawn_probe(p, epoch, Duration::from_millis(200));
            }
            Ok((start, high)) => {
                let read = st.retry.next().is_some_and(|n| n >= high);
                tracing::debug!(
                    topic = retry_topic,
                    partition = p,
                    start,
                    high,
                    "retry partition probed"
                );
                if start >= high || read {
                    self.open_gate(p).await;
                } else {
                    st.gate = Gate::Rebuilding(high);
                }
            }
        }
    }

    // ---- producing ----------------------------------------------------------------

    /// Enqueues a record, waiting while the producer's queue is full (order matters,
    /// so a record is never skipped).
    async fn enqueue(
        &self,
        record: FutureRecord<'_, [u8], [u8]>,
    ) -> Result<DeliveryFuture, String> {
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    }

    /// Moves a source record of a parked key behind it in the retry topic.
    async fn forward(&mut self, p: i32, event: Event) {
        let meta = RetryMeta {
            attempt: 0,
            not_before_ms: now_ms(),
            first_error: None,
            last_error: None,
        };
        self.produce_retry(p, event, meta).await;
    }

    /// Produces `event` to retry partition `p` (the same number as its source
    /// partition, explicitly, not by key hash); the source offset finishes on ack.
    async fn produce_retry(&mut self, p: i32, event: Event, meta: RetryMeta) {
        let Some(st) = self.partitions.get_mut(&p) else {
            return;
        };
        let epoch = st.epoch;
        let key = event.key.clone();
        let ks = st.keys.entry(key.clone()).or_default();
        ks.producing += 1;
        self.refresh_parked(p, &key);
        let headers = retry_headers::encode(&event, &meta);
        let topic = self.config.retry_topic.clone();
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
            .partition(p)
            .payload(&event.payload)
            .headers(headers);
        if let Some(k) = &event.key {
            record = record.key(k.as_slice());
        }
        let what = Produced::ToRetry {
            key,
            main_offset: event.offset,
        };
        let enqueued = self.enqueue(record).await;
        self.track_produce(p, epoch, topic, what, enqueued);
    }

    /// Writes the DLQ record for `event`; `offset` (of the source topic, or of the
    /// retry topic when `from_retry`) finishes on ack.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &mut self,
        p: i32,
        from_retry: bool,
        offset: i64,
        event: Event,
        error: String,
        retryable: bool,
        attempts: u32,
    ) {
        let Some(st) = self.partitions.get(&p) else {
            return;
        };
        let epoch = st.epoch;
        let value =
            DlqRecord::new(&self.config.group_id, &event, &error, retryable, attempts).to_json();
        let headers = event.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(rdkafka::message::Header {
                key: k,
                value: v.as_deref(),
            })
        });
        let topic = self.config.dlq_topic.clone();
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic)
            .payload(&value)
            .headers(headers);
        if let Some(k) = &event.key {
            record = record.key(k.as_slice());
        }
        let enqueued = self.enqueue(record).await;
        let what = Produced::ToDlq {
            retry: from_retry,
            offset,
            event: Box::new(event),
            error,
            attempts,
        };
        self.track_produce(p, epoch, topic, what, enqueued);
    }

    fn track_produce(
        &mut self,
        p: i32,
        epoch: u64,
        topic: String,
        what: Produced,
        enqueued: Result<DeliveryFuture, String>,
    ) {
        let Some(st) = self.current(p, epoch) else {
            return;
        };
        st.produces_pending += 1;
        let abort = self.tasks.spawn(async move {
            let result = match enqueued {
                Ok(future) => match future.await {
                    Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was dropped".to_owned()),
                },
                Err(e) => Err(e),
            };
            Completion::Produced {
                p,
                epoch,
                what,
                result,
                topic,
            }
        });
        self.task_info
            .insert(abort.id(), TaskInfo { p, handler: false });
    }

    // ---- offsets, flow control, lag -----------------------------------------------

    fn store_offsets(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        let mut any = false;
        for (p, st) in &mut self.partitions {
            for (topic, tracker) in [
                (&self.config.source_topic, &mut st.main),
                (&self.config.retry_topic, &mut st.retry),
            ] {
                if let Some(offset) = tracker.take_store() {
                    any |= tpl
                        .add_partition_offset(topic, *p, Offset::Offset(offset))
                        .is_ok();
                }
            }
        }
        if any {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::debug!(error = %e, "storing offsets");
            }
        }
        let ps: Vec<i32> = self.partitions.keys().copied().collect();
        for p in ps {
            self.flow_control(p);
        }
    }

    /// Pauses a source partition with too many unfinished records; resumes it at half.
    fn flow_control(&mut self, p: i32) {
        let (Some(consumer), Some(st)) = (&self.consumer, self.partitions.get_mut(&p)) else {
            return;
        };
        let max = self.config.max_buffered_per_partition;
        let pending = st.main.pending_len();
        let change = if !st.paused && pending >= max {
            Some(true)
        } else if st.paused && pending <= max / 2 {
            Some(false)
        } else {
            None
        };
        let Some(pause) = change else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.source_topic, p);
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                st.paused = pause;
                tracing::debug!(partition = p, pending, pause, "flow control");
            }
            Err(e) => tracing::warn!(error = %e, partition = p, "pause/resume failed"),
        }
    }

    /// Reads retry partition `p`'s committed offset and high watermark (blocking, on
    /// the blocking pool), after `delay`.
    fn spawn_probe(&mut self, p: i32, epoch: u64, delay: Duration) {
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        let topic = self.config.retry_topic.clone();
        let abort = self.tasks.spawn_blocking(move || {
            std::thread::sleep(delay);
            let result = probe(&consumer, &topic, p).map_err(|e| e.to_string());
            Completion::Probed { p, epoch, result }
        });
        self.task_info
            .insert(abort.id(), TaskInfo { p, handler: false });
    }

    // ---- draining: revoke and shutdown --------------------------------------------

    fn check_revoke_done(&mut self) {
        let Some(revoke) = &self.revoke else {
            return;
        };
        let done = revoke
            .partitions
            .iter()
            .all(|p| self.partitions.get(p).is_none_or(PartitionState::quiet));
        if done {
            self.complete_revoke();
        }
    }

    fn on_drain_deadline(&mut self) {
        let now = Instant::now();
        if self.revoke.as_ref().is_some_and(|r| r.deadline <= now) {
            tracing::warn!("revoke grace over; abandoning unfinished work of revoked partitions");
            self.complete_revoke();
        }
    }

    /// Answers the revoke callback with the offsets below which all is finished, and
    /// drops the revoked partitions (aborting handler calls that outlived the grace).
    fn complete_revoke(&mut self) {
        let Some(revoke) = self.revoke.take() else {
            return;
        };
        let mut offsets = Vec::new();
        for p in revoke.partitions {
            if let Some(st) = self.partitions.remove(&p) {
                offsets.extend(self.release(p, st));
            }
        }
        let _ = revoke.reply.send(offsets);
    }

    /// Forgets a partition; returns the offsets to commit for it.
    fn release(&mut self, p: i32, st: PartitionState) -> Vec<(String, i32, i64)> {
        for (id, abort) in &st.handler_tasks {
            abort.abort();
            tracing::warn!(partition = p, task = %id, "abandoning a handler call");
        }
        self.active_handlers -= st.handler_tasks.len();
        for id in st.handler_tasks.keys() {
            self.task_info.remove(id);
        }
        self.metrics.parked_keys_changed(-st.parked_keys);
        self.metrics.lag_forgotten(&self.config.source_topic, p);
        self.metrics.lag_forgotten(&self.config.retry_topic, p);
        let mut offsets = Vec::new();
        if let Some(o) = st.main.low_water() {
            offsets.push((self.config.source_topic.clone(), p, o));
        }
        if let Some(o) = st.retry.low_water() {
            offsets.push((self.config.retry_topic.clone(), p, o));
        }
        offsets
    }

    fn begin_shutdown(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.shutdown_deadline = Some(self.shutdown_deadline.map_or(deadline, |d| d.min(deadline)));
        // Stop fetching; the channel is still drained until the end.
        self.stop.store(true, Ordering::SeqCst);
        for st in self.partitions.values_mut() {
            st.draining = true;
        }
        tracing::info!(
            group = self.config.group_id,
            ?grace,
            "consumer runtime stopping"
        );
    }

    fn shutdown_done(&self) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        Instant::now() >= deadline || self.partitions.values().all(PartitionState::quiet)
    }

    /// Records a fatal error and stops (fires the service's shutdown too).
    fn fail(&mut self, error: ConsumerError) {
        tracing::error!(group = self.config.group_id, error = %error, "consumer runtime failed");
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
        self.shutdown.trigger();
        self.begin_shutdown(Duration::ZERO);
    }

    /// Commits what is complete, then closes the consumer (leaving the group) before
    /// returning, so that [`RuntimeHandle::wait`] means "stopped".
    async fn finish(mut self, rx: mpsc::Receiver<Input>) -> Result<(), ConsumerError> {
        self.complete_revoke();
        let ps: Vec<i32> = self.partitions.keys().copied().collect();
        let mut offsets = Vec::new();
        for p in ps {
            if let Some(st) = self.partitions.remove(&p) {
                offsets.extend(self.release(p, st));
            }
        }
        self.closing.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        // Unblocks the polling thread if it waits on a full channel or for a revoke
        // answer (the answer's sender is dropped with the channel).
        drop(rx);
        // Abandoned handler calls and deliveries end now; blocking probes finish
        // within their request timeouts (they hold the consumer).
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let Runtime {
            consumer,
            producer,
            poll_thread,
            fatal,
            config,
            ..
        } = self;
        let group = config.group_id.clone();
        let closed = tokio::task::spawn_blocking(move || {
            if let Some(thread) = poll_thread {
                let _ = thread.join();
            }
            let result = match &consumer {
                Some(consumer) => commit(consumer, &offsets),
                None => Ok(()),
            };
            // The last references: closing leaves the group.
            drop(consumer);
            drop(producer);
            result
        })
        .await;
        match closed {
            Ok(Ok(())) => tracing::info!(group, "offsets committed; consumer runtime stopped"),
            Ok(Err(e)) => tracing::warn!(group, error = %e, "final commit failed"),
            Err(e) => tracing::warn!(group, error = %e, "final commit task failed"),
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Stores and synchronously commits `offsets`. Blocking.
fn commit(
    consumer: &BaseConsumer<RuntimeContext>,
    offsets: &[(String, i32, i64)],
) -> Result<(), KafkaError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        tracing::debug!(error = %e, "storing final offsets");
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// Retry partition `p`: where this assignment starts reading it (the committed
/// offset, or the low watermark without one) and its high watermark. Blocking.
fn probe(
    consumer: &BaseConsumer<RuntimeContext>,
    topic: &str,
    p: i32,
) -> Result<(i64, i64), KafkaError> {
    let (low, high) = consumer.fetch_watermarks(topic, p, REQUEST_TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let committed = consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
    let start = committed
        .find_partition(topic, p)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(low)
        .max(low);
    Ok((start, high))
}
