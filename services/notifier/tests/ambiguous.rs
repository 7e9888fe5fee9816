//! A webhook that takes the connection and never answers: the notification may or
//! may not have been delivered, so it is not sent again; the event lands in
//! `notifier.dlq` naming the target and the fact, after the other targets were
//! notified once. Redriven, it is neither sent nor dead-lettered again.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use slackline_consumer::DlqRecord;
use slackline_notifier::notification::FactKey;
use slackline_testkit::kafka::read_topic;
use slackline_testkit::postgres::TestDatabase;
use slackline_testkit::smtp::SmtpSink;
use tokio::net::TcpListener;

/// Accepts connections, reads nothing, answers nothing, keeps them open.
struct Silent {
    url: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hook/secret-token",
            listener.local_addr().unwrap()
        );
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        Silent {
            url,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The DLQ topic's partitions (`names().specs(2)`: a quarter of the flow's, at least 1).
const DLQ_PARTITIONS: i32 = 1;

/// The records of the cluster's `notifier.dlq`, once `want` arrived or `timeout`
/// passed.
async fn dlq_records(cluster: &TestCluster, want: usize, timeout: Duration) -> Vec<DlqRecord> {
    let dlq = cluster.names().dlq(GROUP);
    read_topic(
        &cluster.bootstrap_servers(),
        &dlq,
        DLQ_PARTITIONS,
        want,
        timeout,
    )
    .await
    .iter()
    .map(|r| serde_json::from_slice(&r.payload).unwrap())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_never_answers_is_not_resent_and_lands_in_the_dlq() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let slack = Silent::start().await;
    let discord = Receiver::discord().await;
    let smtp = SmtpSink::start().await.unwrap();
    let targets = Targets {
        slack: Some(slack.url.clone()),
        discord: Some(discord.url()),
        smtp: Some(smtp.url()),
    };
    let mut config = config(&cluster, &db.url, &targets);
    // NOTIFY_HTTP_TIMEOUT_MS
    config.targets.http_timeout = Duration::from_millis(300);
    let events = vec![
        customer_post("Ev1", "C1", "100.000001", "first"),
        customer_post("Ev2", "C1", "100.000002", "second"),
    ];
    let facts: Vec<String> = events.iter().map(|e| FactKey::of(e).to_string()).collect();
    let mut service = start(config).await;
    produce(&cluster, &events).await;

    let records = dlq_records(&cluster, 2, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for (record, fact) in records.iter().zip(&facts) {
        assert!(!record.retryable, "{record:?}");
        assert_eq!(record.group, cluster.names().group(GROUP));
        assert_eq!(record.original.topic, cluster.names().messages());
        assert!(record.error.starts_with("slack: "), "{}", record.error);
        assert!(record.error.contains(fact), "{} names {fact}", record.error);
        assert!(!record.error.contains("secret-token"), "{}", record.error);
    }
    // The other targets were handled before the event failed: each notified once.
    wait_until("the other targets", Duration::from_secs(30), || async {
        discord.count() >= 2 && smtp.mails().len() >= 2
    })
    .await;
    assert_eq!(discord.count(), 2);
    assert_eq!(smtp.mails().len(), 2);
    assert_eq!(slack.accepted(), 2, "one request per event, never resent");
    assert_eq!(
        service.counter("slackline_notifier_ambiguous_total", &[("target", "slack")]),
        2
    );
    assert_eq!(
        service.counter("slackline_notifier_failed_total", &[("target", "slack")]),
        0,
        "not counted as refused (that would mean retried)"
    );

    // A redrive of both records: not sent again and not dead-lettered again.
    produce(&cluster, &events).await;
    wait_until("the redrive handled", Duration::from_secs(60), || async {
        service.counter(
            "slackline_notifier_skipped_total",
            &[("reason", "ambiguous")],
        ) >= 2
    })
    .await;
    wait_until(
        "the redrive's other targets",
        Duration::from_secs(60),
        || async {
            service.counter(
                "slackline_notifier_skipped_total",
                &[("reason", "already_sent")],
            ) >= 4
        },
    )
    .await;
    service.stop().await;
    assert_eq!(slack.accepted(), 2);
    assert_eq!((discord.count(), smtp.mails().len()), (2, 2));
    // Stopped: whatever it produced is in the topic.
    assert_eq!(
        slackline_testkit::kafka::topic_len(
            &cluster.bootstrap_servers(),
            &cluster.names().dlq(GROUP),
            DLQ_PARTITIONS
        ),
        2,
        "no new DLQ record"
    );
    let states: Vec<(String, String)> = {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        let rows = sqlx::query_as("SELECT target, state FROM notifier.sent ORDER BY ts, target")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    };
    let per_event = [
        ("discord".to_owned(), "sent".to_owned()),
        ("email".to_owned(), "sent".to_owned()),
        ("slack".to_owned(), "ambiguous".to_owned()),
    ];
    assert_eq!(states, [per_event.clone(), per_event].concat());
    slack.task.abort();
    db.drop_database().await;
}
