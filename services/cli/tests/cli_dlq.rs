//! `slackline dlq redrive` on the shared Apache Kafka broker: dead letters go back to their
//! original topic with key, headers and payload; a dry run produces nothing; records
//! that are not dead letters are skipped and named.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use slackline::{dlq, tail};
use slackline_consumer::{DlqOriginal, DlqRecord};
use slackline_kafka::KafkaSettings;
use slackline_testkit::cluster::TestCluster;

fn dead_letter(source: &str, key: &str, payload: &[u8]) -> Vec<u8> {
    DlqRecord {
        group: "notifier".into(),
        error: "discord: 502".into(),
        retryable: true,
        attempts: 6,
        original: DlqOriginal {
            topic: source.into(),
            partition: 1,
            offset: 41,
            timestamp_ms: Some(1_764_000_000_000),
            key: Some(key.into()),
            key_base64: None,
        },
        headers: [(
            "slack-event-id".to_owned(),
            serde_json::Value::from("Ev0DLQ"),
        )]
        .into_iter()
        .collect(),
        payload_json: serde_json::Value::Null,
        payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
        dead_lettered_at: "2026-11-24T22:00:00Z".into(),
        payload_omitted: None,
    }
    .to_json()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_go_back_to_their_topic_and_dry_runs_produce_nothing() {
    let cluster = TestCluster::kafka();
    let source = cluster.topic("source");
    let dlq_topic = cluster.names().dlq("group");
    cluster.create_topic(&source, 3);
    cluster.create_topic(&dlq_topic, 1);
    let bootstrap = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let payload = b"\x00\x01binary avro-ish payload";
    for value in [
        dead_letter(&source, "C0KEY", payload),
        b"not a dead letter".to_vec(),
    ] {
        producer
            .send(
                FutureRecord::to(&dlq_topic).key("C0KEY").payload(&value),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let settings = KafkaSettings::new(&bootstrap);
    let count_source = |settings: KafkaSettings, source: String| async move {
        tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            tail::for_each_record(
                &settings,
                &source,
                true,
                &AtomicBool::new(false),
                &mut |m| {
                    let headers: Vec<(String, Vec<u8>)> = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    seen.push((
                        m.key().map(<[u8]>::to_vec),
                        headers,
                        m.payload().unwrap_or_default().to_vec(),
                    ));
                    Ok(())
                },
            )
            .unwrap();
            seen
        })
        .await
        .unwrap()
    };

    let dry = dlq::redrive(&settings, &dlq_topic, dlq::Selection::default(), true)
        .await
        .unwrap();
    assert_eq!(dry.redriven, 1);
    assert_eq!(dry.unreadable.len(), 1, "{:?}", dry.unreadable);
    assert!(
        count_source(settings.clone(), source.clone())
            .await
            .is_empty(),
        "a dry run produces nothing"
    );

    let done = dlq::redrive(&settings, &dlq_topic, dlq::Selection::default(), false)
        .await
        .unwrap();
    assert_eq!(done.redriven, 1);
    let back = count_source(settings.clone(), source.clone()).await;
    assert_eq!(back.len(), 1);
    let (key, headers, value) = &back[0];
    assert_eq!(key.as_deref(), Some(&b"C0KEY"[..]));
    assert_eq!(value.as_slice(), payload, "payload byte for byte");
    assert!(headers.contains(&("slack-event-id".to_owned(), b"Ev0DLQ".to_vec())));

    // Only one record, by its coordinates.
    let one = dlq::redrive(
        &settings,
        &dlq_topic,
        dlq::Selection { only: Some((0, 1)) },
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        (one.redriven, one.unreadable.len()),
        (0, 1),
        "offset 1 is the garbage record"
    );
}
