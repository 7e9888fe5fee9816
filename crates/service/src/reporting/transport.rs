//! Sending Sentry envelopes with the workspace's `reqwest` (0.12, rustls): the
//! `sentry` crate's own HTTP transport would bring a second `reqwest` (0.13) and its
//! TLS stack into every service.
//!
//! One thread (`slackline-sentry`) owns a single-threaded tokio runtime and posts the
//! envelopes one at a time, in order, from a bounded queue ([`QUEUE`]); an envelope
//! that finds the queue full is dropped (and said so once in a while), so reporting
//! never holds up a service. [`Transport::flush`] queues a marker and waits for the
//! thread to reach it: everything queued before it has then been posted (answered, or
//! failed), or the timeout passed. Failures are logged at `warn`, never at `error`,
//! and nothing logged on this thread is reported (see `reporting`), so an unreachable
//! Sentry cannot feed itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentry::{Envelope, Transport, TransportFactory, TransportOptions};

/// The name of the sending thread.
pub(crate) const THREAD_NAME: &str = "slackline-sentry";

/// Envelopes waiting to be sent; more are dropped.
const QUEUE: usize = 100;

/// The longest one envelope's request may take (connecting included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

enum Task {
    Send(Box<Envelope>),
    /// Answered once every task queued before it is done.
    Flush(SyncSender<()>),
}

/// Builds a [`HttpTransport`] for the client's DSN.
pub(crate) struct HttpTransportFactory;

impl TransportFactory for HttpTransportFactory {
    fn create_transport_with_options(&self, options: TransportOptions) -> Arc<dyn Transport> {
        let url = options.dsn.envelope_api_url().to_string();
        let auth = options.dsn.to_auth(Some(&options.user_agent)).to_string();
        Arc::new(HttpTransport::start(url, auth))
    }
}

/// See the module docs.
pub(crate) struct HttpTransport {
    queue: Option<SyncSender<Task>>,
    dropped: AtomicU64,
}

impl HttpTransport {
    fn start(url: String, auth: String) -> HttpTransport {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let started = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())
            .and_then(|client| {
                std::thread::Builder::new()
                    .name(THREAD_NAME.to_owned())
                    .spawn(move || send_loop(&rx, &client, &url, &auth))
                    .map_err(|e| e.to_string())
            });
        let queue = match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the Sentry transport: nothing will be reported");
                None
            }
        };
        HttpTransport {
            queue,
            dropped: AtomicU64::new(0),
        }
    }
}

impl Transport for HttpTransport {
    fn send_envelope(&self, envelope: Envelope) {
        let Some(queue) = &self.queue else {
            return;
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            queue.try_send(Task::Send(Box::new(envelope)))
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "Sentry report queue full or closed: report dropped"
                );
            }
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let mut task = Task::Flush(done_tx);
        loop {
            match queue.try_send(task) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    task = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

fn send_loop(tasks: &Receiver<Task>, client: &reqwest::Client, url: &str, auth: &str) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the Sentry transport's runtime: nothing will be reported");
            return;
        }
    };
    let mut failures: u64 = 0;
    while let Ok(task) = tasks.recv() {
        let envelope = match task {
            Task::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Task::Send(envelope) => envelope,
        };
        let mut body = Vec::new();
        if envelope.to_writer(&mut body).is_err() {
            continue;
        }
        let request = client
            .post(url)
            .header("X-Sentry-Auth", auth)
            .header("Content-Type", "application/x-sentry-envelope")
            .body(body);
        let outcome = runtime.block_on(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            // Read the answer so that the connection can be reused.
            let _ = response.bytes().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            }
        });
        if let Err(reason) = outcome {
            failures += 1;
            if failures.is_power_of_two() {
                tracing::warn!(reason, failures, "cannot send a report to Sentry");
            }
        }
    }
}
