//! `slackline-edge`: config, telemetry, run until SIGTERM.
//!
//! Exits 0 after a clean stop, 1 when it stopped with an error (including a producer flush left incomplete), 2 on a
//! configuration error; and within `EDGE_SHUTDOWN_GRACE_MS` plus
//! [`slackline_service::shutdown::STOP_MARGIN`] of the first SIGTERM whatever happens
//! (a second SIGTERM exits at once: see [`slackline_service::shutdown`]).

use std::process::ExitCode;

use slackline_service::{init_telemetry, run_service, Env};

// The margin covers the producer flush after the grace.
const _: () = assert!(
    slackline_edge::FLUSH_BUDGET.as_secs() < slackline_service::shutdown::STOP_MARGIN.as_secs()
);

fn main() -> ExitCode {
    let config = match slackline_edge::EdgeConfig::from_env(Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slackline-edge: {e}");
            return ExitCode::from(2);
        }
    };
    init_telemetry("slackline-edge", config.log_format);
    let grace = config.shutdown_grace;
    run_service("slackline-edge", grace, |shutdown| {
        slackline_edge::run(config, shutdown)
    })
}
