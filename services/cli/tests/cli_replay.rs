//! `slackline replay` and `slackline backfill` against the real Apache Kafka broker,
//! from the file archive and from S3 (a real Garage server).
//!
//! Requests are written with `Archive::write` over two hours (several segments: the
//! file archive rotates after every batch, S3 puts one object per batch), with
//! receive times that carry microseconds. The replayed range's boundaries fall inside
//! a second, with requests 1 µs either side of each. What the tests show:
//!
//! - exactly the requests received in `[from, to)` are on the topic (the topic's
//!   length is checked, not only what was found), each keyed by its channel, with the
//!   edge's headers rebuilt from the archive (its locator, received-at, event id and
//!   type, the Slack retry headers) and `slackline-replay: <id>`, the body byte for
//!   byte; each channel's records are in archive order;
//! - a foreign object and a line that is not a record are reported by locator and
//!   skipped; a Slack retry archived twice is produced twice;
//! - a dry run produces nothing and counts per type and channel; the filters select
//!   exactly their requests;
//! - a replay interrupted by the loss of its (private) broker exits non-zero with how
//!   many records were not acknowledged and the `--from` to resume from; resuming
//!   from there puts every request of the range on the topic at least once;
//! - `backfill` replays the range and says what to follow.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use slackline::replay::{self, NoProgress, ReplayOptions, ReplaySummary};
use slackline_archive::{
    Archive, ArchiveOptions, ArchiveRecord, FileArchive, LogFaults, S3Settings,
};
use slackline_kafka::embedded::{BrokerConfig, EmbeddedBroker};
use slackline_kafka::headers;
use slackline_kafka::topics::{TopicNames, TopicSpec};
use slackline_kafka::KafkaSettings;
use slackline_testkit::kafka::{read_topic, topic_len, Record, TestCluster};
use slackline_testkit::Garage;

const PARTITIONS: i32 = 3;
const HOME: &str = "T0HOME";
const OTHER: &str = "T0OTHER";

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 4, 10, 0, 0).unwrap()
}

