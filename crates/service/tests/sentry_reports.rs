//! Sentry reporting ([`slackline_service::reporting`]) on real processes: each test
//! starts this test binary again as a child that runs one `child_*` function as a
//! service would (`init_telemetry`, then `run_service`), with `SENTRY_DSN` pointing at
//! a local HTTP receiver of Sentry envelopes, and checks what arrived:
//!
//! - an error-level event arrives with the `service` tag and the tags of its fields
//!   and spans, and without the secret and message text put in other fields; it
//!   arrives although the service exits right after logging it (the receiver answers
//!   slowly: only the flush at the end of `run_service` waits for it);
//! - a panic in a service task arrives once, with its location and its span's tags,
//!   without its message;
//! - with `SENTRY_DSN` unset or empty nothing is sent, no Sentry client exists, and
//!   the service runs and exits as usual; an invalid one stops the start (exit 2);
//! - `log` records (librdkafka's) and `rdkafka` targets are not reported;
//! - after a flood of error events a DLQ report still arrives (its reserved lane);
//! - Sentry's rate limit (a 429 with `X-Sentry-Rate-Limits`) stops other reports,
//!   not DLQ ones, and the dropped reports are counted;
//! - a panic does not wait for its report: with a receiver that never answers, the
//!   panicking thread is joined well under the flush budget.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "support/sentry_receiver.rs"]
mod sentry_receiver;

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use sentry_receiver::Receiver;
use serde_json::Value;
use slackline_service::reporting::{DLQ_MESSAGE, FLUSH_BUDGET, NO_MESSAGE};
use slackline_service::{init_telemetry, run_service, LogFormat};

const CHILD_ENV: &str = "SLACKLINE_SENTRY_CHILD";
const SERVICE: &str = "sentry-test";
/// In every child's fields and panic messages; must never reach the receiver.
const SECRET: &str = "hunter2-secret";
const MESSAGE_TEXT: &str = "the customer wrote: my card number is";

/// How a child process ended.
struct Finished {
    code: i32,
    output: String,
}

/// Runs test `child` of this binary with `SLACKLINE_SENTRY_CHILD=mode` and `env`
/// (a `None` value removes the variable), and waits for its exit.
fn run_child(child: &str, mode: &str, env: &[(&str, Option<&str>)]) -> Finished {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([child, "--exact", "--nocapture"])
        .env(CHILD_ENV, mode)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
    }
    let mut process = command.spawn().expect("starting the child");
    let stderr = process.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = process.kill();
            panic!("the child still runs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut output = reader.join().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut process.stdout.take().unwrap(), &mut stdout).unwrap();
    output.push('\n');
    output.push_str(&stdout);
    Finished {
        code: status
            .code()
            .expect("the child exited (not killed by a signal)"),
        output,
    }
}

fn child_mode() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Runs `run` as a service, then exits with its status (0 or 1).
fn child_service<F, Fut>(run: F) -> !
where
    F: FnOnce(slackline_service::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), std::io::Error>>,
{
    init_telemetry(SERVICE, LogFormat::Text);
    let code = run_service(SERVICE, Duration::from_secs(2), run);
    println!(
        "dropped reports: {:?}",
        slackline_service::reporting::dropped_reports()
    );
    std::process::exit(if code == ExitCode::SUCCESS { 0 } else { 1 })
}

fn tag<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event["tags"][name].as_str()
}

