//! Shared set-up for the timeline-writer's tests: the shared Kafka broker with every
//! slackline topic (2 partitions per flow topic) under the test's own prefix, a
//! throwaway database, the service started with `start(config, shutdown)`, message
//! events produced to the cluster's `slack.messages.v1` (key = channel), and the
//! `timeline.entries` table read back as JSON.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus::Registry;
use serde_json::Value;
use slackline_consumer::{GroupService, RuntimeConfig};
use slackline_events::{
    Author, AuthorKind, Degraded, Deleted, Edited, FileRef, Kind, Member, MessageEvent, Mode,
    Posted, Reaction,
};
use slackline_kafka::KafkaSettings;
use slackline_service::{LogFormat, Shutdown};
use slackline_store::StoreSettings;
use slackline_testkit::postgres::TestDatabase;
use slackline_timeline_writer::TimelineWriterConfig;
use sqlx::{Connection, PgConnection};

pub const PARTITIONS: i32 = 2;
/// The service's consumer group, unprefixed (the cluster's is `names().group(GROUP)`).
pub const GROUP: &str = slackline_timeline_writer::config::GROUP;
pub const TEAM: &str = "T0HOME";
pub const CUSTOMER: &str = "U0CUST1";
pub const AGENT: &str = "U0AG1";

pub use slackline_testkit::kafka::TestCluster;

/// The shared Kafka broker with every slackline topic under this test's prefix.
pub fn cluster() -> TestCluster {
    TestCluster::kafka_with_topics(PARTITIONS)
}

/// The runtime of consumer group `group` (unprefixed) on the cluster's messages
/// topic, with the cluster's retry and DLQ topics of that group, quick commits and
/// short retry delays.
pub fn runtime(cluster: &TestCluster, group: &str) -> RuntimeConfig {
    let names = cluster.names();
    let mut runtime = RuntimeConfig::new(names.group(group), names.messages());
    // The runtime derives the retry and DLQ topics from the group: the cluster's.
    assert_eq!(runtime.retry_topic, names.retry(group));
    assert_eq!(runtime.dlq_topic, names.dlq(group));
    runtime.quick_retries = 3;
    runtime.quick_backoff = Duration::from_millis(20);
    runtime.retry_delays = vec![Duration::from_millis(200); 3];
    runtime.shutdown_grace = Duration::from_secs(5);
    runtime.revoke_grace = Duration::from_secs(2);
    runtime.store_interval = Duration::from_millis(20);
    runtime.commit_interval = Duration::from_millis(100);
    runtime.lag_interval = Duration::from_millis(200);
    runtime
}

/// A config for tests: the cluster's topics and group, quick group joins, short
/// retry delays.
pub fn config(cluster: &TestCluster, db: &TestDatabase) -> TimelineWriterConfig {
    let mut kafka = KafkaSettings::new(cluster.bootstrap_servers());
    kafka.properties = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "200".into()),
        ("log_level".into(), "3".into()),
    ];
    let runtime = runtime(cluster, GROUP);
    TimelineWriterConfig {
        kafka,
        store: StoreSettings::new(&db.url),
        runtime,
        admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        log_format: LogFormat::Text,
    }
}

/// The running service and its shutdown signal.
pub struct Writer {
    pub service: GroupService,
    pub shutdown: Shutdown,
}

impl Writer {
    pub async fn start(config: TimelineWriterConfig) -> Writer {
        let shutdown = Shutdown::new();
        let service = slackline_timeline_writer::start(config, shutdown.clone())
            .await
            .expect("timeline-writer starts");
        Writer { service, shutdown }
    }

    pub fn registry(&self) -> &Registry {
        &self.service.registry
    }

    /// Records the runtime finished: handled, or dead-lettered.
    pub fn finished(&self) -> u64 {
        (metric(self.registry(), "slackline_consumer_handled_total", &[])
            + metric(self.registry(), "slackline_dlq_records_total", &[])) as u64
    }

    /// Waits until `n` records are finished.
    pub async fn wait_finished(&self, n: u64) {
        let start = Instant::now();
        while self.finished() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {n} finished records, {} so far",
                self.finished()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.finished(), n, "more records finished than produced");
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.service.wait().await.expect("clean stop");
    }
}

pub use slackline_testkit::metrics::metric;

/// Produces each event to `slack.messages.v1` with key = channel, in order.
pub use slackline_testkit::kafka::produce_messages as produce;

