//! `slackline rewind --group <G> --to <time | earliest | latest | offset:N | shift:N>`:
//! moves a consumer group's committed offsets, per partition, on the group's source
//! topic and its retry topic (the `normalizer` group: `slack.events.raw` only), like
//! `kafka-consumer-groups --reset-offsets --to-datetime`.
//!
//! A group's effects are idempotent on the fact key (guarantee 2), so re-reading a
//! range changes nothing that was already done and redoes what is missing. Offsets
//! can only be committed from outside while the group has no members (a running
//! member would overwrite them with its own position at its next commit), so
//! `rewind` describes the group first and refuses while it has active members: stop
//! the group's deployment (scale it to zero), rewind, start it again. The classic
//! describe does not list members under the KIP-848 consumer protocol, so the check
//! also commits the group's committed offsets back unchanged, which the broker
//! refuses while the group has members of either protocol ([`check_idle`]); a member
//! that joins after the check gets the rewind's own commit refused the same way
//! ([`RewindError::CommitRefused`]).
//!
//! Targets: an RFC 3339 time (each partition's first offset whose record timestamp is
//! at or after it, the end when there is none, as Kafka's ListOffsets answers),
//! `earliest`, `latest`, `offset:N` (every partition to N, clamped to the partition's
//! range) and `shift:N` (every partition moved by N from its committed offset, N
//! negative to go back, clamped).

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use slackline_kafka::topics::{TopicNames, NORMALIZER_GROUP};
use slackline_kafka::{KafkaError, KafkaSettings};

/// The three thread groups `--all-groups` rewinds (in pipeline order).
pub const THREAD_GROUPS: [&str; 3] = ["thread-state", "timeline-writer", "notifier"];

/// How long each Kafka request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// `slackline rewind`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The consumer group (its base name: `normalizer`, `thread-state`,
    /// `timeline-writer`, `notifier`, `slack-sender`).
    #[arg(
        long,
        required_unless_present = "all_groups",
        conflicts_with = "all_groups"
    )]
    pub group: Option<String>,
    /// The three thread groups at once (thread-state, timeline-writer, notifier).
    #[arg(long)]
    pub all_groups: bool,
    /// Where to: an RFC 3339 time (`2025-06-01T12:00:00Z`), `earliest`, `latest`,
    /// `offset:N` (every partition to offset N) or `shift:N` (every partition moved by
    /// N from its committed offset; negative goes back).
    #[arg(long, value_name = "TIME|earliest|latest|offset:N|shift:N")]
    pub to: Target,
    /// Print what would move (topic, partition, current offset, new offset, lag);
    /// commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap: String,
    /// The prefix of every topic and group name (as given to `topics create` / `dev`).
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// `slackline rewind`: rewinds each group (or shows what would move) and prints a
/// table per group.
///
/// # Errors
///
/// A group has active members, a topic is missing, or Kafka fails. With
/// `--all-groups`, every group is checked for members before any is moved.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = crate::common::kafka_settings(args.bootstrap)?;
    let names = TopicNames::with_prefix(args.prefix);
    let groups: Vec<String> = match args.group {
        Some(group) => vec![group],
        None => THREAD_GROUPS.iter().map(|g| (*g).to_owned()).collect(),
    };
    let target = args.to;
    let dry_run = args.dry_run;
    let moved = tokio::task::spawn_blocking(move || -> Result<_, RewindError> {
        let plans: Vec<GroupPlan> = groups
            .iter()
            .map(|g| GroupPlan::for_group(&names, g))
            .collect::<Result<_, _>>()?;
        // Refuse before moving anything: all groups or none (a dry run only reads).
        if !dry_run {
            for plan in &plans {
                check_idle(&settings, plan)?;
            }
        }
        let mut moved = Vec::new();
        for plan in plans {
            let moves = rewind(&settings, &plan, &target, dry_run)?;
            moved.push((plan, moves));
        }
        Ok(moved)
    })
    .await??;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (plan, moves) in &moved {
        writeln!(
            out,
            "{} group {} ({}) to {target}:",
            if dry_run { "would rewind" } else { "rewound" },
            plan.group_id,
            plan.topics.join(", ")
        )?;
        print_table(&mut out, moves)?;
    }
    out.flush()?;
    Ok(())
}

