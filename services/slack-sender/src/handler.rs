//! The slack-sender's handler: one reply record in, at most one Slack message out.
//!
//! Each reply id has one row in `replies` ([`crate::store`]). Per record:
//!
//! 1. the row is created `pending` if the reply is new (so `slackline thread` shows
//!    it as pending from then on);
//! 2. `sent` → nothing to do (`skipped{reason="already_sent"}`): a replay of
//!    `support.replies`, a redelivery after a crash or a rebalance posts nothing;
//! 3. `failed` → nothing to do (`skipped{reason="already_failed"}`) unless the record
//!    is a redrive (it carries the `slackline-redrive` header, naming a dead letter
//!    whose redrive never claimed the row: every one that did is in
//!    `reply_redrives`): a rewind or replay of
//!    `support.replies` never sends a reply Slack refused again;
//! 4. `pending` (or `failed`, for a redrive as above) → wait for the
//!    channel's next slot ([`Pacer`]: Slack's ~1 message/s per channel, and a 429's
//!    `Retry-After`), then claim the row under a fresh random token (`sending`, a
//!    conditional update: of two consumers racing for it only one gets it), then call
//!    `chat.postMessage` with `thread_ts` = the thread's root ts, the installing
//!    team's token and metadata naming the reply and the agent;
//! 5. the answer decides ([`crate::slack`]): posted → `sent` with Slack's `ts`;
//!    certainly not posted and retryable (429, `ratelimited`, 5xx, no connection) →
//!    back to `pending` and a retryable error (with the `Retry-After` for a 429), so
//!    the runtime retries it and the channel's later replies wait behind it, in
//!    order, while other channels keep going; refused for good (`channel_not_found`,
//!    `not_in_channel`, `is_archived`, `invalid_auth`, `msg_too_long`, ...) →
//!    `failed` with Slack's error and a permanent error, so the record lands in
//!    `slack-sender.dlq` with it (counted, alerted; `slackline dlq redrive` tries
//!    again once the cause is fixed); may have been posted → `ambiguous`, never posted
//!    again automatically, and a permanent error naming the reply (DLQ);
//! 6. `sending` whose outcome this process does not know (its process died during
//!    the request, a call of ours was cut off mid-request, or another live process
//!    still has the request in flight after a rebalance moved the record) → first
//!    wait until one request timeout (`SLACK_SENDER_HTTP_TIMEOUT_MS`, plus a margin)
//!    has passed since the claim and read the row again (the other process may have
//!    recorded `sent`, or `pending` for a post Slack did not take), and only if it
//!    is still `sending` under that claim → `ambiguous`, as above;
//!    `ambiguous` found again (a redrive, a replay) → skipped.
//!
//! Before a reply is marked `ambiguous`, and whenever an `ambiguous` one is found
//! again, its thread is searched for our message ([`reconcile`]): found → `sent` with
//! that message's ts.
//!
//! What the process remembers per token until it is recorded (claimed but no request
//! started, in flight, posted with its ts but `sent` not written) lets a database
//! blip be retried without counting a known outcome as ambiguous. A request starts
//! only for the call that moved its token from "not started" to "in flight" (under
//! the map's lock), so two calls of this process holding the same reply (one reply
//! id in two records) cannot both post it.
//!
//! The request and the recording of its outcome run in a task of their own that
//! outlives the handler call: when a revoke or the shutdown abandons the call during
//! the request, the task still records `sent` with Slack's `ts` once Slack answers.
//! [`Handler::wait_sends`] waits for such tasks at shutdown.
//!
//! In the last delivery round the runtime will make (the event's attempt against
//! the retry rounds configured), a retryable failure marks the row `failed` with
//! `retries_exhausted` (counted) rather than `pending`, since the record is about to
//! be dead-lettered; a redrive tries it again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use slackline_consumer::{Event, HandlerError};
use slackline_events::{decode_reply, Reply};
use slackline_store::{with_retries, StoreError};
use tokio::time::Instant;
use uuid::Uuid;

