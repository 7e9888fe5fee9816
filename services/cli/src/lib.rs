//! `slackline`, the one command operators use: `dev` runs the whole pipeline locally
//! on embedded defaults, `send` signs and posts Slack bodies to an edge, `topics
//! create` prepares a cluster, `tail` prints a topic as JSON lines, `dlq` lists and
//! redrives dead letters, `migrate` prepares PostgreSQL, `threads` and `thread` show
//! support threads and their timelines (and replies), `reply` sends an agent's reply,
//! `rewind` moves a consumer group's committed offsets, `replay` produces an archive
//! range back onto the raw topic and `backfill` does that as the runbook. Each command is a module
//! with its own clap `Args`, a `run(args)` that `main.rs` dispatches to, and the
//! functions tests call directly.

pub mod backfill;
pub mod common;
pub mod dev;
pub mod dlq;
pub mod migrate;
pub mod postgres;
pub mod replay;
pub mod replies;
pub mod rewind;
pub mod send;
pub mod tail;
pub mod threads;
pub mod topics;