/// The range replayed: both ends inside a second.
fn range() -> (DateTime<Utc>, DateTime<Utc>) {
    let from = base() + chrono::Duration::microseconds((32 * 60 + 17) * 1_000_000 + 250_000);
    let to = base() + chrono::Duration::microseconds((81 * 60 + 43) * 1_000_000 + 750_000);
    (from, to)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// One archived request, as the test wrote it.
#[derive(Debug, Clone)]
struct Req {
    event_id: String,
    channel: String,
    team: String,
    event_type: String,
    received_at: DateTime<Utc>,
    retry: Option<(String, String)>,
    body: Vec<u8>,
    /// Where the archive put it.
    locator: String,
}

impl Req {
    fn new(
        n: usize,
        channel: &str,
        team: &str,
        event_type: &str,
        received_at: DateTime<Utc>,
    ) -> Req {
        let event_id = format!("Ev0REP{n:04}");
        let ts = format!("{}.{:06}", 1_741_000_000 + n, n);
        let event = if event_type == "reaction_added" {
            serde_json::json!({"type": "reaction_added", "user": "U0CUST", "reaction": "eyes",
                "item": {"type": "message", "channel": channel, "ts": ts}, "event_ts": ts})
        } else {
            serde_json::json!({"type": "message", "channel": channel, "user": "U0CUST",
                "text": format!("message {n} 😀"), "ts": ts})
        };
        let body = serde_json::json!({"type": "event_callback", "team_id": team,
            "api_app_id": "A0APP", "event_id": event_id, "event_time": 1_741_000_000 + n,
            "event": event});
        Req {
            event_id,
            channel: channel.to_owned(),
            team: team.to_owned(),
            event_type: event_type.to_owned(),
            received_at,
            retry: None,
            body: serde_json::to_vec(&body).unwrap(),
            locator: String::new(),
        }
    }

    fn record(&self) -> ArchiveRecord {
        let mut headers = BTreeMap::from([
            ("content-type".to_owned(), "application/json".to_owned()),
            (
                "x-slack-request-timestamp".to_owned(),
                self.received_at.timestamp().to_string(),
            ),
        ]);
        if let Some((num, reason)) = &self.retry {
            headers.insert("x-slack-retry-num".into(), num.clone());
            headers.insert("x-slack-retry-reason".into(), reason.clone());
        }
        ArchiveRecord {
            received_at: self.received_at,
            headers,
            body: Bytes::from(self.body.clone()),
        }
    }

    fn in_range(&self) -> bool {
        let (from, to) = range();
        self.received_at >= from && self.received_at < to
    }

    /// The headers the edge would have set, then the replay's.
    fn expected_headers(&self, replay_id: &str) -> Vec<(String, String)> {
        let mut out = vec![
            (headers::ARCHIVE_KEY.to_owned(), self.locator.clone()),
            (headers::RECEIVED_AT.to_owned(), time(self.received_at)),
            (headers::EVENT_ID.to_owned(), self.event_id.clone()),
            (headers::EVENT_TYPE.to_owned(), self.event_type.clone()),
        ];
        if let Some((num, reason)) = &self.retry {
            out.push((headers::RETRY_NUM.to_owned(), num.clone()));
            out.push((headers::RETRY_REASON.to_owned(), reason.clone()));
        }
        out.push((headers::REPLAY.to_owned(), replay_id.to_owned()));
        out
    }
}

/// `key#offset+length` as (key, offset) for sorting into archive order.
fn archive_position(locator: &str) -> (String, u64) {
    match locator.split_once('#') {
        Some((key, range)) => (
            key.to_owned(),
            range.split('+').next().unwrap().parse().unwrap(),
        ),
        None => (locator.to_owned(), 0),
    }
}

/// The groups of requests written together (each group spans less than a minute of
/// receive time, like a real segment): 24 groups over two hours, the range's
/// boundaries ± 1 µs, and a Slack retry archived twice after its first delivery.
fn requests() -> Vec<Vec<Req>> {
    let mut n = 0;
    let mut next = |channel: &str, team: &str, kind: &str, at: DateTime<Utc>| {
        n += 1;
        Req::new(n, channel, team, kind, at)
    };
    let mut groups = Vec::new();
    for g in 0..24i64 {
        let start = base() + chrono::Duration::seconds(g * 300 + 7);
        groups.push(
            (0..5i64)
                .map(|k| {
                    let at = start
                        + chrono::Duration::microseconds(k * 9_000_000 + g * k * 37_000 + 123_456);
                    let channel = format!("C0REP{}", (g + k) % 3);
                    let team = if k % 4 == 3 { OTHER } else { HOME };
                    let kind = if k == 2 { "reaction_added" } else { "message" };
                    next(&channel, team, kind, at)
                })
                .collect(),
        );
    }
    let (from, to) = range();
    let us = chrono::Duration::microseconds(1);
    groups.push(vec![
        next("C0REP0", HOME, "message", from - us),
        next("C0REP1", HOME, "message", from),
    ]);
    groups.push(vec![
        next("C0REP1", HOME, "message", to - us),
        next("C0REP2", HOME, "message", to),
    ]);
    let first = next(
        "C0REP2",
        HOME,
        "message",
        base() + chrono::Duration::minutes(45),
    );
    let mut retry = first.clone();
    retry.retry = Some(("1".into(), "http_timeout".into()));
    let mut retry_again = retry.clone();
    retry.received_at = first.received_at + chrono::Duration::milliseconds(1500);
    retry_again.received_at = first.received_at + chrono::Duration::milliseconds(2700);
    groups.push(vec![first]);
    groups.push(vec![retry]);
    groups.push(vec![retry_again]);
    groups
}

/// Foreign things in the range's hour folders: an object that is not JSON, and a
/// segment whose first line is JSON but not a record (its second line is a request,
/// replayed like the others). Returns the unreadable locators and the request.
async fn put_foreign(archive: &Archive) -> (BTreeSet<String>, Req) {
    let foreign = "raw/2025/03/04/10/20250304T104000.000000Z-foreign.json";
    archive
        .put(foreign, Bytes::from_static(b"\x00 not json at all"))
        .await
        .expect("put a foreign object");
    let mixed = "raw/2025/03/04/10/20250304T105000.000000Z-mixed0000001.jsonl";
    let mut req = Req::new(
        9001,
        "C0REP1",
        HOME,
        "message",
        base() + chrono::Duration::seconds(50 * 60 + 1),
    );
    let junk = b"{\"not\":\"a record\"}\n";
    let mut bytes = junk.to_vec();
    let line = req.record().to_json().unwrap();
    bytes.extend_from_slice(&line);
    bytes.push(b'\n');
    archive
        .put(mixed, Bytes::from(bytes))
        .await
        .expect("put a mixed segment");
    req.locator = format!("{mixed}#{}+{}", junk.len(), line.len());
    let unreadable = BTreeSet::from([foreign.to_owned(), format!("{mixed}#0+{}", junk.len() - 1)]);
    (unreadable, req)
}

/// Writes every group concurrently (so a group lands in one batch, or a few) and the
/// groups one after the other. Returns every request with its locator, in archive
/// order.
async fn write_all(archive: &Archive) -> Vec<Req> {
    let mut out = Vec::new();
    for group in requests() {
        let tasks: Vec<_> = group
            .into_iter()
            .map(|mut req| {
                let archive = archive.clone();
                tokio::spawn(async move {
                    req.locator = archive.write(&req.record()).await.expect("archive write");
                    req
                })
            })
            .collect();
        for task in tasks {
            out.push(task.await.expect("writer task"));
        }
    }
    out.sort_by_key(|r| archive_position(&r.locator));
    out
}

fn file_archive(dir: &std::path::Path) -> Archive {
    let faults = LogFaults::new();
    faults.rotate_after_every_batch(true);
    Archive::File(FileArchive::open_with(dir, 1024, faults).expect("file archive"))
}

fn s3_settings(garage: &Garage) -> S3Settings {
    S3Settings::for_endpoint(
        &garage.endpoint,
        &garage.region,
        &garage.access_key_id,
        &garage.secret_access_key,
        Duration::from_secs(5),
    )
}

fn options(topic: &str) -> ReplayOptions {
    let (from, to) = range();
    ReplayOptions::new(from, to, topic)
}

/// Every record of `topic`, checking that it holds exactly `want`.
async fn read_exactly(bootstrap: &str, topic: &str, want: usize) -> Vec<Record> {
    let records = read_topic(bootstrap, topic, PARTITIONS, want, Duration::from_secs(60)).await;
    assert_eq!(records.len(), want, "records on {topic}");
    let bootstrap = bootstrap.to_owned();
    let name = topic.to_owned();
    let len = tokio::task::spawn_blocking(move || topic_len(&bootstrap, &name, PARTITIONS))
        .await
        .unwrap();
    assert_eq!(
        len, want as i64,
        "the topic holds exactly the replayed records"
    );
    records
}

/// The records are exactly `expected` (archive order), keyed and headed like the
/// edge's plus the replay header, each channel in archive order.
fn check_records(records: &[Record], expected: &[Req], replay_id: &str) {
    let by_locator: BTreeMap<&str, &Req> =
        expected.iter().map(|r| (r.locator.as_str(), r)).collect();
    assert_eq!(by_locator.len(), expected.len(), "locators are unique");
    let mut seen = BTreeSet::new();
    for record in records {
        let locator = record
            .header(headers::ARCHIVE_KEY)
            .expect("archive-key header");
        let req = by_locator
            .get(locator)
            .unwrap_or_else(|| panic!("replayed a request not expected: {locator}"));
        assert!(seen.insert(locator.to_owned()), "{locator} replayed twice");
        assert_eq!(
            record.key.as_deref(),
            Some(req.channel.as_str()),
            "{locator}: key"
        );
        assert_eq!(record.payload, req.body, "{locator}: body byte for byte");
        assert_eq!(
            record.headers,
            req.expected_headers(replay_id),
            "{locator}: headers"
        );
    }
    let mut per_channel: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for record in records {
        per_channel
            .entry(record.key.as_deref().unwrap())
            .or_default()
            .push(record);
    }
    for (channel, mut got) in per_channel {
        assert!(
            got.iter().all(|r| r.partition == got[0].partition),
            "{channel} on one partition"
        );
        got.sort_by_key(|r| r.offset);
        let got: Vec<&str> = got
            .iter()
            .map(|r| r.header(headers::ARCHIVE_KEY).unwrap())
            .collect();
        let want: Vec<&str> = expected
            .iter()
            .filter(|r| r.channel == channel)
            .map(|r| r.locator.as_str())
            .collect();
        assert_eq!(got, want, "{channel}: archive order");
    }
}

fn check_summary(summary: &ReplaySummary, expected: &[Req], unreadable: &BTreeSet<String>) {
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(summary.produced, expected.len() as u64);
    assert_eq!(summary.acknowledged, expected.len() as u64);
    assert_eq!(summary.not_acknowledged, 0);
    assert_eq!(summary.in_range, expected.len() as u64);
    assert_eq!(summary.skipped_by_filter, 0);
    assert_eq!(summary.first_unacknowledged, None);
    let got: BTreeSet<String> = summary
        .unreadable
        .iter()
        .map(|u| u.locator.clone())
        .collect();
    assert_eq!(&got, unreadable, "unreadable locators");
    assert!(summary.objects_read >= 5, "several segments: {summary:?}");
    assert_eq!(summary.objects_read, summary.objects_listed);
}

/// Writes the fixture into `archive`; returns the requests in range (archive order,
/// the mixed segment's request included) and the unreadable locators.
async fn fixture(archive: &Archive) -> (Vec<Req>, Vec<Req>, BTreeSet<String>) {
    let all = write_all(archive).await;
    let (unreadable, mixed) = put_foreign(archive).await;
    let mut expected: Vec<Req> = all.iter().filter(|r| r.in_range()).cloned().collect();
    expected.push(mixed);
    expected.sort_by_key(|r| archive_position(&r.locator));
    // The fixture is what the tests claim: boundaries, the retry, several segments.
    let (from, to) = range();
    assert!(expected.iter().any(|r| r.received_at == from));
    assert!(!expected.iter().any(|r| r.received_at == to));
    assert!(all.iter().any(|r| r.received_at == to));
    assert_eq!(
        expected
            .iter()
            .filter(|r| r.event_id == "Ev0REP0125")
            .count(),
        3
    );
    let segments: BTreeSet<String> = all.iter().map(|r| archive_position(&r.locator).0).collect();
    assert!(segments.len() >= 20, "{} segments", segments.len());
    (all, expected, unreadable)
}

async fn replay_and_check(archive: &Archive, cluster: &TestCluster) {
    let (_, expected, unreadable) = fixture(archive).await;
    let topic = cluster.names().raw_events();
    cluster.create_topic(&topic, PARTITIONS);
    let options = options(&topic);
    let summary = replay::replay(archive, &cluster.settings(), &options, &NoProgress)
        .await
        .expect("replay");
    check_summary(&summary, &expected, &unreadable);
    let records = read_exactly(&cluster.bootstrap_servers(), &topic, expected.len()).await;
    check_records(&records, &expected, &options.replay_id);
    // The Slack retry archived twice is produced twice (the normalizer dedupes).
    let retries = records
        .iter()
        .filter(|r| r.header(headers::EVENT_ID) == Some("Ev0REP0125"))
        .filter(|r| r.header(headers::RETRY_NUM) == Some("1"))
        .count();
    assert_eq!(retries, 2, "both archived retries produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_exactly_the_range_from_the_file_archive() {
    let cluster = TestCluster::kafka();
    let dir = tempfile::tempdir().unwrap();
    let archive = file_archive(dir.path());
    replay_and_check(&archive, &cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_exactly_the_range_from_s3() {
    let cluster = TestCluster::kafka();
    let garage = tokio::task::spawn_blocking(Garage::start)
        .await
        .unwrap()
        .expect("garage starts");
    let archive = Archive::open_with(
        &garage.archive_url("slack"),
        &s3_settings(&garage),
        &ArchiveOptions {
            s3_linger: Duration::from_millis(20),
            ..ArchiveOptions::default()
        },
    )
    .await
    .expect("open the S3 archive");
    replay_and_check(&archive, &cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_and_filters_select() {
    let cluster = TestCluster::kafka();
    let dir = tempfile::tempdir().unwrap();
    let archive = file_archive(dir.path());
    let (_, expected, unreadable) = fixture(&archive).await;
    let topic = cluster.names().raw_events();
    cluster.create_topic(&topic, PARTITIONS);
    let settings = cluster.settings();

    // Dry run: counts per type and channel, nothing produced.
    let mut dry = options(&topic);
    dry.dry_run = true;
    let summary = replay::replay(&archive, &settings, &dry, &NoProgress)
        .await
        .expect("dry run");
    assert!(summary.is_complete());
    assert_eq!(summary.produced, expected.len() as u64);
    assert_eq!(summary.acknowledged, 0);
    let mut by_type = BTreeMap::new();
    let mut by_channel = BTreeMap::new();
    for r in &expected {
        *by_type.entry(r.event_type.clone()).or_insert(0u64) += 1;
        *by_channel.entry(r.channel.clone()).or_insert(0u64) += 1;
    }
    assert_eq!(summary.by_type, by_type);
    assert_eq!(summary.by_channel, by_channel);
    let got: BTreeSet<String> = summary
        .unreadable
        .iter()
        .map(|u| u.locator.clone())
        .collect();
    assert_eq!(got, unreadable);

    // Team filter (dry run): the other team's requests only.
    let mut team = dry.clone();
    team.team = Some(OTHER.into());
    let summary = replay::replay(&archive, &settings, &team, &NoProgress)
        .await
        .unwrap();
    let others = expected.iter().filter(|r| r.team == OTHER).count() as u64;
    assert!(others > 0);
    assert_eq!(summary.produced, others);
    assert_eq!(summary.skipped_by_filter, expected.len() as u64 - others);

    let bootstrap = cluster.bootstrap_servers();
    let t = topic.clone();
    let b = bootstrap.clone();
    let len = tokio::task::spawn_blocking(move || topic_len(&b, &t, PARTITIONS))
        .await
        .unwrap();
    assert_eq!(len, 0, "a dry run produces nothing");

    // Channel and event type filters, produced for real: exactly those requests.
    let mut filtered = options(&topic);
    filtered.channels = vec!["C0REP1".into(), "C0REP2".into()];
    filtered.event_types = vec!["reaction_added".into()];
    let summary = replay::replay(&archive, &settings, &filtered, &NoProgress)
        .await
        .expect("filtered replay");
    let want: Vec<Req> = expected
        .iter()
        .filter(|r| r.channel != "C0REP0" && r.event_type == "reaction_added")
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert!(summary.is_complete());
    assert_eq!(summary.produced, want.len() as u64);
    assert_eq!(
        summary.skipped_by_filter,
        (expected.len() - want.len()) as u64
    );
    let records = read_exactly(&bootstrap, &topic, want.len()).await;
    check_records(&records, &want, &filtered.replay_id);
}

fn slackline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slackline"))
        .args(args)
        .env_remove("KAFKA_PROPERTIES")
        .env_remove("ARCHIVE_URL")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .output()
        .expect("run slackline")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The replay runs as the CLI against a private broker that is killed mid-way: it
/// exits non-zero, says how many records were not acknowledged and the `--from` to
/// resume from; the broker comes back; the printed command's `--from` resumes, and
/// every request of the range is then on the topic at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_resumes_from_the_printed_from() {
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = tokio::task::spawn_blocking({
        let dir = broker_dir.path().to_owned();
        move || EmbeddedBroker::start(BrokerConfig::new(dir))
    })
    .await
    .unwrap()
    .expect("private broker");
    let bootstrap = broker.bootstrap_servers().to_owned();
    let topic = TopicNames::with_prefix("").raw_events();
    slackline_kafka::topics::create(
        &KafkaSettings::new(&bootstrap),
        &[TopicSpec {
            name: topic.clone(),
            partitions: PARTITIONS,
            configs: Vec::new(),
        }],
        1,
    )
    .await
    .expect("create the raw topic");

    let dir = tempfile::tempdir().unwrap();
    let archive = file_archive(dir.path());
    let (_, expected, _) = fixture(&archive).await;
    drop(archive);
    let url = format!("file://{}", dir.path().display());
    let (from, to) = range();
    let (from_s, to_s) = (time(from), time(to));
    // Paced so that the kill falls in the middle.
    let rate = (expected.len() as f64 / 6.0).to_string();
    let args: Vec<String> = [
        "replay",
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--archive-url",
        &url,
        "--bootstrap",
        &bootstrap,
        "--rate",
        &rate,
        "--delivery-timeout",
        "3",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let run = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            slackline(&args)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = bootstrap.clone();
        let t = topic.clone();
        let len = tokio::task::spawn_blocking(move || topic_len(&b, &t, PARTITIONS))
            .await
            .unwrap();
        if len as usize >= expected.len() / 3 {
            break;
        }
        assert!(Instant::now() < deadline, "replay did not start producing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.kill().expect("kill the broker");
    let killed_at = Instant::now();
    let output = run.await.unwrap();
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "an interrupted replay fails: {stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(text(&output.stdout).trim()).expect("one JSON line");
    let missing = summary["not_acknowledged"].as_u64().unwrap();
    assert!(missing > 0, "{summary}");
    assert_eq!(summary["produced"].as_u64().unwrap(), expected.len() as u64);
    assert!(
        stderr.contains(&format!(
            "{missing} of {} records were not acknowledged",
            expected.len()
        )),
        "{stderr}"
    );
    let resume = summary["resume_from"]
        .as_str()
        .expect("resume_from")
        .to_owned();
    assert!(
        stderr.contains(&format!("--from {resume}")),
        "the message names the --from: {stderr}"
    );
    let resume_t = DateTime::parse_from_rfc3339(&resume)
        .unwrap()
        .with_timezone(&Utc);
    assert!(resume_t >= from && resume_t < to);
    println!(
        "interrupted: {missing} of {} not acknowledged, resume from {resume} ({:.1} s after the kill)",
        expected.len(),
        killed_at.elapsed().as_secs_f64()
    );

    broker.restart().expect("restart the broker");
    let mut resumed = args.clone();
    resumed[2] = resume.clone();
    resumed.truncate(9);
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = resumed.iter().map(String::as_str).collect();
        slackline(&args)
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the resumed replay completes: {}",
        text(&output.stderr)
    );
    let again: serde_json::Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(again["not_acknowledged"], 0);

    // Every request of the range at least once (duplicates are the normalizer's and
    // the groups' to absorb).
    let b = bootstrap.clone();
    let t = topic.clone();
    let len = tokio::task::spawn_blocking(move || topic_len(&b, &t, PARTITIONS))
        .await
        .unwrap();
    let records = read_topic(
        &bootstrap,
        &topic,
        PARTITIONS,
        len as usize,
        Duration::from_secs(60),
    )
    .await;
    let on_topic: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.header(headers::ARCHIVE_KEY))
        .collect();
    let missing: Vec<&str> = expected
        .iter()
        .map(|r| r.locator.as_str())
        .filter(|l| !on_topic.contains(l))
        .collect();
    assert!(missing.is_empty(), "lost after resuming: {missing:?}");
    broker.stop().ok();
}

/// `backfill` replays the range and says what it does and what to follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_replays_the_range_and_says_what_to_follow() {
    let cluster = TestCluster::kafka();
    let prefix = cluster.names().prefix().to_owned();
    let topic = cluster.names().raw_events();
    cluster.create_topic(&topic, PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let archive = file_archive(dir.path());
    let (_, expected, _) = fixture(&archive).await;
    drop(archive);
    let url = format!("file://{}", dir.path().display());
    let (from, to) = range();
    let bootstrap = cluster.bootstrap_servers();
    let args = [
        "backfill",
        "--from",
        &time(from),
        "--to",
        &time(to),
        "--archive-url",
        &url,
        "--bootstrap",
        &bootstrap,
        "--prefix",
        &prefix,
        "--replay-id",
        "backfill-test-1",
    ]
    .map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        slackline(&args)
    })
    .await
    .unwrap();
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("replay id backfill-test-1"), "{stderr}");
    assert!(
        stderr.contains("slackline_normalizer_replayed_total"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{} records acknowledged", expected.len())),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(
        summary["acknowledged"].as_u64().unwrap(),
        expected.len() as u64
    );
    let records = read_exactly(&bootstrap, &topic, expected.len()).await;
    check_records(&records, &expected, "backfill-test-1");
}

#[test]
fn a_bad_range_or_rate_is_refused() {
    let out = slackline(&[
        "replay",
        "--from",
        "yesterday",
        "--to",
        "2025-01-01T00:00:00Z",
        "--archive-url",
        "file:///nonexistent",
        "--dry-run",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );
    let out = slackline(&[
        "replay",
        "--from",
        "2025-01-01T00:00:00Z",
        "--to",
        "2025-01-02T00:00:00Z",
        "--archive-url",
        "file:///nonexistent",
        "--rate",
        "0",
        "--dry-run",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("positive"),
        "{}",
        text(&out.stderr)
    );
}

/// An object that cannot be read stops the replay; the printed resume point is early
/// enough for a request received before that object's key but stored in a later
/// segment (a straggler: it waited for the archive while a request received after it
/// opened the segment), so resuming from it, once the object is readable again (here:
/// gone), loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_object_stops_the_replay_at_a_point_that_loses_no_straggler() {
    let cluster = TestCluster::kafka();
    let dir = tempfile::tempdir().unwrap();
    let archive = file_archive(dir.path());
    let key_time = base() + chrono::Duration::minutes(50);
    let mut early = Req::new(
        901,
        "C0REP0",
        HOME,
        "message",
        base() + chrono::Duration::minutes(40),
    );
    let mut opener = Req::new(902, "C0REP1", HOME, "message", key_time);
    let mut straggler = Req::new(
        903,
        "C0REP2",
        HOME,
        "message",
        key_time - chrono::Duration::seconds(5),
    );
    for req in [&mut early, &mut opener, &mut straggler] {
        req.locator = archive.write(&req.record()).await.expect("archive write");
    }
    let segment_of = |r: &Req| archive_position(&r.locator).0;
    assert!(
        slackline_archive::key_time(&segment_of(&straggler)).unwrap() > straggler.received_at,
        "the straggler is stored under a key later than its receive time"
    );
    // An object sorted between the early request's segment and the straggler's that
    // cannot be read (a dangling link: listed, never readable).
    let broken_key = format!(
        "raw/2025/03/04/10/{}-000000000000.jsonl",
        (key_time - chrono::Duration::seconds(1)).format("%Y%m%dT%H%M%S%.6fZ")
    );
    let broken = dir.path().join(&broken_key);
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &broken).unwrap();

    let topic = cluster.names().raw_events();
    cluster.create_topic(&topic, PARTITIONS);
    let (from, to) = range();
    let options = ReplayOptions::new(from, to, &topic);
    let stopped = replay::replay(&archive, &cluster.settings(), &options, &NoProgress)
        .await
        .expect("a replay that stops still returns its summary");
    assert!(
        stopped.read_error.is_some() && !stopped.is_complete(),
        "{stopped:?}"
    );
    let resume = stopped.first_unacknowledged.expect("a resume point");
    assert!(
        resume <= straggler.received_at && resume >= from,
        "resume at {resume} would skip the straggler received at {}",
        straggler.received_at
    );

    std::fs::remove_file(&broken).unwrap();
    let resumed = ReplayOptions::new(resume, to, &topic);
    let summary = replay::replay(&archive, &cluster.settings(), &resumed, &NoProgress)
        .await
        .expect("the resumed replay");
    assert!(summary.is_complete(), "{summary:?}");
    let total = stopped.acknowledged + summary.acknowledged;
    let records = read_topic(
        &cluster.bootstrap_servers(),
        &topic,
        PARTITIONS,
        usize::try_from(total).unwrap(),
        Duration::from_secs(60),
    )
    .await;
    for req in [&early, &opener, &straggler] {
        assert!(
            records
                .iter()
                .any(|r| r.header(headers::EVENT_ID) == Some(req.event_id.as_str())),
            "{} ({}) was lost between the stop and the resume",
            req.event_id,
            req.received_at
        );
    }
}
