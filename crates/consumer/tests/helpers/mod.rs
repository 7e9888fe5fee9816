//! Shared set-up for the consumer runtime's tests: a [`TestCluster`] (the shared
//! Apache Kafka broker, or the mock cluster for a test that injects faults),
//! co-partitioned source/retry/DLQ topics under the cluster's prefix, a producer of
//! numbered events per key, and a recording handler whose failures follow a plan and
//! whose effects are deduplicated by event id (as a real handler's store would be).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use slackline_consumer::{
    ConsumerMetrics, ConsumerRuntime, Event, HandlerError, RuntimeConfig, RuntimeHandle,
};
use slackline_kafka::KafkaSettings;
use slackline_service::Shutdown;
pub use slackline_testkit::kafka::TestCluster;

pub const PARTITIONS: i32 = 4;

/// The shared Apache Kafka broker, under a topic and group prefix of this test's own.
pub fn kafka() -> TestCluster {
    slackline_testkit::kafka::init_logs();
    TestCluster::kafka()
}

/// Creates `topic` (through `topics::create`, which returns once the broker's
/// metadata lists it: the runtime's start checks the topics once).
pub fn create_topic(cluster: &TestCluster, topic: &str, partitions: i32) {
    cluster.create_topic(topic, partitions);
}

/// Creates a source topic (`PARTITIONS` partitions) under the cluster's prefix.
pub fn source_topic(cluster: &TestCluster) -> String {
    let topic = cluster.topic(&slackline_testkit::unique_name("src"));
    create_topic(cluster, &topic, PARTITIONS);
    topic
}

/// A group id under the cluster's prefix with its retry topic (co-partitioned with the
/// source) and its DLQ topic: the names the runtime derives from the group id.
pub fn group(cluster: &TestCluster) -> String {
    let base = slackline_testkit::unique_name("grp");
    let names = cluster.names();
    create_topic(cluster, &names.retry(&base), PARTITIONS);
    create_topic(cluster, &names.dlq(&base), 2);
    names.group(&base)
}

/// The consumer group protocol a test runs the runtime under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup, client-side assignor, eager range).
    Classic,
    /// KIP-848 (`group.protocol=consumer`): broker-side assignment, incremental.
    Consumer,
}