/// Where to move the offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Each partition's first offset at or after this time.
    Time(DateTime<Utc>),
    /// Each partition's low watermark.
    Earliest,
    /// Each partition's high watermark (skip everything not yet read).
    Latest,
    /// This offset on every partition (clamped to the partition's range).
    Offset(i64),
    /// The committed offset moved by this much (clamped); a partition without a
    /// committed offset moves from its low watermark.
    Shift(i64),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let number = |n: &str, what: &str| {
            n.trim()
                .parse::<i64>()
                .map_err(|_| format!("{s:?}: {what} needs an integer"))
        };
        match s {
            "earliest" => Ok(Target::Earliest),
            "latest" => Ok(Target::Latest),
            _ => {
                if let Some(n) = s.strip_prefix("offset:") {
                    let n = number(n, "offset:N")?;
                    if n < 0 {
                        return Err(format!("{s:?}: an offset is at least 0"));
                    }
                    Ok(Target::Offset(n))
                } else if let Some(n) = s.strip_prefix("shift:") {
                    Ok(Target::Shift(number(n, "shift:N")?))
                } else {
                    DateTime::parse_from_rfc3339(s)
                        .map(|t| Target::Time(t.with_timezone(&Utc)))
                        .map_err(|e| {
                            format!(
                                "{s:?}: expected an RFC 3339 time (2025-06-01T12:00:00Z), \
                                 earliest, latest, offset:N or shift:N ({e})"
                            )
                        })
                }
            }
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Time(t) => write!(
                f,
                "{}",
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            Target::Earliest => f.write_str("earliest"),
            Target::Latest => f.write_str("latest"),
            Target::Offset(n) => write!(f, "offset:{n}"),
            Target::Shift(n) => write!(f, "shift:{n}"),
        }
    }
}

/// Errors of `rewind`.
#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    /// The group has members: its offsets cannot be moved under it.
    #[error(
        "consumer group {group} has {members} active member(s) ({state}): {clients}; stop the \
         group (scale its deployment to 0, or stop `slackline dev`) and run rewind again"
    )]
    ActiveMembers {
        /// The group id.
        group: String,
        /// How many members.
        members: usize,
        /// The group's state (`Stable`, `PreparingRebalance`, ...).
        state: String,
        /// Their client ids and hosts.
        clients: String,
    },
    /// The broker refused a commit from outside the group because the group has
    /// members: members under the KIP-848 consumer protocol (which the classic
    /// describe does not list), or a member that joined after the check. Nothing was
    /// moved.
    #[error(
        "consumer group {group}: the broker refused a commit from outside the group \
         ({code}): the group has active members; stop it and retry (scale its \
         deployment to 0, or stop `slackline dev`, then run rewind again)"
    )]
    CommitRefused {
        /// The group id.
        group: String,
        /// The broker's error code.
        code: rdkafka::types::RDKafkaErrorCode,
    },
    /// Not a group slackline knows.
    #[error("unknown group {0:?}: expected normalizer, thread-state, timeline-writer, notifier or slack-sender")]
    UnknownGroup(String),
    /// A topic of the group does not exist.
    #[error("topic {0} does not exist (wrong --prefix or --bootstrap?)")]
    MissingTopic(String),
    /// Kafka failed.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// Kafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The client could not be created.
    #[error(transparent)]
    Client(#[from] KafkaError),
}

fn kafka(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> RewindError {
    let what = what.into();
    move |source| RewindError::Kafka { what, source }
}

/// A group and the topics whose offsets it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    /// The group id (with the prefix).
    pub group_id: String,
    /// Its source topic, then its retry topic (none for the normalizer).
    pub topics: Vec<String>,
}

