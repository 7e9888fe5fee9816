//! Review of issue 12, item 12: a DLQ write that takes long must not stop the other
//! channels' events. While one raw event's DLQ record waits for Kafka (here: the DLQ
//! topic does not exist yet, and the shared broker does not create topics, so the
//! producer holds the record until the topic appears), another channel's event is
//! read, produced and acknowledged; the stuck event's offset (and every later one)
//! is stored only once its DLQ record is acknowledged.
//! Its own test binary: it installs a process-wide subscriber that records the logs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use slackline_events::decode_message;
use slackline_kafka::topics::TopicSpec;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::{LogFormat, Shutdown};
use slackline_testkit::kafka::TestCluster;

const PARTITIONS: i32 = 4;

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
    fn contains(&self, needle: &str) -> bool {
        String::from_utf8_lossy(&self.0.lock().unwrap()).contains(needle)
    }
}

fn metric(n: &Normalizer, name: &str, labels: &[(&str, &str)]) -> f64 {
    slackline_testkit::metrics::metric(&n.registry, name, labels)
}

/// A raw `message` event of `channel` with `text`.
fn raw(channel: &str, event_id: &str, text: &str) -> (String, Vec<u8>, String) {
    let body = json!({
        "type": "event_callback", "team_id": "T0CUST", "event_id": event_id,
        "event_time": 1_764_000_000,
        "authorizations": [{"team_id": "T0HOME", "user_id": "U0BOT", "is_bot": true}],
        "event": {"type": "message", "channel": channel, "user": "U0CUST", "text": text,
                  "ts": "1764002000.000100"},
    });
    (
        channel.to_owned(),
        serde_json::to_vec(&body).unwrap(),
        event_id.to_owned(),
    )
}

/// Text that lz4 cannot shrink much (a linear congruential sequence of letters).
fn incompressible(len: usize) -> String {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + u8::try_from((x >> 33) % 26).unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_dlq_write_does_not_hold_up_other_channels() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("slackline_normalizer=debug")
        .with_writer(move || writer.clone())
        .init();

    // The messages topic takes records up to 10 kB: the 60 kB event is refused
    // (MESSAGE_TOO_LARGE), a short one is not. The DLQ topic does not exist yet.
    let cluster = TestCluster::kafka();
    let names = cluster.names();
    cluster.create_topic(&names.raw_events(), PARTITIONS);
    let small_only = TopicSpec {
        name: names.messages(),
        partitions: PARTITIONS,
        configs: vec![("max.message.bytes", "10000".to_owned())],
    };
    slackline_kafka::topics::create(&cluster.settings(), &[small_only], 1)
        .await
        .expect("create the messages topic");
    let config = NormalizerConfig {
        log_format: LogFormat::Json,
        shutdown_grace: Duration::from_secs(5),
        author_lookup_concurrency: 4,
        ..NormalizerConfig::new(cluster.settings(), names)
    };
    let shutdown = Shutdown::new();
    let normalizer = Normalizer::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    let dlq = |n: &Normalizer| {
        metric(
            n,
            "slackline_normalizer_outcomes_total",
            &[("outcome", "dlq")],
        )
    };

    // The refused event: its DLQ write starts and cannot finish.
    let big = raw("C0BIG", "EvBig1", &incompressible(60_000));
    slackline_testkit::kafka::produce_records(&cluster, &config.raw_topic, &[big]).await;
    slackline_testkit::wait_until(
        "the refused event's DLQ write to start",
        Duration::from_secs(30),
        || {
            let started = captured.contains("not produced; writing the DLQ record");
            async move { started }
        },
    )
    .await;

    // Another channel's event, read after the DLQ write started, comes out while
    // that write is still waiting.
    let small = raw("C0SMALL", "EvSmall1", "hello");
    slackline_testkit::kafka::produce_records(&cluster, &config.raw_topic, &[small]).await;
    let out = slackline_testkit::kafka::read_topic(
        &cluster.bootstrap_servers(),
        &config.messages_topic,
        PARTITIONS,
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        out.len(),
        1,
        "the other channel's event was produced while the DLQ write waited"
    );
    let event = decode_message(&out[0].payload).expect("Avro event");
    assert_eq!(event.channel_id.as_deref(), Some("C0SMALL"));
    assert_eq!(dlq(&normalizer), 0.0, "the DLQ write was still waiting");
    assert_eq!(
        metric(
            &normalizer,
            "slackline_normalizer_outcomes_total",
            &[("outcome", "full")]
        ),
        0.0,
        "the produced event is not finished before the earlier dead letter (consumption order)"
    );

    // The DLQ topic appears: the record is written, then both outcomes finish.
    cluster.create_topic(&names.raw_dlq(), 1);
    slackline_testkit::wait_until("the dead letter", Duration::from_secs(60), || {
        let done = dlq(&normalizer) == 1.0
            && metric(
                &normalizer,
                "slackline_normalizer_outcomes_total",
                &[("outcome", "full")],
            ) == 1.0;
        async move { done }
    })
    .await;
    let dead = slackline_testkit::kafka::read_topic(
        &cluster.bootstrap_servers(),
        &names.raw_dlq(),
        1,
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key.as_deref(), Some("C0BIG"));
    shutdown.trigger();
    normalizer.wait().await.expect("a clean stop");

    // Exactly one record each: nothing produced twice, nothing read again.
    let bootstrap = cluster.bootstrap_servers();
    let (messages, dlq_topic) = (config.messages_topic.clone(), names.raw_dlq());
    let (produced, dead_lettered) = tokio::task::spawn_blocking(move || {
        (
            slackline_testkit::kafka::topic_len(&bootstrap, &messages, PARTITIONS),
            slackline_testkit::kafka::topic_len(&bootstrap, &dlq_topic, 1),
        )
    })
    .await
    .unwrap();
    assert_eq!((produced, dead_lettered), (1, 1));
    let lag = {
        let bootstrap = cluster.bootstrap_servers();
        let (group, raw_topic) = (config.group_id.clone(), config.raw_topic.clone());
        tokio::task::spawn_blocking(move || {
            slackline_testkit::kafka::group_lag(&bootstrap, &group, &raw_topic, PARTITIONS)
        })
        .await
        .unwrap()
    };
    assert_eq!(lag, 0, "both raw events committed");
}
