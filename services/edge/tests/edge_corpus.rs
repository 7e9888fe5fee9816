//! Every real Slack payload of the shared corpus, signed and posted through the edge
//! (to Garage and the shared Apache Kafka broker), is answered 200, archived and produced: the edge
//! refuses no verified body for its content. Bare inner events are wrapped in an
//! envelope, as Slack would deliver them.
//!
//! The corpus lives beside the project (`../shared/slack-corpus`, or
//! `SLACKLINE_CORPUS_DIR`); where it is absent, as in a user's clone, the test prints a
//! notice and passes without checking anything.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::path::PathBuf;
use std::time::Duration;

use helpers::*;
use slackline_archive::{Archive, ArchiveRecord};
use slackline_slack::{is_bare_event, wrap_bare_event};
use slackline_testkit::Garage;

#[tokio::test(flavor = "multi_thread")]
async fn every_corpus_payload_is_accepted_archived_and_produced() {
    let Some(dir) = slackline_testkit::corpus_events_dir() else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 100,
        "corpus looks truncated: {} files",
        files.len()
    );

    let garage = tokio::task::spawn_blocking(Garage::start)
        .await
        .unwrap()
        .expect("garage starts");
    let cluster = kafka_cluster();
    let topic = cluster.names().raw_events();
    let bootstrap = cluster.bootstrap_servers();
    let url = garage.archive_url("corpus");
    let s3 = s3_settings(&garage);
    let archive = Archive::open(&url, &s3).await.unwrap();
    let (edge, _shutdown) = start_edge(config(&bootstrap, &topic, &url, s3)).await;
    let http = reqwest::Client::new();

    let mut bodies = Vec::new();
    let mut challenges = 0;
    for (i, path) in files.iter().enumerate() {
        let raw = std::fs::read(path).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        if value["type"] == "url_verification" {
            challenges += 1;
        }
        let body = if is_bare_event(&value) {
            serde_json::to_vec(&wrap_bare_event(
                value,
                &format!("EvCorpus{i:04}"),
                "T0CORPUS",
            ))
            .unwrap()
        } else {
            raw
        };
        bodies.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            body,
        ));
    }
    // Eight at a time; each file's status is checked.
    let mut refused = Vec::new();
    for chunk in bodies.chunks(8) {
        let results = futures::future::join_all(chunk.iter().map(|(name, body)| {
            let http = http.clone();
            let addr = edge.addr;
            async move { (name.clone(), post(&http, addr, body).await) }
        }))
        .await;
        refused.extend(results.into_iter().filter(|(_, status)| *status != 200));
    }
    assert!(refused.is_empty(), "refused: {refused:?}");

    let want = bodies.len() - challenges;
    let records = read_topic(&bootstrap, &topic, want, Duration::from_secs(30)).await;
    assert_eq!(
        records.len(),
        want,
        "every non-challenge body is produced once"
    );
    let mut produced: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let mut expected: Vec<&[u8]> = bodies
        .iter()
        .map(|(_, b)| b.as_slice())
        .filter(|b| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap()["type"] != "url_verification"
        })
        .collect();
    produced.sort();
    expected.sort();
    assert!(
        produced == expected,
        "Kafka values are exactly the posted bodies"
    );
    let archived = helpers::archived_requests(&archive).await;
    assert_eq!(archived.len(), want, "one archive entry per accepted body");
    for record in records.iter().step_by(7) {
        let object = archive.get(&record.headers["archive-key"]).await.unwrap();
        assert_eq!(
            ArchiveRecord::from_json(&object).unwrap().body.as_ref(),
            record.payload.as_slice()
        );
    }
    let unknown = records
        .iter()
        .filter(|r| r.key.as_deref() == Some("unknown"))
        .count();
    println!(
        "corpus: {} files, {} produced, {} url_verification answered, {} keyed by team or unknown ({} unknown)",
        bodies.len(),
        records.len(),
        challenges,
        records.iter().filter(|r| !r.key.as_deref().unwrap_or("").starts_with(['C', 'G', 'D'])).count(),
        unknown
    );
}
