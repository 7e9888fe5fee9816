//! thread-state's configuration, from environment variables (see the README's table).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use slackline_consumer::RuntimeConfig;
use slackline_events::ThreadStatus;
use slackline_kafka::{topics, KafkaSettings};
use slackline_service::{ConfigError, Env, LogFormat};
use slackline_store::StoreSettings;

/// The consumer group (and default `GROUP_ID`).
pub const GROUP: &str = "thread-state";

/// The accepted `GROUPING_WINDOW_MINUTES`: at least a minute, at most a week (so the
/// window in microseconds stays far from overflowing the SQL arithmetic).
const WINDOW_MINUTES: std::ops::RangeInclusive<u64> = 1..=10_080;

/// How a channel's messages are grouped into support threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupingMode {
    /// One Slack thread is one support thread (`slack-thread`).
    SlackThread,
    /// A customer's top-level messages within a time window join one thread
    /// (`time-window`).
    TimeWindow,
    /// A reaction (`MANUAL_OPEN_REACTION`) opens a thread (`manual`).
    Manual,
}

impl GroupingMode {
    /// The name used in the config and in `threads.grouping`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupingMode::SlackThread => "slack-thread",
            GroupingMode::TimeWindow => "time-window",
            GroupingMode::Manual => "manual",
        }
    }
}

impl fmt::Display for GroupingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "slack-thread" => Ok(GroupingMode::SlackThread),
            "time-window" => Ok(GroupingMode::TimeWindow),
            "manual" => Ok(GroupingMode::Manual),
            other => Err(format!(
                "unknown grouping mode {other:?} (expected slack-thread, time-window or manual)"
            )),
        }
    }
}

/// The grouping and status rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// `GROUPING_MODE`: the mode of channels without an override.
    pub default_mode: GroupingMode,
    /// `GROUPING_CHANNELS`: per-channel overrides.
    pub channels: HashMap<String, GroupingMode>,
    /// `GROUPING_WINDOW_MINUTES`: the time window of `time-window` channels.
    pub window: Duration,
    /// `MANUAL_OPEN_REACTION`: the reaction that opens a thread in `manual` channels.
    pub manual_open_reaction: String,
    /// `REACTION_COMMANDS`: reactions that set a thread's status, and whose reaction
    /// counts. `white_check_mark:done,eyes:waiting`: a comma-separated list of
    /// `REACTION:STATUS` (status `todo`, `waiting` or `done`; the status is after the
    /// last `:`, so names with a skin tone such as `+1::skin-tone-2:done` work), each
    /// optionally followed by `:agents` (the default) or `:anyone`. By default only
    /// an agent's reaction (an author of the installing workspace) is a command: in a
    /// Slack Connect channel a customer's ✅ is often a thank-you, and a reaction whose
    /// author could not be attributed (`unknown`) might be a customer's.
    /// `white_check_mark:done:anyone` lets customers' (and unattributed) reactions set
    /// the status too. Bots' reactions are never commands. Any reaction is recorded
    /// as a fact either way. Slack's reaction events carry no workspace: the
    /// normalizer attributes a reactor through `users.info`, so without
    /// `SLACK_BOT_TOKENS` (or while that lookup fails) reactors stay `unknown` and only
    /// `:anyone` commands act.
    pub reaction_commands: HashMap<String, ReactionCommand>,
    /// `BOT_QUIET_CHANNELS`: channels whose customers' bots change nothing
    /// (`C1,C2`). Elsewhere a bot of another workspace than the installing one (an
    /// incoming webhook, a CI app of the customer) speaks for the customer: its
    /// message opens or joins a thread like a customer's (`todo`), its author kind
    /// staying `bot`. A bot whose workspace Slack did not tell counts as the
    /// customer's too (a missed message is a missed urgent request). Bots of the
    /// installing workspace never change anything, and bots' reactions are never
    /// commands.
    pub bot_quiet_channels: HashSet<String>,
}

