//! The `users.info` cache: positive and negative entries with their own TTLs, a
//! capacity bound with oldest-first eviction, and single-flight for lookups in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::{SlackApiError, UserInfo};

/// What a lookup produced; shared by everyone waiting on the same request.
pub(crate) type UserResult = Result<UserInfo, SlackApiError>;

/// One request in flight, which every concurrent lookup of the same user awaits.
pub(crate) type Flight = Arc<OnceCell<UserResult>>;

/// Cache key: (installing team, user). Visibility depends on the installing team, so
/// the same user seen from two workspaces is cached twice.
pub(crate) type Key = (String, String);

/// Counters of the `users.info` cache, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache (positive or negative entry), without a request.
    pub hits: u64,
    /// Lookups not answered from the cache (includes `coalesced`).
    pub misses: u64,
    /// Misses that joined a request already in flight for the same user instead of
    /// sending their own.
    pub coalesced: u64,
    /// Entries currently held (some may have expired and not yet been dropped).
    pub entries: usize,
}

struct Entry {
    value: UserResult,
    expires_at: Instant,
    seq: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Insertion order for eviction; an item is stale when the entry's `seq` differs.
    order: VecDeque<(Key, u64)>,
    in_flight: HashMap<Key, Flight>,
    next_seq: u64,
    stats: CacheStats,
}

/// What [`UserCache::lookup`] decided.
pub(crate) enum Lookup {
    /// A fresh cached answer.
    Hit(UserResult),
    /// Not cached: await this flight (new, or already started by another lookup).
    Fetch(Flight),
}

pub(crate) struct UserCache {
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    state: Mutex<State>,
}

impl UserCache {
    pub(crate) fn new(ttl: Duration, negative_ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            negative_ttl,
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across every statement, so a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cached answer, or the flight to await. The cache check and the in-flight
    /// check happen under one lock, so a lookup racing with a completing request
    /// sees either its cached result or its flight, never neither.
    pub(crate) fn lookup(&self, key: &Key) -> Lookup {
        let now = Instant::now();
        let mut state = self.state();
        match state.entries.get(key) {
            Some(entry) if entry.expires_at > now => {
                let value = entry.value.clone();
                state.stats.hits += 1;
                return Lookup::Hit(value);
            }
            Some(_) => {
                state.entries.remove(key);
            }
            None => {}
        }
        state.stats.misses += 1;
        if let Some(flight) = state.in_flight.get(key) {
            let flight = Arc::clone(flight);
            state.stats.coalesced += 1;
            return Lookup::Fetch(flight);
        }
        let flight = Flight::default();
        state.in_flight.insert(key.clone(), Arc::clone(&flight));
        Lookup::Fetch(flight)
    }

    /// Records the result of `flight`: caches it when it should be cached and ends
    /// the flight, so later lookups use the cache or start a new request.
    pub(crate) fn complete(&self, key: &Key, flight: &Flight, result: &UserResult) {
        let ttl = match result {
            Ok(_) => Some(self.ttl),
            Err(SlackApiError::UserNotFound | SlackApiError::UserNotVisible) => {
                Some(self.negative_ttl)
            }
            Err(_) => None,
        };
        let mut state = self.state();
        if state
            .in_flight
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, flight))
        {
            state.in_flight.remove(key);
        }
        if let Some(ttl) = ttl.filter(|ttl| !ttl.is_zero() && self.capacity > 0) {
            self.insert(&mut state, key.clone(), result.clone(), ttl);
        }
    }

    fn insert(&self, state: &mut State, key: Key, value: UserResult, ttl: Duration) {
        let now = Instant::now();
        if !state.entries.contains_key(&key) {
            while state.entries.len() >= self.capacity {
                let Some((old_key, seq)) = state.order.pop_front() else {
                    break;
                };
                if state.entries.get(&old_key).is_some_and(|e| e.seq == seq) {
                    state.entries.remove(&old_key);
                }
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.order.push_back((key.clone(), seq));
        state.entries.insert(
            key,
            Entry {
                value,
                expires_at: now + ttl,
                seq,
            },
        );
        // Re-inserted and expired keys leave stale items in `order`; drop them once
        // they outnumber the live ones so the queue stays bounded.
        if state.order.len() > 2 * state.entries.len() + 64 {
            let State { entries, order, .. } = state;
            order.retain(|(key, seq)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Drops the cached answer for one user (for example on a `user_change` event).
    pub(crate) fn invalidate(&self, key: &Key) {
        self.state().entries.remove(key);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let state = self.state();
        CacheStats {
            entries: state.entries.len(),
            ..state.stats
        }
    }
}