impl GroupPlan {
    /// The group id and topics of `group` (a base name) under `names`' prefix.
    ///
    /// # Errors
    ///
    /// `group` is not one of slackline's groups.
    pub fn for_group(names: &TopicNames, group: &str) -> Result<GroupPlan, RewindError> {
        let topics = match group {
            NORMALIZER_GROUP => vec![names.raw_events()],
            "slack-sender" => vec![names.replies(), names.retry(group)],
            g if THREAD_GROUPS.contains(&g) => vec![names.messages(), names.retry(group)],
            other => return Err(RewindError::UnknownGroup(other.to_owned())),
        };
        Ok(GroupPlan {
            group_id: names.group(group),
            topics,
        })
    }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMove {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset before (`None`: the group never committed there).
    pub current: Option<i64>,
    /// The committed offset after.
    pub new: i64,
    /// The partition's low watermark.
    pub low: i64,
    /// The partition's high watermark (the next offset to be written).
    pub high: i64,
}

impl PartitionMove {
    /// Records to read from the new offset to the end.
    pub fn lag(&self) -> i64 {
        self.high - self.new
    }
}

/// Prints the moves as a table: topic, partition, current offset, new offset, lag.
///
/// # Errors
///
/// When `out` fails.
pub fn print_table(out: &mut dyn Write, moves: &[PartitionMove]) -> std::io::Result<()> {
    let width = moves
        .iter()
        .map(|m| m.topic.len())
        .max()
        .unwrap_or(0)
        .max("TOPIC".len());
    writeln!(
        out,
        "  {:<width$}  {:>9}  {:>14}  {:>10}  {:>8}",
        "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET", "LAG"
    )?;
    for m in moves {
        let current = m.current.map_or_else(|| "-".to_owned(), |c| c.to_string());
        writeln!(
            out,
            "  {:<width$}  {:>9}  {:>14}  {:>10}  {:>8}",
            m.topic,
            m.partition,
            current,
            m.new,
            m.lag()
        )?;
    }
    Ok(())
}

/// A consumer in `group_id` that never subscribes (it only reads and commits
/// offsets).
fn group_client(settings: &KafkaSettings, group_id: &str) -> Result<BaseConsumer, RewindError> {
    settings
        .client_config("slackline-rewind")
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| RewindError::Client(KafkaError::from(e)))
}

/// Refuses when `group_id` has members (describing the group through the broker's
/// group coordinator). Blocking.
///
/// # Errors
///
/// [`RewindError::ActiveMembers`], or Kafka fails.
pub fn check_no_members(settings: &KafkaSettings, group_id: &str) -> Result<(), RewindError> {
    let client: BaseConsumer = settings
        .client_config("slackline-rewind")
        .create()
        .map_err(|e| RewindError::Client(KafkaError::from(e)))?;
    let list = client
        .fetch_group_list(Some(group_id), TIMEOUT)
        .map_err(kafka(format!("describing group {group_id}")))?;
    for group in list.groups().iter().filter(|g| g.name() == group_id) {
        let members = group.members();
        let state = group.state();
        // A group being rebalanced may have no member listed yet; it is not empty.
        let busy =
            !members.is_empty() || matches!(state, "PreparingRebalance" | "CompletingRebalance");
        if busy {
            let clients = members
                .iter()
                .map(|m| format!("{} on {}", m.client_id(), m.client_host()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(RewindError::ActiveMembers {
                group: group_id.to_owned(),
                members: members.len(),
                state: state.to_owned(),
                clients,
            });
        }
    }
    Ok(())
}

/// Refuses when `plan`'s group has members of either protocol. The classic describe
/// ([`check_no_members`]) does not list members under the KIP-848 consumer protocol
/// (`group.protocol=consumer`): Kafka describes such a group to it as `Dead` with no
/// members. So the group's committed offsets on its topics are also committed back
/// unchanged from outside the group, which the broker refuses while the group has
/// members of either protocol (`UNKNOWN_MEMBER_ID`) and which changes nothing
/// otherwise. A group that has committed nothing on its topics cannot be probed so;
/// the rewind's own commit is refused the same way then ([`commit_moves`]). Blocking.
///
/// # Errors
///
/// [`RewindError::ActiveMembers`], [`RewindError::CommitRefused`], a topic is
/// missing, or Kafka fails.
pub fn check_idle(settings: &KafkaSettings, plan: &GroupPlan) -> Result<(), RewindError> {
    check_no_members(settings, &plan.group_id)?;
    let client = group_client(settings, &plan.group_id)?;
    let mut tpl = TopicPartitionList::new();
    for topic in &plan.topics {
        for p in partitions(&client, topic)? {
            tpl.add_partition(topic, p);
        }
    }
    let committed = client
        .committed_offsets(tpl, TIMEOUT)
        .map_err(kafka(format!("committed offsets of {}", plan.group_id)))?;
    let mut same = TopicPartitionList::new();
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset() {
            same.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))
                .map_err(kafka("building the probe commit"))?;
        }
    }
    if same.count() == 0 {
        return Ok(());
    }
    client
        .commit(&same, CommitMode::Sync)
        .map_err(|e| commit_error(plan, e))
}

