//! Throughput of the consumer runtime, in one process, on the cluster `BENCH_KAFKA`
//! names:
//!
//! * `mock` (the default): librdkafka's mock cluster in this process (3 brokers,
//!   replication 3);
//! * `embedded`: a private single-node Apache Kafka broker (`EmbeddedBroker`, the
//!   version the tests use) started in a temporary folder and stopped at the end;
//! * anything else: the bootstrap servers of a running cluster (topics and groups
//!   are created under a prefix unique to the run, replication 1).
//!
//! Three runs over the same pre-produced topic (`BENCH_EVENTS` events, default
//! 100 000, ~110-byte JSON values, 1 000 keys, 12 partitions), each with its own
//! consumer group. (The mock cluster keeps at most 5 MB per partition, so on the mock
//! the binary refuses runs larger than about 250 000 events.)
//!
//! * **plain rdkafka loop**: a `BaseConsumer` polling on one thread and storing the
//!   offset of every message (`enable.auto.offset.store=false`, auto commit): the
//!   floor any at-least-once consumer pays.
//! * **runtime, no-op handler**: `ConsumerRuntime` with a handler that only counts:
//!   the cost of per-key queues, a task per handler call, offset tracking, the
//!   retry-topic subscription and the polling thread.
//! * **runtime, 10 % of keys parked**: the handler fails (retryably, every call) for
//!   every tenth key, with delays long enough that those keys stay parked for the
//!   whole run; their events are moved behind the parked ones into the retry topic
//!   while the other 90 % are handled. Reported: events/s of the healthy keys.
//!
//! Each rate is measured from the first to the last event of the run, so the group
//! join is not counted. The CPU column is this process per event over the same
//! interval: with the mock cluster that includes the mock brokers, with a real broker
//! it does not (the broker is another process). The tokio runtime has one worker
//! thread; librdkafka runs its own threads, as in production.
//!
//! Run with `cargo bench -p slackline-consumer --bench runtime_throughput` (and
//! optionally `BENCH_KAFKA=embedded`, `BENCH_EVENTS=300000`).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use slackline_consumer::{ConsumerMetrics, ConsumerRuntime, Event, HandlerError, RuntimeConfig};
use slackline_kafka::embedded::{BrokerConfig, EmbeddedBroker};
use slackline_kafka::topics::TopicSpec;
use slackline_kafka::KafkaSettings;
use slackline_service::Shutdown;

const KEYS: usize = 1000;
const PARTITIONS: i32 = 12;
/// The mock cluster keeps at most 5 MB or 100 000 records per partition (older ones
/// are deleted, like retention); a run must fit, or the consumers would wait forever.
const MOCK_PARTITION_BYTES: usize = 5 * 1024 * 1024;
/// A generous estimate of one record's size in the mock's log.
const RECORD_BYTES: usize = 200;

type Mock = MockCluster<'static, DefaultProducerContext>;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Process CPU time (user + system) so far, from /proc/self/stat.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses).
    let Some(rest) = stat.rsplit(')').next() else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

struct Row {
    name: &'static str,
    events: u64,
    elapsed: Duration,
    cpu: Duration,
}

/// The cluster the bench runs on.
enum Cluster {
    Mock(Mock),
    Embedded {
        broker: EmbeddedBroker,
        // Removed when the bench ends (after the broker stopped).
        _dir: tempfile::TempDir,
    },
    External(String),
}

