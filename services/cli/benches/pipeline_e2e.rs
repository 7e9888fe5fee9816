//! End-to-end benchmark of the whole pipeline with the `slackline dev` wiring: Slack
//! messages per second from the edge to all three consumer groups done, latency
//! from the edge's 200 to the message's timeline row, and each service's peak RSS.
//!
//! Kafka is `BENCH_KAFKA`: `mock` (the default; librdkafka's mock cluster, 3
//! brokers, in a copy of this binary started with `--serve-kafka`), `embedded` (a
//! single-node Apache Kafka broker, as `slackline dev --kafka=embedded` runs it, in
//! a temporary folder; jars fetched by `scripts/fetch-kafka` when missing) or the
//! bootstrap servers of an existing cluster (topics under a fresh prefix, replication
//! `BENCH_REPLICATION`, default 1). Every slackline topic has `BENCH_PARTITIONS`
//! partitions (default 6). The output names the Kafka it ran on: the mock cluster
//! distorts both throughput and latency (see below), so compare runs on one kind.
//!
//! Every part runs in its own process, as in production: this binary starts copies
//! of itself with `--serve <service>` for the edge (file archive in a temporary
//! directory), the normalizer, thread-state, timeline-writer and the notifier, each
//! configured from its environment exactly as its own binary is. PostgreSQL is the
//! machine's server (a fresh database, `TEST_DATABASE_URL`'s server); the notifier
//! posts to a webhook receiver in this process. The parent is the load generator:
//! `BENCH_CONCURRENCY` senders (default 32) post `BENCH_MESSAGES` signed customer
//! messages (default 10000) over `BENCH_CHANNELS` channels (default 100); each
//! channel belongs to one sender, which posts its messages one after another, as
//! Slack does per channel. A warm-up of 500 messages runs first. `BENCH_RATE`
//! (messages/s) paces the senders, to measure latency below saturation; without it
//! they send as fast as the edge answers, to measure throughput.
//!
//! Printed: the Kafka; the send rate; the end-to-end rate (messages / time from the
//! first send until thread-state, timeline-writer and the notifier have all finished
//! every message, observed by polling every 50 ms); when each group finished; latency
//! p50/p90/p99/max from each message's 200 (client clock) to its timeline row's
//! `written_at` (PostgreSQL's clock on the same machine); peak RSS (`VmHWM`) and CPU
//! seconds of each process (the Kafka process too, unless it is an existing
//! cluster). Like `slackline dev`, the services get
//! `KAFKA_PROPERTIES=fetch.wait.max.ms=25` (unless set) on the mock only: the mock
//! broker holds an empty fetch for the whole wait, a real broker answers as soon as
//! data arrives and gets the product's defaults. The run fails if any request is not
//! answered 200 or any group does not end with exactly one effect per message.
//!
//! ```text
//! cargo bench -p slackline --bench pipeline_e2e
//! BENCH_KAFKA=embedded BENCH_MESSAGES=30000 cargo bench -p slackline --bench pipeline_e2e
//! ```
#![allow(missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use slackline::dev::KafkaChoice;
use slackline_kafka::embedded::EmbeddedBroker;
use slackline_kafka::topics::{TopicNames, NORMALIZER_GROUP};
use slackline_service::{init_telemetry, Env, LogFormat, Shutdown};
use slackline_store::sqlx::{self, PgPool};
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::webhook::WebhookReceiver;

const READY: &str = "READY ";
const SECRET: &str = "bench-signing-secret";
const HOME: &str = "T0HOME";
const CUST: &str = "T0CUST";
const SERVICES: [&str; 5] = [
    "edge",
    "normalizer",
    "thread-state",
    "timeline-writer",
    "notifier",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args
        .iter()
        .position(|a| a == "--serve-kafka" || a == "--serve")
    {
        Some(i) if args[i] == "--serve-kafka" => serve_kafka(),
        Some(i) => match args.get(i + 1) {
            Some(service) => serve(service),
            None => Err(anyhow::anyhow!("--serve needs a service name")),
        },
        // `cargo bench` passes `--bench`; `cargo test --benches` runs nothing.
        None if args.iter().any(|a| a == "--bench") => bench(),
        None => {
            println!("pipeline_e2e: run with `cargo bench -p slackline --bench pipeline_e2e`");
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pipeline_e2e: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------
// Child processes. Each prints `READY <address>` and runs until its stdin closes.

fn announce(addr: &str) -> anyhow::Result<Shutdown> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}{addr}").context("writing the address")?;
    out.flush().context("writing the address")?;
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            trigger.trigger();
        })
        .context("starting the stdin watcher")?;
    Ok(shutdown)
}

