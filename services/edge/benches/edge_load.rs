//! Load benchmark of the edge: how much a durable accept (archive + Kafka before the
//! 200) costs compared with only verifying Slack's signature.
//!
//! Two servers are measured in the same run and in the same way:
//!
//! * **verify-only**: an axum handler that checks the Slack signature
//!   (`SigningSecrets::verify`), parses the body into a `serde_json::Value` and
//!   answers 200. It is the floor: what any Slack endpoint must do.
//! * **edge (file+mock)**: the real edge (`Edge::start`) with a `file://` archive in a
//!   temporary directory (durable: the file archive group-commits with `syncfs`) and
//!   an rdkafka `MockCluster` of 3 brokers, the topic having 6 partitions with
//!   replication 3; deadline 2500 ms.
//!
//! Like in production the servers run in their own processes: this binary starts
//! copies of itself with `--serve-verify`, `--serve-edge` or `--serve-kafka` (the mock
//! cluster, so that the brokers' memory and CPU are not charged to the edge), and the
//! parent process is only the load generator. 64 client tasks each keep one
//! keep-alive HTTP/1.1 connection over loopback (reqwest) and post distinct, ~1.5 KB
//! `event_callback` message events over ~20 channels, all signed before the clock
//! starts. After a 2 s warm-up each server is measured for `BENCH_SECS` seconds
//! (default 10): requests per second, client-observed latency (p50, p99, max), non-200
//! answers, the server's peak RSS (`VmHWM` of its own process) and the CPU each
//! process used. The edge run then checks that the topic holds exactly one record and
//! the archive exactly one object per 200, so that the edge cannot win by dropping
//! work; the binary exits non-zero if not, or if any request failed.
//!
//! Run with:
//!
//! ```text
//! cargo bench -p slackline-edge --bench edge_load
//! BENCH_SECS=30 cargo bench -p slackline-edge --bench edge_load
//! ```
//!
//! `BENCH_EVENTS` sets how many distinct events are signed per server (default 32000
//! per second of run, about 2.3 KB of client memory each; the pool is reused
//! round-robin, with a note, if a run needs more). The archive goes to a temporary
//! directory under `TMPDIR`, so that variable picks the disk.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;
use slackline_archive::{Archive, S3Settings, RAW_PREFIX};
use slackline_edge::config::DEFAULT_MAX_BODY_BYTES;
use slackline_edge::{Edge, EdgeConfig};
use slackline_kafka::KafkaSettings;
use slackline_service::{init_telemetry, LogFormat, Shutdown};
use slackline_slack::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use slackline_slack::{sign, SigningSecrets};

const SECRET: &str = "edge-load-signing-secret";
const CONCURRENCY: usize = 64;
const WARM_UP: Duration = Duration::from_secs(2);
const DEFAULT_SECS: u64 = 10;
/// Events signed per second of run (warm-up included) unless `BENCH_EVENTS` says:
/// above what verify-only reaches on 2 cores, so that ids do not repeat.
const EVENTS_PER_SEC: u64 = 32_000;
const TARGET_BODY_BYTES: usize = 1500;
const CHANNELS: usize = 20;
const TOPIC: &str = "slack.events.raw";
const PARTITIONS: i32 = 6;
const DEADLINE: Duration = Duration::from_millis(2500);
/// `/proc/<pid>/stat` counts CPU time in USER_HZ, which is 100 on Linux.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
/// What a child prints on stdout, followed by its address (and the edge its admin
/// address), once it serves.
const READY: &str = "READY ";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Dispatches on the role. cargo passes `--bench` (and maybe a filter): anything
/// that is not a role flag is ignored.
fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1..].to_vec())
    };
    if let Some(rest) = after("--serve-edge") {
        let [bootstrap, archive_dir, ..] = rest.as_slice() else {
            bail!("usage: --serve-edge BOOTSTRAP ARCHIVE_DIR|s3://bucket/prefix");
        };
        serve_edge(bootstrap, archive_dir)?;
    } else if after("--serve-verify").is_some() {
        serve_verify()?;
    } else if after("--serve-kafka").is_some() {
        serve_kafka()?;
    } else {
        return bench();
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------
// The servers (child processes). Each prints `READY <addr>` and serves until its
// stdin closes, which also happens when the parent dies.

/// Announces the address and returns a signal that fires when stdin closes.
fn announce(addr: &str) -> anyhow::Result<Shutdown> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}{addr}").context("writing the address")?;
    out.flush().context("writing the address")?;
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            // Any outcome (EOF or error) means the parent is done with us.
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            trigger.trigger();
        })
        .context("starting the stdin watcher")?;
    Ok(shutdown)
}

fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // What `#[tokio::main]` in the edge's main.rs builds.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")
}

fn serve_edge(bootstrap: &str, archive_dir: &str) -> anyhow::Result<()> {
    init_telemetry("slackline-edge", LogFormat::Text);
    let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut kafka = KafkaSettings::new(bootstrap);
    // BENCH_KAFKA_PROPERTIES (`k=v;k=v`, like KAFKA_PROPERTIES) tunes the producer.
    if let Ok(properties) = std::env::var("BENCH_KAFKA_PROPERTIES") {
        kafka.properties = slackline_kafka::parse_properties(&properties)
            .map_err(|e| anyhow::anyhow!("BENCH_KAFKA_PROPERTIES: {e}"))?;
    }
    // An s3:// archive takes its AWS_* and ARCHIVE_* settings from the environment.
    let mut env = slackline_service::Env::from_process();
    let (archive_url, s3) = if archive_dir.starts_with("s3://") {
        (archive_dir.to_owned(), S3Settings::from_env(&mut env))
    } else {
        (format!("file://{archive_dir}"), S3Settings::default())
    };
    let archive = slackline_archive::ArchiveOptions::from_env(&mut env);
    env.finish().context("the archive settings")?;
    let config = EdgeConfig {
        kafka,
        secrets: SigningSecrets::new([SECRET])?,
        archive_url,
        s3,
        archive,
        edge_addr: localhost,
        admin_addr: localhost,
        raw_topic: TOPIC.to_owned(),
        deadline: DEADLINE,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        shutdown_grace: Duration::from_secs(10),
        limits: slackline_edge::Limits::default(),
        log_format: LogFormat::Text,
    };
    server_runtime()?.block_on(async {
        let shutdown = Shutdown::new();
        let edge = Edge::start(config, shutdown.clone())
            .await
            .context("starting the edge")?;
        let stop = announce(&format!("{} {}", edge.addr, edge.admin_addr))?;
        tokio::spawn(async move {
            stop.wait().await;
            shutdown.trigger();
        });
        // Returns once the producer is flushed.
        edge.wait().await.context("running the edge")
    })
}

