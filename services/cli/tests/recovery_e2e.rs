//! Guarantee 6 end to end: "any time range of the archive can be replayed and any
//! consumer group rewound to a timestamp; the end state is the same as if it ran
//! once". The whole pipeline of `slackline dev` runs in this process (edge, file
//! archive, normalizer, thread-state, timeline-writer, notifier) on the shared Apache
//! Kafka broker under topic and group names of its own, a PostgreSQL database of its
//! own and a webhook receiver for the notifier.
//!
//! A conversation across four channels (three grouped by Slack thread, one by time
//! window: roots, replies in threads, edits, reactions, a done command and a reopen, a
//! file shared and deleted, a bot) is sent through the edge; once every group is
//! caught up (lag 0 on every topic it reads), the database is snapshotted: every table
//! of the groups' schemas, each row as canonical JSON text, rows sorted.
//!
//! 1. Replaying the whole range already processed leaves the snapshot identical, every
//!    column included (nothing is written at all), publishes no thread event and
//!    sends no notification, while every group counted each replayed fact as a
//!    duplicate.
//! 2. One channel's thread-state and timeline rows deleted (a bug that lost them): the
//!    snapshot differs from the clean run's in that channel's rows only, a replay of
//!    another channel does not change that, a replay of that channel's range
//!    (`channels: [C]`) makes it equal; the notifications, still recorded as sent, are
//!    not sent again, and each lost transition is published once more.
//! 3. The database restored to a backup taken in the middle of the conversation (what
//!    the groups wrote for the events after it deleted, and the rows those events
//!    updated put back as they were), all three groups rewound to an earlier time in
//!    the middle, restarted: the end state equals the clean run's (the events between
//!    the rewind time and the backup count as duplicates, those after the backup fill
//!    the gap); rewinding again on the complete database and restarting changes
//!    nothing. A rewind while the groups run is refused. (A backup rather than
//!    deleting rows by event time: a later event also changes earlier rows, a
//!    thread's status, a posted entry's text after an edit, which no deletion undoes.)
//!
//! Columns that legitimately differ between two runs that wrote the same facts are
//! listed in [`VOLATILE`] with the reason; where rows were written again (the gap
//! filled, the restore rewound) they are compared only as set or not set. Where
//! nothing may be written (a replay or rewind of what was processed, a replay of
//! another channel) every column is compared: not even a timestamp may move.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slackline::postgres::DatabaseChoice;
use slackline::replay::{NoProgress, ReplayOptions, ReplaySummary};
use slackline::rewind::{self, GroupPlan, RewindError, Target};
use slackline::{dev, send};
use slackline_archive::{Archive, S3Settings};
use slackline_kafka::topics::{TopicNames, NORMALIZER_GROUP};
use slackline_kafka::KafkaSettings;
use slackline_service::Shutdown;
use slackline_store::sqlx::{self, PgPool};
use slackline_testkit::cluster::TestCluster;
use slackline_testkit::kafka::{group_lag, topic_len};
use slackline_testkit::metrics::metric;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::webhook::WebhookReceiver;

const HOME: &str = "T0HOME";
const CUST: &str = "T0CUST";
const AGENT: &str = "U0AGENT";
const CUSTOMER: &str = "U0CUST";
const PARTITIONS: i32 = 3;
/// The conversation's channels; [`TIME_WINDOW_CHANNEL`] groups by a 30-minute
/// window, the others by Slack thread.
const CHANNELS: [&str; 4] = ["C0RA", "C0RB", "C0RC", "C0RD"];
const TIME_WINDOW_CHANNEL: &str = "C0RC";
/// The consumer groups that write the database.
const THREAD_GROUPS: [&str; 3] = ["thread-state", "timeline-writer", "notifier"];
/// Within which every wait must be over.
const CATCH_UP: Duration = Duration::from_secs(90);

