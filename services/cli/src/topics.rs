//! `slackline topics create`: every slackline topic, with its partitions and configs,
//! created where missing (existing topics are left as they are).

use slackline_kafka::topics::{create as create_specs, Created, TopicNames};
use slackline_kafka::{KafkaError, KafkaSettings};

/// Creates the topics (under `names`' prefix); returns what happened to each.
pub async fn create(
    settings: &KafkaSettings,
    names: &TopicNames,
    partitions: i32,
    replication: i32,
) -> Result<Vec<Created>, KafkaError> {
    create_specs(settings, &names.specs(partitions), replication).await
}
