//! One test per defect of issue 11 ("Consumer runtime: order and bounded memory
//! across restarts, big records, slow revokes and shutdown"), each failing on the
//! runtime before its fix. They read the handler's `raw` log (every successful call,
//! redeliveries included), never the deduplicated effects, so a second application
//! or an application out of order shows.
//!
//! Defect 3 (retry-side memory) is pinned by `memory.rs`, defect 6 (shutdown with the
//! brokers gone) by the service binaries' shutdown test in `services/cli/tests`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use slackline_consumer::{ConsumerError, DlqRecord, HandlerError};

/// Every DLQ record of `group`, parsed.
async fn dead_letters(cluster: &TestCluster, group: &str) -> Vec<DlqRecord> {
    let dlq = format!("{group}.dlq");
    let len = topic_len(cluster, &dlq, 2) as usize;
    read_topic(cluster, &dlq, 2, len, Duration::from_secs(30))
        .await
        .iter()
        .map(|r| DlqRecord::from_json(&r.payload).expect("a DLQ record"))
        .collect()
}

fn topic_len(cluster: &TestCluster, topic: &str, partitions: i32) -> i64 {
    slackline_testkit::kafka::topic_len(&cluster.bootstrap_servers(), topic, partitions)
}

/// Defect 1: records already in the retry topic were forwarded there a second time
/// after a restart, when the source records came back (held behind the closed
/// gate) before their retry copies: a second retry cycle and a second DLQ record.
///
/// The target is down for the whole run and there is one retry round of 3 s. The
/// first runtime moves every record to the retry topic (the first of each key
/// fails, the rest queue behind it) and crashes before committing; the second reads
/// the source again from the start. Each record must reach the DLQ exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect1_records_in_the_retry_topic_are_not_moved_again_after_a_crash() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let keys: Vec<usize> = (0..8).collect();
    // Each record of a key takes one retry round after the one before it.
    const PER_KEY: usize = 5;
    let total = keys.len() * PER_KEY;
    produce_events(&cluster, &source, &keys, 0..PER_KEY).await;

    let down: Plan = Arc::new(|_, _, _, _: &Store| Some(HandlerError::retryable("target down")));
    let mut config = fast_config(&group, &source);
    config.quick_retries = 0;
    config.retry_delays = vec![Duration::from_secs(3)];
    // Nothing is committed before the crash: the second runtime reads it all again.
    config.commit_interval = Duration::from_secs(60);
    let store = Arc::new(Mutex::new(Store::default()));

    let (_registry, metrics) = fresh_registry();
    let (first, _stop) = start(
        &cluster,
        config.clone(),
        store.clone(),
        down.clone(),
        Duration::ZERO,
        &metrics,
    )
    .await;
    let retry = format!("{group}.retry");
    wait_for(
        "every record moved to the retry topic",
        Duration::from_secs(60),
        || topic_len(&cluster, &retry, PARTITIONS) >= total as i64,
    )
    .await;
    first.crash().await;
    assert_eq!(
        topic_len(&cluster, &format!("{group}.dlq"), 2),
        0,
        "the crash came before the retry round"
    );

    let (registry, metrics) = fresh_registry();
    let (second, stop) = start(
        &cluster,
        config,
        store.clone(),
        down,
        Duration::ZERO,
        &metrics,
    )
    .await;
    // Anything moved twice is behind the originals and keeps its key parked.
    wait_for(
        "every record dead-lettered and no key parked",
        Duration::from_secs(120),
        || {
            metric(&registry, "slackline_dlq_records_total", &group) >= total as f64
                && metric(&registry, "slackline_consumer_parked_keys", &group) == 0.0
        },
    )
    .await;
    stop.trigger();
    second.wait().await.unwrap();

    assert_eq!(
        metric(&registry, "slackline_consumer_skipped_total", &group),
        total as f64,
        "every source record read again was recognised as already in the retry topic"
    );
    let letters = dead_letters(&cluster, &group).await;
    let mut per_offset: HashMap<(i32, i64), usize> = HashMap::new();
    for l in &letters {
        *per_offset
            .entry((l.original.partition, l.original.offset))
            .or_default() += 1;
    }
    let twice: Vec<_> = per_offset.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {total} records dead-lettered more than once: {twice:?}",
        twice.len()
    );
    assert_eq!(letters.len(), total, "every record dead-lettered");
    assert_eq!(
        topic_len(&cluster, &retry, PARTITIONS),
        total as i64,
        "nothing moved to the retry topic a second time"
    );
}

