//! PostgreSQL failing under a batch being processed, as a restart or a failover does:
//! connections killed again and again, and the database read-only for a while (a
//! primary switch). The end state is exactly the expected one, with no lost and no
//! duplicated effect, and nothing goes to the DLQ.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use slackline_events::AuthorKind::{Agent, Customer};
use slackline_events::{MessageEvent, ThreadEvent};
use slackline_testkit::postgres::TestDatabase;

const CHANNELS: [&str; 3] = ["C0KILL1", "C0KILL2", "C0KILL3"];
const THREADS: usize = 6;
const STEPS: usize = 4;

fn ts(channel: usize, step: usize, thread: usize) -> String {
    format!(
        "{}.{:06}",
        1_700_000_000 + channel * 10_000 + step * 100 + thread,
        100
    )
}

/// Per channel, `THREADS` threads each going customer root → agent reply → customer
/// reply → ✅, the steps of different threads interleaved; the events in order, step
/// by step (`THREADS * CHANNELS` events per step), and the expected transitions.
fn script() -> (Vec<MessageEvent>, BTreeMap<String, Vec<T>>) {
    let mut events = Vec::new();
    let mut expected: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for step in 0..STEPS {
        for thread in 0..THREADS {
            for (c, channel) in CHANNELS.iter().enumerate() {
                let root = ts(c, 0, thread);
                let here = ts(c, step, thread);
                let id = format!("Ev-{c}-{step}-{thread}");
                let customer = format!("U0CUST{thread}");
                let thread_id = thread_id_of(TEAM, channel, &root);
                let (event, transition) = match step {
                    0 => (
                        post(&id, channel, &root, Customer, &customer),
                        t(&thread_id, None, "todo", "opened", &root),
                    ),
                    1 => (
                        reply(&id, channel, &here, &root, Agent, "U0AGENT"),
                        t(&thread_id, Some("todo"), "waiting", "agent_reply", &here),
                    ),
                    2 => (
                        reply(&id, channel, &here, &root, Customer, &customer),
                        t(
                            &thread_id,
                            Some("waiting"),
                            "todo",
                            "customer_message",
                            &here,
                        ),
                    ),
                    // The ✅ on the root comes at this step's time in Slack's order.
                    _ => (
                        at_ms(
                            react(
                                &id,
                                channel,
                                &root,
                                "white_check_mark",
                                Agent,
                                "U0AGENT",
                                &customer,
                            ),
                            here.split_once('.')
                                .and_then(|(s, _)| s.parse::<i64>().ok())
                                .expect("a ts")
                                * 1000,
                        ),
                        t(&thread_id, Some("todo"), "done", "reaction", &root),
                    ),
                };
                events.push(event);
                expected
                    .entry((*channel).to_owned())
                    .or_default()
                    .push(transition);
            }
        }
    }
    (events, expected)
}