async fn verify_only(
    State(secrets): State<Arc<SigningSecrets>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).map(|v| v.as_bytes());
    let now = chrono::Utc::now().timestamp();
    if secrets
        .verify(
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
            &body,
            now,
        )
        .is_err()
    {
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(value) => {
            std::hint::black_box(value);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

fn serve_verify() -> anyhow::Result<()> {
    let secrets = Arc::new(SigningSecrets::new([SECRET])?);
    server_runtime()?.block_on(async {
        let app = Router::new()
            .route("/slack/events", post(verify_only))
            .layer(DefaultBodyLimit::max(DEFAULT_MAX_BODY_BYTES))
            .with_state(secrets);
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("binding")?;
        let addr = listener.local_addr().context("reading the address")?;
        let stop = announce(&addr.to_string())?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
            .context("serving")
    })
}

fn serve_kafka() -> anyhow::Result<()> {
    let mock: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(3).context("creating the mock cluster")?;
    mock.create_topic(TOPIC, PARTITIONS, 3)
        .context("creating the topic")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}{}", mock.bootstrap_servers()).context("writing the address")?;
    out.flush().context("writing the address")?;
    drop(out);
    // Serve (the brokers run on librdkafka's threads) until the parent closes stdin.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    drop(mock);
    Ok(())
}

/// A child process playing one role.
struct Server {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    /// What it printed after `READY `: its address, then any other.
    addr: String,
    admin_addr: Option<String>,
}

impl Server {
    fn spawn(name: &'static str, args: &[&str]) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let mut command = Command::new(exe);
        command.args(args);
        Server::start(name, command)
    }

    /// Starts `command`, which must print `READY <addr> [<admin addr>]` once it
    /// serves and exit when its stdin closes.
    fn start(name: &'static str, mut command: Command) -> anyhow::Result<Server> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            // Errors and warnings (a 503's reason) still show.
            command.env("RUST_LOG", "warn");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the {name} process"))?;
        let stdin = child.stdin.take();
        let mut server = Server {
            name,
            child,
            stdin,
            addr: String::new(),
            admin_addr: None,
        };
        let stdout = server
            .child
            .stdout
            .take()
            .context("the child has no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("reading the {name} process's address"))?;
        let Some(addr) = line.trim_end().strip_prefix(READY) else {
            bail!("the {name} process did not start (printed {line:?})");
        };
        let mut addrs = addr.split_whitespace().map(str::to_owned);
        server.addr = addrs.next().unwrap_or_default();
        server.admin_addr = addrs.next();
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin and waits for it to exit cleanly.
    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for a child")? {
                ensure!(
                    status.success(),
                    "the {} process exited with {status}",
                    self.name
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the {} process did not stop within 30 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // After a clean stop the child is reaped already; otherwise (an error) make
        // sure it does not outlive us.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------
// /proc readings.

/// `VmHWM` (peak) and `VmRSS` (current) of a process, in MiB.
fn rss_mib(pid: &str) -> anyhow::Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing from {path}"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unreadable {line:?} in {path}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// User + system CPU seconds a process has used so far.
fn cpu_secs(pid: &str) -> anyhow::Result<f64> {
    Ok(stat_cpu(&format!("/proc/{pid}/stat"))?.1)
}

/// CPU seconds per thread of a process, summed by thread name without digits
/// (`tokio-runtime-w`, `archive-writer`, `rdk:broker`, …).
fn thread_cpu_secs(pid: u32) -> anyhow::Result<BTreeMap<String, f64>> {
    let dir = format!("/proc/{pid}/task");
    let mut by_name = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let path = entry
            .with_context(|| format!("listing {dir}"))?
            .path()
            .join("stat");
        // A thread may end between listing and reading.
        let Ok((name, secs)) = stat_cpu(&path.to_string_lossy()) else {
            continue;
        };
        let name: String = name.chars().filter(|c| !c.is_ascii_digit()).collect();
        *by_name.entry(name).or_default() += secs;
    }
    Ok(by_name)
}

/// The name and the user + system CPU seconds in a `/proc/…/stat` file.
fn stat_cpu(path: &str) -> anyhow::Result<(String, f64)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; the fields after it are fixed.
    let (before, after_name) = stat
        .rsplit_once(')')
        .with_context(|| format!("unreadable {path}"))?;
    let name = before.split_once('(').map_or("", |(_, n)| n).to_owned();
    let mut fields = after_name.split_whitespace().skip(11);
    let mut tick = || -> anyhow::Result<f64> {
        fields
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("unreadable {path}"))
    };
    let (user, system) = (tick()?, tick()?);
    Ok((name, (user + system) / CLOCK_TICKS_PER_SEC))
}

// ---------------------------------------------------------------------------------
// The events.

/// A signed request, ready to send.
struct Event {
    body: Bytes,
    timestamp: HeaderValue,
    signature: HeaderValue,
}

const WORDS: [&str; 24] = [
    "deploy",
    "the",
    "billing",
    "service",
    "after",
    "lunch",
    "please",
    "review",
    "my",
    "pull",
    "request",
    "for",
    "incident",
    "4711",
    "customers",
    "report",
    "slow",
    "pages",
    "since",
    "yesterday",
    "can",
    "someone",
    "check",
    "dashboards",
];

/// A message event as Slack sends it, with `text` both plain and in its blocks.
fn message_event(run: &str, i: usize, now: i64, text: &str) -> serde_json::Value {
    let channel = format!("C0{:08}", (i * 7) % CHANNELS);
    let ts = format!("{now}.{:06}", i % 1_000_000);
    serde_json::json!({
        "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
        "team_id": "T0CUSTOMER",
        "context_team_id": "T0CUSTOMER",
        "context_enterprise_id": null,
        "api_app_id": "A0APP00001",
        "event": {
            "type": "message",
            "user": format!("U0{:08}", i % 997),
            "client_msg_id": format!("6f1c2a8e-{run}-4c1b-9d2e-{i:012}"),
            "text": text,
            "team": "T0CUSTOMER",
            "blocks": [{
                "type": "rich_text",
                "block_id": format!("b{:05}", i % 100_000),
                "elements": [{
                    "type": "rich_text_section",
                    "elements": [{"type": "text", "text": text}]
                }]
            }],
            "channel": channel,
            "event_ts": ts,
            "ts": ts,
            "channel_type": "channel"
        },
        "type": "event_callback",
        "event_id": format!("Ev{run}{i:010}"),
        "event_time": now,
        "authorizations": [{
            "enterprise_id": null,
            "team_id": "T0HOME",
            "user_id": "U0BOT",
            "is_bot": true,
            "is_enterprise_install": false
        }],
        "is_ext_shared_channel": false,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJUMENVU1RPTUVSIiwiYWlkIjoiQTBBUFAwMDAwMSIsImNpZCI6IkMwMDAwMDAwMDEifQ"
    })
}

/// `count` distinct events (event ids `Ev<run>…`), signed now, all of one size.
fn make_events(run: &str, count: usize) -> anyhow::Result<Vec<Event>> {
    let now = chrono::Utc::now().timestamp();
    let timestamp = HeaderValue::from_str(&now.to_string())?;
    // The text appears twice; size it so that the whole body is about the target.
    let bare = serde_json::to_vec(&message_event(run, 0, now, ""))?.len();
    let text_len = TARGET_BODY_BYTES.saturating_sub(bare) / 2;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut text = String::with_capacity(text_len + 16);
    (0..count)
        .map(|i| {
            text.clear();
            while text.len() < text_len {
                // xorshift: cheap, varied word order.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(WORDS[(seed % WORDS.len() as u64) as usize]);
                text.push(' ');
            }
            text.truncate(text_len);
            let body = serde_json::to_vec(&message_event(run, i, now, &text))?;
            let signature = HeaderValue::from_str(&sign(SECRET, now, &body))?;
            Ok(Event {
                body: Bytes::from(body),
                timestamp: timestamp.clone(),
                signature,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The load.

/// What one server did under load.
struct Outcome {
    /// Requests completed in the measured window.
    measured: usize,
    window: Duration,
    /// Latencies of the measured requests, sorted.
    latencies: Vec<Duration>,
    /// 200s over the whole run, warm-up included.
    ok_total: usize,
    /// Requests sent over the whole run.
    sent_total: usize,
    /// Non-200 answers and transport errors over the whole run, by kind.
    errors: BTreeMap<String, usize>,
    /// CPU cores used during the measured window: the load generator, then `pids`.
    cores: Vec<f64>,
    /// Peak and current RSS of the server (MiB) after the run.
    rss: (f64, f64),
    /// CPU cores used by the server's threads, by name, busiest first.
    server_threads: Vec<(String, f64)>,
}

impl Outcome {
    fn errors(&self) -> usize {
        self.errors.values().sum()
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        // Nearest rank.
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).max(1);
        self.latencies[rank - 1].as_secs_f64() * 1e3
    }

    fn rate(&self) -> f64 {
        self.measured as f64 / self.window.as_secs_f64()
    }
}

/// What `load` saw.
struct Run {
    /// Events taken from the pool.
    used: usize,
    /// All client tasks together; the measured latencies sorted.
    tally: Tally,
    /// CPU cores used during the measured window: the load generator, then `pids`.
    cores: Vec<f64>,
    /// CPU cores used by the threads of the server (`pids[0]`), busiest first.
    server_threads: Vec<(String, f64)>,
}

/// One client task's tally.
#[derive(Default)]
struct Tally {
    measured_latencies: Vec<Duration>,
    ok: usize,
    sent: usize,
    errors: BTreeMap<String, usize>,
}

async fn client_loop(
    client: reqwest::Client,
    url: reqwest::Url,
    events: Arc<Vec<Event>>,
    next: Arc<AtomicUsize>,
    measure_from: Instant,
    until: Instant,
    pace: Option<(Duration, Duration)>,
) -> Tally {
    let content_type = HeaderValue::from_static("application/json");
    let mut tally = Tally::default();
    // Paced (open loop): this client sends every `interval`, from `offset` on, so
    // that the clients together send at a fixed rate.
    let mut next_at = pace.map(|(offset, _)| Instant::now() + offset);
    loop {
        if let (Some(at), Some((_, interval))) = (next_at.as_mut(), pace) {
            tokio::time::sleep_until((*at).into()).await;
            *at += interval;
        }
        let started = Instant::now();
        if started >= until {
            break;
        }
        let event = &events[next.fetch_add(1, Ordering::Relaxed) % events.len()];
        let sent = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type.clone())
            .header(TIMESTAMP_HEADER, event.timestamp.clone())
            .header(SIGNATURE_HEADER, event.signature.clone())
            .body(event.body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(response) => {
                let status = response.status();
                // Read the (empty) body so that the connection goes back to the pool.
                match response.bytes().await {
                    Ok(_) if status == StatusCode::OK => Ok(()),
                    Ok(body) => Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(80)])
                    )),
                    Err(e) => Err(format!("reading the answer: {}", e.without_url())),
                }
            }
            Err(e) => Err(format!("transport: {}", e.without_url())),
        };
        let finished = Instant::now();
        tally.sent += 1;
        match outcome {
            Ok(()) => tally.ok += 1,
            Err(kind) => *tally.errors.entry(kind).or_default() += 1,
        }
        if finished >= measure_from && finished < until {
            tally.measured_latencies.push(finished - started);
        }
    }
    tally
}