/// Defect 2: a key went on with its next record before its dead letter was
/// acknowledged; when that produce then failed, the runtime stopped, and after the
/// restart the dead record was handled again after its successor.
///
/// The DLQ topic is deleted under the running runtime (an operator's mistake), so
/// the dead letter of C00's first record cannot be delivered. C00's second record
/// must not run before it is, whatever happens next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect2_a_key_waits_for_its_dead_letter_to_be_acknowledged() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let dlq = format!("{group}.dlq");
    // C00 seq 0 is poison; everything else succeeds.
    let plan: Plan = Arc::new(|k, seq, _, _: &Store| {
        ((k, seq) == (0, 0)).then(|| HandlerError::permanent("poison"))
    });
    let mut config = fast_config(&group, &source);
    config.produce_timeout = Duration::from_secs(3);
    let store = Arc::new(Mutex::new(Store::default()));
    let (_registry, metrics) = fresh_registry();
    let (runtime, _stop) = start(
        &cluster,
        config.clone(),
        store.clone(),
        plan.clone(),
        Duration::ZERO,
        &metrics,
    )
    .await;
    // Running: a record of another key is handled.
    produce_events(&cluster, &source, &[1], 0..1).await;
    wait_for(
        "the runtime handles records",
        Duration::from_secs(60),
        || store.lock().unwrap().raw.contains(&(1, 0)),
    )
    .await;

    cluster.delete_topic(&dlq);
    produce_events(&cluster, &source, &[0], 0..2).await;
    let result = tokio::time::timeout(Duration::from_secs(60), runtime.wait())
        .await
        .expect("the runtime stops when its dead letter cannot be written");
    assert!(
        matches!(result, Err(ConsumerError::Produce { ref topic, .. }) if *topic == dlq),
        "{result:?}"
    );
    assert!(
        !store.lock().unwrap().raw.contains(&(0, 1)),
        "C00's second record ran while the dead letter of its first was unacknowledged"
    );

    // The operator restores the topic; the restart dead-letters seq 0, then runs seq 1.
    cluster.create_topic(&dlq, 2);
    let (runtime, stop) = start(
        &cluster,
        config,
        store.clone(),
        plan,
        Duration::ZERO,
        &metrics,
    )
    .await;
    wait_for("C00's second record", Duration::from_secs(60), || {
        store.lock().unwrap().raw.contains(&(0, 1))
    })
    .await;
    stop.trigger();
    runtime.wait().await.unwrap();
    let letters = dead_letters(&cluster, &group).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].original.offset, 0);
    let raw = store.lock().unwrap().raw.clone();
    assert_eq!(
        raw.iter().filter(|(k, _)| *k == 0).count(),
        1,
        "C00: only seq 1 applied, once: {raw:?}"
    );
}

