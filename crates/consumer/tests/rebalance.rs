//! Parking survives rebalances: member B joins the group mid-stream (partitions move
//! from A to B with keys parked), then A leaves (B takes everything): every key's
//! effects still happen in order, nothing is lost, each effect at most once with an
//! idempotent handler, and both members did part of the work.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::*;
use prometheus::Registry;
use slackline_consumer::{ConsumerMetrics, HandlerError};

const KEYS: usize = 10;
const PER_KEY: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_and_one_leaving_keep_order_and_lose_nothing() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let keys: Vec<usize> = (0..KEYS).collect();
    produce_events(&cluster, &source, &keys, 0..PER_KEY).await;

    // Keys 0, 3, 6, 9 fail every 15th event for two rounds, so that keys are parked
    // (with events behind them in the retry topic) whenever the group rebalances.
    let plan: Plan = Arc::new(|k, seq, call, _: &Store| {
        (k % 3 == 0 && seq % 15 == 4 && call <= 6).then(|| HandlerError::retryable("flaky"))
    });
    let mut config = fast_config(&group, &source);
    config.max_concurrent_keys = 4;
    config.retry_delays = vec![Duration::from_millis(30); 10];
    let store = Arc::new(Mutex::new(Store::default()));
    let work = Duration::from_millis(3);

    let registry_a = Registry::new();
    let metrics_a = ConsumerMetrics::register(&registry_a).unwrap();
    let (a, stop_a) = start(
        &cluster,
        config.clone(),
        store.clone(),
        plan.clone(),
        work,
        &metrics_a,
    )
    .await;
    wait_for("A got going", Duration::from_secs(60), || {
        store.lock().unwrap().total() >= KEYS * PER_KEY / 5
    })
    .await;

    let registry_b = Registry::new();
    let metrics_b = ConsumerMetrics::register(&registry_b).unwrap();
    let (b, stop_b) = start(&cluster, config, store.clone(), plan, work, &metrics_b).await;
    wait_for("B handles its share", Duration::from_secs(60), || {
        metric(&registry_b, "slackline_consumer_handled_total", &group) >= 100.0
    })
    .await;
    let before_a_left = store.lock().unwrap().total();
    assert!(
        before_a_left < KEYS * PER_KEY,
        "A leaves mid-stream ({before_a_left})"
    );
    stop_a.trigger();
    a.wait().await.unwrap();

    wait_for("every event handled", Duration::from_secs(90), || {
        store.lock().unwrap().total() == KEYS * PER_KEY
    })
    .await;
    wait_fully_committed(&cluster, &group, &source, Duration::from_secs(30)).await;
    stop_b.trigger();
    b.wait().await.unwrap();

    {
        let s = store.lock().unwrap();
        s.assert_in_order(&keys, PER_KEY);
        eprintln!(
            "redeliveries absorbed by the idempotent handler: {}",
            s.duplicates
        );
    }
    let handled_a = metric(&registry_a, "slackline_consumer_handled_total", &group);
    let handled_b = metric(&registry_b, "slackline_consumer_handled_total", &group);
    assert!(handled_a >= (KEYS * PER_KEY / 5) as f64, "A: {handled_a}");
    assert!(handled_b >= 100.0, "B: {handled_b}");
    assert!(handled_a + handled_b >= (KEYS * PER_KEY) as f64);
    assert!(metric(&registry_a, "slackline_consumer_retried_total", &group) > 0.0);
    assert_eq!(
        metric(&registry_b, "slackline_consumer_parked_keys", &group),
        0.0
    );
    assert_eq!(
        metric(&registry_a, "slackline_dlq_records_total", &group),
        0.0
    );
    assert_eq!(
        metric(&registry_b, "slackline_dlq_records_total", &group),
        0.0
    );
}
