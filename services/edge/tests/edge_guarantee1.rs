//! Guarantee 1 against a real S3 server (Garage) and Apache Kafka: the edge answers
//! 200 only when the request is both in the archive and acknowledged by Kafka, and
//! 503 whenever either is failing, so that Slack retries.
//!
//! Kafka is the shared broker, except where a test needs Kafka to fail: a broker of
//! the test's own that it kills (SIGKILL) and restarts for "Kafka is down", and the
//! mock cluster for produce errors on cue, which a real broker cannot give.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use helpers::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use slackline_archive::{Archive, ArchiveRecord};
use slackline_kafka::embedded::{BrokerConfig, EmbeddedBroker};
use slackline_kafka::topics::{TopicNames, TopicSpec};
use slackline_kafka::KafkaSettings;
use slackline_testkit::Garage;

/// The edge's Kafka in a test.
enum Kafka {
    /// The shared broker, or the mock cluster for injected faults.
    Cluster(TestCluster),
    /// A broker of this test's own, which it may kill and restart.
    Private {
        broker: EmbeddedBroker,
        _dir: tempfile::TempDir,
    },
}

struct Fixture {
    bootstrap: String,
    topic: String,
    garage: Garage,
    archive: Archive,
    edge: slackline_edge::Edge,
    _shutdown: slackline_service::Shutdown,
    http: reqwest::Client,
    // Last: the edge's clients go before the cluster does.
    kafka: Kafka,
}

impl Fixture {
    /// The mock cluster, for fault injection.
    fn faults(&self) -> &slackline_testkit::kafka::Mock {
        match &self.kafka {
            Kafka::Cluster(cluster) => cluster.faults(),
            Kafka::Private { .. } => panic!("fault injection needs the mock cluster"),
        }
    }

    /// The test's own broker.
    fn broker(&mut self) -> &mut EmbeddedBroker {
        match &mut self.kafka {
            Kafka::Private { broker, .. } => broker,
            Kafka::Cluster(_) => panic!("only a private broker may be killed"),
        }
    }
}

/// The edge on the shared Apache Kafka broker.
async fn fixture(deadline: Duration) -> Fixture {
    let cluster = kafka_cluster();
    let bootstrap = cluster.bootstrap_servers();
    let topic = cluster.names().raw_events();
    fixture_on(Kafka::Cluster(cluster), bootstrap, topic, deadline).await
}

/// The edge on the mock cluster, for a test that injects `reason`.
async fn mock_fixture(reason: &str, deadline: Duration) -> Fixture {
    let cluster = mock_cluster(reason);
    let bootstrap = cluster.bootstrap_servers();
    let topic = cluster.names().raw_events();
    fixture_on(Kafka::Cluster(cluster), bootstrap, topic, deadline).await
}

/// The edge on an Apache Kafka broker of the test's own (never kill the shared one).
async fn private_broker_fixture(deadline: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut broker_config = BrokerConfig::new(dir.path());
    // After a kill, the restarted broker may register only once the controller has
    // expired its previous session (9 s by default): a short one restarts sooner.
    broker_config.properties = vec![
        ("broker.session.timeout.ms".into(), "2000".into()),
        ("broker.heartbeat.interval.ms".into(), "500".into()),
    ];
    let broker = tokio::task::spawn_blocking(move || EmbeddedBroker::start(broker_config))
        .await
        .unwrap()
        .expect("private broker starts");
    let bootstrap = broker.bootstrap_servers().to_owned();
    let topic =
        TopicNames::with_prefix(format!("{}.", slackline_testkit::unique_name("t"))).raw_events();
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: PARTITIONS,
        configs: Vec::new(),
    };
    slackline_kafka::topics::create(&KafkaSettings::new(&bootstrap), &[spec], 1)
        .await
        .expect("create the raw topic on the private broker");
    let kafka = Kafka::Private { broker, _dir: dir };
    fixture_on(kafka, bootstrap, topic, deadline).await
}

async fn fixture_on(kafka: Kafka, bootstrap: String, topic: String, deadline: Duration) -> Fixture {
    let garage = tokio::task::spawn_blocking(Garage::start)
        .await
        .unwrap()
        .expect("garage starts");
    let url = garage.archive_url("slack");
    let s3 = s3_settings(&garage);
    let archive = Archive::open(&url, &s3).await.unwrap();
    let mut config = config(&bootstrap, &topic, &url, s3);
    config.deadline = deadline;
    let (edge, shutdown) = start_edge(config).await;
    Fixture {
        bootstrap,
        topic,
        garage,
        archive,
        edge,
        _shutdown: shutdown,
        http: reqwest::Client::new(),
        kafka,
    }
}

/// Sends `n` events (ids `{prefix}{i}`) over three channels; returns id -> (status, body).
async fn send_batch(f: &Fixture, prefix: &str, n: usize) -> BTreeMap<String, (u16, Vec<u8>)> {
    let sends = (0..n).map(|i| {
        let http = f.http.clone();
        let addr = f.edge.addr;
        let id = format!("{prefix}{i:03}");
        async move {
            let body = message_event(&format!("C0CH{}", i % 3), &id, &format!("message {i}"));
            let status = post(&http, addr, &body).await;
            (id, (status, body))
        }
    });
    futures::future::join_all(sends).await.into_iter().collect()
}