use crate::metrics::SenderMetrics;
use crate::slack::{PostOutcome, SlackPoster};
use crate::store::{ReplyState, ReplyStore};

mod reconcile;

use self::reconcile::Reconciled;

/// Attempts of one database statement within a handler call (short blips).
const DB_ATTEMPTS: u32 = 3;
/// Pause between them.
const DB_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Reads of the row per handler call.
const CLAIM_ROUNDS: usize = 4;
/// Beyond the request timeout, what another process's send task may take to record
/// its outcome (a few database statements, with their short retries).
const SETTLE_MARGIN: Duration = Duration::from_secs(1);
/// Channels remembered by the pacer before old entries are dropped.
const PACER_CAPACITY: usize = 10_000;
/// Claims remembered before those whose request never started are dropped (calls
/// abandoned between their claim and their request): forgetting one only makes its
/// row ambiguous when it is found again, never posted twice.
const LOCAL_CAPACITY: usize = 10_000;

/// What this process knows about one of its claims (by token).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Local {
    /// Claimed (or claiming); no request started, or Slack certainly did not post.
    NotStarted,
    /// A request is under way.
    InFlight,
    /// Posted with this ts; `sent` not recorded yet.
    Delivered(String),
}

/// Spaces the posts to each channel and holds a channel back after a 429.
///
/// Each post reserves the channel's next slot (at least `interval` after the
/// previous one) and moves it on again when its request starts, so that two requests
/// to one channel start at least `interval` apart; a 429 pushes the channel's next slot to the end of its
/// `Retry-After`. Only the caller for that channel waits; other channels are not
/// affected.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    /// A pacer with at least `interval` between two posts to one channel.
    pub fn new(interval: Duration) -> Self {
        Pacer {
            interval,
            next: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves the channel's next slot and waits for it.
    pub async fn wait_turn(&self, channel: &str) {
        let now = Instant::now();
        let slot = {
            let mut next = self.slots();
            if next.len() > PACER_CAPACITY {
                next.retain(|_, at| *at > now);
            }
            let slot = next.get(channel).copied().unwrap_or(now).max(now);
            next.insert(channel.to_owned(), slot + self.interval);
            slot
        };
        if slot > now {
            tracing::debug!(channel, wait = ?(slot - now), "pacing the channel");
            tokio::time::sleep_until(slot).await;
        }
    }

    /// A request to `channel` starts now: the next one waits at least `interval`
    /// from here (the slot reserved earlier may have been spent on the claim).
    pub fn started(&self, channel: &str) {
        let next_at = Instant::now() + self.interval;
        let mut next = self.slots();
        let entry = next.entry(channel.to_owned()).or_insert(next_at);
        if *entry < next_at {
            *entry = next_at;
        }
    }

    /// Slack asked us not to post to `channel` for `retry_after`.
    pub fn pause(&self, channel: &str, retry_after: Duration) {
        let until = Instant::now() + retry_after.min(Duration::from_secs(3600));
        let mut next = self.slots();
        let entry = next.entry(channel.to_owned()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }
}

/// The handler, shared by every handler call.
pub struct Handler {
    store: ReplyStore,
    poster: SlackPoster,
    pacer: Pacer,
    metrics: SenderMetrics,
    local: Mutex<HashMap<Uuid, Local>>,
    /// Delivery rounds the runtime makes after the first (its retry delays).
    retry_rounds: u32,
    /// Sends under way (their tasks), for the shutdown to wait on.
    sends: tokio::sync::watch::Sender<usize>,
}

/// Counts one send task while it lives.
struct SendGuard(tokio::sync::watch::Sender<usize>);

impl Drop for SendGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn store_error(reply_id: &str, what: &str, error: StoreError) -> HandlerError {
    let message = format!("reply {reply_id}: {what}: {error}");
    if error.is_retryable() {
        HandlerError::retryable(message)
    } else {
        HandlerError::permanent(message)
    }
}

/// One statement with the handler's short retries, its error named.
async fn db<T, F, Fut>(reply_id: &str, what: &str, f: F) -> Result<T, HandlerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    with_retries(DB_ATTEMPTS, DB_RETRY_DELAY, f)
        .await
        .map_err(|e| store_error(reply_id, what, e))
}

/// Checks what Slack would refuse anyway, before anything is recorded as tried;
/// returns the parsed blocks.
fn validate(reply: &Reply, key: &str) -> Result<Option<Value>, String> {
    for (name, value) in [
        ("reply_id", &reply.reply_id),
        ("team_id", &reply.team_id),
        ("channel_id", &reply.channel_id),
        ("thread_ts", &reply.thread_ts),
    ] {
        if value.trim().is_empty() {
            return Err(format!("{name} is empty"));
        }
    }
    if !key.is_empty() && key != reply.channel_id {
        tracing::warn!(
            key,
            channel = reply.channel_id,
            reply_id = reply.reply_id,
            "reply record not keyed by its channel: its order with the channel's other replies is not guaranteed"
        );
    }
    let blocks = match &reply.blocks_json {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Array(_)) => Some(v),
            Ok(_) => return Err("blocks_json is not a JSON array".to_owned()),
            Err(e) => return Err(format!("blocks_json is not JSON: {e}")),
        },
    };
    if reply.text.trim().is_empty() && blocks.is_none() {
        return Err("the reply has no text and no blocks".to_owned());
    }
    Ok(blocks)
}

