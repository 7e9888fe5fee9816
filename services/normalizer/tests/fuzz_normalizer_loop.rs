//! Generated input through the running normalizer (issue 12, fuzzing): the pure
//! `normalize()` is fuzzed in `fuzz_normalize.rs`; this drives mutated Slack payloads
//! (and raw garbage) through the real consume loop on the real broker and checks what
//! only the loop can get wrong: every raw record read is counted once, the outcome
//! counters add up to the records read, each full or degraded outcome is one record on
//! the messages topic, each `dlq` outcome one record on the DLQ, and the group commits
//! to the end (nothing stuck, nothing skipped).
//!
//! Inputs: `testdata/events` (and the corpus in `../shared/slack-corpus` when present),
//! each mutated by a seeded generator (`FUZZ_LOOP_SEED`, `FUZZ_LOOP_CASES`): keys
//! deleted, values replaced by numbers, arrays or deep nesting, types and subtypes
//! swapped, bytes truncated or flipped. Records are keyed over a few channels, like
//! the edge's routing, with the edge's headers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::Shutdown;
use slackline_testkit::kafka::{
    group_lag, produce_with_headers, topic_len, HeadedRecord, TestCluster,
};

const PARTITIONS: i32 = 4;
const KEYS: [&str; 5] = ["C0CHAN01", "C0CHAN02", "C0CHAN03", "T0HOME", "unknown"];

/// xorshift64*: a small seeded generator, so a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds() -> Vec<Value> {
    let mut dirs =
        vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/events")];
    match slackline_testkit::corpus_events_dir() {
        Some(dir) => dirs.push(dir),
        None => {
            println!("notice: no Slack corpus (../shared/slack-corpus): seeds from testdata/ only")
        }
    }
    let mut seeds = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for path in files {
            if let Ok(v) = serde_json::from_slice::<Value>(&std::fs::read(&path).expect("readable"))
            {
                seeds.push(v);
            }
        }
    }
    assert!(!seeds.is_empty(), "testdata/events has seeds");
    seeds
}

