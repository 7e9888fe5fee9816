//! The edge's Prometheus metrics, registered in the service's own registry and
//! initialised at zero so that the first failure is an increase alerts can see.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use slackline_slack::SignatureError;

/// Status codes the edge answers on `/slack/events`, pre-registered at zero.
const STATUSES: [&str; 7] = ["200", "401", "404", "405", "408", "413", "503"];
/// Where a slow client was cut off: reading the headers or the body.
pub(crate) const READ_PHASES: [&str; 2] = ["header", "body"];
/// Kinds of accepted bodies.
pub(crate) const KINDS: [&str; 4] = ["event_callback", "app_rate_limited", "other", "not_json"];

/// The edge's counters and histograms.
#[derive(Clone)]
pub struct EdgeMetrics {
    requests: IntCounterVec,
    signature_failures: IntCounterVec,
    accepted: IntCounterVec,
    app_rate_limited: IntCounter,
    url_verifications: IntCounter,
    archive_failures: IntCounter,
    archive_queue_full: IntCounter,
    kafka_failures: IntCounter,
    deadline_exceeded: IntCounter,
    overloaded: IntCounter,
    read_timeouts: IntCounterVec,
    connections_refused: IntCounter,
    open_connections: IntGauge,
    in_flight: IntGauge,
    request_duration: Histogram,
    archive_duration: Histogram,
    kafka_duration: Histogram,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0,
    ]
}

impl EdgeMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Result<EdgeMetrics, prometheus::Error> {
        let counter_vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets()))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let metrics = EdgeMetrics {
            requests: counter_vec(
                "slackline_edge_requests_total",
                "Requests to /slack/events by HTTP status",
                "status",
            )?,
            signature_failures: counter_vec(
                "slackline_edge_signature_failures_total",
                "Requests refused with 401, by reason",
                "reason",
            )?,
            accepted: counter_vec(
                "slackline_edge_accepted_total",
                "Bodies archived and produced (answered 200), by envelope kind",
                "kind",
            )?,
            app_rate_limited: counter(
                "slackline_edge_app_rate_limited_total",
                "app_rate_limited notices from Slack: Slack dropped events for a workspace",
            )?,
            url_verifications: counter(
                "slackline_edge_url_verifications_total",
                "url_verification challenges answered",
            )?,
            archive_failures: counter(
                "slackline_edge_archive_failures_total",
                "Archive writes that failed (the request got 503)",
            )?,
            archive_queue_full: counter(
                "slackline_edge_archive_queue_full_total",
                "Requests answered 503 at once because the archive's write queue was full (ARCHIVE_QUEUE_CAPACITY); also counted in slackline_edge_archive_failures_total",
            )?,
            kafka_failures: counter(
                "slackline_edge_kafka_failures_total",
                "Kafka deliveries that failed (the request got 503)",
            )?,
            deadline_exceeded: counter(
                "slackline_edge_deadline_exceeded_total",
                "Requests whose archive write and delivery did not finish within EDGE_DEADLINE_MS",
            )?,
            overloaded: counter(
                "slackline_edge_overloaded_total",
                "Requests answered 503 at once because EDGE_MAX_IN_FLIGHT requests were in flight",
            )?,
            read_timeouts: counter_vec(
                "slackline_edge_read_timeouts_total",
                "Slow clients cut off: headers not complete within EDGE_HEADER_READ_TIMEOUT_MS (connection closed) or body not within EDGE_BODY_READ_TIMEOUT_MS (408)",
                "phase",
            )?,
            connections_refused: counter(
                "slackline_edge_connections_refused_total",
                "Connections closed at once because EDGE_MAX_CONNECTIONS were open",
            )?,
            open_connections: gauge(
                "slackline_edge_open_connections",
                "Open connections on the Slack port",
            )?,
            in_flight: gauge(
                "slackline_edge_in_flight_requests",
                "Requests on /slack/events being handled",
            )?,
            request_duration: histogram(
                "slackline_edge_request_duration_seconds",
                "Time to answer /slack/events",
            )?,
            archive_duration: histogram(
                "slackline_edge_archive_write_duration_seconds",
                "Time for an archive write to be durable",
            )?,
            kafka_duration: histogram(
                "slackline_edge_kafka_delivery_duration_seconds",
                "Time for Kafka to acknowledge a record",
            )?,
        };
        for status in STATUSES {
            metrics.requests.with_label_values(&[status]);
        }
        for reason in SignatureError::ALL {
            metrics
                .signature_failures
                .with_label_values(&[reason.reason()]);
        }
        for kind in KINDS {
            metrics.accepted.with_label_values(&[kind]);
        }
        for phase in READ_PHASES {
            metrics.read_timeouts.with_label_values(&[phase]);
        }
        Ok(metrics)
    }

    pub(crate) fn responded(&self, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[status.to_string().as_str()])
            .inc();
        self.request_duration.observe(seconds);
    }

    pub(crate) fn signature_failed(&self, reason: SignatureError) {
        self.signature_failures
            .with_label_values(&[reason.reason()])
            .inc();
    }

    pub(crate) fn accepted(&self, kind: &str) {
        self.accepted.with_label_values(&[kind]).inc();
    }

    pub(crate) fn app_rate_limited(&self) {
        self.app_rate_limited.inc();
    }

    pub(crate) fn url_verified(&self) {
        self.url_verifications.inc();
    }

    pub(crate) fn archive_written(&self, seconds: f64) {
        self.archive_duration.observe(seconds);
    }

    pub(crate) fn archive_failed(&self, error: &slackline_archive::ArchiveError) {
        self.archive_failures.inc();
        if matches!(error, slackline_archive::ArchiveError::Busy) {
            self.archive_queue_full.inc();
        }
    }

    pub(crate) fn kafka_delivered(&self, seconds: f64) {
        self.kafka_duration.observe(seconds);
    }

    pub(crate) fn kafka_failed(&self) {
        self.kafka_failures.inc();
    }

    pub(crate) fn deadline_exceeded(&self) {
        self.deadline_exceeded.inc();
    }

    pub(crate) fn overloaded(&self) {
        self.overloaded.inc();
    }

    /// `phase` is one of [`READ_PHASES`].
    pub(crate) fn read_timed_out(&self, phase: &str) {
        self.read_timeouts.with_label_values(&[phase]).inc();
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts an open connection until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> GaugeGuard {
        GaugeGuard::new(&self.open_connections)
    }

    /// Counts a request in flight until the guard is dropped.
    pub(crate) fn request_started(&self) -> GaugeGuard {
        GaugeGuard::new(&self.in_flight)
    }
}

/// Decrements its gauge when dropped.
pub(crate) struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn new(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
