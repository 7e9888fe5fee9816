//! `slackline rewind` on the real Apache Kafka broker (the mock cluster answers a
//! timestamp ListOffsets with the end, so a rewind to a time needs the real one): a
//! time moves each partition of the group's source and retry topics to its first
//! record at or after that time, `earliest`/`latest` to the watermarks, a dry run
//! commits nothing, a group with a live member is refused, and the normalizer's
//! group moves on its source topic only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use slackline::rewind::{self, GroupPlan, RewindError, Target};
use slackline_testkit::kafka::TestCluster;

const PARTITIONS: i32 = 3;
/// Records per partition per topic, 1 s apart in record time.
const PER_PARTITION: i64 = 10;
/// The first record's timestamp (ms): an hour ago, well inside the topics'
/// retention, on a whole second.
fn t0() -> i64 {
    (Utc::now().timestamp() - 3600) * 1000
}

/// Produces `PER_PARTITION` records to each partition of `topic` with explicit
/// timestamps `t0 + i s` (and a 500 ms offset between topics, so that a time falls
/// between records).
fn produce_timed(bootstrap: &str, topic: &str, t0: i64, skew_ms: i64) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(p)
                        .key("k")
                        .payload(&format!("{p}-{i}"))
                        .timestamp(t0 + i * 1000 + skew_ms),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue");
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Every record's (partition, offset, timestamp) of `topic`.
fn timestamps(bootstrap: &str, topic: &str) -> BTreeMap<(i32, i64), i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "rewind-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < (PARTITIONS as i64 * PER_PARTITION) as usize {
        assert!(Instant::now() < deadline, "read {} records", out.len());
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("record");
            out.insert(
                (m.partition(), m.offset()),
                m.timestamp().to_millis().expect("timestamp"),
            );
        }
    }
    out
}

/// The group's committed offsets on `topic` (partition -> offset; absent: none).
fn committed(bootstrap: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("client");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Commits `offset` on every partition of `topics` for `group` (the group as the
/// service left it).
fn commit_all(bootstrap: &str, group: &str, topics: &[String], offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("client");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Offset(offset))
                .unwrap();
        }
    }
    consumer.commit(&tpl, CommitMode::Sync).expect("commit");
}

struct Setup {
    t0: i64,
    cluster: TestCluster,
    bootstrap: String,
    plan: GroupPlan,
}

