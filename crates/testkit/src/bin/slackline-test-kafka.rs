//! The tests' shared Apache Kafka broker, for `scripts/test`:
//!
//! ```text
//! slackline-test-kafka start   # start it unless it runs; print its bootstrap servers
//! slackline-test-kafka stop    # stop it (SIGTERM)
//! slackline-test-kafka status  # print its bootstrap servers, exit 1 when none runs
//! ```

use std::process::ExitCode;

use slackline_testkit::cluster;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("start") => match cluster::ensure_shared_broker() {
            Ok(bootstrap) => {
                println!("{bootstrap}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("slackline-test-kafka: {e}");
                ExitCode::FAILURE
            }
        },
        Some("stop") => {
            if cluster::stop_shared_broker() {
                eprintln!("stopped the test broker");
            }
            ExitCode::SUCCESS
        }
        Some("status") => match cluster::running_shared_broker() {
            Some((pid, bootstrap)) => {
                println!("{bootstrap} (pid {pid})");
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        _ => {
            eprintln!("usage: slackline-test-kafka start|stop|status");
            ExitCode::from(2)
        }
    }
}
