//! Scheduling a key's next record, running handler calls, and what their outcomes do
//! to the key (finish, retry in place, move to the retry topic, dead-letter).

use std::cmp::Reverse;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio::time::Instant;
use tracing::Instrument;

use super::state::{Completion, DeadLetter, Outcome, TaskInfo, Timer, Work};
use super::{millis, now_ms, BoxedHandler, Key, Runtime};
use crate::event::MAX_IN_PROCESS_RETRY_AFTER;
use crate::metrics::GroupMetrics;
use crate::retry_headers::RetryMeta;
use crate::{Event, HandlerError, RuntimeConfig};

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

/// The longest `Retry-After` a handler error is honoured for
/// ([`HandlerError::with_retry_after`]); a longer one is cut to this. Slack, say,
/// answers a 429 with up to a few minutes; a day (86400) would park the key that long
/// per retry round. A retry round's not-before time is at most this (or its own
/// retry delay, when longer) away.
pub(crate) const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// One delivery round: a call plus up to `quick_retries` quick retries.
///
/// The wait before a quick retry ends early when `draining` turns true (the
/// partition is being revoked or the runtime stops): the round then fails as the
/// last call did, and its outcome goes the usual way (retry topic, or the retry
/// head back in its queue), so the ordering invariants hold as for any failure.
pub(super) async fn deliver(
    handler: &BoxedHandler,
    event: &Event,
    config: &RuntimeConfig,
    metrics: &GroupMetrics,
    mut draining: tokio::sync::watch::Receiver<bool>,
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
        let retry_after = error.retry_after().map(|wait| wait.min(MAX_RETRY_AFTER));
        let stopping = *draining.borrow();
        if !error.is_retryable()
            || stopping
            || quick >= config.quick_retries
            || retry_after.is_some_and(|wait| wait > MAX_IN_PROCESS_RETRY_AFTER)
        {
            return Outcome::Failed {
                first_error: first,
                last_error: message,
                retryable: error.is_retryable(),
                retry_after,
            };
        }
        quick += 1;
        tracing::debug!(error = %message, quick, ?retry_after, "retryable failure; retrying in process");
        let wait = config
            .quick_delay(quick)
            .max(retry_after.unwrap_or_default());
        let drained = tokio::select! {
            () = tokio::time::sleep(wait) => false,
            // Err: the partition is gone (its call is being abandoned).
            _ = draining.wait_for(|d| *d) => true,
        };
        if drained {
            tracing::debug!("partition draining; not retrying in process");
            return Outcome::Failed {
                first_error: first,
                last_error: message,
                retryable: true,
                retry_after,
            };
        }
    }
}

impl Runtime {
    /// Starts the key's next step if it can run now.
    pub(super) async fn schedule(&mut self, p: i32, key: &Key) {
        self.schedule_inner(p, key, false).await;
    }

