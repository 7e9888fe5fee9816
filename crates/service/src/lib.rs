//! The chassis every slackline service runs in.
//!
//! A service's `main` reads its config with [`env::Env`], calls
//! [`telemetry::init_telemetry`], and hands its testable `run(config, shutdown)` to
//! [`shutdown::run_service`] with its shutdown grace: SIGTERM fires the
//! [`shutdown::Shutdown`], and the process exits within the grace plus
//! [`shutdown::STOP_MARGIN`], non-zero when the stop was not clean. While running it serves `/metrics`, `/healthz` and
//! `/readyz` on a separate admin port ([`admin`]) so that probes and scrapes never
//! queue behind Slack traffic. Settings holding credentials write their `Debug`
//! through [`redact`], so a logged configuration carries no secret. With `SENTRY_DSN`
//! set, error-level events (each DLQ record among them) and panics are reported to
//! Sentry ([`reporting`]); [`run_service`] flushes the reports before the process exits.

pub mod admin;
pub mod env;
pub mod redact;
pub mod reporting;
pub mod shutdown;
pub mod telemetry;

pub use admin::{serve_admin, Readiness};
pub use env::{ConfigError, Env};
pub use shutdown::{run_service, Shutdown};
pub use telemetry::{init_telemetry, LogFormat};
