//! Record headers that carry an event's provenance from the edge onwards, so that any
//! record can be traced back to its archive object and Slack delivery.

/// Slack's `event_id` (the delivery key for deduplication).
pub const EVENT_ID: &str = "slack-event-id";
/// The archive object holding the raw request.
pub const ARCHIVE_KEY: &str = "archive-key";
/// `X-Slack-Retry-Num` of the delivery (absent on the first try).
pub const RETRY_NUM: &str = "slack-retry-num";
/// `X-Slack-Retry-Reason` of the delivery.
pub const RETRY_REASON: &str = "slack-retry-reason";
/// When the edge received the request, RFC 3339 with microseconds, UTC.
pub const RECEIVED_AT: &str = "received-at";
/// The inner event type (`message`, `reaction_added`, ...), when known.
pub const EVENT_TYPE: &str = "slack-event-type";