/// Whose reaction is a command (the `:agents` / `:anyone` suffix of a
/// `REACTION_COMMANDS` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandAuthors {
    /// Agents only: authors of the installing workspace (the default).
    Agents,
    /// Agents, customers and authors Slack did not attribute; never bots.
    Anyone,
}

impl CommandAuthors {
    /// The suffix naming it in `REACTION_COMMANDS`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandAuthors::Agents => "agents",
            CommandAuthors::Anyone => "anyone",
        }
    }
}

/// A `REACTION_COMMANDS` entry: the status a reaction sets, and whose reaction counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactionCommand {
    /// The status the reaction sets.
    pub status: ThreadStatus,
    /// Whose reaction is a command.
    pub authors: CommandAuthors,
}

impl ReactionCommand {
    /// A command that agents give (the default).
    pub fn agents(status: ThreadStatus) -> Self {
        ReactionCommand {
            status,
            authors: CommandAuthors::Agents,
        }
    }

    /// A command that anyone but a bot gives.
    pub fn anyone(status: ThreadStatus) -> Self {
        ReactionCommand {
            status,
            authors: CommandAuthors::Anyone,
        }
    }
}

impl Default for Grouping {
    fn default() -> Self {
        Grouping {
            default_mode: GroupingMode::SlackThread,
            channels: HashMap::new(),
            window: Duration::from_secs(30 * 60),
            manual_open_reaction: "ticket".to_owned(),
            reaction_commands: [(
                "white_check_mark".to_owned(),
                ReactionCommand::agents(ThreadStatus::Done),
            )]
            .into_iter()
            .collect(),
            bot_quiet_channels: HashSet::new(),
        }
    }
}

impl Grouping {
    /// The mode of `channel`.
    pub fn mode_for(&self, channel: &str) -> GroupingMode {
        self.channels
            .get(channel)
            .copied()
            .unwrap_or(self.default_mode)
    }

    /// The window in microseconds of Slack time.
    pub fn window_micros(&self) -> i64 {
        i64::try_from(self.window.as_micros()).unwrap_or(i64::MAX)
    }

    /// The grouping variables, each problem recorded in `env`.
    pub fn from_env(env: &mut Env) -> Grouping {
        let defaults = Grouping::default();
        let default_mode = env.parse_or("GROUPING_MODE", defaults.default_mode);
        let channels = match env.get("GROUPING_CHANNELS").map(parse_channels) {
            None => HashMap::new(),
            Some(Ok(channels)) => channels,
            Some(Err(e)) => {
                env.problem("GROUPING_CHANNELS", e);
                HashMap::new()
            }
        };
        let mut minutes: u64 = env.parse_or("GROUPING_WINDOW_MINUTES", 30);
        if !WINDOW_MINUTES.contains(&minutes) {
            env.problem(
                "GROUPING_WINDOW_MINUTES",
                format!(
                    "must be between {} and {} (a week), got {minutes}",
                    WINDOW_MINUTES.start(),
                    WINDOW_MINUTES.end()
                ),
            );
            minutes = 30;
        }
        let manual_open_reaction = env
            .get("MANUAL_OPEN_REACTION")
            .map(|r| r.trim().trim_matches(':').to_owned())
            .unwrap_or(defaults.manual_open_reaction);
        if manual_open_reaction.is_empty() {
            env.problem("MANUAL_OPEN_REACTION", "must name a reaction");
        }
        let reaction_commands = match env.get("REACTION_COMMANDS").map(parse_commands) {
            None => defaults.reaction_commands,
            Some(Ok(commands)) => commands,
            Some(Err(e)) => {
                env.problem("REACTION_COMMANDS", e);
                HashMap::new()
            }
        };
        let bot_quiet_channels = env
            .get("BOT_QUIET_CHANNELS")
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Grouping {
            default_mode,
            channels,
            window: Duration::from_secs(minutes.saturating_mul(60)),
            manual_open_reaction,
            reaction_commands,
            bot_quiet_channels,
        }
    }
}

