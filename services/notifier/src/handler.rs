//! The notifier's handler: one message event in, at most one notification per
//! (target, fact) out.
//!
//! Each (target, fact) has one row in `sent`, written by a *claim*: every claim
//! attempt writes a fresh random `claim_token`, and every later change of the row is
//! conditional on that token, so only the handler call holding the claim moves it on.
//! The process remembers, by token, the claims it issued and what it knows of their
//! outcome. Per event and target:
//!
//! 1. no row → insert a `claimed` row with a new token. When the insert finds a row
//!    after all (another consumer claimed the fact in between, or an earlier attempt
//!    of ours landed without its answer), the row is read again and is ours only if
//!    this process issued its token;
//! 2. `claimed` → nobody started a request for it: if this process issued the token it
//!    goes on; otherwise (a process that crashed, or another consumer of the same
//!    record) it takes the claim over by writing a new token, and sends. Moving a
//!    claim to `sending` is conditional on the token, so of two consumers racing for
//!    it only one gets to send;
//! 3. right before the request starts the row becomes `sending`; after the target
//!    took the notification, `sent`;
//! 4. `sent` → skipped (`already_sent`);
//! 5. `sending` whose outcome this process does not know (another process's, or a
//!    send of ours cut off mid-request), or a send that got no answer (a timeout after
//!    connecting, a connection cut mid-request, 502/504): the notification may or may
//!    not have gone out. **It is not sent again**: the row becomes `ambiguous`,
//!    `slackline_notifier_ambiguous_total{target}` counts it, and once every target of
//!    the event was handled the event fails with a **permanent** error naming the
//!    target and the fact key, so the record lands in `notifier.dlq` (nothing vanishes
//!    silently; the DLQ alert fires). A retryable failure of another target of the
//!    same event goes to the DLQ with it (a redrive sends that one);
//! 6. `ambiguous` → not sent and no new DLQ record (skipped, reason `ambiguous`), e.g.
//!    when the DLQ record is redriven.
//!
//! To have an ambiguous notification sent after all (someone checked that it did not
//! arrive), an operator deletes its row and then redrives its DLQ record:
//!
//! ```sql
//! DELETE FROM notifier.sent
//!  WHERE state = 'ambiguous' AND target = '<target>'
//!    AND team_id = '<team>' AND channel_id = '<channel>' AND ts = '<ts>' AND fact = '<fact>';
//! ```
//!
//! (the DLQ record's error names `<target>` and the fact key as
//! `<team>/<channel>/<ts>/<fact>`). A row that reads `sent` meanwhile was delivered
//! after all: its owner recorded it; nothing to do.
//!
//! A send the target did not take (connection refused, 500, 503, 429, 408, SMTP 4xx)
//! deletes the claim and fails the event as retryable: the runtime retries it and
//! parks the channel's later events behind it, so the channel's notifications stay in
//! order. Other 4xx delete the claim and send the event to the DLQ (a redrive sends
//! it). Targets are independent: a target already `sent` is skipped on the retry, so
//! Slack is not notified again while Discord is retried.
//!
//! What the process remembers per token until it is recorded: "not sent" (the claim
//! was written, or may have been, or moved to `sending`, but no request started or
//! the target refused it and deleting the claim failed), "in flight", and "delivered,
//! `sent` not written yet" (the database failed after the send). A row found on retry
//! is then completed or taken on instead of being counted as ambiguous, so database
//! blips never cost a notification.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use slackline_consumer::{Event, HandlerError};
use slackline_store::{with_retries, StoreError};
use uuid::Uuid;

use crate::metrics::NotifierMetrics;
use crate::notification::{notification_for, FactKey, Notification};
use crate::store::{Row, RowState, SentStore};
use crate::targets::{SendError, Target};

/// Attempts of one database statement within a handler call (short blips).
const DB_ATTEMPTS: u32 = 3;
/// Pause between them.
const DB_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Reads of the row per target and handler call: a claim that changes hands between
/// a read and the next write is read again, this many times at most.
const CLAIM_ROUNDS: usize = 4;

/// What this process knows about one of its claims (by token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// Claimed (or claiming); no request started, or the target refused it.
    NotSent,
    /// A request is under way.
    InFlight,
    /// Delivered; `sent` not recorded yet.
    Delivered,
}

/// How one target ended.
enum Delivery {
    /// Sent now, or before, or nothing to do.
    Done,
    /// May or may not have been delivered: the event goes to the DLQ with this text.
    Ambiguous(String),
}

/// One step of the claim protocol.
enum Step {
    /// The row changed under us: read it again.
    Again,
    /// Finished for this target.
    Finished(Delivery),
}

/// The handler, shared by every handler call.
pub struct Handler {
    store: SentStore,
    targets: Vec<Target>,
    metrics: NotifierMetrics,
    local: Mutex<HashMap<Uuid, Local>>,
}