fn serve_kafka() -> anyhow::Result<()> {
    let mock: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(3).context("creating the mock cluster")?;
    for topic in TopicNames::default().specs(env_or("BENCH_PARTITIONS", 6)) {
        mock.create_topic(&topic.name, topic.partitions, 3)
            .with_context(|| format!("creating {}", topic.name))?;
    }
    let _stop = announce(&mock.bootstrap_servers())?;
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    drop(mock);
    Ok(())
}

fn serve(service: &str) -> anyhow::Result<()> {
    let Some(name) = SERVICES.iter().find(|s| **s == service) else {
        bail!("unknown service {service}");
    };
    init_telemetry(name, LogFormat::Text);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let env = Env::from_process();
        let shutdown = Shutdown::new();
        let stopper = shutdown.clone();
        let wait = |stop: Shutdown| {
            tokio::spawn(async move {
                stop.wait().await;
                stopper.trigger();
            })
        };
        match service {
            "edge" => {
                let config = slackline_edge::EdgeConfig::from_env(env)?;
                let edge = slackline_edge::Edge::start(config, shutdown.clone()).await?;
                wait(announce(&edge.addr.to_string())?);
                edge.wait().await?;
            }
            "normalizer" => {
                let config = slackline_normalizer::NormalizerConfig::from_env(env)?;
                let normalizer =
                    slackline_normalizer::Normalizer::start(config, shutdown.clone()).await?;
                wait(announce(&normalizer.admin_addr.to_string())?);
                normalizer.wait().await?;
            }
            "thread-state" => {
                let config = slackline_thread_state::ThreadStateConfig::from_env(env)?;
                let group = slackline_thread_state::start(config, shutdown.clone()).await?;
                wait(announce(&group.admin_addr.to_string())?);
                group.wait().await?;
            }
            "timeline-writer" => {
                let config = slackline_timeline_writer::TimelineWriterConfig::from_env(env)?;
                let group = slackline_timeline_writer::start(config, shutdown.clone()).await?;
                wait(announce(&group.admin_addr.to_string())?);
                group.wait().await?;
            }
            "notifier" => {
                let config = slackline_notifier::NotifierConfig::from_env(env)?;
                let group = slackline_notifier::start(config, shutdown.clone()).await?;
                wait(announce(&group.admin_addr.to_string())?);
                group.wait().await?;
            }
            other => bail!("unknown service {other}"),
        }
        Ok(())
    })
}

struct Server {
    name: String,
    addr: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Server {
    fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("reading {name}'s address"))?;
        let Some(addr) = line.trim().strip_prefix(READY) else {
            bail!("{name} did not start: {line:?}");
        };
        Ok(Server {
            name: name.to_owned(),
            addr: addr.to_owned(),
            stdin: child.stdin.take(),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for a child")?;
        ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }
}

/// `VmHWM` of a process, in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmHWM")?;
    Ok(kib / 1024.0)
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .context("utime/stime")?;
    Ok(ticks / 100.0)
}

// ---------------------------------------------------------------------------------
// The load generator.

fn body(channel: &str, ts: &str, event_id: &str, n: usize) -> Vec<u8> {
    let event_time: i64 = ts
        .split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    serde_json::to_vec(&serde_json::json!({
        "token": "unused",
        "team_id": CUST,
        "context_team_id": HOME,
        "api_app_id": "A0SLACKLINE",
        "event": {
            "type": "message", "user": "U0CUST", "team": CUST,
            "text": format!("Customer question {n}: our exports fail with error 500 since the upgrade, see job {n}"),
            "ts": ts, "channel": channel, "channel_type": "channel", "event_ts": ts,
        },
        "type": "event_callback",
        "event_id": event_id,
        "event_time": event_time,
        "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}],
        "is_ext_shared_channel": true,
    }))
    .unwrap_or_default()
}