/// `C1:time-window,C2:manual`.
fn parse_channels(raw: &str) -> Result<HashMap<String, GroupingMode>, String> {
    let mut out = HashMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((channel, mode)) = entry.split_once(':') else {
            return Err(format!("expected CHANNEL:MODE, got {entry:?}"));
        };
        let channel = channel.trim();
        if channel.is_empty() {
            return Err(format!("no channel in {entry:?}"));
        }
        let mode: GroupingMode = mode.parse()?;
        if out.insert(channel.to_owned(), mode).is_some() {
            return Err(format!("channel {channel} is listed twice"));
        }
    }
    Ok(out)
}

/// `white_check_mark:done,eyes:waiting:anyone` (see [`Grouping::reaction_commands`]):
/// an optional `:agents` / `:anyone` last, then the status after the last `:`, so
/// names with a skin tone such as `+1::skin-tone-2` work.
fn parse_commands(raw: &str) -> Result<HashMap<String, ReactionCommand>, String> {
    let mut out = HashMap::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (rest, authors) = [CommandAuthors::Agents, CommandAuthors::Anyone]
            .into_iter()
            .find_map(|authors| {
                let rest = entry
                    .strip_suffix(authors.as_str())?
                    .trim_end()
                    .strip_suffix(':')?;
                Some((rest, authors))
            })
            .unwrap_or((entry, CommandAuthors::Agents));
        let Some((name, status)) = rest.rsplit_once(':') else {
            return Err(format!(
                "expected REACTION:STATUS or REACTION:STATUS:anyone, got {entry:?}"
            ));
        };
        let name = name.trim().trim_matches(':');
        if name.is_empty() {
            return Err(format!("no reaction name in {entry:?}"));
        }
        let status: ThreadStatus = status.trim().parse().map_err(|e| format!("{e}"))?;
        let command = ReactionCommand { status, authors };
        if out.insert(name.to_owned(), command).is_some() {
            return Err(format!("reaction {name} is listed twice"));
        }
    }
    Ok(out)
}

