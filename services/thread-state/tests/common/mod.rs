//! Shared set-up for thread-state's tests: the shared Kafka broker with every
//! slackline topic under the test's own prefix, a throwaway database, the service started through `start`, message-event
//! builders, and readers of the resulting rows and thread events.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus::Registry;
use slackline_consumer::GroupService;
use slackline_events::{
    decode_thread_event, Author, AuthorKind, Degraded, Edited, Kind, Member, MessageEvent, Mode,
    Posted, Reaction, ThreadEvent,
};
use slackline_service::{Env, Shutdown};
use slackline_testkit::postgres::TestDatabase;
use slackline_thread_state::ThreadStateConfig;
use sqlx::{PgPool, Row};

pub const PARTITIONS: i32 = 2;
pub const TEAM: &str = "T0AGENTS";

pub use slackline_testkit::kafka::TestCluster;

/// The service's consumer group, unprefixed.
pub const GROUP: &str = slackline_thread_state::config::GROUP;

/// The shared Kafka broker with every slackline topic (2 partitions per flow topic)
/// under a prefix of this test's own.
pub fn cluster() -> TestCluster {
    TestCluster::kafka_with_topics(PARTITIONS)
}

/// The service's config for tests: the cluster's topics and group (under its
/// prefix), the test database, short retry delays, plus `extra` variables.
pub fn config(
    cluster: &TestCluster,
    db: &TestDatabase,
    extra: &[(&str, &str)],
) -> ThreadStateConfig {
    let names = cluster.names();
    let mut pairs: Vec<(String, String)> = vec![
        (
            "KAFKA_BOOTSTRAP_SERVERS".into(),
            cluster.bootstrap_servers(),
        ),
        ("GROUP_ID".into(), names.group(GROUP)),
        ("SOURCE_TOPIC".into(), names.messages()),
        ("THREAD_EVENTS_TOPIC".into(), names.thread_events()),
        (
            "KAFKA_PROPERTIES".into(),
            "session.timeout.ms=6000;heartbeat.interval.ms=200;log_level=3".into(),
        ),
        ("DATABASE_URL".into(), db.url.clone()),
        ("ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("THREAD_EVENTS_DELIVERY_TIMEOUT_MS".into(), "10000".into()),
    ];
    pairs.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut config = ThreadStateConfig::from_env(Env::from_pairs(pairs)).expect("config");
    let r = &mut config.runtime;
    // The runtime derives the retry and DLQ topics from the group: the cluster's.
    assert_eq!(r.retry_topic, names.retry(GROUP));
    assert_eq!(r.dlq_topic, names.dlq(GROUP));
    r.quick_retries = 3;
    r.quick_backoff = Duration::from_millis(10);
    r.retry_delays = vec![Duration::from_millis(200); 3];
    r.shutdown_grace = Duration::from_secs(5);
    r.revoke_grace = Duration::from_secs(2);
    r.produce_timeout = Duration::from_secs(30);
    r.store_interval = Duration::from_millis(20);
    r.commit_interval = Duration::from_millis(100);
    r.lag_interval = Duration::from_millis(200);
    config
}

/// A running service with its shutdown.
pub struct Running {
    pub service: GroupService,
    pub shutdown: Shutdown,
}

pub async fn start(config: ThreadStateConfig) -> Running {
    let shutdown = Shutdown::new();
    let service = slackline_thread_state::start(config, shutdown.clone())
        .await
        .expect("thread-state starts");
    Running { service, shutdown }
}

impl Running {
    pub fn registry(&self) -> &Registry {
        &self.service.registry
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.service.wait().await.expect("clean stop");
    }
}

/// The value of a counter (summed over labels), 0 when absent.
pub fn counter(registry: &Registry, name: &str) -> f64 {
    slackline_testkit::metrics::metric(registry, name, &[])
}

/// Waits until the service has handled `n` records in all (none may go to the DLQ).
pub async fn wait_handled(running: &Running, n: usize, timeout: Duration) {
    let start = Instant::now();
    loop {
        let handled = counter(running.registry(), "slackline_consumer_handled_total");
        let dlq = counter(running.registry(), "slackline_dlq_records_total");
        assert_eq!(dlq, 0.0, "records went to the DLQ");
        if handled >= n as f64 {
            assert_eq!(handled, n as f64, "more records handled than produced");
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "handled {handled} of {n} records after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// Message events

/// The customers' workspace.
pub const CUSTOMER_TEAM: &str = "T0CUSTOMER";

/// An author of `kind`: agents and bots are of the installing workspace (`TEAM`, so
/// a bot is one of ours: silent), customers of `CUSTOMER_TEAM`. See
/// [`customer_bot`] for a bot of the customer's workspace.
fn author(kind: AuthorKind, user: &str) -> Option<Author> {
    Some(Author {
        user_id: Some(user.to_owned()),
        team_id: Some(
            if matches!(kind, AuthorKind::Agent | AuthorKind::Bot) {
                TEAM
            } else {
                CUSTOMER_TEAM
            }
            .to_owned(),
        ),
        kind,
        display_name: None,
        email: None,
    })
}

fn base(event_id: &str, channel: &str, ts: &str, kind: Kind) -> MessageEvent {
    MessageEvent {
        event_id: event_id.to_owned(),
        team_id: TEAM.to_owned(),
        channel_id: Some(channel.to_owned()),
        ts: Some(ts.to_owned()),
        thread_ts: None,
        event_time_ms: ts
            .split_once('.')
            .and_then(|(s, _)| s.parse::<i64>().ok())
            .map(|s| s * 1000),
        author: None,
        text: Some(format!("text of {event_id}")),
        rendered_text: None,
        files: Vec::new(),
        archive_key: format!("raw/{event_id}.json"),
        mode: Mode::Full,
        degraded_reason: None,
        kind,
    }
}

/// A top-level message.
pub fn post(event_id: &str, channel: &str, ts: &str, kind: AuthorKind, user: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        Kind::Posted(Posted {
            subtype: (kind == AuthorKind::Bot).then(|| "bot_message".to_owned()),
            is_reply: false,
            is_broadcast: false,
        }),
    );
    e.author = author(kind, user);
    e
}

/// A reply in the thread of `thread_ts`.
pub fn reply(
    event_id: &str,
    channel: &str,
    ts: &str,
    thread_ts: &str,
    kind: AuthorKind,
    user: &str,
) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        Kind::Posted(Posted {
            subtype: (kind == AuthorKind::Bot).then(|| "bot_message".to_owned()),
            is_reply: true,
            is_broadcast: false,
        }),
    );
    e.thread_ts = Some(thread_ts.to_owned());
    e.author = author(kind, user);
    e
}

/// `event` as written by a bot of workspace `team` (`None`: Slack did not tell), the
/// author kind staying `bot`.
pub fn bot_of(mut event: MessageEvent, team: Option<&str>) -> MessageEvent {
    let author = event.author.get_or_insert_with(|| Author {
        user_id: Some("B0THEIRS".to_owned()),
        team_id: None,
        kind: AuthorKind::Bot,
        display_name: None,
        email: None,
    });
    author.kind = AuthorKind::Bot;
    author.team_id = team.map(str::to_owned);
    event
}

/// `event` as written by a bot of the customer's workspace (an incoming webhook, a CI
/// app).
pub fn customer_bot(event: MessageEvent) -> MessageEvent {
    bot_of(event, Some(CUSTOMER_TEAM))
}

/// `event` with Slack's event time (for a reaction: when it was added) at `ms`.
pub fn at_ms(mut event: MessageEvent, ms: i64) -> MessageEvent {
    event.event_time_ms = Some(ms);
    event
}

/// A reaction added to message `ts` (written by `item_user`).
pub fn react(
    event_id: &str,
    channel: &str,
    ts: &str,
    name: &str,
    kind: AuthorKind,
    user: &str,
    item_user: &str,
) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        Kind::ReactionAdded(Reaction {
            name: name.to_owned(),
            item_user_id: Some(item_user.to_owned()),
        }),
    );
    e.author = author(kind, user);
    e.text = None;
    e
}

