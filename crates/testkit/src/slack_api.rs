//! The Slack Web API stand-in ([`slackline_slack_stand_in`]) for tests: the same
//! stand-in `slackline dev` runs, with a [`SlackApiStandIn::start`] that panics when
//! no loopback port can be bound (a test cannot go on without it).

use std::ops::Deref;

pub use slackline_slack_stand_in::{
    Answer, Call, PostedMessage, STAND_IN_APP_ID, STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID,
};

/// A running stand-in; it stops when dropped. Derefs to
/// [`slackline_slack_stand_in::SlackApiStandIn`] (`base_url`, `script`, `calls`, ...).
pub struct SlackApiStandIn(slackline_slack_stand_in::SlackApiStandIn);

impl SlackApiStandIn {
    /// Starts the stand-in on a free loopback port.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> SlackApiStandIn {
        SlackApiStandIn(
            slackline_slack_stand_in::SlackApiStandIn::start()
                .await
                .expect("bind the Slack API stand-in"),
        )
    }

    /// Serves on `listener` (for a fixed port).
    ///
    /// # Panics
    ///
    /// When the listener has no local address.
    pub fn serve(listener: tokio::net::TcpListener) -> SlackApiStandIn {
        SlackApiStandIn(
            slackline_slack_stand_in::SlackApiStandIn::serve(listener).expect("stand-in address"),
        )
    }
}

impl Deref for SlackApiStandIn {
    type Target = slackline_slack_stand_in::SlackApiStandIn;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
