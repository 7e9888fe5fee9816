//! A warning at most once per interval for things that can happen thousands of times
//! a second (bad signatures from a scanner, slow clients, overload), carrying how many
//! happened since the last one. Each occurrence is still counted in a metric and
//! logged at debug; this only keeps the warnings readable.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a throttled warning may be logged.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(60);

/// Counts occurrences and says when to warn about them.
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

struct State {
    /// When the last warning was allowed; `None` before the first.
    last: Option<Instant>,
    /// Occurrences since then, including the one that allowed it.
    count: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new(State {
                last: None,
                count: 0,
            }),
        }
    }

    /// Counts one occurrence. Returns how many occurred since the last warning
    /// (this one included) when a warning is due: at the first occurrence and then
    /// at the first one at least `every` after the previous warning.
    pub(crate) fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        // A panic elsewhere while holding the lock cannot leave the counts in an
        // unusable state: carry on with them.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.count += 1;
        let due = match state.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.every,
        };
        if !due {
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_at_once_then_at_most_once_per_interval_with_the_count() {
        let throttle = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(throttle.hit_at(at(0)), Some(1));
        // 1,000 more within the minute: silent.
        for i in 0..1000 {
            assert_eq!(throttle.hit_at(at(1 + i % 58)), None);
        }
        // The first one a minute after the last warning reports all of them.
        assert_eq!(throttle.hit_at(at(60)), Some(1001));
        assert_eq!(throttle.hit_at(at(61)), None);
        assert_eq!(throttle.hit_at(at(119)), None);
        assert_eq!(throttle.hit_at(at(120)), Some(3));
        // After a quiet hour, the next one warns at once.
        assert_eq!(throttle.hit_at(at(4000)), Some(1));
    }
}
