//! Logs for every service: JSON lines by default (one object per event, with the
//! fields of the spans it happened in: event id, channel, offset), or text for a
//! terminal. Panics are logged before the default hook runs. Logs go to stderr, so
//! that a command's stdout (`slackline tail`) carries only data.

use std::str::FromStr;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber (filter from `RUST_LOG`, default `info`) and a
/// panic hook. A second call in the same process is a no-op, so tests may call it.
pub fn init_telemetry(service: &'static str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    if installed.is_ok() {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!(service, panic = %info, "panic");
            default_hook(info);
        }));
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            "telemetry started"
        );
    }
}
