//! `slackline-timeline-writer`: config, telemetry, run until SIGTERM.

use anyhow::Context;
use slackline_service::{init_telemetry, Env, Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match slackline_timeline_writer::TimelineWriterConfig::from_env(Env::from_process())
    {
        Ok(config) => config,
        Err(e) => {
            eprintln!("slackline-timeline-writer: {e}");
            std::process::exit(2);
        }
    };
    init_telemetry("slackline-timeline-writer", config.log_format);
    let shutdown = Shutdown::on_signals();
    slackline_timeline_writer::run(config, shutdown)
        .await
        .context("slackline-timeline-writer failed")
}
