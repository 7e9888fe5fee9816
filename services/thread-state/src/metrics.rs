//! thread-state's own metrics (the consumer runtime adds `slackline_consumer_*`).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The service's metric families.
#[derive(Clone, Debug)]
pub struct ThreadStateMetrics {
    facts: IntCounterVec,
    transitions: IntCounterVec,
    published: IntCounter,
    publish_failures: IntCounter,
}

impl ThreadStateMetrics {
    /// Registers the families in `registry`.
    ///
    /// # Errors
    ///
    /// When a family is registered twice.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = ThreadStateMetrics {
            facts: IntCounterVec::new(
                Opts::new(
                    "slackline_thread_state_facts_total",
                    "Message facts handled, by outcome: threaded (belongs to a thread), \
                     unthreaded (recorded, no thread), duplicate (recorded before)",
                ),
                &["outcome"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new(
                    "slackline_thread_state_transitions_total",
                    "Thread status transitions recorded, by cause",
                ),
                &["cause"],
            )?,
            published: IntCounter::new(
                "slackline_thread_state_thread_events_published_total",
                "Thread events acknowledged by Kafka on support.thread-events",
            )?,
            publish_failures: IntCounter::new(
                "slackline_thread_state_publish_failures_total",
                "Thread events Kafka did not acknowledge (the fact is retried)",
            )?,
        };
        for outcome in ["threaded", "unthreaded", "duplicate"] {
            metrics.facts.with_label_values(&[outcome]);
        }
        for cause in [
            "opened",
            "customer_message",
            "agent_reply",
            "reopened",
            "reaction",
        ] {
            metrics.transitions.with_label_values(&[cause]);
        }
        registry.register(Box::new(metrics.facts.clone()))?;
        registry.register(Box::new(metrics.transitions.clone()))?;
        registry.register(Box::new(metrics.published.clone()))?;
        registry.register(Box::new(metrics.publish_failures.clone()))?;
        Ok(metrics)
    }

    pub(crate) fn fact(&self, outcome: &str) {
        self.facts.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn transition(&self, cause: &str) {
        self.transitions.with_label_values(&[cause]).inc();
    }

    pub(crate) fn published(&self) {
        self.published.inc();
    }

    pub(crate) fn publish_failed(&self) {
        self.publish_failures.inc();
    }
}
