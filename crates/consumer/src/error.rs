//! The one error type of the crate.

/// What can stop the runtime from starting or running, or make a DLQ record unreadable.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The runtime configuration is unusable (an empty group, no concurrency, ...).
    #[error("invalid consumer runtime config: {0}")]
    Config(String),
    /// librdkafka refused a configuration or failed a request.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Creating a client through the shared Kafka settings failed.
    #[error(transparent)]
    Settings(#[from] slackline_kafka::KafkaError),
    /// A topic the runtime needs is not in the cluster's metadata.
    #[error("topic {0} does not exist (create it with `slackline topics create`)")]
    MissingTopic(String),
    /// The source and retry topics have different partition counts, so a key's retry
    /// records could not be owned by the member that owns its source partition.
    #[error(
        "{source_topic} has {source_partitions} partitions but {retry_topic} has \
         {retry_partitions}: the retry topic must be co-partitioned with its source"
    )]
    NotCoPartitioned {
        /// The source topic.
        source_topic: String,
        /// Its partition count.
        source_partitions: usize,
        /// The group's retry topic.
        retry_topic: String,
        /// Its partition count.
        retry_partitions: usize,
    },
    /// An assignment gave this member a source partition without the retry partition
    /// of the same number (or the other way round).
    #[error("assignment is not co-partitioned: {0}")]
    UnpairedAssignment(String),
    /// A record could not be handed to the retry or DLQ topic. The runtime stops
    /// rather than let a later record of the key overtake it; nothing past it is
    /// committed, so a restart re-reads it.
    #[error("producing to {topic} [{partition:?}] failed: {reason}")]
    Produce {
        /// The retry or DLQ topic.
        topic: String,
        /// The partition, when it was chosen explicitly.
        partition: Option<i32>,
        /// The producer's error.
        reason: String,
    },
    /// Registering the metrics failed (a programming error, such as two
    /// [`crate::ConsumerMetrics`] in one registry).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A DLQ record is not the JSON this crate writes.
    #[error("invalid DLQ record: {0}")]
    InvalidDlqRecord(String),
    /// The runtime stopped without its final commit (or without leaving the group)
    /// within [`crate::FINAL_COMMIT_BUDGET`] after the grace; what it had committed
    /// before stays, the rest is handled again by the next owner.
    #[error("consumer runtime stopped uncleanly: {0}")]
    Shutdown(String),
    /// A runtime task panicked or the polling thread could not start.
    #[error("consumer runtime task failed: {0}")]
    Task(String),
}
