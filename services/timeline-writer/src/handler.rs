//! One record of `slack.messages.v1` in, one timeline entry out.

use slackline_consumer::{Event, HandlerError};
use slackline_events::decode_message;
use slackline_store::StoreError;
use sqlx::PgPool;

use crate::entry::Entry;
use crate::metrics::TimelineMetrics;
use crate::store::{self, Written};

/// Writes each message event's fact to the timeline, once.
#[derive(Debug, Clone)]
pub struct Handler {
    pool: PgPool,
    metrics: TimelineMetrics,
}

impl Handler {
    /// A handler writing to `pool` (whose `search_path` is the timeline schema).
    pub fn new(pool: PgPool, metrics: TimelineMetrics) -> Self {
        Handler { pool, metrics }
    }

    /// Decodes the record and writes its entry. A record that is not a message event
    /// is a permanent failure (to the DLQ); a database that is unreachable or timed
    /// out is a retryable one.
    ///
    /// # Errors
    ///
    /// As above.
    pub async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let message = decode_message(&event.payload)
            .map_err(|e| HandlerError::permanent(format!("not a message event: {e}")))?;
        let entry = Entry::from_event(&message);
        match store::write(&self.pool, &entry).await {
            Ok(Written::New) => {
                tracing::debug!(
                    kind = entry.kind,
                    fact = entry.fact,
                    ts = entry.ts,
                    "entry written"
                );
                self.metrics.written(entry.kind, entry.mode);
                Ok(())
            }
            Ok(Written::Duplicate) => {
                tracing::debug!(
                    kind = entry.kind,
                    fact = entry.fact,
                    ts = entry.ts,
                    "fact already in the timeline"
                );
                self.metrics.duplicate(entry.kind);
                Ok(())
            }
            Err(e) => {
                self.metrics.failure(e.is_retryable());
                Err(handler_error(&e))
            }
        }
    }
}

fn handler_error(error: &StoreError) -> HandlerError {
    if error.is_retryable() {
        HandlerError::retryable(format!("writing the timeline entry: {error}"))
    } else {
        HandlerError::permanent(format!("writing the timeline entry: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_retryable_or_permanent() {
        assert!(handler_error(&StoreError::Unavailable("gone".into())).is_retryable());
        assert!(!handler_error(&StoreError::Query("bad".into())).is_retryable());
    }
}