/// Child: logs three error events inside a span, then returns at once.
#[test]
fn child_errors() {
    if child_mode().as_deref() != Some("errors") {
        return;
    }
    child_service(|_shutdown| async move {
        let span = tracing::info_span!("event", key = "C0SPAN", offset = 7_i64, group = "g1");
        let _entered = span.enter();
        tracing::error!(
            event_id = "Ev0001",
            archive_key = "raw/2026/01/Ev0001.json",
            partition = 3,
            password = SECRET,
            text = MESSAGE_TEXT,
            reason = %format!("{MESSAGE_TEXT} {SECRET}"),
            attempts = 4,
            "handling failed"
        );
        // No message: sentry-tracing would use the error text instead.
        tracing::error!(error = %format!("{MESSAGE_TEXT} {SECRET}"));
        let io = std::io::Error::other(format!("{MESSAGE_TEXT} {SECRET}"));
        tracing::error!(
            error = &io as &(dyn std::error::Error + 'static),
            channel = "C0OWN",
            "an error value"
        );
        Ok(())
    });
}

#[test]
fn error_events_arrive_tagged_and_without_secrets_or_message_text() {
    // Each answer takes 150 ms: the three reports are still on their way when `run`
    // returns, and arrive only if the service waits for them before it exits.
    let receiver = Receiver::start(Duration::from_millis(150));
    let dsn = receiver.dsn();
    let finished = run_child(
        "child_errors",
        "errors",
        &[
            ("SENTRY_DSN", Some(&dsn)),
            ("SENTRY_ENVIRONMENT", Some("ci-test")),
        ],
    );
    assert_eq!(finished.code, 0, "{}", finished.output);
    let events = receiver.events();
    assert_eq!(events.len(), 3, "{events:#?}\n{}", finished.output);

    let raw = receiver.raw_text();
    assert!(!raw.contains(SECRET), "a secret reached Sentry: {raw}");
    assert!(
        !raw.contains(MESSAGE_TEXT),
        "message text reached Sentry: {raw}"
    );

    let request = &receiver.requests()[0];
    assert_eq!(request.path, "/api/1/envelope/");
    assert!(
        request
            .auth
            .as_deref()
            .is_some_and(|a| a.contains("sentry_key=public")),
        "{request:?}"
    );

    let failed = events
        .iter()
        .find(|e| e["message"] == "handling failed")
        .expect("the first event");
    assert_eq!(tag(failed, "service"), Some(SERVICE));
    assert_eq!(tag(failed, "event_id"), Some("Ev0001"));
    assert_eq!(tag(failed, "archive_key"), Some("raw/2026/01/Ev0001.json"));
    assert_eq!(tag(failed, "partition"), Some("3"));
    // From the span: its `key` is the channel.
    assert_eq!(tag(failed, "channel"), Some("C0SPAN"));
    assert_eq!(tag(failed, "offset"), Some("7"));
    assert_eq!(tag(failed, "group"), Some("g1"));
    assert_eq!(failed["tags"].as_object().unwrap().len(), 7, "{failed:#}");
    assert_eq!(failed["extra"]["attempts"], 4);
    // `error` is the protocol's default level, left out of the JSON.
    assert!(
        failed["level"].is_null() || failed["level"] == "error",
        "{failed:#}"
    );
    assert_eq!(failed["environment"], "ci-test");
    assert_eq!(
        failed["release"],
        format!("{SERVICE}@{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(failed.get("breadcrumbs").is_none(), "{failed:#}");

    let bare = events
        .iter()
        .find(|e| e["message"] == NO_MESSAGE)
        .expect("the event without a message");
    assert_eq!(tag(bare, "service"), Some(SERVICE));

    let valued = events
        .iter()
        .find(|e| e["message"] == "an error value")
        .expect("the event with an error value");
    assert_eq!(
        tag(valued, "channel"),
        Some("C0OWN"),
        "the event's own field wins"
    );
    let exception = &valued["exception"]["values"][0];
    assert!(exception["type"].is_string(), "{valued:#}");
    assert!(exception.get("value").is_none(), "{valued:#}");
}

/// Child: a task of the service panics inside a span; the service carries on.
#[test]
fn child_panic() {
    if child_mode().as_deref() != Some("panic") {
        return;
    }
    child_service(|_shutdown| async move {
        let task = tokio::spawn(async {
            let span = tracing::info_span!("event", event_id = "EvPanic", channel = "C0PANIC");
            let _entered = span.enter();
            panic!("{MESSAGE_TEXT} {SECRET}");
        });
        assert!(task.await.is_err(), "the task panicked");
        // Resolving the stack of a debug test binary can take longer than the flush
        // budget of `run_service`.
        assert!(slackline_service::reporting::flush(Duration::from_secs(20)));
        Ok(())
    });
}

#[test]
fn a_panic_in_a_service_task_is_reported_once_without_its_message() {
    let receiver = Receiver::start(Duration::ZERO);
    let dsn = receiver.dsn();
    let finished = run_child("child_panic", "panic", &[("SENTRY_DSN", Some(&dsn))]);
    assert_eq!(finished.code, 0, "{}", finished.output);
    assert!(
        finished.output.contains("panic"),
        "the panic is still logged and printed: {}",
        finished.output
    );
    let events = receiver.events();
    assert_eq!(events.len(), 1, "one report per panic: {events:#?}");
    let event = &events[0];
    assert_eq!(event["level"], "fatal");
    assert_eq!(tag(event, "service"), Some(SERVICE));
    assert_eq!(tag(event, "event_id"), Some("EvPanic"));
    assert_eq!(tag(event, "channel"), Some("C0PANIC"));
    let exception = &event["exception"]["values"][0];
    assert_eq!(exception["type"], "panic");
    assert_eq!(exception["mechanism"]["type"], "panic");
    assert_eq!(exception["mechanism"]["handled"], false);
    let value = exception["value"].as_str().unwrap();
    assert!(
        value.starts_with("panicked at ") && value.contains("sentry_reports.rs:"),
        "{value}"
    );
    let raw = receiver.raw_text();
    assert!(!raw.contains(SECRET), "{raw}");
    assert!(!raw.contains(MESSAGE_TEXT), "{raw}");
}

/// Child: with reporting off, logs an error and panics in a task, and checks that no
/// Sentry client exists.
#[test]
fn child_off() {
    if child_mode().as_deref() != Some("off") {
        return;
    }
    child_service(|_shutdown| async move {
        tracing::error!(event_id = "EvOff", "handling failed");
        let task = tokio::spawn(async { panic!("a task panics") });
        assert!(task.await.is_err());
        assert!(!slackline_service::reporting::enabled());
        assert!(
            sentry::Hub::current().client().is_none(),
            "no Sentry client without SENTRY_DSN"
        );
        println!("child checked: no Sentry client");
        Ok(())
    });
}

#[test]
fn without_a_dsn_nothing_is_sent_and_nothing_fails() {
    let receiver = Receiver::start(Duration::ZERO);
    for dsn in [None, Some(""), Some("   ")] {
        let finished = run_child(
            "child_off",
            "off",
            &[
                ("SENTRY_DSN", dsn),
                // Read by the sentry crate's defaults: must not switch reporting on.
                ("SENTRY_RELEASE", Some("x@1")),
                ("SENTRY_ENVIRONMENT", Some("ci-test")),
            ],
        );
        assert_eq!(finished.code, 0, "SENTRY_DSN={dsn:?}: {}", finished.output);
        assert!(
            finished.output.contains("child checked: no Sentry client"),
            "{}",
            finished.output
        );
        assert!(
            !finished.output.to_lowercase().contains("sentry_dsn")
                && !finished.output.contains("cannot send a report"),
            "SENTRY_DSN={dsn:?}: a Sentry problem was reported: {}",
            finished.output
        );
    }
    assert!(receiver.requests().is_empty());

    // Set but invalid: a configuration error, named, before anything runs.
    let finished = run_child("child_off", "off", &[("SENTRY_DSN", Some("not a dsn"))]);
    assert_eq!(finished.code, 2, "{}", finished.output);
    assert!(
        finished.output.contains("SENTRY_DSN"),
        "{}",
        finished.output
    );
    assert!(
        !finished.output.contains("child checked"),
        "{}",
        finished.output
    );
}

/// Child: librdkafka-style `log` records and an `rdkafka` target at error level, then
/// one ordinary error event.
#[test]
fn child_log_bridge() {
    if child_mode().as_deref() != Some("log-bridge") {
        return;
    }
    child_service(|_shutdown| async move {
        // What rdkafka's client logs for a librdkafka error (`log::error!`).
        log::error!(
            target: "librdkafka",
            "librdkafka: FAIL [thrd:sasl_ssl://broker-7.internal:9093/7]: user {SECRET}: Connect failed"
        );
        log::error!("a log record of another crate: {SECRET}");
        tracing::error!(target: "rdkafka::client", "native rdkafka event: {SECRET}");
        tracing::error!(event_id = "EvAfterLogs", "handling failed");
        Ok(())
    });
}

#[test]
fn log_records_and_rdkafka_events_are_not_reported_but_stay_in_the_logs() {
    let receiver = Receiver::start(Duration::ZERO);
    let dsn = receiver.dsn();
    let finished = run_child(
        "child_log_bridge",
        "log-bridge",
        &[("SENTRY_DSN", Some(&dsn))],
    );
    assert_eq!(finished.code, 0, "{}", finished.output);
    assert!(
        finished.output.contains("Connect failed")
            && finished.output.contains("a log record of another crate")
            && finished.output.contains("native rdkafka event"),
        "the records are still logged: {}",
        finished.output
    );
    let events = receiver.events();
    assert_eq!(events.len(), 1, "only the tracing event: {events:#?}");
    assert_eq!(events[0]["message"], "handling failed");
    assert_eq!(tag(&events[0], "event_id"), Some("EvAfterLogs"));
    assert!(!receiver.raw_text().contains(SECRET));
}

/// Error events that a DLQ report follows.
const FLOOD: usize = 300;

/// Child: a flood of error events, then one DLQ record's line.
#[test]
fn child_flood() {
    if child_mode().as_deref() != Some("flood") {
        return;
    }
    child_service(|_shutdown| async move {
        for attempt in 0..FLOOD {
            tracing::error!(attempts = attempt, "handling failed");
        }
        tracing::error!(
            event_id = "EvDlqAfterFlood",
            attempts = 5,
            "record sent to the DLQ"
        );
        Ok(())
    });
}

#[test]
fn a_dlq_report_arrives_after_a_flood_of_other_reports() {
    // 50 ms an answer, two at a time: the flood overflows the queue, and in the
    // flush budget only a part of it goes out. The DLQ report must be in that part.
    let receiver = Receiver::start(Duration::from_millis(50));
    let dsn = receiver.dsn();
    let finished = run_child("child_flood", "flood", &[("SENTRY_DSN", Some(&dsn))]);
    assert_eq!(finished.code, 0, "{}", finished.output);
    let events = receiver.events();
    let dlq: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == DLQ_MESSAGE)
        .collect();
    assert_eq!(
        dlq.len(),
        1,
        "the DLQ report arrived once ({} reports in all)\n{}",
        events.len(),
        finished.output
    );
    assert_eq!(tag(dlq[0], "event_id"), Some("EvDlqAfterFlood"));
    assert!(
        events.len() < FLOOD,
        "the flood overflowed the queue: {} reports arrived",
        events.len()
    );
    assert!(
        !finished.output.contains(r#"("queue_full", 0)"#),
        "dropped reports are counted: {}",
        finished.output
    );
}

/// Child: one report (answered 429 with a rate limit), then an ordinary report and
/// a DLQ report.
#[test]
fn child_rate_limited() {
    if child_mode().as_deref() != Some("rate-limited") {
        return;
    }
    child_service(|_shutdown| async move {
        tracing::error!(event_id = "EvFirst", "first report");
        // Answered (429) before the next ones are made.
        assert!(slackline_service::reporting::flush(Duration::from_secs(10)));
        tracing::error!(event_id = "EvLimited", "second report");
        tracing::error!(event_id = "EvDlqLimited", "record sent to the DLQ");
        Ok(())
    });
}

#[test]
fn a_rate_limit_stops_other_reports_but_not_dlq_ones() {
    let limited =
        "HTTP/1.1 429 Too Many Requests\r\nX-Sentry-Rate-Limits: 60:error:organization\r\n\
                   Retry-After: 60\r\nContent-Length: 0\r\n\r\n";
    let receiver = Receiver::start_with(Duration::ZERO, vec![limited.to_owned()]);
    let dsn = receiver.dsn();
    let finished = run_child(
        "child_rate_limited",
        "rate-limited",
        &[("SENTRY_DSN", Some(&dsn))],
    );
    assert_eq!(finished.code, 0, "{}", finished.output);
    let messages: Vec<_> = receiver
        .events()
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        messages,
        ["first report", DLQ_MESSAGE],
        "{}",
        finished.output
    );
    // The first (refused with 429) and the second (not sent).
    assert!(
        finished.output.contains(r#"("rate_limited", 2)"#),
        "{}",
        finished.output
    );
}

/// Child: a thread panics; prints how long the join took.
#[test]
fn child_panic_unanswered() {
    if child_mode().as_deref() != Some("panic-unanswered") {
        return;
    }
    child_service(|_shutdown| async move {
        let started = Instant::now();
        let joined = std::thread::spawn(|| {
            let span = tracing::info_span!("event", event_id = "EvSlowPanic");
            let _entered = span.enter();
            panic!("{MESSAGE_TEXT}");
        })
        .join();
        assert!(joined.is_err(), "the thread panicked");
        println!("panic joined after {} ms", started.elapsed().as_millis());
        // The report is resolved and sent now; never answered, the request times out.
        slackline_service::reporting::flush(Duration::from_secs(20));
        Ok(())
    });
}

#[test]
fn a_panic_does_not_wait_for_its_report() {
    let receiver = Receiver::silent();
    let dsn = receiver.dsn();
    let finished = run_child(
        "child_panic_unanswered",
        "panic-unanswered",
        &[("SENTRY_DSN", Some(&dsn))],
    );
    assert_eq!(finished.code, 0, "{}", finished.output);
    let joined_ms: u64 = finished
        .output
        .lines()
        .find_map(|l| l.strip_prefix("panic joined after "))
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no join time: {}", finished.output));
    // The guarantee under test; the old hook waited for the flush (1 s).
    assert!(
        joined_ms < 500,
        "the panicking thread was held {joined_ms} ms (flush budget {FLUSH_BUDGET:?})"
    );
    // Sent all the same (by the flush), never answered.
    let events = receiver.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(tag(&events[0], "event_id"), Some("EvSlowPanic"));
    assert_eq!(events[0]["level"], "fatal");
}