fn store_error(target: &str, what: &str, error: StoreError) -> HandlerError {
    let message = format!("{target}: {what}: {error}");
    if error.is_retryable() {
        HandlerError::retryable(message)
    } else {
        HandlerError::permanent(message)
    }
}

/// One statement with the handler's short retries, its error named.
async fn db<T, F, Fut>(target: &str, what: &str, f: F) -> Result<T, HandlerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, f)
        .await
        .map_err(|e| store_error(target, what, e))
}

impl Handler {
    /// A handler sending to `targets` (none: events are only counted).
    pub fn new(store: SentStore, targets: Vec<Target>, metrics: NotifierMetrics) -> Self {
        Handler {
            store,
            targets,
            metrics,
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Handles one record of `slack.messages.v1`.
    ///
    /// # Errors
    ///
    /// Permanent for a record that does not decode, a send a target rejected for good,
    /// or a notification that may or may not have been delivered (see the module docs;
    /// every target is handled first); retryable when a target or the database is
    /// unavailable.
    pub async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let message = slackline_events::decode_message(&event.payload)
            .map_err(|e| HandlerError::permanent(format!("undecodable message event: {e}")))?;
        let notification = match notification_for(&message) {
            Ok(n) => n,
            Err(reason) => {
                self.metrics.skipped(reason.label());
                return Ok(());
            }
        };
        if self.targets.is_empty() {
            self.metrics.skipped("no_target");
            return Ok(());
        }
        let mut ambiguous = Vec::new();
        let mut failures = Vec::new();
        for target in &self.targets {
            match self.deliver(target, &notification).await {
                Ok(Delivery::Done) => {}
                Ok(Delivery::Ambiguous(message)) => ambiguous.push(message),
                Err(e) => failures.push(e),
            }
        }
        let messages = ambiguous
            .iter()
            .map(String::as_str)
            .chain(failures.iter().map(HandlerError::message))
            .collect::<Vec<_>>()
            .join("; ");
        if !ambiguous.is_empty() {
            // Only this call knows: a retry would find the rows `ambiguous` and skip
            // them, so the record must go to the DLQ now.
            Err(HandlerError::permanent(messages))
        } else if failures.is_empty() {
            Ok(())
        } else if failures.iter().any(HandlerError::is_retryable) {
            Err(HandlerError::retryable(messages))
        } else {
            Err(HandlerError::permanent(messages))
        }
    }

    fn local(&self, token: Uuid) -> Option<Local> {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token)
            .copied()
    }

