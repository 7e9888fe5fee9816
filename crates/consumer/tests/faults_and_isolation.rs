//! Broker faults injected with the mock cluster (request errors on Produce,
//! OffsetCommit and Fetch; a broker down, then up) lose and reorder nothing; and, on
//! the real broker, a group whose handler fails for the whole test never holds up
//! another group reading the same topic (guarantee 4).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::*;
use prometheus::Registry;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use slackline_consumer::{ConsumerMetrics, HandlerError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_faults_lose_and_reorder_nothing() {
    const KEYS: usize = 6;
    const PER_KEY: usize = 300;
    // Mock cluster: this test injects errors into Produce, OffsetCommit and Fetch
    // requests on cue (`request_errors`) and takes brokers 2 and 3 of three down and
    // up again (`broker_down`); a single real broker can give neither on cue.
    let cluster = TestCluster::mock(
        "request_errors on Produce/OffsetCommit/Fetch and broker_down of 2 of 3 brokers, on cue",
    );
    let mock = cluster.faults();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let keys: Vec<usize> = (0..KEYS).collect();
    produce_events(&cluster, &source, &keys, 0..PER_KEY / 2).await;

    // Keys 0 and 3 send an event through the retry topic every 20 events, so that
    // retry produces and retry fetches happen while the faults are on.
    let plan: Plan = Arc::new(|k, seq, call, _: &Store| {
        (k % 3 == 0 && seq % 20 == 5 && call <= 4).then(|| HandlerError::retryable("flaky"))
    });
    let mut config = fast_config(&group, &source);
    config.max_concurrent_keys = 4;
    config.retry_delays = vec![Duration::from_millis(20); 20];
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry).unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let (handle, shutdown) = start(
        &cluster,
        config,
        store.clone(),
        plan,
        Duration::from_millis(1),
        &metrics,
    )
    .await;
    let total = || store.lock().unwrap().total();
    wait_for("first events", Duration::from_secs(60), || total() >= 200).await;

    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ]
        .repeat(8),
    );
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ]
        .repeat(10),
    );
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
        ]
        .repeat(10),
    );
    // The second half arrives while the faults are on.
    produce_events(&cluster, &source, &keys, PER_KEY / 2..PER_KEY).await;
    wait_for("more events", Duration::from_secs(60), || total() >= 900).await;

    for broker in [2, 3] {
        mock.broker_down(broker).unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        mock.broker_up(broker).unwrap();
    }
    wait_for("every event handled", Duration::from_secs(120), || {
        total() == KEYS * PER_KEY
    })
    .await;
    for api in [
        RDKafkaApiKey::Produce,
        RDKafkaApiKey::OffsetCommit,
        RDKafkaApiKey::Fetch,
    ] {
        mock.clear_request_errors(api);
    }
    wait_fully_committed(&cluster, &group, &source, Duration::from_secs(60)).await;
    shutdown.trigger();
    handle.wait().await.unwrap();

    {
        let s = store.lock().unwrap();
        s.assert_in_order(&keys, PER_KEY);
        assert_eq!(s.duplicates, 0, "faults alone cause no redelivery here");
    }
    assert_eq!(
        metric(&registry, "slackline_dlq_records_total", &group),
        0.0
    );
    assert_eq!(
        metric(&registry, "slackline_consumer_handled_total", &group),
        (KEYS * PER_KEY) as f64
    );
    assert!(metric(&registry, "slackline_consumer_retried_total", &group) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_group_does_not_hold_up_another_group() {
    const KEYS: usize = 8;
    const PER_KEY: usize = 100;
    let cluster = kafka();
    let source = source_topic(&cluster);
    let failing_group = group(&cluster);
    let healthy_group = group(&cluster);
    let keys: Vec<usize> = (0..KEYS).collect();
    produce_events(&cluster, &source, &keys, 0..PER_KEY).await;

    // One registry for both (as in a process running two groups).
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry).unwrap();

    // The notifier while Discord is down: every call fails, retryably.
    let down: Plan = Arc::new(|_, _, _, _: &Store| Some(HandlerError::retryable("discord 503")));
    let mut failing_config = fast_config(&failing_group, &source);
    failing_config.retry_delays = vec![Duration::from_millis(10); 300];
    let failing_store = Arc::new(Mutex::new(Store::default()));
    // Slow failures (200 ms a call, three calls a round, 10 ms between rounds): new
    // source records arrive while the key's retry head is being handled.
    let (failing, stop_failing) = start(
        &cluster,
        failing_config,
        failing_store.clone(),
        down,
        Duration::from_millis(200),
        &metrics,
    )
    .await;

    let healthy_store = Arc::new(Mutex::new(Store::default()));
    let (healthy, stop_healthy) = start(
        &cluster,
        fast_config(&healthy_group, &source),
        healthy_store.clone(),
        no_failures(),
        Duration::ZERO,
        &metrics,
    )
    .await;
    wait_for(
        "the healthy group handled everything",
        Duration::from_secs(60),
        || healthy_store.lock().unwrap().total() == KEYS * PER_KEY,
    )
    .await;
    // The ordering fact: the healthy group finished while the failing group is stuck
    // on every key, none of its events handled or given up.
    assert_eq!(failing_store.lock().unwrap().total(), 0);
    assert_eq!(
        metric(&registry, "slackline_dlq_records_total", &failing_group),
        0.0
    );
    healthy_store
        .lock()
        .unwrap()
        .assert_in_order(&keys, PER_KEY);
    wait_for(
        "the failing group parked every key",
        Duration::from_secs(30),
        || metric(&registry, "slackline_consumer_parked_keys", &failing_group) == KEYS as f64,
    )
    .await;
    assert_eq!(
        failing_store.lock().unwrap().total(),
        0,
        "the failing group is stuck"
    );

    // A second wave while every key of the failing group is parked: the healthy group
    // handles it, and the failing group moves it behind the parked events at once (its
    // source offsets are committed to the end), not holding it while it retries.
    produce_events(&cluster, &source, &keys, PER_KEY..PER_KEY + 50).await;
    wait_for(
        "the healthy group handled the second wave",
        Duration::from_secs(60),
        || healthy_store.lock().unwrap().total() == KEYS * (PER_KEY + 50),
    )
    .await;
    healthy_store
        .lock()
        .unwrap()
        .assert_in_order(&keys, PER_KEY + 50);
    let start_wait = std::time::Instant::now();
    loop {
        let source_done = committed_and_high(&cluster, &failing_group, &source)
            .await
            .iter()
            .all(|(c, h)| c == h);
        if source_done {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(20),
            "failing group holds source records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&registry, "slackline_consumer_parked_keys", &healthy_group),
        0.0
    );
    wait_fully_committed(&cluster, &healthy_group, &source, Duration::from_secs(30)).await;
    // The lag gauge shows the stuck group (its retry records are unfinished) and not
    // the healthy one.
    wait_for("lag reported", Duration::from_secs(10), || {
        metric(&registry, "slackline_consumer_lag", &failing_group) >= (KEYS * PER_KEY) as f64
            && has_series(&registry, "slackline_consumer_lag", &healthy_group)
            && metric(&registry, "slackline_consumer_lag", &healthy_group) == 0.0
    })
    .await;

    stop_healthy.trigger();
    healthy.wait().await.unwrap();
    stop_failing.trigger();
    failing.wait().await.unwrap();
    // Nothing of the failing group was committed past its first (unhandled) events;
    // the healthy group's commits are its own.
    let failing_committed = committed_and_high(&cluster, &failing_group, &source).await;
    let healthy_committed = committed_and_high(&cluster, &healthy_group, &source).await;
    for (p, ((fc, _), (hc, high))) in failing_committed.iter().zip(&healthy_committed).enumerate() {
        assert_eq!(*hc, *high, "healthy group, partition {p}");
        // The failing group moved every event to its retry topic (acknowledged), so
        // its source offsets are complete too; its retry partitions are not.
        assert_eq!(*fc, *high, "failing group source partition {p}");
    }
    let failing_retry =
        committed_and_high(&cluster, &failing_group, &format!("{failing_group}.retry")).await;
    assert!(
        failing_retry.iter().all(|(c, h)| c < h),
        "{failing_retry:?}"
    );
}
