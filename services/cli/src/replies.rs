//! `slackline reply <thread id> <text>`: produces an agent's reply on
//! `support.replies`, as a support platform's API would, for the slack-sender to post
//! into the Slack thread; and the replies of a thread with their delivery state, as
//! `slackline thread` shows them (read from the slack-sender's `slack_sender.replies`).

use std::io::Write;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use slackline_events::{Agent, Reply};
use slackline_kafka::KafkaSettings;
use slackline_store::sqlx::{self, PgPool, Row};
use slackline_store::StoreError;

/// Why a reply could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The thread id is not `<team>-<channel>-<root ts>`.
    #[error(
        "thread id {0:?} is not <team>-<channel>-<root ts> (as `slackline threads` prints it)"
    )]
    ThreadId(String),
    /// The text is empty.
    #[error("the reply text is empty")]
    EmptyText,
    /// Encoding failed.
    #[error("encoding the reply: {0}")]
    Encode(#[from] slackline_events::EventsError),
    /// Creating the producer failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] slackline_kafka::KafkaError),
    /// Kafka did not take the record.
    #[error("producing to {topic}: {reason}")]
    Produce {
        /// The topic.
        topic: String,
        /// What Kafka said.
        reason: String,
    },
}

/// `(team, channel, root ts)` of a thread id `<team>-<channel>-<root ts>`.
///
/// # Errors
///
/// When the id does not have that shape.
pub fn parse_thread_id(thread_id: &str) -> Result<(String, String, String), ReplyError> {
    let bad = || ReplyError::ThreadId(thread_id.to_owned());
    let mut parts = thread_id.splitn(3, '-');
    let (Some(team), Some(channel), Some(root_ts)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let ts_ok = root_ts
        .split_once('.')
        .is_some_and(|(s, f)| !s.is_empty() && !f.is_empty())
        && root_ts.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if team.is_empty() || channel.is_empty() || !ts_ok {
        return Err(bad());
    }
    Ok((team.to_owned(), channel.to_owned(), root_ts.to_owned()))
}

/// `slackline reply`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The thread id (`<team>-<channel>-<root ts>`, as `threads` prints it).
    pub thread_id: String,
    /// The reply (Slack mrkdwn).
    pub text: String,
    /// The agent's id (their Slack user id when known).
    #[arg(long, default_value = "cli")]
    pub agent_id: String,
    /// The agent's display name (default: $USER).
    #[arg(long)]
    pub agent_name: Option<String>,
    /// The idempotency key (default: a fresh UUID); sending the same id again
    /// posts nothing new.
    #[arg(long)]
    pub reply_id: Option<String>,
    /// Also send the reply to the channel.
    #[arg(long)]
    pub broadcast: bool,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap: String,
    /// The replies topic.
    #[arg(long, default_value = slackline_kafka::topics::REPLIES)]
    pub topic: String,
}

/// `slackline reply`: produces the reply record and prints where it went.
///
/// # Errors
///
/// A malformed thread id, an empty text, or Kafka does not acknowledge the record.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = crate::common::kafka_settings(args.bootstrap)?;
    let agent_name = args
        .agent_name
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| args.agent_id.clone());
    let reply = build(&NewReply {
        thread_id: args.thread_id,
        text: args.text,
        agent_id: args.agent_id,
        agent_name,
        reply_id: args.reply_id,
        broadcast: args.broadcast,
    })?;
    let (partition, offset) = produce(&settings, &args.topic, &reply).await?;
    println!(
        "reply {} for thread {} produced to {} (partition {partition}, offset {offset})",
        reply.reply_id, reply.thread_id, args.topic
    );
    Ok(())
}

/// What `slackline reply` was asked to send.
#[derive(Debug, Clone)]
pub struct NewReply {
    /// The thread.
    pub thread_id: String,
    /// The text (Slack mrkdwn).
    pub text: String,
    /// The agent's id.
    pub agent_id: String,
    /// The agent's display name.
    pub agent_name: String,
    /// The idempotency key (a fresh UUID when not given).
    pub reply_id: Option<String>,
    /// Also post to the channel.
    pub broadcast: bool,
}

/// The reply record for `new`.
///
/// # Errors
///
/// A malformed thread id or an empty text.
pub fn build(new: &NewReply) -> Result<Reply, ReplyError> {
    let (team_id, channel_id, thread_ts) = parse_thread_id(&new.thread_id)?;
    if new.text.trim().is_empty() {
        return Err(ReplyError::EmptyText);
    }
    Ok(Reply {
        reply_id: new
            .reply_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        thread_id: new.thread_id.clone(),
        team_id,
        channel_id,
        thread_ts,
        agent: Agent {
            id: new.agent_id.clone(),
            display_name: new.agent_name.clone(),
        },
        text: new.text.clone(),
        blocks_json: None,
        reply_broadcast: new.broadcast,
        created_at_ms: chrono::Utc::now().timestamp_millis(),
    })
}

