//! Issue 12, item 11 (the normalizer's part) and the Sentry contract of its DLQ: a
//! raw event dead-lettered to `slack.events.raw.dlq` logs exactly one error event
//! with the event id, channel, archive key and raw coordinates (no message text), and
//! shows in `slackline_dlq_end_offset{group}`, read from the DLQ topic itself, so the
//! next process still reports it after a restart that lost the in-process counter.
//! Its own test binary: it installs a process-wide subscriber that records the logs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use serde_json::json;
use slackline_kafka::topics::TopicSpec;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::{LogFormat, Shutdown};
use slackline_testkit::kafka::TestCluster;

const PARTITIONS: i32 = 4;
const TEXT: &str = "secret customer words";

/// Every formatted log line, in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// The error-level JSON log events.
    fn errors(&self) -> Vec<serde_json::Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
            .filter(|v| v["level"] == "ERROR")
            .collect()
    }
}

fn metric(n: &Normalizer, name: &str, labels: &[(&str, &str)]) -> f64 {
    slackline_testkit::metrics::metric(&n.registry, name, labels)
}

fn has_series(n: &Normalizer, name: &str, group: &str) -> bool {
    n.registry.gather().iter().any(|f| {
        f.name() == name
            && f.get_metric().iter().any(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "group" && l.value() == group)
            })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_logs_one_error_and_shows_in_the_dlq_end_offset_after_a_restart() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        // Info, as in production: the per-event span must be enabled at that level.
        .with_env_filter("slackline_normalizer=info")
        .with_writer(move || writer.clone())
        .init();

    // The messages topic refuses every write (the broker answers MESSAGE_TOO_LARGE,
    // the topic allowing 1 byte): not even a degraded event can be produced.
    let cluster = TestCluster::kafka();
    let names = cluster.names();
    cluster.create_topic(&names.raw_events(), PARTITIONS);
    cluster.create_topic(&names.raw_dlq(), 1);
    let refusing = TopicSpec {
        name: names.messages(),
        partitions: PARTITIONS,
        configs: vec![("max.message.bytes", "1".to_owned())],
    };
    slackline_kafka::topics::create(&cluster.settings(), &[refusing], 1)
        .await
        .expect("create the refusing messages topic");
    let group = names.group(slackline_kafka::topics::NORMALIZER_GROUP);
    let config = NormalizerConfig {
        log_format: LogFormat::Json,
        shutdown_grace: Duration::from_secs(5),
        author_lookup_concurrency: 4,
        ..NormalizerConfig::new(cluster.settings(), names)
    };
    assert_eq!(config.group_id, group);
    let shutdown = Shutdown::new();
    let first = Normalizer::start(config.clone(), shutdown.clone())
        .await
        .unwrap();

    let body = serde_json::to_vec(&json!({
        "type": "event_callback", "team_id": "T0CUST", "event_id": "EvDead1",
        "event_time": 1_764_000_000,
        "authorizations": [{"team_id": "T0HOME", "user_id": "U0BOT", "is_bot": true}],
        "event": {"type": "message", "channel": "C0DEAD", "user": "U0CUST", "text": TEXT,
                  "ts": "1764002000.000100"},
    }))
    .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    let (raw_partition, raw_offset) = producer
        .send(
            FutureRecord::to(&config.raw_topic)
                .key("C0DEAD")
                .payload(&body)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "slack-event-id",
                            value: Some("EvDead1"),
                        })
                        .insert(Header {
                            key: "archive-key",
                            value: Some("raw/2025/11/24/EvDead1.json"),
                        }),
                ),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
        .expect("raw record acknowledged");

    slackline_testkit::wait_until("the dead letter", Duration::from_secs(60), || {
        let dead = metric(
            &first,
            "slackline_normalizer_outcomes_total",
            &[("outcome", "dlq")],
        );
        async move { dead == 1.0 }
    })
    .await;
    assert_eq!(
        metric(&first, "slackline_dlq_end_offset", &[("group", &group)]),
        1.0,
        "the DLQ write's acknowledgement moves the end offset at once"
    );

    // The Sentry contract: one error event per DLQ record, with these fields as tags.
    let errors = captured.errors();
    let dlq_logs: Vec<&serde_json::Value> = errors
        .iter()
        .filter(|e| e["fields"]["message"] == "record sent to the DLQ")
        .collect();
    assert_eq!(dlq_logs.len(), 1, "one error per DLQ record: {errors:#?}");
    let fields = &dlq_logs[0]["fields"];
    assert_eq!(fields["event_id"], "EvDead1");
    assert_eq!(fields["channel"], "C0DEAD");
    assert_eq!(fields["archive_key"], "raw/2025/11/24/EvDead1.json");
    assert_eq!(fields["topic"], config.raw_topic.as_str());
    assert_eq!(fields["partition"], raw_partition);
    assert_eq!(fields["offset"], raw_offset);
    assert!(
        fields["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("too large"),
        "{fields}"
    );
    // The per-event span (info level) names the raw event, so any error or panic
    // inside its outcome carries these as tags.
    let span = &dlq_logs[0]["span"];
    assert_eq!(span["name"], "raw_event", "{:#}", dlq_logs[0]);
    assert_eq!(span["topic"], config.raw_topic.as_str());
    assert_eq!(span["partition"], raw_partition);
    assert_eq!(span["offset"], raw_offset);
    assert_eq!(span["channel"], "C0DEAD");
    assert_eq!(span["event_id"], "EvDead1");
    assert_eq!(span["archive_key"], "raw/2025/11/24/EvDead1.json");
    assert_eq!(errors.len(), 1, "no other error event: {errors:#?}");
    assert!(
        !serde_json::to_string(&errors).unwrap().contains(TEXT),
        "no message text in error events"
    );

    // A restart: the in-process counter starts again at 0, the DLQ topic still
    // holds the record, and the next process's first reading shows it.
    shutdown.trigger();
    first.wait().await.unwrap();
    let shutdown = Shutdown::new();
    let second = Normalizer::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    slackline_testkit::wait_until(
        "the next process's reading of the DLQ's end offsets",
        Duration::from_secs(30),
        || {
            let seen = has_series(&second, "slackline_dlq_end_offset", &group);
            async move { seen }
        },
    )
    .await;
    assert_eq!(
        metric(&second, "slackline_dlq_end_offset", &[("group", &group)]),
        1.0
    );
    assert_eq!(
        metric(
            &second,
            "slackline_normalizer_outcomes_total",
            &[("outcome", "dlq")]
        ),
        0.0,
        "the new process's counter knows nothing of it"
    );
    assert_eq!(
        metric(&second, "slackline_normalizer_consumed_total", &[]),
        0.0,
        "the dead-lettered raw event was committed, not read again"
    );
    shutdown.trigger();
    second.wait().await.unwrap();
    assert_eq!(
        captured
            .errors()
            .iter()
            .filter(|e| e["fields"]["message"] == "record sent to the DLQ")
            .count(),
        1
    );
}
