//! The normalizer's dedupe of Slack's retries (issue 15) on the real broker: a record
//! of `slackline replay` (the `slackline-replay` header) and a raw record read again
//! at the same partition and offset (a rewind of the `normalizer` group) carry an
//! event id the normalizer has seen, and are normalized again; a Slack retry (another
//! record with the same event id) is still dropped as a duplicate. Every record read
//! is counted once and every produced outcome is one record on the messages topic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use slackline_kafka::headers;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::Shutdown;
use slackline_testkit::kafka::{produce_with_headers, read_topic, HeadedRecord, TestCluster};

const PARTITIONS: i32 = 2;
const HOME: &str = "T0HOME";

/// A customer's message in `channel`, in an `event_callback` envelope.
fn body(event_id: &str, channel: &str, ts: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "event_callback",
        "team_id": "T0CUST",
        "context_team_id": HOME,
        "event_id": event_id,
        "event_time": 1_764_000_000,
        "authorizations": [{"team_id": HOME, "user_id": "U0SLBOT", "is_bot": true}],
        "event": {
            "type": "message", "user": "U0CUST1", "team": "T0CUST", "text": "help",
            "ts": ts, "channel": channel, "channel_type": "channel", "event_ts": ts,
        },
    }))
    .unwrap()
}

/// A raw record as the edge writes it (key = channel), with `extra` headers.
fn raw<'a>(event_id: &str, channel: &str, ts: &str, extra: &[(&'a str, &str)]) -> HeadedRecord<'a> {
    let mut hs = vec![
        (headers::EVENT_ID, event_id.to_owned()),
        (
            headers::ARCHIVE_KEY,
            format!("raw/2026/01/01/00/{event_id}.json"),
        ),
    ];
    hs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    (channel.to_owned(), body(event_id, channel, ts), hs)
}

fn count(normalizer: &Normalizer, name: &str, labels: &[(&str, &str)]) -> i64 {
    slackline_testkit::metrics::metric(&normalizer.registry, name, labels) as i64
}

fn duplicates(normalizer: &Normalizer) -> i64 {
    count(
        normalizer,
        "slackline_normalizer_outcomes_total",
        &[("outcome", "ignored"), ("reason", "duplicate")],
    )
}

