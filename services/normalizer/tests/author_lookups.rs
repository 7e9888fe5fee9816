//! Issue 12, item 12: author lookups run concurrently (bounded by
//! `AUTHOR_LOOKUP_CONCURRENCY`) while every channel's events come out in the raw
//! order, and one cold user's messages share one `users.info` call. On the shared
//! Apache Kafka broker, with a `users.info` stub over HTTP that answers after a delay
//! and records every request.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Json;
use serde_json::json;
use slackline_events::decode_message;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::Shutdown;
use slackline_slack_api::BotTokens;
use slackline_testkit::kafka::TestCluster;

const PARTITIONS: i32 = 4;
const HOME: &str = "T0HOME";

/// What the `users.info` stub saw.
#[derive(Default)]
struct Seen {
    /// Every request's user, in arrival order.
    calls: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

type Delay = Arc<dyn Fn(&str) -> Duration + Send + Sync>;

/// A loopback `users.info` answering after `delay(user)`, naming the user
/// `name-<user>` in team T0CUST.
async fn stub(delay: Delay) -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route(
            "/users.info",
            get(
                |State((seen, delay)): State<(Arc<Seen>, Delay)>,
                 Query(q): Query<BTreeMap<String, String>>| async move {
                    let user = q.get("user").cloned().unwrap_or_default();
                    seen.calls.lock().unwrap().push(user.clone());
                    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay(&user)).await;
                    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                    Json(json!({"ok": true, "user": {
                        "id": user, "team_id": "T0CUST", "name": "cust",
                        "profile": {"display_name": format!("name-{user}")}
                    }}))
                },
            ),
        )
        .with_state((seen.clone(), delay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn cluster() -> TestCluster {
    let cluster = TestCluster::kafka();
    let names = cluster.names();
    cluster.create_topic(&names.raw_events(), PARTITIONS);
    cluster.create_topic(&names.messages(), PARTITIONS);
    cluster.create_topic(&names.raw_dlq(), 1);
    cluster
}

fn config(cluster: &TestCluster, slack: String, concurrency: usize) -> NormalizerConfig {
    let names = cluster.names();
    let mut tokens = BotTokens::default();
    tokens.insert(HOME, "xoxb-test");
    NormalizerConfig {
        slack_api_base_url: slack,
        bot_tokens: tokens,
        shutdown_grace: Duration::from_secs(5),
        author_lookup_concurrency: concurrency,
        ..NormalizerConfig::new(cluster.settings(), names)
    }
}

/// One raw record: (channel, body, event id); the message's ts encodes its place.
fn raw(channel: &str, user: &str, seq: usize) -> (String, Vec<u8>, String) {
    let event_id = format!("Ev{channel}x{seq}");
    let body = json!({
        "type": "event_callback", "team_id": "T0CUST", "event_id": event_id,
        "event_time": 1_764_000_000,
        "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}],
        "event": {"type": "message", "channel": channel, "user": user, "text": "hi",
                  "ts": format!("{}.000100", 1_764_100_000 + seq)},
    });
    (
        channel.to_owned(),
        serde_json::to_vec(&body).unwrap(),
        event_id,
    )
}

/// Produces `records` to the raw topic, runs a normalizer until every one has come
/// out, and returns the produced events per channel in topic order as
/// (ts, author's display name), after checking nothing more was produced.
async fn run(
    cluster: &TestCluster,
    config: NormalizerConfig,
    records: &[(String, Vec<u8>, String)],
) -> HashMap<String, Vec<(String, Option<String>)>> {
    let shutdown = Shutdown::new();
    let normalizer = Normalizer::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    slackline_testkit::kafka::produce_records(cluster, &config.raw_topic, records).await;
    let bootstrap = cluster.bootstrap_servers();
    let mut read = slackline_testkit::kafka::read_topic(
        &bootstrap,
        &config.messages_topic,
        PARTITIONS,
        records.len(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(read.len(), records.len(), "every raw event came out");
    shutdown.trigger();
    normalizer.wait().await.unwrap();
    // Every produced record, not only the first `len`: a duplicate would show here.
    let topic = config.messages_topic.clone();
    let produced = tokio::task::spawn_blocking(move || {
        slackline_testkit::kafka::topic_len(&bootstrap, &topic, PARTITIONS)
    })
    .await
    .unwrap();
    assert_eq!(produced, records.len() as i64, "one event per raw event");
    read.sort_by_key(|r| (r.partition, r.offset));
    let mut per_channel: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
    for r in read {
        let event = decode_message(&r.payload).expect("Avro event");
        assert_eq!(r.key.as_deref(), event.channel_id.as_deref());
        per_channel.entry(r.key.expect("keyed")).or_default().push((
            event.ts.expect("ts"),
            event.author.and_then(|a| a.display_name),
        ));
    }
    per_channel
}

/// The raw order of each channel, as (ts, expected display name).
fn expected(
    records: &[(String, Vec<u8>, String)],
) -> HashMap<String, Vec<(String, Option<String>)>> {
    let mut want: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
    for (channel, body, _) in records {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let event = &body["event"];
        want.entry(channel.clone()).or_default().push((
            event["ts"].as_str().unwrap().to_owned(),
            Some(format!("name-{}", event["user"].as_str().unwrap())),
        ));
    }
    want
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_overlap_yet_every_channel_comes_out_in_raw_order() {
    // In each channel the first message's author answers slowest and the last's
    // fastest: lookups that overlap finish in the reverse of the raw order, so any
    // event produced when its lookup ends (not in its channel's turn) reorders.
    let (slack, seen) = stub(Arc::new(|user: &str| {
        let m: u64 = user
            .rsplit('M')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(3);
        Duration::from_millis(60 * (6 - m.min(5)))
    }))
    .await;
    let cluster = cluster();
    let mut records = Vec::new();
    let mut seq = 0;
    for m in 0..6 {
        for c in 0..4 {
            records.push(raw(&format!("C0LANE{c}"), &format!("U0C{c}M{m}"), seq));
            seq += 1;
        }
        // One cold user whose messages arrive together: one users.info call.
        for _ in 0..3 {
            records.push(raw("C0SAME", "U0SAMEM3", seq));
            seq += 1;
        }
    }
    let config = config(&cluster, slack, 16);
    let got = run(&cluster, config, &records).await;
    assert_eq!(got, expected(&records), "per-channel order and enrichment");

    let calls = seen.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|u| *u == "U0SAMEM3").count(),
        1,
        "18 messages of one cold user share one lookup: {calls:?}"
    );
    assert_eq!(calls.len(), 4 * 6 + 1, "one lookup per user: {calls:?}");
    let max = seen.max_in_flight.load(Ordering::SeqCst);
    assert!(max >= 4, "lookups overlapped: at most {max} at once");
    assert!(max <= 16, "the limit holds: {max} at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_of_one_looks_authors_up_one_at_a_time() {
    let (slack, seen) = stub(Arc::new(|_: &str| Duration::from_millis(50))).await;
    let cluster = cluster();
    let mut records = Vec::new();
    for seq in 0..8 {
        records.push(raw(
            &format!("C0ONE{}", seq % 3),
            &format!("U0ONE{seq}"),
            seq,
        ));
    }
    let config = config(&cluster, slack, 1);
    let got = run(&cluster, config, &records).await;
    assert_eq!(got, expected(&records));
    assert_eq!(seen.calls.lock().unwrap().len(), 8);
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 1);
}

/// Nit of the review of item 12: messages of one user whose lookup is in flight wait
/// on it without holding a permit, so with a limit of 2 a slow user's burst leaves
/// the second permit to another user's lookup (while they held one each, the other
/// user waited for the slow answer).
#[tokio::test(flavor = "multi_thread")]
async fn waiting_on_a_lookup_in_flight_holds_no_permit() {
    let (slack, seen) = stub(Arc::new(|user: &str| {
        if user == "U0SLOW" {
            Duration::from_millis(1000)
        } else {
            Duration::from_millis(50)
        }
    }))
    .await;
    let cluster = cluster();
    let mut records = Vec::new();
    // One channel, so one raw partition: read in this order.
    for seq in 0..4 {
        records.push(raw("C0DUP", "U0SLOW", seq));
    }
    records.push(raw("C0DUP", "U0FAST", 4));
    let config = config(&cluster, slack, 2);
    let got = run(&cluster, config, &records).await;
    assert_eq!(got, expected(&records));
    // Both lookups start at once, so either may reach the stub first.
    let mut calls = seen.calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(calls, ["U0FAST", "U0SLOW"], "one lookup per user");
    assert_eq!(
        seen.max_in_flight.load(Ordering::SeqCst),
        2,
        "the other user's lookup ran while the slow one was in flight"
    );
}
