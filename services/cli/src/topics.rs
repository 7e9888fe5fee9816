//! `slackline topics create`: every slackline topic, with its partitions and configs,
//! created where missing (existing topics are left as they are).

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use slackline_kafka::topics::{all_topics, create_topics, Created};
use slackline_kafka::{KafkaError, KafkaSettings};

/// Creates the topics; returns what happened to each.
pub async fn create(
    settings: &KafkaSettings,
    partitions: i32,
    replication: i32,
) -> Result<Vec<Created>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config("slackline-topics").create()?;
    create_topics(
        &admin,
        &all_topics(partitions),
        replication,
        Duration::from_secs(30),
    )
    .await
}