/// The schemas the groups write (the `SCHEMA` constants of their crates).
fn group_schemas() -> Vec<String> {
    [
        slackline_thread_state::SCHEMA,
        slackline_timeline_writer::SCHEMA,
        slackline_notifier::SCHEMA,
        slackline_slack_sender::SCHEMA,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Columns that differ between two runs that wrote the same facts: (schema, table,
/// column, why). Tests 2 and 3 compare them only as set / not set.
const VOLATILE: &[(&str, &str, &str, &str)] = &[
    (
        "thread_state",
        "threads",
        "created_at",
        "now() when the thread row is written",
    ),
    (
        "thread_state",
        "threads",
        "updated_at",
        "now() when the thread row is updated",
    ),
    (
        "thread_state",
        "facts",
        "handled_at",
        "now() when the fact is handled",
    ),
    (
        "thread_state",
        "transitions",
        "at",
        "now() when the transition is recorded",
    ),
    (
        "thread_state",
        "transitions",
        "published_at",
        "the time Kafka acknowledged the thread event",
    ),
    (
        "timeline",
        "entries",
        "written_at",
        "now() when the entry is written",
    ),
    (
        "notifier",
        "sent",
        "claim_token",
        "a random token per claim attempt",
    ),
    (
        "notifier",
        "sent",
        "claimed_at",
        "now() when the notification is claimed",
    ),
    (
        "notifier",
        "sent",
        "sent_at",
        "the time the target took the notification",
    ),
    (
        "slack_sender",
        "replies",
        "claim_token",
        "a random token per claim attempt",
    ),
    (
        "slack_sender",
        "replies",
        "first_seen_at",
        "now() when the reply is first seen",
    ),
    (
        "slack_sender",
        "replies",
        "updated_at",
        "now() at each state change",
    ),
    (
        "slack_sender",
        "replies",
        "sent_at",
        "the time Slack took the reply",
    ),
];

/// `thread_state.transitions.seq` (an identity column: commit order across every
/// thread, and a restored table's sequence goes on from where it was) is compared as
/// the transition's rank among its thread's transitions: the order that matters.
const RANKED: (&str, &str, &str) = ("thread_state", "transitions", "seq");

/// The Slack side of the conversation: envelopes as Slack sends them.
#[derive(Default)]
struct Script {
    bodies: Vec<(String, Value)>,
}

impl Script {
    fn envelope(&mut self, event: Value) {
        let event_id = format!("Ev{:04}", self.bodies.len() + 1);
        let sender_team = event
            .get("team")
            .and_then(Value::as_str)
            .unwrap_or(HOME)
            .to_owned();
        let ts = event
            .get("event_ts")
            .or_else(|| event.get("ts"))
            .and_then(Value::as_str)
            .expect("an event ts");
        let event_time: i64 = ts.split('.').next().unwrap().parse().unwrap();
        let body = json!({
            "token": "unused",
            "team_id": sender_team,
            "context_team_id": HOME,
            "api_app_id": "A0SLACKLINE",
            "event": event,
            "type": "event_callback",
            "event_id": event_id,
            "event_time": event_time,
            "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}],
            "is_ext_shared_channel": true,
        });
        self.bodies.push((event_id, body));
    }

    fn post(&mut self, channel: &str, user: &str, ts: &str, text: &str, thread_ts: Option<&str>) {
        let team = if user == AGENT { HOME } else { CUST };
        let mut event = json!({
            "type": "message", "user": user, "team": team, "text": text, "ts": ts,
            "channel": channel, "channel_type": "channel", "event_ts": ts,
        });
        if let Some(thread_ts) = thread_ts {
            event["thread_ts"] = json!(thread_ts);
        }
        self.envelope(event);
    }

    fn file(&mut self, channel: &str, ts: &str, text: &str, thread_ts: &str, name: &str) {
        self.envelope(json!({
            "type": "message", "subtype": "file_share", "user": CUSTOMER, "team": CUST,
            "text": text, "ts": ts, "thread_ts": thread_ts, "channel": channel,
            "event_ts": ts,
            "files": [{"id": format!("F{ts}"), "name": name, "mimetype": "text/plain",
                       "size": 1234, "url_private": format!("https://files.example/{name}")}],
        }));
    }

    fn edit(&mut self, channel: &str, ts: &str, old: &str, new: &str, at: &str) {
        self.envelope(json!({
            "type": "message", "subtype": "message_changed", "hidden": true,
            "channel": channel, "ts": at, "event_ts": at,
            "message": {"type": "message", "user": CUSTOMER, "team": CUST, "text": new,
                        "ts": ts, "edited": {"user": CUSTOMER, "ts": at}},
            "previous_message": {"type": "message", "user": CUSTOMER, "text": old, "ts": ts},
        }));
    }

    fn delete(&mut self, channel: &str, ts: &str, old: &str, at: &str) {
        self.envelope(json!({
            "type": "message", "subtype": "message_deleted", "hidden": true,
            "channel": channel, "ts": at, "deleted_ts": ts, "event_ts": at,
            "previous_message": {"type": "message", "user": CUSTOMER, "text": old, "ts": ts},
        }));
    }

    fn react(&mut self, channel: &str, user: &str, ts: &str, name: &str, at: &str) {
        self.envelope(json!({
            "type": "reaction_added", "user": user, "reaction": name,
            "item": {"type": "message", "channel": channel, "ts": ts}, "event_ts": at,
        }));
    }

    fn bot(&mut self, channel: &str, ts: &str, text: &str) {
        self.envelope(json!({
            "type": "message", "subtype": "bot_message", "bot_id": "B0OTHER",
            "username": "deploy-bot", "text": text, "ts": ts, "channel": channel,
            "event_ts": ts,
        }));
    }
}

/// One channel's part of phase `phase` (0, 1, 2) of the conversation. Each phase
/// touches threads opened earlier: phase 1 edits phase 0's root, reacts to the second
/// thread and replies in the first; phase 2 closes the first with ✅ (and reopens it
/// in every other channel), shares and deletes a file in the second and answers it.
fn channel_phase(s: &mut Script, channel: &str, index: usize, phase: u8) {
    let base = 1_764_000_000 + 10 * i64::try_from(index).unwrap();
    let t = |offset: i64, n: u32| format!("{}.{n:06}", base + offset);
    let root = t(0, 100);
    let second = t(100, 300);
    match phase {
        0 => {
            s.post(
                channel,
                CUSTOMER,
                &root,
                &format!("{channel}: exports fail"),
                None,
            );
            s.post(channel, AGENT, &t(60, 200), "Looking into it", Some(&root));
            s.post(
                channel,
                CUSTOMER,
                &second,
                &format!("{channel}: login loops"),
                None,
            );
        }
        1 => {
            s.edit(
                channel,
                &root,
                &format!("{channel}: exports fail"),
                &format!("{channel}: CSV exports fail"),
                &t(120, 400),
            );
            s.react(channel, CUSTOMER, &second, "eyes", &t(130, 500));
            s.post(channel, CUSTOMER, &t(150, 600), "Any news?", Some(&root));
        }
        _ => {
            // Every channel's first thread is marked done; every other one is
            // reopened by the customer.
            s.react(channel, AGENT, &root, "white_check_mark", &t(600, 700));
            if index.is_multiple_of(2) {
                s.post(
                    channel,
                    CUSTOMER,
                    &t(700, 800),
                    "It failed again",
                    Some(&root),
                );
            }
            s.file(channel, &t(710, 900), "the HAR file", &second, "login.har");
            s.delete(channel, &t(710, 900), "the HAR file", &t(720, 1000));
            s.post(
                channel,
                AGENT,
                &t(730, 1100),
                "Clear your cookies",
                Some(&second),
            );
            s.bot(channel, &t(740, 1200), "deploy finished");
        }
    }
}

/// The conversation's phases, each as the bodies to send (event ids numbered across
/// the whole conversation).
fn conversation() -> Vec<Vec<(String, Value)>> {
    let mut s = Script::default();
    let mut phases = Vec::new();
    for phase in 0..3 {
        let start = s.bodies.len();
        for (index, channel) in CHANNELS.iter().enumerate() {
            channel_phase(&mut s, channel, index, phase);
        }
        phases.push(s.bodies[start..].to_vec());
    }
    phases
}

fn service_env(notify_url: &str) -> Vec<(String, String)> {
    [
        ("GROUPING_MODE", "slack-thread"),
        (
            "GROUPING_CHANNELS",
            &format!("{TIME_WINDOW_CHANNEL}:time-window"),
        ),
        ("GROUPING_WINDOW_MINUTES", "30"),
        // The agent's ✅ arrives from an author the stack cannot look up (no bot
        // tokens): the command accepts anyone.
        ("REACTION_COMMANDS", "white_check_mark:done:anyone"),
        ("NOTIFY_SLACK_WEBHOOK_URL", notify_url),
        ("RETRY_DELAYS_MS", "300,300,300,300,300,300,300,300,300,300"),
        ("QUICK_RETRIES", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The dev stack on `cluster`'s broker under its topic and group names (created by
/// `dev` the first time, found there when it is started again).
async fn start_stack(
    cluster: &TestCluster,
    dir: &std::path::Path,
    db: &TestDatabase,
    notify_url: &str,
    shutdown: Shutdown,
) -> dev::DevStack {
    dev::start(
        dev::DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: dir.to_path_buf(),
            kafka: dev::KafkaChoice::Bootstrap(cluster.bootstrap_servers()),
            topic_names: cluster.names().clone(),
            partitions: PARTITIONS,
            slack_api_base_url: Some("http://127.0.0.1:9".into()),
            database: DatabaseChoice::Url(db.url.clone()),
            service_env: service_env(notify_url),
        },
        shutdown,
    )
    .await
    .expect("the dev stack starts")
}

async fn send_all(stack: &dev::DevStack, bodies: &[(String, Value)]) {
    let http = reqwest::Client::new();
    for (event_id, body) in bodies {
        let status = send::send_body(
            &http,
            &stack.webhook_url(),
            dev::DEV_SECRET,
            serde_json::to_vec(body).unwrap(),
            None,
        )
        .await
        .expect("the edge answers");
        assert_eq!(status, 200, "{event_id}");
    }
}

/// Every (group, topic) whose lag must be 0 for the stack to be caught up, in
/// pipeline order: the normalizer first, so that once its lag is 0 the messages
/// topic holds everything the groups after it must read; each thread group on its
/// source and its retry topic.
fn lag_pairs(names: &TopicNames) -> Vec<(String, String)> {
    let mut pairs = vec![(names.group(NORMALIZER_GROUP), names.raw_events())];
    for group in THREAD_GROUPS {
        pairs.push((names.group(group), names.messages()));
        pairs.push((names.group(group), names.retry(group)));
    }
    pairs
}

/// Waits until every group has committed everything on every topic it reads.
async fn wait_caught_up(bootstrap: &str, names: &TopicNames) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let bootstrap = bootstrap.to_owned();
        let pairs = lag_pairs(names);
        let lags = tokio::task::spawn_blocking(move || {
            pairs
                .into_iter()
                .map(|(g, t)| {
                    let lag = group_lag(&bootstrap, &g, &t, PARTITIONS);
                    (g, t, lag)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        if lags.iter().all(|(_, _, lag)| *lag == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "groups still behind: {lags:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn read_pool(db: &TestDatabase) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .expect("connect to the test database")
}

/// The groups' tables (`schema.table`, sorted), their migration bookkeeping aside.
async fn group_tables(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_schema = ANY($1) AND table_type = 'BASE TABLE' \
           AND table_name <> '_sqlx_migrations' ORDER BY 1, 2",
    )
    .bind(group_schemas())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// How the snapshot treats [`VOLATILE`] columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Every column as it is (the same run: a replay must write nothing).
    EveryColumn,
    /// [`VOLATILE`] columns as set / not set, [`RANKED`] as a rank (another run).
    SameFacts,
}

/// `schema.table` → its rows as canonical JSON text (jsonb's output: keys in a fixed
/// order), sorted.
type Snapshot = BTreeMap<String, Vec<String>>;

async fn snapshot(pool: &PgPool, compare: Compare) -> Snapshot {
    let tables = group_tables(pool).await;
    assert!(
        tables
            .iter()
            .any(|(s, t)| s == "thread_state" && t == "threads")
            && tables
                .iter()
                .any(|(s, t)| s == "timeline" && t == "entries")
            && tables.iter().any(|(s, t)| s == "notifier" && t == "sent"),
        "the groups' tables are there: {tables:?}"
    );
    let mut out = Snapshot::new();
    for (schema, table) in tables {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(pool)
        .await
        .unwrap();
        let fields: Vec<String> = columns
            .iter()
            .map(|c| {
                let volatile = VOLATILE
                    .iter()
                    .any(|(s, t, col, _)| *s == schema && *t == table && col == c);
                let ranked = (RANKED.0, RANKED.1, RANKED.2) == (&schema, &table, c);
                let value = match compare {
                    Compare::SameFacts if volatile => format!("(t.\"{c}\" IS NOT NULL)"),
                    Compare::SameFacts if ranked => {
                        format!("row_number() OVER (PARTITION BY t.thread_id ORDER BY t.\"{c}\")")
                    }
                    _ => format!("t.\"{c}\""),
                };
                format!("'{c}', {value}")
            })
            .collect();
        let sql = format!(
            "SELECT jsonb_build_object({})::text AS r FROM \"{schema}\".\"{table}\" t ORDER BY r",
            fields.join(", ")
        );
        let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap();
        out.insert(format!("{schema}.{table}"), rows);
    }
    out
}

/// Every [`VOLATILE`] and [`RANKED`] column exists (a renamed column must not be
/// compared as volatile unnoticed, nor a new volatile one be missed silently: the
/// latter fails the comparisons loudly).
async fn check_volatile_columns_exist(pool: &PgPool) {
    for (schema, table, column, _) in VOLATILE
        .iter()
        .copied()
        .chain([(RANKED.0, RANKED.1, RANKED.2, "")])
    {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
        )
        .bind(schema)
        .bind(table)
        .bind(column)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(n, 1, "{schema}.{table}.{column} exists");
    }
}

/// The rows of `a` missing from `b` and the rows of `b` missing from `a`, per table
/// (empty when the snapshots are the same).
fn diff(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let tables: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for table in tables {
        let (ra, rb) = (
            a.get(table).cloned().unwrap_or_default(),
            b.get(table).cloned().unwrap_or_default(),
        );
        if ra == rb {
            continue;
        }
        let before = out.len();
        for row in ra.iter().filter(|r| !rb.contains(r)) {
            out.push(format!("{table} - {row}"));
        }
        for row in rb.iter().filter(|r| !ra.contains(r)) {
            out.push(format!("{table} + {row}"));
        }
        if out.len() == before {
            // Same rows, other multiplicities.
            out.push(format!("{table}: {} rows vs {}", ra.len(), rb.len()));
        }
    }
    out
}

fn assert_same(want: &Snapshot, got: &Snapshot, what: &str) {
    let d = diff(want, got);
    assert!(
        d.is_empty(),
        "{what}: the database differs:\n{}",
        d.join("\n")
    );
}

/// The statuses of the snapshot's threads.
fn statuses(s: &Snapshot) -> std::collections::BTreeSet<String> {
    s["thread_state.threads"]
        .iter()
        .map(|row| {
            let row: Value = serde_json::from_str(row).unwrap();
            row["status"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn rows(s: &Snapshot, table: &str) -> usize {
    s.get(table).map_or(0, Vec::len)
}

/// What every test starts with: a database, a webhook receiver, the stack.
struct Run {
    db: TestDatabase,
    dir: tempfile::TempDir,
    hook: WebhookReceiver,
    cluster: TestCluster,
    shutdown: Shutdown,
    stack: dev::DevStack,
    pool: PgPool,
}

impl Run {
    async fn start() -> Run {
        let db = TestDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        let hook = WebhookReceiver::start().await;
        let cluster = TestCluster::kafka();
        let shutdown = Shutdown::new();
        let stack = start_stack(&cluster, dir.path(), &db, &hook.url, shutdown.clone()).await;
        let pool = read_pool(&db).await;
        Run {
            db,
            dir,
            hook,
            cluster,
            shutdown,
            stack,
            pool,
        }
    }

    async fn caught_up(&self) {
        wait_caught_up(&self.stack.bootstrap, &self.stack.names).await;
    }

    /// Stops the whole stack and waits until none of the thread groups has a member.
    async fn stop(self) -> Stopped {
        let Run {
            db,
            dir,
            hook,
            cluster,
            shutdown,
            stack,
            pool,
        } = self;
        shutdown.trigger();
        stack.wait().await.expect("the stack stops cleanly");
        let settings = cluster.settings();
        let names = cluster.names().clone();
        tokio::task::spawn_blocking(move || {
            for group in THREAD_GROUPS {
                let id = names.group(group);
                let deadline = Instant::now() + Duration::from_secs(60);
                while let Err(e) = rewind::check_no_members(&settings, &id) {
                    assert!(Instant::now() < deadline, "{id} still has members: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })
        .await
        .unwrap();
        Stopped {
            db,
            dir,
            hook,
            cluster,
            pool,
        }
    }

    async fn finish(self) {
        let stopped = self.stop().await;
        stopped.pool.close().await;
        stopped.db.drop_database().await;
    }
}

/// The same, its stack stopped (and every group left).
struct Stopped {
    db: TestDatabase,
    dir: tempfile::TempDir,
    hook: WebhookReceiver,
    cluster: TestCluster,
    pool: PgPool,
}

impl Stopped {
    /// The stack again, on the same topics, groups, archive and database.
    async fn restart(self) -> Run {
        let Stopped {
            db,
            dir,
            hook,
            cluster,
            pool,
        } = self;
        let shutdown = Shutdown::new();
        let stack = start_stack(&cluster, dir.path(), &db, &hook.url, shutdown.clone()).await;
        Run {
            db,
            dir,
            hook,
            cluster,
            shutdown,
            stack,
            pool,
        }
    }
}

/// Moves the three thread groups' committed offsets to `target`; the moves per group.
async fn rewind_groups(
    settings: &KafkaSettings,
    names: &TopicNames,
    target: Target,
) -> Result<Vec<Vec<rewind::PartitionMove>>, RewindError> {
    let settings = settings.clone();
    let names = names.clone();
    tokio::task::spawn_blocking(move || {
        THREAD_GROUPS
            .iter()
            .map(|group| {
                let plan = GroupPlan::for_group(&names, group)?;
                rewind::rewind(&settings, &plan, &target, false)
            })
            .collect()
    })
    .await
    .unwrap()
}

/// The records a group re-reads on `topic` after `moves`.
fn reread(moves: &[rewind::PartitionMove], topic: &str) -> i64 {
    moves
        .iter()
        .filter(|m| m.topic == topic)
        .map(rewind::PartitionMove::lag)
        .sum()
}

/// A copy of every group table in schema `backup` (a database backup taken at one
/// point of the conversation).
async fn backup(pool: &PgPool) {
    sqlx::query("CREATE SCHEMA backup")
        .execute(pool)
        .await
        .unwrap();
    for (schema, table) in group_tables(pool).await {
        sqlx::query(&format!(
            "CREATE TABLE backup.\"{schema}__{table}\" AS TABLE \"{schema}\".\"{table}\""
        ))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Restores the backup: every group table emptied and refilled from its copy (the
/// thread rows first, the rows referring to them after), in one transaction.
async fn restore(pool: &PgPool) {
    let mut tables = group_tables(pool).await;
    tables.sort_by_key(|(_, t)| t != "threads");
    let mut tx = pool.begin().await.unwrap();
    let list = tables
        .iter()
        .map(|(s, t)| format!("\"{s}\".\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query(&format!("TRUNCATE {list}"))
        .execute(&mut *tx)
        .await
        .unwrap();
    for (schema, table) in &tables {
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".\"{table}\" OVERRIDING SYSTEM VALUE \
             SELECT * FROM backup.\"{schema}__{table}\""
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// Milliseconds since the epoch, the clock the producers stamp records with.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A time strictly after every record produced so far and at or before every record
/// produced after this returns.
async fn time_mark() -> chrono::DateTime<chrono::Utc> {
    let mark = now_ms() + 1;
    while now_ms() <= mark {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    chrono::DateTime::from_timestamp_millis(mark).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewinding_all_groups_after_restoring_a_mid_conversation_backup_ends_as_the_clean_run() {
    let phases = conversation();
    let run = Run::start().await;
    check_volatile_columns_exist(&run.pool).await;
    let messages_topic = run.stack.names.messages();

    // Phase 0; the rewind time; phase 1; the backup; phase 2: the clean run.
    send_all(&run.stack, &phases[0]).await;
    run.caught_up().await;
    let sent_at_phase_0 = rows(
        &snapshot(&run.pool, Compare::SameFacts).await,
        "notifier.sent",
    );
    let rewind_to = time_mark().await;
    send_all(&run.stack, &phases[1]).await;
    run.caught_up().await;
    let at_phase_1 = snapshot(&run.pool, Compare::SameFacts).await;
    backup(&run.pool).await;
    send_all(&run.stack, &phases[2]).await;
    run.caught_up().await;
    let clean = snapshot(&run.pool, Compare::SameFacts).await;
    let clean_notifications = run.hook.bodies().len();
    assert_eq!(
        statuses(&clean),
        ["done", "todo", "waiting"].map(String::from).into(),
        "the conversation leaves threads in every status"
    );
    assert_eq!(
        clean_notifications,
        rows(&clean, "notifier.sent"),
        "one notification per row"
    );
    assert!(
        rows(&clean, "notifier.sent") > rows(&at_phase_1, "notifier.sent")
            && rows(&clean, "timeline.entries") > rows(&at_phase_1, "timeline.entries")
            && rows(&clean, "thread_state.transitions")
                > rows(&at_phase_1, "thread_state.transitions"),
        "phase 2 wrote notifications, entries and transitions"
    );

    // A rewind under live members is refused, and moves nothing.
    let settings = run.cluster.settings();
    let names = run.cluster.names().clone();
    match rewind_groups(&settings, &names, Target::Time(rewind_to)).await {
        Err(RewindError::ActiveMembers { group, .. }) => {
            assert_eq!(group, names.group(THREAD_GROUPS[0]));
        }
        other => panic!("a rewind of running groups must be refused: {other:?}"),
    }

    // The bug: the database lost what the groups wrote after the backup.
    let stopped = run.stop().await;
    restore(&stopped.pool).await;
    let restored = snapshot(&stopped.pool, Compare::SameFacts).await;
    assert_same(&at_phase_1, &restored, "the restored backup");
    assert!(
        !diff(&clean, &restored).is_empty(),
        "the restored database lacks phase 2"
    );

    // Rewind the three groups to the time between phase 0 and phase 1.
    let moved = rewind_groups(&settings, &names, Target::Time(rewind_to))
        .await
        .expect("rewind of stopped groups");
    let phase_1 = phases[1].len() as i64;
    let phase_2 = phases[2].len() as i64;
    for moves in &moved {
        assert_eq!(
            reread(moves, &messages_topic),
            phase_1 + phase_2,
            "one message record per Slack event after the rewind time: {moves:?}"
        );
    }

    let run = stopped.restart().await;
    run.caught_up().await;
    let recovered = snapshot(&run.pool, Compare::SameFacts).await;
    assert_same(&clean, &recovered, "rewound after the restore");
    // Phase 1 was in the backup: every group recognised it; phase 2 was written again.
    let facts = |outcome| {
        metric(
            &run.stack.thread_state.registry,
            "slackline_thread_state_facts_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(facts("duplicate"), phase_1 as f64);
    assert_eq!(facts("threaded") + facts("unthreaded"), phase_2 as f64);
    let timeline_dups = metric(
        &run.stack.timeline_writer.registry,
        "slackline_timeline_duplicates_skipped_total",
        &[],
    );
    assert_eq!(timeline_dups, phase_1 as f64);
    let already_sent = metric(
        &run.stack.notifier.registry,
        "slackline_notifier_skipped_total",
        &[("reason", "already_sent")],
    );
    let phase_1_notifications = rows(&at_phase_1, "notifier.sent") - sent_at_phase_0;
    assert!(phase_1_notifications > 0);
    assert_eq!(already_sent, phase_1_notifications as f64);
    // The notifications the restore lost were sent again, no others.
    assert_eq!(
        run.hook.bodies().len() - clean_notifications,
        rows(&clean, "notifier.sent") - rows(&at_phase_1, "notifier.sent")
    );

    // Rewinding again on the complete database changes nothing: not a column.
    let complete = snapshot(&run.pool, Compare::EveryColumn).await;
    let stopped = run.stop().await;
    let moved = rewind_groups(&settings, &names, Target::Time(rewind_to))
        .await
        .expect("second rewind");
    for moves in &moved {
        assert_eq!(reread(moves, &messages_topic), phase_1 + phase_2);
    }
    let notifications = stopped.hook.bodies().len();
    let run = stopped.restart().await;
    run.caught_up().await;
    assert_same(
        &complete,
        &snapshot(&run.pool, Compare::EveryColumn).await,
        "rewound on the complete database",
    );
    let dups = metric(
        &run.stack.thread_state.registry,
        "slackline_thread_state_facts_total",
        &[("outcome", "duplicate")],
    );
    assert_eq!(dups, (phase_1 + phase_2) as f64, "every fact a duplicate");
    assert_eq!(
        metric(
            &run.stack.timeline_writer.registry,
            "slackline_timeline_duplicates_skipped_total",
            &[],
        ),
        (phase_1 + phase_2) as f64
    );
    assert_eq!(run.hook.bodies().len(), notifications, "nothing sent again");
    run.finish().await;
}

/// The whole conversation sent and processed: the run, the range its requests were
/// received in, how many there were.
async fn processed_conversation() -> (
    Run,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
    usize,
) {
    let run = Run::start().await;
    check_volatile_columns_exist(&run.pool).await;
    let from = time_mark().await;
    let bodies: Vec<(String, Value)> = conversation().concat();
    send_all(&run.stack, &bodies).await;
    run.caught_up().await;
    let to = time_mark().await;
    (run, from, to, bodies.len())
}

/// Replays `[from, to)` of the stack's archive onto its raw topic (only `channels`
/// when not empty); every record acknowledged; the summary.
async fn replay(
    run: &Run,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    channels: &[&str],
) -> ReplaySummary {
    let archive = Archive::open(&run.stack.archive_url, &S3Settings::default())
        .await
        .expect("open the archive");
    let mut options = ReplayOptions::new(from, to, run.stack.names.raw_events());
    options.channels = channels.iter().map(|c| (*c).to_owned()).collect();
    let summary =
        slackline::replay::replay(&archive, &run.cluster.settings(), &options, &NoProgress)
            .await
            .expect("the replay runs");
    assert!(summary.is_complete(), "{summary:?}");
    assert_eq!(summary.not_acknowledged, 0, "{summary:?}");
    assert_eq!(summary.acknowledged, summary.produced, "{summary:?}");
    assert!(summary.unreadable.is_empty(), "{summary:?}");
    summary
}

fn replayed(run: &Run) -> f64 {
    metric(
        &run.stack.normalizer.registry,
        "slackline_normalizer_replayed_total",
        &[],
    )
}

async fn thread_events_len(run: &Run) -> i64 {
    let bootstrap = run.stack.bootstrap.clone();
    let topic = run.stack.names.thread_events();
    tokio::task::spawn_blocking(move || topic_len(&bootstrap, &topic, PARTITIONS))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_range_already_processed_changes_nothing() {
    let (run, from, to, requests) = processed_conversation().await;
    let before = snapshot(&run.pool, Compare::EveryColumn).await;
    assert!(rows(&before, "timeline.entries") >= requests - CHANNELS.len() * 2);
    let thread_events = thread_events_len(&run).await;
    assert_eq!(
        thread_events,
        i64::try_from(rows(&before, "thread_state.transitions")).unwrap(),
        "one thread event per transition"
    );
    let notifications = run.hook.bodies().len();
    assert_eq!(notifications, rows(&before, "notifier.sent"));

    let summary = replay(&run, from, to, &[]).await;
    assert_eq!(summary.produced, requests as u64, "{summary:?}");
    run.caught_up().await;
    assert_eq!(
        replayed(&run),
        requests as f64,
        "the normalizer saw every replayed record"
    );

    // Byte for byte, every column: nothing was written.
    let after = snapshot(&run.pool, Compare::EveryColumn).await;
    assert_same(&before, &after, "after the replay");
    assert_eq!(
        thread_events_len(&run).await,
        thread_events,
        "no thread event again"
    );
    assert_eq!(
        run.hook.bodies().len(),
        notifications,
        "no notification again"
    );
    // ... because every group recognised each fact, not because nothing arrived.
    let facts = requests as f64;
    assert_eq!(
        metric(
            &run.stack.thread_state.registry,
            "slackline_thread_state_facts_total",
            &[("outcome", "duplicate")],
        ),
        facts,
        "every fact a duplicate for thread-state"
    );
    assert_eq!(
        metric(
            &run.stack.timeline_writer.registry,
            "slackline_timeline_duplicates_skipped_total",
            &[],
        ),
        facts,
        "every fact a duplicate for timeline-writer"
    );
    assert_eq!(
        metric(
            &run.stack.notifier.registry,
            "slackline_notifier_skipped_total",
            &[("reason", "already_sent")],
        ),
        notifications as f64,
        "every notification already sent"
    );
    run.finish().await;
}

/// Deletes what thread-state and timeline-writer wrote for `channel` (a bug that lost
/// it): the rows referring to its threads first, then its own rows, its threads last.
/// The notifier's rows stay: those notifications were delivered.
async fn delete_channel(pool: &PgPool, channel: &str) -> u64 {
    let schemas = [
        slackline_thread_state::SCHEMA,
        slackline_timeline_writer::SCHEMA,
    ];
    let mut by_thread = Vec::new();
    let mut by_channel = Vec::new();
    for (schema, table) in group_tables(pool).await {
        if !schemas.contains(&schema.as_str()) {
            continue;
        }
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&schema)
        .bind(&table)
        .fetch_all(pool)
        .await
        .unwrap();
        let name = format!("\"{schema}\".\"{table}\"");
        if columns.iter().any(|c| c == "channel_id") {
            by_channel.push((table == "threads", name));
        } else if columns.iter().any(|c| c == "thread_id") {
            by_thread.push(name);
        } else {
            panic!("{name}: neither channel_id nor thread_id: how is a channel's data found?");
        }
    }
    by_channel.sort();
    let mut tx = pool.begin().await.unwrap();
    let mut deleted = 0;
    for table in by_thread {
        deleted += sqlx::query(&format!(
            "DELETE FROM {table} WHERE thread_id IN \
             (SELECT thread_id FROM thread_state.threads WHERE channel_id = $1)"
        ))
        .bind(channel)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    }
    for (_, table) in by_channel {
        deleted += sqlx::query(&format!("DELETE FROM {table} WHERE channel_id = $1"))
            .bind(channel)
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
    }
    tx.commit().await.unwrap();
    deleted
}

fn requests_of(channel: &str) -> usize {
    conversation()
        .concat()
        .iter()
        .filter(|(_, body)| {
            let event = &body["event"];
            event["channel"] == channel || event["item"]["channel"] == channel
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_one_channel_fills_the_gap_it_left() {
    const GAP: &str = TIME_WINDOW_CHANNEL;
    const OTHER: &str = "C0RA";
    let (run, from, to, _) = processed_conversation().await;
    let clean = snapshot(&run.pool, Compare::SameFacts).await;
    let notifications = run.hook.bodies().len();
    let thread_events = thread_events_len(&run).await;
    let gap_transitions = clean["thread_state.transitions"]
        .iter()
        .filter(|r| r.contains(&format!("-{GAP}-")))
        .count();
    assert!(gap_transitions > 0);

    assert!(delete_channel(&run.pool, GAP).await > 0);
    let gapped = snapshot(&run.pool, Compare::SameFacts).await;
    let gapped_exactly = snapshot(&run.pool, Compare::EveryColumn).await;
    let missing = diff(&clean, &gapped);
    assert!(!missing.is_empty(), "the deletion shows");
    assert!(
        missing
            .iter()
            .all(|line| line.contains(GAP) && line.contains(" - ")),
        "only {GAP}'s rows are missing: {missing:#?}"
    );

    // Replaying another channel does not fill it (and changes nothing else).
    let other = replay(&run, from, to, &[OTHER]).await;
    assert_eq!(other.produced, requests_of(OTHER) as u64, "{other:?}");
    run.caught_up().await;
    assert_eq!(replayed(&run), other.produced as f64);
    assert_same(
        &gapped_exactly,
        &snapshot(&run.pool, Compare::EveryColumn).await,
        "after replaying another channel",
    );

    // Replaying the channel's range fills it.
    let summary = replay(&run, from, to, &[GAP]).await;
    assert_eq!(summary.produced, requests_of(GAP) as u64, "{summary:?}");
    assert_eq!(summary.by_channel.keys().collect::<Vec<_>>(), [GAP]);
    run.caught_up().await;
    assert_eq!(replayed(&run), (other.produced + summary.produced) as f64);
    assert_same(
        &clean,
        &snapshot(&run.pool, Compare::SameFacts).await,
        "after replaying the channel",
    );
    // The notifications had been delivered: none again. The lost transitions were
    // published again, each once.
    assert_eq!(run.hook.bodies().len(), notifications);
    // (Published by the handler before the offset is committed: caught up means
    // published.)
    let want = thread_events + i64::try_from(gap_transitions).unwrap();
    let len = thread_events_len(&run).await;
    assert_eq!(len, want, "each lost transition published once more");
    run.finish().await;
}
