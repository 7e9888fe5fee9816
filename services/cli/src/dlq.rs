//! `slackline dlq`: read and redrive dead letters.
//!
//! Every DLQ topic (`<group>.dlq`, `slack.events.raw.dlq`) holds JSON records in one
//! format ([`slackline_consumer::DlqRecord`]): the error, the original coordinates,
//! key, headers and payload. `list` prints them; `redrive` produces each one back to
//! its original topic with its key, headers and payload, in DLQ order (a key's dead
//! letters share a DLQ partition, so a key's order is kept). Redriving twice is
//! harmless: every effect downstream is idempotent on the event (guarantee 2).

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use slackline_kafka::KafkaSettings;

use crate::tail::{for_each_record, TailError};

/// `slackline dlq`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// `slackline dlq` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print every dead letter of a DLQ topic as JSON lines, then exit.
    List {
        /// The DLQ topic, e.g. `notifier.dlq` or `slack.events.raw.dlq`.
        topic: String,
        /// Kafka bootstrap servers.
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
        bootstrap: String,
    },
    /// Produce dead letters back to their original topics, in DLQ order.
    Redrive {
        /// The DLQ topic.
        topic: String,
        /// Kafka bootstrap servers.
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
        bootstrap: String,
        /// Only the record at this partition (with --offset).
        #[arg(long, requires = "offset")]
        partition: Option<i32>,
        /// Only the record at this offset (with --partition).
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
        /// Print what would be redriven, produce nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `slackline dlq list|redrive`.
///
/// # Errors
///
/// `KAFKA_PROPERTIES` is malformed, Kafka fails, or a redrive cannot be produced.
pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List { topic, bootstrap } => {
            let settings = crate::common::kafka_settings(bootstrap)?;
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                crate::tail::tail(&settings, &topic, true, &AtomicBool::new(false), &mut out)
            })
            .await??;
            Ok(())
        }
        Command::Redrive {
            topic,
            bootstrap,
            partition,
            offset,
            dry_run,
        } => {
            let settings = crate::common::kafka_settings(bootstrap)?;
            let selection = Selection {
                only: partition.zip(offset),
            };
            let summary = redrive(&settings, &topic, selection, dry_run).await?;
            let verb = if dry_run { "would redrive" } else { "redrove" };
            for line in &summary.lines {
                println!("{verb} {line}");
            }
            for line in &summary.unreadable {
                println!("skipped (not a DLQ record) {line}");
            }
            println!(
                "{verb} {}, {} unreadable",
                summary.redriven,
                summary.unreadable.len()
            );
            Ok(())
        }
    }
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection {
    /// Only the record at this (partition, offset) of the DLQ topic.
    pub only: Option<(i32, i64)>,
}

/// What `redrive` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveSummary {
    /// Records put back (or that would be, in a dry run).
    pub redriven: u64,
    /// Records that are not readable DLQ records (left where they are).
    pub unreadable: Vec<String>,
    /// Per record: `partition/offset -> topic`.
    pub lines: Vec<String>,
}

/// Errors of `redrive`.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Reading the DLQ topic failed.
    #[error(transparent)]
    Read(#[from] TailError),
    /// Creating the producer failed.
    #[error(transparent)]
    Kafka(#[from] slackline_kafka::KafkaError),
    /// Producing a record back failed; earlier ones were produced.
    #[error("redriving {coordinates} to {topic}: {reason}")]
    Produce {
        /// The DLQ record.
        coordinates: String,
        /// Its original topic.
        topic: String,
        /// Kafka's error.
        reason: String,
    },
}

/// Puts dead letters of `dlq_topic` back into their original topics. Blocking reads,
/// async produce: call from a runtime.
pub async fn redrive(
    settings: &KafkaSettings,
    dlq_topic: &str,
    selection: Selection,
    dry_run: bool,
) -> Result<RedriveSummary, DlqError> {
    let settings_for_read = settings.clone();
    let topic = dlq_topic.to_owned();
    let records = tokio::task::spawn_blocking(move || {
        let mut records = Vec::new();
        for_each_record(
            &settings_for_read,
            &topic,
            true,
            &AtomicBool::new(false),
            &mut |m| {
                let wanted = selection
                    .only
                    .is_none_or(|only| only == (m.partition(), m.offset()));
                if wanted {
                    records.push((
                        m.partition(),
                        m.offset(),
                        m.payload().unwrap_or_default().to_vec(),
                    ));
                }
                Ok(())
            },
        )
        .map(|_| records)
    })
    .await
    .map_err(|e| TailError::Output(std::io::Error::other(e.to_string())))??;

    let producer: FutureProducer =
        settings.producer("slackline-redrive", Duration::from_secs(30))?;
    let mut summary = RedriveSummary::default();
    for (partition, offset, value) in records {
        let coordinates = format!("{dlq_topic}/{partition}/{offset}");
        let back = match slackline_consumer::redrive(&value) {
            Ok(back) => back,
            Err(e) => {
                summary.unreadable.push(format!("{coordinates}: {e}"));
                continue;
            }
        };
        summary
            .lines
            .push(format!("{coordinates} -> {}", back.topic));
        summary.redriven += 1;
        if dry_run {
            continue;
        }
        let mut record = FutureRecord::to(&back.topic)
            .payload(&back.payload)
            .headers(back.owned_headers());
        if let Some(key) = &back.key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| DlqError::Produce {
                coordinates: coordinates.clone(),
                topic: back.topic.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(summary)
}
