//! End to end on the shared Apache Kafka broker: signed requests into the edge come
//! out of the normalizer as Avro events on `slack.messages.v1`, keyed and ordered by
//! channel, enriched through a local Slack Web API, and the outcome counters add up
//! to the raw events consumed; an event Kafka refuses goes to the DLQ, and a
//! restarted normalizer resumes from its group's committed offsets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Json;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use slackline_archive::S3Settings;
use slackline_edge::{Edge, EdgeConfig};
use slackline_events::{decode_message, AuthorKind, Kind, MessageEvent, Mode};
use slackline_kafka::topics::TopicSpec;
use slackline_normalizer::{Normalizer, NormalizerConfig};
use slackline_service::{LogFormat, Shutdown};
use slackline_slack::{sign, SigningSecrets};
use slackline_slack_api::BotTokens;
use slackline_testkit::kafka::TestCluster;

const SECRET: &str = "e2e-secret";
const PARTITIONS: i32 = 4;
const HOME: &str = "T0HOME";

struct Stack {
    config: NormalizerConfig,
    bootstrap: String,
    messages_topic: String,
    dlq_topic: String,
    edge: Edge,
    normalizer: Option<Normalizer>,
    normalizer_shutdown: Shutdown,
    _dir: tempfile::TempDir,
    shutdown: Shutdown,
    // Last: the clients above close before the cluster goes.
    cluster: TestCluster,
}

impl Stack {
    /// The running normalizer.
    fn n(&self) -> &Normalizer {
        self.normalizer.as_ref().expect("normalizer running")
    }

    /// Stops the normalizer: it finishes what it started, commits, and leaves the group.
    async fn stop_normalizer(&mut self) {
        self.normalizer_shutdown.trigger();
        self.normalizer
            .take()
            .expect("running")
            .wait()
            .await
            .unwrap();
    }

    /// Starts a new normalizer in the same consumer group.
    async fn start_normalizer(&mut self) {
        assert!(self.normalizer.is_none(), "one normalizer at a time");
        self.normalizer_shutdown = Shutdown::new();
        self.normalizer = Some(
            Normalizer::start(self.config.clone(), self.normalizer_shutdown.clone())
                .await
                .unwrap(),
        );
    }

    /// How far the normalizer's group is behind on the raw topic (committed offsets).
    async fn raw_lag(&self) -> i64 {
        let bootstrap = self.bootstrap.clone();
        let group = self.config.group_id.clone();
        let raw = self.config.raw_topic.clone();
        tokio::task::spawn_blocking(move || {
            slackline_testkit::kafka::group_lag(&bootstrap, &group, &raw, PARTITIONS)
        })
        .await
        .unwrap()
    }

    /// Stops the services cleanly, the normalizer leaving its group.
    async fn stop(self) {
        self.shutdown.trigger();
        self.normalizer_shutdown.trigger();
        if let Some(n) = self.normalizer {
            n.wait().await.unwrap();
        }
        self.edge.wait().await.unwrap();
        drop(self.cluster);
    }
}