/// Messages of one run: (channel, ts, body), grouped per sender.
fn workload(
    run: &str,
    messages: usize,
    channels: usize,
    senders: usize,
) -> Vec<Vec<(String, String, Vec<u8>)>> {
    let mut per_sender = vec![Vec::new(); senders];
    let base = 1_764_000_000 + run.len() as u64 * 100_000;
    for n in 0..messages {
        let channel = format!("C{run}{:04}", n % channels);
        let ts = format!("{}.{:06}", base + (n / channels) as u64, n % 1_000_000);
        let event_id = format!("Ev{run}{n:07}");
        per_sender[(n % channels) % senders].push((
            channel.clone(),
            ts.clone(),
            body(&channel, &ts, &event_id, n),
        ));
    }
    per_sender
}

/// Posts every message; returns (channel, ts) → when its 200 arrived (since the
/// epoch, seconds) and the wall time of the first send.
async fn send(
    url: &str,
    load: Vec<Vec<(String, String, Vec<u8>)>>,
    rate: Option<f64>,
) -> anyhow::Result<(HashMap<(String, String), f64>, Instant, f64)> {
    let senders = load.len().max(1) as f64;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .context("http client")?;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for messages in load {
        let http = http.clone();
        let url = url.to_owned();
        let acked = acked.clone();
        // With a rate, each sender posts at rate / senders per second.
        let mut pace = rate.map(|rate| {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(senders / rate));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        tasks.push(tokio::spawn(async move {
            for (channel, ts, body) in messages {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let status = slackline::send::send_body(&http, &url, SECRET, body, None).await?;
                if status != 200 {
                    anyhow::bail!("edge answered {status}");
                }
                let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
                acked
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert((channel, ts), at);
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await.context("sender task")??;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let acked = Arc::try_unwrap(acked)
        .map_err(|_| anyhow::anyhow!("senders still hold the map"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok((acked, started, send_secs))
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Polls until each group has one effect per message; returns the seconds since
/// `started` at which each finished.
async fn wait_done(
    pool: &PgPool,
    hook: &WebhookReceiver,
    want: i64,
    started: Instant,
) -> anyhow::Result<[f64; 3]> {
    let mut done: [Option<f64>; 3] = [None; 3];
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let counts = [
            count(pool, "SELECT count(*) FROM thread_state.facts").await?,
            count(pool, "SELECT count(*) FROM timeline.entries").await?,
            hook.bodies().len() as i64,
        ];
        for (slot, n) in done.iter_mut().zip(counts) {
            ensure!(n <= want, "more effects than messages: {counts:?} > {want}");
            if slot.is_none() && n == want {
                *slot = Some(started.elapsed().as_secs_f64());
            }
        }
        if let [Some(a), Some(b), Some(c)] = done {
            return Ok([a, b, c]);
        }
        ensure!(
            Instant::now() < deadline,
            "not done after 600 s: {counts:?} of {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The Kafka a run uses, with the process to measure when the bench started one.
enum BenchKafka {
    Mock(Server),
    Embedded(EmbeddedBroker, tempfile::TempDir),
    External,
}

impl BenchKafka {
    fn start(
        choice: &KafkaChoice,
        names: &TopicNames,
        partitions: i32,
    ) -> anyhow::Result<(BenchKafka, String, String)> {
        match choice {
            KafkaChoice::Mock => {
                let server = Server::spawn("mock-kafka", &["--serve-kafka"], &[])?;
                let bootstrap = server.addr.clone();
                Ok((
                    BenchKafka::Mock(server),
                    bootstrap,
                    "librdkafka mock cluster (3 brokers, own process)".to_owned(),
                ))
            }
            KafkaChoice::Embedded => {
                let dir = tempfile::tempdir().context("broker dir")?;
                let broker = slackline::dev::start_embedded_broker(dir.path())?;
                let bootstrap = broker.bootstrap_servers().to_owned();
                create_topics(&bootstrap, names, partitions, 1)?;
                Ok((
                    BenchKafka::Embedded(broker, dir),
                    bootstrap,
                    format!(
                        "Apache Kafka {} (embedded single-node KRaft broker, own JVM)",
                        slackline_kafka::embedded::kafka_version()
                    ),
                ))
            }
            KafkaChoice::Bootstrap(bootstrap) => {
                create_topics(bootstrap, names, partitions, env_or("BENCH_REPLICATION", 1))?;
                Ok((
                    BenchKafka::External,
                    bootstrap.clone(),
                    format!(
                        "Apache Kafka at {bootstrap} (existing cluster, topics under {})",
                        names.prefix()
                    ),
                ))
            }
        }
    }

    /// The process to measure.
    fn process(&self) -> Option<(&str, u32)> {
        match self {
            BenchKafka::Mock(server) => Some((server.name.as_str(), server.pid())),
            BenchKafka::Embedded(broker, _) => broker.pid().map(|pid| ("kafka-broker", pid)),
            BenchKafka::External => None,
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        match self {
            BenchKafka::Mock(server) => server.stop(),
            BenchKafka::Embedded(mut broker, _dir) => Ok(broker.stop()?),
            BenchKafka::External => Ok(()),
        }
    }
}

/// Creates the run's topics on a real cluster (the path of `slackline topics create`).
fn create_topics(
    bootstrap: &str,
    names: &TopicNames,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<()> {
    let settings = slackline_kafka::KafkaSettings::new(bootstrap);
    let specs = names.specs(partitions);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?
        .block_on(slackline_kafka::topics::create(
            &settings,
            &specs,
            replication,
        ))
        .context("creating the topics")?;
    Ok(())
}

/// The environment of `service`: the common one plus its topic and group names.
fn service_env(
    common: &[(String, String)],
    names: &TopicNames,
    service: &str,
) -> Vec<(String, String)> {
    let mut env = common.to_vec();
    env.extend(
        [
            ("RAW_TOPIC", names.raw_events()),
            ("MESSAGES_TOPIC", names.messages()),
            ("RAW_DLQ_TOPIC", names.raw_dlq()),
            ("NORMALIZER_GROUP_ID", names.group(NORMALIZER_GROUP)),
            ("SOURCE_TOPIC", names.messages()),
            ("THREAD_EVENTS_TOPIC", names.thread_events()),
            ("GROUP_ID", names.group(service)),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    );
    env
}

fn bench() -> anyhow::Result<()> {
    let choice: KafkaChoice = std::env::var("BENCH_KAFKA")
        .unwrap_or_else(|_| "mock".to_owned())
        .parse()
        .map_err(|e: String| anyhow::anyhow!("BENCH_KAFKA: {e}"))?;
    let partitions: i32 = env_or("BENCH_PARTITIONS", 6);
    // The mock cluster is the bench's own; on a real broker, names of this run only.
    let names = match choice {
        KafkaChoice::Mock => TopicNames::default(),
        _ => TopicNames::with_prefix(format!("{}.", slackline_testkit::unique_name("bench"))),
    };
    let (kafka, bootstrap, kafka_description) = BenchKafka::start(&choice, &names, partitions)?;
    let result = run(
        &choice,
        &names,
        &kafka,
        &bootstrap,
        &kafka_description,
        partitions,
    );
    let stopped = kafka.stop();
    result?;
    stopped
}

fn run(
    choice: &KafkaChoice,
    names: &TopicNames,
    kafka: &BenchKafka,
    bootstrap: &str,
    kafka_description: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let messages: usize = env_or("BENCH_MESSAGES", 10_000);
    let channels: usize = env_or("BENCH_CHANNELS", 100);
    let senders: usize = env_or("BENCH_CONCURRENCY", 32);
    let rate: Option<f64> = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok());
    let warmup = 500;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    runtime.block_on(async {
        let db = TestDatabase::create().await;
        let hook = WebhookReceiver::start().await;
        let archive = tempfile::tempdir().context("archive dir")?;
        // As `slackline dev` does: short fetch waits on the mock cluster only (see
        // its docs); a real broker gets the product's defaults.
        let kafka_properties = match (std::env::var("KAFKA_PROPERTIES"), choice) {
            (Ok(user), _) => Some(user),
            (Err(_), KafkaChoice::Mock) => Some(slackline::dev::MOCK_KAFKA_PROPERTIES.to_owned()),
            (Err(_), _) => None,
        };
        let env: Vec<(String, String)> = [
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap),
            ("DATABASE_URL", db.url.as_str()),
            ("SLACK_SIGNING_SECRETS", SECRET),
            ("EDGE_ADDR", "127.0.0.1:0"),
            ("ADMIN_ADDR", "127.0.0.1:0"),
            ("NOTIFY_SLACK_WEBHOOK_URL", hook.url.as_str()),
            ("LOG_FORMAT", "text"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain([(
            "ARCHIVE_URL".to_owned(),
            format!("file://{}", archive.path().display()),
        )])
        .chain(kafka_properties.map(|p| ("KAFKA_PROPERTIES".to_owned(), p)))
        .collect();
        let mut servers = Vec::new();
        for service in SERVICES {
            servers.push(Server::spawn(service, &["--serve", service], &service_env(&env, names, service))?);
        }
        let url = format!("http://{}/slack/events", servers[0].addr);
        let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&db.url)
            .await?;
        let mut processes: Vec<(&str, u32)> = servers.iter().map(|s| (s.name.as_str(), s.pid())).collect();
        processes.extend(kafka.process());

        // Warm-up: connections, caches, the groups' first assignments.
        let (_, started, _) = send(&url, workload("W", warmup, channels.min(warmup), senders), None).await?;
        wait_done(&pool, &hook, warmup as i64, started).await?;
        let cpu_before: Vec<f64> = processes
            .iter()
            .map(|(_, pid)| cpu_secs(*pid))
            .collect::<Result<_, _>>()?;
        let (acked, started, send_secs) =
            send(&url, workload("M", messages, channels, senders), rate).await?;
        let done = wait_done(&pool, &hook, (warmup + messages) as i64, started).await?;
        let total = done.iter().cloned().fold(0.0, f64::max);

        let rows: Vec<(String, String, f64)> = sqlx::query_as(
            "SELECT channel_id, ts, extract(epoch FROM written_at)::float8 FROM timeline.entries \
             WHERE channel_id LIKE 'CM%'",
        )
        .fetch_all(&pool)
        .await?;
        let mut latencies: Vec<f64> = rows
            .into_iter()
            .filter_map(|(channel, ts, written)| {
                acked.get(&(channel, ts)).map(|at| (written - at) * 1000.0)
            })
            .collect();
        ensure!(latencies.len() == messages, "{} latencies for {messages} messages", latencies.len());
        latencies.sort_by(f64::total_cmp);

        let offered = rate.map_or_else(|| "as fast as the edge answers".to_owned(), |r| format!("offered at {r} msg/s"));
        println!("pipeline_e2e: {messages} customer messages over {channels} channels, {senders} senders, {offered}, after {warmup} warm-up");
        println!("  kafka (BENCH_KAFKA={choice}): {kafka_description}, {partitions} partitions per topic");
        println!("  edge accepted (200):        {:>8.0} msg/s ({send_secs:.2} s)", messages as f64 / send_secs);
        println!("  end to end (all 3 groups):  {:>8.0} msg/s ({total:.2} s)", messages as f64 / total);
        println!("  done at: thread-state {:.2} s, timeline-writer {:.2} s, notifier {:.2} s", done[0], done[1], done[2]);
        println!(
            "  latency 200 -> timeline row: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
        println!("  {:<16} {:>12} {:>14}", "process", "peak RSS MiB", "CPU s (run)");
        for (i, (name, pid)) in processes.iter().enumerate() {
            println!(
                "  {:<16} {:>12.1} {:>14.2}",
                name,
                peak_rss_mib(*pid)?,
                cpu_secs(*pid)? - cpu_before[i]
            );
        }
        pool.close().await;
        for s in servers {
            s.stop()?;
        }
        db.drop_database().await;
        Ok(())
    })
}
