//! `slackline`: argument parsing and printing; the work is in the library modules.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use slackline::{dev, dlq, migrate, postgres, replies, send, tail, threads, topics};
use slackline_kafka::{parse_properties, KafkaSettings};
use slackline_service::{init_telemetry, LogFormat, Shutdown};
use slackline_slack::SigningSecrets;

#[derive(Parser)]
#[command(
    name = "slackline",
    version,
    about = "Operate slackline: local run, test events, topics, tail, DLQ, threads, replies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline locally: Kafka (mock cluster, embedded Apache Kafka broker or
    /// an existing cluster), file archive, PostgreSQL, edge, normalizer, thread-state,
    /// timeline-writer, notifier, slack-sender (with a Slack API stand-in unless
    /// SLACK_API_BASE_URL is set).
    Dev {
        /// Kafka: `mock` (librdkafka's mock cluster in this process, nothing to
        /// install), `embedded` (a single-node Apache Kafka broker under the state
        /// directory; needs Java 17+, and Maven once to fetch its jars), or the
        /// bootstrap servers of an existing cluster (`host:port`).
        #[arg(long, default_value = "mock", value_name = "mock|embedded|BOOTSTRAP")]
        kafka: dev::KafkaChoice,
        /// A prefix for every topic and consumer-group name (several stacks on one
        /// cluster).
        #[arg(long, default_value = "")]
        prefix: String,
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
        /// Always start a throwaway PostgreSQL cluster under the state directory, even
        /// when DATABASE_URL is set or a local server answers.
        #[arg(long)]
        embedded_postgres: bool,
    },
    /// Create or update the consumer groups' PostgreSQL schemas (each service also
    /// does this for its own schema when it starts).
    Migrate {
        /// PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// List support threads, most recently updated first.
    Threads {
        /// Only threads with this status.
        #[arg(long)]
        status: Option<Status>,
        /// Only threads of this channel.
        #[arg(long)]
        channel: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        /// PostgreSQL URL (default: the database of the last `slackline dev` run).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// State directory of `slackline dev`.
        #[arg(long, default_value = ".slackline")]
        dir: PathBuf,
    },
    /// Show one support thread, its timeline and its replies with their delivery
    /// state (pending, sent with ts, failed with error).
    Thread {
        /// The thread id (`<team>-<channel>-<root ts>`, as `threads` prints it).
        id: String,
        /// Print JSON lines: the thread, then one line per timeline entry.
        #[arg(long)]
        json: bool,
        /// PostgreSQL URL (default: the database of the last `slackline dev` run).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// State directory of `slackline dev`.
        #[arg(long, default_value = ".slackline")]
        dir: PathBuf,
    },
    /// Send an agent's reply into a thread's Slack thread: produces a reply record on
    /// `support.replies` for the slack-sender (what a support platform's API does).
    Reply {
        /// The thread id (`<team>-<channel>-<root ts>`, as `threads` prints it).
        thread_id: String,
        /// The reply (Slack mrkdwn).
        text: String,
        /// The agent's id (their Slack user id when known).
        #[arg(long, default_value = "cli")]
        agent_id: String,
        /// The agent's display name (default: $USER).
        #[arg(long)]
        agent_name: Option<String>,
        /// The idempotency key (default: a fresh UUID); sending the same id again
        /// posts nothing new.
        #[arg(long)]
        reply_id: Option<String>,
        /// Also send the reply to the channel.
        #[arg(long)]
        broadcast: bool,
        /// Kafka bootstrap servers.
        #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
        bootstrap: String,
        /// The replies topic.
        #[arg(long, default_value = slackline_kafka::topics::REPLIES)]
        topic: String,
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

/// A thread's status.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Status {
    Todo,
    Waiting,
    Done,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Todo => "todo",
            Status::Waiting => "waiting",
            Status::Done => "done",
        }
    }
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
        /// A prefix for every topic name (several pipelines on one cluster).
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