/// A loopback server answering `users.info` like Slack: U0CUST* are customers of
/// T0CUST with no visible email, U0AG* agents with email, U0HIDDEN not visible.
async fn fake_slack() -> String {
    let app = axum::Router::new().route(
        "/users.info",
        get(|Query(q): Query<BTreeMap<String, String>>| async move {
            let user = q.get("user").cloned().unwrap_or_default();
            Json(if user.starts_with("U0HIDDEN") {
                json!({"ok": false, "error": "user_not_visible"})
            } else if user.starts_with("U0AG") {
                json!({"ok": true, "user": {"id": user, "team_id": HOME, "name": "agent", "profile": {"display_name": "Ada Agent", "email": "ada@home.test"}}})
            } else {
                json!({"ok": true, "user": {"id": user, "team_id": "T0CUST", "name": "cust", "profile": {"display_name": "Carl Customer"}}})
            })
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn stack() -> Stack {
    stack_with_slack(fake_slack().await).await
}

/// The shared broker with this test's raw, messages and raw DLQ topics.
fn cluster() -> TestCluster {
    let cluster = TestCluster::kafka();
    let names = cluster.names();
    cluster.create_topic(&names.raw_events(), PARTITIONS);
    cluster.create_topic(&names.messages(), PARTITIONS);
    cluster.create_topic(&names.raw_dlq(), 1);
    cluster
}

/// A Slack API that answers nothing in time.
async fn slow_slack() -> String {
    let app = axum::Router::new().route(
        "/users.info",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Json(json!({"ok": false, "error": "too_late"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn stack_with_slack(slack_api_base_url: String) -> Stack {
    stack_on(cluster(), slack_api_base_url).await
}

/// The edge and the normalizer on `cluster`, whose raw, messages and raw DLQ topics
/// exist.
async fn stack_on(cluster: TestCluster, slack_api_base_url: String) -> Stack {
    let names = cluster.names();
    let raw = names.raw_events();
    let messages = names.messages();
    let dlq = names.raw_dlq();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let edge = Edge::start(
        EdgeConfig {
            kafka: cluster.settings(),
            secrets: SigningSecrets::new([SECRET]).unwrap(),
            archive_url: format!("file://{}", dir.path().display()),
            s3: S3Settings::default(),
            archive: Default::default(),
            edge_addr: "127.0.0.1:0".parse().unwrap(),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            raw_topic: raw.clone(),
            deadline: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
            shutdown_grace: Duration::from_secs(5),
            limits: slackline_edge::Limits::default(),
            log_format: LogFormat::Text,
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut tokens = BotTokens::default();
    tokens.insert(HOME, "xoxb-test");
    // The product's consumer settings (session timeout included): a normalizer
    // that stops leaves the group, so its successor gets the partitions at once.
    let config = NormalizerConfig {
        slack_api_base_url,
        bot_tokens: tokens,
        ..NormalizerConfig::new(cluster.settings(), names)
    };
    let normalizer_shutdown = Shutdown::new();
    let normalizer = Some(
        Normalizer::start(config.clone(), normalizer_shutdown.clone())
            .await
            .unwrap(),
    );
    Stack {
        config,
        bootstrap,
        messages_topic: messages,
        dlq_topic: dlq.clone(),
        edge,
        normalizer,
        normalizer_shutdown,
        _dir: dir,
        shutdown,
        cluster,
    }
}

fn envelope(event_id: &str, event: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "event_callback", "team_id": "T0CUST", "event_id": event_id, "event_time": 1_764_000_000,
        "authorizations": [{"team_id": HOME, "user_id": "U0BOT", "is_bot": true}], "event": event,
    }))
    .unwrap()
}

async fn post(http: &reqwest::Client, edge: &Edge, body: &[u8]) {
    post_at(http, edge.addr, body).await;
}

async fn post_at(http: &reqwest::Client, addr: std::net::SocketAddr, body: &[u8]) {
    let ts = chrono::Utc::now().timestamp();
    let status = http
        .post(format!("http://{addr}/slack/events"))
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sign(SECRET, ts, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

async fn read_events(
    bootstrap: &str,
    topic: &str,
    want: usize,
) -> Vec<(String, i32, i64, MessageEvent)> {
    read_events_within(bootstrap, topic, want, Duration::from_secs(30)).await
}

/// The events on `topic`, read until `want` have arrived or `timeout` passes.
async fn read_events_within(
    bootstrap: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Vec<(String, i32, i64, MessageEvent)> {
    slackline_testkit::kafka::read_topic(bootstrap, topic, PARTITIONS, want, timeout)
        .await
        .into_iter()
        .map(|r| {
            let event = decode_message(&r.payload).expect("Avro single-object event");
            (
                r.key.expect("keyed by channel"),
                r.partition,
                r.offset,
                event,
            )
        })
        .collect()
}

fn metric(normalizer: &Normalizer, name: &str) -> u64 {
    slackline_testkit::metrics::metric(&normalizer.registry, name, &[]) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_events_come_out_typed_in_channel_order_and_counters_add_up() {
    let s = stack().await;
    let http = reqwest::Client::new();
    let channels = ["C0ALPHA", "C0BRAVO", "C0CHARLIE"];
    let per_channel = 15;
    // Channels concurrently, each channel's events in order.
    futures::future::join_all(channels.iter().map(|channel| {
        let http = http.clone();
        let edge = &s.edge;
        async move {
            for seq in 0..per_channel {
                let user = if seq % 3 == 2 { "U0AGENT" } else { "U0CUSTX" };
                let body = envelope(
                    &format!("Ev{channel}{seq:03}"),
                    json!({"type": "message", "channel": channel, "user": user, "text": format!("seq {seq}"), "ts": format!("1764000{seq:03}.000100")}),
                );
                post(&http, edge, &body).await;
            }
        }
    }))
    .await;
    // Plus: a Slack retry (duplicate id), an irrelevant event, a degraded one, a hidden user.
    post(&http, &s.edge, &envelope("EvC0ALPHA000", json!({"type": "message", "channel": "C0ALPHA", "user": "U0CUSTX", "text": "seq 0", "ts": "1764000000.000100"}))).await;
    post(
        &http,
        &s.edge,
        &envelope(
            "EvHome",
            json!({"type": "app_home_opened", "user": "U0AG1", "channel": "D0X"}),
        ),
    )
    .await;
    post(&http, &s.edge, b"definitely not json").await;
    post(&http, &s.edge, &envelope("EvHidden", json!({"type": "message", "channel": "C0DELTA", "user": "U0HIDDEN1", "text": "hi", "ts": "1764001000.000100"}))).await;

    let want = channels.len() * per_channel + 2;
    let events = read_events(&s.bootstrap, &s.messages_topic, want).await;
    assert_eq!(events.len(), want, "45 messages + degraded + hidden-author");
    for channel in channels {
        let mut mine: Vec<_> = events.iter().filter(|(k, ..)| k == channel).collect();
        assert!(
            mine.iter().all(|(_, p, ..)| *p == mine[0].1),
            "one partition per channel"
        );
        mine.sort_by_key(|(_, _, offset, _)| *offset);
        let texts: Vec<_> = mine.iter().map(|(.., e)| e.text.clone().unwrap()).collect();
        let expected: Vec<_> = (0..per_channel).map(|seq| format!("seq {seq}")).collect();
        assert_eq!(
            texts, expected,
            "{channel}: per-channel order, each once (the retry was dropped)"
        );
        for (.., e) in &mine {
            assert_eq!(e.mode, Mode::Full);
            assert!(matches!(e.kind, Kind::Posted(_)));
            assert!(e.archive_key.starts_with("raw/"));
            let author = e.author.as_ref().unwrap();
            if author.user_id.as_deref() == Some("U0AGENT") {
                assert_eq!(author.kind, AuthorKind::Agent);
                assert_eq!(
                    author.email.as_deref(),
                    Some("ada@home.test"),
                    "enriched through users.info"
                );
            } else {
                assert_eq!(
                    author.kind,
                    AuthorKind::Customer,
                    "team learnt from users.info"
                );
                assert_eq!(author.display_name.as_deref(), Some("Carl Customer"));
                assert!(author.email.is_none());
            }
        }
    }
    let degraded = events
        .iter()
        .find(|(.., e)| e.mode == Mode::Degraded)
        .expect("degraded event");
    assert!(degraded
        .3
        .degraded_reason
        .as_deref()
        .unwrap()
        .contains("not JSON"));
    let hidden = events
        .iter()
        .find(|(k, ..)| k == "C0DELTA")
        .expect("hidden-author message");
    let author = hidden.3.author.as_ref().unwrap();
    assert_eq!(
        (author.kind, author.display_name.as_deref()),
        (AuthorKind::Unknown, None),
        "user_not_visible degrades the author only"
    );
    assert_eq!(hidden.3.mode, Mode::Full);

    // Every raw event has exactly one outcome, and the counters say so.
    let raw_count = (channels.len() * per_channel + 4) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(s.n(), "slackline_normalizer_consumed_total") < raw_count
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(s.n(), "slackline_normalizer_consumed_total"),
        raw_count
    );
    assert_eq!(
        metric(s.n(), "slackline_normalizer_outcomes_total"),
        raw_count,
        "outcomes add up to the input"
    );
    let text = reqwest::get(format!("http://{}/metrics", s.n().admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"slackline_normalizer_outcomes_total{event_type="message",outcome="full",reason="-"} 46"#,
        r#"slackline_normalizer_outcomes_total{event_type="message",outcome="ignored",reason="duplicate"} 1"#,
        r#"slackline_normalizer_outcomes_total{event_type="other",outcome="ignored",reason="irrelevant_type"} 1"#,
        r#"slackline_normalizer_outcomes_total{event_type="other",outcome="degraded",reason="not_json"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_cannot_be_produced_goes_to_the_dlq_with_its_coordinates() {
    // The messages topic refuses every write (a permanent error: the broker answers
    // MESSAGE_TOO_LARGE to any batch, since the topic allows 1 byte): the normalizer
    // cannot produce even a degraded event, so the raw event is dead-lettered.
    let cluster = TestCluster::kafka();
    let names = cluster.names();
    cluster.create_topic(&names.raw_events(), PARTITIONS);
    cluster.create_topic(&names.raw_dlq(), 1);
    let refusing = TopicSpec {
        name: names.messages(),
        partitions: PARTITIONS,
        configs: vec![("max.message.bytes", "1".to_owned())],
    };
    slackline_kafka::topics::create(&cluster.settings(), &[refusing], 1)
        .await
        .expect("create the refusing messages topic");
    let s = stack_on(cluster, fake_slack().await).await;
    let http = reqwest::Client::new();
    let body = envelope(
        "EvPoison",
        json!({"type": "message", "channel": "C0ECHO", "user": "U0CUSTX", "text": "help", "ts": "1764002000.000100"}),
    );
    post(&http, &s.edge, &body).await;

    let bootstrap = s.bootstrap.clone();
    let dlq_topic = s.dlq_topic.clone();
    let record = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", slackline_testkit::unique_name("dlqreader"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&dlq_topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                return Some(
                    serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap(),
                );
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a DLQ record");
    assert_eq!(record["original"]["key"], "C0ECHO");
    assert!(record["original"]["offset"].is_i64());
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("too large"),
        "the broker's error: {record}"
    );
    assert_eq!(
        record["payload_json"]["event_id"], "EvPoison",
        "the raw payload, readable"
    );
    assert!(record["headers"]["archive-key"]
        .as_str()
        .unwrap()
        .starts_with("raw/"));
    // The same format as every group's dead letters: `slackline dlq redrive` reads it.
    let back =
        slackline_consumer::redrive(&serde_json::to_vec(&record).unwrap()).expect("redrivable");
    assert_eq!(back.key.as_deref(), Some(&b"C0ECHO"[..]));
    assert!(String::from_utf8(back.payload)
        .unwrap()
        .contains("EvPoison"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = reqwest::get(format!("http://{}/metrics", s.n().admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(r#"outcome="dlq",reason="-"} 1"#) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains(r#"slackline_normalizer_outcomes_total{event_type="message",outcome="dlq",reason="-"} 1"#), "{text}");
    assert_eq!(metric(s.n(), "slackline_normalizer_consumed_total"), 1);
    s.stop().await;
}

/// Lookups run concurrently (`AUTHOR_LOOKUP_CONCURRENCY`): the lookups of events
/// arriving together time out together, within one budget, and the first timeout
/// pauses every later lookup (no request, no budget spent).
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_slack_api_costs_one_lookup_budget_then_lookups_pause() {
    let s = stack_with_slack(slow_slack().await).await;
    let http = reqwest::Client::new();
    let lookups = |result: &str| {
        slackline_testkit::metrics::metric(
            &s.n().registry,
            "slackline_normalizer_author_lookups_total",
            &[("result", result)],
        ) as u64
    };
    let post_range = |range: std::ops::Range<usize>| {
        let http = http.clone();
        let edge = s.edge.addr;
        async move {
            for i in range {
                let body = envelope(
                    &format!("EvSlow{i}"),
                    json!({"type": "message", "channel": "C0SLOW", "user": format!("U0CUST{i}"), "text": format!("m{i}"), "ts": format!("1764003{i:03}.000100")}),
                );
                post_at(&http, edge, &body).await;
            }
        }
    };
    post_range(0..6).await;
    let events = read_events(&s.bootstrap, &s.messages_topic, 6).await;
    assert_eq!(events.len(), 6, "every message still comes out");
    assert!(events
        .iter()
        .all(|(.., e)| e.mode == Mode::Full && e.author.as_ref().unwrap().display_name.is_none()));
    let (timeouts, paused) = (lookups("timeout"), lookups("paused"));
    assert!(timeouts >= 1, "the slow API was asked");
    assert_eq!(timeouts + paused, 6, "every author lookup ended");

    post_range(6..12).await;
    let events = read_events(&s.bootstrap, &s.messages_topic, 12).await;
    assert_eq!(events.len(), 12);
    assert_eq!(lookups("timeout"), timeouts, "no lookup during the pause");
    assert_eq!(lookups("paused"), paused + 6);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_normalizer_resumes_exactly_where_it_stopped() {
    let mut s = stack().await;
    let http = reqwest::Client::new();
    async fn send(http: &reqwest::Client, edge: &Edge, range: std::ops::Range<usize>) {
        for i in range {
            let body = envelope(
                &format!("EvRestart{i:03}"),
                json!({"type": "message", "channel": format!("C0R{}", i % 3), "user": "U0CUSTX", "text": format!("r{i}"), "ts": format!("1764004{i:03}.000100")}),
            );
            post(http, edge, &body).await;
        }
    }
    send(&http, &s.edge, 0..30).await;
    assert_eq!(
        read_events(&s.bootstrap, &s.messages_topic, 30).await.len(),
        30
    );
    s.stop_normalizer().await;
    // The stopped member committed exactly what it finished: all 30.
    assert_eq!(
        s.raw_lag().await,
        0,
        "the final commit covers every outcome"
    );
    s.start_normalizer().await;
    send(&http, &s.edge, 30..45).await;

    // The new member is done once it has an outcome for each new raw event and its
    // group has committed the end of the raw topic: everything it will ever produce
    // is then on the messages topic, and one record too many would show.
    slackline_testkit::wait_until(
        "15 outcomes of the new member",
        Duration::from_secs(30),
        || async { metric(s.n(), "slackline_normalizer_outcomes_total") >= 15 },
    )
    .await;
    slackline_testkit::wait_until(
        "the group's commit at the end of the raw topic",
        Duration::from_secs(30),
        || async { s.raw_lag().await == 0 },
    )
    .await;
    let events =
        read_events_within(&s.bootstrap, &s.messages_topic, 46, Duration::from_secs(5)).await;
    let mut texts: Vec<String> = events
        .iter()
        .map(|(.., e)| e.text.clone().unwrap())
        .collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 45, "nothing skipped across the restart");
    assert_eq!(
        events.len(),
        45,
        "nothing produced twice: the committed offsets are exact"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(s.n(), "slackline_normalizer_consumed_total") < 15
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(s.n(), "slackline_normalizer_consumed_total"),
        15,
        "the new member read only what was new"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_handover_mid_stream_loses_no_raw_event() {
    use slackline_testkit::wait_until;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut s = stack().await;
    let http = reqwest::Client::new();
    let addr = s.edge.addr;
    let channels = 12;
    let handed_over = AtomicBool::new(false);
    // Events keep arriving while a second member joins (every partition is revoked,
    // some with outcomes in flight, and reassigned) and then the first leaves (the
    // second takes every partition); 24 more follow the handover.
    let send = async {
        let mut sent = Vec::new();
        let mut after = 0;
        while after < 24 {
            let i = sent.len();
            let channel = format!("C0H{:02}", i % channels);
            let body = envelope(
                &format!("EvHand{i:04}"),
                json!({"type": "message", "channel": channel, "user": "U0CUSTX", "text": format!("h{i:04}"), "ts": format!("1764005{i:03}.000100")}),
            );
            post_at(&http, addr, &body).await;
            sent.push((channel, format!("h{i:04}")));
            if handed_over.load(Ordering::SeqCst) {
                after += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    };
    let a_registry = s.n().registry.clone();
    let count = |registry: &prometheus::Registry, name: &str| {
        slackline_testkit::metrics::metric(registry, name, &[]) as u64
    };
    let b_shutdown = Shutdown::new();
    let handover = async {
        wait_until(
            "the first member at work",
            Duration::from_secs(30),
            || async { count(&a_registry, "slackline_normalizer_consumed_total") >= 20 },
        )
        .await;
        let b = Normalizer::start(s.config.clone(), b_shutdown.clone())
            .await
            .unwrap();
        wait_until(
            "the second member at work",
            Duration::from_secs(30),
            || async { count(&b.registry, "slackline_normalizer_consumed_total") >= 1 },
        )
        .await;
        s.stop_normalizer().await;
        handed_over.store(true, Ordering::SeqCst);
        b
    };
    let (sent, b) = tokio::join!(send, handover);

    // Done once the second member has an outcome for everything it read and the
    // group has committed the end of the raw topic.
    wait_until(
        "the group's commit at the end of the raw topic",
        Duration::from_secs(30),
        || async {
            count(&b.registry, "slackline_normalizer_outcomes_total")
                == count(&b.registry, "slackline_normalizer_consumed_total")
                && s.raw_lag().await == 0
        },
    )
    .await;
    for (member, registry) in [("first", &a_registry), ("second", &b.registry)] {
        assert_eq!(
            count(registry, "slackline_normalizer_outcomes_total"),
            count(registry, "slackline_normalizer_consumed_total"),
            "{member} member: one outcome per raw event read"
        );
    }
    let events = read_events_within(
        &s.bootstrap,
        &s.messages_topic,
        usize::MAX,
        Duration::from_secs(5),
    )
    .await;
    let mut by_channel: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, _, _, event) in &events {
        by_channel
            .entry(key.clone())
            .or_default()
            .push(event.text.clone().unwrap());
    }
    // `events` is in offset order per partition, so per channel too.
    let mut duplicates = 0;
    for channel in (0..channels).map(|c| format!("C0H{c:02}")) {
        let expected: Vec<&String> = sent
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, text)| text)
            .collect();
        let produced = by_channel.get(&channel).cloned().unwrap_or_default();
        let mut first: Vec<&String> = Vec::new();
        for text in &produced {
            if first.contains(&text) {
                duplicates += 1;
            } else {
                first.push(text);
            }
        }
        assert_eq!(
            first, expected,
            "{channel}: every raw event once at least, first occurrences in Slack's order"
        );
    }
    let re_read = count(&a_registry, "slackline_normalizer_consumed_total")
        + count(&b.registry, "slackline_normalizer_consumed_total")
        - sent.len() as u64;
    println!(
        "handover: {} sent, {} re-read after the rebalance, {duplicates} produced twice",
        sent.len(),
        re_read
    );
    b_shutdown.trigger();
    b.wait().await.unwrap();
    s.stop().await;
}