/// The script's end state, exactly: every thread done, one fact per event, three
/// messages per thread, the expected transitions, each published in order per channel.
/// A failure right after Kafka's acknowledgement and before `published_at` is set
/// publishes a transition again (at least once; consumers deduplicate by transition
/// id), so such a repeat, if any, must be the identical record.
async fn assert_script_done_once(
    cluster: &TestCluster,
    db: &TestDatabase,
    input: &[MessageEvent],
    expected: &BTreeMap<String, Vec<T>>,
) {
    let pool = pool(db).await;
    let mut want_threads = Vec::new();
    for (c, channel) in CHANNELS.iter().enumerate() {
        for thread in 0..THREADS {
            want_threads.push((
                thread_id_of(TEAM, channel, &ts(c, 0, thread)),
                "done".to_owned(),
            ));
        }
    }
    want_threads.sort();
    assert_eq!(threads(&pool).await, want_threads);
    assert_eq!(count(&pool, "facts").await, input.len() as i64);
    assert_eq!(
        count(&pool, "thread_messages").await,
        (CHANNELS.len() * THREADS * 3) as i64
    );
    assert_eq!(&transitions(&pool).await, expected);
    pool.close().await;

    let n = CHANNELS.len() * THREADS * STEPS;
    let events = thread_events(cluster, n).await;
    let mut repeats = 0;
    let mut deduped: BTreeMap<String, Vec<ThreadEvent>> = BTreeMap::new();
    for (channel, list) in &events {
        let mut seen: HashMap<&str, &ThreadEvent> = HashMap::new();
        for event in list {
            if let Some(first) = seen.get(event.transition_id.as_str()) {
                assert_eq!(*first, event, "a repeated transition id with other content");
                repeats += 1;
            } else {
                seen.insert(&event.transition_id, event);
                deduped
                    .entry(channel.clone())
                    .or_default()
                    .push(event.clone());
            }
        }
    }
    println!("{} thread events, {repeats} repeated", total(&events));
    let per_channel: BTreeMap<String, Vec<T>> =
        deduped.iter().map(|(c, e)| (c.clone(), as_t(e))).collect();
    assert_eq!(&per_channel, expected);
    assert_eq!(total(&deduped), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_and_duplicate_nothing() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(&cluster, &db, &[])).await;
    let (input, expected) = script();

    // Kill every connection of the database every few milliseconds until the batch
    // is handled.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let db = db.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut rounds, mut killed) = (0u32, 0i64);
            while !stop.load(Ordering::Relaxed) {
                killed += db.terminate_connections().await;
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (rounds, killed)
        })
    };
    produce(&cluster, &input).await;
    wait_handled(&running, input.len(), Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    let (rounds, killed) = killer.await.unwrap();
    println!("{rounds} rounds of pg_terminate_backend killed {killed} connections");
    assert!(
        killed > 0,
        "no connection was killed: the test proved nothing"
    );

    assert_script_done_once(&cluster, &db, &input, &expected).await;
    running.stop().await;
    db.drop_database().await;
}

/// A primary switch: for a while every write is refused with SQLSTATE 25006
/// `read_only_sql_transaction` (the database set read-only and its sessions killed,
/// so the new ones get the setting), then the database is writable again. The events
/// of that window wait in the retry rounds, none goes to the DLQ, and every effect
/// lands once afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_during_a_failover_delays_and_loses_nothing() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let mut config = config(&cluster, &db, &[]);
    // Retry rounds for 15 s in all, far longer than the read-only window below.
    config.runtime.retry_delays = vec![Duration::from_millis(500); 30];
    let running = start(config).await;
    let (input, expected) = script();
    let per_step = CHANNELS.len() * THREADS;

    // The threads open while the database is writable.
    produce(&cluster, &input[..per_step]).await;
    wait_handled(&running, per_step, Duration::from_secs(60)).await;

    // The switch: the rest of the conversation arrives while writes are refused.
    let killed = db.set_read_only(true).await;
    println!("read-only; {killed} connections killed");
    produce(&cluster, &input[per_step..]).await;
    let failed = || {
        counter(running.registry(), "slackline_consumer_retried_total")
            + counter(running.registry(), "slackline_dlq_records_total")
    };
    slackline_testkit::wait_until(
        "an event failing on the read-only database",
        Duration::from_secs(60),
        || async { failed() > 0.0 },
    )
    .await;
    // Stay read-only a while longer, through several retry rounds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dlq = counter(running.registry(), "slackline_dlq_records_total");
    assert_eq!(
        dlq, 0.0,
        "events went to the DLQ while the database was read-only"
    );
    let handled = counter(running.registry(), "slackline_consumer_handled_total");
    assert_eq!(
        handled, per_step as f64,
        "nothing can be handled while writes are refused"
    );
    let retried = counter(running.registry(), "slackline_consumer_retried_total");
    println!("{retried} retry rounds scheduled while read-only");

    // Writable again: everything lands, once.
    db.set_read_only(false).await;
    wait_handled(&running, input.len(), Duration::from_secs(120)).await;
    assert_script_done_once(&cluster, &db, &input, &expected).await;
    running.stop().await;
    db.drop_database().await;
}
