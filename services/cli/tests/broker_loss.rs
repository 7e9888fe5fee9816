//! A real broker loss under traffic (issue 10): the whole `slackline dev` stack (edge,
//! file archive, normalizer, thread-state, timeline-writer, notifier on a real
//! PostgreSQL database, the notifier posting to a webhook receiver on a real socket)
//! runs on a private single-node Apache Kafka broker of this test. While senders that
//! behave like Slack post signed events over real sockets and the groups consume, the
//! broker process is killed with SIGKILL, left dead for a few seconds, and started
//! again on the same log directory and ports.
//!
//! One warm-up message goes through every group first, so that the kill falls while
//! the groups are consuming the traffic, not before they joined. The senders are
//! Slack: per channel one message after the other; any non-2xx answer
//! or connection error is retried after a short pause with `X-Slack-Retry-Num`, until
//! a 200; the channel's next message only goes after that 200.
//!
//! What it shows:
//!
//! - Guarantee 1 (no acknowledged event is lost): every attempt the edge answered 200
//!   is on `slack.events.raw` (the very attempt: its event id and retry number) and
//!   its archive object holds the exact body; no attempt that started after the kill
//!   and ended before the restart was answered 200 (the edge never answers 200
//!   without Kafka's acknowledgement); while the broker was down the edge answered
//!   503 (Slack retries), and every event still ended with a 200. Nothing reached a
//!   DLQ.
//! - Guarantee 2 (at most one effect per fact), across whatever redelivery the loss
//!   causes (Slack's retries; raw duplicates of attempts answered 503 that Kafka had
//!   in fact written; offsets not committed when the broker died): exactly one
//!   timeline entry per message, the expected threads, statuses and transitions, and
//!   exactly one notification per customer message at the receiver, which records
//!   every request it gets. The figures say how many duplicates each stage saw (it
//!   varies from run to run, and is zero in some runs).
//! - Guarantee 3 (per-channel order): each channel's accepted attempts sit on the raw
//!   topic in send order, its notifications arrive in send order, its timeline rows
//!   were written in ts order, and each thread's transitions happened in message
//!   order.
//! - The stack recovers by itself: after the restart the edge answers 200 again and
//!   every group catches up (lag 0 on its source and retry topics, the thread-state
//!   outbox drained) within generous timeouts; a hang fails the test.
//!
//! It prints its figures: 503s, connection errors, retries, the outage, the time to
//! the first 200 after the restart, the time for the groups to catch up, and the
//! total duration.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use slackline::postgres::DatabaseChoice;
use slackline::{dev, send};
use slackline_archive::ArchiveRecord;
use slackline_kafka::embedded::{BrokerConfig, EmbeddedBroker};
use slackline_kafka::headers;
use slackline_kafka::topics::{TopicNames, NORMALIZER_GROUP};
use slackline_service::Shutdown;
use slackline_store::sqlx::{self, PgPool};
use slackline_testkit::kafka::{group_lag, read_topic, topic_len, Record};
use slackline_testkit::metrics::metric;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::webhook::WebhookReceiver;

const HOME: &str = "T0HOME";
const CUST: &str = "T0CUST";
const AGENT: &str = "U0AGENT";
const CUSTOMER: &str = "U0CUST";
const PARTITIONS: i32 = 3;
const CHANNELS: usize = 8;
/// The channel of the one message that warms the stack up before the traffic.
const WARM_CHANNEL: &str = "C0WARM";
const PER_CHANNEL: usize = 30;
/// Messages per thread: a customer's root, then agent, customer, agent, and a last
/// reply by the customer (even threads, which end `todo`) or an agent (odd threads,
/// which end `waiting`).
const THREAD_LEN: usize = 5;
/// The pause before a sender retries (Slack waits longer; the test has no minute).
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The pause between two messages of a channel, so that the kill falls in the
/// middle of a stream the groups are still consuming.
const PACE: Duration = Duration::from_millis(20);
/// How long the broker stays dead at least.
const OUTAGE: Duration = Duration::from_secs(6);
/// Generous bounds for what a restarted broker, group rejoins and retries need.
const SEND_DEADLINE: Duration = Duration::from_secs(300);
const CATCH_UP: Duration = Duration::from_secs(180);

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Author {
    Customer,
    Agent,
}