/// Produces (key, payload, event id) records to the cluster's `slack.messages.v1`, in
/// order.
pub async fn produce_raw(cluster: &TestCluster, records: &[(String, Vec<u8>, String)]) {
    slackline_testkit::kafka::produce_records(cluster, &cluster.names().messages(), records).await;
}

/// Every row of `timeline.entries` except `written_at`, as JSON objects, ordered by
/// the primary key. Opens its own connection (tests kill the service's).
pub async fn try_rows(db: &TestDatabase) -> Result<Vec<Value>, sqlx::Error> {
    let mut conn = PgConnection::connect(&db.url).await?;
    let rows: Vec<(Value,)> =
        sqlx::query_as("SELECT to_jsonb(e) - 'written_at' FROM timeline.entries e")
            .fetch_all(&mut conn)
            .await?;
    let _ = conn.close().await;
    let mut rows: Vec<Value> = rows.into_iter().map(|(v,)| v).collect();
    sort_rows(&mut rows);
    Ok(rows)
}

/// Sorts rows by the primary key, byte-wise (whatever the database's collation).
pub fn sort_rows(rows: &mut [Value]) {
    rows.sort_by_key(|v| {
        ["team_id", "channel_id", "ts", "fact"]
            .map(|c| v[c].as_str().unwrap_or_default().to_owned())
    });
}

pub async fn rows(db: &TestDatabase) -> Vec<Value> {
    try_rows(db).await.expect("reading timeline.entries")
}

/// The rows with only the named columns.
pub fn project(rows: &[Value], columns: &[&str]) -> Vec<Value> {
    rows.iter()
        .map(|row| {
            Value::Object(
                columns
                    .iter()
                    .map(|c| ((*c).to_owned(), row.get(*c).cloned().unwrap_or(Value::Null)))
                    .collect(),
            )
        })
        .collect()
}

// Not every test binary sharing this module waits on a condition.
#[allow(unused_imports)]
pub use slackline_testkit::wait_until;

// ---- message events ----

pub fn author(user_id: &str) -> Author {
    let agent = user_id.starts_with("U0AG");
    Author {
        user_id: Some(user_id.to_owned()),
        team_id: Some(if agent { TEAM } else { "T0CUST" }.to_owned()),
        kind: if agent {
            AuthorKind::Agent
        } else {
            AuthorKind::Customer
        },
        display_name: Some(if agent { "Ada Agent" } else { "Carl Customer" }.to_owned()),
        email: None,
    }
}

/// `ts` as event time in ms (Slack ts are seconds).
fn time_ms(ts: &str) -> Option<i64> {
    let secs: f64 = ts.parse().ok()?;
    Some((secs * 1000.0) as i64)
}

pub fn base(event_id: &str, channel: &str, ts: &str, user: &str, kind: Kind) -> MessageEvent {
    MessageEvent {
        event_id: event_id.to_owned(),
        team_id: TEAM.to_owned(),
        channel_id: Some(channel.to_owned()),
        ts: Some(ts.to_owned()),
        thread_ts: None,
        event_time_ms: time_ms(ts),
        author: Some(author(user)),
        text: None,
        rendered_text: None,
        files: Vec::new(),
        archive_key: format!("raw/2026/11/24/22/{event_id}.json"),
        mode: Mode::Full,
        degraded_reason: None,
        kind,
    }
}

pub fn posted(event_id: &str, channel: &str, ts: &str, user: &str, text: &str) -> MessageEvent {
    MessageEvent {
        text: Some(text.to_owned()),
        ..base(
            event_id,
            channel,
            ts,
            user,
            Kind::Posted(Posted {
                subtype: None,
                is_reply: false,
                is_broadcast: false,
            }),
        )
    }
}

pub fn reply(
    event_id: &str,
    channel: &str,
    ts: &str,
    thread_ts: &str,
    user: &str,
    text: &str,
) -> MessageEvent {
    MessageEvent {
        thread_ts: Some(thread_ts.to_owned()),
        text: Some(text.to_owned()),
        ..base(
            event_id,
            channel,
            ts,
            user,
            Kind::Posted(Posted {
                subtype: None,
                is_reply: true,
                is_broadcast: false,
            }),
        )
    }
}

pub fn edited(
    event_id: &str,
    channel: &str,
    ts: &str,
    edited_ts: &str,
    user: &str,
    text: &str,
) -> MessageEvent {
    MessageEvent {
        text: Some(text.to_owned()),
        event_time_ms: time_ms(edited_ts),
        ..base(
            event_id,
            channel,
            ts,
            user,
            Kind::Edited(Edited {
                previous_text: None,
                edited_ts: Some(edited_ts.to_owned()),
            }),
        )
    }
}

