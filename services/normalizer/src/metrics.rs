//! The normalizer's counters. Every consumed raw event ends in exactly one outcome
//! (guarantee 5), so `slackline_normalizer_consumed_total` equals the sum of
//! `slackline_normalizer_outcomes_total` over all labels.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::normalize::IgnoreReason;

/// Event types kept as label values; any other becomes `other`.
const EVENT_TYPES: [&str; 6] = [
    "message",
    "reaction_added",
    "reaction_removed",
    "member_joined_channel",
    "member_left_channel",
    "other",
];

/// Bounded label for an event type.
pub fn event_type_label(event_type: Option<&str>) -> &'static str {
    let t = event_type.unwrap_or("other");
    EVENT_TYPES
        .iter()
        .find(|known| **known == t)
        .copied()
        .unwrap_or("other")
}

/// Bounded label for a degraded reason (the full reason is in the event).
pub fn degraded_reason_label(reason: &str) -> &'static str {
    if reason.starts_with("body is") {
        "not_json"
    } else if reason.starts_with("unknown message subtype") {
        "unknown_subtype"
    } else if reason.starts_with("reaction on") {
        "reaction_not_on_message"
    } else if reason.contains("without") || reason.starts_with("no ") || reason.contains(" no ") {
        "missing_field"
    } else {
        "unexpected_shape"
    }
}

/// The normalizer's metrics.
#[derive(Clone)]
pub struct NormalizerMetrics {
    consumed: IntCounter,
    outcomes: IntCounterVec,
    enrichment: IntCounterVec,
    dlq_end_offset: IntGaugeVec,
    replayed: IntCounter,
}

impl NormalizerMetrics {
    /// Creates and registers the metrics, with the common series at zero.
    pub fn new(registry: &Registry) -> Result<NormalizerMetrics, prometheus::Error> {
        let consumed = IntCounter::new(
            "slackline_normalizer_consumed_total",
            "Raw events consumed from slack.events.raw",
        )?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "slackline_normalizer_outcomes_total",
                "Raw events by outcome (full, degraded, ignored, dlq), reason and event type; sums to consumed",
            ),
            &["outcome", "reason", "event_type"],
        )?;
        let enrichment = IntCounterVec::new(
            Opts::new(
                "slackline_normalizer_author_lookups_total",
                "users.info lookups by result (a failure degrades the author, not the message)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        let dlq_end_offset = IntGaugeVec::new(
            Opts::new(
                "slackline_dlq_end_offset",
                "Records ever written to the group's DLQ topic (its end offsets, read at start and every 15 s)",
            ),
            &["group"],
        )?;
        let replayed = IntCounter::new(
            "slackline_normalizer_replayed_total",
            "Raw events read carrying the slackline-replay header (slackline replay): normalized whatever their event id; part of consumed",
        )?;
        registry.register(Box::new(enrichment.clone()))?;
        registry.register(Box::new(dlq_end_offset.clone()))?;
        registry.register(Box::new(replayed.clone()))?;
        for t in EVENT_TYPES {
            outcomes.with_label_values(&["full", "-", t]);
            outcomes.with_label_values(&["degraded", "missing_field", t]);
            // At zero for every type: the first DLQ record of a type is then an
            // increase the DLQ alert sees, not a new series starting at 1.
            outcomes.with_label_values(&["dlq", "-", t]);
        }
        for reason in IgnoreReason::ALL {
            outcomes.with_label_values(&["ignored", reason.label(), "other"]);
        }
        Ok(NormalizerMetrics {
            consumed,
            outcomes,
            enrichment,
            dlq_end_offset,
            replayed,
        })
    }

    /// A raw event was read.
    pub fn consumed(&self) {
        self.consumed.inc();
    }

    /// A raw event of `slackline replay` was read (also counted as consumed).
    pub fn replayed(&self) {
        self.replayed.inc();
    }

    /// A full event was produced.
    pub fn produced_full(&self, event_type: &str) {
        self.outcomes
            .with_label_values(&["full", "-", event_type])
            .inc();
    }

    /// A degraded event was produced.
    pub fn produced_degraded(&self, reason: &str, event_type: &str) {
        self.outcomes
            .with_label_values(&["degraded", degraded_reason_label(reason), event_type])
            .inc();
    }

    /// The raw event was ignored.
    pub fn ignored(&self, reason: IgnoreReason, event_type: &str) {
        self.outcomes
            .with_label_values(&["ignored", reason.label(), event_type])
            .inc();
    }

    /// The raw event went to the DLQ.
    pub fn dead_lettered(&self, event_type: &str) {
        self.outcomes
            .with_label_values(&["dlq", "-", event_type])
            .inc();
    }

    /// The DLQ topic's end offsets, summed over its partitions, for consumer group
    /// `group` (the normalizer's). Unlike the counter, it survives the process: a
    /// record dead-lettered just before a crash shows in the next process's first
    /// reading.
    pub fn dlq_end_offset(&self, group: &str, end: i64) {
        self.dlq_end_offset.with_label_values(&[group]).set(end);
    }

    /// An author lookup ended with `result`.
    pub fn author_lookup(&self, result: &str) {
        self.enrichment.with_label_values(&[result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DLQ alert's counter leg needs every `dlq` series at 0 before the first
    /// record: a series born at 1 has no increase.
    #[test]
    fn the_dlq_outcome_starts_at_zero_for_every_event_type() {
        let registry = Registry::new();
        NormalizerMetrics::new(&registry).expect("metrics");
        let families = registry.gather();
        let outcomes = families
            .iter()
            .find(|f| f.name() == "slackline_normalizer_outcomes_total")
            .expect("the outcome counter");
        for t in EVENT_TYPES {
            let series = outcomes.get_metric().iter().find(|m| {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                };
                label("outcome").as_deref() == Some("dlq")
                    && label("event_type").as_deref() == Some(t)
            });
            let series = series.unwrap_or_else(|| panic!("no dlq series for {t}"));
            assert_eq!(series.get_counter().get_value(), 0.0, "{t}");
        }
    }
}
