//! What normalising one raw event costs, split into its steps, on a mix of real Slack
//! payloads: the shared corpus when it is beside the project (`../shared/slack-corpus`
//! or `SLACKLINE_CORPUS_DIR`), else the project's own `testdata/events`.
//!
//! Run with `cargo bench -p slackline-normalizer --bench normalize_cost`. Each
//! benchmark processes the whole mix once per iteration, so criterion's throughput
//! line reads directly as events per second on one core:
//! - `parse`: `serde_json` into a `Value` (the first step of normalising);
//! - `normalize`: parse + decide + build the event (no enrichment, no Kafka);
//! - `encode`: Avro single-object encoding of the events already built;
//! - `pipeline`: normalize + encode, what the service does per raw event.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slackline_events::encode_message_into;
use slackline_normalizer::normalize::{normalize, Outcome, RawMeta, Rules};
use slackline_slack::{is_bare_event, wrap_bare_event};

fn corpus() -> (String, Vec<Vec<u8>>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = std::env::var_os("SLACKLINE_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/slack-corpus"))
        .join("events");
    let dir = if shared.is_dir() {
        shared
    } else {
        root.join("testdata/events")
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let bodies = files
        .iter()
        .filter_map(|path| std::fs::read(path).ok())
        .enumerate()
        .map(
            |(i, raw)| match serde_json::from_slice::<serde_json::Value>(&raw) {
                Ok(v) if is_bare_event(&v) => {
                    serde_json::to_vec(&wrap_bare_event(v, &format!("EvB{i}"), "T0BENCH"))
                        .unwrap_or(raw)
                }
                _ => raw,
            },
        )
        .collect();
    (dir.display().to_string(), bodies)
}

fn meta() -> RawMeta<'static> {
    RawMeta {
        archive_key: "raw/2026/11/24/22/20261124T223001.123456Z-Ev0123-r0-5f0c9a2e41b7.json",
        record_key: Some("C0BENCH"),
        event_id: None,
    }
}

fn bench(c: &mut Criterion) {
    let (dir, bodies) = corpus();
    let rules = Rules::default();
    let events: Vec<_> = bodies
        .iter()
        .filter_map(|b| match normalize(b, meta(), &rules) {
            Outcome::Event(e) => Some(e),
            Outcome::Ignored { .. } => None,
        })
        .collect();
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    eprintln!(
        "mix: {} payloads from {dir} ({} KiB), {} become events",
        bodies.len(),
        bytes / 1024,
        events.len()
    );

    let mut group = c.benchmark_group("normalizer");
    group.throughput(Throughput::Elements(bodies.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| {
            for body in &bodies {
                std::hint::black_box(serde_json::from_slice::<serde_json::Value>(body).ok());
            }
        })
    });
    group.bench_function("normalize", |b| {
        b.iter(|| {
            for body in &bodies {
                std::hint::black_box(normalize(body, meta(), &rules));
            }
        })
    });
    group.bench_function("pipeline", |b| {
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            for body in &bodies {
                if let Outcome::Event(e) = normalize(body, meta(), &rules) {
                    buf.clear();
                    std::hint::black_box(encode_message_into(&e, &mut buf).is_ok());
                }
            }
        })
    });
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("encode", |b| {
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            for e in &events {
                buf.clear();
                std::hint::black_box(encode_message_into(e, &mut buf).is_ok());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
