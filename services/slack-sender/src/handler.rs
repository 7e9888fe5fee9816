//! The slack-sender's handler: one reply record in, at most one Slack message out.
//!
//! Each reply id has one row in `replies` ([`crate::store`]). Per record:
//!
//! 1. the row is created `pending` if the reply is new (so `slackline thread` shows
//!    it as pending from then on);
//! 2. `sent` → nothing to do (`skipped{reason="already_sent"}`): a replay of
//!    `support.replies`, a redelivery after a crash or a rebalance posts nothing;
//! 3. `pending` (or `failed`, when a redrive brings the record back) → wait for the
//!    channel's next slot ([`Pacer`]: Slack's ~1 message/s per channel, and a 429's
//!    `Retry-After`), then claim the row under a fresh random token (`sending`, a
//!    conditional update: of two consumers racing for it only one gets it), then call
//!    `chat.postMessage` with `thread_ts` = the thread's root ts, the installing
//!    team's token and metadata naming the reply and the agent;
//! 4. the answer decides ([`crate::slack`]): posted → `sent` with Slack's `ts`;
//!    certainly not posted and retryable (429, `ratelimited`, 5xx, no connection) →
//!    back to `pending` and a retryable error (with the `Retry-After` for a 429), so
//!    the runtime retries it and the channel's later replies wait behind it, in
//!    order, while other channels keep going; refused for good (`channel_not_found`,
//!    `not_in_channel`, `is_archived`, `invalid_auth`, `msg_too_long`, ...) →
//!    `failed` with Slack's error and a permanent error, so the record lands in
//!    `slack-sender.dlq` with it (counted, alerted; `slackline dlq redrive` tries
//!    again once the cause is fixed); may have been posted → `ambiguous`, never posted
//!    again automatically, and a permanent error naming the reply (DLQ);
//! 5. `sending` whose outcome this process does not know (its process died during
//!    the request, or a call of ours was cut off mid-request) → `ambiguous`, as above;
//!    `ambiguous` found again (a redrive) → skipped.
//!
//! What the process remembers per token until it is recorded (claimed but no request
//! started, in flight, posted with its ts but `sent` not written) lets a database
//! blip be retried without counting a known outcome as ambiguous.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
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

/// Attempts of one database statement within a handler call (short blips).
const DB_ATTEMPTS: u32 = 3;
/// Pause between them.
const DB_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Reads of the row per handler call.
const CLAIM_ROUNDS: usize = 4;
/// Channels remembered by the pacer before old entries are dropped.
const PACER_CAPACITY: usize = 10_000;

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
        }
    }

    fn locals(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Local>> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, token: Uuid, state: Local) {
        self.locals().insert(token, state);
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
    pub async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let reply = decode_reply(&event.payload)
            .map_err(|e| HandlerError::permanent(format!("undecodable reply record: {e}")))?;
        let span = tracing::info_span!(
            "reply",
            reply_id = %reply.reply_id,
            channel = %reply.channel_id,
            thread_ts = %reply.thread_ts
        );
        tracing::Instrument::instrument(self.handle_reply(&reply, &event.key_str()), span).await
    }

    async fn handle_reply(&self, reply: &Reply, key: &str) -> Result<(), HandlerError> {
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
        for _ in 0..CLAIM_ROUNDS {
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
                (ReplyState::Ambiguous, _) => {
                    self.metrics.skipped("ambiguous");
                    tracing::info!("reply marked ambiguous earlier; not posting it again");
                    return Ok(());
                }
                (ReplyState::Sending, Some(Local::NotStarted)) => {
                    // Ours, and Slack certainly has not posted it.
                    let token = row.token.unwrap_or_default();
                    return self.send(reply, blocks.as_ref(), token).await;
                }
                (ReplyState::Sending, _) => {
                    let token = row.token.unwrap_or_default();
                    self.forget(token);
                    if let Some(error) = self
                        .mark_ambiguous(
                            reply,
                            token,
                            "found a send that never recorded its outcome (its process died or \
                             was cut off during the request)",
                        )
                        .await?
                    {
                        return Err(error);
                    }
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
                        self.store.begin_send(id, token)
                    })
                    .await;
                    match claimed {
                        Ok(true) => return self.send(reply, blocks.as_ref(), token).await,
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

    /// Posts under the claim of `token` (`sending`, no request started).
    async fn send(
        &self,
        reply: &Reply,
        blocks: Option<&Value>,
        token: Uuid,
    ) -> Result<(), HandlerError> {
        let id = reply.reply_id.as_str();
        self.remember(token, Local::InFlight);
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
                let recorded = if retryable {
                    self.metrics.retried(&error);
                    if let Some(wait) = retry_after {
                        self.pacer.pause(&reply.channel_id, wait);
                    }
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
                match self.mark_ambiguous(reply, token, &reason).await? {
                    Some(error) => Err(error),
                    None => {
                        self.metrics.ambiguous();
                        Err(ambiguous_error(reply, &reason))
                    }
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