/// An edit of message `ts`.
pub fn edit(event_id: &str, channel: &str, ts: &str, user: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        Kind::Edited(Edited {
            previous_text: Some("before".into()),
            edited_ts: Some(format!("{ts}9")),
        }),
    );
    e.author = author(AuthorKind::Customer, user);
    e
}

/// A member joined the channel.
pub fn joined(event_id: &str, channel: &str, ts: &str, user: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        Kind::MemberJoined(Member { inviter_id: None }),
    );
    e.author = author(AuthorKind::Customer, user);
    e
}

/// A payload the normalizer could not understand, without an author.
pub fn degraded(event_id: &str, channel: &str, ts: &str) -> MessageEvent {
    let mut e = base(
        event_id,
        channel,
        ts,
        Kind::Degraded(Degraded {
            event_type: Some("message".into()),
            subtype: Some("huddle_thread".into()),
        }),
    );
    e.mode = Mode::Degraded;
    e.degraded_reason = Some("unknown message subtype".into());
    e
}

/// A degraded event of `subtype`, by `by` (kind and user id; no author when `None`),
/// in the thread of `thread_ts` when given.
pub fn degraded_as(
    event_id: &str,
    channel: &str,
    ts: &str,
    subtype: &str,
    thread_ts: Option<&str>,
    by: Option<(AuthorKind, &str)>,
) -> MessageEvent {
    let mut e = degraded(event_id, channel, ts);
    e.kind = Kind::Degraded(Degraded {
        event_type: Some("message".into()),
        subtype: Some(subtype.to_owned()),
    });
    e.thread_ts = thread_ts.map(str::to_owned);
    e.author = by.and_then(|(kind, user)| author(kind, user));
    e
}

/// The thread id of the thread rooted at `root` in `channel` of the installing team
/// `team`.
pub fn thread_id_of(team: &str, channel: &str, root: &str) -> String {
    format!("{team}-{channel}-{root}")
}

