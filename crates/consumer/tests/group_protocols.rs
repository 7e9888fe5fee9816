//! The runtime under both consumer group protocols of Kafka 4.x, on the real broker:
//! the classic protocol (JoinGroup/SyncGroup, the client-side eager range assignor:
//! every rebalance revokes every partition of every member) and KIP-848
//! (`group.protocol=consumer` in `KAFKA_PROPERTIES`: the broker's range assignor,
//! incremental: only the partitions that move are revoked).
//!
//! For each protocol, member A consumes a live stream alone, member B joins the group
//! mid-stream, then A leaves mid-stream, while some keys go through the retry topic.
//! Every application of a record is logged, not deduplicated, with the member that
//! applied it. The runtime's guarantees must hold under its revoke/assign handling:
//! every record applied, each key's records first applied in order; a record applied
//! again only as the runtime documents it (at-least-once after a rebalance: the next
//! owner replays, in order, from the committed offset, i.e. a key rewinds at most once
//! per member and rebalance, and a member that takes a key over only at its first
//! application of it: never a second copy of records a previous owner had already
//! moved to the retry topic); under KIP-848 a partition that stays with its member is
//! never replayed.
//!
//! Each run prints its rebalance figures (a measurement, not asserted): for the join
//! and for the leave, how long until every partition is consumed by the member that
//! ends up owning it, and the longest pause of any partition. Several runs of both
//! protocols, one after the other, with a table:
//! `REBALANCE_RUNS=5 cargo test -p slackline-consumer --test group_protocols -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helpers::*;
use prometheus::Registry;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use slackline_consumer::{ConsumerMetrics, ConsumerRuntime, Event, HandlerError};
use slackline_service::Shutdown;

/// Two keys per partition.
const KEYS: usize = 8;
/// Rounds of the live stream: one record per key every `ROUND` (50 records/s per key,
/// 100 per partition), so a pause of a partition shows as a gap in its applications.
const ROUNDS: usize = 750;
const ROUND: Duration = Duration::from_millis(20);
/// One handler call's work. With at most 4 calls at a time a member handles at most
/// ~330 records/s, less than the stream's 400: one member alone falls behind, so a
/// rebalance finds records read ahead, queued behind busy keys and not yet
/// committed (what the next owner replays), and keys parked in the retry topic.
const WORK: Duration = Duration::from_millis(12);
/// The heartbeat interval of both protocols: the test broker's
/// `group.consumer.heartbeat.interval.ms` for KIP-848, `heartbeat.interval.ms` for
/// classic, so that neither protocol is favoured by a shorter interval.
const HEARTBEAT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Member {
    A,
    B,
}

/// One application of a record (a handler call that succeeded).
#[derive(Debug, Clone, Copy)]
struct Applied {
    member: Member,
    key: usize,
    seq: usize,
    partition: i32,
    at: Instant,
}

/// Every application, in the order they happened; not deduplicated.
#[derive(Default)]
struct Log {
    applied: Vec<Applied>,
    /// Handler calls per (key, seq), successful or not.
    calls: HashMap<(usize, usize), u32>,
}

/// Keys 0 and 5 fail every 25th record for four calls: with two quick retries a round
/// is three calls, so each of those goes through the retry topic once, and keys are
/// parked while the group rebalances.
fn fails(key: usize, seq: usize, call: u32) -> bool {
    (key == 0 || key == 5) && seq % 25 == 7 && call <= 4
}

