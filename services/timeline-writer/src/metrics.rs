//! The timeline-writer's own metrics (the consumer runtime adds its families to the
//! same registry).

use prometheus::{IntCounterVec, Opts, Registry};

/// Every `Kind::name()`, so each series exists at 0 from the start.
const KINDS: [&str; 8] = [
    "posted",
    "edited",
    "deleted",
    "reaction_added",
    "reaction_removed",
    "member_joined",
    "member_left",
    "degraded",
];

/// Counters of what happened to each event.
#[derive(Debug, Clone)]
pub struct TimelineMetrics {
    written: IntCounterVec,
    duplicates: IntCounterVec,
    failures: IntCounterVec,
}

impl TimelineMetrics {
    /// Registers `slackline_timeline_entries_written_total{kind,mode}`,
    /// `slackline_timeline_duplicates_skipped_total{kind}` and
    /// `slackline_timeline_write_failures_total{error}` in `registry`.
    ///
    /// # Errors
    ///
    /// When the families are already registered there.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let written = IntCounterVec::new(
            Opts::new(
                "slackline_timeline_entries_written_total",
                "Timeline entries written, by kind and mode (full or degraded)",
            ),
            &["kind", "mode"],
        )?;
        let duplicates = IntCounterVec::new(
            Opts::new(
                "slackline_timeline_duplicates_skipped_total",
                "Events whose fact was already in the timeline (replays, retries, a second \
                 event id for the same post), by kind",
            ),
            &["kind"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "slackline_timeline_write_failures_total",
                "Failed attempts to write an entry, by error (retryable: the database was \
                 unavailable and the runtime retries; permanent: the event goes to the DLQ)",
            ),
            &["error"],
        )?;
        registry.register(Box::new(written.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        for error in ["retryable", "permanent"] {
            failures.with_label_values(&[error]);
        }
        for kind in KINDS {
            duplicates.with_label_values(&[kind]);
            for mode in ["full", "degraded"] {
                written.with_label_values(&[kind, mode]);
            }
        }
        Ok(TimelineMetrics {
            written,
            duplicates,
            failures,
        })
    }

    /// An entry was written.
    pub fn written(&self, kind: &str, mode: &str) {
        self.written.with_label_values(&[kind, mode]).inc();
    }

    /// An event's fact was already in the timeline.
    pub fn duplicate(&self, kind: &str) {
        self.duplicates.with_label_values(&[kind]).inc();
    }

    /// Writing an entry failed (`retryable` or not).
    pub fn failure(&self, retryable: bool) {
        let error = if retryable { "retryable" } else { "permanent" };
        self.failures.with_label_values(&[error]).inc();
    }
}
