//! Reconciling a send whose outcome is unknown: before a reply is marked
//! `ambiguous` (no answer after the request left, an answer that may have posted, a
//! `sending` row left by a process that died mid-send), and again whenever an
//! `ambiguous` reply's record is delivered again (a redrive, a replay), the sender
//! asks Slack for the thread (`conversations.replies`,
//! [`crate::slack::SlackPoster::find_posted`]) and looks for our message whose
//! metadata names the reply id. Found: the reply is recorded `sent` with that
//! message's ts (`slackline_slack_sender_reconciled_total`). Not found, or Slack could
//! not be asked: it stays (or becomes) `ambiguous` and is never posted automatically,
//! since the post may still be in flight at Slack.

use slackline_consumer::HandlerError;
use slackline_events::Reply;
use uuid::Uuid;

use super::{db, Handler};

/// What the thread said about a reply.
#[derive(Debug)]
pub(super) enum Reconciled {
    /// Our message is in the thread; the row is `sent` with its ts (recorded now, or
    /// by someone else meanwhile).
    Found,
    /// Not in the thread, or Slack could not be asked: why, for the row's error.
    Unknown(String),
}

impl Handler {
    /// Looks for `reply` in its thread; when it is there, records the row (`sending`
    /// or `ambiguous` under `token`) `sent` with the message's ts.
    pub(super) async fn reconcile(
        &self,
        reply: &Reply,
        token: Option<Uuid>,
    ) -> Result<Reconciled, HandlerError> {
        let id = reply.reply_id.as_str();
        match self.poster.find_posted(reply).await {
            Ok(Some(ts)) => {
                let recorded = db(id, "recording the reply found in its thread", || {
                    self.store.mark_reconciled(id, token, &ts)
                })
                .await?;
                if let Some(token) = token {
                    self.forget(token);
                }
                if recorded {
                    self.metrics.reconciled();
                    tracing::info!(
                        ts,
                        "the reply was posted after all (found in its thread); recorded sent"
                    );
                } else {
                    tracing::info!(ts, "the reply is in its thread and was recorded meanwhile");
                }
                Ok(Reconciled::Found)
            }
            Ok(None) => Ok(Reconciled::Unknown(
                "not found in its thread (conversations.replies)".to_owned(),
            )),
            Err(why) => {
                tracing::warn!(
                    error = why,
                    "could not ask Slack whether the reply was posted"
                );
                Ok(Reconciled::Unknown(format!(
                    "its thread could not be checked: {why}"
                )))
            }
        }
    }
}