/// Produces `reply` to `topic` (key = channel) and waits for Kafka's acknowledgement;
/// returns (partition, offset).
///
/// # Errors
///
/// When the producer cannot be created or the record is not acknowledged.
pub async fn produce(
    settings: &KafkaSettings,
    topic: &str,
    reply: &Reply,
) -> Result<(i32, i64), ReplyError> {
    let payload = slackline_events::encode_reply(reply)?;
    let producer: FutureProducer = settings.producer("slackline-reply", Duration::from_secs(30))?;
    let record = FutureRecord::to(topic)
        .key(&reply.channel_id)
        .payload(&payload);
    let delivered = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| ReplyError::Produce {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
    Ok((delivered.partition, delivered.offset))
}

/// The Slack event of a message our bot posted into `channel` with `ts` (the
/// `chat.postMessage` `body`), as Slack sends it back to the app: a `message` from
/// our bot with the reply's metadata (subtype `thread_broadcast` when the reply was
/// also sent to the channel), in an `event_callback` envelope of the
/// installing team (taken from the metadata's thread id). `dev` delivers it for its
/// Slack API stand-in; tests deliver it when they choose.
pub fn echo_envelope(channel: &str, ts: &str, body: &serde_json::Value) -> serde_json::Value {
    use slackline_slack_stand_in::{STAND_IN_APP_ID, STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID};
    let team = body["metadata"]["event_payload"]["thread_id"]
        .as_str()
        .and_then(|id| id.split('-').next())
        .unwrap_or("T0DEV")
        .to_owned();
    let mut event = json!({
        "type": "message", "user": STAND_IN_BOT_USER_ID, "bot_id": STAND_IN_BOT_ID,
        "app_id": STAND_IN_APP_ID, "team": team, "text": body.get("text"), "ts": ts,
        "channel": channel, "channel_type": "channel", "event_ts": ts,
        "bot_profile": {"id": STAND_IN_BOT_ID, "app_id": STAND_IN_APP_ID, "name": "slackline"},
    });
    for field in ["thread_ts", "metadata", "blocks"] {
        if let Some(value) = body.get(field) {
            event[field] = value.clone();
        }
    }
    // A reply also sent to the channel comes back as a `thread_broadcast`.
    if body
        .get("reply_broadcast")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        event["subtype"] = json!("thread_broadcast");
    }
    let event_time = ts
        .split('.')
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_default();
    json!({
        "token": "unused", "team_id": team, "context_team_id": team,
        "api_app_id": STAND_IN_APP_ID, "type": "event_callback",
        "event_id": format!("EvECHO{}", ts.replace('.', "")), "event_time": event_time,
        "authorizations": [{"team_id": team, "user_id": STAND_IN_BOT_USER_ID, "is_bot": true}],
        "is_ext_shared_channel": true,
        "event": event,
    })
}

/// One reply of a thread as the slack-sender recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRow {
    /// The reply id.
    pub reply_id: String,
    /// The agent's id.
    pub agent_id: String,
    /// The agent's name.
    pub agent_name: String,
    /// The text.
    pub text: String,
    /// `pending`, `sending`, `sent`, `failed` or `ambiguous`.
    pub state: String,
    /// Slack's ts, once sent.
    pub ts: Option<String>,
    /// Slack's error (failed), why it is unknown (ambiguous), or the last refusal
    /// (pending).
    pub last_error: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// When the agent sent it (RFC 3339).
    pub created_at: String,
}

impl ReplyRow {
    /// The delivery state for a person: `pending`, `pending (last try: …)`,
    /// `sending`, `sent <ts>`, `failed: <error>`, `ambiguous: <reason>`.
    pub fn delivery(&self) -> String {
        match (self.state.as_str(), &self.ts, &self.last_error) {
            ("sent", Some(ts), _) => format!("sent {ts}"),
            ("pending", _, Some(error)) => format!("pending (last try: {error})"),
            ("failed" | "ambiguous", _, Some(error)) => format!("{}: {error}", self.state),
            (state, _, _) => state.to_owned(),
        }
    }
}

