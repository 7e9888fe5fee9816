//! The notifier's handler: one message event in, at most one notification per
//! (target, fact) out.
//!
//! Per event and target:
//!
//! 1. a `sent` row in state `sent` → skipped (`already_sent`);
//! 2. no row → claim it (`sending`), send, then mark it `sent`;
//! 3. a `sending` row → an earlier attempt started a send and never recorded how it
//!    ended. When this process knows that attempt (see below) it finishes the job;
//!    otherwise the earlier process died mid-send, or its send got no answer, and the
//!    notification may or may not have gone out. **It is not sent again**: the issue
//!    asks for at most one notification per (target, fact), so an ambiguous claim is
//!    counted in `slackline_notifier_ambiguous_total{target}` and logged as a warning
//!    with the fact key, for a human to check.
//!
//! A send the target did not take (connection refused, 5xx, 429, SMTP 4xx) deletes
//! the claim and fails the event as retryable: the runtime retries it and parks the
//! channel's later events behind it, so the channel's notifications stay in order.
//! Other 4xx delete the claim and send the event to the DLQ (a redrive sends it).
//! Targets are independent: a target already `sent` is skipped on the retry, so Slack
//! is not notified again while Discord is retried.
//!
//! The process remembers the claims it made whose outcome it knows, until they are
//! recorded: "delivered, `sent` not written yet" (the database failed after the send)
//! and "not sent" (the claim was written, or may have been, but the send never
//! started or was refused, and deleting the claim failed). A `sending` row found on
//! retry is then completed or taken over instead of being counted as ambiguous, so
//! database blips never cost a notification. Claims of a handler call cut off
//! mid-send (shutdown or revoke grace exceeded) stay ambiguous.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use slackline_consumer::{Event, HandlerError};
use slackline_store::{with_retries, StoreError};

use crate::metrics::NotifierMetrics;
use crate::notification::{notification_for, FactKey, Notification};
use crate::store::{RowState, SentStore};
use crate::targets::{SendError, Target};

/// Attempts of one database statement within a handler call (short blips).
const DB_ATTEMPTS: u32 = 3;
/// Pause between them.
const DB_RETRY_DELAY: Duration = Duration::from_millis(100);

/// What this process knows about one of its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// Claimed (or claiming); no send started, or the target refused it.
    NotSent,
    /// A send is under way.
    InFlight,
    /// Delivered; `sent` not recorded yet.
    Delivered,
}

/// What happened for one target.
enum Outcome {
    Done,
    Failed(HandlerError),
}

/// The handler, shared by every handler call.
pub struct Handler {
    store: SentStore,
    targets: Vec<Target>,
    metrics: NotifierMetrics,
    local: Mutex<HashMap<(&'static str, FactKey), Local>>,
}

fn store_error(target: &str, what: &str, error: StoreError) -> HandlerError {
    let message = format!("{target}: {what}: {error}");
    if error.is_retryable() {
        HandlerError::retryable(message)
    } else {
        HandlerError::permanent(message)
    }
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
    /// Permanent for a record that does not decode or a send a target rejected for
    /// good; retryable when a target or the database is unavailable.
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
        let mut failures = Vec::new();
        for target in &self.targets {
            if let Outcome::Failed(e) = self.deliver(target, &notification).await {
                failures.push(e);
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let message = failures
            .iter()
            .map(HandlerError::message)
            .collect::<Vec<_>>()
            .join("; ");
        if failures.iter().any(HandlerError::is_retryable) {
            Err(HandlerError::retryable(message))
        } else {
            Err(HandlerError::permanent(message))
        }
    }

    fn local(&self, key: &(&'static str, FactKey)) -> Option<Local> {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    fn remember(&self, key: &(&'static str, FactKey), state: Local) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), state);
    }

    fn forget(&self, key: &(&'static str, FactKey)) {
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    fn ambiguous(&self, target: &'static str, key: &FactKey, reason: &str) {
        self.metrics.ambiguous(target);
        tracing::warn!(
            target_name = target,
            fact = %key,
            reason,
            "notification may or may not have been delivered; not sending it again"
        );
    }

    async fn deliver(&self, target: &Target, notification: &Notification) -> Outcome {
        match self.try_deliver(target, notification).await {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        }
    }

    async fn try_deliver(
        &self,
        target: &Target,
        notification: &Notification,
    ) -> Result<(), HandlerError> {
        let name = target.name();
        let key = &notification.key;
        let local_key = (name, key.clone());
        let store = &self.store;
        let state = with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, || store.state(name, key))
            .await
            .map_err(|e| store_error(name, "reading the claim", e))?;
        match state {
            Some(RowState::Sent) => {
                self.forget(&local_key);
                self.metrics.skipped("already_sent");
                return Ok(());
            }
            Some(RowState::Sending) => match self.local(&local_key) {
                Some(Local::Delivered) => {
                    with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, || store.mark_sent(name, key))
                        .await
                        .map_err(|e| store_error(name, "recording a delivered notification", e))?;
                    self.forget(&local_key);
                    return Ok(());
                }
                Some(Local::NotSent) => {
                    with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, || {
                        store.reclaim(name, key, &notification.event_id)
                    })
                    .await
                    .map_err(|e| store_error(name, "taking over the claim", e))?;
                }
                Some(Local::InFlight) | None => {
                    self.forget(&local_key);
                    self.ambiguous(name, key, "found a claim of an interrupted send");
                    return Ok(());
                }
            },
            None => {
                // Remembered before the insert: if the insert reaches the database but
                // its answer is lost, the retry finds our claim and takes it over.
                self.remember(&local_key, Local::NotSent);
                let inserted = with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, || {
                    store.claim(name, key, &notification.event_id)
                })
                .await
                .map_err(|e| store_error(name, "claiming", e))?;
                if !inserted {
                    // A retried insert that had landed: the row is ours unless sent.
                    let state =
                        with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, || store.state(name, key))
                            .await
                            .map_err(|e| store_error(name, "reading the claim", e))?;
                    if state == Some(RowState::Sent) {
                        self.forget(&local_key);
                        self.metrics.skipped("already_sent");
                        return Ok(());
                    }
                }
            }
        }

        self.remember(&local_key, Local::InFlight);
        match target.send(notification).await {
            Ok(()) => {
                self.remember(&local_key, Local::Delivered);
                self.metrics.sent(name, notification.kind.label());
                with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, || store.mark_sent(name, key))
                    .await
                    .map_err(|e| store_error(name, "recording a delivered notification", e))?;
                self.forget(&local_key);
                tracing::debug!(target_name = name, fact = %key, "notification sent");
                Ok(())
            }
            Err(SendError::NotDelivered { retryable, reason }) => {
                self.remember(&local_key, Local::NotSent);
                self.metrics.failed(name, retryable);
                match with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, || store.release(name, key)).await {
                    Ok(()) => self.forget(&local_key),
                    Err(e) => tracing::warn!(
                        target_name = name,
                        fact = %key,
                        error = %e,
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
                // The claim stays `sending`: nobody sends this fact to this target again.
                self.forget(&local_key);
                self.ambiguous(name, key, &reason);
                Ok(())
            }
        }
    }
}
