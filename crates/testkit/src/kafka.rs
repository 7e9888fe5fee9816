//! Reading a topic back in tests: every record of every partition from the
//! beginning, with a plain assigned consumer (no group membership, no commits).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub use crate::cluster::{Mock, TestCluster};

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, lossily as text.
    pub key: Option<String>,
    /// Headers in order, values lossily as text.
    pub headers: Vec<(String, String)>,
    /// Value bytes (empty for a null value).
    pub payload: Vec<u8>,
}

impl Record {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` (partitions `0..partitions`) from the beginning until `want` records
/// have arrived or `timeout` passes. Panics on a consumer error: this is test code.
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    want: usize,
    timeout: Duration,
) -> Vec<Record> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", crate::unique_name("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("test reader consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("partition offset");
        }
        consumer.assign(&tpl).expect("assign");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let m = message.expect("consume");
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                headers,
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
        out
    })
    .await
    .expect("reader task")
}

/// How far `group` is behind on `topic` (partitions `0..partitions`): the sum over
/// partitions of the high watermark minus the group's committed offset (a partition
/// without a committed offset counts from the low watermark). Reads the committed
/// offsets without joining the group. Panics on a Kafka error: this is test code.
pub fn group_lag(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create the lag consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("read committed offsets");
    let mut lag = 0;
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("fetch watermarks");
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        lag += (high - done).max(0);
    }
    lag
}

/// How many records `topic` (partitions `0..partitions`) holds: the sum over
/// partitions of the high minus the low watermark. Exact for topics written without
/// transactions (no control records), which is every slackline topic. Blocking; panics
/// on a Kafka error: this is test code.
pub fn topic_len(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", crate::unique_name("len"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("create the watermark consumer");
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("fetch watermarks");
            high - low
        })
        .sum()
}

/// Sends `tracing` output to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A record for [`produce_with_headers`]: key, payload, and (header, value) pairs.
pub type HeadedRecord<'h> = (String, Vec<u8>, Vec<(&'h str, String)>);

/// Produces (key, payload, event id) records to `topic` in order, each with the
/// `slack-event-id` header, and waits for every acknowledgement. Panics on a Kafka
/// error: this is test code.
pub async fn produce_records(
    cluster: &TestCluster,
    topic: &str,
    records: &[(String, Vec<u8>, String)],
) {
    let records: Vec<HeadedRecord<'_>> = records
        .iter()
        .map(|(key, payload, event_id)| {
            (
                key.clone(),
                payload.clone(),
                vec![("slack-event-id", event_id.clone())],
            )
        })
        .collect();
    produce_with_headers(cluster, topic, &records).await;
}

/// Produces (key, payload, headers) records to `topic` in order and waits for every
/// acknowledgement. Panics on a Kafka error: this is test code.
pub async fn produce_with_headers(
    cluster: &TestCluster,
    topic: &str,
    records: &[HeadedRecord<'_>],
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("log_level", "3")
        .create()
        .expect("create the test producer");
    let mut pending = Vec::new();
    for (key, payload, headers) in records {
        let headers = headers
            .iter()
            .fold(OwnedHeaders::new(), |all, (name, value)| {
                all.insert(Header {
                    key: name,
                    value: Some(value.as_str()),
                })
            });
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue a record"),
        );
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery report")
            .map_err(|(e, _)| e)
            .expect("record acknowledged");
    }
}

/// Produces message events to the cluster's `slack.messages.v1` in order,
/// Avro-encoded, key = channel (`unknown` without one), as the normalizer does.
pub async fn produce_messages(cluster: &TestCluster, events: &[slackline_events::MessageEvent]) {
    let records: Vec<(String, Vec<u8>, String)> = events
        .iter()
        .map(|e| {
            (
                e.channel_id.clone().unwrap_or_else(|| "unknown".into()),
                slackline_events::encode_message(e).expect("every event encodes"),
                e.event_id.clone(),
            )
        })
        .collect();
    produce_records(cluster, &cluster.names().messages(), &records).await;
}

/// Produces agents' replies to the cluster's `support.replies` in order,
/// Avro-encoded, key = channel, as `slackline reply` does.
pub async fn produce_replies(cluster: &TestCluster, replies: &[slackline_events::Reply]) {
    let records: Vec<(String, Vec<u8>, String)> = replies
        .iter()
        .map(|r| {
            (
                r.channel_id.clone(),
                slackline_events::encode_reply(r).expect("every reply encodes"),
                r.reply_id.clone(),
            )
        })
        .collect();
    produce_records(cluster, &cluster.names().replies(), &records).await;
}
