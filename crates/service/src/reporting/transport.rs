//! Sending Sentry envelopes with the workspace's `reqwest` (0.12, rustls): the
//! `sentry` crate's own HTTP transport would bring a second `reqwest` (0.13) and its
//! TLS stack into every service.
//!
//! One thread (`slackline-sentry`) owns a single-threaded tokio runtime and posts the
//! envelopes from a bounded queue of [`QUEUE`] envelopes, at most [`CONCURRENCY`]
//! requests at a time, each bounded by [`REQUEST_TIMEOUT`] (shorter than
//! [`super::FLUSH_BUDGET`], so that the flush at the end of a service can see a
//! request through). Reporting never holds up a service: an envelope that finds no
//! room is dropped.
//!
//! **DLQ reports first.** A report of a DLQ record (message
//! [`super::DLQ_MESSAGE`]) is never dropped behind other reports: it goes to a lane
//! of its own that is sent first, other reports may fill at most
//! `QUEUE - RESERVED` slots, and a DLQ report that finds the queue full pushes out the
//! newest other report.
//!
//! **Rate limits.** Sentry's `X-Sentry-Rate-Limits` header (on any answer) or, on a
//! 429 without it, `Retry-After` (default 60 s) stops other reports until the limit
//! ends: they are dropped when queued or taken. DLQ reports are still sent.
//!
//! Every dropped report is counted by reason ([`dropped`]: `queue_full`,
//! `rate_limited`, `send_failed`); [`crate::run_service`] logs the counts when the
//! service stops. [`Transport::flush`] waits until nothing is queued or in flight, or
//! the timeout passed. Failures are logged at `warn`, never at `error`, and nothing
//! logged on this thread is reported (see `reporting`), so an unreachable Sentry
//! cannot feed itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use sentry::{Envelope, Transport, TransportFactory, TransportOptions};
use tokio::sync::Notify;

/// The name of the sending thread.
pub(crate) const THREAD_NAME: &str = "slackline-sentry";

/// Envelopes waiting to be sent (not counting those in flight); more are dropped.
pub(crate) const QUEUE: usize = 100;

/// Slots of [`QUEUE`] that only DLQ reports may take.
pub(crate) const RESERVED: usize = 20;

/// Requests in flight at once: one slow request does not hold up the queue.
pub(crate) const CONCURRENCY: usize = 2;

/// The longest one envelope's request may take, connecting included: under
/// [`super::FLUSH_BUDGET`], so that a request started when the flush begins ends
/// within it.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

/// The longest connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// How long a 429 without a rate limit header stops other reports.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why a report was dropped, as counted by [`dropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue had no room for it.
    QueueFull,
    /// Sentry's rate limit was in force (or Sentry answered 429).
    RateLimited,
    /// The request failed or Sentry refused it.
    SendFailed,
}

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::RateLimited,
        DropReason::SendFailed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::RateLimited => "rate_limited",
            DropReason::SendFailed => "send_failed",
        }
    }

    fn index(self) -> usize {
        match self {
            DropReason::QueueFull => 0,
            DropReason::RateLimited => 1,
            DropReason::SendFailed => 2,
        }
    }
}

static DROPPED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Reports dropped in this process so far, by reason.
pub(crate) fn dropped() -> [(DropReason, u64); 3] {
    DropReason::ALL.map(|r| (r, DROPPED[r.index()].load(Ordering::Relaxed)))
}

fn count_drop(reason: DropReason) {
    let total = DROPPED[reason.index()].fetch_add(1, Ordering::Relaxed) + 1;
    if total.is_power_of_two() {
        tracing::warn!(
            reason = reason.as_str(),
            dropped = total,
            "Sentry report dropped"
        );
    }
}

/// Builds a [`HttpTransport`] for the client's DSN.
pub(crate) struct HttpTransportFactory;

impl TransportFactory for HttpTransportFactory {
    fn create_transport_with_options(&self, options: TransportOptions) -> Arc<dyn Transport> {
        let url = options.dsn.envelope_api_url().to_string();
        let auth = options.dsn.to_auth(Some(&options.user_agent)).to_string();
        Arc::new(HttpTransport::start(url, auth))
    }
}

