//! End to end through the `slackline dev` wiring: signed HTTP requests to the edge →
//! archive + `slack.events.raw` → normalizer → `slack.messages.v1` → thread-state,
//! timeline-writer and the notifier (the shared Apache Kafka broker, each stack under
//! topic and group names of its own, `dev` creating them as it does on an existing
//! cluster; a file archive, a real PostgreSQL database per test, a webhook receiver
//! on a real socket).
//!
//! A scripted conversation across five Slack Connect channels (three grouped by Slack
//! thread, one by time window, one manually) must end with exactly the expected
//! threads, statuses, timelines and notifications; sending it all again, and Slack's
//! retries of it, must change nothing (guarantee 2). The second test takes the
//! notifier's target down and checks that thread-state and timeline-writer stay
//! current meanwhile (guarantee 4), then that the notifications arrive once, in
//! per-channel order (guarantee 3). The third is the two-way conversation: a
//! customer asks, an agent replies through `slackline reply` (the slack-sender posts
//! it to a Slack Web API stand-in, whose echo comes back through the edge, once
//! before the sender recorded the ts and once after, and again as Slack's retry),
//! the customer answers in the thread: statuses todo → waiting → todo → waiting, the
//! timeline in order with each reply once as the agent's, one notification per
//! customer message, and `slackline thread` showing the replies as sent.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use slackline::postgres::DatabaseChoice;
use slackline::{dev, send, threads};
use slackline_kafka::topics::{TopicNames, NORMALIZER_GROUP};
use slackline_service::Shutdown;
use slackline_testkit::cluster::TestCluster;
use slackline_testkit::kafka::group_lag;
use slackline_testkit::metrics::metric;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::slack_api::{
    Answer, SlackApiStandIn, STAND_IN_APP_ID, STAND_IN_BOT_ID, STAND_IN_BOT_USER_ID,
};
use slackline_testkit::webhook::WebhookReceiver;

const HOME: &str = "T0HOME";
const CUST: &str = "T0CUST";
const AGENT: &str = "U0AGENT";
const CUSTOMER: &str = "U0CUST";
const PARTITIONS: i32 = 3;

/// The Slack side of the conversation: envelopes as Slack sends them.
#[derive(Default)]
struct Script {
    bodies: Vec<(String, Value)>,
}

