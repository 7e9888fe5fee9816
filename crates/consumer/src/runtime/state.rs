//! The state the loop owns: per partition pair, per key, and the messages its
//! spawned tasks send back.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::Key;
use crate::offsets::OffsetTracker;
use crate::retry_headers::RetryMeta;
use crate::Event;

/// Whether the source partition may be handled yet (crate docs, "parking survives").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Waiting for the retry partition's committed offset and high watermark.
    Probing,
    /// Reading the retry partition up to this high watermark (exclusive).
    Rebuilding(i64),
    /// The parked keys are known: source records flow.
    Open,
}

/// A retry record waiting at (or being handled from) the head of its key.
#[derive(Debug)]
pub(super) struct RetryItem {
    pub(super) event: Event,
    pub(super) retry_offset: i64,
    pub(super) first_error: Option<String>,
    pub(super) last_error: Option<String>,
    pub(super) due: Instant,
}

/// One key of one partition pair.
#[derive(Debug, Default)]
pub(super) struct KeyState {
    /// Source records waiting for the key's current handler call.
    pub(super) main_q: VecDeque<Event>,
    /// Retry records of the key, in retry-topic order; the head is retried in place.
    pub(super) retry_q: VecDeque<RetryItem>,
    /// A handler call of the key is running.
    pub(super) busy: bool,
    /// ... and it is for a source record (whose outcome decides whether the key
    /// parks, so the key's later source records must wait for it).
    pub(super) busy_main: bool,
    /// The key is in the ready queue (waiting for a concurrency slot).
    pub(super) waiting: bool,
    /// A timer for the head's due time is set.
    pub(super) timer_due: Option<Instant>,
    /// Produces to the retry topic not acknowledged yet.
    pub(super) producing: usize,
    /// Retry-topic offsets of the key not finished yet (acknowledged or received).
    pub(super) retry_known: BTreeSet<i64>,
    /// Last parked state reported to the gauge.
    pub(super) parked: bool,
    /// Dead letters of the key not acknowledged yet: the key waits for them (a
    /// failed DLQ produce stops the runtime, and the record is handled again after
    /// the restart, so nothing later of the key may have run).
    pub(super) dlq_pending: usize,
}

impl KeyState {
    /// Parked: some event of the key is in (or on its way to) the retry topic and not
    /// finished, so the key's later source records must go behind it.
    pub(super) fn is_parked(&self) -> bool {
        self.producing > 0 || !self.retry_known.is_empty()
    }

    pub(super) fn is_idle(&self) -> bool {
        !self.busy
            && self.dlq_pending == 0
            && !self.waiting
            && !self.parked
            && self.main_q.is_empty()
            && self.retry_q.is_empty()
            && !self.is_parked()
    }
}

/// Source partition p and retry partition p, owned together (crate docs).
pub(super) struct PartitionState {
    pub(super) epoch: u64,
    pub(super) main: OffsetTracker,
    pub(super) retry: OffsetTracker,
    pub(super) gate: Gate,
    /// Source records received while the gate was closed, in order.
    pub(super) held: VecDeque<Event>,
    pub(super) keys: HashMap<Key, KeyState>,
    /// Source offsets already present in retry partition p (from its headers): a
    /// redelivered source record among them is not handled or moved again.
    pub(super) in_retry: BTreeSet<i64>,
    /// Per key, the highest source offset found in retry partition p that this
    /// assignment had not processed from the source yet: the key's source records
    /// below it were finished before it was moved, so they are skipped.
    pub(super) retry_origins: HashMap<Key, i64>,
    pub(super) handlers_running: usize,
    pub(super) produces_pending: usize,
    pub(super) handler_tasks: HashMap<tokio::task::Id, AbortHandle>,
    /// Revoking or shutting down: no new handler calls.
    pub(super) draining: bool,
    /// Turns true when the partition starts draining: handler tasks in an
    /// in-process retry wait stop waiting (see `dispatch::deliver`).
    pub(super) drain_signal: tokio::sync::watch::Sender<bool>,
    /// Fetching of source p / retry p is paused (flow control).
    pub(super) main_paused: bool,
    pub(super) retry_paused: bool,
    /// Source p has too many unfinished records (flow control, with hysteresis).
    pub(super) over_records: bool,
    /// Its source / retry records held are over its share of the byte bound.
    pub(super) main_over_bytes: bool,
    pub(super) retry_over_bytes: bool,
    pub(super) parked_keys: i64,
}

impl PartitionState {
    pub(super) fn new(epoch: u64) -> Self {
        PartitionState {
            epoch,
            main: OffsetTracker::default(),
            retry: OffsetTracker::default(),
            gate: Gate::Probing,
            held: VecDeque::new(),
            keys: HashMap::new(),
            in_retry: BTreeSet::new(),
            retry_origins: HashMap::new(),
            handlers_running: 0,
            produces_pending: 0,
            handler_tasks: HashMap::new(),
            draining: false,
            drain_signal: tokio::sync::watch::Sender::new(false),
            main_paused: false,
            retry_paused: false,
            over_records: false,
            main_over_bytes: false,
            retry_over_bytes: false,
            parked_keys: 0,
        }
    }

    pub(super) fn quiet(&self) -> bool {
        self.handlers_running == 0 && self.produces_pending == 0
    }
}

/// What a handler task was given (returned with its outcome).
pub(super) enum Work {
    Main(Event),
    Retry(RetryItem),
}

/// How a delivery round ended.
pub(super) enum Outcome {
    Done,
    Failed {
        first_error: String,
        last_error: String,
        retryable: bool,
        /// The least wait before the next round the handler asked for.
        retry_after: Option<std::time::Duration>,
    },
}

/// What an acknowledged produce finishes. The event is kept until the
/// acknowledgement: a record too large for its topic is dead-lettered from it.
pub(super) enum Produced {
    /// A source record moved to the retry topic.
    ToRetry { event: Box<Event>, meta: RetryMeta },
    /// A record dead-lettered; `from_retry` says from which topic `offset` is.
    ToDlq(Box<DeadLetter>),
}

/// A record on its way to the DLQ.
pub(super) struct DeadLetter {
    /// Whether `offset` is of the retry topic (else of the source topic).
    pub(super) from_retry: bool,
    pub(super) offset: i64,
    pub(super) event: Event,
    pub(super) error: String,
    pub(super) retryable: bool,
    pub(super) attempts: u32,
    /// The payload (and headers) left out because the record would not fit.
    pub(super) stripped: bool,
}

/// Why a produce failed.
pub(super) struct ProduceFailure {
    pub(super) reason: String,
    /// The record is larger than the producer or the topic accepts: producing it
    /// again cannot succeed.
    pub(super) too_large: bool,
}

pub(super) enum Completion {
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
        result: Result<(i32, i64), ProduceFailure>,
        topic: String,
    },
    /// The DLQ topic's high watermark per partition.
    DlqEnds { result: Result<Vec<i64>, String> },
    Probed {
        p: i32,
        epoch: u64,
        result: Result<(i64, i64), String>,
    },
}

pub(super) struct TaskInfo {
    pub(super) p: i32,
    pub(super) handler: bool,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) due: Instant,
    pub(super) seq: u64,
    pub(super) p: i32,
    pub(super) epoch: u64,
    pub(super) key: Key,
}

pub(super) struct RevokeDrain {
    pub(super) partitions: HashSet<i32>,
    pub(super) reply: std::sync::mpsc::SyncSender<Vec<(String, i32, i64)>>,
    pub(super) deadline: Instant,
}
