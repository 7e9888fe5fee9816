//! Guarantee 5's alert, through Sentry: a DLQ record written by the real consumer
//! runtime on the real broker is reported to Sentry with its coordinates as tags
//! (`event_id`, `channel`, `archive_key`, `topic`, `partition`, `offset`, `group`,
//! `service`), once, without the handler's error text, and still arrives when the
//! service gets SIGTERM right after writing it.
//!
//! The runtime runs in a child process (this test binary again, `child_service`) as a
//! service binary runs it: `init_telemetry` with `SENTRY_DSN` pointing at a local
//! receiver of Sentry envelopes, then `run_service` (a Sentry client is per process).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;
#[path = "../../service/tests/support/sentry_receiver.rs"]
mod sentry_receiver;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use helpers::*;
use prometheus::Registry;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sentry_receiver::Receiver;
use slackline_consumer::{ConsumerMetrics, ConsumerRuntime, Event, HandlerError};
use slackline_kafka::KafkaSettings;
use slackline_service::{init_telemetry, run_service, LogFormat};

const CHILD_ENV: &str = "SLACKLINE_SENTRY_DLQ_CHILD";
const SERVICE: &str = "slackline-dlq-sentry-test";
/// In the handler's error; must never reach Sentry.
const ERROR_TEXT: &str = "cannot apply: the customer wrote hunter2";
/// Poison records, one per source partition 1..=RECORDS.
const RECORDS: i32 = 3;

/// Child: the consumer runtime with a handler that fails every event permanently.
#[test]
fn child_service() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let var = |name: &str| std::env::var(name).expect(name);
    let (bootstrap, source, group) = (var("TEST_BOOTSTRAP"), var("TEST_SOURCE"), var("TEST_GROUP"));
    init_telemetry(SERVICE, LogFormat::Json);
    let config = fast_config(&group, &source);
    let code = run_service(SERVICE, config.shutdown_grace, |shutdown| async move {
        let settings = KafkaSettings {
            bootstrap_servers: bootstrap,
            properties: vec![
                ("session.timeout.ms".into(), "6000".into()),
                ("heartbeat.interval.ms".into(), "200".into()),
                ("log_level".into(), "3".into()),
            ],
        };
        let metrics = ConsumerMetrics::register(&Registry::new())?;
        let handle = ConsumerRuntime::start(
            &settings,
            config,
            |_event: Event| async { Err(HandlerError::permanent(ERROR_TEXT)) },
            &metrics,
            shutdown,
        )
        .await?;
        println!("child running");
        handle.wait().await
    });
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}

#[test]
fn a_dlq_record_is_reported_to_sentry_with_its_coordinates_even_right_before_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = kafka();
    let source = source_topic(&cluster);
    let group = group(&cluster);
    let dlq = format!("{group}.dlq");
    // Slow answers: the three reports go out two at a time, 300 ms each, so the
    // last ones are still queued or in flight when the service stops after SIGTERM,
    // and arrive only because it waits for them (0.6 s in all, under the 1 s flush
    // budget and the 800 ms request timeout).
    let receiver = Receiver::start(Duration::from_millis(300));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_service", "--exact", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("TEST_BOOTSTRAP", cluster.bootstrap_servers())
        .env("TEST_SOURCE", &source)
        .env("TEST_GROUP", &group)
        .env("SENTRY_DSN", receiver.dsn())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the child");
    let lines = child_lines(&mut child);
    wait_line(&lines, "child running", Duration::from_secs(60));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    runtime.block_on(async {
        for i in 0..RECORDS {
            let event_id = format!("EvSentry000{i}");
            let archive_key = format!("raw/2026/01/02/EvSentry000{i}.json");
            producer
                .send(
                    FutureRecord::to(&source)
                        .partition(i + 1)
                        .key(&format!("C0SENTRY{i}"))
                        .payload(r#"{"key":0,"seq":0}"#)
                        .headers(
                            OwnedHeaders::new()
                                .insert(Header {
                                    key: slackline_kafka::headers::EVENT_ID,
                                    value: Some(&event_id),
                                })
                                .insert(Header {
                                    key: slackline_kafka::headers::ARCHIVE_KEY,
                                    value: Some(&archive_key),
                                }),
                        ),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    // At once after the runtime logged the last DLQ record (written and acknowledged).
    for _ in 0..RECORDS {
        wait_line(&lines, "record sent to the DLQ", Duration::from_secs(60));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "the child did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    let output: Vec<String> = lines.try_iter().collect();
    assert_eq!(code, Some(0), "{}", output.join("\n"));

    let letters = runtime.block_on(read_topic(
        &cluster,
        &dlq,
        2,
        RECORDS as usize,
        Duration::from_secs(60),
    ));
    assert_eq!(
        letters.len(),
        RECORDS as usize,
        "every record was dead-lettered"
    );

    let events = receiver.events();
    let dlq_events: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "record sent to the DLQ")
        .collect();
    assert_eq!(
        dlq_events.len(),
        RECORDS as usize,
        "one report per DLQ record: {events:#?}\n{}",
        output.join("\n")
    );
    for i in 0..RECORDS {
        let event_id = format!("EvSentry000{i}");
        let event = dlq_events
            .iter()
            .find(|e| e["tags"]["event_id"] == event_id.as_str())
            .unwrap_or_else(|| panic!("no report for {event_id}: {dlq_events:#?}"));
        let tag = |name: &str| event["tags"][name].as_str().map(str::to_owned);
        assert_eq!(tag("service").as_deref(), Some(SERVICE));
        assert_eq!(tag("channel"), Some(format!("C0SENTRY{i}")));
        assert_eq!(
            tag("archive_key"),
            Some(format!("raw/2026/01/02/EvSentry000{i}.json"))
        );
        assert_eq!(tag("topic").as_deref(), Some(source.as_str()));
        assert_eq!(tag("partition"), Some((i + 1).to_string()));
        assert_eq!(tag("offset").as_deref(), Some("0"));
        assert_eq!(tag("group").as_deref(), Some(group.as_str()));
        assert!(
            event["extra"]["dlq_offset"].is_number(),
            "where the DLQ record is: {event:#}"
        );
    }
    let raw = receiver.raw_text();
    assert!(
        !raw.contains("hunter2"),
        "the handler's error text reached Sentry: {raw}"
    );
}

/// The child's stdout and stderr lines, on a channel.
fn child_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    rx
}

fn wait_line(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "no line with {needle:?}; the child printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}