/// Every object in `v`, depth first, as JSON pointers.
fn object_pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            out.push(here.clone());
            for (k, child) in map {
                object_pointers(
                    child,
                    format!("{here}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                object_pointers(child, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn mutate(rng: &mut Rng, mut v: Value, case: usize) -> Vec<u8> {
    // A distinct event id per case, so Slack-retry deduplication does not hide cases.
    if let Some(map) = v.as_object_mut() {
        if map.contains_key("event_id") || map.contains_key("event") {
            map.insert("event_id".into(), json!(format!("EvLoop{case}")));
        }
    }
    for _ in 0..=rng.below(3) {
        let mut pointers = Vec::new();
        object_pointers(&v, String::new(), &mut pointers);
        let at = pointers[rng.below(pointers.len())].clone();
        let Some(Value::Object(map)) = v.pointer_mut(&at) else {
            continue;
        };
        let keys: Vec<String> = map.keys().cloned().collect();
        let key = if keys.is_empty() {
            "type".to_owned()
        } else {
            keys[rng.below(keys.len())].clone()
        };
        match rng.below(8) {
            0 => {
                map.remove(&key);
            }
            1 => {
                map.insert(key, json!(rng.next() as i64));
            }
            2 => {
                map.insert(key, json!([null, true, {"a": []}]));
            }
            3 => {
                let mut deep = json!("x");
                for _ in 0..(50 + rng.below(200)) {
                    deep = json!({ "elements": [deep] });
                }
                map.insert(key, deep);
            }
            4 => {
                let t = [
                    "message",
                    "reaction_added",
                    "member_joined_channel",
                    "app_mention",
                    "",
                    "url_verification",
                ];
                map.insert("type".into(), json!(t[rng.below(t.len())]));
            }
            5 => {
                let s = [
                    "channel_topic",
                    "message_changed",
                    "message_replied",
                    "bot_message",
                    "nope",
                    "channel_join",
                ];
                map.insert("subtype".into(), json!(s[rng.below(s.len())]));
            }
            6 => {
                map.insert(
                    key,
                    json!("\u{0}\u{202E}é\u{1F600}".repeat(1 + rng.below(2000))),
                );
            }
            _ => {
                map.insert(key, Value::Null);
            }
        }
    }
    let mut bytes = serde_json::to_vec(&v).expect("serialises");
    match rng.below(10) {
        0 if !bytes.is_empty() => {
            let at = rng.below(bytes.len());
            bytes.truncate(at);
        }
        1 if !bytes.is_empty() => {
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 << rng.below(8);
        }
        2 => bytes = (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        _ => {}
    }
    bytes
}

/// Produces (key, body, archive key) records as the edge does: with the archive key
/// and event id headers, in order, waiting for every acknowledgement.
async fn produce_raw(cluster: &TestCluster, topic: &str, records: &[(String, Vec<u8>, String)]) {
    let records: Vec<HeadedRecord<'_>> = records
        .iter()
        .enumerate()
        .map(|(i, (key, body, archive_key))| {
            let headers = vec![
                (
                    slackline_kafka::headers::EVENT_ID,
                    format!("EvLoopHeader{i}"),
                ),
                (slackline_kafka::headers::ARCHIVE_KEY, archive_key.clone()),
            ];
            (key.clone(), body.clone(), headers)
        })
        .collect();
    produce_with_headers(cluster, topic, &records).await;
}

fn counter(normalizer: &Normalizer, name: &str, labels: &[(&str, &str)]) -> i64 {
    slackline_testkit::metrics::metric(&normalizer.registry, name, labels) as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_payloads_through_the_loop_each_end_as_one_counted_outcome() {
    let seed = env_u64("FUZZ_LOOP_SEED", 0x51AC_711E);
    let cases = env_u64("FUZZ_LOOP_CASES", 400) as usize;
    println!(
        "fuzz_normalizer_loop: seed {seed:#x}, {cases} cases (FUZZ_LOOP_SEED, FUZZ_LOOP_CASES)"
    );
    let mut rng = Rng(seed | 1);
    let seeds = seeds();
    let records: Vec<(String, Vec<u8>, String)> = (0..cases)
        .map(|case| {
            let seed_value = seeds[rng.below(seeds.len())].clone();
            let body = mutate(&mut rng, seed_value, case);
            (
                KEYS[rng.below(KEYS.len())].to_owned(),
                body,
                format!("raw/loop/{case}.json"),
            )
        })
        .collect();

    let cluster = TestCluster::kafka();
    let names = cluster.names();
    let (raw, messages, dlq) = (names.raw_events(), names.messages(), names.raw_dlq());
    cluster.create_topic(&raw, PARTITIONS);
    cluster.create_topic(&messages, PARTITIONS);
    cluster.create_topic(&dlq, 1);
    produce_raw(&cluster, &raw, &records).await;

    // No bot tokens: no author lookups, the loop alone is under test.
    let config = NormalizerConfig::new(cluster.settings(), names);
    let group = config.group_id.clone();
    let shutdown = Shutdown::new();
    let normalizer = Normalizer::start(config, shutdown.clone()).await.unwrap();

    let total = cases as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let consumed = counter(&normalizer, "slackline_normalizer_consumed_total", &[]);
        if consumed >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the normalizer read {consumed} of {total} records in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let registry = normalizer.registry.clone();
    shutdown.trigger();
    normalizer
        .wait()
        .await
        .expect("the normalizer stops cleanly");

    // After a clean stop the counters are final and the group has committed.
    let count = |name: &str, labels: &[(&str, &str)]| {
        slackline_testkit::metrics::metric(&registry, name, labels) as i64
    };
    let consumed = count("slackline_normalizer_consumed_total", &[]);
    let outcome = |o: &str| count("slackline_normalizer_outcomes_total", &[("outcome", o)]);
    let (full, degraded, ignored, dead) = (
        outcome("full"),
        outcome("degraded"),
        outcome("ignored"),
        outcome("dlq"),
    );
    println!(
        "fuzz_normalizer_loop: {consumed} consumed: {full} full, {degraded} degraded, {ignored} ignored, {dead} dlq"
    );
    assert_eq!(consumed, total, "each raw record read and counted once");
    assert_eq!(
        full + degraded + ignored + dead,
        consumed,
        "one outcome per record read"
    );
    let bootstrap = cluster.bootstrap_servers();
    let (b, m, d, r, g) = (
        bootstrap.clone(),
        messages.clone(),
        dlq.clone(),
        raw.clone(),
        group.clone(),
    );
    let (on_messages, on_dlq, lag) = tokio::task::spawn_blocking(move || {
        (
            topic_len(&b, &m, PARTITIONS),
            topic_len(&b, &d, 1),
            group_lag(&b, &g, &r, PARTITIONS),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        on_messages,
        full + degraded,
        "one message event per full or degraded outcome"
    );
    assert_eq!(on_dlq, dead, "one DLQ record per dlq outcome");
    assert_eq!(lag, 0, "the group committed to the end of the raw topic");
    // The generator must reach the interesting paths, or the test proves little.
    assert!(
        full > 0 && degraded > 0 && ignored > 0,
        "the inputs reach full, degraded and ignored"
    );
}
