//! The consumer runtime every slackline consumer group stands on (thread-state,
//! timeline-writer, notifier, slack-sender): it reads a source topic, calls the
//! service's handler once per record, and keeps each key's (each channel's) effects
//! in order even while one of its events is being retried, while every other key
//! keeps flowing (guarantee 3). A failing group never touches another group's topics
//! or offsets (guarantee 4); every record ends handled or as a DLQ record with a
//! counter and an error log (guarantee 5); handlers are expected to be idempotent on
//! their event id, which the runtime's at-least-once redelivery relies on
//! (guarantee 2).
//!
//! A service calls [`ConsumerRuntime::start`] with its [`slackline_kafka::KafkaSettings`],
//! a [`RuntimeConfig`], a handler `Fn(Event) -> impl Future<Output = Result<(),
//! HandlerError>>`, the registry's [`ConsumerMetrics`] and its
//! [`slackline_service::Shutdown`], then waits on the [`RuntimeHandle`].
//!
//! # How order survives retries
//!
//! **Co-partitioning (relied on everywhere below).** Each group has a retry topic
//! `<group>.retry` with exactly as many partitions as the source topic
//! ([`slackline_kafka::topics::all_topics`] creates them so; `start` refuses to run
//! otherwise, with [`ConsumerError::NotCoPartitioned`]). One consumer per group
//! member subscribes to BOTH topics with `partition.assignment.strategy=range`
//! (eager). The range assignor deals each topic's partitions out over the same
//! sorted member list in the same way, so with equal partition counts a member owns
//! source partition p exactly when it owns retry partition p: the pair is always
//! owned together, by one process. Under KIP-848 (`group.protocol=consumer` in
//! `KAFKA_PROPERTIES`) the broker assigns and librdkafka refuses
//! `partition.assignment.strategy`; the runtime then asks for the broker's `range`
//! assignor (`group.remote.assignor=range`), which gives co-partitioned topics the same
//! partition numbers per member as well, and rebalances are incremental (only the
//! partitions that move are revoked). Every assignment is checked
//! ([`ConsumerError::UnpairedAssignment`] stops the runtime otherwise). A record
//! moved to the retry topic is produced to retry partition p explicitly (not by key
//! hash), so a key's retry records sit in the same partition number as its source
//! records, in the same process.
//!
//! **Per key, in order.** Records of a partition pair are queued per key; different
//! keys run concurrently (at most [`RuntimeConfig::max_concurrent_keys`] handler
//! calls), one key strictly one record at a time.
//!
//! **Retrying and parking.** A retryable failure is retried in process a few times
//! (quick retries with doubling backoff). If it still fails, the record is produced
//! to retry partition p with headers ([`retry_headers`]: attempt, not-before,
//! first/last error, original topic/partition/offset/timestamp, then the original
//! headers) and its key is *parked*: the key's later source records are produced
//! behind it into the retry partition (attempt 0, not-before now) instead of being
//! handled, so the source partition moves on. A non-retryable failure goes to the
//! DLQ at once and the key moves on.
//!
//! **The retry partition** is consumed by the same consumer. Its records join the
//! key's retry queue in offset order; the head waits for its not-before time, is
//! handled, and on a retryable failure stays at the head and is retried in place
//! after the next delay of [`RuntimeConfig::retry_delays`] (other keys of the
//! partition keep flowing; the stored offset of the retry partition stays at the
//! blocked record). After the last delay the record goes to the DLQ and the key's
//! next record follows. A key is unparked when nothing of it is pending in the retry
//! topic any more: records produced but not acknowledged, plus retry offsets
//! acknowledged or received and not finished. All of that is known in memory
//! because source p and retry p live in one process.
//!
//! **Parking survives restarts and rebalances: the retry topic is the parked set.**
//! When partition pair p is assigned, source p is held back (its records are
//! buffered, not handled) while retry p is read from its committed offset up to the
//! high watermark observed at assignment; those records fill the retry queues, which
//! parks their keys. Only then do the held source records go, so no later source
//! record can overtake a parked one. Source records that are already in retry p
//! (moved there before a crash, but not committed on the source side) are recognised
//! by the original-offset header and not moved or handled a second time. The attempt
//! count of a record retried in place is kept in memory only: after a restart it
//! starts again from the attempt header of its retry record (written when it first
//! went to the retry topic), so a record can get more rounds in total than the
//! delays list has entries when the process restarts in between, never fewer.
//!
//! # Offsets
//!
//! The consumer runs with `enable.auto.offset.store=false` and
//! `enable.auto.commit=true`: librdkafka commits only offsets the runtime stored,
//! and the runtime stores, per partition, only the lowest offset below which every
//! record is finished: handled, skipped, or handed to the retry or DLQ topic with
//! that produce ACKNOWLEDGED (unfinished offsets are tracked per partition). That is
//! the "commit only when every event at or below it is handled", with
//! librdkafka doing the periodic commit. On a revoke and on shutdown the runtime
//! commits synchronously. Delivery is at least once: after a crash or a rebalance,
//! records above the committed offset are handled again, in order, so handlers must
//! be idempotent on their event id. A produce to the retry or DLQ topic that fails
//! after the producer's own retries ([`RuntimeConfig::produce_timeout`]) stops the
//! runtime ([`ConsumerError::Produce`]) instead of letting a later record of the key
//! overtake it; nothing past it was committed.
//!
//! # Rebalances and shutdown
//!
//! librdkafka runs rebalance callbacks on the polling thread; the runtime polls on a
//! dedicated thread whose callbacks forward the rebalance into the loop (the same
//! channel as the records, so in order) and, for a revoke, wait until the loop has
//! stopped dispatching the revoked partitions, let their in-flight handler calls and
//! produces finish for up to [`RuntimeConfig::revoke_grace`], and answered with the
//! offsets that are complete; the callback commits those synchronously before
//! librdkafka hands the partitions over. Handler calls outliving the grace are
//! aborted (their records are not committed, so the next owner handles them again).
//! Shutdown works the same way for all partitions with
//! [`RuntimeConfig::shutdown_grace`], then commits and leaves the group.
//!
//! # DLQ and redrive
//!
//! A DLQ record ([`DlqRecord`], JSON) carries the group, the error, whether it was
//! retryable, the rounds made, the original coordinates and key, the headers, the
//! payload as JSON when it is JSON and always as base64. Its Kafka key is the
//! original key. [`redrive`] turns one back into the record to re-produce.
//!
//! # Metrics and tracing
//!
//! Per group: `slackline_consumer_handled_total`, `slackline_consumer_retried_total`
//! (by attempt), `slackline_consumer_parked_keys`, `slackline_dlq_records_total`
//! (present at 0 from the start), `slackline_dlq_end_offset` (the DLQ topic's end
//! offsets, read at start and every [`RuntimeConfig::lag_interval`]: a record whose
//! writer died before a scrape still shows), `slackline_consumer_buffered_bytes`
//! (per topic: bytes of records held, see [`RuntimeConfig::max_buffered_bytes`]), `slackline_consumer_lag` (per topic and partition:
//! high watermark minus the offset the runtime would commit, read from librdkafka's
//! statistics every [`RuntimeConfig::lag_interval`]; measured against the commit
//! point rather than the fetch position because the runtime reads ahead, so a blocked
//! retry record shows as lag) and `slackline_consumer_handler_seconds`. Every handler call runs in an `event`
//! span with the group, key, partition, offset, attempt and Slack event id.

mod config;
mod dlq;
mod error;
mod event;
mod metrics;
mod offsets;
mod poller;
pub mod retry_headers;
mod runtime;
mod service;

pub use config::RuntimeConfig;
pub use dlq::{redrive, DlqOriginal, DlqRecord, Redrive};
pub use error::ConsumerError;
pub use event::{Event, HandlerError, HeaderList, MAX_IN_PROCESS_RETRY_AFTER};
pub use metrics::ConsumerMetrics;
pub use runtime::{ConsumerRuntime, RuntimeHandle, FINAL_COMMIT_BUDGET};
pub use service::GroupService;
