//! What a handler is given, and what it answers.

use std::time::Duration;

/// Record headers in order: a name may repeat, and a value may be null.
pub type HeaderList = Vec<(String, Option<Vec<u8>>)>;

/// One record of the source topic, as the handler sees it.
///
/// Whether it comes straight from the source topic or from the group's retry topic,
/// the coordinates, key, headers and payload are those of the ORIGINAL record in the
/// source topic: the runtime's own retry headers are stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The source topic.
    pub topic: String,
    /// The partition in the source topic.
    pub partition: i32,
    /// The offset in the source topic.
    pub offset: i64,
    /// The record's timestamp in the source topic (ms since the epoch), if any.
    pub timestamp_ms: Option<i64>,
    /// The record key (for slackline topics: the channel id).
    pub key: Option<Vec<u8>>,
    /// The record headers, in order (a header may repeat, and may have no value).
    pub headers: HeaderList,
    /// The record value (empty for a null value).
    pub payload: Vec<u8>,
    /// How many delivery rounds failed before this one: 0 for the first delivery, `n`
    /// for the n-th delayed retry. Quick in-process retries within a round share its
    /// number. After a restart it starts again from the retry record's header.
    pub attempt: u32,
}

impl Event {
    /// The first value of header `name`, if present and not null.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The first value of header `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The key as UTF-8 text (lossy), or an empty string for a null key.
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        match &self.key {
            Some(k) => String::from_utf8_lossy(k),
            None => std::borrow::Cow::Borrowed(""),
        }
    }
}

/// A handler's failure, saying whether trying again later may succeed.
///
/// The one bit decides the path: a retryable error is retried (quickly in process,
/// then through the retry topic with growing delays, with the key parked behind it);
/// a permanent one goes to the DLQ at once and the key moves on.
///
/// A retryable error may also say how long the key must wait at least
/// ([`HandlerError::with_retry_after`]: a 429's `Retry-After`). Only that key waits:
/// up to [`MAX_IN_PROCESS_RETRY_AFTER`] in process (the handler slot stays taken, the
/// other keys keep running on the other slots), longer in the retry topic, whose
/// not-before time is then at least that far away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// The longest [`HandlerError::with_retry_after`] a key waits out in process (a
/// quick retry); a longer one sends the record to the retry topic at once, its
/// not-before time that far away, freeing the handler slot meanwhile.
pub const MAX_IN_PROCESS_RETRY_AFTER: Duration = Duration::from_secs(5);

impl HandlerError {
    /// A failure worth retrying (a dependency is down, a timeout, a 5xx, a 429).
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    /// A failure no retry will fix (the event cannot be understood or applied).
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// The least time before the record may be tried again (a retryable error
    /// only; ignored on a permanent one): the quick retry waits at least this, and a
    /// retry round's not-before time is at least this far away.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The wait asked for with [`HandlerError::with_retry_after`], if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after.filter(|_| self.retryable)
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}