/// A refused commit as [`RewindError::CommitRefused`] when the broker refused it
/// because the group has members.
fn commit_error(plan: &GroupPlan, e: rdkafka::error::KafkaError) -> RewindError {
    match e.rdkafka_error_code() {
        Some(code) if refused_for_members(code) => RewindError::CommitRefused {
            group: plan.group_id.clone(),
            code,
        },
        _ => RewindError::Kafka {
            what: format!("committing the offsets of {}", plan.group_id),
            source: e,
        },
    }
}

/// The partitions of `topic`.
fn partitions(client: &BaseConsumer, topic: &str) -> Result<Vec<i32>, RewindError> {
    let metadata = client
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(kafka(format!("metadata of {topic}")))?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(RewindError::MissingTopic(topic.to_owned()));
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// What each partition of the group's topics would move to. Blocking; commits
/// nothing.
///
/// # Errors
///
/// A topic is missing, or Kafka fails.
pub fn plan_moves(
    settings: &KafkaSettings,
    plan: &GroupPlan,
    target: &Target,
) -> Result<Vec<PartitionMove>, RewindError> {
    let client = group_client(settings, &plan.group_id)?;
    let mut moves = Vec::new();
    for topic in &plan.topics {
        let ids = partitions(&client, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in &ids {
            tpl.add_partition(topic, *p);
        }
        let committed = client
            .committed_offsets(tpl, TIMEOUT)
            .map_err(kafka(format!(
                "committed offsets of {} on {topic}",
                plan.group_id
            )))?;
        let by_time = match target {
            Target::Time(t) => {
                let mut query = TopicPartitionList::new();
                for p in &ids {
                    query
                        .add_partition_offset(topic, *p, Offset::Offset(t.timestamp_millis()))
                        .map_err(kafka("building the time query"))?;
                }
                Some(
                    client
                        .offsets_for_times(query, TIMEOUT)
                        .map_err(kafka(format!("offsets for {t} on {topic}")))?,
                )
            }
            _ => None,
        };
        for p in ids {
            let (low, high) = client
                .fetch_watermarks(topic, p, TIMEOUT)
                .map_err(kafka(format!("watermarks of {topic}/{p}")))?;
            let current = committed
                .find_partition(topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let new = match target {
                Target::Earliest => low,
                Target::Latest => high,
                Target::Offset(n) => *n,
                Target::Shift(n) => current.unwrap_or(low).saturating_add(*n),
                Target::Time(_) => by_time
                    .as_ref()
                    .and_then(|l| l.find_partition(topic, p))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        // No record at or after the time: the end.
                        _ => None,
                    })
                    .unwrap_or(high),
            };
            moves.push(PartitionMove {
                topic: topic.clone(),
                partition: p,
                current,
                new: new.clamp(low, high.max(low)),
                low,
                high,
            });
        }
    }
    Ok(moves)
}

/// Moves the group's committed offsets to `target` (refusing while it has members)
/// and returns the moves; with `dry_run`, returns them and commits nothing. Blocking.
///
/// # Errors
///
/// [`RewindError::ActiveMembers`], a topic is missing, or Kafka fails (a refused
/// commit included: Kafka refuses a commit from outside while the group has members).
pub fn rewind(
    settings: &KafkaSettings,
    plan: &GroupPlan,
    target: &Target,
    dry_run: bool,
) -> Result<Vec<PartitionMove>, RewindError> {
    if !dry_run {
        check_idle(settings, plan)?;
    }
    let moves = plan_moves(settings, plan, target)?;
    if dry_run || moves.is_empty() {
        return Ok(moves);
    }
    commit_moves(settings, plan, &moves)?;
    Ok(moves)
}

/// Whether the broker refused a commit from outside the group because the group has
/// members (classic: `UNKNOWN_MEMBER_ID` for a commit without member id and
/// generation into a non-empty group; KIP-848: the same, or a member epoch error).
fn refused_for_members(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::UnknownMemberId
            | C::IllegalGeneration
            | C::RebalanceInProgress
            | C::FencedMemberEpoch
            | C::StaleMemberEpoch
            | C::UnreleasedInstanceId
            | C::FencedInstanceId
    )
}