/// One Slack message as the senders deliver it.
#[derive(Debug, Clone)]
struct Message {
    channel: String,
    index: usize,
    event_id: String,
    ts: String,
    root_ts: String,
    author: Author,
    body: Vec<u8>,
}

fn channel_id(c: usize) -> String {
    format!("C0LOSS{c}")
}

fn ts_of(index: usize) -> String {
    format!("{}.000100", 1_764_000_000 + 10 * index)
}

fn text_of(channel: &str, index: usize) -> String {
    format!("{channel}/{index:02}")
}

fn author_of(index: usize) -> Author {
    let thread = index / THREAD_LEN;
    match index % THREAD_LEN {
        0 | 2 => Author::Customer,
        4 if thread.is_multiple_of(2) => Author::Customer,
        _ => Author::Agent,
    }
}

/// Message `i` of `channel` (its place in the channel's threads follows from `i`),
/// as Slack delivers it.
fn message(channel: &str, event_id: String, i: usize) -> Message {
    let ts = ts_of(i);
    let root_ts = ts_of(i - i % THREAD_LEN);
    let author = author_of(i);
    let (user, team) = match author {
        Author::Customer => (CUSTOMER, CUST),
        Author::Agent => (AGENT, HOME),
    };
    let mut event = json!({
        "type": "message", "user": user, "team": team,
        "text": text_of(channel, i), "ts": ts, "channel": channel,
        "channel_type": "channel", "event_ts": ts,
    });
    if root_ts != ts {
        event["thread_ts"] = json!(root_ts);
    }
    let body = json!({
        "token": "unused",
        "team_id": team,
        "context_team_id": HOME,
        "api_app_id": "A0SLACKLINE",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1_764_000_000 + 10 * i,
        "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}],
        "is_ext_shared_channel": true,
    });
    Message {
        channel: channel.to_owned(),
        index: i,
        event_id,
        ts,
        root_ts,
        author,
        body: serde_json::to_vec(&body).unwrap(),
    }
}

/// Every channel's messages, in send order.
fn script() -> Vec<Vec<Message>> {
    (0..CHANNELS)
        .map(|c| {
            let channel = channel_id(c);
            (0..PER_CHANNEL)
                .map(|i| message(&channel, format!("Ev0LOSS{c}M{i:02}"), i))
                .collect()
        })
        .collect()
}

/// One HTTP attempt of a sender.
#[derive(Debug, Clone)]
struct Attempt {
    channel: usize,
    index: usize,
    retry_num: Option<u32>,
    /// The status, or the connection error.
    outcome: Result<u16, String>,
    sent_at: Instant,
    answered_at: Instant,
}

impl Attempt {
    fn ok(&self) -> bool {
        self.outcome == Ok(200)
    }
}

#[derive(Default)]
struct Log {
    attempts: Mutex<Vec<Attempt>>,
    accepted: AtomicUsize,
}

/// Slack for one channel: each message until a 200, then the next.
async fn send_channel(
    channel: usize,
    messages: Vec<Message>,
    url: String,
    log: Arc<Log>,
    shutdown: Shutdown,
) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + SEND_DEADLINE;
    for m in messages {
        let mut retry_num: Option<u32> = None;
        loop {
            let sent_at = Instant::now();
            let outcome = send::send_body(&http, &url, dev::DEV_SECRET, m.body.clone(), retry_num)
                .await
                .map_err(|e| e.to_string());
            let attempt = Attempt {
                channel,
                index: m.index,
                retry_num,
                outcome: outcome.clone(),
                sent_at,
                answered_at: Instant::now(),
            };
            let ok = attempt.ok();
            log.attempts.lock().unwrap().push(attempt);
            if ok {
                log.accepted.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} never got a 200 within {SEND_DEADLINE:?} (last: {outcome:?}, \
                     {} tries; stack shut down: {})",
                    m.event_id,
                    retry_num.map_or(1, |n| n + 1),
                    shutdown.is_triggered()
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            retry_num = Some(retry_num.map_or(1, |n| n + 1));
        }
        tokio::time::sleep(PACE).await;
    }
    Ok(())
}

