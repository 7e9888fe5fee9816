//! One shutdown signal per process, passed into every task, and the bound on how
//! long a service may take to stop once it fired.
//!
//! A service's `main` hands its `run(config, shutdown)` to [`run_service`] with its
//! shutdown grace: ctrl-c or SIGTERM fire the signal, the service stops within its
//! grace, and the process exits 0 when it stopped cleanly, 1 when it stopped with an
//! error (a final commit that could not be made included). Two backstops, each on a
//! plain thread of its own so that no wedged task or runtime can hold them up:
//!
//! - **a second signal** (ctrl-c or SIGTERM after the first) exits at once with
//!   [`EXIT_SECOND_SIGNAL`]: an operator who asks twice gets the process gone
//!   (pending Sentry reports are not flushed then);
//! - **the watchdog**: once the signal has fired (by a signal or because a task
//!   failed), a process still running after its grace plus [`STOP_MARGIN`] logs an
//!   error and exits with [`EXIT_STOP_TIMEOUT`], whatever Kafka and PostgreSQL are
//!   doing.
//!
//! So a service's documented bound is: exits within `grace + STOP_MARGIN` of the
//! first SIGTERM. Tests build the signal with [`Shutdown::new`] and call
//! [`Shutdown::trigger`]; any task may trigger it when it fails, so that one failing
//! task stops the rest and the process exits non-zero (Kubernetes then restarts it).

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What a service may take beyond its grace to stop, as a fixed margin: the last
/// step after the grace (a consumer's final commit and leaving the group, bounded by
/// `slackline_consumer::FINAL_COMMIT_BUDGET` = 5 s; the edge's producer flush, also
/// 5 s), then [`RUNTIME_STOP_BUDGET`] for the runtime's remaining tasks, then
/// [`crate::reporting::FLUSH_BUDGET`] (1 s) for pending Sentry reports when Sentry is
/// configured, and 1 s of slack for a loaded machine. Keep a pod's `terminationGracePeriodSeconds` above
/// its `preStop` plus grace plus this margin.
pub const STOP_MARGIN: Duration = Duration::from_secs(8);

/// How long [`run_service`] lets the tokio runtime's remaining tasks (blocking ones
/// included) finish after `run` returned, before the process exits anyway.
pub const RUNTIME_STOP_BUDGET: Duration = Duration::from_secs(1);

/// The exit status of a service that stopped with an error, including a final
/// commit that could not be made (what it had committed before stays; the rest is
/// handled again after the restart).
pub const EXIT_FAILED: u8 = 1;

/// The exit status when the watchdog ended a process still running `grace +`
/// [`STOP_MARGIN`] after the shutdown signal (as `timeout(1)` does).
pub const EXIT_STOP_TIMEOUT: u8 = 124;

/// The exit status when a second ctrl-c or SIGTERM ended the process at once.
pub const EXIT_SECOND_SIGNAL: u8 = 130;

/// A cloneable, level-triggered shutdown signal.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that fires only when triggered.
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// The signal of a service process, for [`run_service`] (which calls it): ctrl-c
    /// and SIGTERM fire it, a second one exits the process at once
    /// ([`EXIT_SECOND_SIGNAL`]), and once it has fired, for whatever reason, a
    /// watchdog exits the process ([`EXIT_STOP_TIMEOUT`]) if it still runs
    /// `grace +` [`STOP_MARGIN`] later. The signals are listened to on a thread of
    /// their own (with a runtime of its own), the watchdog is a plain thread: neither
    /// depends on the service's runtime making progress. The signal handlers are
    /// installed before this returns. Call it once per process.
    pub fn for_service(service: &'static str, grace: Duration) -> Self {
        let shutdown = Self::new();
        let bound = grace.saturating_add(STOP_MARGIN);
        match SignalListener::install() {
            Ok(listener) => {
                let trigger = shutdown.clone();
                spawn_thread("slackline-signals", move || {
                    listener.run(service, grace, bound, &trigger);
                });
            }
            // Without handlers, SIGTERM keeps its default action: the process ends
            // at once, without a clean stop.
            Err(e) => tracing::error!(service, error = %e, "cannot listen for SIGTERM and ctrl-c"),
        }
        let watched = shutdown.clone();
        spawn_thread("slackline-watchdog", move || {
            watchdog(service, &watched, bound)
        });
        shutdown
    }

    /// A signal that also fires on ctrl-c or SIGTERM (once; later signals are
    /// ignored). Must be called inside a runtime. Service binaries use
    /// [`run_service`] instead, which bounds the stop.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            trigger.trigger();
        });
        shutdown
    }

    /// Fires the signal (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once the signal has fired.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // The sender lives as long as any clone of `self`, so this cannot close early.
        let _ = rx.wait_for(|fired| *fired).await;
    }

    /// Runs `work` until it completes, or until the signal fires (then `None`, and
    /// `work` is dropped where it was): for start-up steps that do not watch the
    /// signal themselves, such as connecting to a database that does not answer, so
    /// that a SIGTERM during the start stops the process at once.
    pub async fn unless_fired<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            output = work => Some(output),
            () = self.wait() => None,
        }
    }
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.to_owned()).spawn(f) {
        tracing::error!(thread = name, error = %e, "cannot start a shutdown thread");
    }
}

