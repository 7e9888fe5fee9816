//! Every topic slackline uses, with its partitions and configs, in one place, so that
//! `slackline topics create`, `slackline dev` and the tests agree.
//!
//! All topics of the main flow share one partition count: a channel then sits in the
//! same partition number of the raw, messages and retry topics (co-partitioning), which
//! the per-channel ordering of the consumer runtime relies on.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::KafkaError;

/// Raw Slack requests as received by the edge (key = channel id).
pub const RAW_EVENTS: &str = "slack.events.raw";
/// Typed Avro message events from the normalizer (key = channel id).
pub const MESSAGES: &str = "slack.messages.v1";
/// Support thread transitions from thread-state.
pub const THREAD_EVENTS: &str = "support.thread-events";
/// Agents' replies to send to Slack.
pub const REPLIES: &str = "support.replies";
/// Raw events the normalizer could not even degrade (JSON records with the error).
pub const RAW_DLQ: &str = "slack.events.raw.dlq";
/// The normalizer's consumer group (no retry topic: its only effect is producing to
/// Kafka, so it waits for Kafka instead of parking events).
pub const NORMALIZER_GROUP: &str = "normalizer";
/// Consumer groups that each own a retry and a DLQ topic.
pub const GROUPS: [&str; 4] = [
    "thread-state",
    "timeline-writer",
    "notifier",
    "slack-sender",
];

/// Default partitions for a real cluster.
pub const DEFAULT_PARTITIONS: i32 = 12;

/// One topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic configs (`retention.ms`, `cleanup.policy`, ...).
    pub configs: Vec<(&'static str, String)>,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Every slackline topic for a cluster with `partitions` partitions per flow topic.
pub fn all_topics(partitions: i32) -> Vec<TopicSpec> {
    let flow = |name: &str, retention_days: i64| TopicSpec {
        name: name.to_owned(),
        partitions,
        configs: vec![("retention.ms", (retention_days * DAY_MS).to_string())],
    };
    // Dead letters wait for a human: keep them long, few partitions suffice.
    let dlq = |name: String| TopicSpec {
        name,
        partitions: 1.max(partitions / 4),
        configs: vec![("retention.ms", (90 * DAY_MS).to_string())],
    };
    let mut topics = vec![
        flow(RAW_EVENTS, 7),
        flow(MESSAGES, 14),
        flow(THREAD_EVENTS, 14),
        flow(REPLIES, 7),
        dlq(RAW_DLQ.to_owned()),
    ];
    for group in GROUPS {
        topics.push(flow(&format!("{group}.retry"), 14));
        topics.push(dlq(format!("{group}.dlq")));
    }
    topics
}

/// What happened to one topic in [`create_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Newly created.
    Created(String),
    /// Already there (left as it is).
    Existed(String),
}

/// Creates the topics that do not exist yet (idempotent).
pub async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[TopicSpec],
    replication: i32,
    timeout: Duration,
) -> Result<Vec<Created>, KafkaError> {
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            t.configs.iter().fold(
                NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(replication)),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin.create_topics(&new_topics, &options).await?;
    results
        .into_iter()
        .map(|r| match r {
            Ok(name) => Ok(Created::Created(name)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(Created::Existed(name)),
            Err((topic, code)) => Err(KafkaError::CreateTopic {
                topic,
                reason: code.to_string(),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_topics_are_co_partitioned() {
        let topics = all_topics(6);
        let names: Vec<_> = topics.iter().map(|t| t.name.as_str()).collect();
        for want in [
            RAW_EVENTS,
            MESSAGES,
            THREAD_EVENTS,
            REPLIES,
            "notifier.retry",
            "notifier.dlq",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for t in topics.iter().filter(|t| !t.name.ends_with(".dlq")) {
            assert_eq!(t.partitions, 6, "{}", t.name);
        }
    }
}
