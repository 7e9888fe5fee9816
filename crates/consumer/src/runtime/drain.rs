//! Draining: a revoke (finish or abandon the revoked partitions' work, answer with
//! the offsets to commit) and shutdown (the same for every partition, then the final
//! commit, bounded by [`FINAL_COMMIT_BUDGET`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::state::{PartitionState, RevokeDrain};
use super::{take_thread, Runtime, FINAL_COMMIT_BUDGET, REQUEST_TIMEOUT};
use crate::poller::{Input, RuntimeContext};
use crate::ConsumerError;

/// Stores and synchronously commits `offsets`. Blocking.
pub(super) fn commit(
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
    // A rebalance finishing just now (KIP-848 bumps the member epoch when another
    // member leaves) makes the first commit stale; librdkafka has the new epoch a
    // moment later. Anything else, or a third refusal, is the caller's error.
    let mut attempt = 1;
    loop {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Err(e)
                if attempt < 3
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::StaleMemberEpoch
                                | RDKafkaErrorCode::RebalanceInProgress
                        )
                    ) =>
            {
                tracing::info!(error = %e, attempt, "final commit refused during a rebalance; again");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            result => return result,
        }
    }
}

impl Runtime {
    pub(super) fn on_revoke(
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
                st.drain_signal.send_replace(true);
            }
        }
        self.revoke = Some(RevokeDrain {
            partitions: ps,
            reply,
            deadline: Instant::now() + self.config.revoke_grace,
        });
    }

    pub(super) fn check_revoke_done(&mut self) {
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

    pub(super) fn on_drain_deadline(&mut self) {
        let now = Instant::now();
        if self.revoke.as_ref().is_some_and(|r| r.deadline <= now) {
            tracing::warn!("revoke grace over; abandoning unfinished work of revoked partitions");
            self.complete_revoke();
        }
    }

    /// Answers the revoke callback with the offsets below which all is finished, and
    /// drops the revoked partitions (aborting handler calls that outlived the grace).
    pub(super) fn complete_revoke(&mut self) {
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
    pub(super) fn release(&mut self, p: i32, st: PartitionState) -> Vec<(String, i32, i64)> {
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

    pub(super) fn begin_shutdown(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.shutdown_deadline = Some(self.shutdown_deadline.map_or(deadline, |d| d.min(deadline)));
        // Stop fetching; the channel is still drained until the end.
        self.stop.store(true, Ordering::SeqCst);
        for st in self.partitions.values_mut() {
            st.draining = true;
            st.drain_signal.send_replace(true);
        }
        tracing::info!(
            group = self.config.group_id,
            ?grace,
            "consumer runtime stopping"
        );
    }

    pub(super) fn shutdown_done(&self) -> bool {
        let Some(deadline) = self.shutdown_deadline else {
            return false;
        };
        Instant::now() >= deadline || self.partitions.values().all(PartitionState::quiet)
    }

    /// Records a fatal error and stops (fires the service's shutdown too).
    pub(super) fn fail(&mut self, error: ConsumerError) {
        tracing::error!(group = self.config.group_id, error = %error, "consumer runtime failed");
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
        self.shutdown.trigger();
        self.begin_shutdown(Duration::ZERO);
    }

    /// Commits what is complete, then closes the consumer (leaving the group) before
    /// returning, so that [`RuntimeHandle::wait`] means "stopped".
    pub(super) async fn finish(mut self, rx: mpsc::Receiver<Input>) -> Result<(), ConsumerError> {
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
        // Abandoned handler calls and deliveries end now. A watermark probe on the
        // blocking pool cannot be aborted and may wait out its request timeout with
        // the brokers gone: it is left to finish on its own (it holds a reference to
        // the consumer, so the group may be left only when it ends), not waited for.
        drop(std::mem::take(&mut self.tasks));
        let Runtime {
            consumer,
            producer,
            poll_thread,
            fatal,
            config,
            ..
        } = self;
        let group = config.group_id.clone();
        // On a plain thread, not tokio's blocking pool: with the brokers gone, closing
        // the consumer can wait for ever, and a runtime being dropped waits for its
        // blocking tasks. Past the budget the thread is left behind (the process is
        // exiting) and the caller gets an error.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("slackline-close".to_owned())
            .spawn(move || {
                if let Some(thread) = take_thread(&poll_thread) {
                    let _ = thread.join();
                }
                let result = match &consumer {
                    Some(consumer) => commit(consumer, &offsets),
                    None => Ok(()),
                };
                // The last references: closing leaves the group. Reported after it,
                // so that `wait` returning means the member is gone.
                drop(consumer);
                drop(producer);
                let _ = done_tx.send(result.map_err(|e| e.to_string()));
            });
        let closed = match spawned {
            Ok(_) => tokio::time::timeout(FINAL_COMMIT_BUDGET, done_rx).await,
            Err(e) => Ok(Ok(Err(format!("starting the closing thread: {e}")))),
        };
        let shutdown_error = match closed {
            Ok(Ok(Ok(()))) => {
                tracing::info!(group, "offsets committed; consumer runtime stopped");
                None
            }
            Ok(Ok(Err(e))) => Some(format!("the final commit failed: {e}")),
            Ok(Err(_)) => Some("the closing thread stopped".to_owned()),
            Err(_) => Some(format!(
                "the final commit and leaving the group did not finish within {FINAL_COMMIT_BUDGET:?} (brokers unreachable?)"
            )),
        };
        if let Some(reason) = &shutdown_error {
            tracing::error!(
                group,
                reason,
                "consumer runtime stopped without its final commit"
            );
        }
        match (fatal, shutdown_error) {
            (Some(e), _) => Err(e),
            (None, Some(reason)) => Err(ConsumerError::Shutdown(reason)),
            (None, None) => Ok(()),
        }
    }
}

/// Stores, for every assigned partition, the offset the group has committed (the
/// low watermark where it has none), so that closing commits nothing new. Blocking.
pub(super) fn store_committed(consumer: &BaseConsumer<RuntimeContext>) -> Result<(), KafkaError> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed_offsets(assignment, REQUEST_TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => o,
            _ => {
                consumer
                    .fetch_watermarks(e.topic(), e.partition(), REQUEST_TIMEOUT)?
                    .0
            }
        };
        tpl.add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset))?;
    }
    consumer.store_offsets(&tpl)
}
