//! `slackline replay --from <RFC 3339> --to <RFC 3339>`: produces every archived
//! request received in `[from, to)` back onto `slack.events.raw` (guarantee 6).
//!
//! **What is read.** The archive's segments that may hold the range
//! ([`Archive::segments_between`]: only the hour folders of the window are listed,
//! never the whole bucket), each read whole ([`Archive::read_object`]). A request is in
//! the range when its `received_at` is in `[from, to)` (microseconds, so a boundary
//! can fall inside a second). Order is the **archive's order**: segments sorted by
//! key (their first request's receive time), lines in file order. Requests are not
//! re-sorted by `received_at`: the edge wrote each segment in the order it placed
//! its requests, which is the order Kafka got them, so the archive order is the
//! order the pipeline first saw (per channel, what guarantee 3 needs).
//!
//! **What is produced.** Each request exactly as the edge produced it: key = the
//! routing key of [`slackline_slack::inspect`] (the channel, else the team, else
//! `unknown`), payload = the raw body, headers `archive-key` (the request's locator),
//! `received-at`, `slack-event-id`, `slack-event-type`, `slack-retry-num` and
//! `slack-retry-reason` (from the archived `x-slack-retry-*` headers), plus
//! `slackline-replay: <replay id>`. The normalizer normalizes a record carrying that
//! header even when it saw its event id before (it is not a Slack retry), and the
//! groups' fact keys make a second pass harmless (guarantee 2). A Slack retry that was
//! archived twice is produced twice: the replay does not deduplicate.
//!
//! **Record timestamp = the time of the replay**, not `received_at`: the raw topic's
//! timestamps stay in append order, so `slackline rewind --to <time>` of the
//! normalizer still finds the records produced after that time (a replay of old
//! requests stamped with their old times would sit after offsets stamped later, and
//! time-based retention would delete them at once when older than `retention.ms`).
//! The original time is in the `received-at` header.
//!
//! **Never aborted by content.** A line or object that is not an archive record (not
//! JSON, another format) is counted and listed by locator and skipped. An object
//! that cannot be *read* (S3 or disk failing after retries) stops the replay: the
//! summary names it and the `--from` to resume from.
//!
//! **Acknowledgements.** Every delivery report is awaited. The summary says how many
//! records were not acknowledged and the `received_at` of the earliest of them:
//! `--from` that time (same `--to` and filters) produces everything that is missing
//! again; what it produces twice is absorbed downstream (guarantee 2).

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use slackline_archive::{Archive, ArchiveError, Entry, S3Settings};
use slackline_kafka::headers;
use slackline_kafka::topics::TopicNames;
use slackline_kafka::{KafkaError, KafkaSettings};
use slackline_service::Env;
use slackline_slack::inspect;
use tokio::sync::mpsc;

/// The archived request headers that carry Slack's retry number and reason.
const ARCHIVED_RETRY_NUM: &str = "x-slack-retry-num";
const ARCHIVED_RETRY_REASON: &str = "x-slack-retry-reason";

/// How a replay is tuned (the defaults suit the CLI; tests shorten the timeout).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long a record may wait for its delivery report (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Objects read ahead of the one being produced.
    pub read_ahead: usize,
    /// Records produced and not yet acknowledged before producing waits.
    pub max_in_flight: usize,
    /// Attempts to read one object before the replay stops.
    pub read_attempts: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            delivery_timeout: Duration::from_secs(60),
            // Whole objects are held while read ahead (a file segment can be 64 MiB).
            read_ahead: 1,
            max_in_flight: 20_000,
            read_attempts: 3,
        }
    }
}

/// What to replay, and where.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Start of the range (inclusive), on the request's `received_at`.
    pub from: DateTime<Utc>,
    /// End of the range (exclusive).
    pub to: DateTime<Utc>,
    /// Only requests keyed by one of these channels (empty: all).
    pub channels: Vec<String>,
    /// Only requests of this team (the envelope's `team_id`, `context_team_id` or an
    /// `authorizations[].team_id`).
    pub team: Option<String>,
    /// Only these inner event types (`message`, `reaction_added`, ...; empty: all).
    pub event_types: Vec<String>,
    /// The topic to produce to (the raw topic, with its prefix).
    pub topic: String,
    /// At most this many records per second.
    pub rate: Option<f64>,
    /// Count only, produce nothing.
    pub dry_run: bool,
    /// The `slackline-replay` header's value.
    pub replay_id: String,
}

