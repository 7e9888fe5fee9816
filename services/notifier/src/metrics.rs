//! The notifier's own metrics (the consumer runtime adds its families to the same
//! registry).

use prometheus::{IntCounterVec, Opts, Registry};

/// Every skip reason, so each series exists at 0 from the start.
const SKIP_REASONS: [&str; 6] = [
    "not_a_post",
    "agent",
    "bot",
    "no_target",
    "already_sent",
    "ambiguous",
];

/// Counters of what happened to each notification.
#[derive(Debug, Clone)]
pub struct NotifierMetrics {
    sent: IntCounterVec,
    failed: IntCounterVec,
    skipped: IntCounterVec,
    ambiguous: IntCounterVec,
}

impl NotifierMetrics {
    /// Registers `slackline_notifier_sent_total{target,kind}`,
    /// `slackline_notifier_failed_total{target,retryable}`,
    /// `slackline_notifier_skipped_total{reason}` and
    /// `slackline_notifier_ambiguous_total{target}` in `registry`, with the series of
    /// `targets` present at 0.
    ///
    /// # Errors
    ///
    /// When the families are already registered there.
    pub fn register(registry: &Registry, targets: &[&str]) -> Result<Self, prometheus::Error> {
        let sent = IntCounterVec::new(
            Opts::new(
                "slackline_notifier_sent_total",
                "Notifications delivered, by target and kind (message or degraded)",
            ),
            &["target", "kind"],
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                "slackline_notifier_failed_total",
                "Sends the target did not take, by target and whether they are retried",
            ),
            &["target", "retryable"],
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "slackline_notifier_skipped_total",
                "Events or targets without a send: not_a_post, agent, bot, no_target \
                 (per event), already_sent, ambiguous (per target: marked ambiguous earlier, \
                 not sent again)",
            ),
            &["reason"],
        )?;
        let ambiguous = IntCounterVec::new(
            Opts::new(
                "slackline_notifier_ambiguous_total",
                "Sends that may or may not have been delivered (a process died mid-send, \
                 no answer came, or 502/504); never sent again, the event goes to the DLQ",
            ),
            &["target"],
        )?;
        for family in [&sent, &failed, &skipped, &ambiguous] {
            registry.register(Box::new(family.clone()))?;
        }
        for reason in SKIP_REASONS {
            skipped.with_label_values(&[reason]);
        }
        for target in targets {
            ambiguous.with_label_values(&[target]);
            for kind in ["message", "degraded"] {
                sent.with_label_values(&[target, kind]);
            }
            for retryable in ["true", "false"] {
                failed.with_label_values(&[target, retryable]);
            }
        }
        Ok(NotifierMetrics {
            sent,
            failed,
            skipped,
            ambiguous,
        })
    }

    /// A notification was delivered.
    pub fn sent(&self, target: &str, kind: &str) {
        self.sent.with_label_values(&[target, kind]).inc();
    }

    /// A target did not take a notification.
    pub fn failed(&self, target: &str, retryable: bool) {
        let retryable = if retryable { "true" } else { "false" };
        self.failed.with_label_values(&[target, retryable]).inc();
    }

    /// No send happened, for `reason`.
    pub fn skipped(&self, reason: &str) {
        self.skipped.with_label_values(&[reason]).inc();
    }

    /// A send's outcome is unknown and it is not repeated.
    pub fn ambiguous(&self, target: &str) {
        self.ambiguous.with_label_values(&[target]).inc();
    }
}
