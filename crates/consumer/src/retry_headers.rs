//! The headers the runtime adds to a record it hands to the group's retry topic. They
//! come first; the original record's headers follow unchanged, so the handler (and a
//! redrive) sees exactly the original headers again.

use rdkafka::message::{Header, Headers, OwnedHeaders};

use crate::{Event, HeaderList};

/// How many delivery rounds of the event failed so far (0: moved only to stay behind
/// an earlier event of its key).
pub const ATTEMPT: &str = "slackline-retry-attempt";
/// Not before this time (unix ms) may the event be handled again.
pub const NOT_BEFORE: &str = "slackline-retry-not-before";
/// The error of the first failed round (absent for attempt 0).
pub const FIRST_ERROR: &str = "slackline-retry-first-error";
/// The error of the last failed round (absent for attempt 0).
pub const LAST_ERROR: &str = "slackline-retry-last-error";
/// The source topic of the original record.
pub const ORIGINAL_TOPIC: &str = "slackline-original-topic";
/// The source partition of the original record.
pub const ORIGINAL_PARTITION: &str = "slackline-original-partition";
/// The source offset of the original record.
pub const ORIGINAL_OFFSET: &str = "slackline-original-offset";
/// The timestamp (unix ms) of the original record, when it had one.
pub const ORIGINAL_TIMESTAMP: &str = "slackline-original-timestamp";

const OURS: [&str; 8] = [
    ATTEMPT,
    NOT_BEFORE,
    FIRST_ERROR,
    LAST_ERROR,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
];

/// The retry state of an event, as carried in the headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RetryMeta {
    pub(crate) attempt: u32,
    pub(crate) not_before_ms: i64,
    pub(crate) first_error: Option<String>,
    pub(crate) last_error: Option<String>,
}

/// The headers of a retry record for `event` (its coordinates are the original's).
pub(crate) fn encode(event: &Event, meta: &RetryMeta) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(8 + event.headers.len());
    let attempt = meta.attempt.to_string();
    let not_before = meta.not_before_ms.to_string();
    let partition = event.partition.to_string();
    let offset = event.offset.to_string();
    h = add(h, ATTEMPT, Some(attempt.as_bytes()));
    h = add(h, NOT_BEFORE, Some(not_before.as_bytes()));
    if let Some(e) = &meta.first_error {
        h = add(h, FIRST_ERROR, Some(clip(e, ERROR_HEADER_MAX).as_bytes()));
    }
    if let Some(e) = &meta.last_error {
        h = add(h, LAST_ERROR, Some(clip(e, ERROR_HEADER_MAX).as_bytes()));
    }
    h = add(h, ORIGINAL_TOPIC, Some(event.topic.as_bytes()));
    h = add(h, ORIGINAL_PARTITION, Some(partition.as_bytes()));
    h = add(h, ORIGINAL_OFFSET, Some(offset.as_bytes()));
    if let Some(ts) = event.timestamp_ms {
        let ts = ts.to_string();
        h = add(h, ORIGINAL_TIMESTAMP, Some(ts.as_bytes()));
    }
    for (k, v) in &event.headers {
        h = add(h, k, v.as_deref());
    }
    h
}

fn add(h: OwnedHeaders, key: &str, value: Option<&[u8]>) -> OwnedHeaders {
    h.insert(Header { key, value })
}

/// Splits a retry record's headers into the retry state, the original coordinates
/// (topic, partition, offset, timestamp) when present, and the original headers.
pub(crate) fn decode<H: Headers>(headers: Option<&H>) -> Decoded {
    let mut d = Decoded::default();
    let Some(headers) = headers else {
        return d;
    };
    for h in headers.iter() {
        let text = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
        match h.key {
            ATTEMPT => d.meta.attempt = text.and_then(|t| t.parse().ok()).unwrap_or(0),
            NOT_BEFORE => d.meta.not_before_ms = text.and_then(|t| t.parse().ok()).unwrap_or(0),
            FIRST_ERROR => d.meta.first_error = text,
            LAST_ERROR => d.meta.last_error = text,
            ORIGINAL_TOPIC => d.topic = text,
            ORIGINAL_PARTITION => d.partition = text.and_then(|t| t.parse().ok()),
            ORIGINAL_OFFSET => d.offset = text.and_then(|t| t.parse().ok()),
            ORIGINAL_TIMESTAMP => d.timestamp_ms = text.and_then(|t| t.parse().ok()),
            key => {
                debug_assert!(!OURS.contains(&key));
                d.headers
                    .push((key.to_owned(), h.value.map(<[u8]>::to_vec)));
            }
        }
    }
    d
}

/// A decoded retry record's headers.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) meta: RetryMeta,
    pub(crate) topic: Option<String>,
    pub(crate) partition: Option<i32>,
    pub(crate) offset: Option<i64>,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) headers: HeaderList,
}

/// The longest error text kept in a retry header: a handler's error (a whole HTTP
/// body, say) must not make a small record too large for the retry topic.
const ERROR_HEADER_MAX: usize = 2048;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub(crate) fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_original_headers_in_order() {
        let event = Event {
            topic: "src".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"C1".to_vec()),
            headers: vec![
                ("a".into(), Some(b"1".to_vec())),
                ("nil".into(), None),
                ("a".into(), Some(vec![0xff, 0])),
            ],
            payload: b"{}".to_vec(),
            attempt: 0,
        };
        let meta = RetryMeta {
            attempt: 2,
            not_before_ms: 99,
            first_error: Some("first".into()),
            last_error: Some("last".into()),
        };
        let headers = encode(&event, &meta);
        let d = decode(Some(&headers));
        assert_eq!(d.meta, meta);
        assert_eq!(d.topic.as_deref(), Some("src"));
        assert_eq!(d.partition, Some(3));
        assert_eq!(d.offset, Some(42));
        assert_eq!(d.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(d.headers, event.headers);
    }

    #[test]
    fn long_errors_are_clipped_on_a_char_boundary() {
        let long = "é".repeat(3000);
        let clipped = clip(&long, ERROR_HEADER_MAX);
        assert!(clipped.len() <= ERROR_HEADER_MAX);
        assert!(clipped.ends_with("..."));
        assert_eq!(clip("short", ERROR_HEADER_MAX), "short");
    }
}
