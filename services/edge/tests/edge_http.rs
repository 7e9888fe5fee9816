//! The edge over real HTTP with a file archive and the shared Apache Kafka broker:
//! what it accepts, what it refuses, how it keys, and that shutdown loses nothing
//! accepted (on the mock cluster, which can slow every request down on cue).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::time::Duration;

use helpers::*;
use slackline_archive::{Archive, ArchiveRecord, S3Settings};
use slackline_slack::sign;

struct Fixture {
    bootstrap: String,
    topic: String,
    archive: Archive,
    _dir: tempfile::TempDir,
    edge: slackline_edge::Edge,
    shutdown: slackline_service::Shutdown,
    http: reqwest::Client,
    // Last: the edge's clients go before a mock cluster does.
    cluster: TestCluster,
}

/// The edge on the shared Apache Kafka broker.
async fn fixture() -> Fixture {
    fixture_on(kafka_cluster()).await
}

async fn fixture_on(cluster: TestCluster) -> Fixture {
    let topic = cluster.names().raw_events();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let archive = Archive::open(&url, &S3Settings::default()).await.unwrap();
    let (edge, shutdown) =
        start_edge(config(&bootstrap, &topic, &url, S3Settings::default())).await;
    Fixture {
        bootstrap,
        topic,
        archive,
        _dir: dir,
        edge,
        shutdown,
        http: reqwest::Client::new(),
        cluster,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signatures_get_401_are_counted_by_reason_and_nothing_is_archived() {
    let f = fixture().await;
    let body = message_event("C1", "Ev401", "hello");
    let addr = f.edge.addr;
    let cases: Vec<(&str, reqwest::Response)> = vec![
        (
            "mismatch",
            post_signed(&f.http, addr, &body, "wrong-secret", now(), &[]).await,
        ),
        (
            "stale",
            post_signed(&f.http, addr, &body, SECRET, now() - 301, &[]).await,
        ),
        (
            "future",
            post_signed(&f.http, addr, &body, SECRET, now() + 301, &[]).await,
        ),
        (
            "missing_signature",
            f.http
                .post(format!("http://{addr}/slack/events"))
                .header("X-Slack-Request-Timestamp", now().to_string())
                .body(body.clone())
                .send()
                .await
                .unwrap(),
        ),
        (
            "missing_timestamp",
            f.http
                .post(format!("http://{addr}/slack/events"))
                .body(body.clone())
                .send()
                .await
                .unwrap(),
        ),
    ];
    for (reason, response) in cases {
        assert_eq!(response.status(), 401, "{reason}");
        assert_eq!(
            counter(
                &f.edge,
                "slackline_edge_signature_failures_total",
                Some(("reason", reason))
            ),
            1,
            "{reason}"
        );
    }
    // One byte changed after signing.
    let ts = now();
    let signature = sign(SECRET, ts, &body);
    let mut altered = body.clone();
    altered[10] ^= 1;
    let response = f
        .http
        .post(format!("http://{addr}/slack/events"))
        .header("X-Slack-Request-Timestamp", ts.to_string())
        .header("X-Slack-Signature", signature)
        .body(altered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        counter(
            &f.edge,
            "slackline_edge_signature_failures_total",
            Some(("reason", "mismatch"))
        ),
        2
    );
    assert_eq!(
        counter(
            &f.edge,
            "slackline_edge_requests_total",
            Some(("status", "401"))
        ),
        6
    );
    assert!(
        f.archive.list("").await.unwrap().is_empty(),
        "nothing unverified is archived"
    );
    assert!(
        read_topic(&f.bootstrap, &f.topic, 1, Duration::from_secs(2))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_names_in_any_case_and_the_second_secret_are_accepted() {
    let f = fixture().await;
    let addr = f.edge.addr;
    for (i, (ts_name, sig_name)) in [
        ("x-slack-request-timestamp", "x-slack-signature"),
        ("X-SLACK-REQUEST-TIMESTAMP", "X-SLACK-SIGNATURE"),
        ("X-Slack-Request-Timestamp", "x-Slack-signaturE"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = message_event("C1", &format!("EvCase{i}"), "hi");
        let ts = now();
        let response = f
            .http
            .post(format!("http://{addr}/slack/events"))
            .header(ts_name, ts.to_string())
            .header(sig_name, sign(SECRET, ts, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{ts_name} / {sig_name}");
    }
    let body = message_event("C1", "EvOld", "signed with the first secret");
    assert_eq!(
        post_signed(&f.http, addr, &body, "old-secret", now(), &[])
            .await
            .status(),
        200
    );
    assert_eq!(
        read_topic(&f.bootstrap, &f.topic, 4, Duration::from_secs(10))
            .await
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn url_verification_is_answered_with_its_challenge() {
    let f = fixture().await;
    let body = br#"{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let response = post_signed(&f.http, f.edge.addr, body, SECRET, now(), &[]).await;
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        json["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    // Unsigned, it is refused like anything else.
    let unsigned = post_signed(&f.http, f.edge.addr, body, "nope", now(), &[]).await;
    assert_eq!(unsigned.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_verified_bodies_are_still_archived_and_produced() {
    let f = fixture().await;
    let bodies: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        b"\xff\xfe\x00binary".to_vec(),
        br#"{"type":"event_callback","event":{"type":"brand_new_event"}}"#.to_vec(),
        br#"{"type":"mystery"}"#.to_vec(),
        b"".to_vec(),
    ];
    for body in &bodies {
        assert_eq!(post(&f.http, f.edge.addr, body).await, 200, "{body:?}");
    }
    let records = read_topic(
        &f.bootstrap,
        &f.topic,
        bodies.len(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(records.len(), bodies.len());
    for record in &records {
        assert_eq!(record.key.as_deref(), Some("unknown"));
        let key = &record.headers["archive-key"];
        let archived = ArchiveRecord::from_json(&f.archive.get(key).await.unwrap()).unwrap();
        assert_eq!(
            archived.body.as_ref(),
            record.payload.as_slice(),
            "archive and Kafka hold the same bytes"
        );
        assert!(bodies.contains(&record.payload));
    }
    assert_eq!(
        counter(
            &f.edge,
            "slackline_edge_accepted_total",
            Some(("kind", "not_json"))
        ),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_and_the_largest_accepted_body_reaches_kafka() {
    let f = fixture().await;
    let limit = slackline_edge::config::DEFAULT_MAX_BODY_BYTES;
    let big = vec![b'a'; limit + 1];
    assert_eq!(post(&f.http, f.edge.addr, &big).await, 413);
    assert_eq!(
        counter(
            &f.edge,
            "slackline_edge_requests_total",
            Some(("status", "413"))
        ),
        1
    );
    assert!(f.archive.list("").await.unwrap().is_empty());
    // A body right at the limit fits in a Kafka record (librdkafka's default
    // message.max.bytes), so it is accepted rather than failing with 503 forever.
    let at_limit = vec![b'b'; limit];
    assert_eq!(post(&f.http, f.edge.addr, &at_limit).await, 200);
    let records = read_topic(&f.bootstrap, &f.topic, 1, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload.len(), limit);
}

#[tokio::test(flavor = "multi_thread")]
async fn app_rate_limited_is_archived_produced_and_counted() {
    let f = fixture().await;
    let body = br#"{"token":"x","team_id":"T123ADS","minute_rate_limited":1518467820,"api_app_id":"A123","type":"app_rate_limited"}"#;
    assert_eq!(post(&f.http, f.edge.addr, body).await, 200);
    assert_eq!(
        counter(&f.edge, "slackline_edge_app_rate_limited_total", None),
        1
    );
    let records = read_topic(&f.bootstrap, &f.topic, 1, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].key.as_deref(),
        Some("T123ADS"),
        "no channel: keyed by team"
    );
    let metrics = f
        .http
        .get(format!("http://{}/metrics", f.edge.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("slackline_edge_app_rate_limited_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_one_channel_land_in_one_partition_in_send_order() {
    let f = fixture().await;
    let channels = ["C0AAA", "C0BBB", "C0CCC", "C0DDD", "C0EEE"];
    let per_channel = 40;
    // Channels are sent concurrently; within a channel, one after another (as Slack
    // does for one conversation).
    let sends = channels.iter().map(|channel| {
        let http = f.http.clone();
        let addr = f.edge.addr;
        async move {
            for seq in 0..per_channel {
                let body = message_event(
                    channel,
                    &format!("Ev{channel}{seq:03}"),
                    &format!("seq {seq}"),
                );
                assert_eq!(post(&http, addr, &body).await, 200);
            }
        }
    });
    futures::future::join_all(sends).await;
    let records = read_topic(
        &f.bootstrap,
        &f.topic,
        channels.len() * per_channel,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(records.len(), channels.len() * per_channel);
    for channel in channels {
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(channel))
            .collect();
        assert_eq!(mine.len(), per_channel, "{channel}");
        assert!(
            mine.iter().all(|r| r.partition == mine[0].partition),
            "{channel} spans partitions"
        );
        let mut by_offset = mine.clone();
        by_offset.sort_by_key(|r| r.offset);
        let ids: Vec<_> = by_offset
            .iter()
            .map(|r| r.headers["slack-event-id"].clone())
            .collect();
        let expected: Vec<_> = (0..per_channel)
            .map(|seq| format!("Ev{channel}{seq:03}"))
            .collect();
        assert_eq!(ids, expected, "{channel} out of order");
    }
    let used: std::collections::BTreeSet<_> = records.iter().map(|r| r.partition).collect();
    assert!(
        used.len() > 1,
        "five channels should spread over partitions: {used:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_loses_no_in_flight_request() {
    // The mock cluster: every produce request must take 300 ms (broker round-trip
    // time on cue) so that requests are in flight when the signal arrives; a real
    // broker on loopback answers before the signal.
    let f = fixture_on(mock_cluster(
        "per-request latency: 300 ms broker round-trip time keeps requests in flight at the shutdown signal",
    ))
    .await;
    // Warm up: connections and the idempotent producer id are in place.
    assert_eq!(
        post(&f.http, f.edge.addr, &message_event("C0", "EvWarm", "hi")).await,
        200
    );
    // Slow Kafka down so requests are in flight when the signal arrives.
    for broker in 1..=3 {
        f.cluster
            .faults()
            .broker_round_trip_time(broker, Duration::from_millis(300))
            .unwrap();
    }
    let n = 30;
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let http = f.http.clone();
            let addr = f.edge.addr;
            tokio::spawn(async move {
                let body = message_event(&format!("C{}", i % 3), &format!("EvShut{i:02}"), "bye");
                (format!("EvShut{i:02}"), post(&http, addr, &body).await)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.shutdown.trigger();
    let mut accepted = Vec::new();
    for r in requests {
        let (id, status) = r.await.unwrap();
        assert!(status == 200 || status == 503, "{id}: {status}");
        if status == 200 {
            accepted.push(id);
        }
    }
    f.edge.wait().await.unwrap();
    assert!(
        !accepted.is_empty(),
        "requests in flight at the signal should complete"
    );
    let records = read_topic(
        &f.bootstrap,
        &f.topic,
        accepted.len() + 1,
        Duration::from_secs(10),
    )
    .await;
    let produced: std::collections::BTreeSet<_> = records
        .iter()
        .map(|r| r.headers["slack-event-id"].clone())
        .collect();
    for id in &accepted {
        assert!(
            produced.contains(id),
            "{id} was answered 200 but is not on Kafka"
        );
    }
}
