//! The handler the consumer runtime calls once per message event: apply the fact in
//! one transaction, then publish the channel's unpublished transitions.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use slackline_consumer::{Event, HandlerError};
use slackline_events::{decode_message, encode_thread_event, ThreadEvent};
use slackline_kafka::headers;
use slackline_store::{with_retries, StoreError};
use sqlx::PgPool;

use crate::apply;
use crate::config::Grouping;
use crate::metrics::ThreadStateMetrics;
use crate::store;

/// Attempts (and the pause between them) of a database step inside one handler call,
/// for short blips such as a terminated connection, before the runtime's own retries.
const DB_ATTEMPTS: u32 = 3;
const DB_PAUSE: Duration = Duration::from_millis(50);

/// Header on thread events naming the transition (the consumers' deduplication key).
pub const TRANSITION_ID_HEADER: &str = "transition-id";

/// Everything a handler call needs.
pub(crate) struct Handler {
    pub(crate) pool: PgPool,
    pub(crate) producer: FutureProducer,
    pub(crate) topic: String,
    pub(crate) delivery_timeout: Duration,
    pub(crate) grouping: Grouping,
    pub(crate) metrics: ThreadStateMetrics,
}

fn store_error(what: &str, e: StoreError) -> HandlerError {
    let message = format!("{what}: {e}");
    if e.is_retryable() {
        HandlerError::retryable(message)
    } else {
        HandlerError::permanent(message)
    }
}

impl Handler {
    /// Handles one record of `slack.messages.v1`.
    pub(crate) async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let message = decode_message(&event.payload)
            .map_err(|e| HandlerError::permanent(format!("undecodable message event: {e}")))?;
        let applied = with_retries(DB_ATTEMPTS, DB_PAUSE, || {
            apply::apply(&self.pool, &self.grouping, &message)
        })
        .await
        .map_err(|e| store_error("applying the fact", e))?;
        if applied.duplicate {
            self.metrics.fact("duplicate");
        } else {
            let outcome = if applied.thread_id.is_some() {
                "threaded"
            } else {
                "unthreaded"
            };
            self.metrics.fact(outcome);
            for cause in &applied.causes {
                self.metrics.transition(cause);
            }
        }
        tracing::debug!(
            fact = %message.fact(),
            duplicate = applied.duplicate,
            thread_id = applied.thread_id.as_deref().unwrap_or(""),
            causes = ?applied.causes,
            "fact applied"
        );
        // Also after a duplicate: the earlier attempt may have stopped between its
        // commit and the produce.
        match message.channel_id.as_deref() {
            Some(channel) if !channel.is_empty() => {
                self.publish_pending(&message.team_id, channel).await
            }
            _ => Ok(()),
        }
    }

    /// Publishes the channel's transitions that Kafka has not acknowledged yet, in the
    /// order they were committed, and marks each one once acknowledged.
    async fn publish_pending(&self, team_id: &str, channel_id: &str) -> Result<(), HandlerError> {
        let pending = with_retries(DB_ATTEMPTS, DB_PAUSE, || {
            store::unpublished(&self.pool, team_id, channel_id)
        })
        .await
        .map_err(|e| store_error("reading unpublished transitions", e))?;
        for thread_event in pending {
            self.produce(&thread_event).await?;
            self.metrics.published();
            with_retries(DB_ATTEMPTS, DB_PAUSE, || {
                store::mark_published(&self.pool, &thread_event.transition_id)
            })
            .await
            .map_err(|e| store_error("marking a transition published", e))?;
        }
        Ok(())
    }

    async fn produce(&self, thread_event: &ThreadEvent) -> Result<(), HandlerError> {
        let payload = encode_thread_event(thread_event).map_err(|e| {
            HandlerError::permanent(format!(
                "encoding thread event {}: {e}",
                thread_event.transition_id
            ))
        })?;
        let record = FutureRecord::to(&self.topic)
            .key(&thread_event.channel_id)
            .payload(&payload)
            .headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: TRANSITION_ID_HEADER,
                        value: Some(thread_event.transition_id.as_str()),
                    })
                    .insert(Header {
                        key: headers::EVENT_ID,
                        value: Some(thread_event.trigger_event_id.as_str()),
                    }),
            );
        match self
            .producer
            .send(record, Timeout::After(self.delivery_timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                self.metrics.publish_failed();
                Err(HandlerError::retryable(format!(
                    "publishing thread event {} to {}: {e}",
                    thread_event.transition_id, self.topic
                )))
            }
        }
    }
}
