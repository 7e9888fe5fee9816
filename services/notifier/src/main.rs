//! `slackline-notifier`: config, telemetry, run until SIGTERM.
//!
//! Exits 0 after a clean stop, 1 when it stopped with an error (including a final commit that could not be made), 2 on a
//! configuration error; and within the consumer runtime's shutdown grace plus
//! [`slackline_service::shutdown::STOP_MARGIN`] of the first SIGTERM whatever happens
//! (a second SIGTERM exits at once: see [`slackline_service::shutdown`]).

use std::process::ExitCode;

use slackline_service::{init_telemetry, run_service, Env};

// The margin covers the runtime's final commit.
const _: () = assert!(
    slackline_consumer::FINAL_COMMIT_BUDGET.as_secs()
        < slackline_service::shutdown::STOP_MARGIN.as_secs()
);

fn main() -> ExitCode {
    let config = match slackline_notifier::NotifierConfig::from_env(Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slackline-notifier: {e}");
            return ExitCode::from(2);
        }
    };
    init_telemetry("slackline-notifier", config.log_format);
    let grace = config.runtime.shutdown_grace;
    run_service("slackline-notifier", grace, |shutdown| {
        slackline_notifier::run(config, shutdown)
    })
}