/// Produces one record of `size` bytes of JSON (`{"key","seq","pad"}`) for key `k`.
async fn produce_big(cluster: &TestCluster, topic: &str, k: usize, seq: usize, size: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    // Incompressible (the producers compress with lz4).
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ (k * 1000 + seq) as u64;
    let pad: String = (0..size)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + ((state >> 33) % 26) as u8)
        })
        .collect();
    let payload =
        serde_json::to_vec(&serde_json::json!({"key": k, "seq": seq, "pad": pad})).unwrap();
    let id = event_id(k, seq);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "slack-event-id",
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: "archive-key",
            value: Some("raw/2026/12/07/T1/big.json"),
        })
        .insert(Header {
            key: "bulky",
            value: Some("y".repeat(2000).as_str()),
        });
    let key = key(k);
    producer
        .send(
            FutureRecord::to(topic)
                .partition(k as i32 % PARTITIONS)
                .key(&key)
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Defect 4: a DLQ record carries the payload as JSON and as base64, so a record of
/// a few hundred KB could not be dead-lettered: the runtime stopped, and met the
/// same record after every restart (a crash loop for every key). It is now written
/// without its payload, saying so, with the archive key; the key and the group go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect4_an_oversized_dead_letter_is_written_without_its_payload() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let plan: Plan = Arc::new(|k, seq, _, _: &Store| {
        ((k, seq) == (0, 0)).then(|| HandlerError::permanent("unparseable"))
    });
    let config = fast_config(&group, &source);
    let store = Arc::new(Mutex::new(Store::default()));
    let (_registry, metrics) = fresh_registry();
    let (runtime, stop) = start(
        &cluster,
        config,
        store.clone(),
        plan,
        Duration::ZERO,
        &metrics,
    )
    .await;
    // 600 KB of JSON: as payload_json plus base64, about 1.4 MB.
    produce_big(&cluster, &source, 0, 0, 600_000).await;
    produce_events(&cluster, &source, &[0, 1], 1..3).await;
    wait_for(
        "the key's next records and another key's",
        Duration::from_secs(60),
        || {
            let s = store.lock().unwrap();
            [(0, 1), (0, 2), (1, 1), (1, 2)]
                .iter()
                .all(|r| s.raw.contains(r))
        },
    )
    .await;
    stop.trigger();
    runtime
        .wait()
        .await
        .expect("the runtime did not stop on the big record");
    let letters = read_topic(
        &cluster,
        &format!("{group}.dlq"),
        2,
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(letters.len(), 1);
    let letter = DlqRecord::from_json(&letters[0].payload).unwrap();
    assert_eq!(letter.original.offset, 0);
    assert_eq!(letter.error, "unparseable");
    let why = letter
        .payload_omitted
        .as_deref()
        .expect("says the payload was left out");
    assert!(why.contains("archive"), "{why}");
    assert!(letter.payload_base64.is_empty() && letter.payload_json.is_null());
    assert_eq!(
        letter.headers.get("archive-key").and_then(|v| v.as_str()),
        Some("raw/2026/12/07/T1/big.json"),
        "the archive key finds the original"
    );
    assert!(letter.headers.get("bulky").is_none());
    assert_eq!(
        letters[0].header("archive-key"),
        Some("raw/2026/12/07/T1/big.json")
    );
    assert!(
        slackline_consumer::redrive(&letters[0].payload).is_err(),
        "a record without its payload cannot be redriven as if it were empty"
    );
}

/// Defect 4, the retry side: a record the runtime's producer refuses for the retry
/// topic (over its `message.max.bytes`, 1,000,000 by default, while the broker takes
/// records up to 1,048,588 bytes into the source) stopped the runtime. It is now
/// dead-lettered (without its payload), and its key goes on, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect4_a_record_too_large_for_the_retry_topic_is_dead_lettered() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    // C00 seq 0 fails once (retryable): it goes to the retry topic, which refuses it.
    let plan: Plan = Arc::new(|k, seq, call, _: &Store| {
        ((k, seq) == (0, 0) && call == 1).then(|| HandlerError::retryable("flaky"))
    });
    let mut config = fast_config(&group, &source);
    config.quick_retries = 0;
    let store = Arc::new(Mutex::new(Store::default()));
    let (_registry, metrics) = fresh_registry();
    let (runtime, stop) = start(
        &cluster,
        config,
        store.clone(),
        plan,
        Duration::ZERO,
        &metrics,
    )
    .await;
    produce_big(&cluster, &source, 0, 0, 1_020_000).await;
    produce_events(&cluster, &source, &[0], 1..3).await;
    wait_for("the key's next records", Duration::from_secs(60), || {
        let s = store.lock().unwrap();
        s.raw.contains(&(0, 1)) && s.raw.contains(&(0, 2))
    })
    .await;
    stop.trigger();
    runtime
        .wait()
        .await
        .expect("the runtime did not stop on the big record");
    let letters = dead_letters(&cluster, &group).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].original.offset, 0);
    assert!(
        letters[0].error.contains("too large"),
        "{}",
        letters[0].error
    );
    let raw = store.lock().unwrap().raw.clone();
    assert_eq!(
        raw,
        vec![(0, 1), (0, 2)],
        "seq 0 dead, then 1 and 2 in order"
    );
}

