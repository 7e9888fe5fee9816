//! Author enrichment: the author's name, email and team from `users.info`.
//!
//! Lookups run concurrently, at most `AUTHOR_LOOKUP_CONCURRENCY` at once (a FIFO
//! semaphore, so with 1 they run one at a time in reading order); the consume loop
//! keeps each channel's output order whatever order they finish in. Lookups of one
//! user in flight at the same time share one request and one permit (coalesced here,
//! before the permit is taken, so duplicates never hold permits other users' lookups
//! wait for), and answers are cached (in [`SlackApi::users_info`]). A lookup is given [`LOOKUP_BUDGET`]; one that times out
//! or fails in a retryable way pauses every lookup for [`LOOKUP_PAUSE`], so a slow or
//! failing Slack API costs one budget per pause, not one per event. A failure
//! degrades the author (left as the event had it), never the message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use slackline_events::{AuthorKind, MessageEvent};
use slackline_slack_api::{SlackApi, SlackApiError, UserInfo};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::NormalizerMetrics;
use crate::normalize;

/// Longest an author lookup may hold up its event.
pub(crate) const LOOKUP_BUDGET: Duration = Duration::from_millis(1500);
/// After a lookup times out or fails in a retryable way, lookups pause this long.
pub(crate) const LOOKUP_PAUSE: Duration = Duration::from_secs(30);

/// What one `users.info` lookup (shared by every event waiting on it) came to.
#[derive(Clone)]
enum Answer {
    /// Lookups were paused: not asked.
    Paused,
    /// Over [`LOOKUP_BUDGET`].
    TimedOut,
    /// Slack's answer.
    Answered(Result<UserInfo, SlackApiError>),
}

impl Answer {
    /// Timed out or failed in a retryable way: lookups pause.
    fn unhealthy(&self) -> bool {
        match self {
            Answer::Paused => false,
            Answer::TimedOut => true,
            Answer::Answered(result) => result.as_ref().is_err_and(SlackApiError::is_retryable),
        }
    }
}

/// A lookup in flight, shared by the events of its user that wait on it.
type Flight = Shared<BoxFuture<'static, Answer>>;
/// (team, user).
type UserKey = (String, String);

/// The author lookups of one normalizer; cheap to clone (clones share the limit,
/// the pause and the client's cache).
#[derive(Clone)]
pub(crate) struct Authors {
    api: SlackApi,
    metrics: NormalizerMetrics,
    limit: Arc<Semaphore>,
    /// Lookups are skipped until then.
    paused_until: Arc<Mutex<Option<Instant>>>,
    /// The lookup in flight per user.
    flights: Arc<Mutex<HashMap<UserKey, Flight>>>,
}

impl Authors {
    /// At most `concurrency` lookups in flight at once (at least 1).
    pub(crate) fn new(api: SlackApi, metrics: NormalizerMetrics, concurrency: usize) -> Authors {
        Authors {
            api,
            metrics,
            limit: Arc::new(Semaphore::new(concurrency.max(1))),
            paused_until: Arc::new(Mutex::new(None)),
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Fills the author of `event` from `users.info`, when it has a user to look up.
    pub(crate) async fn enrich(&self, event: &mut MessageEvent) {
        let Some(author) = event.author.as_ref() else {
            return;
        };
        let Some(user_id) = author.user_id.clone() else {
            return;
        };
        if author.kind == AuthorKind::Bot || !(user_id.starts_with('U') || user_id.starts_with('W'))
        {
            return;
        }
        let key = (event.team_id.clone(), user_id);
        let flight = self.flight(&key);
        let answer = flight.clone().await;
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            if flights.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
                flights.remove(&key);
            }
        }
        self.apply(event, &key.1, answer);
    }

    /// The lookup in flight for `key`, started if there is none: it takes a permit,
    /// checks the pause, asks `users.info` within [`LOOKUP_BUDGET`] and pauses
    /// lookups when that went badly. Every event of the user arriving meanwhile
    /// waits on the same lookup, holding no permit.
    fn flight(&self, key: &UserKey) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.get(key) {
            return flight.clone();
        }
        let this = self.clone();
        let (team_id, user_id) = key.clone();
        let flight = async move {
            // The semaphore is never closed; without a permit there is no lookup.
            let Ok(_permit) = this.limit.acquire().await else {
                return Answer::Paused;
            };
            // Checked once the permit is held: lookups queued behind a slow one see
            // the pause it started.
            let now = Instant::now();
            if this.paused_at(now) {
                return Answer::Paused;
            }
            let answer =
                match tokio::time::timeout(LOOKUP_BUDGET, this.api.users_info(&team_id, &user_id))
                    .await
                {
                    Ok(result) => Answer::Answered(result),
                    Err(_) => Answer::TimedOut,
                };
            if answer.unhealthy() {
                this.pause(now + LOOKUP_PAUSE);
            }
            answer
        }
        .boxed()
        .shared();
        flights.insert(key.clone(), flight.clone());
        flight
    }

    fn paused_at(&self, now: Instant) -> bool {
        let until = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|until| now < until)
    }

    fn pause(&self, until: Instant) {
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let already = paused.is_some_and(|p| Instant::now() < p);
        *paused = Some(paused.map_or(until, |p| p.max(until)));
        drop(paused);
        if !already {
            tracing::warn!(
                pause_s = LOOKUP_PAUSE.as_secs(),
                "Slack API slow or failing: pausing author lookups"
            );
        }
    }

    /// Counts the lookup and fills the author from the answer.
    fn apply(&self, event: &mut MessageEvent, user_id: &str, answer: Answer) {
        let Some(author) = event.author.as_mut() else {
            return;
        };
        match answer {
            Answer::Paused => self.metrics.author_lookup("paused"),
            Answer::Answered(Ok(user)) => {
                self.metrics.author_lookup("ok");
                if author.display_name.is_none() {
                    author.display_name = user.display_name;
                }
                author.email = user.email;
                if author.team_id.is_none() {
                    author.team_id = user.team_id;
                }
                if user.is_bot {
                    author.kind = AuthorKind::Bot;
                } else if author.kind == AuthorKind::Unknown {
                    author.kind = normalize::author_kind(author.team_id.as_deref(), &event.team_id);
                }
            }
            Answer::Answered(Err(e)) => {
                self.metrics.author_lookup(e.kind());
                tracing::debug!(error = %e, user_id, "author lookup failed; keeping what the event says");
            }
            Answer::TimedOut => {
                self.metrics.author_lookup("timeout");
                tracing::debug!(
                    user_id,
                    "author lookup over budget; keeping what the event says"
                );
            }
        }
    }
}