impl Handler {
    /// A handler posting with `poster`, `interval` apart per channel.
    pub fn new(
        store: ReplyStore,
        poster: SlackPoster,
        pacer: Pacer,
        metrics: SenderMetrics,
    ) -> Self {
        Handler {
            store,
            poster,
            pacer,
            metrics,
            local: Mutex::new(HashMap::new()),
            retry_rounds: 0,
            sends: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The runtime retries a failed record `rounds` times after its first delivery
    /// (`RuntimeConfig::retry_delays.len()`): a retryable failure in the last round
    /// marks the reply `failed` (`retries_exhausted`).
    #[must_use]
    pub fn with_retry_rounds(mut self, rounds: usize) -> Self {
        self.retry_rounds = u32::try_from(rounds).unwrap_or(u32::MAX);
        self
    }

    /// Waits until no send task is under way, or until `deadline`; whether none is.
    pub async fn wait_sends(&self, deadline: Instant) -> bool {
        let mut sends = self.sends.subscribe();
        let idle = tokio::time::timeout_at(deadline, sends.wait_for(|n| *n == 0)).await;
        matches!(idle, Ok(Ok(_)))
    }

    /// Sends under way.
    pub fn sends_in_flight(&self) -> usize {
        *self.sends.borrow()
    }

    fn locals(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Local>> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, token: Uuid, state: Local) {
        let mut locals = self.locals();
        if locals.len() >= LOCAL_CAPACITY {
            locals.retain(|_, s| *s != Local::NotStarted);
        }
        locals.insert(token, state);
    }

    /// Moves `token` from not started to in flight; false when it was not "not
    /// started" (another call of this process is sending it, or it is unknown).
    fn take_flight(&self, token: Uuid) -> bool {
        match self.locals().get_mut(&token) {
            Some(state) if *state == Local::NotStarted => {
                *state = Local::InFlight;
                true
            }
            _ => false,
        }
    }

    fn forget(&self, token: Uuid) {
        self.locals().remove(&token);
    }

    fn known(&self, token: Option<Uuid>) -> Option<Local> {
        token.and_then(|t| self.locals().get(&t).cloned())
    }

    /// Handles one record of `support.replies`.
    ///
    /// # Errors
    ///
    /// Permanent for a record that does not decode or cannot be posted, a reply Slack
    /// refused for good, or one that may or may not have been posted (see the module
    /// docs); retryable when Slack or the database is unavailable or rate limits us.
    pub async fn handle(self: &Arc<Self>, event: Event) -> Result<(), HandlerError> {
        let reply = decode_reply(&event.payload)
            .map_err(|e| HandlerError::permanent(format!("undecodable reply record: {e}")))?;
        let span = tracing::info_span!(
            "reply",
            reply_id = %reply.reply_id,
            channel = %reply.channel_id,
            thread_ts = %reply.thread_ts
        );
        let last_round = event.attempt >= self.retry_rounds;
        let redrive = event
            .headers
            .iter()
            .rev()
            .find(|(name, _)| name == slackline_kafka::headers::REDRIVE)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned());
        tracing::Instrument::instrument(
            self.handle_reply(&reply, &event.key_str(), last_round, redrive.as_deref()),
            span,
        )
        .await
    }

    async fn handle_reply(
        self: &Arc<Self>,
        reply: &Reply,
        key: &str,
        last_round: bool,
        redrive: Option<&str>,
    ) -> Result<(), HandlerError> {
        let id = reply.reply_id.as_str();
        let blocks = match validate(reply, key) {
            Ok(blocks) => blocks,
            Err(problem) => {
                self.metrics.failed("invalid_reply");
                if !reply.reply_id.trim().is_empty() {
                    // Best effort: the record goes to the DLQ whatever happens here.
                    let _ = self.store.ensure(reply).await;
                    let _ = self.store.note_pending_error(id, &problem).await;
                }
                return Err(HandlerError::permanent(format!(
                    "reply {id}: cannot be posted: {problem}"
                )));
            }
        };
        let mut row = db(id, "recording the reply", || self.store.ensure(reply)).await?;
        // The claim of another process waited on once (see the `Sending` arm).
        let mut waited_for: Option<Uuid> = None;
        for _ in 0..CLAIM_ROUNDS {
            let redrive_tried = match (row.state, redrive) {
                (ReplyState::Failed, Some(redrive)) => {
                    db(id, "reading the reply's redrives", || {
                        self.store.redrive_tried(id, redrive)
                    })
                    .await?
                }
                _ => false,
            };
            match (row.state, self.known(row.token)) {
                (ReplyState::Sent, _) => {
                    if let Some(token) = row.token {
                        self.forget(token);
                    }
                    self.metrics.skipped("already_sent");
                    tracing::debug!(ts = row.ts.as_deref(), "already posted");
                    return Ok(());
                }
                (ReplyState::Sending | ReplyState::Ambiguous, Some(Local::Delivered(ts))) => {
                    // Ours, posted; recording it failed before.
                    let token = row.token.unwrap_or_default();
                    return self.record_sent(reply, token, &ts).await;
                }
                (ReplyState::Sending | ReplyState::Ambiguous, Some(Local::InFlight)) => {
                    // A send task of ours is under way (its call was abandoned): it
                    // records the outcome; a retry finds it.
                    return Err(HandlerError::retryable(format!(
                        "reply {id}: a send of this process is still under way"
                    )));
                }
                (ReplyState::Ambiguous, _) => {
                    if let Some(token) = row.token {
                        self.forget(token);
                    }
                    if let Reconciled::Unknown(why) = self.reconcile(reply, row.token).await? {
                        self.metrics.skipped("ambiguous");
                        tracing::info!(why, "reply marked ambiguous earlier; not posting it again");
                    }
                    return Ok(());
                }
                (ReplyState::Sending, Some(Local::NotStarted)) => {
                    // Ours, and Slack certainly has not posted it.
                    let token = row.token.unwrap_or_default();
                    return self.send(reply, blocks.as_ref(), token, last_round).await;
                }
                (ReplyState::Sending, _) => {
                    let token = row.token.unwrap_or_default();
                    self.forget(token);
                    let why = match self.reconcile(reply, row.token).await? {
                        Reconciled::Found => return Ok(()),
                        Reconciled::Unknown(why) => why,
                    };
                    if waited_for != Some(token) {
                        // Another process may still have its request in flight (a
                        // rebalance moved the record while its send task went on):
                        // it is answered or given up within one request timeout of
                        // the claim, and its outcome recorded. Then read the row
                        // again: `sent`, back to `pending`, or still `sending`
                        // (reconciled once more before it is marked ambiguous).
                        waited_for = Some(token);
                        let wait =
                            (self.poster.request_timeout() + SETTLE_MARGIN).saturating_sub(row.age);
                        tracing::info!(
                            ?wait,
                            "the reply is being sent under a claim of another process; \
                             waiting for that request to end"
                        );
                        tokio::time::sleep(wait).await;
                    } else {
                        let reason = format!(
                            "found a send that never recorded its outcome (its process died or \
                         was cut off during the request), {why}"
                        );
                        if let Some(error) = self.mark_ambiguous(reply, token, &reason).await? {
                            return Err(error);
                        }
                    }
                }
                (ReplyState::Failed, _) if redrive.is_none() || redrive_tried => {
                    self.metrics.skipped("already_failed");
                    tracing::info!(
                        redrive,
                        "Slack refused this reply before; only a redrive of its dead letter tries again"
                    );
                    return Ok(());
                }
                (ReplyState::Pending | ReplyState::Failed, _) => {
                    if !self.poster.has_token(&reply.team_id) {
                        let problem = format!("no bot token configured for team {}", reply.team_id);
                        self.metrics.failed("no_token");
                        db(id, "recording the failure", || {
                            self.store.note_pending_error(id, &problem)
                        })
                        .await?;
                        return Err(HandlerError::permanent(format!(
                            "reply {id} to {}: {problem} (SLACK_BOT_TOKENS)",
                            reply.channel_id
                        )));
                    }
                    self.pacer.wait_turn(&reply.channel_id).await;
                    let token = Uuid::new_v4();
                    self.remember(token, Local::NotStarted);
                    let claimed = db(id, "claiming the reply", || {
                        self.store.begin_send(id, token, redrive)
                    })
                    .await;
                    match claimed {
                        Ok(true) => {
                            return self.send(reply, blocks.as_ref(), token, last_round).await
                        }
                        Ok(false) => self.forget(token),
                        // The claim may have landed: the next read finds our token.
                        Err(e) => return Err(e),
                    }
                }
            }
            row = match db(id, "reading the reply", || self.store.row(id)).await? {
                Some(row) => row,
                None => db(id, "recording the reply", || self.store.ensure(reply)).await?,
            };
        }
        Err(HandlerError::retryable(format!(
            "reply {id}: its row kept changing hands"
        )))
    }

    async fn record_sent(&self, reply: &Reply, token: Uuid, ts: &str) -> Result<(), HandlerError> {
        let id = reply.reply_id.as_str();
        let recorded = db(id, "recording the posted reply", || {
            self.store.mark_sent(id, token, ts)
        })
        .await?;
        self.forget(token);
        if !recorded {
            tracing::warn!(ts, "posted, but the claim was gone when recording it");
        }
        Ok(())
    }

    /// Marks the `sending` row of `token` ambiguous; the DLQ error, or `None` when the
    /// row was no longer `sending` under `token`.
    async fn mark_ambiguous(
        &self,
        reply: &Reply,
        token: Uuid,
        reason: &str,
    ) -> Result<Option<HandlerError>, HandlerError> {
        let id = reply.reply_id.as_str();
        let marked = db(id, "marking the reply ambiguous", || {
            self.store.mark_ambiguous(id, token, reason)
        })
        .await?;
        if !marked {
            return Ok(None);
        }
        self.metrics.ambiguous();
        tracing::warn!(
            reason,
            "reply may or may not have been posted; not posting it again"
        );
        Ok(Some(ambiguous_error(reply, reason)))
    }

    /// Posts under the claim of `token` (`sending`, no request started), in a task
    /// that records the outcome even when this call is abandoned.
    async fn send(
        self: &Arc<Self>,
        reply: &Reply,
        blocks: Option<&Value>,
        token: Uuid,
        last_round: bool,
    ) -> Result<(), HandlerError> {
        let id = reply.reply_id.as_str();
        if !self.take_flight(token) {
            return Err(HandlerError::retryable(format!(
                "reply {id}: another call of this process is sending it"
            )));
        }
        self.sends.send_modify(|n| *n += 1);
        let guard = SendGuard(self.sends.clone());
        let this = Arc::clone(self);
        let owned = reply.clone();
        let blocks = blocks.cloned();
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _guard = guard;
                this.post_and_record(&owned, blocks.as_ref(), token, last_round)
                    .await
            },
            tracing::Span::current(),
        ));
        match task.await {
            Ok(result) => result,
            Err(e) => Err(HandlerError::retryable(format!(
                "reply {id}: its send task failed: {e}"
            ))),
        }
    }

    /// The request under `token` (in flight) and the recording of its outcome.
    async fn post_and_record(
        &self,
        reply: &Reply,
        blocks: Option<&Value>,
        token: Uuid,
        last_round: bool,
    ) -> Result<(), HandlerError> {
        let id = reply.reply_id.as_str();
        self.pacer.started(&reply.channel_id);
        let outcome = self.poster.post(reply, blocks).await;
        match outcome {
            PostOutcome::Posted { ts } => {
                self.remember(token, Local::Delivered(ts.clone()));
                self.metrics.sent();
                tracing::info!(ts, "reply posted");
                self.record_sent(reply, token, &ts).await
            }
            PostOutcome::NotPosted {
                retryable,
                error,
                detail,
                retry_after,
            } => {
                self.remember(token, Local::NotStarted);
                let message = format!(
                    "reply {id} to {} (thread {}): {detail}",
                    reply.channel_id, reply.thread_ts
                );
                if retryable {
                    if let Some(wait) = retry_after {
                        self.pacer.pause(&reply.channel_id, wait);
                    }
                }
                let recorded = if retryable && last_round {
                    // The runtime dead-letters the record after this round.
                    self.metrics.failed("retries_exhausted");
                    let reason = format!("retries_exhausted: {detail}");
                    db(id, "recording the failure", || {
                        self.store.mark_failed(id, token, &reason)
                    })
                    .await
                } else if retryable {
                    self.metrics.retried(&error);
                    db(id, "releasing the reply", || {
                        self.store.release(id, token, &detail)
                    })
                    .await
                } else {
                    self.metrics.failed(&error);
                    db(id, "recording the failure", || {
                        self.store.mark_failed(id, token, &detail)
                    })
                    .await
                };
                match recorded {
                    Ok(_) => self.forget(token),
                    // The row stays `sending` under our token; this process knows
                    // nothing was posted, so a retry goes on with it.
                    Err(e) => tracing::warn!(
                        error = %e.message(),
                        "could not record a send Slack did not take; retrying with the same claim"
                    ),
                }
                tracing::warn!(retryable, error, detail, "Slack did not post the reply");
                Err(if retryable {
                    let e = HandlerError::retryable(message);
                    match retry_after {
                        Some(wait) => e.with_retry_after(wait),
                        None => e,
                    }
                } else {
                    HandlerError::permanent(format!("{message}; fix the cause and redrive"))
                })
            }
            PostOutcome::Ambiguous { reason } => {
                self.forget(token);
                let reason = match self.reconcile(reply, Some(token)).await? {
                    Reconciled::Found => return Ok(()),
                    Reconciled::Unknown(why) => format!("{reason}; {why}"),
                };
                match self.mark_ambiguous(reply, token, &reason).await? {
                    Some(error) => Err(error),
                    // Already moved on (marked ambiguous, and counted, by another
                    // consumer that found the send under way).
                    None => Err(ambiguous_error(reply, &reason)),
                }
            }
        }
    }
}