/// The replies of `thread_id`, oldest first (none when the slack-sender never ran
/// on this database).
///
/// # Errors
///
/// When PostgreSQL fails.
pub async fn thread_replies(pool: &PgPool, thread_id: &str) -> Result<Vec<ReplyRow>, StoreError> {
    // The slack-sender's table, named through its crate's schema constant.
    let table = format!("{}.replies", slackline_slack_sender::SCHEMA);
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT reply_id, agent_id, agent_name, text, state, ts, last_error, attempts, \
                to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at \
         FROM {table} WHERE thread_id = $1 ORDER BY created_at, reply_id"
    );
    let rows = sqlx::query(&sql).bind(thread_id).fetch_all(pool).await?;
    let replies = rows
        .iter()
        .map(|row| {
            Ok(ReplyRow {
                reply_id: row.try_get("reply_id")?,
                agent_id: row.try_get("agent_id")?,
                agent_name: row.try_get("agent_name")?,
                text: row.try_get("text")?,
                state: row.try_get("state")?,
                ts: row.try_get("ts")?,
                last_error: row.try_get("last_error")?,
                attempts: row.try_get("attempts")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(replies)
}

/// The JSON line of a reply of `thread_id`.
pub fn reply_json(thread_id: &str, reply: &ReplyRow) -> serde_json::Value {
    json!({
        "thread_id": thread_id,
        "kind": "reply",
        "reply_id": reply.reply_id,
        "agent_id": reply.agent_id,
        "agent_name": reply.agent_name,
        "text": reply.text,
        "state": reply.state,
        "ts": reply.ts,
        "error": reply.last_error,
        "attempts": reply.attempts,
        "created_at": reply.created_at,
        "delivery": reply.delivery(),
    })
}

/// Prints a thread's replies with their delivery state.
///
/// # Errors
///
/// When writing fails.
pub fn print_replies(out: &mut impl Write, replies: &[ReplyRow]) -> std::io::Result<()> {
    if replies.is_empty() {
        return Ok(());
    }
    writeln!(out, "replies from the support side:")?;
    for r in replies {
        writeln!(
            out,
            "  {}  {:<24} {:<40} {}",
            r.created_at,
            format!("agent {}", r.agent_name),
            r.text.replace('\n', " ⏎ "),
            r.delivery()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn thread_ids_parse_or_are_named() {
        assert_eq!(
            parse_thread_id("T0HOME-C0ONE-1764000000.000100").unwrap(),
            ("T0HOME".into(), "C0ONE".into(), "1764000000.000100".into())
        );
        for bad in ["", "T1-C1", "T1--1.2", "T1-C1-abc", "T1-C1-17640000"] {
            assert!(parse_thread_id(bad).is_err(), "{bad}");
        }
    }

    /// A broadcast reply's echo is a `thread_broadcast`, and the normalizer takes it
    /// as the agent's reply (stand-in bot and app as ours), like a plain reply's.
    #[test]
    fn broadcast_reply_echo_is_a_thread_broadcast_and_the_agents_reply() {
        use slackline_events::{AuthorKind, Kind};
        use slackline_normalizer::normalize::{normalize, Outcome, RawMeta, Rules};
        use slackline_slack_stand_in::{STAND_IN_APP_ID, STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID};
        let rules = Rules {
            self_bot_ids: [STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID]
                .map(str::to_owned)
                .into(),
            self_app_ids: [STAND_IN_APP_ID.to_owned()].into(),
            ..Rules::default()
        };
        for broadcast in [false, true] {
            let body = json!({
                "channel": "C0ONE", "text": "Fixed", "thread_ts": "1764000000.000100",
                "reply_broadcast": broadcast,
                "metadata": {"event_type": "slackline_reply", "event_payload": {
                    "reply_id": "r1", "thread_id": "T0HOME-C0ONE-1764000000.000100",
                    "agent_id": "U0ADA", "agent_name": "Ada"}},
            });
            let envelope = echo_envelope("C0ONE", "1764000100.000200", &body);
            let subtype = envelope["event"]["subtype"].as_str();
            assert_eq!(subtype, broadcast.then_some("thread_broadcast"));
            let raw = serde_json::to_vec(&envelope).unwrap();
            let meta = RawMeta {
                archive_key: "raw/x.json",
                record_key: Some("C0ONE"),
                event_id: None,
            };
            let Outcome::Event(event) = normalize(&raw, meta, &rules) else {
                panic!("the echo is an event (broadcast {broadcast})")
            };
            let event = *event;
            assert_eq!(event.author.unwrap().kind, AuthorKind::Agent);
            assert!(matches!(event.kind, Kind::Posted(p) if p.is_reply));
        }
    }

    #[test]
    fn delivery_states_read_well() {
        let mut row = ReplyRow {
            reply_id: "r".into(),
            agent_id: "U1".into(),
            agent_name: "Ada".into(),
            text: "hi".into(),
            state: "pending".into(),
            ts: None,
            last_error: None,
            attempts: 0,
            created_at: "2026-12-08T00:00:00.000Z".into(),
        };
        assert_eq!(row.delivery(), "pending");
        row.last_error = Some("Slack answered 429, Retry-After 2s".into());
        assert_eq!(
            row.delivery(),
            "pending (last try: Slack answered 429, Retry-After 2s)"
        );
        row.state = "failed".into();
        row.last_error = Some("Slack error channel_not_found (HTTP 200)".into());
        assert_eq!(
            row.delivery(),
            "failed: Slack error channel_not_found (HTTP 200)"
        );
        row.state = "sent".into();
        row.ts = Some("1764000100.000200".into());
        assert_eq!(row.delivery(), "sent 1764000100.000200");
        let mut out = Vec::new();
        print_replies(&mut out, &[row]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("agent Ada"), "{text}");
        assert!(text.contains("sent 1764000100.000200"), "{text}");
    }
}