/// Commits the `moves` of `plan`'s group (as [`plan_moves`] found them). Blocking.
///
/// # Errors
///
/// [`RewindError::CommitRefused`] when the broker refuses the commit because the
/// group has members (one joined after [`check_no_members`]), or Kafka fails.
pub fn commit_moves(
    settings: &KafkaSettings,
    plan: &GroupPlan,
    moves: &[PartitionMove],
) -> Result<(), RewindError> {
    if moves.is_empty() {
        return Ok(());
    }
    let client = group_client(settings, &plan.group_id)?;
    let mut tpl = TopicPartitionList::new();
    for m in moves {
        tpl.add_partition_offset(&m.topic, m.partition, Offset::Offset(m.new))
            .map_err(kafka("building the commit"))?;
    }
    client
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| commit_error(plan, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("earliest".parse::<Target>(), Ok(Target::Earliest));
        assert_eq!("latest".parse::<Target>(), Ok(Target::Latest));
        assert_eq!("offset:12".parse::<Target>(), Ok(Target::Offset(12)));
        assert_eq!("shift:-3".parse::<Target>(), Ok(Target::Shift(-3)));
        assert!("offset:-1".parse::<Target>().is_err());
        assert!("shift:x".parse::<Target>().is_err());
        let t = "2025-06-01T12:00:00.250+02:00".parse::<Target>().unwrap();
        let Target::Time(t) = t else { panic!("{t:?}") };
        assert_eq!(t.timestamp_millis(), 1_748_772_000_250);
        assert!("yesterday".parse::<Target>().is_err());
    }

    #[test]
    fn groups_name_their_topics() {
        let names = TopicNames::with_prefix("p.");
        assert_eq!(
            GroupPlan::for_group(&names, "normalizer").unwrap().topics,
            vec!["p.slack.events.raw".to_owned()]
        );
        let notifier = GroupPlan::for_group(&names, "notifier").unwrap();
        assert_eq!(notifier.group_id, "p.notifier");
        assert_eq!(
            notifier.topics,
            vec![
                "p.slack.messages.v1".to_owned(),
                "p.notifier.retry".to_owned()
            ]
        );
        assert_eq!(
            GroupPlan::for_group(&names, "slack-sender").unwrap().topics,
            vec![
                "p.support.replies".to_owned(),
                "p.slack-sender.retry".to_owned()
            ]
        );
        assert!(GroupPlan::for_group(&names, "nobody").is_err());
    }
}