/// Every 200 in `sent` has its Kafka record (key, headers, identical body) and its
/// archive object (identical body, the request's headers).
async fn assert_every_200_is_archived_and_produced(
    f: &Fixture,
    sent: &BTreeMap<String, (u16, Vec<u8>)>,
) {
    let accepted: Vec<_> = sent
        .iter()
        .filter(|(_, (status, _))| *status == 200)
        .collect();
    // Read everything there is; 503s may have left records too (Slack retries them
    // anyway; duplicates are the normalizer's to drop).
    let records = read_topic(&f.bootstrap, &f.topic, usize::MAX, Duration::from_secs(3)).await;
    let by_id: BTreeMap<_, _> = records
        .iter()
        .map(|r| (r.headers["slack-event-id"].clone(), r))
        .collect();
    for (id, (_, body)) in accepted {
        let record = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} answered 200 but has no Kafka record"));
        assert_eq!(
            &record.payload, body,
            "{id}: Kafka value differs from the request body"
        );
        let channel = serde_json::from_slice::<serde_json::Value>(body).unwrap()["event"]
            ["channel"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(record.key.as_deref(), Some(channel.as_str()), "{id}: key");
        assert_eq!(record.headers["slack-event-type"], "message");
        assert!(record.headers.contains_key("received-at"));
        let key = &record.headers["archive-key"];
        assert!(
            key.starts_with("raw/") && key.contains(".jsonl#"),
            "{key}: a locator in a segment"
        );
        let object = f
            .archive
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("{id}: archive object {key}: {e}"));
        let archived = ArchiveRecord::from_json(&object).unwrap();
        assert_eq!(&archived.body[..], &body[..], "{id}: archived body differs");
        assert!(archived.header("x-slack-request-timestamp").is_some());
        assert!(archived.header("x-slack-signature").is_some());
    }
}

