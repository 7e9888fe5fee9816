//! 401s are logged at debug each, with one warning per minute carrying the count, so
//! that a scanner cannot flood the logs; the metric still counts every one. Its own
//! test binary: it installs a process-wide subscriber that records the edge's logs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};

use helpers::*;
use slackline_archive::S3Settings;

/// Every formatted log line, in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_401_is_logged_at_debug_and_warned_about_once_with_the_count() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("slackline_edge=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let cluster = kafka_cluster();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let (edge, _shutdown) = start_edge(config(
        &cluster.bootstrap_servers(),
        &cluster.names().raw_events(),
        &url,
        S3Settings::default(),
    ))
    .await;
    let http = reqwest::Client::new();
    let n = 40;
    for i in 0..n {
        let body = message_event("C1", &format!("Ev401x{i}"), "hello");
        let response = post_signed(&http, edge.addr, &body, "wrong-secret", now(), &[]).await;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(
        counter(
            &edge,
            "slackline_edge_signature_failures_total",
            Some(("reason", "mismatch"))
        ),
        n
    );

    let lines = captured.lines();
    let refusals: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("refused a request"))
        .collect();
    assert_eq!(refusals.len() as u64, n, "one line per 401: {refusals:#?}");
    assert!(
        refusals.iter().all(|l| l.contains(" DEBUG ")),
        "each 401 at debug, not above: {refusals:#?}"
    );
    let warnings: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" WARN ") && l.contains("refused requests with 401"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the burst (the next after a minute): {warnings:#?}"
    );
    assert!(warnings[0].contains("refused=1"), "{}", warnings[0]);
}