/// Everything thread-state needs to run.
#[derive(Debug, Clone)]
pub struct ThreadStateConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_PROPERTIES`.
    pub kafka: KafkaSettings,
    /// `DATABASE_URL` and the pool settings.
    pub store: StoreSettings,
    /// The consumer runtime: `GROUP_ID` (default `thread-state`), `SOURCE_TOPIC`
    /// (default `slack.messages.v1`), retry and DLQ topics, delays.
    pub runtime: RuntimeConfig,
    /// `ADMIN_ADDR`.
    pub admin_addr: SocketAddr,
    /// `LOG_FORMAT`.
    pub log_format: LogFormat,
    /// `THREAD_EVENTS_TOPIC`: where transitions are published.
    pub thread_events_topic: String,
    /// `THREAD_EVENTS_DELIVERY_TIMEOUT_MS`: how long a thread event may take to be
    /// acknowledged by Kafka before the handler call fails (and is retried).
    pub delivery_timeout: Duration,
    /// The grouping and status rules.
    pub grouping: Grouping,
}

impl ThreadStateConfig {
    /// Reads the configuration, reporting every problem at once.
    pub fn from_env(mut env: Env) -> Result<ThreadStateConfig, ConfigError> {
        let kafka = KafkaSettings::from_env(&mut env);
        let store = StoreSettings::from_env(&mut env);
        let runtime = RuntimeConfig::from_env(&mut env, GROUP, topics::MESSAGES);
        let delivery_ms: u64 = env.parse_or("THREAD_EVENTS_DELIVERY_TIMEOUT_MS", 30_000);
        if delivery_ms == 0 {
            env.problem("THREAD_EVENTS_DELIVERY_TIMEOUT_MS", "must be positive");
        }
        let config = ThreadStateConfig {
            kafka,
            store,
            runtime,
            admin_addr: env.parse_or("ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9000))),
            log_format: env.parse_or("LOG_FORMAT", LogFormat::Json),
            thread_events_topic: env.string_or("THREAD_EVENTS_TOPIC", topics::THREAD_EVENTS),
            delivery_timeout: Duration::from_millis(delivery_ms),
            grouping: Grouping::from_env(&mut env),
        };
        env.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
            ("DATABASE_URL", "postgres://u@h/db"),
        ]
    }

    fn with(extra: &[(&'static str, &'static str)]) -> Result<ThreadStateConfig, ConfigError> {
        let mut pairs = base();
        pairs.extend_from_slice(extra);
        ThreadStateConfig::from_env(Env::from_pairs(pairs))
    }

    #[test]
    fn defaults() {
        let config = with(&[]).unwrap();
        assert_eq!(config.runtime.group_id, "thread-state");
        assert_eq!(config.runtime.source_topic, "slack.messages.v1");
        assert_eq!(config.runtime.retry_topic, "thread-state.retry");
        assert_eq!(config.runtime.dlq_topic, "thread-state.dlq");
        assert_eq!(config.thread_events_topic, "support.thread-events");
        assert_eq!(config.admin_addr.port(), 9000);
        assert_eq!(config.delivery_timeout, Duration::from_secs(30));
        let g = &config.grouping;
        assert_eq!(g, &Grouping::default());
        assert_eq!(g.mode_for("C1"), GroupingMode::SlackThread);
        assert_eq!(g.window, Duration::from_secs(1800));
        assert_eq!(g.window_micros(), 1_800_000_000);
        assert_eq!(g.manual_open_reaction, "ticket");
        assert_eq!(
            g.reaction_commands.get("white_check_mark"),
            Some(&ReactionCommand::agents(ThreadStatus::Done))
        );
        assert_eq!(g.reaction_commands.len(), 1);
        assert!(g.bot_quiet_channels.is_empty());
    }

    #[test]
    fn overrides_and_lists() {
        let config = with(&[
            ("GROUPING_MODE", "manual"),
            ("GROUPING_CHANNELS", " C1:time-window, C2:slack-thread,,"),
            ("GROUPING_WINDOW_MINUTES", "5"),
            ("MANUAL_OPEN_REACTION", ":admission_tickets:"),
            (
                "REACTION_COMMANDS",
                "white_check_mark:done, eyes:waiting,+1::skin-tone-2:todo",
            ),
            ("BOT_QUIET_CHANNELS", " C9, ,C8"),
        ])
        .unwrap();
        let g = config.grouping;
        assert_eq!(
            g.bot_quiet_channels,
            ["C8", "C9"].into_iter().map(str::to_owned).collect()
        );
        assert_eq!(g.mode_for("C1"), GroupingMode::TimeWindow);
        assert_eq!(g.mode_for("C2"), GroupingMode::SlackThread);
        assert_eq!(g.mode_for("C3"), GroupingMode::Manual);
        assert_eq!(g.window, Duration::from_secs(300));
        assert_eq!(g.manual_open_reaction, "admission_tickets");
        assert_eq!(g.reaction_commands.len(), 3);
        assert_eq!(
            g.reaction_commands["white_check_mark"],
            ReactionCommand::agents(ThreadStatus::Done)
        );
        assert_eq!(
            g.reaction_commands["eyes"],
            ReactionCommand::agents(ThreadStatus::Waiting)
        );
        assert_eq!(
            g.reaction_commands["+1::skin-tone-2"],
            ReactionCommand::agents(ThreadStatus::Todo)
        );
    }

    #[test]
    fn reaction_commands_name_whose_reactions_count() {
        let config = with(&[(
            "REACTION_COMMANDS",
            "white_check_mark:done:anyone, eyes:waiting:agents, +1::skin-tone-2:todo:anyone, \
             anyone:done, x:todo",
        )])
        .unwrap();
        let commands = config.grouping.reaction_commands;
        assert_eq!(commands.len(), 5);
        assert_eq!(
            commands["white_check_mark"],
            ReactionCommand::anyone(ThreadStatus::Done)
        );
        assert_eq!(
            commands["eyes"],
            ReactionCommand::agents(ThreadStatus::Waiting)
        );
        assert_eq!(
            commands["+1::skin-tone-2"],
            ReactionCommand::anyone(ThreadStatus::Todo)
        );
        // A reaction may be named like the suffix.
        assert_eq!(
            commands["anyone"],
            ReactionCommand::agents(ThreadStatus::Done)
        );
        assert_eq!(commands["x"], ReactionCommand::agents(ThreadStatus::Todo));
        for bad in [
            "white_check_mark:anyone",
            "white_check_mark:done:everyone",
            ":done:anyone",
            "a:done:anyone,a:todo",
        ] {
            let err = with(&[("REACTION_COMMANDS", bad)]).unwrap_err().to_string();
            assert!(err.contains("REACTION_COMMANDS"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_grouping_channels_are_named() {
        for bad in ["C1:weekly", "C1", ":manual", "C1:manual,C1:time-window"] {
            let err = with(&[("GROUPING_CHANNELS", bad)]).unwrap_err().to_string();
            assert!(err.contains("GROUPING_CHANNELS"), "{bad}: {err}");
            assert_eq!(
                err.matches("\n  ").count(),
                1,
                "one problem for {bad}: {err}"
            );
        }
        let err = with(&[("GROUPING_CHANNELS", "C1:weekly")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("weekly"), "{err}");
    }

    #[test]
    fn bad_reaction_commands_are_named() {
        for bad in [
            "white_check_mark:closed",
            "white_check_mark",
            ":done",
            "a:done,a:todo",
        ] {
            let err = with(&[("REACTION_COMMANDS", bad)]).unwrap_err().to_string();
            assert!(err.contains("REACTION_COMMANDS"), "{bad}: {err}");
        }
        let err = with(&[("REACTION_COMMANDS", "white_check_mark:closed")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("closed"), "{err}");
    }

    #[test]
    fn grouping_window_is_bounded() {
        let config = with(&[("GROUPING_WINDOW_MINUTES", "10080")]).unwrap();
        assert_eq!(config.grouping.window, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.grouping.window_micros(), 604_800_000_000);
        let config = with(&[("GROUPING_WINDOW_MINUTES", "1")]).unwrap();
        assert_eq!(config.grouping.window_micros(), 60_000_000);
        for bad in ["0", "10081", "18446744073709551615"] {
            let err = with(&[("GROUPING_WINDOW_MINUTES", bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("GROUPING_WINDOW_MINUTES"), "{bad}: {err}");
            assert!(err.contains("10080"), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
            assert_eq!(
                err.matches("\n  ").count(),
                1,
                "one problem for {bad}: {err}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = ThreadStateConfig::from_env(Env::from_pairs([
            ("GROUPING_MODE", "threads"),
            ("GROUPING_CHANNELS", "C1:weekly"),
            ("GROUPING_WINDOW_MINUTES", "0"),
            ("REACTION_COMMANDS", "x:closed"),
            ("MANUAL_OPEN_REACTION", "::"),
            ("THREAD_EVENTS_DELIVERY_TIMEOUT_MS", "soon"),
            ("ADMIN_ADDR", "nowhere"),
        ]))
        .unwrap_err()
        .to_string();
        for name in [
            "KAFKA_BOOTSTRAP_SERVERS",
            "DATABASE_URL",
            "GROUPING_MODE",
            "GROUPING_CHANNELS",
            "GROUPING_WINDOW_MINUTES",
            "REACTION_COMMANDS",
            "MANUAL_OPEN_REACTION",
            "THREAD_EVENTS_DELIVERY_TIMEOUT_MS",
            "ADMIN_ADDR",
        ] {
            assert!(err.contains(name), "{name} missing from {err}");
        }
    }
}