/// See the module docs.
pub(crate) struct HttpTransport {
    /// `None` when the sending thread could not start.
    shared: Option<Arc<Shared>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a request ends (for [`Transport::flush`]).
    idle: Condvar,
    /// Wakes the sending loop when an envelope is queued.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// DLQ reports.
    priority: VecDeque<Envelope>,
    /// Every other report.
    other: VecDeque<Envelope>,
    in_flight: usize,
    /// Other reports are dropped until then.
    limited_until: Option<Instant>,
}

impl State {
    fn queued(&self) -> usize {
        self.priority.len() + self.other.len()
    }

    fn limited(&self, now: Instant) -> bool {
        self.limited_until.is_some_and(|until| now < until)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent state: keep going.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `envelope` (see the module docs for what is dropped).
    fn push(&self, envelope: Envelope) {
        let priority = is_priority(&envelope);
        let mut state = self.lock();
        if priority {
            if state.queued() >= QUEUE {
                if state.other.pop_back().is_some() {
                    count_drop(DropReason::QueueFull);
                } else {
                    drop(state);
                    count_drop(DropReason::QueueFull);
                    return;
                }
            }
            state.priority.push_back(envelope);
        } else {
            if state.limited(Instant::now()) {
                drop(state);
                count_drop(DropReason::RateLimited);
                return;
            }
            if state.queued() >= QUEUE - RESERVED {
                drop(state);
                count_drop(DropReason::QueueFull);
                return;
            }
            state.other.push_back(envelope);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// The next envelope to send, DLQ reports first; counted as in flight.
    fn take(&self) -> Option<Envelope> {
        let mut state = self.lock();
        if let Some(envelope) = state.priority.pop_front() {
            state.in_flight += 1;
            return Some(envelope);
        }
        let now = Instant::now();
        while let Some(envelope) = state.other.pop_front() {
            if state.limited(now) {
                count_drop(DropReason::RateLimited);
                continue;
            }
            state.in_flight += 1;
            return Some(envelope);
        }
        // Dropping rate-limited reports may have emptied the queue.
        self.idle.notify_all();
        None
    }

    /// A request ended; `limit` is how long Sentry asked us to hold off.
    fn done(&self, limit: Option<Duration>) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(limit) = limit {
            let until = Instant::now() + limit;
            state.limited_until = Some(state.limited_until.map_or(until, |u| u.max(until)));
        }
        drop(state);
        self.idle.notify_all();
    }
}

/// Whether the envelope reports a DLQ record.
fn is_priority(envelope: &Envelope) -> bool {
    envelope
        .event()
        .and_then(|e| e.message.as_deref())
        .is_some_and(|m| m == super::DLQ_MESSAGE)
}

impl HttpTransport {
    fn start(url: String, auth: String) -> HttpTransport {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
            wake: Notify::new(),
        });
        let sending = shared.clone();
        let started = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|client| {
                std::thread::Builder::new()
                    .name(THREAD_NAME.to_owned())
                    .spawn(move || send_loop(&sending, &client, &url, &auth))
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok(_) => HttpTransport {
                shared: Some(shared),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the Sentry transport: nothing will be reported");
                HttpTransport { shared: None }
            }
        }
    }
}

impl Transport for HttpTransport {
    fn send_envelope(&self, envelope: Envelope) {
        if let Some(shared) = &self.shared {
            shared.push(envelope);
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        let Some(shared) = &self.shared else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let mut state = shared.lock();
        loop {
            if state.queued() == 0 && state.in_flight == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match shared.idle.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

fn send_loop(shared: &Shared, client: &reqwest::Client, url: &str, auth: &str) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the Sentry transport's runtime: nothing will be reported");
            return;
        }
    };
    runtime.block_on(async {
        let mut running = FuturesUnordered::new();
        let mut failures: u64 = 0;
        loop {
            while running.len() < CONCURRENCY {
                let Some(envelope) = shared.take() else {
                    break;
                };
                running.push(send(client, url, auth, envelope));
            }
            let outcome = if running.is_empty() {
                shared.wake.notified().await;
                continue;
            } else {
                tokio::select! {
                    Some(outcome) = running.next() => outcome,
                    () = shared.wake.notified() => continue,
                }
            };
            if let Err((reason, why)) = &outcome.result {
                count_drop(*reason);
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(reason = why, failures, "cannot send a report to Sentry");
                }
            }
            shared.done(outcome.limit);
        }
    });
}