impl ReplayOptions {
    /// A replay of `[from, to)` onto `topic`, all requests, a fresh replay id.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>, topic: impl Into<String>) -> Self {
        ReplayOptions {
            from,
            to,
            channels: Vec::new(),
            team: None,
            event_types: Vec::new(),
            topic: topic.into(),
            rate: None,
            dry_run: false,
            replay_id: new_replay_id(),
        }
    }
}

/// A fresh replay id (a UUID).
pub fn new_replay_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A line or object that is not an archive record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its locator (`key#offset+length`, or the key of a whole object).
    pub locator: String,
    /// Why it is not a record.
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// The replay id (the `slackline-replay` header).
    pub replay_id: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Objects listed for the range.
    pub objects_listed: u64,
    /// Objects read.
    pub objects_read: u64,
    /// Requests read from those objects (in range or not).
    pub requests_read: u64,
    /// Requests received in `[from, to)`.
    pub in_range: u64,
    /// Requests in range left out by `--channel`, `--team` or `--event-type`.
    pub skipped_by_filter: u64,
    /// Records handed to the producer (in a dry run: that would have been).
    pub produced: u64,
    /// Records Kafka acknowledged.
    pub acknowledged: u64,
    /// Records not acknowledged (delivery failed or timed out).
    pub not_acknowledged: u64,
    /// The first delivery error, for the message.
    pub first_delivery_error: Option<String>,
    /// Lines and objects that are not records (skipped).
    pub unreadable: Vec<Unreadable>,
    /// Selected requests per inner event type (`-` when none).
    pub by_type: BTreeMap<String, u64>,
    /// Selected requests per routing key (channel, else team, else `unknown`).
    pub by_channel: BTreeMap<String, u64>,
    /// An object that could not be read: the replay stopped there.
    pub read_error: Option<String>,
    /// Where to resume (`--from`): the earliest `received_at` of a request not
    /// acknowledged, or the first request time of the object that could not be read.
    pub first_unacknowledged: Option<DateTime<Utc>>,
    /// Seconds the replay took.
    pub elapsed_secs: f64,
}

impl ReplaySummary {
    /// Whether every selected request was read and acknowledged.
    pub fn is_complete(&self) -> bool {
        self.read_error.is_none() && self.not_acknowledged == 0
    }

    /// The one-line JSON summary (at most 20 unreadable locators listed).
    pub fn to_json(&self, options: &ReplayOptions) -> serde_json::Value {
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        serde_json::json!({
            "replay_id": self.replay_id,
            "dry_run": self.dry_run,
            "from": time(&options.from),
            "to": time(&options.to),
            "topic": options.topic,
            "objects_listed": self.objects_listed,
            "objects_read": self.objects_read,
            "requests_read": self.requests_read,
            "in_range": self.in_range,
            "skipped_by_filter": self.skipped_by_filter,
            "produced": self.produced,
            "acknowledged": self.acknowledged,
            "not_acknowledged": self.not_acknowledged,
            "first_delivery_error": self.first_delivery_error,
            "unreadable": self.unreadable.len(),
            "unreadable_locators": self.unreadable.iter().take(20).map(|u| {
                serde_json::json!({ "locator": u.locator, "reason": u.reason })
            }).collect::<Vec<_>>(),
            "by_type": self.by_type,
            "by_channel": self.by_channel,
            "read_error": self.read_error,
            "resume_from": self.first_unacknowledged.as_ref().map(time),
            "elapsed_secs": (self.elapsed_secs * 1000.0).round() / 1000.0,
        })
    }
}

/// Progress as a replay goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayProgress {
    /// Objects to read.
    pub objects_total: u64,
    /// Objects read.
    pub objects_read: u64,
    /// Records produced.
    pub produced: u64,
    /// Records acknowledged.
    pub acknowledged: u64,
    /// Records not acknowledged.
    pub failed: u64,
}

