//! The tests' Kafka: the shared Apache Kafka broker answers, topics are created under
//! a test's own prefix with the partitions asked for, and two tests never share a
//! name.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use slackline_testkit::kafka::TestCluster;

fn partitions(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len())
}

#[test]
fn the_shared_broker_creates_every_topic_under_a_prefix_of_the_test() {
    let a = TestCluster::kafka_with_topics(3);
    let b = TestCluster::kafka();
    assert!(!a.is_mock());
    assert_ne!(a.names().prefix(), b.names().prefix());
    assert_eq!(partitions(&a.bootstrap_servers(), &a.names().messages()), 3);
    assert_eq!(
        partitions(&a.bootstrap_servers(), &a.names().retry("notifier")),
        3
    );
    assert_eq!(
        partitions(&a.bootstrap_servers(), &a.names().dlq("notifier")),
        1
    );
    // b created nothing: its names are its own.
    assert_eq!(partitions(&b.bootstrap_servers(), &b.names().messages()), 0);
    // Creating again is idempotent.
    a.create_all_topics(3);
}
