//! Bounded memory while a target is down (issue 11, defect 3): every record of a
//! parked key goes to the retry topic and used to be read straight back into memory,
//! so a target down for hours grew the runtime without limit (and an OOM-killed pod
//! re-read it all on restart). With [`RuntimeConfig::max_buffered_bytes`] the
//! runtime pauses fetching instead.
//!
//! 50,000 records of ~1 KB over 100 keys (about 60 MB) with a 2 MiB bound: the
//! runtime's held bytes (the `slackline_consumer_buffered_bytes` gauge, source and
//! retry together, sampled every few milliseconds) stay under the bound while the
//! target is down; when it comes back, every record is applied exactly once, in
//! order per key.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::*;
use prometheus::Registry;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use slackline_consumer::HandlerError;

const KEYS: usize = 100;
const PER_KEY: usize = 500;
const BOUND: usize = 2 * 1024 * 1024;

/// `{"key","seq","pad"}` with ~1 KB of incompressible padding, key k to partition
/// `k % PARTITIONS`.
async fn produce_padded(cluster: &TestCluster, topic: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut pending = Vec::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let pad: String = (0..1000)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(b'a' + (state % 26) as u8)
                })
                .collect();
            let payload =
                serde_json::to_vec(&serde_json::json!({"key": k, "seq": seq, "pad": pad})).unwrap();
            let id = event_id(k, seq);
            let headers = OwnedHeaders::new().insert(Header {
                key: "slack-event-id",
                value: Some(id.as_str()),
            });
            let key = key(k);
            let mut record = FutureRecord::to(topic)
                .partition(k as i32 % PARTITIONS)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            loop {
                match producer.send_result(record) {
                    Ok(d) => {
                        pending.push(d);
                        break;
                    }
                    Err((e, r)) => {
                        assert!(
                            matches!(
                                e,
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull
                                )
                            ),
                            "{e}"
                        );
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        if pending.len() > 10_000 {
            for d in pending.drain(..) {
                d.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

fn held(registry: &Registry, group: &str) -> f64 {
    metric(registry, "slackline_consumer_buffered_bytes", group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_down_for_fifty_thousand_records_costs_the_bound_not_the_backlog() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let total = KEYS * PER_KEY;

    let up = Arc::new(AtomicBool::new(false));
    let target = up.clone();
    let plan: Plan = Arc::new(move |_, _, _, _: &Store| {
        (!target.load(Ordering::SeqCst)).then(|| HandlerError::retryable("target down"))
    });
    let mut config = fast_config(&group, &source);
    config.max_buffered_bytes = BOUND;
    config.max_concurrent_keys = 64;
    config.quick_retries = 0;
    // Enough rounds that nothing is dead-lettered while the target is down.
    config.retry_delays = vec![Duration::from_millis(250); 2_000];
    let store = Arc::new(Mutex::new(Store::default()));
    let (registry, metrics) = fresh_registry();
    let (runtime, stop) = start(
        &cluster,
        config,
        store.clone(),
        plan,
        Duration::ZERO,
        &metrics,
    )
    .await;

    // Sample the held bytes for the whole run.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(Mutex::new(0.0_f64));
    let sampler = {
        let (registry, group, sampling, peak) = (
            registry.clone(),
            group.clone(),
            sampling.clone(),
            peak.clone(),
        );
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                let now = held(&registry, &group);
                {
                    let mut p = peak.lock().unwrap();
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    produce_padded(&cluster, &source).await;
    let retry = format!("{group}.retry");
    // Down: every record goes to the retry topic (the first of each key failed,
    // the rest queue behind it), and the source is committed to its end.
    wait_for(
        "the whole backlog moved to the retry topic",
        Duration::from_secs(300),
        || {
            slackline_testkit::kafka::topic_len(&cluster.bootstrap_servers(), &retry, PARTITIONS)
                >= total as i64
        },
    )
    .await;
    let peak_down = *peak.lock().unwrap();
    eprintln!(
        "target down: {total} records moved to the retry topic; held bytes peaked at {peak_down} \
         (bound {BOUND})"
    );
    assert_eq!(
        store.lock().unwrap().raw.len(),
        0,
        "nothing applied while down"
    );

    up.store(true, Ordering::SeqCst);
    wait_for(
        "every record applied once the target is back",
        Duration::from_secs(300),
        || store.lock().unwrap().raw.len() >= total,
    )
    .await;
    stop.trigger();
    runtime.wait().await.unwrap();
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak_all = *peak.lock().unwrap();
    eprintln!("held bytes peaked at {peak_all} over the whole run (bound {BOUND})");

    assert!(
        peak_all <= BOUND as f64,
        "the runtime held {peak_all} bytes, over its bound of {BOUND}"
    );
    assert!(peak_all > 0.0, "the gauge was sampled");
    let s = store.lock().unwrap();
    assert_eq!(s.raw.len(), total, "each record applied exactly once");
    assert_eq!(s.duplicates, 0);
    s.assert_in_order(&(0..KEYS).collect::<Vec<_>>(), PER_KEY);
}
