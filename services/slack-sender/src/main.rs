//! `slackline-slack-sender`: config, telemetry, run until SIGTERM.
//!
//! Exits 0 after a clean stop, 1 when it stopped with an error (including a final
//! commit that could not be made), 2 on a configuration error; and within the
//! consumer runtime's shutdown grace plus
//! [`slackline_service::shutdown::STOP_MARGIN`] of the first SIGTERM whatever happens.

use std::process::ExitCode;

use slackline_service::{init_telemetry, run_service, Env};

fn main() -> ExitCode {
    let config = match slackline_slack_sender::SlackSenderConfig::from_env(Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slackline-slack-sender: {e}");
            return ExitCode::from(2);
        }
    };
    init_telemetry("slackline-slack-sender", config.log_format);
    let grace = config.runtime.shutdown_grace;
    run_service("slackline-slack-sender", grace, |shutdown| {
        slackline_slack_sender::run(config, shutdown)
    })
}
