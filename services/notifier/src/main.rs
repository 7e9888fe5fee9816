//! `slackline-notifier`: config, telemetry, run until SIGTERM.

use anyhow::Context;
use slackline_service::{init_telemetry, Env, Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match slackline_notifier::NotifierConfig::from_env(Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slackline-notifier: {e}");
            std::process::exit(2);
        }
    };
    init_telemetry("slackline-notifier", config.log_format);
    let shutdown = Shutdown::on_signals();
    slackline_notifier::run(config, shutdown)
        .await
        .context("slackline-notifier failed")
}