/// Posts fresh events on each of the three channels (whose partitions may have
/// different leaders) until each gets 200, or panics after `within`.
async fn wait_for_recovery(f: &Fixture, prefix: &str, within: Duration) {
    let start = Instant::now();
    let mut i = 0;
    for channel in ["C0CH0", "C0CH1", "C0CH2"] {
        loop {
            let body = message_event(channel, &format!("{prefix}{i:03}"), "probe");
            i += 1;
            let status = post(&f.http, f.edge.addr, &body).await;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            assert!(
                start.elapsed() < within,
                "edge did not recover within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_200_has_its_archive_object_and_its_kafka_record() {
    let f = fixture(Duration::from_secs(2)).await;
    let sent = send_batch(&f, "EvOk", 60).await;
    assert!(
        sent.values().all(|(status, _)| *status == 200),
        "healthy stack: all 200"
    );
    assert_every_200_is_archived_and_produced(&f, &sent).await;
    // A Slack retry is a new delivery with its own archive object: nothing is overwritten.
    let body = message_event("C0CH0", "EvOk000", "message 0");
    let retried = post_signed(
        &f.http,
        f.edge.addr,
        &body,
        SECRET,
        now(),
        &[
            ("X-Slack-Retry-Num", "1"),
            ("X-Slack-Retry-Reason", "http_timeout"),
        ],
    )
    .await;
    assert_eq!(retried.status(), 200);
    let archived = helpers::archived_requests(&f.archive).await;
    assert_eq!(archived.len(), 61, "one archive entry per 200");
    let deliveries: Vec<_> = archived
        .iter()
        .filter(|(_, r)| r.body[..] == body[..])
        .collect();
    assert_eq!(
        deliveries.len(),
        2,
        "the retry is archived beside the first delivery"
    );
    let records = read_topic(&f.bootstrap, &f.topic, 61, Duration::from_secs(10)).await;
    let retry = records
        .iter()
        .find(|r| r.headers.get("slack-retry-num").map(String::as_str) == Some("1"))
        .unwrap();
    assert_eq!(retry.headers["slack-retry-reason"], "http_timeout");
    let (_, archived_retry) = deliveries
        .iter()
        .find(|(locator, _)| *locator == retry.headers["archive-key"])
        .expect("the retry's record names its own archive entry");
    assert_eq!(archived_retry.header("x-slack-retry-num"), Some("1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_errors_answer_503_and_never_200() {
    // The mock cluster: the next N produce requests fail with exactly the errors
    // given (a retriable one, then a permanent one) and then succeed again, on cue.
    // A real broker can be made to refuse (min.insync.replicas above the replicas,
    // missing ACLs) but not for a counted number of requests in the middle of a run.
    let f = mock_fixture(
        "request_errors: Produce fails with NOT_ENOUGH_REPLICAS, then TOPIC_AUTHORIZATION_FAILED, on cue",
        Duration::from_millis(1000),
    )
    .await;
    // Connections and the producer id are established first.
    assert_eq!(
        post(
            &f.http,
            f.edge.addr,
            &message_event("C0CH0", "EvWarm", "warm")
        )
        .await,
        200
    );

    // Retriable errors that outlast the deadline: librdkafka keeps retrying, the edge
    // gives up at its deadline.
    f.faults().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 400],
    );
    let during = send_batch(&f, "EvRetriable", 6).await;
    assert!(
        during.values().all(|(status, _)| *status == 503),
        "{:?}",
        during.values().map(|v| v.0).collect::<Vec<_>>()
    );
    f.faults().clear_request_errors(RDKafkaApiKey::Produce);

    // A permanent error fails at once.
    f.faults().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50],
    );
    let permanent = send_batch(&f, "EvDenied", 6).await;
    assert!(permanent.values().all(|(status, _)| *status == 503));
    f.faults().clear_request_errors(RDKafkaApiKey::Produce);
    assert!(
        counter(&f.edge, "slackline_edge_kafka_failures_total", None)
            + counter(&f.edge, "slackline_edge_deadline_exceeded_total", None)
            >= 12
    );

    wait_for_recovery(&f, "EvProbe", Duration::from_secs(20)).await;
    let after = send_batch(&f, "EvAfter", 12).await;
    assert!(after.values().all(|(status, _)| *status == 200));
    let mut all = during;
    all.extend(permanent);
    all.extend(after);
    assert_every_200_is_archived_and_produced(&f, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_broker_answers_503_and_its_restart_answers_200() {
    // Kafka down is a real broker crash: the test's own broker, killed (SIGKILL) and
    // restarted on the same log directory and ports.
    let mut f = private_broker_fixture(Duration::from_millis(1000)).await;
    // On a broker that has just started, the first produce (metadata of the new
    // topic, a producer id) may outlast the 1 s deadline: wait until every channel
    // is accepted.
    wait_for_recovery(&f, "EvWarm", Duration::from_secs(30)).await;
    let before = send_batch(&f, "EvBefore", 12).await;
    assert!(before.values().all(|(status, _)| *status == 200));
    tokio::task::block_in_place(|| f.broker().kill()).unwrap();
    let during = send_batch(&f, "EvDown", 6).await;
    assert!(
        during.values().all(|(status, _)| *status == 503),
        "{:?}",
        during.values().map(|v| v.0).collect::<Vec<_>>()
    );
    tokio::task::block_in_place(|| f.broker().restart()).unwrap();
    wait_for_recovery(&f, "EvProbe", Duration::from_secs(30)).await;
    let after = send_batch(&f, "EvUp", 12).await;
    assert!(after.values().all(|(status, _)| *status == 200));
    // What the broker acknowledged before the crash is still there after it.
    let mut all = before;
    all.extend(during);
    all.extend(after);
    assert_every_200_is_archived_and_produced(&f, &all).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_down_answers_503_and_names_no_entry_then_recovers() {
    let mut f = fixture(Duration::from_millis(1500)).await;
    assert_eq!(
        post(
            &f.http,
            f.edge.addr,
            &message_event("C0CH0", "EvWarm", "warm")
        )
        .await,
        200
    );
    tokio::task::block_in_place(|| f.garage.stop()).unwrap();
    let during = send_batch(&f, "EvS3Down", 6).await;
    assert!(during.values().all(|(status, _)| *status == 503));
    assert!(
        counter(&f.edge, "slackline_edge_archive_failures_total", None)
            + counter(&f.edge, "slackline_edge_deadline_exceeded_total", None)
            >= 6
    );
    let ready = f
        .http
        .get(format!("http://{}/readyz", f.edge.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while the archive is down");

    tokio::task::block_in_place(|| f.garage.restart()).unwrap();
    wait_for_recovery(&f, "EvProbe", Duration::from_secs(20)).await;
    // The archive write and the produce overlap, so the requests answered 503 may have
    // Kafka records; the invariant that replaces "nothing is produced without its
    // archive object": such a record's locator names no archive entry (its write
    // failed), or that request's own line (a PUT stored after the client gave up),
    // never another request's. (With S3 down, a batch may also never be placed: then
    // nothing is produced, and there is no record to check.)
    let records = read_topic(&f.bootstrap, &f.topic, usize::MAX, Duration::from_secs(2)).await;
    let mut checked = 0;
    for record in records
        .iter()
        .filter(|r| r.headers["slack-event-id"].starts_with("EvS3Down"))
    {
        let locator = &record.headers["archive-key"];
        match f.archive.get(locator).await {
            Err(slackline_archive::ArchiveError::NotFound(_)) => {}
            Ok(line) => assert_eq!(
                ArchiveRecord::from_json(&line).unwrap().body.as_ref(),
                record.payload.as_slice(),
                "{locator}: a 503's record names another request's line"
            ),
            Err(e) => panic!("{locator}: {e}"),
        }
        checked += 1;
    }
    println!("records of requests answered 503 checked: {checked}");
    let after = send_batch(&f, "EvS3Up", 12).await;
    assert!(after.values().all(|(status, _)| *status == 200));
    assert_every_200_is_archived_and_produced(&f, &after).await;
    let ready = f
        .http
        .get(format!("http://{}/readyz", f.edge.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