/// Produces `events` to `slack.messages.v1` in order, key = channel.
pub use slackline_testkit::kafka::produce_messages as produce;

// ---------------------------------------------------------------------------------
// Reading the results

pub async fn pool(db: &TestDatabase) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap()
}

/// `(thread_id, status)` of every thread, by thread id.
pub async fn threads(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query("SELECT thread_id, status FROM thread_state.threads ORDER BY thread_id")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("thread_id"), r.get("status")))
        .collect()
}

/// `(thread_id, opened_by, grouping, last_ts)` of every thread, by thread id.
pub async fn thread_details(pool: &PgPool) -> Vec<(String, Option<String>, String, String)> {
    sqlx::query(
        "SELECT thread_id, opened_by, grouping, last_ts FROM thread_state.threads \
         ORDER BY thread_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("thread_id"),
            r.get("opened_by"),
            r.get("grouping"),
            r.get("last_ts"),
        )
    })
    .collect()
}

/// `(ts, thread_id)` of every thread message, by channel and ts.
pub async fn thread_messages(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query("SELECT ts, thread_id FROM thread_state.thread_messages ORDER BY channel_id, ts")
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("ts"), r.get("thread_id")))
        .collect()
}

pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM thread_state.{table}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A transition as the tests compare it: thread, from, to, cause, trigger ts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct T {
    pub thread_id: String,
    pub from: Option<String>,
    pub to: String,
    pub cause: String,
    pub trigger_ts: String,
}

/// Shorthand for an expected transition.
pub fn t(thread_id: &str, from: Option<&str>, to: &str, cause: &str, trigger_ts: &str) -> T {
    T {
        thread_id: thread_id.to_owned(),
        from: from.map(str::to_owned),
        to: to.to_owned(),
        cause: cause.to_owned(),
        trigger_ts: trigger_ts.to_owned(),
    }
}

/// Every transition per channel, in commit order; all must be published.
pub async fn transitions(pool: &PgPool) -> BTreeMap<String, Vec<T>> {
    let rows = sqlx::query(
        "SELECT th.channel_id, t.thread_id, t.from_status, t.to_status, t.cause, t.trigger_ts, \
                t.published_at IS NOT NULL AS published \
         FROM thread_state.transitions t JOIN thread_state.threads th USING (thread_id) \
         ORDER BY t.seq",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for r in rows {
        let published: bool = r.get("published");
        let thread_id: String = r.get("thread_id");
        assert!(published, "transition of {thread_id} not published");
        out.entry(r.get("channel_id")).or_default().push(T {
            thread_id,
            from: r.get("from_status"),
            to: r.get("to_status"),
            cause: r.get("cause"),
            trigger_ts: r.get("trigger_ts"),
        });
    }
    out
}

/// Every record of the cluster's `support.thread-events`, decoded, per channel (the
/// key) in order. Waits until the topic holds at least `at_least` records, lets a
/// moment pass for any extra one, then reads every record the topic holds (its
/// watermarks), so that extras show.
pub async fn thread_events(
    cluster: &TestCluster,
    at_least: usize,
) -> BTreeMap<String, Vec<ThreadEvent>> {
    let bootstrap = cluster.bootstrap_servers();
    let topic = cluster.names().thread_events();
    let len = || {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                slackline_testkit::kafka::topic_len(&bootstrap, &topic, PARTITIONS)
            })
            .await
            .unwrap()
        }
    };
    slackline_testkit::wait_until(
        &format!("{at_least} records on {topic}"),
        Duration::from_secs(60),
        || async { len().await >= at_least as i64 },
    )
    .await;
    // Give a late extra record (a second publication) 3 s to arrive, as the mock-era
    // reader did.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = usize::try_from(len().await).unwrap();
    let records = slackline_testkit::kafka::read_topic(
        &bootstrap,
        &topic,
        PARTITIONS,
        held,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(records.len(), held, "read back every record of {topic}");
    let mut out: BTreeMap<String, Vec<ThreadEvent>> = BTreeMap::new();
    for record in records {
        let event = decode_thread_event(&record.payload).expect("a thread event");
        assert_eq!(
            record.key.as_deref(),
            Some(event.channel_id.as_str()),
            "key = channel"
        );
        assert_eq!(
            record.header(slackline_thread_state::TRANSITION_ID_HEADER),
            Some(event.transition_id.as_str())
        );
        out.entry(event.channel_id.clone()).or_default().push(event);
    }
    out
}

/// The thread events in the tests' comparable form.
pub fn as_t(events: &[ThreadEvent]) -> Vec<T> {
    events
        .iter()
        .map(|e| T {
            thread_id: e.thread_id.clone(),
            from: e.from_status.map(|s| s.as_str().to_owned()),
            to: e.to_status.as_str().to_owned(),
            cause: e.cause.clone(),
            trigger_ts: e.trigger_ts.clone(),
        })
        .collect()
}

pub fn total(map: &BTreeMap<String, Vec<ThreadEvent>>) -> usize {
    map.values().map(Vec::len).sum()
}