pub fn deleted(
    event_id: &str,
    channel: &str,
    ts: &str,
    user: &str,
    previous: &str,
) -> MessageEvent {
    base(
        event_id,
        channel,
        ts,
        user,
        Kind::Deleted(Deleted {
            previous_text: Some(previous.to_owned()),
        }),
    )
}

pub fn reaction(
    event_id: &str,
    channel: &str,
    ts: &str,
    user: &str,
    name: &str,
    added: bool,
) -> MessageEvent {
    let r = Reaction {
        name: name.to_owned(),
        item_user_id: None,
    };
    base(
        event_id,
        channel,
        ts,
        user,
        if added {
            Kind::ReactionAdded(r)
        } else {
            Kind::ReactionRemoved(r)
        },
    )
}

pub fn member_joined(event_id: &str, channel: &str, user: &str) -> MessageEvent {
    MessageEvent {
        ts: None,
        event_time_ms: Some(1_700_000_000_000),
        ..base(
            event_id,
            channel,
            "",
            user,
            Kind::MemberJoined(Member { inviter_id: None }),
        )
    }
}

/// What the normalizer makes of a payload it does not understand.
pub fn degraded(event_id: &str, channel: &str, ts: &str, reason: &str, text: &str) -> MessageEvent {
    MessageEvent {
        text: Some(text.to_owned()),
        mode: Mode::Degraded,
        degraded_reason: Some(reason.to_owned()),
        author: Some(Author {
            display_name: None,
            ..author(CUSTOMER)
        }),
        ..base(
            event_id,
            channel,
            ts,
            CUSTOMER,
            Kind::Degraded(Degraded {
                event_type: Some("message".into()),
                subtype: Some("huddle_thread".into()),
            }),
        )
    }
}

pub fn file(id: &str, name: &str) -> FileRef {
    FileRef {
        id: id.to_owned(),
        name: Some(name.to_owned()),
        mimetype: Some("text/plain".into()),
        size: Some(1234),
        url_private: Some(format!("https://files.slack.test/{id}/{name}")),
        thumbs: vec![],
    }
}

/// A conversation across three channels: posts, a thread reply, an edit, a delete,
/// reactions added and removed, a file share, a member joining, a degraded event and
/// a degraded post.
pub fn conversation() -> Vec<MessageEvent> {
    let root = "1700000001.000100";
    let mut file_share = reply(
        "Ev106",
        "C1",
        "1700000004.000400",
        root,
        CUSTOMER,
        "here is the log",
    );
    file_share.files = vec![file("F1", "export.log")];
    file_share.kind = Kind::Posted(Posted {
        subtype: Some("file_share".into()),
        is_reply: true,
        is_broadcast: false,
    });
    let mut rendered = posted(
        "Ev107",
        "C1",
        "1700000005.000500",
        AGENT,
        "```fixed``` <https://status.test|status>",
    );
    rendered.rendered_text = Some("```fixed``` status (https://status.test)".into());
    let mut degraded_post = posted("Ev302", "C3", "1700000031.000100", CUSTOMER, "partial text");
    degraded_post.mode = Mode::Degraded;
    degraded_post.degraded_reason = Some("blocks not understood".into());
    vec![
        posted("Ev101", "C1", root, CUSTOMER, "Our export fails"),
        member_joined("Ev201", "C2", AGENT),
        reply(
            "Ev102",
            "C1",
            "1700000002.000200",
            root,
            AGENT,
            "Which export?",
        ),
        posted(
            "Ev202",
            "C2",
            "1700000021.000100",
            CUSTOMER,
            "Please ignore",
        ),
        reaction("Ev103", "C1", root, AGENT, "eyes", true),
        edited(
            "Ev104",
            "C1",
            "1700000002.000200",
            "1700000003.000000",
            AGENT,
            "Which export job?",
        ),
        deleted(
            "Ev203",
            "C2",
            "1700000021.000100",
            CUSTOMER,
            "Please ignore",
        ),
        degraded(
            "Ev301",
            "C3",
            "1700000030.000100",
            "unknown message subtype",
            "huddle notes",
        ),
        reaction("Ev105", "C1", root, AGENT, "eyes", false),
        file_share,
        degraded_post,
        rendered,
    ]
}
