//! The polling thread and the consumer context.
//!
//! librdkafka runs rebalance callbacks on the thread that polls. The runtime polls on
//! a dedicated thread, so a revoke callback may block while the runtime's loop (on
//! tokio) finishes the revoked partitions' in-flight work: the callback forwards the
//! revocation into the loop's channel, waits (bounded) for the offsets the loop found
//! complete, and commits them synchronously before librdkafka gives the partitions
//! away. Records and rebalance events travel through the same channel, in the order
//! librdkafka delivered them, so the loop never sees a record of an assignment after
//! that assignment's revocation. The callbacks never panic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::metrics::GroupMetrics;

/// What the polling thread tells the loop.
pub(crate) enum Input {
    /// Records, in delivery order.
    Records(Vec<OwnedMessage>),
    /// Partitions were assigned (after librdkafka assigned them).
    Assign(Vec<(String, i32)>),
    /// Partitions are being revoked: the loop answers with the offsets to commit.
    Revoke {
        partitions: Vec<(String, i32)>,
        reply: std_mpsc::SyncSender<Vec<(String, i32, i64)>>,
    },
}

/// Most records sent to the loop in one message.
const BATCH: usize = 512;

/// How many messages the channel to the loop holds. With [`RuntimeContext`]'s batch
/// bytes at a fifth of the runtime's byte bound over this plus two (the batch being
/// filled and the one the loop is taking in), what is on its way to the loop when
/// it pauses a side stays under a fifth of the bound (plus one record per batch).
pub(crate) const CHANNEL_CAPACITY: usize = 16;

/// The consumer context: forwards rebalances into the loop.
pub(crate) struct RuntimeContext {
    tx: mpsc::Sender<Input>,
    /// Set once the loop is gone (or going): callbacks then return at once.
    closing: Arc<AtomicBool>,
    /// How long a revoke callback waits for the loop's answer.
    reply_wait: Duration,
    /// Records polled but not yet sent, flushed before any rebalance event so that
    /// the channel keeps librdkafka's order.
    batch: Mutex<Batch>,
    /// A batch is sent once it holds this many payload bytes.
    batch_bytes: usize,
    /// Lag is read from librdkafka's statistics (no extra requests to the brokers).
    lag: LagReporter,
}

/// Records polled and not sent to the loop yet.
#[derive(Default)]
struct Batch {
    records: Vec<OwnedMessage>,
    /// Their [`record_bytes`].
    bytes: usize,
}

/// Turns librdkafka statistics into the lag gauge of the source and retry topics.
pub(crate) struct LagReporter {
    pub(crate) metrics: GroupMetrics,
    pub(crate) topics: [String; 2],
}

impl RuntimeContext {
    pub(crate) fn new(
        tx: mpsc::Sender<Input>,
        closing: Arc<AtomicBool>,
        reply_wait: Duration,
        lag: LagReporter,
        max_buffered_bytes: usize,
    ) -> Self {
        RuntimeContext {
            tx,
            closing,
            reply_wait,
            batch: Mutex::new(Batch::default()),
            batch_bytes: (max_buffered_bytes / (5 * (CHANNEL_CAPACITY + 2))).max(4 * 1024),
            lag,
        }
    }

    /// Adds a record to the pending batch; whether the batch is full.
    fn push(&self, message: OwnedMessage) -> bool {
        let mut b = match self.batch.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        b.bytes += record_bytes(&message);
        b.records.push(message);
        b.records.len() >= BATCH || b.bytes >= self.batch_bytes
    }

    /// Sends the pending records; false when the loop is gone.
    fn flush(&self) -> bool {
        let records = match self.batch.lock() {
            Ok(mut b) => std::mem::take(&mut *b).records,
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()).records,
        };
        if records.is_empty() {
            return true;
        }
        self.send(Input::Records(records))
    }

    /// The loop is gone (stopped, or crashed): the polling thread should end.
    fn loop_gone(&self) -> bool {
        self.closing.load(Ordering::SeqCst) || self.tx.is_closed()
    }

    fn send(&self, input: Input) -> bool {
        if self.closing.load(Ordering::SeqCst) {
            return false;
        }
        // Called on the polling thread, where blocking is allowed. The one exception
        // is a consumer dropped inside the tokio runtime without a stop (a panicking
        // test unwinding with a runtime alive): librdkafka's close then runs the
        // rebalance callback on a runtime thread, where blocking would panic and turn
        // the first failure into a hang. The loop is going away then: do not wait.
        if tokio::runtime::Handle::try_current().is_ok() {
            return self.tx.try_send(input).is_ok();
        }
        self.tx.blocking_send(input).is_ok()
    }
}

