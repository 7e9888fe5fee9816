//! A test seam: failures injected into the file archive's segment writes, so that
//! tests can prove what a torn append, a failed `fdatasync`, a failed truncation or a
//! failed rotation does to acknowledged writes.
//!
//! Only [`FileArchive::open_with_faults`](crate::FileArchive::open_with_faults) takes
//! one. [`FileArchive::open`](crate::FileArchive::open) and
//! [`Archive::open`](crate::Archive::open), which the services use, run with none:
//! nothing here can be switched on by configuration.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// No write failure armed.
const NO_BUDGET: u64 = u64::MAX;

/// Failures to inject into a file archive's segment writes. Clones share their
/// state: a test keeps one and arms failures while the archive runs. Each `fail_*`
/// call arms the next `n` operations of that kind to fail (replacing what was armed).
/// `LogFaults::default()` injects nothing and cannot be armed (what
/// [`FileArchive::open`](crate::FileArchive::open) uses); `LogFaults::new()` can.
#[derive(Clone, Default)]
pub struct LogFaults {
    state: Option<Arc<State>>,
}

struct State {
    /// Per segment path: the length the last successful flush covered.
    synced: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    write_budget: AtomicU64,
    syncs: AtomicU32,
    truncations: AtomicU32,
    rotations: AtomicU32,
    rotate_every_batch: AtomicBool,
}

impl std::fmt::Debug for LogFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFaults")
            .field("armed", &self.state.is_some())
            .finish()
    }
}

impl LogFaults {
    /// A set of faults, none armed yet.
    pub fn new() -> LogFaults {
        LogFaults {
            state: Some(Arc::new(State {
                synced: std::sync::Mutex::new(std::collections::HashMap::new()),
                write_budget: AtomicU64::new(NO_BUDGET),
                syncs: AtomicU32::new(0),
                truncations: AtomicU32::new(0),
                rotations: AtomicU32::new(0),
                rotate_every_batch: AtomicBool::new(false),
            })),
        }
    }

    /// The next segment append writes only its first `bytes` bytes (really, to the file)
    /// and then fails: a torn record, as a full disk or an I/O error leaves it.
    /// (`u64::MAX` disarms it; a budget of the whole batch or more writes it whole
    /// and still fails.)
    pub fn fail_next_append_after(&self, bytes: u64) {
        if let Some(s) = &self.state {
            s.write_budget.store(bytes, Ordering::SeqCst);
        }
    }

    /// The next `n` `fdatasync`/`fsync` calls on a segment fail (after an append, or
    /// after cutting a failed append back).
    pub fn fail_syncs(&self, n: u32) {
        if let Some(s) = &self.state {
            s.syncs.store(n, Ordering::SeqCst);
        }
    }

    /// The next `n` truncations of a segment back to its last good line fail.
    pub fn fail_truncations(&self, n: u32) {
        if let Some(s) = &self.state {
            s.truncations.store(n, Ordering::SeqCst);
        }
    }

    /// The next `n` segment creations (a rotation, the first segment, the one after a
    /// failed append) fail.
    pub fn fail_segment_creations(&self, n: u32) {
        if let Some(s) = &self.state {
            s.rotations.store(n, Ordering::SeqCst);
        }
    }

    /// Makes the segment due for rotation after every batch (instead of after its
    /// size or age limit), to exercise rotations.
    pub fn rotate_after_every_batch(&self, on: bool) {
        if let Some(s) = &self.state {
            s.rotate_every_batch.store(on, Ordering::SeqCst);
        }
    }

    /// Per segment file (its path): the length its last successful flush covered,
    /// what a machine crash keeps of it at least (the fault tests cut their crash
    /// images there). Recorded only while armed ([`LogFaults::new`]).
    pub fn synced_lengths(&self) -> std::collections::HashMap<String, u64> {
        self.state.as_ref().map_or_else(Default::default, |s| {
            s.synced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    /// Whether this can inject anything (and records flushed lengths).
    pub(crate) fn is_armed(&self) -> bool {
        self.state.is_some()
    }

    /// A flush of `path` covering its first `len` bytes succeeded.
    pub(crate) fn record_synced(&self, path: &str, len: u64) {
        if let Some(s) = &self.state {
            let mut synced = s
                .synced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = synced.entry(path.to_owned()).or_default();
            *at = (*at).max(len);
        }
    }

    /// `path` was cut back (durably) to `len` bytes.
    pub(crate) fn record_cut_back(&self, path: &str, len: u64) {
        if let Some(s) = &self.state {
            let mut synced = s
                .synced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(at) = synced.get_mut(path) {
                *at = (*at).min(len);
            }
        }
    }

    /// How many bytes the current append may write before failing, once.
    pub(crate) fn take_append_budget(&self) -> Option<u64> {
        let s = self.state.as_ref()?;
        match s.write_budget.swap(NO_BUDGET, Ordering::SeqCst) {
            NO_BUDGET => None,
            n => Some(n),
        }
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.take(|s| &s.syncs, "fdatasync")
    }

    pub(crate) fn truncate(&self) -> std::io::Result<()> {
        self.take(|s| &s.truncations, "truncate")
    }

    pub(crate) fn rotate(&self) -> std::io::Result<()> {
        self.take(|s| &s.rotations, "segment creation")
    }

    pub(crate) fn rotate_every_batch(&self) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.rotate_every_batch.load(Ordering::SeqCst))
    }

    fn take(&self, counter: impl Fn(&State) -> &AtomicU32, what: &str) -> std::io::Result<()> {
        let Some(s) = &self.state else {
            return Ok(());
        };
        let armed = counter(s)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if armed {
            Err(injected(what))
        } else {
            Ok(())
        }
    }
}

pub(crate) fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected {what} failure"))
}