/// Where a replay reports its progress (the CLI's progress bar, or nothing).
pub trait Progress: Send + Sync {
    /// Called after each object and while waiting for the last acknowledgements.
    fn update(&self, progress: &ReplayProgress);
}

/// No progress reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _progress: &ReplayProgress) {}
}

/// Why a replay could not run at all (problems during a run are in the summary).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `--to` is not after `--from`.
    #[error("empty range: --to {to} is not after --from {from}")]
    EmptyRange {
        /// `--from`.
        from: DateTime<Utc>,
        /// `--to`.
        to: DateTime<Utc>,
    },
    /// The archive could not be listed.
    #[error("listing the archive: {0}")]
    Archive(#[from] ArchiveError),
    /// The producer could not be created.
    #[error("creating the producer: {0}")]
    Kafka(#[from] KafkaError),
}

/// Replays `[options.from, options.to)` of `archive` onto `options.topic` with the
/// default [`Tuning`]. See the module documentation.
///
/// # Errors
///
/// The range is empty, the archive cannot be listed, or the producer cannot be
/// created. Failures after that (unacknowledged records, an unreadable object) are
/// in the summary ([`ReplaySummary::is_complete`]).
pub async fn replay(
    archive: &Archive,
    kafka: &KafkaSettings,
    options: &ReplayOptions,
    progress: &dyn Progress,
) -> Result<ReplaySummary, ReplayError> {
    replay_tuned(archive, kafka, options, progress, &Tuning::default()).await
}

/// What the delivery collector tracks.
#[derive(Default)]
struct Acks {
    acknowledged: AtomicU64,
    failed: AtomicU64,
    /// Earliest `received_at` not acknowledged, and the first error.
    first: Mutex<(Option<DateTime<Utc>>, Option<String>)>,
}

impl Acks {
    fn failed(&self, received_at: DateTime<Utc>, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.0.is_none_or(|t| received_at < t) {
            first.0 = Some(received_at);
        }
        first.1.get_or_insert(error);
    }
}

type Delivery = (DateTime<Utc>, rdkafka::producer::DeliveryFuture);

/// An object being read ahead.
type Reading = tokio::task::JoinHandle<Result<Vec<Entry>, ArchiveError>>;

/// [`replay`] with explicit [`Tuning`].
///
/// # Errors
///
/// As [`replay`].
pub async fn replay_tuned(
    archive: &Archive,
    kafka: &KafkaSettings,
    options: &ReplayOptions,
    progress: &dyn Progress,
    tuning: &Tuning,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    if options.to <= options.from {
        return Err(ReplayError::EmptyRange {
            from: options.from,
            to: options.to,
        });
    }
    let keys = archive.segments_between(options.from, options.to).await?;
    let producer: Option<FutureProducer> = if options.dry_run {
        None
    } else {
        Some(kafka.producer("slackline-replay", tuning.delivery_timeout)?)
    };

    let mut summary = ReplaySummary {
        replay_id: options.replay_id.clone(),
        dry_run: options.dry_run,
        objects_listed: keys.len() as u64,
        ..ReplaySummary::default()
    };
    let mut state = ReplayProgress {
        objects_total: keys.len() as u64,
        ..ReplayProgress::default()
    };
    progress.update(&state);

    // Deliveries are awaited in order by a collector; the bounded channel keeps at
    // most `max_in_flight` records waiting for their reports.
    let acks = Arc::new(Acks::default());
    let (deliveries, mut pending) = mpsc::channel::<Delivery>(tuning.max_in_flight.max(1));
    let collector = {
        let acks = acks.clone();
        tokio::spawn(async move {
            while let Some((received_at, delivery)) = pending.recv().await {
                match delivery.await {
                    Ok(Ok(_)) => {
                        acks.acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err((e, _))) => acks.failed(received_at, e.to_string()),
                    Err(_) => acks.failed(received_at, "delivery cancelled".to_owned()),
                }
            }
        })
    };

    // Objects are read `read_ahead` at a time ahead of the one being produced.
    let mut ahead: VecDeque<(String, Reading)> = VecDeque::new();
    let mut next = keys.iter();
    let pace_start = tokio::time::Instant::now();
    loop {
        while ahead.len() < tuning.read_ahead.max(1) {
            let Some(key) = next.next() else { break };
            let archive = archive.clone();
            let key_owned = key.clone();
            let attempts = tuning.read_attempts.max(1);
            ahead.push_back((
                key.clone(),
                tokio::spawn(
                    async move { read_with_retries(&archive, &key_owned, attempts).await },
                ),
            ));
        }
        let Some((key, read)) = ahead.pop_front() else {
            break;
        };
        let entries = match read.await {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => {
                summary.read_error = Some(format!("{key}: {e}"));
                stop_at(&mut summary, &key, options.from);
                break;
            }
            Err(e) => {
                summary.read_error = Some(format!("{key}: reader task failed: {e}"));
                stop_at(&mut summary, &key, options.from);
                break;
            }
        };
        summary.objects_read += 1;
        for entry in entries {
            let record = match entry.record {
                Ok(record) => record,
                Err(e) => {
                    summary.unreadable.push(Unreadable {
                        locator: entry.locator.to_string(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            summary.requests_read += 1;
            if record.received_at < options.from || record.received_at >= options.to {
                continue;
            }
            summary.in_range += 1;
            let info = inspect(&record.body);
            if !selected(options, &info, &record.body) {
                summary.skipped_by_filter += 1;
                continue;
            }
            *summary
                .by_type
                .entry(info.event_type.clone().unwrap_or_else(|| "-".to_owned()))
                .or_default() += 1;
            *summary
                .by_channel
                .entry(info.routing_key.clone())
                .or_default() += 1;
            summary.produced += 1;
            let Some(producer) = &producer else { continue };
            if let Some(rate) = options.rate.filter(|r| *r > 0.0) {
                let due =
                    pace_start + Duration::from_secs_f64((summary.produced - 1) as f64 / rate);
                tokio::time::sleep_until(due).await;
            }
            let locator = entry.locator.to_string();
            let received = record
                .received_at
                .to_rfc3339_opts(SecondsFormat::Micros, true);
            let mut kafka_headers = OwnedHeaders::new_with_capacity(7)
                .insert(Header {
                    key: headers::ARCHIVE_KEY,
                    value: Some(locator.as_str()),
                })
                .insert(Header {
                    key: headers::RECEIVED_AT,
                    value: Some(received.as_str()),
                });
            for (name, value) in [
                (headers::EVENT_ID, info.event_id.as_deref()),
                (headers::EVENT_TYPE, info.event_type.as_deref()),
                (headers::RETRY_NUM, record.header(ARCHIVED_RETRY_NUM)),
                (headers::RETRY_REASON, record.header(ARCHIVED_RETRY_REASON)),
                (headers::REPLAY, Some(options.replay_id.as_str())),
            ] {
                if let Some(value) = value {
                    kafka_headers = kafka_headers.insert(Header {
                        key: name,
                        value: Some(value),
                    });
                }
            }
            let mut kafka_record = FutureRecord::to(&options.topic)
                .key(info.routing_key.as_str())
                .payload(record.body.as_ref())
                .headers(kafka_headers);
            // The producer's queue is bounded: when full, wait for room.
            let delivery = loop {
                match producer.send_result(kafka_record) {
                    Ok(delivery) => break Ok(delivery),
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        kafka_record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => break Err(e),
                }
            };
            match delivery {
                Ok(delivery) => {
                    if deliveries
                        .send((record.received_at, delivery))
                        .await
                        .is_err()
                    {
                        acks.failed(record.received_at, "delivery collector stopped".into());
                    }
                }
                Err(e) => acks.failed(record.received_at, e.to_string()),
            }
        }
        state.objects_read = summary.objects_read;
        state.produced = summary.produced;
        state.acknowledged = acks.acknowledged.load(Ordering::Relaxed);
        state.failed = acks.failed.load(Ordering::Relaxed);
        progress.update(&state);
    }
    for (_, read) in ahead {
        read.abort();
    }

    // Every delivery report, then the counts.
    drop(deliveries);
    let mut collector = collector;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            done = &mut collector => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "replay delivery collector failed");
                }
                break;
            }
            _ = tick.tick() => {
                state.acknowledged = acks.acknowledged.load(Ordering::Relaxed);
                state.failed = acks.failed.load(Ordering::Relaxed);
                progress.update(&state);
            }
        }
    }
    summary.acknowledged = acks.acknowledged.load(Ordering::Relaxed);
    summary.not_acknowledged = if options.dry_run {
        0
    } else {
        summary.produced - summary.acknowledged
    };
    let (first_failed, first_error) = acks.first.lock().unwrap_or_else(|p| p.into_inner()).clone();
    summary.first_delivery_error = first_error;
    if let Some(t) = first_failed {
        if summary.first_unacknowledged.is_none_or(|s| t < s) {
            summary.first_unacknowledged = Some(t);
        }
    }
    state.acknowledged = summary.acknowledged;
    state.failed = summary.not_acknowledged;
    progress.update(&state);
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The replay stopped before object `key`: resume from its key's time less
/// `SEGMENT_KEY_SKEW` (a request in it, or in a later object, can have been received
/// up to that much before the key's time), or `--from` when that is earlier; and never
/// after an earlier request that was not acknowledged.
fn stop_at(summary: &mut ReplaySummary, key: &str, from: DateTime<Utc>) {
    let skew = chrono::Duration::from_std(slackline_archive::SEGMENT_KEY_SKEW).unwrap_or_default();
    let t = slackline_archive::key_time(key).map_or(from, |t| (t - skew).max(from));
    summary.first_unacknowledged = Some(summary.first_unacknowledged.map_or(t, |s| s.min(t)));
}

async fn read_with_retries(
    archive: &Archive,
    key: &str,
    attempts: u32,
) -> Result<Vec<Entry>, ArchiveError> {
    let mut attempt = 1;
    loop {
        match archive.read_object(key).await {
            Ok(entries) => return Ok(entries),
            Err(e) if attempt < attempts => {
                tracing::warn!(key, attempt, error = %e, "reading an archive object failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a request passes `--channel`, `--team` and `--event-type`.
fn selected(options: &ReplayOptions, info: &slackline_slack::EnvelopeInfo, body: &[u8]) -> bool {
    if !options.channels.is_empty() && !options.channels.contains(&info.routing_key) {
        return false;
    }
    if !options.event_types.is_empty()
        && !info
            .event_type
            .as_ref()
            .is_some_and(|t| options.event_types.contains(t))
    {
        return false;
    }
    match &options.team {
        Some(team) => teams(body).iter().any(|t| t == team),
        None => true,
    }
}

/// The teams a body names: `team_id`, `context_team_id`, `authorizations[].team_id`.
fn teams(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let mut out: Vec<String> = [
        text(value.get("team_id")),
        text(value.get("context_team_id")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(auths) = value.get("authorizations").and_then(|a| a.as_array()) {
        out.extend(auths.iter().filter_map(|a| text(a.get("team_id"))));
    }
    out
}

/// The time flags: RFC 3339.
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?}: expected an RFC 3339 time such as 2025-06-01T12:00:00Z ({e})"))
}

/// `slackline replay`'s flags (shared with `backfill`).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Start of the range (inclusive) on the request's receive time, RFC 3339
    /// (`2025-06-01T12:00:00Z`, fractions allowed).
    #[arg(long, value_parser = parse_time)]
    pub from: DateTime<Utc>,
    /// End of the range (exclusive), RFC 3339.
    #[arg(long, value_parser = parse_time)]
    pub to: DateTime<Utc>,
    /// Only this channel (repeatable).
    #[arg(long = "channel", value_name = "CHANNEL")]
    pub channels: Vec<String>,
    /// Only this team (team_id, context_team_id or authorizations[].team_id).
    #[arg(long)]
    pub team: Option<String>,
    /// Only this inner event type (repeatable): message, reaction_added, ...
    #[arg(long = "event-type", value_name = "TYPE")]
    pub event_types: Vec<String>,
    /// At most this many events per second.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// The topic to produce to (the prefix is added).
    #[arg(long, default_value = slackline_kafka::topics::RAW_EVENTS)]
    pub topic: String,
    /// The prefix of every topic name (as given to `topics create` / `dev`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Count per event type and channel; produce nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The replay id put in the `slackline-replay` header (default: a fresh UUID).
    #[arg(long)]
    pub replay_id: Option<String>,
    /// The archive: `file:///path` or `s3://bucket/prefix` (S3 from the `AWS_*`
    /// variables).
    #[arg(long, env = "ARCHIVE_URL")]
    pub archive_url: String,
    /// Kafka bootstrap servers (not needed for a dry run).
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap: Option<String>,
    /// How long a record may wait for Kafka's acknowledgement before it counts as not
    /// acknowledged (seconds).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub delivery_timeout: u64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?}: expected a positive number of events per second"
        )),
    }
}

impl Args {
    /// The replay these flags ask for.
    pub fn options(&self) -> ReplayOptions {
        let topic = TopicNames::with_prefix(self.prefix.clone()).name(&self.topic);
        ReplayOptions {
            from: self.from,
            to: self.to,
            channels: self.channels.clone(),
            team: self.team.clone(),
            event_types: self.event_types.clone(),
            topic,
            rate: self.rate,
            dry_run: self.dry_run,
            replay_id: self.replay_id.clone().unwrap_or_else(new_replay_id),
        }
    }

    /// The archive and Kafka settings these flags name.
    ///
    /// # Errors
    ///
    /// A bad archive URL or S3/Kafka settings, or no bootstrap for a real replay.
    pub async fn open(&self) -> anyhow::Result<(Archive, KafkaSettings)> {
        let mut env = Env::from_process();
        let s3 = S3Settings::from_env(&mut env);
        env.finish().context("S3 settings")?;
        let archive = Archive::open(&self.archive_url, &s3)
            .await
            .context("opening the archive")?;
        let bootstrap = match (&self.bootstrap, self.dry_run) {
            (Some(b), _) => b.clone(),
            (None, true) => String::new(),
            (None, false) => anyhow::bail!("--bootstrap or KAFKA_BOOTSTRAP_SERVERS is required"),
        };
        Ok((archive, crate::common::kafka_settings(bootstrap)?))
    }

    /// The command line that resumes this replay from `from`.
    pub fn resume_command(&self, from: DateTime<Utc>, replay_id: &str) -> String {
        let mut cmd = format!(
            "slackline replay --from {} --to {}",
            from.to_rfc3339_opts(SecondsFormat::Micros, true),
            self.to.to_rfc3339_opts(SecondsFormat::Micros, true)
        );
        for c in &self.channels {
            cmd.push_str(&format!(" --channel {c}"));
        }
        if let Some(t) = &self.team {
            cmd.push_str(&format!(" --team {t}"));
        }
        for t in &self.event_types {
            cmd.push_str(&format!(" --event-type {t}"));
        }
        if let Some(r) = self.rate {
            cmd.push_str(&format!(" --rate {r}"));
        }
        if self.topic != slackline_kafka::topics::RAW_EVENTS {
            cmd.push_str(&format!(" --topic {}", self.topic));
        }
        if !self.prefix.is_empty() {
            cmd.push_str(&format!(" --prefix {}", self.prefix));
        }
        cmd.push_str(&format!(" --replay-id {replay_id}"));
        cmd
    }
}

/// The progress bar on a terminal (stderr).
struct Bar(indicatif::ProgressBar, Instant);

impl Bar {
    fn new() -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} objects, {msg}, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Bar(bar, Instant::now())
    }
}

impl Progress for Bar {
    fn update(&self, p: &ReplayProgress) {
        self.0.set_length(p.objects_total);
        self.0.set_position(p.objects_read);
        let secs = self.1.elapsed().as_secs_f64().max(0.001);
        let mut msg = format!(
            "{} produced ({:.0}/s), {} acknowledged",
            p.produced,
            p.produced as f64 / secs,
            p.acknowledged
        );
        if p.failed > 0 {
            msg.push_str(&format!(", {} NOT acknowledged", p.failed));
        }
        self.0.set_message(msg);
    }
}

/// How long after a range's end its requests can still be arriving in the archive: a
/// request is written up to `SEGMENT_KEY_SKEW` after it was received (it waited for the
/// archive), and an S3 batch is stored after its linger and PUT.
const SETTLE: Duration = Duration::from_secs(15);

/// Runs a replay for the CLI: first waits until `--to` is [`SETTLE`] in the past, then
/// shows a progress bar on a terminal, the summary (one JSON line when stdout is not
/// a terminal), an error naming the `--from` to resume from when anything was not
/// acknowledged or not read.
///
/// # Errors
///
/// The replay could not run, or did not complete.
pub async fn run_replay(args: &Args, options: &ReplayOptions) -> anyhow::Result<ReplaySummary> {
    // A range that ends in the last moments is not all in the archive yet: wait
    // until it is, rather than report a replay complete that missed its last requests.
    let settled = options.to + chrono::Duration::from_std(SETTLE).unwrap_or_default();
    if let Ok(wait) = (settled - Utc::now()).to_std() {
        eprintln!(
            "waiting {:.0} s for requests received before --to to reach the archive",
            wait.as_secs_f64().ceil()
        );
        tokio::time::sleep(wait).await;
    }
    let (archive, kafka) = args.open().await?;
    let bar = std::io::stderr().is_terminal().then(Bar::new);
    let tuning = Tuning {
        delivery_timeout: Duration::from_secs(args.delivery_timeout.max(1)),
        ..Tuning::default()
    };
    let summary = match &bar {
        Some(bar) => replay_tuned(&archive, &kafka, options, bar, &tuning).await,
        None => replay_tuned(&archive, &kafka, options, &NoProgress, &tuning).await,
    }?;
    if let Some(bar) = bar {
        bar.0.finish();
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if out.is_terminal() {
        print_human(&mut out, &summary)?;
    } else {
        writeln!(out, "{}", summary.to_json(options))?;
    }
    out.flush()?;
    if !summary.is_complete() {
        let from = summary.first_unacknowledged.unwrap_or(options.from);
        let what = match &summary.read_error {
            Some(e) => format!("reading the archive failed ({e})"),
            None => format!(
                "{} of {} records were not acknowledged by Kafka (first error: {})",
                summary.not_acknowledged,
                summary.produced,
                summary.first_delivery_error.as_deref().unwrap_or("-")
            ),
        };
        anyhow::bail!(
            "replay {} incomplete: {what}; resume with --from {}:\n  {}",
            summary.replay_id,
            from.to_rfc3339_opts(SecondsFormat::Micros, true),
            args.resume_command(from, &summary.replay_id)
        );
    }
    Ok(summary)
}

fn print_human(out: &mut impl Write, s: &ReplaySummary) -> std::io::Result<()> {
    writeln!(
        out,
        "replay {}{}: {} objects read, {} requests in range, {} skipped by filter, {} {}, {} acknowledged, {} not acknowledged, {} unreadable ({:.1} s)",
        s.replay_id,
        if s.dry_run { " (dry run)" } else { "" },
        s.objects_read,
        s.in_range,
        s.skipped_by_filter,
        s.produced,
        if s.dry_run { "would be produced" } else { "produced" },
        s.acknowledged,
        s.not_acknowledged,
        s.unreadable.len(),
        s.elapsed_secs
    )?;
    for u in s.unreadable.iter().take(20) {
        writeln!(out, "  unreadable {}: {}", u.locator, u.reason)?;
    }
    if s.dry_run {
        writeln!(out, "per event type:")?;
        for (t, n) in &s.by_type {
            writeln!(out, "  {t:<30} {n}")?;
        }
        writeln!(out, "per channel:")?;
        for (c, n) in &s.by_channel {
            writeln!(out, "  {c:<30} {n}")?;
        }
    }
    Ok(())
}

/// `slackline replay`.
///
/// # Errors
///
/// As [`run_replay`].
pub async fn run(args: Args) -> anyhow::Result<()> {
    let options = args.options();
    run_replay(&args, &options).await.map(|_| ())
}