/// Drives `CONCURRENCY` keep-alive clients at `addr` for the warm-up plus `measure`,
/// and reads the CPU time of this process and `pids` over the measured window.
async fn load(
    addr: &str,
    events: Vec<Event>,
    measure: Duration,
    pids: &[u32],
    rate: Option<f64>,
) -> anyhow::Result<Run> {
    let url = reqwest::Url::parse(&format!("http://{addr}/slack/events"))?;
    let mut default_headers = reqwest::header::HeaderMap::new();
    default_headers.insert(
        reqwest::header::USER_AGENT,
        HeaderValue::from_static("Slackbot 1.0 (+https://api.slack.com/robots)"),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .default_headers(default_headers)
        .build()
        .context("building the HTTP client")?;
    let events = Arc::new(events);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let until = measure_from + measure;
    let pace = |i: usize| {
        rate.map(|rate| {
            let interval = Duration::from_secs_f64(CONCURRENCY as f64 / rate);
            (interval.mul_f64(i as f64 / CONCURRENCY as f64), interval)
        })
    };
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|i| {
            tokio::spawn(client_loop(
                client.clone(),
                url.clone(),
                events.clone(),
                next.clone(),
                measure_from,
                until,
                pace(i),
            ))
        })
        .collect();

    let mut who: Vec<String> = vec!["self".into()];
    who.extend(pids.iter().map(u32::to_string));
    let cpu_all = || {
        who.iter()
            .map(|p| cpu_secs(p))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let server_threads = || {
        pids.first()
            .map_or(Ok(BTreeMap::new()), |p| thread_cpu_secs(*p))
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = cpu_all()?;
    let threads_before = server_threads()?;
    let wall_before = Instant::now();
    tokio::time::sleep_until(until.into()).await;
    let cpu_after = cpu_all()?;
    let threads_after = server_threads()?;
    let wall = wall_before.elapsed().as_secs_f64();
    let cores = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| (a - b) / wall)
        .collect();
    let mut server_threads: Vec<(String, f64)> = threads_after
        .into_iter()
        .map(|(name, after)| {
            let before = threads_before.get(&name).copied().unwrap_or(0.0);
            (name, (after - before) / wall)
        })
        .collect();
    server_threads.sort_by(|a, b| b.1.total_cmp(&a.1));

    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.context("a client task panicked")?;
        total.measured_latencies.extend(tally.measured_latencies);
        total.ok += tally.ok;
        total.sent += tally.sent;
        for (kind, n) in tally.errors {
            *total.errors.entry(kind).or_default() += n;
        }
    }
    total.measured_latencies.sort_unstable();
    Ok(Run {
        used: next.load(Ordering::Relaxed),
        tally: total,
        cores,
        server_threads,
    })
}

