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

/// Every slackline topic for a cluster with `partitions` partitions per flow topic,
/// under their standard names.
pub fn all_topics(partitions: i32) -> Vec<TopicSpec> {
    TopicNames::default().specs(partitions)
}

/// slackline's topic and consumer-group names, all under one prefix (empty by
/// default). A prefix lets several pipelines share one cluster: the tests give each
/// test its own, on one broker. A group's retry and DLQ topics are named after the
/// prefixed group (`{prefix}{group}.retry`), as the consumer runtime derives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    /// Names under `prefix` (used as is: include a separator such as `.` or `-`).
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        TopicNames {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `base` under the prefix (a topic or a group id).
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// [`RAW_EVENTS`] under the prefix.
    pub fn raw_events(&self) -> String {
        self.name(RAW_EVENTS)
    }

    /// [`MESSAGES`] under the prefix.
    pub fn messages(&self) -> String {
        self.name(MESSAGES)
    }

    /// [`THREAD_EVENTS`] under the prefix.
    pub fn thread_events(&self) -> String {
        self.name(THREAD_EVENTS)
    }

    /// [`REPLIES`] under the prefix.
    pub fn replies(&self) -> String {
        self.name(REPLIES)
    }

    /// [`RAW_DLQ`] under the prefix.
    pub fn raw_dlq(&self) -> String {
        self.name(RAW_DLQ)
    }

    /// A consumer group id under the prefix.
    pub fn group(&self, group: &str) -> String {
        self.name(group)
    }

    /// A group's retry topic.
    pub fn retry(&self, group: &str) -> String {
        format!("{}.retry", self.group(group))
    }

    /// A group's DLQ topic.
    pub fn dlq(&self, group: &str) -> String {
        format!("{}.dlq", self.group(group))
    }

    /// Every topic with its partitions and configs.
    pub fn specs(&self, partitions: i32) -> Vec<TopicSpec> {
        let flow = |name: String, retention_days: i64| TopicSpec {
            name,
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
            flow(self.raw_events(), 7),
            flow(self.messages(), 14),
            flow(self.thread_events(), 14),
            flow(self.replies(), 7),
            dlq(self.raw_dlq()),
        ];
        for group in GROUPS {
            topics.push(flow(self.retry(group), 14));
            topics.push(dlq(self.dlq(group)));
        }
        topics
    }
}

/// Creates `topics` where missing on the cluster of `settings` (idempotent): the
/// path of `slackline topics create`, `slackline dev --kafka=embedded` and the tests.
pub async fn create(
    settings: &crate::KafkaSettings,
    topics: &[TopicSpec],
    replication: i32,
) -> Result<Vec<Created>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config("slackline-topics").create()?;
    let created = create_topics(&admin, topics, replication, Duration::from_secs(30)).await?;
    // CreateTopics answers once the controller has recorded a topic; the broker that
    // serves metadata learns of it a moment later. Services check their topics once at
    // start, so return only when every topic is visible with a leader per partition.
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer =
            settings.client_config("slackline-topics").create()?;
        wait_visible(
            rdkafka::consumer::Consumer::client(&client),
            &names,
            Duration::from_secs(30),
        )
    })
    .await
    .map_err(|e| KafkaError::CreateTopic {
        topic: String::new(),
        reason: format!("metadata wait: {e}"),
    })??;
    Ok(created)
}

/// Waits until the cluster's metadata lists every topic of `names` with a leader for
/// each partition. Blocking.
pub fn wait_visible<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    names: &[String],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    for name in names {
        loop {
            let visible = client
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .is_some_and(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                });
            if visible {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(KafkaError::CreateTopic {
                    topic: name.clone(),
                    reason: format!("created, but not in the cluster's metadata after {timeout:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
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

    #[test]
    fn a_prefix_names_every_topic_and_group_alike() {
        let names = TopicNames::with_prefix("t1.");
        assert_eq!(names.messages(), "t1.slack.messages.v1");
        assert_eq!(names.group("notifier"), "t1.notifier");
        assert_eq!(names.retry("notifier"), "t1.notifier.retry");
        assert_eq!(names.dlq("notifier"), "t1.notifier.dlq");
        let specs = names.specs(3);
        assert_eq!(specs.len(), all_topics(3).len());
        assert!(specs.iter().all(|t| t.name.starts_with("t1.")));
    }
}