    fn remember(&self, token: Uuid, state: Local) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token, state);
    }

    fn forget(&self, token: Uuid) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }

    async fn deliver(
        &self,
        target: &Target,
        notification: &Notification,
    ) -> Result<Delivery, HandlerError> {
        let name = target.name();
        let key = &notification.key;
        // A token this call issued whose insert or takeover may not have landed.
        let mut issued: Option<Uuid> = None;
        for _ in 0..CLAIM_ROUNDS {
            let row = db(name, "reading the claim", || self.store.row(name, key)).await?;
            if let Some(t) = issued.take() {
                if row.map(|r| r.token) != Some(t) {
                    self.forget(t);
                }
            }
            let step = match row {
                None => {
                    let token = Uuid::new_v4();
                    // Remembered before the insert: if the insert reaches the database
                    // but its answer is lost, the next read finds our token.
                    self.remember(token, Local::NotSent);
                    issued = Some(token);
                    let inserted = db(name, "claiming", || {
                        self.store.claim(name, key, &notification.event_id, token)
                    })
                    .await?;
                    if inserted {
                        issued = None;
                        self.send(target, notification, token).await?
                    } else {
                        Step::Again
                    }
                }
                Some(Row { state, token }) => {
                    self.on_row(target, notification, state, token, &mut issued)
                        .await?
                }
            };
            if let Step::Finished(delivery) = step {
                return Ok(delivery);
            }
        }
        Err(HandlerError::retryable(format!(
            "{name}: fact {key}: the claim kept changing hands"
        )))
    }

    async fn on_row(
        &self,
        target: &Target,
        notification: &Notification,
        state: RowState,
        token: Uuid,
        issued: &mut Option<Uuid>,
    ) -> Result<Step, HandlerError> {
        let name = target.name();
        let key = &notification.key;
        match (state, self.local(token)) {
            (RowState::Sent, _) => {
                self.forget(token);
                self.metrics.skipped("already_sent");
                Ok(Step::Finished(Delivery::Done))
            }
            (RowState::Ambiguous, _) => {
                // Reported (DLQ) when it became ambiguous; an operator deletes the row
                // to have it sent.
                self.forget(token);
                self.metrics.skipped("ambiguous");
                Ok(Step::Finished(Delivery::Done))
            }
            // Ours, and no request started: go on.
            (RowState::Claimed | RowState::Sending, Some(Local::NotSent)) => {
                self.send(target, notification, token).await
            }
            (RowState::Claimed, _) => {
                // Never attempted (its process crashed, or another consumer of the
                // record has not started yet): take it over.
                let new = Uuid::new_v4();
                self.remember(new, Local::NotSent);
                *issued = Some(new);
                let taken = db(name, "taking over a claim", || {
                    self.store
                        .take_over(name, key, token, new, &notification.event_id)
                })
                .await?;
                if !taken {
                    return Ok(Step::Again);
                }
                *issued = None;
                self.forget(token);
                tracing::info!(
                    target_name = name,
                    fact = %key,
                    "took over a claim whose send never started"
                );
                self.send(target, notification, new).await
            }
            (RowState::Sending, Some(Local::Delivered)) => {
                db(name, "recording a delivered notification", || {
                    self.store.mark_sent(name, key, token)
                })
                .await?;
                self.forget(token);
                Ok(Step::Finished(Delivery::Done))
            }
            (RowState::Sending, Some(Local::InFlight) | None) => {
                self.forget(token);
                let marked = self
                    .mark_ambiguous(
                        name,
                        key,
                        token,
                        "found the claim of a send that never recorded its outcome",
                    )
                    .await?;
                Ok(match marked {
                    Some(message) => Step::Finished(Delivery::Ambiguous(message)),
                    // Its owner recorded it meanwhile.
                    None => Step::Again,
                })
            }
        }
    }

    /// Marks the row of `token` `ambiguous` and counts it; the DLQ error text, or
    /// `None` when the row was no longer `sending` under `token`.
    async fn mark_ambiguous(
        &self,
        name: &'static str,
        key: &FactKey,
        token: Uuid,
        reason: &str,
    ) -> Result<Option<String>, HandlerError> {
        let marked = db(name, "marking a claim ambiguous", || {
            self.store.mark_ambiguous(name, key, token)
        })
        .await?;
        if !marked {
            return Ok(None);
        }
        self.metrics.ambiguous(name);
        tracing::warn!(
            target_name = name,
            fact = %key,
            reason,
            "notification may or may not have been delivered; not sending it again"
        );
        Ok(Some(format!(
            "{name}: fact {key}: {reason}; the notification may or may not have been \
             delivered and is not sent again (sent.state = 'ambiguous'; delete the row \
             to have a redrive send it)"
        )))
    }

    /// Sends under the claim of `token` (`claimed`, or `sending` with no request
    /// started).
    async fn send(
        &self,
        target: &Target,
        notification: &Notification,
        token: Uuid,
    ) -> Result<Step, HandlerError> {
        let name = target.name();
        let key = &notification.key;
        let store = &self.store;
        let started = db(name, "starting the send", || {
            store.begin_send(name, key, token)
        })
        .await?;
        if !started {
            // Taken over by another consumer before our request started.
            self.forget(token);
            return Ok(Step::Again);
        }
        self.remember(token, Local::InFlight);
        match target.send(notification).await {
            Ok(()) => {
                self.remember(token, Local::Delivered);
                self.metrics.sent(name, notification.kind.label());
                let recorded = db(name, "recording a delivered notification", || {
                    store.mark_sent(name, key, token)
                })
                .await?;
                self.forget(token);
                if !recorded {
                    tracing::warn!(
                        target_name = name,
                        fact = %key,
                        "delivered, but the claim was gone when recording it"
                    );
                }
                tracing::debug!(target_name = name, fact = %key, "notification sent");
                Ok(Step::Finished(Delivery::Done))
            }
            Err(SendError::NotDelivered { retryable, reason }) => {
                self.remember(token, Local::NotSent);
                self.metrics.failed(name, retryable);
                match db(name, "releasing", || store.release(name, key, token)).await {
                    Ok(()) => self.forget(token),
                    Err(e) => tracing::warn!(
                        target_name = name,
                        fact = %key,
                        error = %e.message(),
                        "could not delete a claim that was not delivered; this process takes it over"
                    ),
                }
                tracing::warn!(
                    target_name = name,
                    fact = %key,
                    retryable,
                    reason,
                    "notification not delivered"
                );
                let message = format!("{name}: {reason}");
                Err(if retryable {
                    HandlerError::retryable(message)
                } else {
                    HandlerError::permanent(message)
                })
            }
            Err(SendError::Ambiguous { reason }) => {
                self.forget(token);
                let message = match self.mark_ambiguous(name, key, token, &reason).await {
                    Ok(Some(message)) => message,
                    // Not `sending` under our token any more (an operator deleted it):
                    // still reported, never read again and resent.
                    Ok(None) => {
                        self.metrics.ambiguous(name);
                        format!(
                            "{name}: fact {key}: {reason}; the notification may or may \
                             not have been delivered and is not sent again"
                        )
                    }
                    // The row stays `sending`: a retry finds it and reports it.
                    Err(e) => return Err(e),
                };
                Ok(Step::Finished(Delivery::Ambiguous(message)))
            }
        }
    }
}