impl Script {
    fn envelope(&mut self, event: Value) -> Value {
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
            .unwrap_or("1764000000.000000");
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
        self.bodies.push((event_id, body.clone()));
        body
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

    fn odd(&mut self, channel: &str, ts: &str, text: &str) {
        // A subtype Slack may invent tomorrow: the normalizer degrades it.
        self.envelope(json!({
            "type": "message", "subtype": "huddle_transcript_v9", "user": CUSTOMER,
            "text": text, "ts": ts, "channel": channel, "event_ts": ts,
        }));
    }
}

/// The conversation. Channel C0ONE, C0TWO and C0FIVE group by Slack thread, C0THREE by
/// a 30-minute window, C0FOUR manually (a :ticket: reaction opens a thread).
fn conversation() -> Script {
    let mut s = Script::default();
    // C0ONE: question, agent answer, customer fixes the question, agent marks done,
    // customer comes back in the thread (reopens).
    s.post(
        "C0ONE",
        CUSTOMER,
        "1764000000.000100",
        "Exports fail since 9am",
        None,
    );
    s.post(
        "C0ONE",
        AGENT,
        "1764000060.000200",
        "Looking into it",
        Some("1764000000.000100"),
    );
    s.edit(
        "C0ONE",
        "1764000000.000100",
        "Exports fail since 9am",
        "CSV exports fail since 9am",
        "1764000090.000300",
    );
    s.react(
        "C0ONE",
        AGENT,
        "1764000000.000100",
        "white_check_mark",
        "1764000600.000400",
    );
    s.post(
        "C0ONE",
        CUSTOMER,
        "1764000700.000500",
        "It failed again",
        Some("1764000000.000100"),
    );
    // C0TWO: question, a log file in the thread, agent answer, the file deleted.
    s.post(
        "C0TWO",
        CUSTOMER,
        "1764000010.000100",
        "Login loops forever",
        None,
    );
    s.file(
        "C0TWO",
        "1764000020.000200",
        "the HAR file",
        "1764000010.000100",
        "login.har",
    );
    s.post(
        "C0TWO",
        AGENT,
        "1764000030.000300",
        "Thanks, checking",
        Some("1764000010.000100"),
    );
    s.delete(
        "C0TWO",
        "1764000020.000200",
        "the HAR file",
        "1764000040.000400",
    );
    // C0THREE (time window): two messages a minute apart join one thread, the agent's
    // top-level answer joins it, a message two hours later opens a new one.
    s.post(
        "C0THREE",
        CUSTOMER,
        "1764000000.000100",
        "Billing question",
        None,
    );
    s.post(
        "C0THREE",
        CUSTOMER,
        "1764000060.000200",
        "About invoice 42",
        None,
    );
    s.post(
        "C0THREE",
        AGENT,
        "1764000120.000300",
        "Invoice 42 is fixed",
        None,
    );
    s.post(
        "C0THREE",
        CUSTOMER,
        "1764007300.000400",
        "New topic: SSO",
        None,
    );
    // C0FOUR (manual): chatter opens nothing until an agent reacts with :ticket:.
    s.post(
        "C0FOUR",
        CUSTOMER,
        "1764000000.000100",
        "Is the API down?",
        None,
    );
    s.post(
        "C0FOUR",
        CUSTOMER,
        "1764000030.000200",
        "nvm, small talk",
        None,
    );
    s.react(
        "C0FOUR",
        AGENT,
        "1764000000.000100",
        "ticket",
        "1764000050.000300",
    );
    s.post(
        "C0FOUR",
        AGENT,
        "1764000070.000400",
        "It was a blip",
        Some("1764000000.000100"),
    );
    // C0FIVE: a bot's message opens nothing; a message nobody can parse still becomes
    // a thread, a timeline entry and a notification.
    s.bot("C0FIVE", "1764000000.000100", "deploy finished");
    s.odd("C0FIVE", "1764000010.000200", "voice summary");
    s
}

fn service_env(notify_url: &str) -> Vec<(String, String)> {
    [
        ("GROUPING_MODE", "slack-thread"),
        ("GROUPING_CHANNELS", "C0THREE:time-window,C0FOUR:manual"),
        ("GROUPING_WINDOW_MINUTES", "30"),
        // Reactors are known only through users.info, which this stack does not
        // call (no bot tokens): the agent's ✅ arrives from an unknown author, so the
        // command must accept anyone for C0ONE's done → reopen to happen.
        ("REACTION_COMMANDS", "white_check_mark:done:anyone"),
        ("MANUAL_OPEN_REACTION", "ticket"),
        ("NOTIFY_SLACK_WEBHOOK_URL", notify_url),
        (
            "RETRY_DELAYS_MS",
            "300,300,300,300,300,300,300,300,300,300,300,300,300,300,300,300,300,300,300,300",
        ),
        ("QUICK_RETRIES", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The dev stack on `cluster`'s broker, under its topic and group names (created by
/// `dev`, as on any existing cluster).
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
    .unwrap()
}

async fn send_all(stack: &dev::DevStack, bodies: &[(String, Value)], retry_num: Option<u32>) {
    let http = reqwest::Client::new();
    for (event_id, body) in bodies {
        let status = send::send_body(
            &http,
            &stack.webhook_url(),
            dev::DEV_SECRET,
            serde_json::to_vec(body).unwrap(),
            retry_num,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{event_id}");
    }
}

/// Waits until `groups` (base names, with their source topics' base names) have
/// committed everything on their topics, under the stack's names.
async fn wait_caught_up(stack: &dev::DevStack, groups: &[(&str, &str)], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let bootstrap = stack.bootstrap.clone();
        let names: &TopicNames = &stack.names;
        let list: Vec<(String, String)> = groups
            .iter()
            .map(|(g, t)| (names.group(g), names.name(t)))
            .collect();
        let lags = tokio::task::spawn_blocking(move || {
            list.iter()
                .map(|(g, t)| (g.clone(), group_lag(&bootstrap, g, t, PARTITIONS)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        if lags.iter().all(|(_, lag)| *lag == 0) {
            return;
        }
        assert!(Instant::now() < deadline, "groups still behind: {lags:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// In pipeline order: the normalizer's lag is read first, so once it is 0 the
/// messages topic already holds everything the groups after it must read.
const ALL_GROUPS: [(&str, &str); 4] = [
    (NORMALIZER_GROUP, "slack.events.raw"),
    ("thread-state", "slack.messages.v1"),
    ("timeline-writer", "slack.messages.v1"),
    ("notifier", "slack.messages.v1"),
];

/// Threads and timelines as the CLI shows them: thread id → (status, entries as
/// `kind ts author_kind mode text [deleted] [history n]`).
async fn snapshot(pool: &slackline_store::sqlx::PgPool) -> BTreeMap<String, (String, Vec<String>)> {
    let list = threads::list_threads(pool, None, None, 1000).await.unwrap();
    let mut out = BTreeMap::new();
    for t in list {
        let (thread, entries) = threads::thread(pool, &t.thread_id).await.unwrap().unwrap();
        let lines = entries
            .iter()
            .map(|e| {
                let mut line = format!(
                    "{} {} {} {} {}",
                    e.kind,
                    e.ts,
                    e.author_kind.as_deref().unwrap_or("-"),
                    e.mode,
                    e.reaction.as_deref().or(e.text.as_deref()).unwrap_or("-")
                );
                if e.deleted {
                    line.push_str(" [deleted]");
                }
                let files: Vec<&str> = e
                    .files
                    .as_array()
                    .map(|f| f.iter().filter_map(|f| f["name"].as_str()).collect())
                    .unwrap_or_default();
                if !files.is_empty() {
                    line.push_str(&format!(" [files {}]", files.join(",")));
                }
                let history = e.history.as_array().map_or(0, Vec::len);
                if history > 0 {
                    line.push_str(&format!(" [history {history}]"));
                }
                line
            })
            .collect();
        out.insert(thread.thread_id, (thread.status, lines));
    }
    out
}

/// A thread id: the installing team, the channel and the root's ts.
fn tid(channel: &str, root_ts: &str) -> String {
    format!("{HOME}-{channel}-{root_ts}")
}

fn expected() -> BTreeMap<String, (String, Vec<String>)> {
    let t = |id: (&str, &str), status: &str, lines: &[&str]| {
        (
            tid(id.0, id.1),
            (
                status.to_owned(),
                lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>(),
            ),
        )
    };
    [
        t(
            ("C0ONE", "1764000000.000100"),
            "todo",
            &[
                "posted 1764000000.000100 customer full CSV exports fail since 9am [history 1]",
                "posted 1764000060.000200 agent full Looking into it",
                "edited 1764000000.000100 customer full CSV exports fail since 9am",
                "reaction_added 1764000000.000100 unknown full white_check_mark",
                "posted 1764000700.000500 customer full It failed again",
            ],
        ),
        t(
            ("C0TWO", "1764000010.000100"),
            "waiting",
            &[
                "posted 1764000010.000100 customer full Login loops forever",
                "posted 1764000020.000200 customer full the HAR file [deleted] [files login.har]",
                "posted 1764000030.000300 agent full Thanks, checking",
                "deleted 1764000020.000200 unknown full the HAR file",
            ],
        ),
        t(
            ("C0THREE", "1764000000.000100"),
            "waiting",
            &[
                "posted 1764000000.000100 customer full Billing question",
                "posted 1764000060.000200 customer full About invoice 42",
                "posted 1764000120.000300 agent full Invoice 42 is fixed",
            ],
        ),
        t(
            ("C0THREE", "1764007300.000400"),
            "todo",
            &["posted 1764007300.000400 customer full New topic: SSO"],
        ),
        t(
            ("C0FOUR", "1764000000.000100"),
            "waiting",
            &[
                "posted 1764000000.000100 customer full Is the API down?",
                "reaction_added 1764000000.000100 unknown full ticket",
                "posted 1764000070.000400 agent full It was a blip",
            ],
        ),
        t(
            ("C0FIVE", "1764000010.000200"),
            "todo",
            &["degraded 1764000010.000200 unknown degraded voice summary"],
        ),
    ]
    .into_iter()
    .collect()
}

/// What the notifier must have sent: one per customer message, one per message that
/// could not be processed.
fn expected_notifications() -> usize {
    // C0ONE 2, C0TWO 2, C0THREE 3, C0FOUR 2 customer posts; C0FIVE 1 degraded.
    9 + 1
}

async fn read_pool(db: &TestDatabase) -> slackline_store::sqlx::PgPool {
    slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap()
}

async fn transition_count(pool: &slackline_store::sqlx::PgPool) -> i64 {
    slackline_store::sqlx::query_scalar("SELECT count(*) FROM thread_state.transitions")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_channel_conversation_ends_in_exact_threads_and_replays_change_nothing() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start().await;
    let shutdown = Shutdown::new();
    let cluster = TestCluster::kafka();
    let stack = start_stack(&cluster, dir.path(), &db, &hook.url, shutdown.clone()).await;
    let script = conversation();

    send_all(&stack, &script.bodies, None).await;
    wait_caught_up(&stack, &ALL_GROUPS, Duration::from_secs(60)).await;

    let pool = read_pool(&db).await;
    let first = snapshot(&pool).await;
    let want = expected();
    for (id, thread) in &want {
        assert_eq!(first.get(id), Some(thread), "thread {id}; all: {first:#?}");
    }
    assert_eq!(first.len(), want.len(), "{first:#?}");
    let notifications = hook.bodies();
    assert_eq!(
        notifications.len(),
        expected_notifications(),
        "{notifications:#?}"
    );
    let degraded_notice = notifications
        .iter()
        .filter_map(|b| b["text"].as_str())
        .find(|t| t.contains("could not be fully processed"))
        .expect("a notification about the degraded message");
    assert!(
        degraded_notice.contains("raw/"),
        "names the archive key: {degraded_notice}"
    );
    let transitions = transition_count(&pool).await;

    // Slack retries every delivery: the normalizer drops them as duplicates.
    send_all(&stack, &script.bodies, Some(1)).await;
    wait_caught_up(&stack, &ALL_GROUPS, Duration::from_secs(60)).await;
    assert_eq!(snapshot(&pool).await, first);
    shutdown.trigger();
    stack.wait().await.unwrap();

    // A replay reaches every group again: a new stack (fresh topics and consumer
    // groups under a new prefix, fresh normalizer memory, consumer groups from the
    // start) on the same database gets the whole conversation again. Each group sees
    // every fact a second time and changes nothing: no thread, status, transition,
    // timeline entry or notification.
    let shutdown = Shutdown::new();
    let replay = TestCluster::kafka();
    assert_ne!(replay.names(), cluster.names());
    let stack = start_stack(&replay, dir.path(), &db, &hook.url, shutdown.clone()).await;
    send_all(&stack, &script.bodies, None).await;
    wait_caught_up(&stack, &ALL_GROUPS, Duration::from_secs(60)).await;
    assert_eq!(snapshot(&pool).await, first);
    assert_eq!(transition_count(&pool).await, transitions);
    assert_eq!(hook.bodies().len(), expected_notifications());
    // ... because each group recognised the facts, not because nothing arrived.
    let facts = script.bodies.len() as f64;
    let thread_state_dups = metric(
        &stack.thread_state.registry,
        "slackline_thread_state_facts_total",
        &[("outcome", "duplicate")],
    );
    assert_eq!(
        thread_state_dups, facts,
        "every fact a duplicate for thread-state"
    );
    let timeline_dups = metric(
        &stack.timeline_writer.registry,
        "slackline_timeline_duplicates_skipped_total",
        &[],
    );
    assert_eq!(
        timeline_dups, facts,
        "every fact a duplicate for timeline-writer"
    );
    let already_sent = metric(
        &stack.notifier.registry,
        "slackline_notifier_skipped_total",
        &[("reason", "already_sent")],
    );
    assert_eq!(already_sent, expected_notifications() as f64);

    // The CLI's JSON lines carry what the issue names.
    let (thread, entries) = threads::thread(&pool, &tid("C0ONE", "1764000000.000100"))
        .await
        .unwrap()
        .unwrap();
    let line = threads::thread_json(&thread);
    assert_eq!(line["channel_id"], "C0ONE");
    assert_eq!(line["root_ts"], "1764000000.000100");
    assert_eq!(line["status"], "todo");
    let entry = threads::entry_json(&thread.thread_id, &entries[0]);
    for field in ["kind", "ts", "author_kind", "mode", "text"] {
        assert!(!entry[field].is_null(), "{field} in {entry}");
    }

    shutdown.trigger();
    stack.wait().await.unwrap();
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifier_target_down_never_delays_threads_or_timeline() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start().await;
    hook.set_failing(true);
    let shutdown = Shutdown::new();
    let cluster = TestCluster::kafka();
    let stack = start_stack(&cluster, dir.path(), &db, &hook.url, shutdown.clone()).await;

    let mut script = Script::default();
    for i in 0..10 {
        for channel in ["C0ALPHA", "C0BETA"] {
            script.post(
                channel,
                CUSTOMER,
                &format!("17640000{i:02}.000100"),
                &format!("{channel} message {i}"),
                None,
            );
        }
    }
    send_all(&stack, &script.bodies, None).await;

    // While the target refuses, thread-state and timeline-writer finish everything.
    wait_caught_up(&stack, &ALL_GROUPS[..3], Duration::from_secs(60)).await;
    let pool = read_pool(&db).await;
    let entries: i64 = slackline_store::sqlx::query_scalar("SELECT count(*) FROM timeline.entries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(entries, 20);
    let threads = threads::list_threads(&pool, Some("todo"), None, 100)
        .await
        .unwrap();
    assert_eq!(threads.len(), 20);
    // ... while the notifier is still stuck on the first message of each channel.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook.refused() < 2 {
        assert!(Instant::now() < deadline, "the notifier never tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hook.bodies().is_empty());

    hook.set_failing(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while hook.bodies().len() < 20 {
        assert!(Instant::now() < deadline, "got {:?}", hook.bodies());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_caught_up(&stack, &ALL_GROUPS[3..], Duration::from_secs(60)).await;
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 20, "exactly once each: {bodies:#?}");
    for channel in ["C0ALPHA", "C0BETA"] {
        let order: Vec<usize> = bodies
            .iter()
            .filter_map(|b| b["text"].as_str())
            .filter(|t| t.contains(&format!("{channel} message")))
            .map(|t| {
                let tail = t.rsplit("message ").next().unwrap();
                tail.trim().parse::<usize>().unwrap()
            })
            .collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>(), "{channel} in order");
    }

    shutdown.trigger();
    stack.wait().await.unwrap();
    pool.close().await;
    db.drop_database().await;
}

/// `slackline <args>` (the binary), its stdout; panics when it fails.
async fn slackline(args: Vec<String>, database_url: &str) -> String {
    let database_url = database_url.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_slackline"))
            .args(&args)
            .env("DATABASE_URL", database_url)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "slackline failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `(state, ts)` of a reply in the slack-sender's table.
async fn reply_state(
    pool: &slackline_store::sqlx::PgPool,
    reply_id: &str,
) -> Option<(String, Option<String>)> {
    slackline_store::sqlx::query_as(
        "SELECT state, ts FROM slack_sender.replies WHERE reply_id = $1",
    )
    .bind(reply_id)
    .fetch_optional(pool)
    .await
    .unwrap_or(None)
}

async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn thread_status(pool: &slackline_store::sqlx::PgPool, id: &str) -> Option<String> {
    threads::thread(pool, id)
        .await
        .unwrap()
        .map(|(t, _)| t.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_replies_through_slackline_reply_and_the_customer_answers() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start().await;
    let slack = SlackApiStandIn::start().await;
    let mut echoes = slack.subscribe();
    let shutdown = Shutdown::new();
    let cluster = TestCluster::kafka();
    let mut env = service_env(&hook.url);
    env.push(("SLACK_BOT_TOKENS".into(), format!("{HOME}=xoxb-home-token")));
    env.push(("SLACK_SENDER_HTTP_TIMEOUT_MS".into(), "30000".into()));
    // The test's stand-in is our bot: the normalizer recognises its echoes.
    env.push((
        "SELF_BOT_IDS".into(),
        format!("{STAND_IN_BOT_ID},{STAND_IN_BOT_USER_ID}"),
    ));
    env.push(("SELF_APP_IDS".into(), STAND_IN_APP_ID.into()));
    let stack = dev::start(
        dev::DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: dir.path().to_path_buf(),
            kafka: dev::KafkaChoice::Bootstrap(cluster.bootstrap_servers()),
            topic_names: cluster.names().clone(),
            partitions: PARTITIONS,
            slack_api_base_url: Some(slack.base_url.clone()),
            database: DatabaseChoice::Url(db.url.clone()),
            service_env: env,
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let pool = read_pool(&db).await;
    let now = chrono::Utc::now().timestamp();
    let root = format!("{}.000100", now - 600);
    let thread_id = tid("C0REPLY", &root);
    let reply_args = |reply_id: &str, text: &str| -> Vec<String> {
        [
            "reply",
            thread_id.as_str(),
            text,
            "--agent-id",
            AGENT,
            "--agent-name",
            "Ada",
            "--reply-id",
            reply_id,
            "--bootstrap",
            stack.bootstrap.as_str(),
            "--topic",
            stack.names.replies().as_str(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };

    // 1. A customer asks.
    let mut script = Script::default();
    script.post("C0REPLY", CUSTOMER, &root, "Can I export to Parquet?", None);
    send_all(&stack, &script.bodies, None).await;
    wait_for(
        "the thread opened as todo",
        Duration::from_secs(60),
        || async { thread_status(&pool, &thread_id).await.as_deref() == Some("todo") },
    )
    .await;

    // 2. The agent replies through `slackline reply`. Slack posts it at once but its
    // answer takes 8 s: the echo comes back through the edge before the sender has
    // recorded the ts.
    slack.script(
        "C0REPLY",
        Answer::delayed(Duration::from_secs(8), Answer::Ok),
    );
    let out = slackline(reply_args("r-first", "Yes, since *2.3*"), &db.url).await;
    assert!(out.contains("reply r-first for thread"), "{out}");
    let first = tokio::time::timeout(Duration::from_secs(30), echoes.recv())
        .await
        .expect("the reply reached Slack")
        .unwrap();
    assert_eq!(first.body["thread_ts"], root.as_str());
    let echo = slackline::replies::echo_envelope(&first.channel, &first.ts, &first.body);
    send_all(&stack, &[("echo-1".into(), echo.clone())], None).await;
    wait_for("the thread waiting", Duration::from_secs(60), || async {
        thread_status(&pool, &thread_id).await.as_deref() == Some("waiting")
    })
    .await;
    let (state, ts) = reply_state(&pool, "r-first").await.unwrap();
    assert_eq!(
        (state.as_str(), ts),
        ("sending", None),
        "the echo came first"
    );
    wait_for(
        "the sender recorded the ts",
        Duration::from_secs(60),
        || async {
            reply_state(&pool, "r-first")
                .await
                .and_then(|r| r.1)
                .as_deref()
                == Some(first.ts.as_str())
        },
    )
    .await;
    // Slack retries the echo.
    send_all(&stack, &[("echo-1".into(), echo)], Some(1)).await;

    // 3. The customer answers in the thread (after the reply, by Slack's clock).
    let secs: i64 = first.ts.split('.').next().unwrap().parse().unwrap();
    let answer_ts = format!("{}.000300", secs + 1);
    script.post(
        "C0REPLY",
        CUSTOMER,
        &answer_ts,
        "Great, and JSON?",
        Some(&root),
    );
    send_all(&stack, &script.bodies[1..], None).await;
    wait_for(
        "the thread back to todo",
        Duration::from_secs(60),
        || async { thread_status(&pool, &thread_id).await.as_deref() == Some("todo") },
    )
    .await;

    // 4. A second reply, its echo after the sender recorded the ts (and again as
    // Slack's retry); the same reply sent twice by the support side posts once.
    let out = slackline(reply_args("r-second", "JSON too."), &db.url).await;
    assert!(out.contains("r-second"), "{out}");
    let second = tokio::time::timeout(Duration::from_secs(30), echoes.recv())
        .await
        .expect("the second reply reached Slack")
        .unwrap();
    wait_for(
        "the second reply recorded",
        Duration::from_secs(60),
        || async {
            reply_state(&pool, "r-second")
                .await
                .and_then(|r| r.1)
                .as_deref()
                == Some(second.ts.as_str())
        },
    )
    .await;
    slackline(reply_args("r-second", "JSON too."), &db.url).await;
    let echo = slackline::replies::echo_envelope(&second.channel, &second.ts, &second.body);
    send_all(&stack, &[("echo-2".into(), echo.clone())], None).await;
    send_all(&stack, &[("echo-2".into(), echo)], Some(1)).await;
    let mut groups = ALL_GROUPS.to_vec();
    groups.push(("slack-sender", "support.replies"));
    wait_caught_up(&stack, &groups, Duration::from_secs(60)).await;

    let snapshot = snapshot(&pool).await;
    let agent_line = |ts: &str, text: &str| format!("posted {ts} agent full {text}");
    assert_eq!(
        snapshot.get(&thread_id),
        Some(&(
            "waiting".to_owned(),
            vec![
                format!("posted {root} customer full Can I export to Parquet?"),
                agent_line(&first.ts, "Yes, since *2.3*"),
                format!("posted {answer_ts} customer full Great, and JSON?"),
                agent_line(&second.ts, "JSON too."),
            ]
        )),
        "{snapshot:#?}"
    );
    assert_eq!(
        snapshot.len(),
        1,
        "the replies opened no thread of their own: {snapshot:#?}"
    );
    let statuses: Vec<String> = slackline_store::sqlx::query_scalar(
        "SELECT to_status FROM thread_state.transitions WHERE thread_id = $1 ORDER BY seq",
    )
    .bind(&thread_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(statuses, ["todo", "waiting", "todo", "waiting"]);
    // One notification per customer message, none for the agent's replies.
    let notified: Vec<String> = hook
        .bodies()
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(notified.len(), 2, "{notified:#?}");
    // Slack got each reply once, in the thread, with the home team's token.
    let calls = slack.post_calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    for call in &calls {
        assert_eq!(call.field("thread_ts"), Some(root.as_str()));
        assert_eq!(call.field("channel"), Some("C0REPLY"));
        assert_eq!(call.token.as_deref(), Some("xoxb-home-token"));
    }
    // `slackline thread` shows the replies with their delivery state.
    let shown = slackline(vec!["thread".into(), thread_id.clone()], &db.url).await;
    assert!(shown.contains(&format!("sent {}", first.ts)), "{shown}");
    assert!(shown.contains(&format!("sent {}", second.ts)), "{shown}");
    let json = slackline(
        vec!["thread".into(), thread_id.clone(), "--json".into()],
        &db.url,
    )
    .await;
    let replies: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "reply")
        .collect();
    assert_eq!(replies.len(), 2, "{json}");
    assert_eq!(replies[0]["state"], "sent");
    assert_eq!(replies[0]["ts"], first.ts.as_str());

    shutdown.trigger();
    stack.wait().await.unwrap();
    pool.close().await;
    db.drop_database().await;
}
