//! Test-only helpers for slackline's integration tests: Kafka ([`cluster::TestCluster`]:
//! the shared Apache Kafka broker, or the mock cluster for injected faults), a throwaway
//! [Garage] S3 server
//! per test, a recording SMTP sink ([`smtp::SmtpSink`]), a Slack Web API stand-in
//! ([`slack_api::SlackApiStandIn`], the `slackline-slack-stand-in` crate `slackline dev` runs too), [`free_port`] for loopback
//! listeners, and [`unique_name`] for topics, buckets and databases that must not
//! collide when cargo nextest runs tests in parallel processes.
//!
//! Everything here is blocking std code (processes, sockets, files) so that it works
//! from both sync and async tests. Nothing here is meant for production code: the
//! crate is a dev-dependency of the services and the CLI, never a dependency.

pub mod cluster;
mod garage;
pub mod kafka;
pub mod metrics;
pub mod postgres;
pub mod slack_api;
pub mod smtp;
pub mod webhook;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use garage::{garage_bin, Garage};

/// Everything that can go wrong while setting up or tearing down test infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// No `garage` binary was found where [`garage_bin`] looks for it.
    #[error(
        "garage binary not found ({searched}); run ./scripts/test, which installs it \
         (cargo install garage --locked), or set GARAGE_BIN to its path"
    )]
    GarageNotFound {
        /// The places that were searched, for the error message.
        searched: String,
    },
    /// An I/O operation on a file, directory, socket or process failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done when the error happened.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A `garage` CLI command ran but failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command line, for the error message.
        command: String,
        /// How the command ended (exit status, or "timed out").
        status: String,
        /// The command's stdout and stderr.
        output: String,
    },
    /// A `garage` CLI command printed something this crate could not understand.
    #[error("unexpected output from `{command}`: {output}")]
    UnexpectedOutput {
        /// The command line, for the error message.
        command: String,
        /// What it printed.
        output: String,
    },
    /// The Garage server process exited while it was expected to run.
    #[error("garage server exited early ({status}); log tail:\n{log_tail}")]
    ServerExited {
        /// The exit status of the server process.
        status: String,
        /// The last lines of the server's stdout/stderr log.
        log_tail: String,
    },
    /// Something did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}; garage log tail:\n{log_tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        waited: Duration,
        /// The last lines of the server's stdout/stderr log.
        log_tail: String,
    },
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A name unique across parallel tests and processes, such as
/// `"orders-48213-3-9f2c01ab"` (`{prefix}-{pid}-{counter}-{random hex}`), for topics,
/// buckets, consumer groups and databases.
///
/// The prefix is lower-cased and every character outside `[a-z0-9.-_]` becomes `-`,
/// so the result stays within `[a-z0-9.-_]`. Bucket names must not contain `_`, so
/// pass a prefix without one when naming buckets.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "{prefix}-{}-{counter}-{}",
        std::process::id(),
        random_hex(8)
    )
}

/// A free TCP port on 127.0.0.1: binds port 0, reads the port the kernel chose and
/// closes the socket again.
///
/// Another process may grab the port between this call and its use; callers that
/// cannot tolerate that rare race should retry with a new port.
///
/// # Panics
///
/// Panics if no loopback socket can be bound at all, which means the machine cannot
/// run network tests.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// `len` random lower-case hex characters. Not cryptographic (test material only), but
/// seeded from the OS per process and mixed with time, pid and a counter.
pub(crate) fn random_hex(len: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(nanos);
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out.truncate(len);
    out
}

/// The search path for an executable named `name`, in `PATH` order.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The shared Slack payload corpus (`events/` of `../shared/slack-corpus` beside the
/// project, or of `SLACKLINE_CORPUS_DIR`). `None` where it is absent, as in a user's
/// clone: the caller prints a notice and skips. Panics when `CI` is set and it is
/// absent, because CI always has it beside the clone and a moved path must not turn
/// the corpus tests into silent passes.
pub fn corpus_events_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("SLACKLINE_CORPUS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/slack-corpus")
        })
        .join("events");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but the slack corpus is missing at {}",
        dir.display()
    );
    eprintln!(
        "NOTICE: slack corpus not found (../shared/slack-corpus or SLACKLINE_CORPUS_DIR); skipping"
    );
    None
}

/// Waits until `cond` holds, polling every 25 ms; panics naming `what` after
/// `timeout`.
///
/// # Panics
///
/// When `cond` does not hold within `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_stay_in_charset() {
        let a = unique_name("My Topic/1");
        let b = unique_name("My Topic/1");
        assert_ne!(a, b);
        assert!(a.starts_with("my-topic-1-"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c)));
    }

    #[test]
    fn random_hex_has_requested_length() {
        for len in [0, 1, 16, 24, 64, 65] {
            let h = random_hex(len);
            assert_eq!(h.len(), len);
            assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        }
        assert_ne!(random_hex(64), random_hex(64));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port should be free");
    }
}