/// Defect 5: when the revoke callback gave up waiting for the loop (the loop held
/// up longer than revoke grace + 10 s) and the same partitions came straight back,
/// the loop still had them as draining and dropped their records until the next
/// rebalance.
///
/// A handler blocks the runtime's only worker thread for 14 s (a handler calling
/// blocking code) while three slow calls are in flight, and a second member joins:
/// the first member's revoke callback times out, and when the loop wakes up the
/// revocation and the new assignment are both waiting. Every record produced
/// afterwards must still be handled.
#[test]
fn defect5_partitions_given_back_after_an_unanswered_revoke_are_handled() {
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let mut config = fast_config(&group, &source);
    config.revoke_grace = Duration::from_secs(1);
    let store = Arc::new(Mutex::new(Store::default()));
    let blocked = Arc::new(AtomicBool::new(false));

    // Member A: one worker thread, which the first call of C00 seq 0 blocks.
    let a_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let record = recording_handler(store.clone(), no_failures(), Duration::ZERO);
    let record = Arc::new(record);
    let block_flag = blocked.clone();
    let slow_started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow_seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let slow_count = slow_started.clone();
    let handler = move |event: slackline_consumer::Event| {
        let seq0 = |k: usize| {
            event.key.as_deref() == Some(key(k).as_bytes())
                && event.header_str("slack-event-id") == Some(event_id(k, 0).as_str())
        };
        if seq0(0) && !block_flag.swap(true, Ordering::SeqCst) {
            // Blocking on purpose: starves the runtime's loop on this worker.
            std::thread::sleep(Duration::from_secs(14));
        }
        // C01-C03's first records are slow (asynchronously): their calls are still
        // running when the loop wakes up, so the revoke cannot finish at once.
        let slow = (1..4).any(seq0)
            && slow_seen
                .lock()
                .unwrap()
                .insert((event.partition, event.offset));
        if slow {
            slow_count.fetch_add(1, Ordering::SeqCst);
        }
        let record = record.clone();
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            record(event).await
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send>>
    };
    let (_registry_a, metrics_a) = fresh_registry();
    let stop_a = slackline_service::Shutdown::new();
    let a = a_runtime
        .block_on(slackline_consumer::ConsumerRuntime::start(
            &settings(&cluster),
            config.clone(),
            handler,
            &metrics_a,
            stop_a.clone(),
        ))
        .unwrap();
    let driver = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    driver.block_on(async {
        produce_events(&cluster, &source, &[1, 2, 3], 0..1).await;
        wait_for("the slow calls running", Duration::from_secs(60), || {
            slow_started.load(Ordering::SeqCst) == 3
        })
        .await;
        produce_events(&cluster, &source, &[0], 0..1).await;
        wait_for("A's handler blocking", Duration::from_secs(60), || {
            blocked.load(Ordering::SeqCst)
        })
        .await;
    });
    // Member B joins while A's loop cannot answer its revoke.
    let (_registry_b, metrics_b) = fresh_registry();
    let (b, stop_b) = driver.block_on(start(
        &cluster,
        config,
        store.clone(),
        no_failures(),
        Duration::ZERO,
        &metrics_b,
    ));
    let keys: Vec<usize> = (0..8).collect();
    driver.block_on(async {
        // Past A's block and the rebalance: both members own partitions again.
        wait_for("A's handler done", Duration::from_secs(60), || {
            store.lock().unwrap().raw.contains(&(0, 0))
        })
        .await;
        produce_events(&cluster, &source, &keys, 1..6).await;
        wait_for(
            "every record after the rebalance handled",
            Duration::from_secs(60),
            || {
                let s = store.lock().unwrap();
                keys.iter()
                    .all(|&k| (1..6).all(|seq| s.raw.contains(&(k, seq))))
            },
        )
        .await;
    });
    stop_a.trigger();
    stop_b.trigger();
    a_runtime.block_on(a.wait()).unwrap();
    driver.block_on(b.wait()).unwrap();
    // Per key, first applications in order.
    let raw = store.lock().unwrap().raw.clone();
    for &k in &keys {
        let mut firsts = Vec::new();
        for &(key, seq) in &raw {
            if key == k && !firsts.contains(&seq) {
                firsts.push(seq);
            }
        }
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        assert_eq!(
            firsts, sorted,
            "key {k}: first applications out of order: {raw:?}"
        );
    }
}