    /// `from_ready`: the key was just taken from the ready queue. Otherwise a key
    /// must queue behind waiting keys even when a slot is free (the slot freed by its
    /// own previous call, for instance): slots go round in arrival order, so a key
    /// with a long backlog cannot starve the others.
    pub(super) async fn schedule_inner(&mut self, p: i32, key: &Key, from_ready: bool) {
        enum Next {
            Idle,
            Wait(Instant),
            ForwardOne,
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
        // A parked key's source records go behind it in the retry topic,
        // whatever its retry head is doing (waiting for a 30-minute delay, say):
        // holding them here would hold the source partition's offset back. One
        // at a time, each once the key's previous produce is acknowledged: a
        // later record in the retry topic says every earlier one of its key was
        // finished (invariant 3 skips them on a replay), which would be false if
        // the earlier one's produce failed after the later one's went through.
        let forwarding = ks.is_parked() && !ks.busy_main && !ks.main_q.is_empty();
        let next = if forwarding && ks.producing == 0 && ks.dlq_pending == 0 {
            Next::ForwardOne
        } else if ks.busy || ks.dlq_pending > 0 {
            return;
        } else if let Some(head) = ks.retry_q.front() {
            if head.due <= now {
                Next::Run
            } else {
                Next::Wait(head.due)
            }
        } else if !ks.main_q.is_empty() && !forwarding {
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
            Next::ForwardOne => {
                if let Some(event) = ks.main_q.pop_front() {
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
    pub(super) fn dispatch(&mut self, p: i32, key: &Key) {
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
        let draining = st.drain_signal.subscribe();
        let key = key.clone();
        let abort = self.tasks.spawn(
            async move {
                let event = match &work {
                    Work::Main(e) => e,
                    Work::Retry(item) => &item.event,
                };
                let outcome = deliver(&handler, event, &config, &metrics, draining).await;
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
    pub(super) async fn fill_ready(&mut self) {
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

    pub(super) async fn on_timers(&mut self) {
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

    pub(super) fn refresh_parked(&mut self, p: i32, key: &Key) {
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

    pub(super) async fn on_joined(
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
            }) => self.on_produced(p, epoch, what, result, topic).await,
            Some(Completion::Probed { p, epoch, result }) => self.on_probed(p, epoch, result).await,
            Some(Completion::DlqEnds { result }) => self.on_dlq_ends(result),
            None => {}
        }
        self.fill_ready().await;
    }

    pub(super) async fn on_handled(
        &mut self,
        p: i32,
        epoch: u64,
        key: Key,
        work: Work,
        outcome: Outcome,
    ) {
        enum Then {
            Nothing,
            DeadLetter(DeadLetter),
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
                    retry_after,
                },
            ) => {
                if !retryable || delays.is_empty() {
                    Then::DeadLetter(DeadLetter {
                        from_retry: false,
                        offset: event.offset,
                        event,
                        error: last_error,
                        retryable,
                        attempts: 1,
                        stripped: false,
                    })
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
                        not_before_ms: now_ms()
                            .saturating_add(millis(delays[0].max(retry_after.unwrap_or_default()))),
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
                    retry_after,
                },
            ) => {
                let rounds = item.event.attempt.saturating_add(1);
                match delays.get(rounds as usize - 1).filter(|_| retryable) {
                    None => {
                        // The key stays parked on this offset until the dead letter
                        // is acknowledged (invariant 1 in mod.rs).
                        Then::DeadLetter(DeadLetter {
                            from_retry: true,
                            offset: item.retry_offset,
                            event: item.event,
                            error: last_error,
                            retryable,
                            attempts: rounds,
                            stripped: false,
                        })
                    }
                    Some(&delay) => {
                        let delay = delay.max(retry_after.unwrap_or_default());
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
            Then::DeadLetter(letter) => self.dead_letter(p, letter).await,
            Then::ToRetry(event, meta) => self.produce_retry(p, event, meta).await,
        }
        self.refresh_parked(p, &key);
        self.schedule(p, &key).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::ConsumerMetrics;

    fn event() -> Event {
        Event {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(b"C1".to_vec()),
            headers: Vec::new(),
            payload: Vec::new(),
            attempt: 0,
        }
    }

    /// A handler failing `fails` times with `wait` as its Retry-After, then passing.
    fn handler(fails: u32, wait: Duration) -> (BoxedHandler, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let handler: BoxedHandler = Arc::new(move |_| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n < fails {
                    Err(HandlerError::retryable("429").with_retry_after(wait))
                } else {
                    Ok(())
                }
            })
        });
        (handler, calls)
    }

    fn metrics() -> GroupMetrics {
        ConsumerMetrics::register(&prometheus::Registry::new())
            .unwrap()
            .group("g")
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_is_waited_out_in_process() {
        let config = RuntimeConfig::new("g", "t");
        let (handler, calls) = handler(1, Duration::from_secs(2));
        let started = Instant::now();
        let outcome = deliver(&handler, &event(), &config, &metrics(), not_draining()).await;
        assert!(matches!(outcome, Outcome::Done));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Not the 100 ms quick backoff: the 2 s the handler asked for.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_retry_after_goes_to_the_retry_topic_at_once_carrying_the_wait() {
        let config = RuntimeConfig::new("g", "t");
        let wait = MAX_IN_PROCESS_RETRY_AFTER + Duration::from_secs(1);
        let (handler, calls) = handler(10, wait);
        let started = Instant::now();
        let outcome = deliver(&handler, &event(), &config, &metrics(), not_draining()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no quick retries");
        assert_eq!(started.elapsed(), Duration::ZERO);
        match outcome {
            Outcome::Failed {
                retryable,
                retry_after,
                ..
            } => {
                assert!(retryable);
                assert_eq!(retry_after, Some(wait));
            }
            Outcome::Done => panic!("expected a failure"),
        }
    }

    fn not_draining() -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Kept open for the test's life.
        std::mem::forget(tx);
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_retry_after_is_capped() {
        let config = RuntimeConfig::new("g", "t");
        let (handler, _calls) = handler(10, Duration::from_secs(86_400));
        let outcome = deliver(&handler, &event(), &config, &metrics(), not_draining()).await;
        match outcome {
            Outcome::Failed { retry_after, .. } => {
                assert_eq!(retry_after, Some(MAX_RETRY_AFTER));
            }
            Outcome::Done => panic!("expected a failure"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn draining_ends_the_in_process_wait() {
        let config = RuntimeConfig::new("g", "t");
        let (handler, calls) = handler(10, Duration::from_secs(4));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        let drain = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(true);
        };
        let (event, metrics) = (event(), metrics());
        let (outcome, ()) = tokio::join!(deliver(&handler, &event, &config, &metrics, rx), drain);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "not the 4 s wait"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry once draining");
        assert!(matches!(
            outcome,
            Outcome::Failed {
                retryable: true,
                ..
            }
        ));
    }

    #[test]
    fn a_permanent_error_carries_no_wait() {
        let e = HandlerError::permanent("x").with_retry_after(Duration::from_secs(1));
        assert_eq!(e.retry_after(), None);
    }
}
