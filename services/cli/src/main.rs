//! `slackline`: parses the arguments and dispatches to the command's module; every
//! command's flags and work live in its module (`Args` and `run`).

use clap::{Parser, Subcommand};
use slackline::{
    backfill, dev, dlq, migrate, replay, replies, rewind, send, tail, threads, topics,
};

#[derive(Parser)]
#[command(
    name = "slackline",
    version,
    about = "Operate slackline: local run, test events, topics, tail, DLQ, threads, replies, rewind, replay, backfill"
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
    Dev(dev::Args),
    /// Create or update the consumer groups' PostgreSQL schemas (each service also
    /// does this for its own schema when it starts).
    Migrate(migrate::Args),
    /// List support threads, most recently updated first.
    Threads(threads::ListArgs),
    /// Show one support thread, its timeline and its replies with their delivery
    /// state (pending, sent with ts, failed with error).
    Thread(threads::ShowArgs),
    /// Send an agent's reply into a thread's Slack thread: produces a reply record on
    /// `support.replies` for the slack-sender (what a support platform's API does).
    Reply(replies::Args),
    /// Sign JSON bodies (files or directories) and post them to an edge.
    Send(send::Args),
    /// Manage topics.
    Topics(topics::Args),
    /// Read and redrive dead letters (`<group>.dlq`, `slack.events.raw.dlq`).
    Dlq(dlq::Args),
    /// Print a topic's records as JSON lines, from the beginning, following new ones.
    Tail(tail::Args),
    /// Move a consumer group's committed offsets (its source topic and its retry
    /// topic) to a time, the earliest or latest offsets, or given offsets; refuses
    /// while the group has active members.
    Rewind(rewind::Args),
    /// Produce the archived requests received in [--from, --to) back onto
    /// slack.events.raw (keyed and headed like the edge's, plus slackline-replay),
    /// optionally filtered by channel, team, event type; --dry-run counts.
    Replay(replay::Args),
    /// Recover from a bug that dropped or mangled messages between two times, while
    /// everything runs: replays the archive range into the pipeline.
    Backfill(backfill::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev(args) => dev::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Threads(args) => threads::run_list(args).await,
        Command::Thread(args) => threads::run_show(args).await,
        Command::Reply(args) => replies::run(args).await,
        Command::Send(args) => send::run(args).await,
        Command::Topics(args) => topics::run(args).await,
        Command::Dlq(args) => dlq::run(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::Rewind(args) => rewind::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Backfill(args) => backfill::run(args).await,
    }
}
