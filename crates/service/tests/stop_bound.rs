//! The stop bound of a service process ([`slackline_service::run_service`]), on real
//! processes: each test below starts this test binary again as a child that runs one
//! `child_*` function (chosen by `SLACKLINE_STOP_CHILD`; without it those functions
//! return at once), signals it, and checks how and when it exited:
//!
//! - a service stuck after its shutdown signal fired (here a task fired it, as a
//!   failing task does) is ended by the watchdog `grace + STOP_MARGIN` later, with
//!   `EXIT_STOP_TIMEOUT` and an error line;
//! - a second SIGTERM ends a service at once with `EXIT_SECOND_SIGNAL`, while the first
//!   only fired the signal;
//! - a service whose `run` returned is not held up by a blocking task that never ends
//!   (a dropped tokio runtime would wait for it), and its exit status says how `run`
//!   ended: 0 for `Ok`, `EXIT_FAILED` for an error.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use slackline_service::shutdown::{
    EXIT_FAILED, EXIT_SECOND_SIGNAL, EXIT_STOP_TIMEOUT, RUNTIME_STOP_BUDGET, STOP_MARGIN,
};
use slackline_service::{init_telemetry, run_service, LogFormat};

const CHILD_ENV: &str = "SLACKLINE_STOP_CHILD";

/// A child process running one `child_*` test, its stdout and stderr lines on a
/// channel.
struct ChildProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ChildProcess {
    /// Runs test `child` of this binary with `SLACKLINE_STOP_CHILD=mode`.
    fn start(child: &str, mode: &str) -> ChildProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([child, "--exact", "--nocapture"])
            .env(CHILD_ENV, mode)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the child");
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
        }
        ChildProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`.
    fn wait_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line with {needle:?} within {timeout:?}; the child printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the exit (at most `limit`); returns its code and when it came.
    fn exit_code(&mut self, limit: Duration) -> (i32, Instant) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let at = Instant::now();
                // The rest of its output.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                let code = status.code().unwrap_or_else(|| {
                    panic!(
                        "the child died by a signal ({status}):\n{}",
                        self.seen.join("\n")
                    )
                });
                return (code, at);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the child still runs after {limit:?}; it printed:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn printed(&self, needle: &str) -> bool {
        self.seen.iter().any(|l| l.contains(needle))
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn child_mode() -> Option<String> {
    std::env::var(CHILD_ENV).ok()
}

/// Runs `run_service` with `grace` and `run`, then exits with its code.
fn child_service<F, Fut>(grace: Duration, run: F) -> !
where
    F: FnOnce(slackline_service::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), std::io::Error>>,
{
    init_telemetry("stop-bound-test", LogFormat::Text);
    let code = run_service("stop-bound-test", grace, run);
    // `ExitCode` has no accessor: report it through the process exit.
    std::process::exit(if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        // The only other status `run_service` returns.
        i32::from(EXIT_FAILED)
    })
}

/// Child: a task fires the shutdown signal, and nothing ever stops.
#[test]
fn child_stuck() {
    if child_mode().as_deref() != Some("stuck") {
        return;
    }
    child_service(Duration::from_millis(500), |shutdown| async move {
        println!("child running");
        shutdown.trigger();
        std::future::pending::<Result<(), std::io::Error>>().await
    });
}

#[test]
fn a_stuck_stop_is_ended_by_the_watchdog_after_grace_plus_margin() {
    let grace = Duration::from_millis(500);
    let mut child = ChildProcess::start("child_stuck", "stuck");
    child.wait_line("child running", Duration::from_secs(30));
    let fired = Instant::now();
    let (code, at) = child.exit_code(grace + STOP_MARGIN + Duration::from_secs(10));
    let took = at - fired;
    println!(
        "watchdog exit {code} after {took:.2?} (bound {:?})",
        grace + STOP_MARGIN
    );
    assert_eq!(
        code,
        i32::from(EXIT_STOP_TIMEOUT),
        "{}",
        child.seen.join("\n")
    );
    assert!(
        took >= grace + STOP_MARGIN - Duration::from_millis(200)
            && took <= grace + STOP_MARGIN + Duration::from_secs(2),
        "the watchdog fired after {took:?}, not at grace + margin"
    );
    assert!(child.printed("still running after the shutdown bound"));
}

/// Child: runs until the signal fires, then never finishes stopping.
#[test]
fn child_slow_stop() {
    if child_mode().as_deref() != Some("slow_stop") {
        return;
    }
    child_service(Duration::from_secs(60), |shutdown| async move {
        println!("child running");
        shutdown.wait().await;
        println!("child stopping");
        std::future::pending::<Result<(), std::io::Error>>().await
    });
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let mut child = ChildProcess::start("child_slow_stop", "slow_stop");
    child.wait_line("child running", Duration::from_secs(30));
    child.sigterm();
    child.wait_line("child stopping", Duration::from_secs(5));
    // The log line comes on stderr, the child's println on stdout: two pipes read by
    // two threads, so either may be seen first.
    child.wait_line("shutdown signal received", Duration::from_secs(5));
    assert!(
        child.child.try_wait().unwrap().is_none(),
        "the first SIGTERM only starts the stop"
    );
    let second = Instant::now();
    child.sigterm();
    let (code, at) = child.exit_code(Duration::from_secs(10));
    let took = at - second;
    println!("second SIGTERM: exit {code} after {took:.2?}");
    assert_eq!(
        code,
        i32::from(EXIT_SECOND_SIGNAL),
        "{}",
        child.seen.join("\n")
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(child.printed("second signal: exiting at once"));
}

/// Child: stops cleanly on the signal (or fails), leaving a blocking task that never
/// ends.
#[test]
fn child_blocking_leftover() {
    let fail = match child_mode().as_deref() {
        Some("blocking_leftover") => false,
        Some("blocking_leftover_failing") => true,
        _ => return,
    };
    child_service(Duration::from_secs(60), move |shutdown| async move {
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(3600)));
        println!("child running");
        shutdown.wait().await;
        if fail {
            Err(std::io::Error::other("the final commit failed"))
        } else {
            Ok(())
        }
    });
}

#[test]
fn a_blocking_task_left_behind_does_not_hold_up_the_exit_and_the_status_says_how_run_ended() {
    for (mode, expected) in [
        ("blocking_leftover", 0),
        ("blocking_leftover_failing", i32::from(EXIT_FAILED)),
    ] {
        let mut child = ChildProcess::start("child_blocking_leftover", mode);
        child.wait_line("child running", Duration::from_secs(30));
        let sent = Instant::now();
        child.sigterm();
        let (code, at) = child.exit_code(Duration::from_secs(30));
        let took = at - sent;
        println!("{mode}: exit {code} after {took:.2?}");
        assert_eq!(code, expected, "{}", child.seen.join("\n"));
        assert!(
            took < RUNTIME_STOP_BUDGET + Duration::from_secs(2),
            "{mode}: took {took:?}"
        );
        if expected != 0 {
            assert!(child.printed("the final commit failed"));
        }
    }
}
