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
/// Set by `slackline dlq redrive` (`slackline_consumer::redrive`) on every record it
/// produces back: which dead letter it came from (`<topic>:<partition>:<offset>@<dead
/// lettered at>`). A handler that must not redo a refused effect on a mere re-read
/// (the slack-sender's `failed` replies) redoes it only for a record carrying it.
pub const REDRIVE: &str = "slackline-redrive";
/// Set by `slackline replay` on every raw record it produces back from the archive:
/// the replay's id. The normalizer always normalizes such a record, even when it saw
/// its event id before (it is not a Slack retry; the groups' fact keys make the
/// second pass harmless), and counts it (`slackline_normalizer_replayed_total`).
pub const REPLAY: &str = "slackline-replay";
