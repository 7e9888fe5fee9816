//! Serves Slack's port over HTTP/1.1 with hyper directly, because `axum::serve` has
//! neither read timeouts nor a connection cap:
//!
//! * at most `EDGE_MAX_CONNECTIONS` open connections: one more is accepted and closed
//!   at once (the client sees a connection error and retries, as Slack does), so a
//!   flood costs an accept and a close, never a task or a hang;
//! * a request's headers must be complete within `EDGE_HEADER_READ_TIMEOUT_MS` of the
//!   accept (first request) or of the request's first byte (later ones), else the
//!   connection is closed;
//! * a keep-alive connection with no request in progress is closed after
//!   `EDGE_IDLE_TIMEOUT_MS`.
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as a keep-alive
//! connection turns idle, so it would also close idle connections after a few
//! seconds, and a load balancer reusing one would get an error in place of an answer.
//! A watchdog per connection enforces both timeouts from what the connection is
//! doing. The body's timeout and the in-flight limit are in the handler's layers,
//! where the request is known.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::Limits;
use crate::metrics::{EdgeMetrics, GaugeGuard};
use crate::throttle::{Throttle, WARN_EVERY};

/// Serves `app` on `listener` until `signal` completes, then stops accepting, lets
/// every connection finish the request it is in (idle ones close at once) and
/// returns when all are closed. The caller bounds that wait (the shutdown grace).
pub(crate) async fn serve<F>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: EdgeMetrics,
    signal: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        app,
        limits,
        metrics,
        refused: Throttle::new(WARN_EVERY),
        slow_headers: Throttle::new(WARN_EVERY),
    });
    // Dropped when the signal comes: every connection then shuts down gracefully.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut signal = pin!(signal);
    loop {
        let accepted = tokio::select! {
            () = &mut signal => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            shared.metrics.connection_refused();
            if let Some(count) = shared.refused.hit() {
                tracing::warn!(
                    refused = count,
                    max_connections = limits.max_connections,
                    "closed new connections at once: EDGE_MAX_CONNECTIONS are open (count since the last such warning)"
                );
            }
            drop(stream);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::trace!(error = %e, "TCP_NODELAY not set");
        }
        // Counted here, with its permit, so that the gauge never lags the cap.
        let open = Open {
            _permit: permit,
            _counted: shared.metrics.connection_opened(),
        };
        tokio::spawn(serve_connection(
            stream,
            shared.clone(),
            stop_rx.clone(),
            open,
        ));
    }
    drop(listener);
    drop(stop_rx);
    drop(stop_tx);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _all_closed = connections.acquire_many(all).await;
    Ok(())
}

/// An open connection's slot under `EDGE_MAX_CONNECTIONS` and its count in the gauge,
/// both given back when the connection's task ends.
struct Open {
    _permit: OwnedSemaphorePermit,
    _counted: GaugeGuard,
}

/// What every connection task shares.
struct Shared {
    app: Router,
    limits: Limits,
    metrics: EdgeMetrics,
    refused: Throttle,
    slow_headers: Throttle,
}

/// An error from `accept` is about that connection or about the process (out of
/// file descriptors): log it and, for the latter, pause before accepting again
/// rather than spin (what hyper and axum do too).
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        tracing::debug!(error = %e, "connection failed before it was accepted");
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<()>,
    _open: Open,
) {
    let clock = Arc::new(Clock::new());
    let io = TokioIo::new(ClockedStream {
        inner: stream,
        clock: clock.clone(),
    });
    let service = hyper::service::service_fn({
        let clock = clock.clone();
        let app = shared.app.clone();
        move |request: hyper::Request<Incoming>| {
            clock.busy();
            let clock = clock.clone();
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                clock.idle();
                response
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below enforces the header timeout (see the module's doc).
    builder.header_read_timeout(None);
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut draining = false;
    loop {
        // Created before the deadline is read, so that no change is missed.
        let changed = clock.changed.notified();
        let (phase, expires) = clock.expiry(&shared.limits);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = changed => {}
            () = sleep_until(expires) => {
                if clock.expiry(&shared.limits) != (phase, expires) {
                    continue;
                }
                if phase == Phase::Head {
                    shared.metrics.read_timed_out("header");
                    tracing::debug!("closed a connection: request headers not complete in time");
                    if let Some(count) = shared.slow_headers.hit() {
                        tracing::warn!(
                            closed = count,
                            timeout_ms = shared.limits.header_read_timeout.as_millis() as u64,
                            "closed connections whose request headers did not arrive within EDGE_HEADER_READ_TIMEOUT_MS (count since the last such warning)"
                        );
                    }
                }
                // Dropping the connection closes the socket.
                return;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's headers to be complete.
    Head,
    /// A request is being handled (its body timeout and deadline are the handler's).
    Busy,
    /// Between requests.
    Idle,
}

struct Clock {
    state: Mutex<(Phase, Instant)>,
    changed: Notify,
}

impl Clock {
    /// A new connection waits for its first request's headers from now.
    fn new() -> Clock {
        Clock {
            state: Mutex::new((Phase::Head, Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, phase: Phase) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = (phase, Instant::now());
        self.changed.notify_one();
    }

    fn busy(&self) {
        self.set(Phase::Busy);
    }

    fn idle(&self) {
        self.set(Phase::Idle);
    }

    /// Bytes arrived: on an idle connection, they start a request's headers.
    fn bytes_read(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 == Phase::Idle {
            *state = (Phase::Head, Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// The current phase and when it runs out, if it can.
    fn expiry(&self, limits: &Limits) -> (Phase, Option<Instant>) {
        let (phase, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = match phase {
            Phase::Head => Some(limits.header_read_timeout),
            Phase::Idle => Some(limits.idle_timeout),
            Phase::Busy => None,
        };
        (phase, limit.map(|limit| since + limit))
    }
}

/// The accepted socket, telling its [`Clock`] when bytes arrive.
struct ClockedStream {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for ClockedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for ClockedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