/// Once `shutdown` has fired, waits `bound`, then ends the process: a service
/// still running then is stuck (brokers or database unreachable in a way its own
/// timeouts did not cover), and only a restart helps. With Sentry configured it
/// logs [`crate::reporting::FLUSH_BUDGET`] earlier and flushes the reports (this
/// error among them) within that budget, so the exit still comes at `bound`.
fn watchdog(service: &'static str, shutdown: &Shutdown, bound: Duration) {
    futures::executor::block_on(shutdown.wait());
    let flush = if crate::reporting::enabled() {
        crate::reporting::FLUSH_BUDGET.min(bound)
    } else {
        Duration::ZERO
    };
    std::thread::sleep(bound - flush);
    tracing::error!(
        service,
        bound_ms = millis(bound),
        exit_code = EXIT_STOP_TIMEOUT,
        "still running after the shutdown bound (grace + margin): exiting without finishing the stop"
    );
    if !flush.is_zero() {
        crate::reporting::flush(flush);
        crate::reporting::log_dropped(service);
    }
    std::process::exit(i32::from(EXIT_STOP_TIMEOUT));
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// SIGTERM and ctrl-c, registered on a current-thread runtime that the
/// `slackline-signals` thread then drives.
struct SignalListener {
    runtime: tokio::runtime::Runtime,
    signals: Signals,
}

struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// The next SIGTERM or ctrl-c, by name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "ctrl-c",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

impl SignalListener {
    /// Builds the runtime and installs the handlers (from here on, SIGTERM no longer
    /// ends the process by its default action).
    fn install() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        #[cfg(unix)]
        let signals = {
            use tokio::signal::unix::{signal, SignalKind};
            let _entered = runtime.enter();
            Signals {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            }
        };
        #[cfg(not(unix))]
        let signals = Signals {};
        Ok(SignalListener { runtime, signals })
    }

    /// The first signal fires `shutdown`; the second ends the process.
    fn run(self, service: &'static str, grace: Duration, bound: Duration, shutdown: &Shutdown) {
        let SignalListener {
            runtime,
            mut signals,
        } = self;
        runtime.block_on(async {
            let first = signals.next().await;
            tracing::info!(
                service,
                signal = first,
                grace_ms = millis(grace),
                bound_ms = millis(bound),
                "shutdown signal received"
            );
            shutdown.trigger();
            let second = signals.next().await;
            tracing::error!(
                service,
                signal = second,
                exit_code = EXIT_SECOND_SIGNAL,
                "second signal: exiting at once without finishing the stop"
            );
            std::process::exit(i32::from(EXIT_SECOND_SIGNAL));
        });
    }
}

/// The `main` of a service binary, after its config is read and telemetry set up:
/// builds the tokio runtime, runs `run` with a [`Shutdown::for_service`] signal
/// bounded by `grace`, then gives the runtime's remaining tasks
/// [`RUNTIME_STOP_BUDGET`] (dropping it would wait for blocking tasks without
/// limit). Exits 0 when `run` returned `Ok`, else logs the error with its causes
/// and exits [`EXIT_FAILED`]; the backstops may exit earlier (see the module docs).
/// Last, it flushes pending Sentry reports (the final log line included), bounded by
/// [`crate::reporting::FLUSH_BUDGET`]: the process exits without dropping anything,
/// so nothing else would send them; then it logs how many reports were dropped, if
/// any ([`crate::reporting::dropped_reports`]).
pub fn run_service<F, Fut, E>(service: &'static str, grace: Duration, run: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(service, error = %e, "cannot start the tokio runtime");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let shutdown = Shutdown::for_service(service, grace);
    // A panic out of `run` (its own, not a task's) ends the process: its report is
    // flushed first, as at a normal end.
    let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run(shutdown.clone()))
    })) {
        Ok(result) => result,
        Err(panic) => {
            runtime.shutdown_timeout(RUNTIME_STOP_BUDGET);
            crate::reporting::flush(crate::reporting::FLUSH_BUDGET);
            std::panic::resume_unwind(panic);
        }
    };
    let stopping = Instant::now();
    runtime.shutdown_timeout(RUNTIME_STOP_BUDGET);
    if stopping.elapsed() >= RUNTIME_STOP_BUDGET {
        tracing::warn!(
            service,
            "left tasks still running after {RUNTIME_STOP_BUDGET:?}"
        );
    }
    let code = match result {
        Ok(()) => {
            tracing::info!(service, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(service, error = %chain(&e), "stopped with an error");
            ExitCode::from(EXIT_FAILED)
        }
    };
    if !crate::reporting::flush(crate::reporting::FLUSH_BUDGET) {
        tracing::warn!(
            service,
            "Sentry reports still unsent after {:?}",
            crate::reporting::FLUSH_BUDGET
        );
    }
    crate::reporting::log_dropped(service);
    code
}

/// `error: cause: cause`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // `#[error(transparent)]` and `{0}` wrappers repeat their source.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_see_the_trigger() {
        let s = Shutdown::new();
        let c = s.clone();
        assert!(!c.is_triggered());
        let waiter = tokio::spawn(async move { c.wait().await });
        s.trigger();
        waiter.await.unwrap();
        assert!(s.is_triggered());
        s.wait().await; // already fired: returns at once
    }

    #[tokio::test]
    async fn unless_fired_gives_up_on_work_when_the_signal_fires() {
        let s = Shutdown::new();
        assert_eq!(s.unless_fired(async { 7 }).await, Some(7));
        let trigger = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            trigger.trigger();
        });
        let never = std::future::pending::<()>();
        assert_eq!(s.unless_fired(never).await, None);
    }

    #[test]
    fn errors_are_logged_with_their_causes_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("consumer runtime stopped uncleanly")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("the final commit failed"));
        assert_eq!(
            chain(&e),
            "consumer runtime stopped uncleanly: the final commit failed"
        );
    }
}