/// Polls `check` every 250 ms until it says `Ok`; panics with its last answer after
/// `timeout`. Returns how long it took.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return start.elapsed(),
            Err(state) => assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The lag of every group on every topic it reads (normalizer first, so that once
/// it is 0 the messages topic holds everything the groups must read), as
/// `(group, topic, lag)`.
async fn lags(bootstrap: &str, names: &TopicNames) -> Vec<(String, String, i64)> {
    let mut list = vec![(names.group(NORMALIZER_GROUP), names.raw_events())];
    for g in ["thread-state", "timeline-writer", "notifier"] {
        list.push((names.group(g), names.messages()));
        list.push((names.group(g), names.retry(g)));
    }
    let bootstrap = bootstrap.to_owned();
    blocking(move || {
        list.into_iter()
            .map(|(g, t)| {
                let lag = group_lag(&bootstrap, &g, &t, PARTITIONS);
                (g, t, lag)
            })
            .collect()
    })
    .await
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The customer messages' indices of a channel, in send order.
fn customer_indices() -> Vec<usize> {
    (0..PER_CHANNEL)
        .filter(|i| author_of(*i) == Author::Customer)
        .collect()
}

/// Each thread's transitions as `(trigger ts, from, to)`, in the order they must
/// have happened.
fn expected_transitions(root: usize) -> Vec<(String, Option<String>, String)> {
    let mut out = vec![(ts_of(root), None, "todo".to_owned())];
    let mut status = "todo";
    for i in root + 1..root + THREAD_LEN {
        let to = match author_of(i) {
            Author::Customer => "todo",
            Author::Agent => "waiting",
        };
        if to != status {
            out.push((ts_of(i), Some(status.to_owned()), to.to_owned()));
            status = to;
        }
    }
    out
}

fn thread_id(channel: &str, root_ts: &str) -> String {
    format!("{HOME}-{channel}-{root_ts}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_killed_and_restarted_under_traffic_loses_and_doubles_nothing() {
    let test_start = Instant::now();
    // A private broker: this test kills it, which it must never do to the shared one.
    let broker_dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::new(broker_dir.path());
    let mut broker = blocking(move || EmbeddedBroker::start(config))
        .await
        .expect("start the private broker (scripts/fetch-kafka fetches its jars)");
    let bootstrap = broker.bootstrap_servers().to_owned();
    slackline_testkit::cluster::report_private_broker(&bootstrap);
    let names = TopicNames::default();

    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start().await;
    let shutdown = Shutdown::new();
    // `dev` creates every topic on the cluster it is given (replication 1 here).
    let stack = dev::start(
        dev::DevOptions {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            admin_port: 0,
            dir: dir.path().to_path_buf(),
            kafka: dev::KafkaChoice::Bootstrap(bootstrap.clone()),
            topic_names: names.clone(),
            partitions: PARTITIONS,
            slack_api_base_url: Some("http://127.0.0.1:9".into()),
            database: DatabaseChoice::Url(db.url.clone()),
            service_env: [
                ("GROUPING_MODE", "slack-thread"),
                ("NOTIFY_SLACK_WEBHOOK_URL", hook.url.as_str()),
                ("RETRY_DELAYS_MS", "300,300,300,300,300,300,300,300,300,300"),
                ("QUICK_RETRIES", "1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();

    // One customer message through the whole stack first: every group has joined
    // and consumes when the traffic starts, so the kill falls in the middle of it.
    let warm = message(WARM_CHANNEL, "Ev0WARM".to_owned(), 0);
    let warm_log = Arc::new(Log::default());
    send_channel(
        CHANNELS,
        vec![warm.clone()],
        stack.webhook_url(),
        warm_log.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();
    let warm_up = wait_for("the warm-up message in every group", CATCH_UP, || {
        let (pool, hook) = (&pool, &hook);
        async move {
            let entries = count(pool, "SELECT count(*) FROM timeline.entries").await;
            let facts = count(pool, "SELECT count(*) FROM thread_state.facts").await;
            let notified = hook.bodies().len();
            (entries == 1 && facts == 1 && notified == 1)
                .then_some(())
                .ok_or(format!(
                    "timeline {entries}, facts {facts}, notifications {notified}"
                ))
        }
    })
    .await;

    // Slack starts sending.
    let script = script();
    let total = CHANNELS * PER_CHANNEL;
    let log = Arc::new(Log::default());
    let traffic_start = Instant::now();
    let senders: Vec<_> = script
        .iter()
        .enumerate()
        .map(|(c, messages)| {
            tokio::spawn(send_channel(
                c,
                messages.clone(),
                stack.webhook_url(),
                log.clone(),
                shutdown.clone(),
            ))
        })
        .collect();

    // A third of the messages accepted: the broker dies (SIGKILL).
    let third = Instant::now() + Duration::from_secs(120);
    while log.accepted.load(Ordering::SeqCst) < total / 3 {
        assert!(
            Instant::now() < third,
            "a third of the messages not accepted within 120 s: {} accepted",
            log.accepted.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let kill_started = Instant::now();
    let mut broker = blocking(move || {
        broker.kill().expect("SIGKILL the broker");
        broker
    })
    .await;
    let killed_at = Instant::now();
    let accepted_at_kill = log.accepted.load(Ordering::SeqCst);
    // Where the groups were when the broker died (without the warm-up message).
    let timeline_at_kill = count(&pool, "SELECT count(*) FROM timeline.entries").await - 1;
    let notified_at_kill = hook.bodies().len() - 1;

    // Slack keeps sending against the dead broker for a while (at least OUTAGE, and
    // until every channel could have been refused once): the edge must refuse, and
    // must never answer 200, as no broker can acknowledge anything.
    wait_for(
        "503s from the edge while the broker is down",
        OUTAGE + Duration::from_secs(60),
        || {
            let during: Vec<Attempt> = log
                .attempts
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.sent_at >= killed_at)
                .cloned()
                .collect();
            let accepted: Vec<&Attempt> = during.iter().filter(|a| a.ok()).collect();
            assert!(
                accepted.is_empty(),
                "answered 200 while no broker ran: {accepted:#?}"
            );
            let refused = during.iter().filter(|a| a.outcome == Ok(503)).count();
            let long_enough = killed_at.elapsed() >= OUTAGE;
            async move {
                (long_enough && refused >= CHANNELS)
                    .then_some(())
                    .ok_or(format!("{refused} refused"))
            }
        },
    )
    .await;

    // The broker comes back on the same log directory and ports.
    let restart_started = Instant::now();
    let broker = blocking(move || {
        broker.restart().expect("restart the broker");
        broker
    })
    .await;
    let restarted_at = Instant::now();

    for sender in senders {
        sender.await.unwrap().unwrap();
    }
    let traffic_done = Instant::now();
    let attempts = log.attempts.lock().unwrap().clone();

    // Every event got its 200, once (a sender stops at its 200).
    let accepted: Vec<&Attempt> = attempts.iter().filter(|a| a.ok()).collect();
    assert_eq!(accepted.len(), total);
    let unique: BTreeSet<(usize, usize)> = accepted.iter().map(|a| (a.channel, a.index)).collect();
    assert_eq!(unique.len(), total);
    // The outage was seen: 503s while the broker was down ...
    let refused_in_outage = attempts
        .iter()
        .filter(|a| a.sent_at >= kill_started && a.answered_at <= restarted_at)
        .filter(|a| a.outcome == Ok(503))
        .count();
    assert!(
        refused_in_outage > 0,
        "no attempt was answered 503 while the broker was down: the test proved nothing"
    );
    // ... and no 200 without a broker to acknowledge it.
    let impossible: Vec<&&Attempt> = accepted
        .iter()
        .filter(|a| a.sent_at >= killed_at && a.answered_at <= restart_started)
        .collect();
    assert!(
        impossible.is_empty(),
        "answered 200 while no broker ran: {impossible:#?}"
    );
    // Only 503s and (while the edge stayed up) no other refusal: a verified body is
    // never rejected.
    let other: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| !a.ok() && a.outcome != Ok(503))
        .collect();
    let connection_errors = other.iter().filter(|a| a.outcome.is_err()).count();
    assert!(
        other.iter().all(|a| a.outcome.is_err()),
        "answers other than 200 and 503: {other:#?}"
    );
    let first_200_after_restart = accepted
        .iter()
        .filter(|a| a.answered_at > restarted_at)
        .map(|a| a.answered_at)
        .min()
        .map(|t| t - restarted_at);
    let refused_total = attempts.iter().filter(|a| a.outcome == Ok(503)).count();

    // Every 200 is on the raw topic (that very attempt) and in the archive.
    let raw_len = {
        let (b, t) = (bootstrap.clone(), names.raw_events());
        blocking(move || topic_len(&b, &t, PARTITIONS)).await
    };
    let raw = read_topic(
        &bootstrap,
        &names.raw_events(),
        PARTITIONS,
        usize::try_from(raw_len).unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(raw.len() as i64, raw_len, "read the whole raw topic back");
    let mut on_topic: HashMap<(String, Option<String>), Vec<&Record>> = HashMap::new();
    for r in &raw {
        let event_id = r.header(headers::EVENT_ID).unwrap_or("-").to_owned();
        let retry = r.header(headers::RETRY_NUM).map(str::to_owned);
        on_topic.entry((event_id, retry)).or_default().push(r);
    }
    let archive_root = dir.path().join("archive");
    for (c, messages) in script.iter().enumerate() {
        let mut last: Option<(i32, i64)> = None;
        for m in messages {
            let a = accepted
                .iter()
                .find(|a| a.channel == c && a.index == m.index)
                .unwrap();
            let retry = a.retry_num.map(|n| n.to_string());
            let records = on_topic
                .get(&(m.event_id.clone(), retry.clone()))
                .unwrap_or_else(|| {
                    panic!(
                        "{} (retry {retry:?}) was answered 200 but is not on the raw topic",
                        m.event_id
                    )
                });
            assert_eq!(records.len(), 1, "{} retry {retry:?}", m.event_id);
            let record = records[0];
            assert_eq!(record.key.as_deref(), Some(m.channel.as_str()));
            assert_eq!(record.payload, m.body, "{}", m.event_id);
            check_archived(&archive_root, record, m, retry.as_deref());
            // Per-channel order on the topic: one partition, offsets in send order.
            if let Some((partition, offset)) = last {
                assert_eq!(record.partition, partition, "{} partition", m.event_id);
                assert!(
                    record.offset > offset,
                    "{} after its predecessor",
                    m.event_id
                );
            }
            last = Some((record.partition, record.offset));
        }
    }

    // The groups catch up by themselves after the broker came back.
    let customer = customer_indices();
    // Everything below counts the warm-up message too: one more post of a customer.
    let facts_total = total as i64 + 1;
    let want_notifications = CHANNELS * customer.len() + 1;
    let caught_up = wait_for("every group to catch up", CATCH_UP, || {
        let (pool, hook, bootstrap, names) = (&pool, &hook, &bootstrap, &names);
        async move {
            let lags = lags(bootstrap, names).await;
            let entries = count(pool, "SELECT count(*) FROM timeline.entries").await;
            let facts = count(pool, "SELECT count(*) FROM thread_state.facts").await;
            let unpublished = count(
                pool,
                "SELECT count(*) FROM thread_state.transitions WHERE published_at IS NULL",
            )
            .await;
            let notified = hook.bodies().len();
            let done = lags.iter().all(|(_, _, lag)| *lag == 0)
                && entries == facts_total
                && facts == facts_total
                && unpublished == 0
                && notified >= want_notifications;
            done.then_some(()).ok_or(format!(
                "lags {lags:?}, timeline {entries}, facts {facts}, unpublished \
                 transitions {unpublished}, notifications {notified}"
            ))
        }
    })
    .await;
    let caught_up_at = Instant::now();

    // Nothing went to a dead letter topic.
    let mut dlqs = vec![names.raw_dlq()];
    dlqs.extend(["thread-state", "timeline-writer", "notifier"].map(|g| names.dlq(g)));
    let b = bootstrap.clone();
    let dead: Vec<(String, i64)> = blocking(move || {
        dlqs.into_iter()
            .map(|t| {
                let n = topic_len(&b, &t, 1);
                (t, n)
            })
            .collect()
    })
    .await;
    assert!(dead.iter().all(|(_, n)| *n == 0), "DLQ records: {dead:?}");

    // The timeline: exactly one entry per message, written in ts order per channel.
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT channel_id, ts, kind, event_id, \
                (extract(epoch FROM written_at) * 1000000)::bigint \
         FROM timeline.entries ORDER BY channel_id, ts",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len() as i64, facts_total);
    for (c, messages) in script.iter().enumerate() {
        let channel = channel_id(c);
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == channel).collect();
        let got: Vec<(&str, &str, &str)> = mine
            .iter()
            .map(|r| (r.1.as_str(), r.2.as_str(), r.3.as_str()))
            .collect();
        let want: Vec<(&str, &str, &str)> = messages
            .iter()
            .map(|m| (m.ts.as_str(), "posted", m.event_id.as_str()))
            .collect();
        assert_eq!(got, want, "{channel} timeline");
        assert!(
            mine.windows(2).all(|w| w[0].4 <= w[1].4),
            "{channel}: timeline rows written out of ts order: {mine:#?}"
        );
    }

    // Threads, statuses and transitions: every thread of every channel, its final
    // status and its transitions in message order.
    let threads: BTreeMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT thread_id, status FROM thread_state.threads")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let transitions: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT thread_id, trigger_ts, from_status, to_status \
         FROM thread_state.transitions ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut want_threads = BTreeMap::new();
    for messages in &script {
        for root in messages.iter().filter(|m| m.ts == m.root_ts) {
            let id = thread_id(&root.channel, &root.root_ts);
            let status = match author_of(root.index + THREAD_LEN - 1) {
                Author::Customer => "todo",
                Author::Agent => "waiting",
            };
            want_threads.insert(id.clone(), status.to_owned());
            let got: Vec<(String, Option<String>, String)> = transitions
                .iter()
                .filter(|t| t.0 == id)
                .map(|t| (t.1.clone(), t.2.clone(), t.3.clone()))
                .collect();
            assert_eq!(got, expected_transitions(root.index), "{id} transitions");
        }
    }
    want_threads.insert(thread_id(WARM_CHANNEL, &warm.ts), "todo".to_owned());
    assert_eq!(threads, want_threads);
    let want_transitions: usize = want_threads.len()
        + script
            .iter()
            .flatten()
            .filter(|m| m.ts == m.root_ts)
            .map(|root| expected_transitions(root.index).len() - 1)
            .sum::<usize>();
    assert_eq!(transitions.len(), want_transitions, "{transitions:#?}");
    let memberships = count(&pool, "SELECT count(*) FROM thread_state.thread_messages").await;
    assert_eq!(memberships, facts_total);

    // Notifications: one per customer message, none twice, in send order per channel.
    // Anything still under way would arrive now: give it a moment, then look again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bodies = hook.bodies();
    let texts: Vec<String> = bodies
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        texts.len(),
        want_notifications,
        "exactly one notification per customer message: {texts:#?}"
    );
    for messages in &script {
        let channel = &messages[0].channel;
        let order: Vec<usize> = texts
            .iter()
            .filter_map(|t| t.rsplit(": ").next())
            .filter_map(|t| t.strip_prefix(&format!("{channel}/")))
            .map(|i| i.trim().parse::<usize>().unwrap())
            .collect();
        let want: Vec<usize> = messages
            .iter()
            .filter(|m| m.author == Author::Customer)
            .map(|m| m.index)
            .collect();
        assert_eq!(want, customer);
        assert_eq!(order, want, "{channel}: notifications once each, in order");
    }
    let sent = count(
        &pool,
        "SELECT count(*) FROM notifier.sent WHERE state = 'sent'",
    )
    .await;
    assert_eq!(sent, want_notifications as i64);
    let ambiguous = count(
        &pool,
        "SELECT count(*) FROM notifier.sent WHERE state <> 'sent'",
    )
    .await;
    assert_eq!(ambiguous, 0);

    // How much redelivery the loss caused, as each stage counted it.
    let messages_len = {
        let (b, t) = (bootstrap.clone(), names.messages());
        blocking(move || topic_len(&b, &t, PARTITIONS)).await
    };
    let normalizer_consumed = metric(
        &stack.normalizer.registry,
        "slackline_normalizer_consumed_total",
        &[],
    );
    let normalizer_dups = metric(
        &stack.normalizer.registry,
        "slackline_normalizer_outcomes_total",
        &[("outcome", "ignored"), ("reason", "duplicate")],
    );
    let thread_state_dups = metric(
        &stack.thread_state.registry,
        "slackline_thread_state_facts_total",
        &[("outcome", "duplicate")],
    );
    let timeline_dups = metric(
        &stack.timeline_writer.registry,
        "slackline_timeline_duplicates_skipped_total",
        &[],
    );
    let notifier_dups = metric(
        &stack.notifier.registry,
        "slackline_notifier_skipped_total",
        &[("reason", "already_sent")],
    );

    let retries = attempts.len() - total;
    let first_200 = first_200_after_restart.map_or("never".to_owned(), |d| format!("{d:.2?}"));
    eprintln!(
        "broker loss figures:\n  \
         traffic: {total} events over {CHANNELS} channels in {:.1?}, {} attempts, {retries} \
         retries: {refused_total} answered 503 ({refused_in_outage} sent and answered \
         while the broker was down), {connection_errors} connection errors\n  \
         kill: after {accepted_at_kill} events accepted (groups by then: \
         {timeline_at_kill} in the timeline, {notified_at_kill} notified; warm-up through \
         the stack took {warm_up:.1?}); SIGKILL took {:.0?}\n  \
         outage: broker down {:.1?} (of which the restart on the same log dir {:.1?})\n  \
         recovery: first 200 {first_200} after the restart, senders done {:.1?} after \
         it, groups caught up {:.1?} after the senders ({:.1?} after the restart)\n  \
         raw topic: {raw_len} records for {total} events and the warm-up; the \
         normalizer consumed {normalizer_consumed} and dropped {normalizer_dups} as \
         duplicates; messages topic {messages_len} records\n  \
         duplicates recognised: thread-state {thread_state_dups}, timeline-writer \
         {timeline_dups}, notifier {notifier_dups}\n  \
         test total {:.1?}",
        traffic_done - traffic_start,
        attempts.len(),
        killed_at - kill_started,
        restarted_at - killed_at,
        restarted_at - restart_started,
        traffic_done - restarted_at,
        caught_up,
        caught_up_at - restarted_at,
        test_start.elapsed(),
    );

    shutdown.trigger();
    stack.wait().await.unwrap();
    let mut broker = broker;
    blocking(move || broker.stop()).await.unwrap();
    pool.close().await;
    db.drop_database().await;
}

/// The archive object a raw record names exists and holds the exact delivery.
fn check_archived(root: &Path, record: &Record, m: &Message, retry: Option<&str>) {
    let key = record
        .header(headers::ARCHIVE_KEY)
        .unwrap_or_else(|| panic!("{}: no archive key header", m.event_id));
    let locator = slackline_archive::Locator::parse(key).unwrap();
    let object = std::fs::read(root.join(&locator.key))
        .unwrap_or_else(|e| panic!("{}: archive segment {key}: {e}", m.event_id));
    let line = slackline_archive::segment::slice(&object, &locator)
        .unwrap_or_else(|| panic!("{}: {key} names no complete line", m.event_id));
    let archived = ArchiveRecord::from_json(line).unwrap();
    assert_eq!(archived.body.as_ref(), m.body.as_slice(), "{key} body");
    assert_eq!(archived.header("x-slack-retry-num"), retry, "{key} retry");
}
