//! Logs for every service: JSON lines by default (one object per event, with the
//! fields of the spans it happened in: event id, channel, offset), or text for a
//! terminal. Panics are logged before the default hook runs. Logs go to stderr, so
//! that a command's stdout (`slackline tail`) carries only data. With `SENTRY_DSN`
//! set, error-level events and panics are also reported to Sentry ([`crate::reporting`]).

use std::str::FromStr;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::env::Env;
use crate::reporting::{self, SentrySettings};

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-readable lines (local runs).
    Text,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(format!("expected json or text, got {other:?}")),
        }
    }
}

/// Installs the global subscriber (filter from `RUST_LOG`, default `info`; `log`
/// records are bridged into it) and a panic hook (which logs the panic and, with
/// Sentry on, queues its report), and starts Sentry reporting when `SENTRY_DSN` is set (not when it is
/// unset or empty: see [`crate::reporting`]). A second call in the same process is a
/// no-op, so tests may call it.
///
/// A Sentry setting that is set but invalid (`SENTRY_DSN` that does not parse,
/// `SENTRY_INCLUDE_ERROR_TEXT` not a boolean) is a configuration error: the process
/// exits with status 2 after saying which, as services do for their own settings.
pub fn init_telemetry(service: &'static str, format: LogFormat) {
    let mut env = Env::from_process();
    let sentry = SentrySettings::from_env(&mut env);
    if let Err(e) = env.finish() {
        eprintln!("{service}: {e}");
        std::process::exit(2);
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let reports = sentry.as_ref().map(|_| reporting::layer());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .with(reports)
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(reports)
            .try_init(),
    };
    if installed.is_ok() {
        if let Some(settings) = sentry {
            reporting::start(service, settings);
        }
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Not reported as an error event: the next line reports the panic.
            tracing::error!(target: reporting::PANIC_LOG_TARGET, service, panic = %info, "panic");
            // Queued, not waited for: the panicking thread goes on at once (the
            // queue is flushed when the process exits).
            reporting::report_panic(info);
            default_hook(info);
        }));
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            sentry = reporting::enabled(),
            "telemetry started"
        );
    }
}