/// Runs the load against `server` and reads its RSS before it stops.
fn measure(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    run: &str,
    secs: u64,
    pool: usize,
    other_pids: &[u32],
    rate: Option<f64>,
) -> anyhow::Result<(Outcome, usize)> {
    eprintln!("edge_load: signing {pool} events for {}", server.name);
    let events = make_events(run, pool)?;
    let body_bytes = events.first().map_or(0, |e| e.body.len());
    eprintln!(
        "edge_load: {}: {}s warm-up, {secs}s measured",
        server.name,
        WARM_UP.as_secs()
    );
    let mut pids = vec![server.pid()];
    pids.extend_from_slice(other_pids);
    let window = Duration::from_secs(secs);
    let Run {
        used,
        tally,
        cores,
        server_threads,
    } = rt.block_on(load(&server.addr, events, window, &pids, rate))?;
    if used > pool {
        eprintln!(
            "edge_load: {}: {used} requests reused the {pool} events round-robin (raise BENCH_EVENTS for all-distinct ids)",
            server.name
        );
    }
    let rss = rss_mib(&server.pid().to_string())?;
    Ok((
        Outcome {
            measured: tally.measured_latencies.len(),
            window,
            latencies: tally.measured_latencies,
            ok_total: tally.ok,
            sent_total: tally.sent,
            errors: tally.errors,
            cores,
            rss,
            server_threads,
        },
        body_bytes,
    ))
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={raw:?} is not a positive number")),
        Err(_) => Ok(default),
    }
}