async fn wait_consumed(normalizer: &Normalizer, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let consumed = count(normalizer, "slackline_normalizer_consumed_total", &[]);
        if consumed >= want {
            assert_eq!(consumed, want, "each record read once");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the normalizer read {consumed} of {want} records in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the normalizer has counted every outcome of what it read (produced
/// records are counted on acknowledgement) and its group's committed offsets on the
/// raw topic equal the topic's high watermarks (it commits a record's offset once its
/// outcome is produced), then reads the messages topic up to its high watermarks and
/// checks that it holds exactly `want` records.
async fn messages_after(
    cluster: &TestCluster,
    normalizer: &Normalizer,
    group: &str,
    want: usize,
) -> Vec<slackline_testkit::kafka::Record> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let consumed = count(normalizer, "slackline_normalizer_consumed_total", &[]);
        let outcomes = count(normalizer, "slackline_normalizer_outcomes_total", &[]);
        if outcomes == consumed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outcomes {outcomes} of {consumed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bootstrap = cluster.bootstrap_servers();
    let raw_topic = cluster.names().raw_events();
    loop {
        let (b, g, t) = (bootstrap.clone(), group.to_owned(), raw_topic.clone());
        let lag = tokio::task::spawn_blocking(move || {
            slackline_testkit::kafka::group_lag(&b, &g, &t, PARTITIONS)
        })
        .await
        .unwrap();
        if lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the normalizer group did not commit the raw topic's end: lag {lag}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let messages_topic = cluster.names().messages();
    let (b, t) = (bootstrap.clone(), messages_topic.clone());
    let on_topic = tokio::task::spawn_blocking(move || {
        slackline_testkit::kafka::topic_len(&b, &t, PARTITIONS)
    })
    .await
    .unwrap();
    // Every record up to the high watermarks (the read stops once it has them all).
    let records = read_topic(
        &bootstrap,
        &messages_topic,
        PARTITIONS,
        usize::try_from(on_topic).unwrap(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        records.len() as i64,
        on_topic,
        "read the messages topic up to its high watermarks"
    );
    assert_eq!(records.len(), want, "message events on the messages topic");
    records
}

fn start_topics(cluster: &TestCluster) {
    let names = cluster.names();
    cluster.create_topic(&names.raw_events(), PARTITIONS);
    cluster.create_topic(&names.messages(), PARTITIONS);
    cluster.create_topic(&names.raw_dlq(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_record_is_normalized_though_its_event_id_was_seen() {
    let cluster = TestCluster::kafka();
    start_topics(&cluster);
    let raw_topic = cluster.names().raw_events();
    let config = NormalizerConfig::new(cluster.settings(), cluster.names());
    let group = config.group_id.clone();
    let shutdown = Shutdown::new();
    let normalizer = Normalizer::start(config, shutdown.clone()).await.unwrap();

    // The delivery, then Slack's retry of it (another record, same event id).
    let retry = [
        (headers::RETRY_NUM, "1"),
        (headers::RETRY_REASON, "timeout"),
    ];
    produce_with_headers(
        &cluster,
        &raw_topic,
        &[
            raw("EvReplay1", "C0REPLAY", "1764000000.000100", &[]),
            raw("EvReplay1", "C0REPLAY", "1764000000.000100", &retry),
        ],
    )
    .await;
    wait_consumed(&normalizer, 2).await;
    messages_after(&cluster, &normalizer, &group, 1).await;
    assert_eq!(duplicates(&normalizer), 1, "Slack's retry is dropped");

    // `slackline replay` puts the archived request back: normalized again.
    produce_with_headers(
        &cluster,
        &raw_topic,
        &[raw(
            "EvReplay1",
            "C0REPLAY",
            "1764000000.000100",
            &[(headers::REPLAY, "replay-1")],
        )],
    )
    .await;
    wait_consumed(&normalizer, 3).await;
    let messages = messages_after(&cluster, &normalizer, &group, 2).await;
    assert!(messages
        .iter()
        .all(|m| m.header(headers::EVENT_ID) == Some("EvReplay1")));
    assert_eq!(
        duplicates(&normalizer),
        1,
        "the replayed record is no duplicate"
    );
    assert_eq!(
        count(&normalizer, "slackline_normalizer_replayed_total", &[]),
        1
    );

    // A later Slack retry of the same delivery is still a duplicate.
    produce_with_headers(
        &cluster,
        &raw_topic,
        &[raw("EvReplay1", "C0REPLAY", "1764000000.000100", &retry)],
    )
    .await;
    wait_consumed(&normalizer, 4).await;
    messages_after(&cluster, &normalizer, &group, 2).await;
    assert_eq!(duplicates(&normalizer), 2);
    assert_eq!(
        count(&normalizer, "slackline_normalizer_replayed_total", &[]),
        1
    );
    shutdown.trigger();
    normalizer.wait().await.unwrap();
}

/// The same records read again by the same normalizer process: another member of the
/// group takes some partitions, moves their committed offsets back to 0 (what a
/// rewind does) and leaves; the normalizer gets the partitions back and reads those
/// records again at the same partitions and offsets. They are normalized again (the
/// groups' fact keys make that harmless); the Slack retry among them is still dropped.
#[tokio::test(flavor = "multi_thread")]
async fn records_read_again_at_the_same_offsets_are_normalized_again() {
    let cluster = TestCluster::kafka();
    start_topics(&cluster);
    let names = cluster.names();
    let raw_topic = names.raw_events();
    let config = NormalizerConfig::new(cluster.settings(), names);
    let group = config.group_id.clone();
    let shutdown = Shutdown::new();
    let normalizer = Normalizer::start(config, shutdown.clone()).await.unwrap();

    // Channels over both partitions; one Slack retry in channel 0.
    let channels: Vec<String> = (0..8).map(|i| format!("C0REREAD{i}")).collect();
    let mut records: Vec<HeadedRecord<'_>> = Vec::new();
    for (c, channel) in channels.iter().enumerate() {
        for m in 0..3 {
            let id = format!("EvReread{c}x{m}");
            records.push(raw(&id, channel, &format!("1764000000.00{c}{m}00"), &[]));
        }
    }
    let retry = [
        (headers::RETRY_NUM, "1"),
        (headers::RETRY_REASON, "timeout"),
    ];
    records.push(raw(
        "EvReread0x0",
        &channels[0],
        "1764000000.000000",
        &retry,
    ));
    produce_with_headers(&cluster, &raw_topic, &records).await;
    let total = records.len() as i64;
    wait_consumed(&normalizer, total).await;
    messages_after(&cluster, &normalizer, &group, records.len() - 1).await;
    assert_eq!(duplicates(&normalizer), 1);

    // Another member takes its share of the partitions and moves them back to 0.
    let bootstrap = cluster.bootstrap_servers();
    let (g, t) = (group.clone(), raw_topic.clone());
    let rewound: BTreeSet<i32> = tokio::task::spawn_blocking(move || {
        let member: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &g)
            .set("enable.auto.commit", "false")
            .create()
            .expect("a second member");
        member.subscribe(&[&t]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(60);
        let assigned = loop {
            let _ = member.poll(Duration::from_millis(100));
            let assignment = member.assignment().expect("assignment");
            if assignment.count() > 0 {
                break assignment;
            }
            assert!(Instant::now() < deadline, "the member got no partition");
        };
        let mut back = TopicPartitionList::new();
        let mut partitions = BTreeSet::new();
        for e in assigned.elements() {
            back.add_partition_offset(e.topic(), e.partition(), Offset::Offset(0))
                .unwrap();
            partitions.insert(e.partition());
        }
        println!("member: assigned {partitions:?}, committing them back to 0");
        member
            .commit(&back, CommitMode::Sync)
            .expect("the member commits its partitions back to 0");
        // Leave the group: serve the revocation, then close.
        member.unsubscribe();
        let deadline = Instant::now() + Duration::from_secs(30);
        while member.assignment().map(|a| a.count() > 0).unwrap_or(false) {
            let _ = member.poll(Duration::from_millis(100));
            assert!(Instant::now() < deadline, "the member did not leave");
        }
        println!("member: left the group");
        // Not dropped: destroying this consumer right after its rebalance can wait on
        // a broker thread for a long time (librdkafka); it has left the group, and the
        // test process ends soon.
        std::mem::forget(member);
        partitions
    })
    .await
    .unwrap();
    assert!(!rewound.is_empty());

    let raw_records = read_topic(
        &cluster.bootstrap_servers(),
        &raw_topic,
        PARTITIONS,
        records.len(),
        Duration::from_secs(10),
    )
    .await;
    let again: Vec<_> = raw_records
        .iter()
        .filter(|r| rewound.contains(&r.partition))
        .collect();
    let retries_again = again
        .iter()
        .filter(|r| r.header(headers::RETRY_NUM).is_some())
        .count();
    println!(
        "partitions {rewound:?} read again: {} records ({retries_again} Slack retry)",
        again.len()
    );
    wait_consumed(&normalizer, total + again.len() as i64).await;
    let messages = messages_after(
        &cluster,
        &normalizer,
        &group,
        records.len() - 1 + again.len() - retries_again,
    )
    .await;
    assert_eq!(
        duplicates(&normalizer),
        1 + retries_again as i64,
        "only Slack's retry is a duplicate, the re-read records are not"
    );
    // Every re-read event is on the messages topic twice.
    for r in &again {
        if r.header(headers::RETRY_NUM).is_some() {
            continue;
        }
        let id = r.header(headers::EVENT_ID).unwrap();
        let n = messages
            .iter()
            .filter(|m| m.header(headers::EVENT_ID) == Some(id))
            .count();
        assert_eq!(n, 2, "{id} normalized again after the re-read");
    }
    shutdown.trigger();
    normalizer.wait().await.unwrap();
}
