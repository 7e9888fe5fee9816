//! `slackline topics create` as operators run it, on the shared Apache Kafka broker
//! (under a prefix of this test's own): every topic of [`TopicNames::specs`] is
//! created with its partition count and `retention.ms`, as the broker reports them
//! back (metadata and DescribeConfigs); a second run changes nothing and says so
//! for every topic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use slackline_kafka::topics::TopicNames;
use slackline_testkit::cluster::TestCluster;

const PARTITIONS: i32 = 6;

/// Runs `slackline topics create` and returns its lines.
fn topics_create(bootstrap: &str, prefix: &str) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slackline"))
        .args([
            "topics",
            "create",
            "--bootstrap",
            bootstrap,
            "--prefix",
            prefix,
        ])
        .args(["--partitions", &PARTITIONS.to_string()])
        .args(["--replication-factor", "1"])
        .env_remove("KAFKA_PROPERTIES")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "topics create failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// Partition counts of the topics under `prefix`, from the broker's metadata.
fn partitions_under(bootstrap: &str, prefix: &str) -> BTreeMap<String, i32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .filter(|t| t.name().starts_with(prefix))
        .map(|t| {
            assert!(t.error().is_none(), "{}: {:?}", t.name(), t.error());
            (t.name().to_owned(), t.partitions().len() as i32)
        })
        .collect()
}

/// `retention.ms` of each topic, from DescribeConfigs.
async fn retention_ms(bootstrap: &str, topics: &[String]) -> BTreeMap<String, String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let specifiers: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(t.as_str()))
        .collect();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin.describe_configs(&specifiers, &options).await.unwrap();
    topics
        .iter()
        .zip(results)
        .map(|(topic, result)| {
            let resource = result.unwrap_or_else(|e| panic!("describe {topic}: {e}"));
            let entry = resource
                .get("retention.ms")
                .unwrap_or_else(|| panic!("{topic} has no retention.ms"));
            assert!(
                !entry.is_default,
                "{topic}: retention.ms is the broker default, not the topic's own"
            );
            (topic.clone(), entry.value.clone().unwrap_or_default())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_create_makes_every_topic_with_its_partitions_and_retention_then_is_idempotent() {
    let cluster = TestCluster::kafka();
    let bootstrap = cluster.bootstrap_servers();
    let prefix = cluster.names().prefix().to_owned();
    let specs = TopicNames::with_prefix(&prefix).specs(PARTITIONS);
    assert_eq!(&TopicNames::with_prefix(&prefix), cluster.names());

    let first = topics_create(&bootstrap, &prefix);
    let mut want_created: Vec<String> = specs
        .iter()
        .map(|s| format!("created {}", s.name))
        .collect();
    let mut got = first.clone();
    want_created.sort();
    got.sort();
    assert_eq!(got, want_created, "first run creates every topic");

    // The broker reports every topic with the spec's partitions and retention, and
    // nothing else under the prefix.
    let (b, p) = (bootstrap.clone(), prefix.clone());
    let partitions = tokio::task::spawn_blocking(move || partitions_under(&b, &p))
        .await
        .unwrap();
    let want_partitions: BTreeMap<String, i32> = specs
        .iter()
        .map(|s| (s.name.clone(), s.partitions))
        .collect();
    assert_eq!(partitions, want_partitions);
    // Flow topics share one partition count (co-partitioning); DLQs have fewer.
    assert_eq!(partitions[&cluster.names().messages()], PARTITIONS);
    assert_eq!(partitions[&cluster.names().retry("notifier")], PARTITIONS);
    assert_eq!(partitions[&cluster.names().dlq("notifier")], PARTITIONS / 4);

    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let retention = retention_ms(&bootstrap, &names).await;
    let want_retention: BTreeMap<String, String> = specs
        .iter()
        .map(|s| {
            let value = s
                .configs
                .iter()
                .find(|(k, _)| *k == "retention.ms")
                .map(|(_, v)| v.clone())
                .expect("every spec sets retention.ms");
            (s.name.clone(), value)
        })
        .collect();
    assert_eq!(retention, want_retention);
    // 90 days for dead letters (they wait for a human), 14 for the messages.
    assert_eq!(
        retention[&cluster.names().raw_dlq()],
        (90_i64 * 24 * 3600 * 1000).to_string()
    );
    assert_eq!(
        retention[&cluster.names().messages()],
        (14_i64 * 24 * 3600 * 1000).to_string()
    );

    // Again: every topic already exists, nothing changes.
    let mut second = topics_create(&bootstrap, &prefix);
    second.sort();
    let mut want_exists: Vec<String> = specs
        .iter()
        .map(|s| format!("exists  {}", s.name))
        .collect();
    want_exists.sort();
    assert_eq!(second, want_exists, "second run: every line `exists`");
    let (b, p) = (bootstrap.clone(), prefix.clone());
    let after = tokio::task::spawn_blocking(move || partitions_under(&b, &p))
        .await
        .unwrap();
    assert_eq!(after, want_partitions);
}