fn ambiguous_error(reply: &Reply, reason: &str) -> HandlerError {
    HandlerError::permanent(format!(
        "reply {} to {} (thread {}): {reason}; it may or may not have been posted and is \
         not posted again (replies.state = 'ambiguous': check the thread in Slack, see the \
         README's runbook to post it anyway)",
        reply.reply_id, reply.channel_id, reply.thread_ts
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use slackline_events::{encode_reply, Agent};
    use slackline_testkit::postgres::TestDatabase;
    use slackline_testkit::slack_api::{Answer, SlackApiStandIn};

    const TEAM: &str = "T0UNIT";

    fn reply(id: &str, channel: &str) -> Reply {
        Reply {
            reply_id: id.to_owned(),
            thread_id: format!("{TEAM}-{channel}-1.2"),
            team_id: TEAM.to_owned(),
            channel_id: channel.to_owned(),
            thread_ts: "1764000000.000100".to_owned(),
            agent: Agent {
                id: "U0ADA".to_owned(),
                display_name: "Ada".to_owned(),
            },
            text: format!("reply {id}"),
            blocks_json: None,
            reply_broadcast: false,
            created_at_ms: 1_764_000_000_000,
        }
    }

    fn event(reply: &Reply, key: &str, attempt: u32) -> Event {
        Event {
            topic: "support.replies".to_owned(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(key.as_bytes().to_vec()),
            headers: Vec::new(),
            payload: encode_reply(reply).expect("encodes"),
            attempt,
        }
    }

    /// A handler on a fresh database posting to `slack`; the pool to inspect it.
    async fn handler(
        db: &TestDatabase,
        slack: &SlackApiStandIn,
        retry_rounds: usize,
    ) -> (Arc<Handler>, sqlx::PgPool, prometheus::Registry) {
        let settings = slackline_store::StoreSettings::new(db.url.clone());
        let pool = slackline_store::connect_migrated(&settings, crate::SCHEMA, &crate::MIGRATOR)
            .await
            .expect("database");
        let mut tokens = slackline_slack_api::BotTokens::default();
        tokens.insert(TEAM, "xoxb-unit");
        let poster = SlackPoster::new(&crate::SlackConfig {
            base_url: slack.base_url.clone(),
            tokens,
            channel_interval: Duration::ZERO,
            http_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            as_agent: true,
        })
        .expect("client");
        let registry = prometheus::Registry::new();
        let metrics = SenderMetrics::register(&registry).expect("metrics");
        let handler = Handler::new(
            ReplyStore::new(pool.clone()),
            poster,
            Pacer::new(Duration::ZERO),
            metrics,
        )
        .with_retry_rounds(retry_rounds);
        (Arc::new(handler), pool, registry)
    }

    async fn row(pool: &sqlx::PgPool, id: &str) -> (String, Option<String>, Option<String>) {
        sqlx::query_as("SELECT state, ts, last_error FROM replies WHERE reply_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("row")
    }

    /// One reply id in records of two keys, handled at once while a claim of this
    /// process is between its commit and its request (the row `sending` under a
    /// token the process knows as not started): both calls go for the send, one
    /// posts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_calls_for_one_reply_post_it_once() {
        let db = TestDatabase::create().await;
        let slack = SlackApiStandIn::start().await;
        slack.script_any(Answer::delayed(Duration::from_millis(500), Answer::Ok));
        let (handler, pool, _registry) = handler(&db, &slack, 3).await;
        let r = reply("r-twice", "C0TWICE");
        handler.store.ensure(&r).await.expect("row");
        let token = Uuid::new_v4();
        handler.remember(token, Local::NotStarted);
        assert!(handler
            .store
            .begin_send("r-twice", token, None)
            .await
            .expect("claim"));

        // Both calls found the row `sending` under the token this process knows as
        // not started (the interleaving of the finding: whichever reaches its
        // request first).
        let (a, b) = tokio::join!(
            handler.send(&r, None, token, false),
            handler.send(&r, None, token, false),
        );
        let posts = slack.post_calls();
        assert_eq!(posts.len(), 1, "one post: {posts:#?} ({a:?}, {b:?})");
        assert!(a.is_ok() || b.is_ok(), "{a:?} {b:?}");
        for result in [&a, &b] {
            if let Err(e) = result {
                assert!(e.is_retryable(), "{e:?}");
            }
        }
        // The retry of the loser finds it posted.
        handler
            .handle(event(&r, "C0OTHERKEY", 1))
            .await
            .expect("already sent");
        assert_eq!(slack.post_calls().len(), 1);
        let (state, ts, _) = row(&pool, "r-twice").await;
        assert_eq!(state, "sent");
        assert!(ts.is_some());
        pool.close().await;
        db.drop_database().await;
    }

    /// A retryable failure in the last round the runtime makes leaves the row
    /// `failed` (`retries_exhausted`, counted); before it, `pending`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_round_marks_a_retryable_failure_failed() {
        let db = TestDatabase::create().await;
        let slack = SlackApiStandIn::start().await;
        for _ in 0..3 {
            slack.script("C0DOWN", Answer::Status(503));
        }
        let (handler, pool, registry) = handler(&db, &slack, 2).await;
        let r = reply("r-exhausted", "C0DOWN");
        for attempt in 0..2 {
            let e = handler
                .handle(event(&r, "C0DOWN", attempt))
                .await
                .expect_err("503");
            assert!(e.is_retryable());
            assert_eq!(row(&pool, "r-exhausted").await.0, "pending");
        }
        let failed = |registry: &prometheus::Registry| {
            slackline_testkit::metrics::metric(
                registry,
                "slackline_slack_sender_failed_total",
                &[("error", "retries_exhausted")],
            )
        };
        assert!(failed(&registry) < 0.5);
        let e = handler
            .handle(event(&r, "C0DOWN", 2))
            .await
            .expect_err("503");
        assert!(e.is_retryable());
        let (state, _, error) = row(&pool, "r-exhausted").await;
        assert_eq!(state, "failed");
        assert!(
            error
                .as_deref()
                .unwrap_or_default()
                .starts_with("retries_exhausted"),
            "{error:?}"
        );
        assert!((failed(&registry) - 1.0).abs() < 0.5);
        assert_eq!(slack.post_calls().len(), 3);
        pool.close().await;
        db.drop_database().await;
    }

    /// The runbook's forced retry of an `ambiguous` reply (`state = 'pending'`, the
    /// old claim kept) while the old send lands late: that send is recorded `sent`,
    /// and the redrive that follows reads the row again and posts nothing (counted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forced_retry_posts_nothing_once_the_late_send_is_recorded() {
        let db = TestDatabase::create().await;
        let slack = SlackApiStandIn::start().await;
        let (handler, pool, registry) = handler(&db, &slack, 3).await;
        let r = reply("r-forced", "C0FORCED");
        handler.store.ensure(&r).await.expect("row");
        let token = Uuid::new_v4();
        assert!(handler
            .store
            .begin_send("r-forced", token, None)
            .await
            .expect("claim"));
        assert!(handler
            .store
            .mark_ambiguous("r-forced", token, "no answer")
            .await
            .expect("ambiguous"));
        // The operator forces it (README runbook).
        sqlx::query(
            "UPDATE replies SET state = 'pending' WHERE reply_id = 'r-forced' \
             AND state = 'ambiguous'",
        )
        .execute(&pool)
        .await
        .expect("forced");
        // The old send's answer arrives: recorded over the forced `pending`.
        assert!(handler
            .store
            .mark_sent("r-forced", token, "1764000000.999900")
            .await
            .expect("sent"));
        let mut redriven = event(&r, "C0FORCED", 0);
        redriven.headers.push((
            slackline_kafka::headers::REDRIVE.to_owned(),
            Some(b"slack-sender.dlq/0/7".to_vec()),
        ));
        handler.handle(redriven).await.expect("skipped");
        assert!(slack.post_calls().is_empty(), "{:#?}", slack.post_calls());
        let (state, ts, _) = row(&pool, "r-forced").await;
        assert_eq!(
            (state.as_str(), ts.as_deref()),
            ("sent", Some("1764000000.999900"))
        );
        let skipped = slackline_testkit::metrics::metric(
            &registry,
            "slackline_slack_sender_skipped_total",
            &[("reason", "already_sent")],
        );
        assert!((skipped - 1.0).abs() < 0.5, "{skipped}");
        pool.close().await;
        db.drop_database().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_one_channel_and_not_the_others() {
        let pacer = Pacer::new(Duration::from_secs(1));
        let start = Instant::now();
        pacer.wait_turn("C1").await;
        pacer.wait_turn("C2").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pacer.wait_turn("C1").await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        pacer.pause("C2", Duration::from_secs(5));
        pacer.wait_turn("C1").await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        pacer.wait_turn("C2").await;
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }
}
