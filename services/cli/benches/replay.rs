//! Replay throughput (issue 15): events per minute that `slackline replay` reads from
//! the archive and gets acknowledged by the real Apache Kafka broker (the tests'
//! shared broker, started when it is not running), from the file archive and from S3
//! (a Garage server, when its binary is installed).
//!
//! `BENCH_EVENTS` requests (default 60000) of about 700 bytes over 100 channels are
//! written to each archive first (received over `BENCH_EVENTS / 500` seconds, so
//! several segments), then the whole range is replayed onto a fresh topic of 6
//! partitions with the product's producer settings. The figure is requests
//! acknowledged / time from the start of the replay (listing included) to the last
//! delivery report. The run fails if any request is not acknowledged or the topic
//! does not hold exactly the requests.
//!
//! ```text
//! cargo bench -p slackline --bench replay
//! BENCH_EVENTS=200000 cargo bench -p slackline --bench replay
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use slackline::replay::{self, NoProgress, ReplayOptions};
use slackline_archive::{Archive, ArchiveOptions, ArchiveRecord, FileArchive, S3Settings};
use slackline_testkit::kafka::{topic_len, TestCluster};
use slackline_testkit::Garage;

const PARTITIONS: i32 = 6;
const CHANNELS: usize = 100;
/// Requests written concurrently.
const WRITE_CHUNK: usize = 2000;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Before the runtime: it may start the shared broker (blocking).
    let cluster = TestCluster::kafka();
    match runtime.block_on(run(&cluster, events)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cluster: &TestCluster, events: usize) -> anyhow::Result<()> {
    println!(
        "replay bench: {events} requests, {PARTITIONS} partitions, Apache Kafka at {}",
        cluster.bootstrap_servers()
    );
    let dir = tempfile::tempdir()?;
    let file = Archive::File(FileArchive::open(dir.path()).context("file archive")?);
    bench(cluster, "file", &file, events).await?;

    match tokio::task::spawn_blocking(Garage::start).await? {
        Ok(garage) => {
            let s3 = S3Settings::for_endpoint(
                &garage.endpoint,
                &garage.region,
                &garage.access_key_id,
                &garage.secret_access_key,
                Duration::from_secs(10),
            );
            let archive = Archive::open_with(
                &garage.archive_url("bench"),
                &s3,
                &ArchiveOptions::default(),
            )
            .await
            .context("S3 archive")?;
            bench(cluster, "s3 (garage)", &archive, events).await?;
        }
        Err(e) => println!("s3 (garage): skipped, no Garage server ({e})"),
    }
    Ok(())
}

fn body(i: usize) -> Vec<u8> {
    let channel = format!("C0BENCH{:03}", i % CHANNELS);
    serde_json::to_vec(&serde_json::json!({
        "type": "event_callback", "team_id": "T0HOME", "api_app_id": "A0APP",
        "event_id": format!("Ev0BENCH{i:08}"), "event_time": 1_741_000_000 + i,
        "authorizations": [{"team_id": "T0HOME", "user_id": "U0BOT", "is_bot": true}],
        "event": {"type": "message", "channel": channel, "user": "U0CUST",
            "ts": format!("{}.{:06}", 1_741_000_000 + i / 1000, i % 1000),
            "text": format!("message {i}: the export to CSV fails with a timeout again, could you have a look? {}", "x".repeat(200)),
            "blocks": [{"type": "rich_text", "block_id": "b1", "elements": []}]}
    }))
    .expect("json")
}

/// Writes `events` requests received 2 ms apart from a fixed start; the range.
async fn write(archive: &Archive, events: usize) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    // Whole seconds: the archive keeps microseconds.
    let start = (Utc::now() - chrono::Duration::days(1)).trunc_subsecs(0);
    let step = chrono::Duration::microseconds(2000);
    let headers = BTreeMap::from([("content-type".to_owned(), "application/json".to_owned())]);
    let mut i = 0;
    while i < events {
        let end = (i + WRITE_CHUNK).min(events);
        let tasks: Vec<_> = (i..end)
            .map(|n| {
                let archive = archive.clone();
                let record = ArchiveRecord {
                    received_at: start + step * n as i32,
                    headers: headers.clone(),
                    body: Bytes::from(body(n)),
                };
                tokio::spawn(async move { archive.write(&record).await })
            })
            .collect();
        for t in tasks {
            t.await?.context("archive write")?;
        }
        i = end;
    }
    Ok((start, start + step * events as i32))
}

async fn bench(
    cluster: &TestCluster,
    name: &str,
    archive: &Archive,
    events: usize,
) -> anyhow::Result<()> {
    let written = Instant::now();
    let (from, to) = write(archive, events).await?;
    let objects = archive.segments_between(from, to).await?.len();
    println!(
        "{name}: wrote {events} requests in {objects} objects in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    let topic = cluster.names().name(&format!(
        "replay-bench-{}",
        name.split(' ').next().unwrap_or(name)
    ));
    cluster.create_topic(&topic, PARTITIONS);
    let options = ReplayOptions::new(from, to, &topic);
    let started = Instant::now();
    let summary = replay::replay(archive, &cluster.settings(), &options, &NoProgress).await?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(summary.is_complete(), "replay incomplete: {summary:?}");
    ensure!(
        summary.acknowledged == events as u64,
        "acknowledged {} of {events}",
        summary.acknowledged
    );
    let bootstrap = cluster.bootstrap_servers();
    let t = topic.clone();
    let len = tokio::task::spawn_blocking(move || topic_len(&bootstrap, &t, PARTITIONS)).await?;
    ensure!(
        len == events as i64,
        "the topic holds {len} records, not {events}"
    );
    println!(
        "{name}: replayed {events} requests ({} objects) in {secs:.2} s: {:.0} events/s = {:.0} events/min",
        summary.objects_read,
        events as f64 / secs,
        events as f64 / secs * 60.0
    );
    Ok(())
}
