//! `slackline`: argument parsing and printing; the work is in the library modules.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use slackline::{dev, dlq, send, tail, topics};
use slackline_kafka::{parse_properties, KafkaSettings};
use slackline_service::{init_telemetry, LogFormat, Shutdown};
use slackline_slack::SigningSecrets;

#[derive(Parser)]
#[command(
    name = "slackline",
    version,
    about = "Operate slackline: local run, test events, topics, tail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline locally: mock Kafka cluster, file archive, edge, normalizer.
    Dev {
        /// Edge port (Slack's requests).
        #[arg(long, default_value_t = 3000)]
        port: u16,
        /// Admin port (/metrics, /healthz, /readyz).
        #[arg(long, default_value_t = 9000)]
        admin_port: u16,
        /// State directory.
        #[arg(long, default_value = ".slackline")]
        dir: PathBuf,
        /// Partitions per topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Signing secrets accepted (comma-separated).
        #[arg(long, env = "SLACK_SIGNING_SECRETS", default_value = dev::DEV_SECRET, hide_env_values = true)]
        secrets: String,
    },
    /// Sign JSON bodies (files or directories) and post them to an edge.
    Send {
        /// Files or directories of .json bodies.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The edge's URL.
        #[arg(long, default_value = "http://127.0.0.1:3000/slack/events")]
        url: String,
        /// Signing secret (the first of a comma-separated list is used).
        #[arg(long, env = "SLACK_SIGNING_SECRETS", default_value = dev::DEV_SECRET, hide_env_values = true)]
        secret: String,
        /// Send as Slack's retry number N (adds X-Slack-Retry-Num).
        #[arg(long)]
        retry_num: Option<u32>,
        /// Post files as they are (do not wrap bare inner events in an envelope).
        #[arg(long)]
        raw: bool,
    },
    /// Manage topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Read and redrive dead letters (`<group>.dlq`, `slack.events.raw.dlq`).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print a topic's records as JSON lines, from the beginning, following new ones.
    Tail {
        /// The topic.
        topic: String,
        /// Kafka bootstrap servers.
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
        bootstrap: String,
        /// Stop when every partition has been read to its end.
        #[arg(long)]
        exit_at_end: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
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

#[derive(Subcommand)]
enum TopicsCommand {
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
    },
}

/// Bootstrap from the flag, extra properties from `KAFKA_PROPERTIES`.
fn kafka_settings(bootstrap: String) -> anyhow::Result<KafkaSettings> {
    let properties = match std::env::var("KAFKA_PROPERTIES") {
        Ok(raw) => parse_properties(&raw)
            .map_err(anyhow::Error::msg)
            .context("KAFKA_PROPERTIES")?,
        Err(_) => Vec::new(),
    };
    Ok(KafkaSettings {
        bootstrap_servers: bootstrap,
        properties,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev {
            port,
            admin_port,
            dir,
            partitions,
            secrets,
        } => {
            init_telemetry("slackline-dev", LogFormat::Text);
            let secrets = SigningSecrets::parse_list(&secrets)
                .context("--secrets / SLACK_SIGNING_SECRETS")?;
            let shutdown = Shutdown::on_signals();
            // The normalizer's optional settings, read as the service reads them.
            let mut env = slackline_service::Env::from_process();
            let bot_tokens = slackline_normalizer::config::bot_tokens_from_env(&mut env);
            let rules = slackline_normalizer::config::rules_from_env(&env);
            let slack_api_base_url = env.string_or(
                "SLACK_API_BASE_URL",
                slackline_normalizer::config::DEFAULT_SLACK_API,
            );
            env.finish()?;
            let options = dev::DevOptions {
                bind: [127, 0, 0, 1].into(),
                port,
                admin_port,
                dir,
                partitions,
                secrets,
                bot_tokens,
                slack_api_base_url,
                rules,
            };
            let stack = dev::start(options, shutdown).await?;
            println!("slackline dev is running (ctrl-c to stop)");
            println!("  Slack webhook URL:  {}", stack.webhook_url());
            println!(
                "  Kafka bootstrap:    {}  (librdkafka mock cluster, 3 brokers)",
                stack.bootstrap
            );
            println!(
                "  edge admin:         {}/metrics  /healthz  /readyz",
                stack.admin_url()
            );
            println!(
                "  normalizer admin:   {}/metrics",
                stack.normalizer_admin_url()
            );
            println!("  archive:            {}", stack.archive_url);
            println!("try:");
            println!(
                "  cargo run -q -p slackline -- send --url {} testdata/events",
                stack.webhook_url()
            );
            println!(
                "  cargo run -q -p slackline -- tail slack.messages.v1 --bootstrap {} --exit-at-end",
                stack.bootstrap
            );
            stack.wait().await?;
            Ok(())
        }
        Command::Send {
            paths,
            url,
            secret,
            retry_num,
            raw,
        } => {
            let secret = secret
                .split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .unwrap_or_default()
                .to_owned();
            if secret.is_empty() {
                bail!("--secret / SLACK_SIGNING_SECRETS is empty");
            }
            let files = send::collect_files(&paths)?;
            let options = send::SendOptions {
                url,
                secret,
                retry_num,
                raw,
            };
            let results = send::send_files(&files, &options).await?;
            for r in &results {
                let status = r.status.map_or_else(|| "ERR".to_owned(), |s| s.to_string());
                let note = if r.wrapped {
                    " (wrapped in an envelope)"
                } else {
                    ""
                };
                let error = r
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                println!("{status} {}{note}{error}", r.path.display());
            }
            println!("{}", send::summary(&results));
            if results.iter().any(|r| r.status != Some(200)) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    bootstrap,
                    partitions,
                    replication_factor,
                },
        } => {
            let settings = kafka_settings(bootstrap)?;
            for created in topics::create(&settings, partitions, replication_factor).await? {
                match created {
                    slackline_kafka::topics::Created::Created(name) => println!("created {name}"),
                    slackline_kafka::topics::Created::Existed(name) => println!("exists  {name}"),
                }
            }
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::List { topic, bootstrap },
        } => {
            let settings = kafka_settings(bootstrap)?;
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                tail::tail(&settings, &topic, true, &AtomicBool::new(false), &mut out)
            })
            .await??;
            Ok(())
        }
        Command::Dlq {
            command:
                DlqCommand::Redrive {
                    topic,
                    bootstrap,
                    partition,
                    offset,
                    dry_run,
                },
        } => {
            let settings = kafka_settings(bootstrap)?;
            let selection = dlq::Selection {
                only: partition.zip(offset),
            };
            let summary = dlq::redrive(&settings, &topic, selection, dry_run).await?;
            for line in &summary.lines {
                println!(
                    "{}{line}",
                    if dry_run {
                        "would redrive "
                    } else {
                        "redrove "
                    }
                );
            }
            for line in &summary.unreadable {
                println!("skipped (not a DLQ record) {line}");
            }
            println!(
                "{} {}, {} unreadable",
                if dry_run { "would redrive" } else { "redrove" },
                summary.redriven,
                summary.unreadable.len()
            );
            Ok(())
        }
        Command::Tail {
            topic,
            bootstrap,
            exit_at_end,
        } => {
            let settings = kafka_settings(bootstrap)?;
            let stop = Arc::new(AtomicBool::new(false));
            tokio::task::spawn_blocking(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                tail::tail(&settings, &topic, exit_at_end, &stop, &mut out)
            })
            .await??;
            Ok(())
        }
    }
}
