//! Consumer metrics, one family set per registry, labelled by group, behind methods
//! named after what happened.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The metric families of every consumer runtime sharing one registry. Register it
/// once per registry ([`ConsumerMetrics::register`]) and give a clone to each runtime:
/// the runtimes tell themselves apart by the `group` label.
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    handled: IntCounterVec,
    retried: IntCounterVec,
    parked_keys: IntGaugeVec,
    buffered_bytes: IntGaugeVec,
    skipped: IntCounterVec,
    dlq_end_offset: IntGaugeVec,
    dead_lettered: IntCounterVec,
    lag: IntGaugeVec,
    handler_seconds: HistogramVec,
}

impl ConsumerMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = ConsumerMetrics {
            handled: IntCounterVec::new(
                Opts::new(
                    "slackline_consumer_handled_total",
                    "Events whose handler succeeded",
                ),
                &["group"],
            )?,
            retried: IntCounterVec::new(
                Opts::new(
                    "slackline_consumer_retried_total",
                    "Events scheduled for a delayed retry round, by round number",
                ),
                &["group", "attempt"],
            )?,
            parked_keys: IntGaugeVec::new(
                Opts::new(
                    "slackline_consumer_parked_keys",
                    "Keys whose events wait behind a retried event",
                ),
                &["group"],
            )?,
            buffered_bytes: IntGaugeVec::new(
                Opts::new(
                    "slackline_consumer_buffered_bytes",
                    "Bytes of received records the runtime holds unfinished (source and retry)",
                ),
                &["group", "topic"],
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "slackline_consumer_skipped_total",
                    "Replayed source records skipped because they were already finished: in_retry (moved to the retry topic before) or finished_before_moved (a later record of the key was moved after it finished)",
                ),
                &["group", "reason"],
            )?,
            dlq_end_offset: IntGaugeVec::new(
                Opts::new(
                    "slackline_dlq_end_offset",
                    "Records ever written to the group's DLQ topic (its end offsets, read at start and with the lag)",
                ),
                &["group"],
            )?,
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "slackline_dlq_records_total",
                    "Events written to the group's DLQ topic",
                ),
                &["group"],
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    "slackline_consumer_lag",
                    "High watermark minus the offset the group would commit (unfinished work counts)",
                ),
                &["group", "topic", "partition"],
            )?,
            handler_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "slackline_consumer_handler_seconds",
                    "Duration of one handler call",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["group"],
            )?,
        };
        registry.register(Box::new(metrics.handled.clone()))?;
        registry.register(Box::new(metrics.retried.clone()))?;
        registry.register(Box::new(metrics.parked_keys.clone()))?;
        registry.register(Box::new(metrics.buffered_bytes.clone()))?;
        registry.register(Box::new(metrics.dlq_end_offset.clone()))?;
        registry.register(Box::new(metrics.skipped.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.handler_seconds.clone()))?;
        Ok(metrics)
    }

    /// The metrics of one group, with its series initialised at 0 (so that an alert
    /// on `increase(slackline_dlq_records_total[5m]) > 0` sees the first record).
    pub(crate) fn group(&self, group: &str) -> GroupMetrics {
        let g = GroupMetrics {
            group: group.to_owned(),
            families: self.clone(),
        };
        g.families.handled.with_label_values(&[group]).inc_by(0);
        g.families
            .dead_lettered
            .with_label_values(&[group])
            .inc_by(0);
        g.families.parked_keys.with_label_values(&[group]).set(0);
        g
    }
}

/// The metrics of one group.
#[derive(Clone, Debug)]
pub(crate) struct GroupMetrics {
    group: String,
    families: ConsumerMetrics,
}

impl GroupMetrics {
    /// A handler succeeded.
    pub(crate) fn handled(&self) {
        self.families
            .handled
            .with_label_values(&[&self.group])
            .inc();
    }

    /// An event was scheduled for delayed retry round `attempt`.
    pub(crate) fn retried(&self, attempt: u32) {
        self.families
            .retried
            .with_label_values(&[self.group.as_str(), &attempt.to_string()])
            .inc();
    }

    /// A key was parked (`+1`) or unparked (`-1`), or a revoked partition took its
    /// parked keys away.
    pub(crate) fn parked_keys_changed(&self, delta: i64) {
        self.families
            .parked_keys
            .with_label_values(&[&self.group])
            .add(delta);
    }

    /// A DLQ record was acknowledged.
    /// The bytes held for `topic` (the source or the retry topic).
    pub(crate) fn buffered_bytes(&self, topic: &str, bytes: usize) {
        self.families
            .buffered_bytes
            .with_label_values(&[&self.group, topic])
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The DLQ topic's end offsets, summed over its partitions. Unlike the counter,
    /// it survives the process: a record dead-lettered just before a crash shows in
    /// the next process's first reading, so an alert on its growth never misses one.
    pub(crate) fn dlq_end_offset(&self, end: i64) {
        self.families
            .dlq_end_offset
            .with_label_values(&[&self.group])
            .set(end);
    }

    /// A replayed source record was skipped as already finished.
    pub(crate) fn skipped(&self, reason: &str) {
        self.families
            .skipped
            .with_label_values(&[&self.group, reason])
            .inc();
    }

    pub(crate) fn dead_lettered(&self) {
        self.families
            .dead_lettered
            .with_label_values(&[&self.group])
            .inc();
    }

    /// The lag of one partition was measured.
    pub(crate) fn lag_measured(&self, topic: &str, partition: i32, lag: i64) {
        self.families
            .lag
            .with_label_values(&[self.group.as_str(), topic, &partition.to_string()])
            .set(lag);
    }

    /// A partition was revoked: its lag is no longer ours to report.
    pub(crate) fn lag_forgotten(&self, topic: &str, partition: i32) {
        let _ = self.families.lag.remove_label_values(&[
            self.group.as_str(),
            topic,
            &partition.to_string(),
        ]);
    }

    /// One handler call took `seconds`.
    pub(crate) fn handler_finished(&self, seconds: f64) {
        self.families
            .handler_seconds
            .with_label_values(&[&self.group])
            .observe(seconds);
    }
}