/// The notifier's group on its source and retry topics, every partition holding
/// `PER_PARTITION` timed records, the group committed at the end.
fn setup(group: &str) -> Setup {
    let cluster = TestCluster::kafka();
    let bootstrap = cluster.bootstrap_servers();
    let plan = GroupPlan::for_group(cluster.names(), group).unwrap();
    let t0 = t0();
    for (i, topic) in plan.topics.iter().enumerate() {
        cluster.create_topic(topic, PARTITIONS);
        produce_timed(&bootstrap, topic, t0, 500 * i as i64);
    }
    commit_all(&bootstrap, &plan.group_id, &plan.topics, PER_PARTITION);
    Setup {
        t0,
        cluster,
        bootstrap,
        plan,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_time_moves_each_partition_of_source_and_retry_to_its_first_record_at_or_after_it() {
    let s = setup("notifier");
    assert_eq!(s.plan.topics.len(), 2, "source and retry topic");
    // Between two records of the source topic, on a record of the retry topic.
    let at_ms = s.t0 + 4_500;
    let target = Target::Time(Utc.timestamp_millis_opt(at_ms).unwrap());
    let settings = s.cluster.settings();
    let plan = s.plan.clone();
    let moves =
        tokio::task::spawn_blocking(move || rewind::rewind(&settings, &plan, &target, false))
            .await
            .unwrap()
            .expect("rewind");
    assert_eq!(moves.len(), 2 * PARTITIONS as usize);
    for topic in &s.plan.topics {
        let stamps = timestamps(&s.bootstrap, topic);
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        for p in 0..PARTITIONS {
            // The first offset whose timestamp is at or after the time.
            let want = stamps
                .iter()
                .filter(|((part, _), ts)| *part == p && **ts >= at_ms)
                .map(|((_, o), _)| *o)
                .min()
                .unwrap();
            assert_eq!(after.get(&p), Some(&want), "{topic}/{p}");
            let before = stamps[&(p, want - 1)];
            assert!(before < at_ms, "{topic}/{p}: the record before is earlier");
            let m = moves
                .iter()
                .find(|m| &m.topic == topic && m.partition == p)
                .unwrap();
            assert_eq!(
                (m.current, m.new, m.lag()),
                (Some(PER_PARTITION), want, PER_PARTITION - want)
            );
        }
    }
    // Source topic at 4.5 s: offset 5; retry topic (0.5 s later) at 4.5 s: offset 4.
    assert_eq!(
        committed(&s.bootstrap, &s.plan.group_id, &s.plan.topics[0])[&0],
        5
    );
    assert_eq!(
        committed(&s.bootstrap, &s.plan.group_id, &s.plan.topics[1])[&0],
        4
    );

    // A time after every record: the end.
    let settings = s.cluster.settings();
    let plan = s.plan.clone();
    let late = Target::Time(Utc.timestamp_millis_opt(s.t0 + 3_000_000).unwrap());
    tokio::task::spawn_blocking(move || rewind::rewind(&settings, &plan, &late, false))
        .await
        .unwrap()
        .expect("rewind");
    for topic in &s.plan.topics {
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        assert!(
            after.values().all(|o| *o == PER_PARTITION),
            "{topic}: {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn earliest_latest_and_a_dry_run() {
    let s = setup("thread-state");
    let run = |target: Target, dry_run: bool| {
        let settings = s.cluster.settings();
        let plan = s.plan.clone();
        tokio::task::spawn_blocking(move || rewind::rewind(&settings, &plan, &target, dry_run))
    };
    // A dry run shows the moves and commits nothing.
    let shown = run(Target::Earliest, true).await.unwrap().expect("dry run");
    assert!(shown
        .iter()
        .all(|m| m.current == Some(PER_PARTITION) && m.new == 0));
    let mut table = Vec::new();
    rewind::print_table(&mut table, &shown).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("CURRENT-OFFSET") && table.contains("LAG"),
        "{table}"
    );
    for topic in &s.plan.topics {
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        assert!(
            after.values().all(|o| *o == PER_PARTITION),
            "dry run moved {topic}"
        );
    }
    run(Target::Earliest, false)
        .await
        .unwrap()
        .expect("earliest");
    for topic in &s.plan.topics {
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        assert_eq!(after.len(), PARTITIONS as usize);
        assert!(after.values().all(|o| *o == 0), "{topic}: {after:?}");
    }
    run(Target::Latest, false).await.unwrap().expect("latest");
    for topic in &s.plan.topics {
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        assert!(
            after.values().all(|o| *o == PER_PARTITION),
            "{topic}: {after:?}"
        );
    }
    run(Target::Shift(-3), false).await.unwrap().expect("shift");
    run(Target::Offset(100), true)
        .await
        .unwrap()
        .expect("clamped");
    for topic in &s.plan.topics {
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        assert!(
            after.values().all(|o| *o == PER_PARTITION - 3),
            "{topic}: {after:?}"
        );
    }
}

/// A member of `group` on `topic` under `protocol` (`classic`, or `consumer`:
/// KIP-848), polling on a thread of its own until it is told to stop; returns once it
/// has partitions assigned.
struct Member {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Member {
    fn join(bootstrap: &str, group: &str, topic: &str, protocol: &str) -> Member {
        let (member_ready, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (bootstrap, group, topic, protocol) = (
            bootstrap.to_owned(),
            group.to_owned(),
            topic.to_owned(),
            protocol.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .set("group.protocol", &protocol)
                .set("enable.auto.commit", "false")
                .create()
                .expect("member");
            consumer.subscribe(&[&topic]).expect("subscribe");
            let mut told = false;
            loop {
                let _ = consumer.poll(Duration::from_millis(100));
                if !told
                    && consumer
                        .assignment()
                        .map(|a| a.count() > 0)
                        .unwrap_or(false)
                {
                    member_ready.send(()).unwrap();
                    told = true;
                }
                if stopped.try_recv().is_ok() {
                    break;
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(60))
            .expect("the member joined");
        Member { stop, thread }
    }

    fn leave(self) {
        self.stop.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_with_a_live_member_is_refused() {
    let s = setup("timeline-writer");
    let member = Member::join(&s.bootstrap, &s.plan.group_id, &s.plan.topics[0], "classic");
    let settings = s.cluster.settings();
    let plan = s.plan.clone();
    let refused = tokio::task::spawn_blocking(move || {
        rewind::rewind(&settings, &plan, &Target::Earliest, false)
    })
    .await
    .unwrap();
    match refused {
        Err(RewindError::ActiveMembers { members, .. }) => assert_eq!(members, 1),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let message = {
        let settings = s.cluster.settings();
        let plan = s.plan.clone();
        tokio::task::spawn_blocking(move || {
            rewind::rewind(&settings, &plan, &Target::Earliest, false)
        })
        .await
        .unwrap()
        .unwrap_err()
        .to_string()
    };
    assert!(message.contains("active member"), "{message}");
    for topic in &s.plan.topics {
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        assert!(
            after.values().all(|o| *o == PER_PARTITION),
            "refused but moved {topic}"
        );
    }
    member.leave();
    // Once the member has left, the rewind goes through.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let settings = s.cluster.settings();
        let plan = s.plan.clone();
        let r = tokio::task::spawn_blocking(move || {
            rewind::rewind(&settings, &plan, &Target::Earliest, false)
        })
        .await
        .unwrap();
        match r {
            Ok(_) => break,
            Err(RewindError::ActiveMembers { .. } | RewindError::CommitRefused { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let after = committed(&s.bootstrap, &s.plan.group_id, &s.plan.topics[0]);
    assert!(after.values().all(|o| *o == 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_normalizer_group_moves_on_its_source_topic_only_through_the_binary() {
    let s = setup("normalizer");
    assert_eq!(s.plan.topics, vec![s.cluster.names().raw_events()]);
    let prefix = s.cluster.names().prefix().to_owned();
    let bootstrap = s.bootstrap.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_slackline"))
            .args([
                "rewind",
                "--group",
                "normalizer",
                "--to",
                "earliest",
                "--dry-run",
                "--bootstrap",
                &bootstrap,
                "--prefix",
                &prefix,
            ])
            .env_remove("KAFKA_PROPERTIES")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("would rewind group"), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains(&s.plan.topics[0]))
            .count(),
        PARTITIONS as usize + 1,
        "{stdout}"
    );
    assert!(!stdout.contains(".retry"), "{stdout}");
    let after = committed(&s.bootstrap, &s.plan.group_id, &s.plan.topics[0]);
    assert!(after.values().all(|o| *o == PER_PARTITION), "dry run moved");
}

/// A member under the KIP-848 consumer protocol (`group.protocol=consumer`, as the
/// services run with it in `KAFKA_PROPERTIES`) is refused as well, and moves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_with_a_live_kip848_member_is_refused() {
    let s = setup("thread-state");
    let member = Member::join(
        &s.bootstrap,
        &s.plan.group_id,
        &s.plan.topics[0],
        "consumer",
    );
    // The check itself refuses (so that `--all-groups` refuses before moving any
    // group), and so does the rewind.
    let settings = s.cluster.settings();
    let plan = s.plan.clone();
    let checked = tokio::task::spawn_blocking(move || rewind::check_idle(&settings, &plan))
        .await
        .unwrap();
    match &checked {
        Err(RewindError::CommitRefused { group, .. }) => assert_eq!(group, &s.plan.group_id),
        other => panic!("expected the check to refuse, got {other:?}"),
    }
    let settings = s.cluster.settings();
    let plan = s.plan.clone();
    let refused = tokio::task::spawn_blocking(move || {
        rewind::rewind(&settings, &plan, &Target::Earliest, false)
    })
    .await
    .unwrap();
    let message = match refused {
        Err(e @ RewindError::CommitRefused { .. }) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(message.contains("active members"), "{message}");
    for topic in &s.plan.topics {
        let after = committed(&s.bootstrap, &s.plan.group_id, topic);
        assert!(
            after.values().all(|o| *o == PER_PARTITION),
            "refused but moved {topic}"
        );
    }
    member.leave();
}

/// A member that joins after the check (between `check_no_members` and the commit):
/// the broker refuses the commit, and that comes back as a clear refusal, not a bare
/// Kafka error; nothing moved.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_joining_after_the_check_is_a_clear_refusal() {
    for protocol in ["classic", "consumer"] {
        let s = setup("notifier");
        let settings = s.cluster.settings();
        let plan = s.plan.clone();
        let moves = tokio::task::spawn_blocking(move || {
            rewind::check_no_members(&settings, &plan.group_id)?;
            rewind::plan_moves(&settings, &plan, &Target::Earliest)
        })
        .await
        .unwrap()
        .expect("no member yet");
        assert!(moves.iter().all(|m| m.new == 0));
        let member = Member::join(&s.bootstrap, &s.plan.group_id, &s.plan.topics[0], protocol);
        let settings = s.cluster.settings();
        let plan = s.plan.clone();
        let refused =
            tokio::task::spawn_blocking(move || rewind::commit_moves(&settings, &plan, &moves))
                .await
                .unwrap();
        match &refused {
            Err(RewindError::CommitRefused { group, .. }) => assert_eq!(group, &s.plan.group_id),
            other => panic!("{protocol}: expected a refusal, got {other:?}"),
        }
        let message = refused.unwrap_err().to_string();
        assert!(
            message.contains("the group has active members; stop it and retry"),
            "{message}"
        );
        for topic in &s.plan.topics {
            let after = committed(&s.bootstrap, &s.plan.group_id, topic);
            assert!(
                after.values().all(|o| *o == PER_PARTITION),
                "{protocol}: refused but moved {topic}"
            );
        }
        member.leave();
    }
}