fn handler(
    member: Member,
    log: Arc<Mutex<Log>>,
) -> impl Fn(
    Event,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send>>
       + Send
       + Sync
       + 'static {
    move |event: Event| {
        let log = log.clone();
        Box::pin(async move {
            let v: serde_json::Value = serde_json::from_slice(&event.payload)
                .map_err(|e| HandlerError::permanent(format!("not json: {e}")))?;
            let (Some(key), Some(seq)) = (v["key"].as_u64(), v["seq"].as_u64()) else {
                return Err(HandlerError::permanent("no key/seq"));
            };
            let (key, seq) = (key as usize, seq as usize);
            // Work: calls are in flight when partitions are revoked.
            tokio::time::sleep(WORK).await;
            let mut log = log.lock().unwrap();
            let call = {
                let c = log.calls.entry((key, seq)).or_default();
                *c += 1;
                *c
            };
            if fails(key, seq, call) {
                return Err(HandlerError::retryable("flaky"));
            }
            log.applied.push(Applied {
                member,
                key,
                seq,
                partition: event.partition,
                at: Instant::now(),
            });
            Ok(())
        })
    }
}

/// Produces `ROUNDS` rounds, one record of every key per round, one round every
/// `ROUND`; `produced` counts finished rounds.
async fn live_stream(cluster_bootstrap: String, topic: String, produced: Arc<AtomicUsize>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster_bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("log_level", "3")
        .create()
        .unwrap();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Vec::new();
    for seq in 0..ROUNDS {
        tick.tick().await;
        for k in 0..KEYS {
            let payload = serde_json::to_vec(&serde_json::json!({"key": k, "seq": seq})).unwrap();
            let id = event_id(k, seq);
            let key = key(k);
            let record = FutureRecord::to(&topic)
                .partition(k as i32 % PARTITIONS)
                .key(&key)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "slack-event-id",
                    value: Some(id.as_str()),
                }));
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        produced.store(seq + 1, Ordering::SeqCst);
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Rebalance figures of one phase (a join or a leave).
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// From the event until every partition is consumed by the member that owns it at
    /// the end of the phase (each partition's first application by its final owner
    /// after which no other member applied any of it).
    handover: Duration,
    /// The longest pause of any partition around the event: the longest time between
    /// two consecutive applications of one partition, from 1 s before the event to
    /// the end of the phase.
    longest_pause: Duration,
    /// Partitions whose owner changed.
    moved: usize,
    /// Applications that repeated an already applied record.
    replays: usize,
}

#[derive(Debug, Clone, Copy)]
struct RunFigures {
    join: Phase,
    leave: Phase,
}

fn phase(applied: &[Applied], from: Instant, to: Option<Instant>) -> Phase {
    let in_window = |a: &&Applied| a.at >= from && to.is_none_or(|t| a.at < t);
    let mut by_partition: BTreeMap<i32, Vec<&Applied>> = BTreeMap::new();
    for a in applied.iter().filter(in_window) {
        by_partition.entry(a.partition).or_default().push(a);
    }
    let mut handover = Duration::ZERO;
    let mut moved = 0;
    for (p, apps) in &by_partition {
        let owner = apps.last().unwrap().member;
        let before = applied
            .iter()
            .rfind(|a| a.partition == *p && a.at < from)
            .map(|a| a.member);
        if before.is_some_and(|m| m != owner) {
            moved += 1;
        }
        // The first application of the final owner's last uninterrupted run.
        let start = apps
            .iter()
            .rposition(|a| a.member != owner)
            .map_or(0, |i| i + 1);
        handover = handover.max(apps[start].at - from);
    }
    assert_eq!(
        by_partition.len(),
        PARTITIONS as usize,
        "every partition consumed in the phase"
    );
    let pause_from = from.checked_sub(Duration::from_secs(1)).unwrap_or(from);
    let mut longest_pause = Duration::ZERO;
    for p in 0..PARTITIONS {
        let times: Vec<Instant> = applied
            .iter()
            .filter(|a| a.partition == p && a.at >= pause_from && to.is_none_or(|t| a.at < t))
            .map(|a| a.at)
            .collect();
        for w in times.windows(2) {
            longest_pause = longest_pause.max(w[1] - w[0]);
        }
    }
    let replays = replays_in(applied, from, to);
    Phase {
        handover,
        longest_pause,
        moved,
        replays,
    }
}