/// The database to read: the flag or `DATABASE_URL`, else the one `dev` wrote down.
async fn read_pool(
    database_url: Option<String>,
    dir: &std::path::Path,
) -> anyhow::Result<slackline_store::sqlx::PgPool> {
    let url = match database_url {
        Some(url) => url,
        None => {
            let file = dir.join(dev::DATABASE_URL_FILE);
            std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "no --database-url or DATABASE_URL, and no {} from `slackline dev`",
                        file.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
        .context("connecting to PostgreSQL")?;
    Ok(pool)
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
            kafka,
            prefix,
            port,
            admin_port,
            dir,
            partitions,
            secrets,
            embedded_postgres,
        } => {
            init_telemetry("slackline-dev", LogFormat::Text);
            let secrets_list = secrets;
            let secrets = SigningSecrets::parse_list(&secrets_list)
                .context("--secrets / SLACK_SIGNING_SECRETS")?;
            let shutdown = Shutdown::on_signals();
            // The normalizer's optional settings, read as the service reads them.
            let mut env = slackline_service::Env::from_process();
            let bot_tokens = slackline_normalizer::config::bot_tokens_from_env(&mut env);
            let rules = slackline_normalizer::config::rules_from_env(&env);
            // Unset: dev runs a Slack API stand-in of its own.
            let slack_api_base_url = env.get("SLACK_API_BASE_URL").map(str::to_owned);
            let echo_secret = secrets_list
                .split(',')
                .map(str::trim)
                .find(|s| !s.is_empty())
                .unwrap_or(dev::DEV_SECRET)
                .to_owned();
            env.finish()?;
            let database = match (embedded_postgres, std::env::var("DATABASE_URL")) {
                (true, _) => postgres::DatabaseChoice::Embedded,
                (false, Ok(url)) if !url.trim().is_empty() => postgres::DatabaseChoice::Url(url),
                (false, _) => postgres::DatabaseChoice::Auto,
            };
            let options = dev::DevOptions {
                bind: [127, 0, 0, 1].into(),
                port,
                admin_port,
                dir,
                kafka,
                topic_names: slackline_kafka::topics::TopicNames::with_prefix(prefix),
                partitions,
                secrets,
                echo_secret,
                bot_tokens,
                slack_api_base_url,
                rules,
                database,
                service_env: std::env::vars().collect(),
            };
            let stack = dev::start(options, shutdown).await?;
            let created = stack
                .topics
                .iter()
                .filter(|t| matches!(t, slackline_kafka::topics::Created::Created(_)))
                .count();
            println!("slackline dev is running (ctrl-c to stop)");
            println!("  Slack webhook URL:  {}", stack.webhook_url());
            println!("  Kafka:              {}", stack.kafka_description);
            println!(
                "  Kafka bootstrap:    {}  ({} topics: {created} created, {} already there)",
                stack.bootstrap,
                stack.topics.len(),
                stack.topics.len() - created
            );
            println!(
                "  edge admin:         {}/metrics  /healthz  /readyz",
                stack.admin_url()
            );
            println!(
                "  normalizer admin:   {}/metrics",
                stack.normalizer_admin_url()
            );
            println!(
                "  consumer groups:    thread-state {}, timeline-writer {}, notifier {}, slack-sender {} (admin)",
                stack.thread_state.admin_addr,
                stack.timeline_writer.admin_addr,
                stack.notifier.admin_addr,
                stack.slack_sender.admin_addr
            );
            println!(
                "  Slack Web API:      {}{}",
                stack.slack_api_base_url,
                if stack.slack_api.is_some() {
                    "  (dev's stand-in: replies are recorded and echoed back to the edge)"
                } else {
                    ""
                }
            );
            println!("  archive:            {}", stack.archive_url);
            println!("  PostgreSQL:         {}", stack.database.description);
            println!("try:");
            println!(
                "  cargo run -q -p slackline -- send --url {} testdata/events",
                stack.webhook_url()
            );
            println!(
                "  cargo run -q -p slackline -- tail {} --bootstrap {} --exit-at-end",
                stack.names.messages(),
                stack.bootstrap
            );
            println!("  cargo run -q -p slackline -- threads");
            println!(
                "  cargo run -q -p slackline -- reply <thread id> 'On it!' --bootstrap {} --topic {}",
                stack.bootstrap,
                stack.names.replies()
            );
            stack.wait().await?;
            Ok(())
        }
        Command::Reply {
            thread_id,
            text,
            agent_id,
            agent_name,
            reply_id,
            broadcast,
            bootstrap,
            topic,
        } => {
            let settings = kafka_settings(bootstrap)?;
            let agent_name = agent_name
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| agent_id.clone());
            let reply = replies::build(&replies::NewReply {
                thread_id,
                text,
                agent_id,
                agent_name,
                reply_id,
                broadcast,
            })?;
            let (partition, offset) = replies::produce(&settings, &topic, &reply).await?;
            println!(
                "reply {} for thread {} produced to {topic} (partition {partition}, offset {offset})",
                reply.reply_id, reply.thread_id
            );
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
                    prefix,
                },
        } => {
            let settings = kafka_settings(bootstrap)?;
            let names = slackline_kafka::topics::TopicNames::with_prefix(prefix);
            for created in topics::create(&settings, &names, partitions, replication_factor).await?
            {
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
        Command::Migrate { database_url } => {
            let settings = slackline_store::StoreSettings::new(database_url);
            for schema in migrate::migrate_all(&settings).await? {
                println!("migrated {schema}");
            }
            Ok(())
        }
        Command::Threads {
            status,
            channel,
            limit,
            json,
            database_url,
            dir,
        } => {
            let pool = read_pool(database_url, &dir).await?;
            let list =
                threads::list_threads(&pool, status.map(Status::as_str), channel.as_deref(), limit)
                    .await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if json {
                for t in &list {
                    writeln!(out, "{}", threads::thread_json(t))?;
                }
            } else {
                threads::print_threads(&mut out, &list)?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Thread {
            id,
            json,
            database_url,
            dir,
        } => {
            let pool = read_pool(database_url, &dir).await?;
            let Some((thread, entries)) = threads::thread(&pool, &id).await? else {
                bail!("no thread {id}");
            };
            let thread_replies = replies::thread_replies(&pool, &id).await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            if json {
                writeln!(out, "{}", threads::thread_json(&thread))?;
                for e in &entries {
                    writeln!(out, "{}", threads::entry_json(&thread.thread_id, e))?;
                }
                for r in &thread_replies {
                    writeln!(out, "{}", replies::reply_json(&thread.thread_id, r))?;
                }
            } else {
                threads::print_thread(&mut out, &thread, &entries)?;
                replies::print_replies(&mut out, &thread_replies)?;
            }
            out.flush()?;
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
