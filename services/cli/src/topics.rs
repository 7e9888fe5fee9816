//! `slackline topics create`: every slackline topic, with its partitions and configs,
//! created where missing (existing topics are left as they are).

use slackline_kafka::topics::{create as create_specs, Created, TopicNames};
use slackline_kafka::{KafkaError, KafkaSettings};

/// `slackline topics`' flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// `slackline topics` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Create every slackline topic that does not exist yet (idempotent).
    Create {
        /// Kafka bootstrap servers.
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
        bootstrap: String,
        /// Partitions per flow topic (keep them equal: co-partitioning).
        #[arg(long, default_value_t = slackline_kafka::topics::DEFAULT_PARTITIONS)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 3)]
        replication_factor: i32,
        /// A prefix for every topic name (several pipelines on one cluster).
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// `slackline topics create`: creates the topics and prints what happened to each.
///
/// # Errors
///
/// `KAFKA_PROPERTIES` is malformed, or Kafka refuses.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Command::Create {
        bootstrap,
        partitions,
        replication_factor,
        prefix,
    } = args.command;
    let settings = crate::common::kafka_settings(bootstrap)?;
    let names = TopicNames::with_prefix(prefix);
    for created in create(&settings, &names, partitions, replication_factor).await? {
        match created {
            Created::Created(name) => println!("created {name}"),
            Created::Existed(name) => println!("exists  {name}"),
        }
    }
    Ok(())
}

/// Creates the topics (under `names`' prefix); returns what happened to each.
pub async fn create(
    settings: &KafkaSettings,
    names: &TopicNames,
    partitions: i32,
    replication: i32,
) -> Result<Vec<Created>, KafkaError> {
    create_specs(settings, &names.specs(partitions), replication).await
}