impl GroupProtocol {
    pub fn name(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// Settings for tests: quick group joins (classic protocol).
pub fn settings(cluster: &TestCluster) -> KafkaSettings {
    settings_for(cluster, GroupProtocol::Classic, Duration::from_millis(200))
}

/// Settings for `protocol`, as `KAFKA_PROPERTIES` would give them. The classic
/// protocol gets a short session and `heartbeat` as its heartbeat interval; KIP-848
/// takes both from the broker (`group.consumer.heartbeat.interval.ms`), and librdkafka
/// refuses the classic properties under it.
pub fn settings_for(
    cluster: &TestCluster,
    protocol: GroupProtocol,
    heartbeat: Duration,
) -> KafkaSettings {
    let mut s = cluster.settings();
    s.properties = match protocol {
        GroupProtocol::Classic => vec![
            ("session.timeout.ms".into(), "6000".into()),
            (
                "heartbeat.interval.ms".into(),
                heartbeat.as_millis().to_string(),
            ),
        ],
        GroupProtocol::Consumer => vec![("group.protocol".into(), "consumer".into())],
    };
    s.properties.push(("log_level".into(), "3".into()));
    s
}

/// A config with millisecond delays.
pub fn fast_config(group: &str, source: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(group, source);
    c.quick_retries = 2;
    c.quick_backoff = Duration::from_millis(1);
    c.retry_delays = vec![
        Duration::from_millis(10),
        Duration::from_millis(20),
        Duration::from_millis(50),
    ];
    c.max_concurrent_keys = 8;
    c.shutdown_grace = Duration::from_secs(5);
    c.revoke_grace = Duration::from_secs(2);
    c.produce_timeout = Duration::from_secs(30);
    c.store_interval = Duration::from_millis(20);
    c.commit_interval = Duration::from_millis(100);
    c.lag_interval = Duration::from_millis(200);
    c
}

pub fn key(k: usize) -> String {
    format!("C{k:02}")
}

pub fn event_id(k: usize, seq: usize) -> String {
    format!("Ev-{k:02}-{seq:04}")
}

/// Produces `seqs` of each key in `keys`, interleaved round-robin (seq-major), key k
/// to partition `k % PARTITIONS`, value `{"key","seq"}`, header `slack-event-id`.
pub async fn produce_events(
    cluster: &TestCluster,
    topic: &str,
    keys: &[usize],
    seqs: std::ops::Range<usize>,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for seq in seqs {
        for &k in keys {
            let payload = serde_json::to_vec(&serde_json::json!({"key": k, "seq": seq})).unwrap();
            let id = event_id(k, seq);
            let headers = OwnedHeaders::new().insert(Header {
                key: "slack-event-id",
                value: Some(id.as_str()),
            });
            let key = key(k);
            let record = FutureRecord::to(topic)
                .partition(k as i32 % PARTITIONS)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// What the handler did, shared with the test.
#[derive(Default)]
pub struct Store {
    /// Effects per key, in the order they happened (deduplicated by event id).
    pub effects: BTreeMap<usize, Vec<usize>>,
    /// Every effect in order, over all keys.
    pub log: Vec<(usize, usize)>,
    pub seen: HashSet<String>,
    /// Handler calls per event id.
    pub calls: HashMap<String, u32>,
    /// Calls that found the effect already done (redeliveries).
    pub duplicates: u64,
    /// Every successful call in order, redeliveries included (what a handler that
    /// is not idempotent would have applied).
    pub raw: Vec<(usize, usize)>,
}

impl Store {
    pub fn total(&self) -> usize {
        self.log.len()
    }

    pub fn done(&self, k: usize) -> usize {
        self.effects.get(&k).map_or(0, Vec::len)
    }

    /// Redeliveries are only what the runtime documents for a restart: the calls
    /// before `restart` (an index into `raw`) applied each record once, in order; after
    /// it, each key replays at most once, from where the new runtime starts it (the
    /// committed offset), and in order from there, so a replay can start only at the
    /// key's first call after the restart.
    pub fn assert_replays_only_at_restart(&self, restart: usize) {
        let mut last: HashMap<usize, usize> = HashMap::new();
        for (i, &(k, seq)) in self.raw.iter().enumerate() {
            let prev = last.insert(k, seq);
            let Some(prev) = prev else {
                continue;
            };
            if seq > prev {
                continue;
            }
            let first_after_restart =
                i >= restart && !self.raw[restart..i].iter().any(|(key, _)| *key == k);
            assert!(
                first_after_restart,
                "key {k}: seq {seq} applied again after seq {prev} (call {i}, restart at call \
                 {restart}): a redelivery that is not a replay from the committed offset"
            );
        }
    }

    /// Every key's effects are exactly `0..n`, in order.
    pub fn assert_in_order(&self, keys: &[usize], n: usize) {
        for &k in keys {
            let got = self.effects.get(&k).cloned().unwrap_or_default();
            let want: Vec<usize> = (0..n).collect();
            if got != want {
                let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
                panic!(
                    "key {k}: {} effects, first mismatch at {first_bad:?}; got {:?}...",
                    got.len(),
                    &got[..got.len().min(40)]
                );
            }
        }
    }
}

/// Decides, per (key, seq, call number starting at 1), whether the call fails.
pub type Plan = Arc<dyn Fn(usize, usize, u32, &Store) -> Option<HandlerError> + Send + Sync>;

pub fn no_failures() -> Plan {
    Arc::new(|_, _, _, _| None)
}

/// A handler recording into `store`, failing according to `plan`, idempotent on the
/// event id. `delay` simulates work.
pub fn recording_handler(
    store: Arc<Mutex<Store>>,
    plan: Plan,
    delay: Duration,
) -> impl Fn(Event) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
       + Send
       + Sync
       + 'static {
    move |event: Event| {
        let store = store.clone();
        let plan = plan.clone();
        Box::pin(async move {
            let v: serde_json::Value = serde_json::from_slice(&event.payload)
                .map_err(|e| HandlerError::permanent(format!("not json: {e}")))?;
            let (Some(k), Some(seq)) = (v["key"].as_u64(), v["seq"].as_u64()) else {
                return Err(HandlerError::permanent("no key/seq"));
            };
            let (k, seq) = (k as usize, seq as usize);
            let id = event.header_str("slack-event-id").unwrap().to_owned();
            assert_eq!(id, event_id(k, seq), "headers survive the retry topic");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut s = store.lock().unwrap();
            let call = {
                let c = s.calls.entry(id.clone()).or_default();
                *c += 1;
                *c
            };
            if let Some(e) = plan(k, seq, call, &s) {
                return Err(e);
            }
            s.raw.push((k, seq));
            if !s.seen.insert(id) {
                s.duplicates += 1;
                return Ok(());
            }
            s.effects.entry(k).or_default().push(seq);
            s.log.push((k, seq));
            Ok(())
        })
    }
}

/// A fresh registry with the runtime's metrics in it (one per runtime a test starts,
/// so each one's counters are its own).
pub fn fresh_registry() -> (Registry, ConsumerMetrics) {
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry).expect("the runtime's metrics register");
    (registry, metrics)
}

/// Starts a runtime with its own shutdown signal.
pub async fn start(
    cluster: &TestCluster,
    config: RuntimeConfig,
    store: Arc<Mutex<Store>>,
    plan: Plan,
    delay: Duration,
    metrics: &ConsumerMetrics,
) -> (RuntimeHandle, Shutdown) {
    start_with(&settings(cluster), config, store, plan, delay, metrics).await
}

/// [`start`] with explicit Kafka settings.
pub async fn start_with(
    settings: &KafkaSettings,
    config: RuntimeConfig,
    store: Arc<Mutex<Store>>,
    plan: Plan,
    delay: Duration,
    metrics: &ConsumerMetrics,
) -> (RuntimeHandle, Shutdown) {
    let shutdown = Shutdown::new();
    let handle = ConsumerRuntime::start(
        settings,
        config,
        recording_handler(store, plan, delay),
        metrics,
        shutdown.clone(),
    )
    .await
    .expect("runtime starts");
    (handle, shutdown)
}

/// Waits until `cond` holds, panicking with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a metric of `group` (counter or gauge), summed over other labels.
pub fn metric(registry: &Registry, name: &str, group: &str) -> f64 {
    slackline_testkit::metrics::metric(registry, name, &[("group", group)])
}

/// Whether a series of `name` for `group` exists (even at 0).
pub fn has_series(registry: &Registry, name: &str, group: &str) -> bool {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .any(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "group" && l.value() == group)
        })
}

pub use slackline_testkit::kafka::Record;

/// Reads every record of `topic` (all `partitions`) until `want` arrived or `timeout`.
pub async fn read_topic(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    want: usize,
    timeout: Duration,
) -> Vec<Record> {
    slackline_testkit::kafka::read_topic(
        &cluster.bootstrap_servers(),
        topic,
        partitions,
        want,
        timeout,
    )
    .await
}

/// The group's committed offsets and the high watermarks of `topic`'s partitions.
pub async fn committed_and_high(
    cluster: &TestCluster,
    group: &str,
    topic: &str,
) -> Vec<(i64, i64)> {
    let bootstrap = cluster.bootstrap_servers();
    let group = group.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        (0..PARTITIONS)
            .map(|p| {
                let c = match committed.find_partition(&topic, p).unwrap().offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .unwrap();
                (c, high)
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Waits until the group has committed every partition of the source and retry
/// topics up to its end (commits happen every 100 ms while running): every record,
/// including redelivered duplicates and forwarded copies, is finished.
pub async fn wait_fully_committed(
    cluster: &TestCluster,
    group: &str,
    source: &str,
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        let mut complete = true;
        for topic in [source.to_owned(), format!("{group}.retry")] {
            for (committed, high) in committed_and_high(cluster, group, &topic).await {
                complete &= high == 0 || committed == high;
            }
        }
        if complete {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "not fully committed after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a clean stop, every partition of source and retry is committed up to its
/// end: nothing unfinished is left, and nothing was committed that is not finished
/// (the other tests check the latter through order and completeness).
pub async fn assert_fully_committed(cluster: &TestCluster, group: &str, source: &str) {
    for topic in [source.to_owned(), format!("{group}.retry")] {
        for (p, (committed, high)) in committed_and_high(cluster, group, &topic)
            .await
            .into_iter()
            .enumerate()
        {
            if high > 0 {
                assert_eq!(
                    committed, high,
                    "{topic} [{p}]: committed {committed}, high {high}"
                );
            }
        }
    }
}
