//! Guarantee 5 for the runtime: a poison event (non-retryable, or retryable beyond the
//! configured rounds) ends as a DLQ record with its coordinates and payload, its key
//! carries on, the counters add up to the input, and a DLQ record can be redriven.
//! Also: the runtime refuses topics that are missing or not co-partitioned.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::*;
use prometheus::Registry;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use slackline_consumer::{
    redrive, ConsumerError, ConsumerMetrics, ConsumerRuntime, DlqRecord, HandlerError,
    RuntimeConfig,
};
use slackline_service::Shutdown;

const KEYS: usize = 5;
const PER_KEY: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_go_to_the_dlq_and_their_keys_carry_on() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let keys: Vec<usize> = (0..KEYS).collect();
    produce_events(&cluster, &source, &keys, 0..PER_KEY).await;
    // One record that is not even JSON, on key 4.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&source)
                .partition(0)
                .key("C04")
                .payload(&b"\x00\x01 not json"[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    let heal = Arc::new(AtomicBool::new(false));
    let healed = heal.clone();
    let plan: Plan = Arc::new(move |k, seq, _call, _: &Store| match (k, seq) {
        (1, 10) | (3, 0) => Some(HandlerError::permanent("cannot apply")),
        (2, 25) if !healed.load(Ordering::SeqCst) => Some(HandlerError::retryable("still down")),
        _ => None,
    });
    let config = fast_config(&group, &source);
    let rounds = 1 + config.retry_delays.len() as u64;
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry).unwrap();
    assert!(!has_series(
        &registry,
        "slackline_dlq_records_total",
        &group
    ));
    let store = Arc::new(Mutex::new(Store::default()));
    let (handle, shutdown) = start(
        &cluster,
        config,
        store.clone(),
        plan,
        Duration::ZERO,
        &metrics,
    )
    .await;
    assert!(
        has_series(&registry, "slackline_dlq_records_total", &group),
        "the DLQ counter exists at 0 from the start, for alerting"
    );

    let input = KEYS * PER_KEY + 1;
    wait_for(
        "handled + dead-lettered = input",
        Duration::from_secs(60),
        || {
            metric(&registry, "slackline_consumer_handled_total", &group)
                + metric(&registry, "slackline_dlq_records_total", &group)
                == input as f64
        },
    )
    .await;
    assert_eq!(
        metric(&registry, "slackline_dlq_records_total", &group),
        4.0
    );
    assert_eq!(
        metric(&registry, "slackline_consumer_handled_total", &group),
        (input - 4) as f64
    );
    {
        let s = store.lock().unwrap();
        for k in keys.iter().copied() {
            let want: Vec<usize> = (0..PER_KEY)
                .filter(|seq| !matches!((k, *seq), (1, 10) | (3, 0) | (2, 25)))
                .collect();
            assert_eq!(
                s.effects[&k], want,
                "key {k} carries on after its poison event, in order"
            );
        }
        let retryable_calls = s.calls[&event_id(2, 25)] as u64;
        assert_eq!(
            retryable_calls,
            rounds * 3,
            "each round: one call and two quick retries"
        );
    }

    // The DLQ records: readable JSON with coordinates, payload and headers.
    let dlq = read_topic(
        &cluster,
        &format!("{group}.dlq"),
        2,
        4,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(dlq.len(), 4);
    let source_records = read_topic(
        &cluster,
        &source,
        PARTITIONS,
        input,
        Duration::from_secs(10),
    )
    .await;
    for r in &dlq {
        let record = DlqRecord::from_json(&r.payload).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(record.group, group);
        assert_eq!(
            r.key.as_deref(),
            record.original.key.as_deref(),
            "Kafka key = original key"
        );
        let original = source_records
            .iter()
            .find(|s| {
                s.partition == record.original.partition && s.offset == record.original.offset
            })
            .expect("coordinates point at the source record");
        assert_eq!(record.original.topic, source);
        assert_eq!(record.payload().unwrap(), original.payload);
        assert!(json["dead_lettered_at"].as_str().unwrap().ends_with('Z'));
        assert!(json["original"]["timestamp_ms"].as_i64().is_some());
        match original.header("slack-event-id") {
            None => {
                assert_eq!(record.payload_json, serde_json::Value::Null, "not JSON");
                assert!(!record.retryable);
                assert_eq!(record.attempts, 1);
                assert!(record.error.starts_with("not json"), "{}", record.error);
            }
            Some(id) if id == event_id(2, 25) => {
                assert!(record.retryable);
                assert_eq!(record.attempts as u64, rounds, "every configured round ran");
                assert_eq!(record.error, "still down");
                assert_eq!(json["payload_json"]["seq"], 25);
                assert_eq!(json["headers"]["slack-event-id"], id);
            }
            Some(id) => {
                assert!(id == event_id(1, 10) || id == event_id(3, 0), "{id}");
                assert!(!record.retryable);
                assert_eq!(record.attempts, 1);
                assert_eq!(record.error, "cannot apply");
            }
        }
    }

    // Redrive the retryable one once its dependency is back: it takes effect.
    heal.store(true, Ordering::SeqCst);
    let dead = dlq
        .iter()
        .find(|r| r.key.as_deref() == Some("C02"))
        .unwrap();
    let back = redrive(&dead.payload).unwrap();
    assert_eq!(back.topic, source);
    assert_eq!(back.key.as_deref(), Some(&b"C02"[..]));
    assert_eq!(
        back.headers[..1],
        [(
            "slack-event-id".to_owned(),
            Some(event_id(2, 25).into_bytes())
        )]
    );
    // ... and the redrive marker (`slackline-redrive`) naming the dead letter.
    assert_eq!(back.headers.len(), 2);
    assert_eq!(back.headers[1].0, slackline_kafka::headers::REDRIVE);
    let mut record = FutureRecord::to(&back.topic)
        .payload(&back.payload)
        .headers(back.owned_headers())
        .partition(2);
    if let Some(k) = &back.key {
        record = record.key(k.as_slice());
    }
    producer.send(record, Duration::from_secs(5)).await.unwrap();
    wait_for("redriven event handled", Duration::from_secs(30), || {
        store.lock().unwrap().effects[&2].last() == Some(&25)
    })
    .await;
    shutdown.trigger();
    handle.wait().await.unwrap();
    assert_fully_committed(&cluster, &group, &source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_missing_or_not_co_partitioned_topics() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry).unwrap();
    let handler = |_| async { Ok::<(), HandlerError>(()) };

    let lonely = cluster.topic(&slackline_testkit::unique_name("grp"));
    let err = ConsumerRuntime::start(
        &settings(&cluster),
        RuntimeConfig::new(&lonely, &source),
        handler,
        &metrics,
        Shutdown::new(),
    )
    .await
    .err()
    .expect("no retry topic");
    assert!(
        matches!(&err, ConsumerError::MissingTopic(t) if *t == format!("{lonely}.retry")),
        "{err}"
    );

    let skewed = cluster.topic(&slackline_testkit::unique_name("grp"));
    create_topic(&cluster, &format!("{skewed}.retry"), PARTITIONS + 2);
    create_topic(&cluster, &format!("{skewed}.dlq"), 1);
    let err = ConsumerRuntime::start(
        &settings(&cluster),
        RuntimeConfig::new(&skewed, &source),
        handler,
        &metrics,
        Shutdown::new(),
    )
    .await
    .err()
    .expect("not co-partitioned");
    assert!(
        matches!(
            err,
            ConsumerError::NotCoPartitioned {
                source_partitions: 4,
                retry_partitions: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("co-partitioned"), "{err}");
}

/// Issue 12, item 11: the DLQ alert fired from an in-process counter incremented
/// after the acknowledgement, so a process that died before the next scrape lost it.
/// `slackline_dlq_end_offset` is read from the DLQ topic itself: a record
/// dead-lettered just before a crash shows in the next process's first reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_written_just_before_a_crash_shows_in_the_next_process() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let plan: Plan = Arc::new(|k, seq, _, _: &Store| {
        ((k, seq) == (0, 0)).then(|| HandlerError::permanent("poison"))
    });
    let config = fast_config(&group, &source);
    let store = Arc::new(Mutex::new(Store::default()));
    let (registry, metrics) = fresh_registry();
    let (first, _stop) = start(
        &cluster,
        config.clone(),
        store.clone(),
        plan.clone(),
        Duration::ZERO,
        &metrics,
    )
    .await;
    produce_events(&cluster, &source, &[0], 0..1).await;
    wait_for("the dead letter", Duration::from_secs(60), || {
        metric(&registry, "slackline_dlq_records_total", &group) == 1.0
    })
    .await;
    assert_eq!(
        metric(&registry, "slackline_dlq_end_offset", &group),
        1.0,
        "the acknowledgement moves the end offset at once"
    );
    // Dies before any scrape: its counter is gone with it.
    first.crash().await;

    let (registry, metrics) = fresh_registry();
    let (second, stop) = start(&cluster, config, store, plan, Duration::ZERO, &metrics).await;
    wait_for(
        "the next process's reading of the DLQ's end offsets",
        Duration::from_secs(30),
        || has_series(&registry, "slackline_dlq_end_offset", &group),
    )
    .await;
    assert_eq!(metric(&registry, "slackline_dlq_end_offset", &group), 1.0);
    assert_eq!(
        metric(&registry, "slackline_dlq_records_total", &group),
        0.0,
        "the new process's counter knows nothing of it"
    );
    stop.trigger();
    second.wait().await.unwrap();
}
