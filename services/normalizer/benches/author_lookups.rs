//! Throughput of the normalizer with a cold `users.info` cache (issue 12, item 12):
//! N channels × M distinct users, one message each, a `users.info` stub that
//! answers after 300 ms, on the shared Apache Kafka broker. Each run is a fresh
//! normalizer (cold cache) on fresh topics; the clock runs from producing the raw
//! events to the last outcome acknowledged, after a warm-up event has shown the
//! group is assigned. `AUTHOR_LOOKUP_CONCURRENCY=1` is the old serial behaviour
//! (one lookup at a time, in reading order).
//!
//! Run with `cargo bench -p slackline-normalizer --bench author_lookups`; set
//! `BENCH_CHANNELS`, `BENCH_USERS`, `BENCH_DELAY_MS` and `BENCH_CONCURRENCY`
//! (comma-separated list) to change the defaults (8, 10, 300 and `1,4,16,64`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::routing::get;
use axum::Json;
use serde_json::json;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::Shutdown;
use slackline_slack_api::BotTokens;
use slackline_testkit::kafka::TestCluster;

const PARTITIONS: i32 = 12;
const HOME: &str = "T0HOME";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn stub(delay: Duration) -> String {
    let app = axum::Router::new().route(
        "/users.info",
        get(
            move |Query(q): Query<BTreeMap<String, String>>| async move {
                let user = q.get("user").cloned().unwrap_or_default();
                tokio::time::sleep(delay).await;
                Json(json!({"ok": true, "user": {
                    "id": user, "team_id": "T0CUST", "name": "cust",
                    "profile": {"display_name": format!("name-{user}")}
                }}))
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn raw(channel: &str, user: &str, seq: usize) -> (String, Vec<u8>, String) {
    let event_id = format!("EvBench{channel}x{seq}");
    let body = json!({
        "type": "event_callback", "team_id": "T0CUST", "event_id": event_id,
        "event_time": 1_764_000_000,
        "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}],
        "event": {"type": "message", "channel": channel, "user": user, "text": "hi",
                  "ts": format!("{}.000100", 1_764_100_000 + seq)},
    });
    (
        channel.to_owned(),
        serde_json::to_vec(&body).unwrap(),
        event_id,
    )
}

fn produced(n: &Normalizer) -> f64 {
    slackline_testkit::metrics::metric(
        &n.registry,
        "slackline_normalizer_outcomes_total",
        &[("outcome", "full")],
    )
}

async fn wait_produced(n: &Normalizer, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while produced(n) < want {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One run: events per second.
async fn run(channels: usize, users: usize, delay: Duration, concurrency: usize) -> f64 {
    let slack = stub(delay).await;
    let cluster = TestCluster::kafka();
    let names = cluster.names();
    cluster.create_topic(&names.raw_events(), PARTITIONS);
    cluster.create_topic(&names.messages(), PARTITIONS);
    cluster.create_topic(&names.raw_dlq(), 1);
    let mut tokens = BotTokens::default();
    tokens.insert(HOME, "xoxb-bench");
    let config = NormalizerConfig {
        slack_api_base_url: slack,
        bot_tokens: tokens,
        shutdown_grace: Duration::from_secs(5),
        author_lookup_concurrency: concurrency,
        ..NormalizerConfig::new(cluster.settings(), names)
    };
    let shutdown = Shutdown::new();
    let normalizer = Normalizer::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    // Warm-up: the group is assigned once this one is out.
    slackline_testkit::kafka::produce_records(
        &cluster,
        &config.raw_topic,
        &[raw("C0WARM", "U0WARM", 0)],
    )
    .await;
    wait_produced(&normalizer, 1.0).await;

    let mut records = Vec::new();
    for u in 0..users {
        for c in 0..channels {
            let seq = 1 + u * channels + c;
            records.push(raw(&format!("C0BENCH{c}"), &format!("U0B{c}U{u}"), seq));
        }
    }
    let total = records.len();
    let started = Instant::now();
    slackline_testkit::kafka::produce_records(&cluster, &config.raw_topic, &records).await;
    wait_produced(&normalizer, (total + 1) as f64).await;
    let elapsed = started.elapsed();
    shutdown.trigger();
    normalizer.wait().await.unwrap();
    total as f64 / elapsed.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let channels = env_or("BENCH_CHANNELS", if quick { 2 } else { 8 }) as usize;
    let users = env_or("BENCH_USERS", if quick { 2 } else { 10 }) as usize;
    let delay = Duration::from_millis(env_or("BENCH_DELAY_MS", if quick { 20 } else { 300 }));
    let concurrency: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
        .unwrap_or_else(|_| if quick { "1,16" } else { "1,4,16,64" }.to_owned())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "author lookups, cold cache: {channels} channels x {users} users = {} events, users.info answering after {} ms",
        channels * users,
        delay.as_millis()
    );
    for c in concurrency {
        let rate = runtime.block_on(run(channels, users, delay, c));
        println!(
            "AUTHOR_LOOKUP_CONCURRENCY={c:<3} {rate:>8.1} events/s{}",
            if c == 1 {
                "  (serial: the old behaviour)"
            } else {
                ""
            }
        );
    }
}
