//! `slackline-thread-state`: config, telemetry, run until SIGTERM.

use anyhow::Context;
use slackline_service::{init_telemetry, Env, Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match slackline_thread_state::ThreadStateConfig::from_env(Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slackline-thread-state: {e}");
            std::process::exit(2);
        }
    };
    init_telemetry("slackline-thread-state", config.log_format);
    let shutdown = Shutdown::on_signals();
    slackline_thread_state::run(config, shutdown)
        .await
        .context("slackline-thread-state failed")
}