struct Outcome {
    result: Result<(), (DropReason, String)>,
    /// How long Sentry asked us to stop sending other reports.
    limit: Option<Duration>,
}

async fn send(client: &reqwest::Client, url: &str, auth: &str, envelope: Envelope) -> Outcome {
    let mut body = Vec::new();
    if let Err(e) = envelope.to_writer(&mut body) {
        return Outcome {
            result: Err((DropReason::SendFailed, e.to_string())),
            limit: None,
        };
    }
    let request = client
        .post(url)
        .header("X-Sentry-Auth", auth)
        .header("Content-Type", "application/x-sentry-envelope")
        .body(body);
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            return Outcome {
                result: Err((DropReason::SendFailed, e.to_string())),
                limit: None,
            }
        }
    };
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let limit = rate_limit(
        status.as_u16(),
        header("X-Sentry-Rate-Limits").as_deref(),
        header("Retry-After").as_deref(),
    );
    // Read the answer so that the connection can be reused.
    let _ = response.bytes().await;
    let result = if status.is_success() {
        Ok(())
    } else if status.as_u16() == 429 {
        Err((DropReason::RateLimited, format!("HTTP {status}")))
    } else {
        Err((DropReason::SendFailed, format!("HTTP {status}")))
    };
    Outcome { result, limit }
}

/// How long to hold off from Sentry's answer: the longest limit of
/// `X-Sentry-Rate-Limits` (`retry_after:categories:scope[:reason], ...`) whose
/// categories are empty (all) or name errors; without that header, on a 429,
/// `Retry-After` in seconds (default [`DEFAULT_RETRY_AFTER`]).
pub(crate) fn rate_limit(
    status: u16,
    rate_limits: Option<&str>,
    retry_after: Option<&str>,
) -> Option<Duration> {
    if let Some(limits) = rate_limits {
        let longest = limits
            .split(',')
            .filter_map(|limit| {
                let mut parts = limit.trim().split(':');
                let seconds: f64 = parts.next()?.trim().parse().ok()?;
                let categories = parts.next().unwrap_or("");
                let applies = categories.trim().is_empty()
                    || categories
                        .split(';')
                        .any(|c| matches!(c.trim(), "error" | "default"));
                (applies && seconds.is_finite() && seconds > 0.0)
                    .then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
            })
            .max();
        if longest.is_some() || status != 429 {
            return longest;
        }
    }
    if status != 429 {
        return None;
    }
    Some(
        retry_after
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(DEFAULT_RETRY_AFTER, |s| {
                Duration::from_secs_f64(s.min(86_400.0))
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_read_from_either_header() {
        assert_eq!(rate_limit(200, None, None), None);
        assert_eq!(rate_limit(200, Some(""), None), None);
        assert_eq!(rate_limit(429, None, None), Some(DEFAULT_RETRY_AFTER));
        assert_eq!(
            rate_limit(429, None, Some("12")),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            rate_limit(429, Some("30:error:organization, 90::key"), Some("5")),
            Some(Duration::from_secs(90))
        );
        // Only other categories limited: errors go on.
        assert_eq!(
            rate_limit(200, Some("60:transaction;session:project"), None),
            None
        );
        assert_eq!(
            rate_limit(
                200,
                Some("60:transaction;error:project:usage_exceeded"),
                None
            ),
            Some(Duration::from_secs(60))
        );
        // A 429 whose header names only other categories: Retry-After.
        assert_eq!(
            rate_limit(429, Some("60:transaction:project"), Some("3")),
            Some(Duration::from_secs(3))
        );
    }
}