/// Counts the records on the topic from the partitions' watermarks.
fn topic_records(bootstrap: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "edge-load-watermarks")
        .create()
        .context("creating the watermark reader")?;
    let mut records = 0;
    for partition in 0..PARTITIONS {
        // The high watermark: every record ever appended (the mock cluster drops old
        // log segments of a busy partition, moving the low watermark).
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the watermarks of partition {partition}"))?;
        records += high;
    }
    Ok(records)
}

/// The edge's own view from its `/metrics`: mean time per archive write, Kafka
/// delivery and request over the whole run (warm-up included).
fn edge_internals(rt: &tokio::runtime::Runtime, admin_addr: &str) -> anyhow::Result<String> {
    let text = rt.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build()?;
        client
            .get(format!("http://{admin_addr}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    })?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let mean_ms = |histogram: &str| {
        let prefix = format!("slackline_edge_{histogram}_duration_seconds");
        1e3 * value(&format!("{prefix}_sum ")) / value(&format!("{prefix}_count "))
    };
    Ok(format!(
        "edge internals (means over the run): archive write {:.2} ms, Kafka delivery {:.2} ms, whole request {:.2} ms",
        mean_ms("archive_write"),
        mean_ms("kafka_delivery"),
        mean_ms("request")
    ))
}

/// (requests archived, objects holding them): every line of every segment must be
/// a request.
fn archived_requests(rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<(usize, usize)> {
    rt.block_on(async {
        let archive = Archive::open(&format!("file://{}", dir.display()), &S3Settings::default())
            .await
            .context("opening the archive")?;
        let keys = archive
            .list(RAW_PREFIX)
            .await
            .context("listing the archive")?;
        let mut requests = 0;
        for key in &keys {
            for entry in archive
                .read_object(key)
                .await
                .context("reading a segment")?
            {
                entry.record.with_context(|| format!("{}", entry.locator))?;
                requests += 1;
            }
        }
        Ok((requests, keys.len()))
    })
}

fn bench() -> anyhow::Result<ExitCode> {
    let secs: u64 = env_number("BENCH_SECS", DEFAULT_SECS)?;
    let default_pool = usize::try_from((secs + WARM_UP.as_secs()) * EVENTS_PER_SEC)?;
    let pool: usize = env_number("BENCH_EVENTS", default_pool)?;
    ensure!(
        secs > 0 && pool > 0,
        "BENCH_SECS and BENCH_EVENTS must be positive"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the client runtime")?;
    let exe_pid = std::process::id().to_string();

    // 1. verify-only.
    let verify = Server::spawn("verify-only", &["--serve-verify"])?;
    let (baseline, body_bytes) = measure(&rt, &verify, "V", secs, pool, &[], None)?;
    verify.stop()?;

    // 2. the edge, with the mock cluster in a process of its own.
    let kafka = Server::spawn("mock-kafka", &["--serve-kafka"])?;
    let archive_dir = tempfile::tempdir().context("creating the archive directory")?;
    let dir_arg = archive_dir
        .path()
        .to_str()
        .context("the temporary directory's path is not UTF-8")?;
    let edge = Server::spawn("edge", &["--serve-edge", &kafka.addr, dir_arg])?;
    let (edged, _) = measure(&rt, &edge, "E", secs, pool, &[kafka.pid()], None)?;
    let kafka_rss = rss_mib(&kafka.pid().to_string())?;
    let internals = match &edge.admin_addr {
        Some(admin) => edge_internals(&rt, admin)?,
        None => "edge internals: no admin address".to_owned(),
    };
    // Stopping flushes the producer: anything a 503 left queued is counted too.
    edge.stop()?;
    let records = topic_records(&kafka.addr)?;
    let (objects, segments) = archived_requests(&rt, archive_dir.path())?;
    kafka.stop()?;

    // 3. Bolt for Python and for JS, acking only (BENCH_BOLT=1).
    let mut bolts = Vec::new();
    if std::env::var("BENCH_BOLT").as_deref() == Ok("1") {
        for (name, command) in bolt_servers()? {
            let server = Server::start(name, command)?;
            let (outcome, _) = measure(&rt, &server, name, secs, pool, &[], None)?;
            server.stop()?;
            bolts.push((name, outcome));
        }
    }

    // 4. The edge with the S3 archive (Garage) at a fixed rate, unless BENCH_S3=0 or
    // there is no Garage.
    let s3_run = if std::env::var("BENCH_S3").as_deref() == Ok("0") {
        None
    } else {
        match slackline_testkit::Garage::start() {
            Ok(garage) => Some(measure_s3(&rt, &garage, secs, pool)?),
            Err(e) => {
                eprintln!("edge_load: no S3 run ({e})");
                None
            }
        }
    };
    let client_rss = rss_mib(&exe_pid)?;

    // The report.
    println!();
    println!("edge_load: concurrency {CONCURRENCY}, {secs} s each, body {body_bytes} B");
    println!(
        "{:<18}{:>9}{:>11}{:>9}{:>9}{:>9}{:>14}",
        "", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "peak RSS MB"
    );
    let mut rows = vec![("verify-only", &baseline), ("edge (file+mock)", &edged)];
    rows.extend(bolts.iter().map(|(name, o)| (*name, o)));
    for (name, o) in rows {
        println!(
            "{:<18}{:>9.0}{:>11.2}{:>9.2}{:>9.2}{:>9}{:>14.1}",
            name,
            o.rate(),
            o.percentile_ms(0.50),
            o.percentile_ms(0.99),
            o.percentile_ms(1.0),
            o.errors(),
            o.rss.0
        );
    }
    println!(
        "ratio edge/verify-only: {:.2}",
        edged.rate() / baseline.rate()
    );
    for (name, o) in &bolts {
        println!(
            "ratio edge/{name}: {:.2} (CPU cores: {name} {:.2}, edge {:.2})",
            edged.rate() / o.rate(),
            o.cores.get(1).copied().unwrap_or(f64::NAN),
            edged.cores.get(1).copied().unwrap_or(f64::NAN),
        );
    }
    println!();
    println!(
        "server RSS after its run (MB): verify-only {:.1}, edge {:.1}; mock Kafka peak {:.1}, now {:.1}; load generator peak {:.1}",
        baseline.rss.1, edged.rss.1, kafka_rss.0, kafka_rss.1, client_rss.0
    );
    println!(
        "CPU cores used while measured: verify-only run: client {:.2}, server {:.2}; edge run: client {:.2}, edge {:.2}, mock Kafka {:.2} (of {})",
        baseline.cores.first().copied().unwrap_or(f64::NAN),
        baseline.cores.get(1).copied().unwrap_or(f64::NAN),
        edged.cores.first().copied().unwrap_or(f64::NAN),
        edged.cores.get(1).copied().unwrap_or(f64::NAN),
        edged.cores.get(2).copied().unwrap_or(f64::NAN),
        std::thread::available_parallelism().map_or(0, usize::from),
    );

    for (name, o) in [("verify-only", &baseline), ("edge", &edged)] {
        let busiest: Vec<String> = o
            .server_threads
            .iter()
            .take(5)
            .map(|(thread, cores)| format!("{thread} {cores:.2}"))
            .collect();
        println!("{name} threads (cores): {}", busiest.join(", "));
    }
    println!("{internals}");

    let mut failed = false;
    for (name, o) in [("verify-only", &baseline), ("edge", &edged)] {
        for (kind, n) in &o.errors {
            println!("ERROR {name}: {n} x {kind}");
            failed = true;
        }
    }
    let accepted = edged.ok_total;
    println!(
        "edge check: {} requests sent, {accepted} answered 200, {records} Kafka records, {objects} archive entries in {segments} segments",
        edged.sent_total
    );
    if i64::try_from(accepted).ok() != Some(records) {
        println!("ERROR edge: {records} records on {TOPIC}, but {accepted} requests answered 200");
        failed = true;
    }
    if objects != accepted {
        println!("ERROR edge: {objects} archive entries, but {accepted} requests answered 200");
        failed = true;
    }
    for (name, o) in &bolts {
        for (kind, n) in &o.errors {
            println!("ERROR {name}: {n} x {kind}");
            failed = true;
        }
    }
    if let Some(run) = &s3_run {
        failed |= run.report();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

// ---------------------------------------------------------------------------------
// Bolt (the comparison the edge is held to) and the S3 archive.

/// Bolt for Python (AsyncApp on uvicorn) and Bolt for JS (HTTPReceiver), each acking
/// every event and doing nothing durable, installed by `benches/bolt/setup.sh` under
/// `target/bolt` (PyPI and npm) on first use.
fn bolt_servers() -> anyhow::Result<Vec<(&'static str, Command)>> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bolt");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
            Into::into,
        )
        .join("bolt");
    let status = Command::new("bash")
        .arg(here.join("setup.sh"))
        .arg(&target)
        .stdout(Stdio::null())
        .status()
        .context("running benches/bolt/setup.sh")?;
    ensure!(status.success(), "benches/bolt/setup.sh failed ({status})");
    let mut python = Command::new(target.join("venv/bin/python"));
    python
        .arg(here.join("bolt_app.py"))
        .env("BENCH_SIGNING_SECRET", SECRET);
    let mut node = Command::new("node");
    node.arg(here.join("bolt_app.js"))
        .env("NODE_PATH", target.join("node/node_modules"))
        .env("BENCH_SIGNING_SECRET", SECRET);
    Ok(vec![("Bolt Python", python), ("Bolt JS", node)])
}

/// The edge on the S3 archive at a fixed rate.
struct S3Run {
    rate: f64,
    outcome: Outcome,
    puts: f64,
    records: i64,
    entries: usize,
    objects: usize,
    linger_ms: String,
}

impl S3Run {
    /// Prints its figures; whether a check failed.
    fn report(&self) -> bool {
        let o = &self.outcome;
        println!();
        println!(
            "edge (S3 Garage + mock Kafka) at {:.0} req/s offered, ARCHIVE_S3_LINGER_MS={}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, peak RSS {:.1} MB",
            self.rate,
            self.linger_ms,
            o.rate(),
            o.percentile_ms(0.50),
            o.percentile_ms(0.99),
            o.percentile_ms(1.0),
            o.rss.0
        );
        println!(
            "S3 PUTs: {:.0} for {} requests answered 200 = {:.4} PUT per event ({} objects, {} archive entries)",
            self.puts,
            o.ok_total,
            self.puts / o.ok_total.max(1) as f64,
            self.objects,
            self.entries
        );
        let mut failed = false;
        for (kind, n) in &o.errors {
            println!("ERROR edge (S3): {n} x {kind}");
            failed = true;
        }
        if i64::try_from(o.ok_total).ok() != Some(self.records) {
            println!(
                "ERROR edge (S3): {} records, but {} requests answered 200",
                self.records, o.ok_total
            );
            failed = true;
        }
        if self.entries != o.ok_total {
            println!(
                "ERROR edge (S3): {} archive entries, but {} requests answered 200",
                self.entries, o.ok_total
            );
            failed = true;
        }
        failed
    }
}

fn measure_s3(
    rt: &tokio::runtime::Runtime,
    garage: &slackline_testkit::Garage,
    secs: u64,
    pool: usize,
) -> anyhow::Result<S3Run> {
    let rate: f64 = env_number("BENCH_S3_RATE", 1000.0)?;
    let kafka = Server::spawn("mock-kafka", &["--serve-kafka"])?;
    let url = garage.archive_url("bench");
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut command = Command::new(exe);
    command
        .args(["--serve-edge", &kafka.addr, &url])
        .env("AWS_ENDPOINT_URL_S3", &garage.endpoint)
        .env("AWS_REGION", &garage.region)
        .env("AWS_ACCESS_KEY_ID", &garage.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &garage.secret_access_key)
        .env("AWS_S3_FORCE_PATH_STYLE", "true");
    let linger_ms = std::env::var("ARCHIVE_S3_LINGER_MS").unwrap_or_else(|_| "50 (default)".into());
    let puts_before = garage_puts(rt, &garage.metrics_url())?;
    let edge = Server::start("edge (S3)", command)?;
    let (outcome, _) = measure(rt, &edge, "S", secs, pool, &[kafka.pid()], Some(rate))?;
    edge.stop()?;
    let puts = garage_puts(rt, &garage.metrics_url())? - puts_before;
    let records = topic_records(&kafka.addr)?;
    kafka.stop()?;
    let settings = S3Settings::for_endpoint(
        &garage.endpoint,
        &garage.region,
        &garage.access_key_id,
        &garage.secret_access_key,
        Duration::from_secs(2),
    );
    let (entries, objects) = rt.block_on(async {
        let archive = Archive::open(&url, &settings).await?;
        let keys = archive.list(RAW_PREFIX).await?;
        let mut entries = 0;
        for key in &keys {
            entries += archive.read_object(key).await?.len();
        }
        Ok::<_, slackline_archive::ArchiveError>((entries, keys.len()))
    })?;
    Ok(S3Run {
        rate,
        outcome,
        puts,
        records,
        entries,
        objects,
        linger_ms,
    })
}

/// PutObject requests Garage has served.
fn garage_puts(rt: &tokio::runtime::Runtime, metrics_url: &str) -> anyhow::Result<f64> {
    let text = rt.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(metrics_url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    })?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("api_s3_request_counter") && l.contains("\"PutObject\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
