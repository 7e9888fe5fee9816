//! PostgreSQL connections killed again and again while a batch is processed (as a
//! restart or failover would): the end state is exactly the expected one, with no
//! lost and no duplicated effect.
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

fn ts(channel: usize, step: usize, thread: usize) -> String {
    format!(
        "{}.{:06}",
        1_700_000_000 + channel * 10_000 + step * 100 + thread,
        100
    )
}

/// Per channel, `THREADS` threads each going customer root → agent reply → customer
/// reply → ✅, the steps of different threads interleaved.
fn script() -> (Vec<MessageEvent>, BTreeMap<String, Vec<T>>) {
    let mut events = Vec::new();
    let mut expected: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for step in 0..4 {
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
                    _ => (
                        react(
                            &id,
                            channel,
                            &root,
                            "white_check_mark",
                            Agent,
                            "U0AGENT",
                            &customer,
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

    let pool = pool(&db).await;
    let mut want_threads = Vec::new();
    for channel in CHANNELS {
        for thread in 0..THREADS {
            let c = CHANNELS.iter().position(|x| *x == channel).unwrap();
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
    assert_eq!(transitions(&pool).await, expected);

    // Every transition published, in order per channel, once per transition id. A kill
    // right after Kafka's acknowledgement and before `published_at` is set would
    // publish one again (at least once; consumers deduplicate by transition id), so
    // such a repeat, if any, must be the identical record right after the first.
    let n = CHANNELS.len() * THREADS * 4;
    let events = thread_events(&cluster, n).await;
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
    assert_eq!(per_channel, expected);
    assert_eq!(total(&deduped), n);

    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}