impl Cluster {
    /// From `BENCH_KAFKA`: `mock` (default), `embedded` or bootstrap servers.
    fn from_env() -> Result<Cluster, String> {
        let choice = std::env::var("BENCH_KAFKA").unwrap_or_default();
        match choice.trim() {
            "" | "mock" => Ok(Cluster::Mock(
                MockCluster::new(3).map_err(|e| e.to_string())?,
            )),
            "embedded" => {
                let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
                eprintln!(
                    "starting an embedded Kafka broker in {} ...",
                    dir.path().display()
                );
                let broker = EmbeddedBroker::start(BrokerConfig::new(dir.path().join("broker")))
                    .map_err(|e| e.to_string())?;
                Ok(Cluster::Embedded { broker, _dir: dir })
            }
            bootstrap => Ok(Cluster::External(bootstrap.to_owned())),
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Cluster::Mock(mock) => mock.bootstrap_servers(),
            Cluster::Embedded { broker, .. } => broker.bootstrap_servers().to_owned(),
            Cluster::External(b) => b.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Cluster::Mock(_) => "librdkafka MockCluster (3 brokers, replication 3)".to_owned(),
            Cluster::Embedded { broker, .. } => format!(
                "embedded Apache Kafka {} (single node, replication 1, {})",
                slackline_kafka::embedded::kafka_version(),
                broker.bootstrap_servers()
            ),
            Cluster::External(b) => format!("Kafka at {b} (replication 1)"),
        }
    }

    fn is_mock(&self) -> bool {
        matches!(self, Cluster::Mock(_))
    }

    async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        if let Cluster::Mock(mock) = self {
            return mock
                .create_topic(name, partitions, 3)
                .map_err(|e| e.to_string());
        }
        let spec = TopicSpec {
            name: name.to_owned(),
            partitions,
            configs: Vec::new(),
        };
        // Returns once the broker's metadata lists the topic (the runtime checks its
        // topics once at start).
        slackline_kafka::topics::create(&KafkaSettings::new(self.bootstrap()), &[spec], 1)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn stop(self) {
        if let Cluster::Embedded { mut broker, _dir } = self {
            if let Err(e) = broker.stop() {
                eprintln!("stopping the embedded broker: {e}");
            }
        }
    }
}

async fn run() -> Result<(), String> {
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let cluster = Cluster::from_env()?;
    eprintln!("cluster: {}", cluster.describe());
    let per_partition = events.div_ceil(PARTITIONS as usize);
    if cluster.is_mock()
        && (per_partition * RECORD_BYTES > MOCK_PARTITION_BYTES * 9 / 10 || per_partition > 90_000)
    {
        return Err(format!(
            "BENCH_EVENTS={events} does not fit the mock cluster's per-partition log \
             (5 MB, 100 000 records); use at most {}",
            MOCK_PARTITION_BYTES * 9 / 10 / RECORD_BYTES * PARTITIONS as usize
        ));
    }
    // Names of this run's own: a real cluster may hold earlier runs' topics and groups.
    let prefix = if cluster.is_mock() {
        "bench".to_owned()
    } else {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        format!("bench-{}-{millis}", std::process::id())
    };
    let topic = format!("{prefix}.source");
    cluster.create_topic(&topic, PARTITIONS).await?;
    eprintln!("producing {events} events over {KEYS} keys ...");
    produce(&cluster, &topic, events).await?;

    let mut rows = Vec::new();
    eprintln!("plain loop ...");
    rows.push(plain_loop(&cluster, &prefix, &topic, events).await?);
    eprintln!("runtime runs ...");
    rows.push(
        runtime_run(
            &cluster,
            &prefix,
            &topic,
            events,
            "runtime, no-op handler",
            0,
        )
        .await?,
    );
    rows.push(
        runtime_run(
            &cluster,
            &prefix,
            &topic,
            events,
            "runtime, 10% of keys parked (healthy keys' events)",
            10,
        )
        .await?,
    );

    println!();
    println!(
        "consumer runtime throughput, {} ({PARTITIONS} partitions), {events} events, \
         {KEYS} keys, 1 tokio worker",
        cluster.describe()
    );
    println!();
    println!("| run | events | seconds | events/s | CPU µs/event (this process) |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        let secs = r.elapsed.as_secs_f64();
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} |",
            r.name,
            r.events,
            secs,
            r.events as f64 / secs,
            r.cpu.as_secs_f64() * 1e6 / r.events as f64
        );
    }
    cluster.stop();
    Ok(())
}