impl ClientContext for RuntimeContext {
    /// Lag = high watermark - the offset the runtime would commit (stored, else
    /// committed), for the partitions this member fetches; partitions it does not
    /// own are dropped. Not against librdkafka's fetch position: the runtime reads
    /// ahead into per-key queues, so unfinished work (a blocked retry record, a
    /// slow key) must count as lag, and it does against the stored offset.
    fn stats(&self, statistics: Statistics) {
        for name in &self.lag.topics {
            let Some(topic) = statistics.topics.get(name) else {
                continue;
            };
            for partition in topic.partitions.values().filter(|p| p.partition >= 0) {
                let p = partition.partition;
                if partition.fetch_state == "none" || partition.hi_offset < 0 {
                    self.lag.metrics.lag_forgotten(name, p);
                    continue;
                }
                let position = if partition.stored_offset >= 0 {
                    partition.stored_offset
                } else {
                    partition.committed_offset
                };
                if position >= 0 {
                    self.lag
                        .metrics
                        .lag_measured(name, p, (partition.hi_offset - position).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for RuntimeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        if !self.flush() {
            return;
        }
        let partitions = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let (reply, answer) = std_mpsc::sync_channel(1);
        if !self.send(Input::Revoke { partitions, reply }) {
            return;
        }
        let offsets = match answer.recv_timeout(self.reply_wait) {
            Ok(offsets) => offsets,
            Err(_) => {
                tracing::warn!("revoke: no answer from the runtime loop; committing nothing");
                return;
            }
        };
        if offsets.is_empty() {
            return;
        }
        let mut commit = TopicPartitionList::new();
        for (topic, partition, offset) in &offsets {
            if let Err(e) = commit.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            {
                tracing::warn!(error = %e, topic, partition, "revoke: bad offset");
            }
        }
        if let Err(e) = consumer.store_offsets(&commit) {
            tracing::debug!(error = %e, "revoke: storing offsets");
        }
        match consumer.commit(&commit, CommitMode::Sync) {
            Ok(()) => tracing::info!(?offsets, "committed before revoke"),
            Err(e) => tracing::warn!(error = %e, ?offsets, "commit before revoke failed"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if !self.flush() {
                    return;
                }
                let partitions = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                self.send(Input::Assign(partitions));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Polls until `stop` is set or the loop is gone. Runs on its own thread.
pub(crate) fn poll_loop(consumer: Arc<BaseConsumer<RuntimeContext>>, stop: Arc<AtomicBool>) {
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(50)) {
            None => {}
            Some(Ok(message)) => {
                let mut full = consumer.context().push(message.detach());
                // Take what is already there without waiting, up to a batch.
                while !full {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(m)) => full = consumer.context().push(m.detach()),
                        Some(Err(e)) => {
                            log_poll_error(&e, &mut last_error);
                            break;
                        }
                        None => break,
                    }
                }
            }
            Some(Err(e)) => log_poll_error(&e, &mut last_error),
        }
        if !consumer.context().flush() || consumer.context().loop_gone() {
            break;
        }
    }
}

/// Logs a consumer error once per distinct message (broker faults repeat them).
fn log_poll_error(e: &rdkafka::error::KafkaError, last: &mut Option<String>) {
    let text = e.to_string();
    if last.as_deref() != Some(text.as_str()) {
        tracing::warn!(error = %text, "consumer error (librdkafka retries)");
        *last = Some(text);
    }
}

/// What a received record holds in memory until it is finished: its payload, key
/// and headers, plus the runtime's bookkeeping for it. The loop's byte bound and the
/// batches on their way to it count the same way.
pub(crate) fn record_bytes(m: &OwnedMessage) -> usize {
    /// The event's struct, its strings, its queue and tracker entries.
    const BOOKKEEPING: usize = 256;
    let headers: usize = m.headers().map_or(0, |h| {
        h.iter()
            .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    BOOKKEEPING + m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len) + headers
}
