//! `slackline tail <topic>`: a topic's records from the beginning as JSON lines
//! (partition, offset, timestamp, key, headers, value), following new ones.
//!
//! A value in Avro single-object encoding whose schema slackline knows (the message
//! events) is decoded and printed as JSON with `value_format: "avro"`; a JSON value
//! (raw Slack bodies, DLQ records) is printed as JSON; anything else as
//! `value_base64`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use slackline_kafka::{KafkaError, KafkaSettings};

/// `slackline tail`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The topic.
    pub topic: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap: String,
    /// Stop when every partition has been read to its end.
    #[arg(long)]
    pub exit_at_end: bool,
}

/// `slackline tail`: prints the topic to stdout.
///
/// # Errors
///
/// `KAFKA_PROPERTIES` is malformed, Kafka fails, or stdout is closed.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = crate::common::kafka_settings(args.bootstrap)?;
    tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        tail(
            &settings,
            &args.topic,
            args.exit_at_end,
            &AtomicBool::new(false),
            &mut out,
        )
    })
    .await??;
    Ok(())
}

/// Errors of `tail`.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Writing the output failed (a closed pipe, say).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl From<RdKafkaError> for TailError {
    fn from(e: RdKafkaError) -> Self {
        TailError::Kafka(KafkaError::Client(e))
    }
}

/// Prints `topic` to `out` until every partition is at its end (`exit_at_end`) or
/// `stop` is set. Returns how many records were printed. Blocking.
pub fn tail(
    settings: &KafkaSettings,
    topic: &str,
    exit_at_end: bool,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<u64, TailError> {
    let printed = for_each_record(settings, topic, exit_at_end, stop, &mut |message| {
        serde_json::to_writer(&mut *out, &record_json(message)).map_err(std::io::Error::from)?;
        out.write_all(b"\n")
    })?;
    out.flush()?;
    Ok(printed)
}

/// Calls `on_record` for every record of `topic` from the beginning, partition by
/// partition in offset order, until every partition is at its end (`exit_at_end`)
/// or `stop` is set. Never joins a consumer group or commits. Blocking.
pub fn for_each_record(
    settings: &KafkaSettings,
    topic: &str,
    exit_at_end: bool,
    stop: &AtomicBool,
    on_record: &mut dyn FnMut(&BorrowedMessage<'_>) -> std::io::Result<()>,
) -> Result<u64, TailError> {
    let consumer: BaseConsumer = settings
        .client_config("slackline-tail")
        .set("group.id", "slackline-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(KafkaError::from)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaError::MissingTopic(topic.to_owned()).into());
    }
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut at_end: BTreeMap<i32, bool> = partitions.iter().map(|p| (*p, false)).collect();
    let mut seen = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(message)) => {
                at_end.insert(message.partition(), false);
                on_record(&message)?;
                seen += 1;
            }
            Some(Err(RdKafkaError::PartitionEOF(p))) => {
                at_end.insert(p, true);
                if exit_at_end && at_end.values().all(|e| *e) {
                    break;
                }
            }
            Some(Err(RdKafkaError::MessageConsumption(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ))) => {
                return Err(KafkaError::MissingTopic(topic.to_owned()).into());
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consume error"),
        }
    }
    Ok(seen)
}

/// One record as a JSON object.
pub fn record_json(message: &BorrowedMessage<'_>) -> serde_json::Value {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut obj = serde_json::Map::new();
    obj.insert("topic".into(), message.topic().into());
    obj.insert("partition".into(), message.partition().into());
    obj.insert("offset".into(), message.offset().into());
    if let Some(ts) = message.timestamp().to_millis() {
        obj.insert("timestamp_ms".into(), ts.into());
    }
    obj.insert(
        "key".into(),
        match message.key() {
            None => serde_json::Value::Null,
            Some(k) => match std::str::from_utf8(k) {
                Ok(text) => text.into(),
                Err(_) => b64(k).into(),
            },
        },
    );
    let headers: serde_json::Map<String, serde_json::Value> = message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let value = h.value.map(|v| match std::str::from_utf8(v) {
                        Ok(text) => serde_json::Value::from(text),
                        Err(_) => b64(v).into(),
                    });
                    (h.key.to_owned(), value.unwrap_or(serde_json::Value::Null))
                })
                .collect()
        })
        .unwrap_or_default();
    obj.insert("headers".into(), headers.into());
    match message.payload() {
        None => {
            obj.insert("value".into(), serde_json::Value::Null);
        }
        Some(bytes) => {
            if let Some(json) = slackline_events::decode_any_to_json(bytes) {
                obj.insert("value_format".into(), "avro".into());
                obj.insert("value".into(), json);
            } else if let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) {
                obj.insert("value_format".into(), "json".into());
                obj.insert("value".into(), json);
            } else {
                obj.insert("value_base64".into(), b64(bytes).into());
            }
        }
    }
    serde_json::Value::Object(obj)
}
