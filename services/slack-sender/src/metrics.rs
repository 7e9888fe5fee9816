//! The slack-sender's own metrics (the consumer runtime adds its families to the
//! same registry).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Permanent errors present at 0 from the start (any other Slack code appears when
/// it first happens).
const KNOWN_PERMANENT: [&str; 8] = [
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_auth",
    "msg_too_long",
    "no_token",
    "invalid_reply",
    "http_4xx",
];

/// Counters of what happened to each reply.
#[derive(Debug, Clone)]
pub struct SenderMetrics {
    sent: IntCounter,
    failed: IntCounterVec,
    retried: IntCounterVec,
    ambiguous: IntCounter,
    reconciled: IntCounter,
    skipped: IntCounterVec,
}

impl SenderMetrics {
    /// Registers `slackline_slack_sender_sent_total`,
    /// `slackline_slack_sender_failed_total{error}`,
    /// `slackline_slack_sender_retried_total{reason}`,
    /// `slackline_slack_sender_ambiguous_total`,
    /// `slackline_slack_sender_reconciled_total` and
    /// `slackline_slack_sender_skipped_total{reason}` in `registry`.
    ///
    /// # Errors
    ///
    /// When the families are already registered there.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let sent = IntCounter::new(
            "slackline_slack_sender_sent_total",
            "Replies Slack posted (chat.postMessage answered ok with a ts)",
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                "slackline_slack_sender_failed_total",
                "Replies Slack refused for good, by Slack error (channel_not_found, \
                 not_in_channel, is_archived, invalid_auth, msg_too_long, ...); each goes \
                 to the DLQ",
            ),
            &["error"],
        )?;
        let retried = IntCounterVec::new(
            Opts::new(
                "slackline_slack_sender_retried_total",
                "Sends Slack certainly did not take and that are retried, by reason \
                 (rate_limited, ratelimited, http_5xx, connect, ...)",
            ),
            &["reason"],
        )?;
        let ambiguous = IntCounter::new(
            "slackline_slack_sender_ambiguous_total",
            "Sends that may or may not have been posted (no answer after sending, 502/504, \
             internal_error, a process that died mid-send); never posted again \
             automatically, the record goes to the DLQ",
        )?;
        let reconciled = IntCounter::new(
            "slackline_slack_sender_reconciled_total",
            "Sends whose outcome was unknown (no answer, a process that died mid-send, an \
             ambiguous reply delivered again) found posted in their thread \
             (conversations.replies, by the reply id in the message metadata) and recorded \
             sent with that message's ts",
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "slackline_slack_sender_skipped_total",
                "Replies handled again without a send: already_sent, ambiguous (not found in \
                 the thread), already_failed (refused by Slack; only a redrive tries again)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(failed.clone()))?;
        registry.register(Box::new(retried.clone()))?;
        registry.register(Box::new(ambiguous.clone()))?;
        registry.register(Box::new(reconciled.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        for error in KNOWN_PERMANENT {
            failed.with_label_values(&[error]);
        }
        for reason in ["rate_limited", "connect", "http_5xx"] {
            retried.with_label_values(&[reason]);
        }
        for reason in ["already_sent", "ambiguous", "already_failed"] {
            skipped.with_label_values(&[reason]);
        }
        Ok(SenderMetrics {
            sent,
            failed,
            retried,
            ambiguous,
            reconciled,
            skipped,
        })
    }

    /// A reply was posted.
    pub fn sent(&self) {
        self.sent.inc();
    }

    /// Slack refused a reply for good with `error`.
    pub fn failed(&self, error: &str) {
        self.failed.with_label_values(&[label(error)]).inc();
    }

    /// A send is retried for `reason`.
    pub fn retried(&self, reason: &str) {
        self.retried.with_label_values(&[label(reason)]).inc();
    }

    /// A send's outcome is unknown.
    pub fn ambiguous(&self) {
        self.ambiguous.inc();
    }

    /// An unknown outcome was found posted in the thread.
    pub fn reconciled(&self) {
        self.reconciled.inc();
    }

    /// A reply needed no send.
    pub fn skipped(&self, reason: &str) {
        self.skipped.with_label_values(&[reason]).inc();
    }
}

/// HTTP statuses are folded into classes (`http_503` → `http_5xx`) and other labels
/// kept short, so that the label sets stay small.
fn label(error: &str) -> &str {
    if let Some(status) = error.strip_prefix("http_") {
        return match status.as_bytes().first() {
            Some(b'5') => "http_5xx",
            Some(b'4') => "http_4xx",
            _ => "http_other",
        };
    }
    if error.len() > 64 || !error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return "other";
    }
    error
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn labels_stay_few() {
        assert_eq!(label("http_503"), "http_5xx");
        assert_eq!(label("http_404"), "http_4xx");
        assert_eq!(label("channel_not_found"), "channel_not_found");
        assert_eq!(label("Weird Code!"), "other");
    }
}
