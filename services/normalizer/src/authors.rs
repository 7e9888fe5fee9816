//! Author enrichment: the author's name, email and team from `users.info`.
//!
//! Lookups run concurrently, at most `AUTHOR_LOOKUP_CONCURRENCY` at once (a FIFO
//! semaphore, so with 1 they run one at a time in reading order); the consume loop
//! keeps each channel's output order whatever order they finish in. Lookups of one
//! user in flight at the same time share one request, and answers are cached (both in
//! [`SlackApi::users_info`]). A lookup is given [`LOOKUP_BUDGET`]; one that times out
//! or fails in a retryable way pauses every lookup for [`LOOKUP_PAUSE`], so a slow or
//! failing Slack API costs one budget per pause, not one per event. A failure
//! degrades the author (left as the event had it), never the message.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use slackline_events::{AuthorKind, MessageEvent};
use slackline_slack_api::SlackApi;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::NormalizerMetrics;
use crate::normalize;

/// Longest an author lookup may hold up its event.
pub(crate) const LOOKUP_BUDGET: Duration = Duration::from_millis(1500);
/// After a lookup times out or fails in a retryable way, lookups pause this long.
pub(crate) const LOOKUP_PAUSE: Duration = Duration::from_secs(30);

/// How a lookup went, for the pause logic.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// Answered (or a permanent answer such as not visible).
    Healthy,
    /// Timed out or failed in a retryable way.
    Unhealthy,
}

/// The author lookups of one normalizer; cheap to clone (clones share the limit,
/// the pause and the client's cache).
#[derive(Clone)]
pub(crate) struct Authors {
    api: SlackApi,
    metrics: NormalizerMetrics,
    limit: Arc<Semaphore>,
    /// Lookups are skipped until then.
    paused_until: Arc<Mutex<Option<Instant>>>,
}

impl Authors {
    /// At most `concurrency` lookups in flight at once (at least 1).
    pub(crate) fn new(api: SlackApi, metrics: NormalizerMetrics, concurrency: usize) -> Authors {
        Authors {
            api,
            metrics,
            limit: Arc::new(Semaphore::new(concurrency.max(1))),
            paused_until: Arc::new(Mutex::new(None)),
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
        // The semaphore is never closed; without a permit there is no lookup.
        let Ok(_permit) = self.limit.acquire().await else {
            return;
        };
        // Checked once the permit is held: lookups queued behind a slow one see the
        // pause it started.
        let now = Instant::now();
        if self.paused_at(now) {
            self.metrics.author_lookup("paused");
            return;
        }
        if self.look_up(event, &user_id).await == Lookup::Unhealthy {
            self.pause(now + LOOKUP_PAUSE);
        }
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

    async fn look_up(&self, event: &mut MessageEvent, user_id: &str) -> Lookup {
        let answer =
            tokio::time::timeout(LOOKUP_BUDGET, self.api.users_info(&event.team_id, user_id)).await;
        let Some(author) = event.author.as_mut() else {
            return Lookup::Healthy;
        };
        match answer {
            Ok(Ok(user)) => {
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
                Lookup::Healthy
            }
            Ok(Err(e)) => {
                self.metrics.author_lookup(e.kind());
                tracing::debug!(error = %e, user_id, "author lookup failed; keeping what the event says");
                if e.is_retryable() {
                    Lookup::Unhealthy
                } else {
                    Lookup::Healthy
                }
            }
            Err(_) => {
                self.metrics.author_lookup("timeout");
                tracing::debug!(
                    user_id,
                    "author lookup over budget; keeping what the event says"
                );
                Lookup::Unhealthy
            }
        }
    }
}
