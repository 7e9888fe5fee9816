//! Guarantee 3 for one runtime: per-key order under retries, every event exactly once,
//! and a parked key does not hold up the others (not even those of its partition).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::*;
use prometheus::Registry;
use slackline_consumer::{ConsumerMetrics, HandlerError};

const KEYS: usize = 10;
const PER_KEY: usize = 200;
/// The blocked event: key 0 (partition 0, shared with keys 4 and 8), seq 20.
const BLOCKED: (usize, usize) = (0, 20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_survives_retries_and_a_parked_key_does_not_delay_others() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let keys: Vec<usize> = (0..KEYS).collect();
    produce_events(&cluster, &source, &keys, 0..PER_KEY).await;

    // (k, seq) -> how many calls fail. quick_retries = 2: a round is 3 calls.
    let failing: Vec<((usize, usize), u32)> = vec![
        ((1, 10), 2),   // fixed by the quick retries, never leaves the process
        ((2, 50), 4),   // one trip through the retry topic
        ((3, 100), 8),  // two delayed rounds
        ((5, 0), 3),    // the very first event of a key
        ((5, 1), 3),    // and the next, parked behind it, fails again from the retry topic
        ((5, 199), 3),  // the very last
        ((9, 150), 11), // four rounds: 3 + 3 + 3 + 2
    ];
    let plan: Plan = Arc::new(move |k, seq, call, store: &Store| {
        if (k, seq) == BLOCKED {
            // Fails until every other key is done: if a parked key held the others up
            // (same partition or not), this would never end.
            let others_done = (1..KEYS).all(|o| store.done(o) == PER_KEY);
            return (!others_done).then(|| HandlerError::retryable("downstream 503"));
        }
        if k == 7 && seq % 20 == 3 {
            // Key 7 parks and unparks again and again.
            return (call <= 3).then(|| HandlerError::retryable("flaky"));
        }
        failing
            .iter()
            .find(|(e, _)| *e == (k, seq))
            .and_then(|(_, n)| {
                (call <= *n).then(|| HandlerError::retryable(format!("fail {call}")))
            })
    });

    let mut config = fast_config(&group, &source);
    // Enough rounds for the blocked event to outlast the other keys without reaching
    // the DLQ (every event must be handled exactly once here).
    config
        .retry_delays
        .extend(std::iter::repeat_n(Duration::from_millis(100), 300));
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry).unwrap();
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

    wait_for("every event handled", Duration::from_secs(60), || {
        store.lock().unwrap().total() == KEYS * PER_KEY
    })
    .await;
    shutdown.trigger();
    handle.wait().await.unwrap();

    {
        let s = store.lock().unwrap();
        s.assert_in_order(&keys, PER_KEY);
        assert_eq!(s.duplicates, 0, "one run, no redelivery");
        // The ordering fact: when the blocked event of key 0 finally took effect, every
        // other key (including 4 and 8, in key 0's partition) had finished all its events.
        let at = s.log.iter().position(|e| *e == BLOCKED).unwrap();
        for k in 1..KEYS {
            let done_before = s.log[..at].iter().filter(|(key, _)| *key == k).count();
            assert_eq!(done_before, PER_KEY, "key {k} waited behind parked key 0");
        }
        // Key 0 waited: nothing after seq 20 happened before it.
        assert_eq!(s.log[..at].iter().filter(|(key, _)| *key == 0).count(), 20);
        assert!(
            s.calls[&event_id(0, 20)] > 3,
            "the blocked event went through the retry topic"
        );
    }

    assert_eq!(
        metric(&registry, "slackline_consumer_handled_total", &group),
        (KEYS * PER_KEY) as f64
    );
    assert_eq!(
        metric(&registry, "slackline_dlq_records_total", &group),
        0.0
    );
    assert!(has_series(&registry, "slackline_dlq_records_total", &group));
    assert!(metric(&registry, "slackline_consumer_retried_total", &group) >= 10.0);
    assert_eq!(
        metric(&registry, "slackline_consumer_parked_keys", &group),
        0.0
    );

    // Key 0's later events went through the retry topic behind the blocked one.
    let retry_topic = format!("{group}.retry");
    let retry_records: i64 = committed_and_high(&cluster, &group, &retry_topic)
        .await
        .iter()
        .map(|(_, high)| high)
        .sum();
    let retry = read_topic(
        &cluster,
        &retry_topic,
        PARTITIONS,
        retry_records as usize,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        retry.len() as i64,
        retry_records,
        "the whole retry topic read"
    );
    let key0: Vec<&Record> = retry
        .iter()
        .filter(|r| r.key.as_deref() == Some("C00"))
        .collect();
    // Behind it, key 0's next records, one after another (each forwarded once the
    // previous one is acknowledged; those still in the source when the blocked one
    // succeeds are handled directly, after it).
    let seqs: Vec<u64> = key0
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let want: Vec<u64> = (20..20 + seqs.len() as u64).collect();
    assert_eq!(
        seqs, want,
        "key 0 in the retry topic: the blocked seq 20, then the next ones"
    );
    assert!(seqs.len() >= 2, "{} key-0 retry records", seqs.len());
    assert!(
        key0.iter().all(|r| r.partition == 0),
        "same partition number as the source"
    );
    assert_eq!(key0[0].header("slackline-retry-attempt"), Some("1"));
    let blocked_offset: i64 = key0[0]
        .header("slackline-original-offset")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        key0[0].header("slackline-original-partition"),
        Some("0"),
        "original coordinates travel with the retry record"
    );
    assert!(
        blocked_offset >= 20,
        "seq 20 of key 0 is at offset {blocked_offset}"
    );
    assert_eq!(key0[1].header("slackline-retry-attempt"), Some("0"));
    assert_fully_committed(&cluster, &group, &source).await;
}