async fn produce(cluster: &Cluster, topic: &str, events: usize) -> Result<(), String> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|e| e.to_string())?;
    let filler = "x".repeat(60);
    let mut pending = Vec::with_capacity(events);
    for i in 0..events {
        let key = format!("K{:04}", i % KEYS);
        let value = format!(r#"{{"seq":{i},"key":"{key}","text":"{filler}"}}"#);
        let record = FutureRecord::to(topic).key(&key).payload(&value);
        match producer.send_result(record) {
            Ok(d) => pending.push(d),
            Err((e, _)) => return Err(format!("enqueue: {e}")),
        }
    }
    for d in pending {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(format!("delivery: {e}")),
            Err(_) => return Err("delivery cancelled".into()),
        }
    }
    Ok(())
}

/// A plain loop: poll, store the offset of each message.
async fn plain_loop(
    cluster: &Cluster,
    prefix: &str,
    topic: &str,
    events: usize,
) -> Result<Row, String> {
    let bootstrap = cluster.bootstrap();
    let group = format!("{prefix}-plain");
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(|e| e.to_string())?;
        consumer.subscribe(&[&topic]).map_err(|e| e.to_string())?;
        let mut seen = 0;
        let mut first: Option<(Instant, Duration)> = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        while seen < events {
            if Instant::now() > deadline {
                return Err(format!("plain loop: only {seen} events"));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => eprintln!("plain loop: {e}"),
                Some(Ok(m)) => {
                    first.get_or_insert_with(|| (Instant::now(), cpu_time()));
                    consumer
                        .store_offset_from_message(&m)
                        .map_err(|e| e.to_string())?;
                    seen += 1;
                }
            }
        }
        let (start, cpu) = first.ok_or("no events")?;
        Ok(Row {
            name: "plain rdkafka loop, offset stored per message",
            events: events as u64,
            elapsed: start.elapsed(),
            cpu: cpu_time().saturating_sub(cpu),
        })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The runtime; keys whose index is divisible by `parked_every` (if not 0) fail.
async fn runtime_run(
    cluster: &Cluster,
    prefix: &str,
    topic: &str,
    events: usize,
    name: &'static str,
    parked_every: usize,
) -> Result<Row, String> {
    let group = format!("{prefix}-runtime-{parked_every}");
    cluster
        .create_topic(&format!("{group}.retry"), PARTITIONS)
        .await?;
    cluster.create_topic(&format!("{group}.dlq"), 1).await?;
    let is_parked = move |key: &[u8]| -> bool {
        parked_every != 0
            && std::str::from_utf8(&key[1..])
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n % parked_every == 0)
    };
    let healthy_events = (0..events)
        .filter(|i| !is_parked(format!("K{:04}", i % KEYS).as_bytes()))
        .count() as u64;
    let handled = Arc::new(AtomicU64::new(0));
    let first: Arc<Mutex<Option<(Instant, Duration)>>> = Arc::new(Mutex::new(None));
    let (h, f) = (handled.clone(), first.clone());
    let handler = move |event: Event| {
        let fail = event.key.as_deref().is_some_and(is_parked);
        if !fail {
            if let Ok(mut first) = f.lock() {
                first.get_or_insert_with(|| (Instant::now(), cpu_time()));
            }
            h.fetch_add(1, Ordering::Relaxed);
        }
        async move {
            if fail {
                Err(HandlerError::retryable("parked for the bench"))
            } else {
                Ok(())
            }
        }
    };
    let mut config = RuntimeConfig::new(&group, topic);
    config.quick_retries = 0;
    config.retry_delays = vec![Duration::from_secs(3600)];
    let registry = Registry::new();
    let metrics = ConsumerMetrics::register(&registry).map_err(|e| e.to_string())?;
    let shutdown = Shutdown::new();
    let handle = ConsumerRuntime::start(
        &KafkaSettings::new(cluster.bootstrap()),
        config,
        handler,
        &metrics,
        shutdown.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while handled.load(Ordering::Relaxed) < healthy_events {
        if Instant::now() > deadline {
            return Err(format!(
                "{name}: only {} events",
                handled.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (start, cpu) = first
        .lock()
        .map_err(|e| e.to_string())?
        .ok_or("no events")?;
    let row = Row {
        name,
        events: healthy_events,
        elapsed: start.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
    };
    shutdown.trigger();
    handle.wait().await.map_err(|e| e.to_string())?;
    Ok(row)
}