/// Applications in the window that repeated a record already applied before them.
fn replays_in(applied: &[Applied], from: Instant, to: Option<Instant>) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut replays = 0;
    for a in applied {
        let again = !seen.insert((a.key, a.seq));
        if again && a.at >= from && to.is_none_or(|t| a.at < t) {
            replays += 1;
        }
    }
    replays
}

/// Checks every key's applications: first applications are 0..ROUNDS in order (none
/// lost, none overtaking another); anything else is a replay of a record already
/// applied, and a replay is only what the runtime documents: the member that gets a
/// partition at a rebalance replays from the committed offset. So per key, a replay
/// starts (rewinds) only after a rebalance, at most once per member and rebalance,
/// and for a member that takes the key over, only at its first application of it;
/// under KIP-848 never for a partition that kept its member. Returns how many keys
/// replayed at the join and at the leave.
fn assert_guarantees(
    protocol: GroupProtocol,
    applied: &[Applied],
    join_at: Instant,
    leave_at: Instant,
) -> (usize, usize) {
    let last_owner = |p: i32, before: Instant| {
        applied
            .iter()
            .rfind(|a| a.partition == p && a.at < before)
            .map(|a| a.member)
    };
    let phase_of = |t: Instant| usize::from(t >= join_at) + usize::from(t >= leave_at);
    let phase_start = [None, Some(join_at), Some(leave_at)];
    let mut replaying_keys = (0, 0);
    for k in 0..KEYS {
        let p = k as i32 % PARTITIONS;
        let mut next_new = 0usize;
        let mut prev: Option<usize> = None;
        // Per phase and member: applications of k so far, rewinds so far.
        let mut seen: HashMap<(usize, Member), usize> = HashMap::new();
        let mut rewinds: HashMap<(usize, Member), usize> = HashMap::new();
        let mut replays = [0usize; 3];
        for a in applied.iter().filter(|a| a.key == k) {
            let ph = phase_of(a.at);
            if a.seq == next_new {
                next_new += 1;
            } else if a.seq > next_new {
                panic!(
                    "key {k}: seq {} applied before seq {next_new} (lost or reordered)",
                    a.seq
                );
            } else {
                replays[ph] += 1;
                if prev.is_none_or(|s| a.seq <= s) {
                    let Some(event) = phase_start[ph] else {
                        panic!("key {k}: seq {} applied twice before any rebalance", a.seq);
                    };
                    let n = rewinds.entry((ph, a.member)).or_default();
                    *n += 1;
                    assert_eq!(
                        *n,
                        1,
                        "key {k}: {:?} replayed twice after one rebalance; {}",
                        a.member,
                        dump(applied, k, a.at)
                    );
                    let held_before = applied
                        .iter()
                        .any(|b| b.key == k && b.member == a.member && b.at < event);
                    if !held_before {
                        assert_eq!(
                            seen.get(&(ph, a.member)).copied().unwrap_or(0),
                            0,
                            "key {k}: {:?} took the key over, then replayed in the middle of \
                             its ownership (not from the committed offset); {}",
                            a.member,
                            dump(applied, k, a.at)
                        );
                    }
                }
            }
            *seen.entry((ph, a.member)).or_default() += 1;
            prev = Some(a.seq);
        }
        assert_eq!(next_new, ROUNDS, "key {k}: every record applied");
        replaying_keys.0 += usize::from(replays[1] > 0);
        replaying_keys.1 += usize::from(replays[2] > 0);
        if protocol == GroupProtocol::Consumer {
            // Incremental: a partition that stays with its member is not revoked, so
            // nothing of it is replayed.
            if last_owner(p, join_at) == last_owner(p, leave_at) {
                assert_eq!(
                    replays[1],
                    0,
                    "key {k}: replayed at the join though p{p} stayed; {}",
                    dump(applied, k, join_at)
                );
            }
            if last_owner(p, leave_at) == Some(Member::B) {
                assert_eq!(
                    replays[2],
                    0,
                    "key {k}: replayed at the leave though p{p} stayed with B; {}",
                    dump(applied, k, leave_at)
                );
            }
        }
    }
    replaying_keys
}

/// Key `k`'s applications around `at` (member, seq, ms from `at`), for a failure.
fn dump(applied: &[Applied], k: usize, at: Instant) -> String {
    let ms = |t: Instant| {
        if t >= at {
            (t - at).as_millis() as i64
        } else {
            -((at - t).as_millis() as i64)
        }
    };
    let around: Vec<String> = applied
        .iter()
        .filter(|a| a.key == k && ms(a.at).abs() < 3000)
        .map(|a| format!("{:?}:{}@{}", a.member, a.seq, ms(a.at)))
        .collect();
    format!("applications within 3 s: {}", around.join(" "))
}

/// One run: A alone, B joins, A leaves, all on a live stream. Asserts the guarantees
/// and returns the rebalance figures.
async fn run(protocol: GroupProtocol) -> RunFigures {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let settings = settings_for(&cluster, protocol, HEARTBEAT);
    let log = Arc::new(Mutex::new(Log::default()));
    let applied_total = || log.lock().unwrap().applied.len();

    let mut config = fast_config(&group, &source);
    config.max_concurrent_keys = 4;
    config.retry_delays = vec![Duration::from_millis(30); 10];
    config.commit_interval = Duration::from_millis(200);

    let produced = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn(live_stream(
        cluster.bootstrap_servers(),
        source.clone(),
        produced.clone(),
    ));

    let registry_a = Registry::new();
    let metrics_a = ConsumerMetrics::register(&registry_a).unwrap();
    let stop_a = Shutdown::new();
    let a = ConsumerRuntime::start(
        &settings,
        config.clone(),
        handler(Member::A, log.clone()),
        &metrics_a,
        stop_a.clone(),
    )
    .await
    .expect("A starts");
    wait_for("A consumes", Duration::from_secs(60), || {
        applied_total() >= KEYS * ROUNDS / 8
    })
    .await;

    let registry_b = Registry::new();
    let metrics_b = ConsumerMetrics::register(&registry_b).unwrap();
    let stop_b = Shutdown::new();
    let join_at = Instant::now();
    let b = ConsumerRuntime::start(
        &settings,
        config,
        handler(Member::B, log.clone()),
        &metrics_b,
        stop_b.clone(),
    )
    .await
    .expect("B starts");
    // Both members consume (B its share, A what it kept), for a while.
    wait_for("both members consume", Duration::from_secs(60), || {
        let log = log.lock().unwrap();
        let since = |m: Member| {
            log.applied
                .iter()
                .filter(|a| a.member == m && a.at > join_at)
                .count()
        };
        since(Member::B) >= 100 && since(Member::A) >= 100
    })
    .await;
    let b_seen = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        produced.load(Ordering::SeqCst) < ROUNDS,
        "A leaves mid-stream: the stream is too short for this rebalance"
    );
    let leave_at = Instant::now();
    stop_a.trigger();
    a.wait().await.expect("A stops cleanly");
    // A's in-flight calls may finish during its shutdown grace, not after it stopped.
    let a_stopped = Instant::now();

    stream.await.unwrap();
    wait_for("every record applied", Duration::from_secs(90), || {
        let log = log.lock().unwrap();
        let mut done = [0usize; KEYS];
        for a in &log.applied {
            done[a.key] = done[a.key].max(a.seq + 1);
        }
        done.iter().all(|d| *d == ROUNDS)
    })
    .await;
    wait_fully_committed(&cluster, &group, &source, Duration::from_secs(60)).await;
    stop_b.trigger();
    b.wait().await.expect("B stops cleanly");
    assert_fully_committed(&cluster, &group, &source).await;

    let log = log.lock().unwrap();
    let replaying_keys = assert_guarantees(protocol, &log.applied, join_at, leave_at);
    for (name, registry) in [("A", &registry_a), ("B", &registry_b)] {
        assert_eq!(
            metric(registry, "slackline_dlq_records_total", &group),
            0.0,
            "{name}: nothing dead-lettered"
        );
    }
    assert!(
        metric(&registry_a, "slackline_consumer_retried_total", &group)
            + metric(&registry_b, "slackline_consumer_retried_total", &group)
            > 0.0,
        "records went through the retry topic"
    );
    assert!(
        log.applied
            .iter()
            .filter(|a| a.at > a_stopped)
            .all(|a| a.member == Member::B),
        "nothing applied by A after it stopped"
    );

    let figures = RunFigures {
        join: phase(&log.applied, join_at, Some(leave_at)),
        leave: phase(&log.applied, leave_at, None),
    };
    let calls: u32 = log.calls.values().sum();
    eprintln!(
        "{}: join: every partition with its final owner after {:.2} s ({} moved), longest \
         partition pause {:.2} s, {} replays; leave: {:.2} s ({} moved), longest pause {:.2} s, \
         {} replays; keys replaying (join, leave): {:?}; both members past \
         100 records {:.2} s after the join; {} handler calls for {} records",
        protocol.name(),
        figures.join.handover.as_secs_f64(),
        figures.join.moved,
        figures.join.longest_pause.as_secs_f64(),
        figures.join.replays,
        figures.leave.handover.as_secs_f64(),
        figures.leave.moved,
        figures.leave.longest_pause.as_secs_f64(),
        figures.leave.replays,
        replaying_keys,
        (b_seen - join_at).as_secs_f64(),
        calls,
        KEYS * ROUNDS,
    );
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_protocol_join_and_leave_keep_every_guarantee() {
    run(GroupProtocol::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_consumer_protocol_join_and_leave_keep_every_guarantee() {
    run(GroupProtocol::Consumer).await;
}

/// The measurement: `REBALANCE_RUNS` (default 5) runs of each protocol, alternating,
/// one at a time, then a table of the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of several minutes; run with --ignored --nocapture"]
async fn rebalance_time_of_both_protocols() {
    let runs: usize = std::env::var("REBALANCE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut figures: BTreeMap<&str, Vec<RunFigures>> = BTreeMap::new();
    for _ in 0..runs {
        for protocol in [GroupProtocol::Classic, GroupProtocol::Consumer] {
            let f = run(protocol).await;
            figures.entry(protocol.name()).or_default().push(f);
        }
    }
    println!();
    println!(
        "rebalance of 2 runtime members, {PARTITIONS} partitions (source + retry), \
         heartbeat {} ms, Apache Kafka {}; seconds, median [min-max] of {runs} runs",
        HEARTBEAT.as_millis(),
        slackline_kafka::embedded::kafka_version()
    );
    println!();
    println!(
        "| protocol | join: all partitions with final owner | join: longest partition pause \
         | leave: all partitions with final owner | leave: longest partition pause \
         | replayed records (join / leave) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, runs) in &figures {
        let stat = |f: &dyn Fn(&RunFigures) -> Duration| {
            let mut v: Vec<f64> = runs.iter().map(|r| f(r).as_secs_f64()).collect();
            v.sort_by(f64::total_cmp);
            format!("{:.2} [{:.2}-{:.2}]", v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let replays = |f: &dyn Fn(&RunFigures) -> usize| {
            runs.iter()
                .map(f)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} / {} |",
            stat(&|r| r.join.handover),
            stat(&|r| r.join.longest_pause),
            stat(&|r| r.leave.handover),
            stat(&|r| r.leave.longest_pause),
            replays(&|r| r.join.replays),
            replays(&|r| r.leave.replays),
        );
    }
}
