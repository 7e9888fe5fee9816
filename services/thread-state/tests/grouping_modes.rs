//! time-window and manual grouping, chosen per channel with GROUPING_CHANNELS while
//! other channels keep the default mode.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use slackline_events::AuthorKind::{Agent, Bot, Customer};
use slackline_events::MessageEvent;
use slackline_testkit::postgres::TestDatabase;

const TW: &str = "C0WINDOW";
const MAN: &str = "C0MANUAL";
const DEF: &str = "C0DEFAULT";

/// Slack ts `offset` seconds after 1700000000.
fn at(offset: i64) -> String {
    format!("{}.000100", 1_700_000_000 + offset)
}

/// Slack event time (ms) `offset` seconds after 1700000000.
fn ms(offset: i64) -> i64 {
    (1_700_000_000 + offset) * 1000
}

fn script() -> Vec<MessageEvent> {
    vec![
        // time-window (30 minutes)
        post("Ev-tw-0", TW, &at(-100), Agent, "U0AGENT"), // no open thread: fact only
        post("Ev-tw-1", TW, &at(0), Customer, "U0ALICE"), // opens A
        post("Ev-tw-2", TW, &at(600), Customer, "U0ALICE"), // 10 min later: joins A
        post("Ev-tw-3", TW, &at(700), Agent, "U0AGENT"),  // joins A (latest): waiting
        post("Ev-tw-4", TW, &at(800), Customer, "U0BOB"), // another author: opens B
        post("Ev-tw-5", TW, &at(2500), Customer, "U0ALICE"), // 31m40s after her last: opens C
        post("Ev-tw-6", TW, &at(2600), Agent, "U0AGENT"), // joins C (latest message): waiting
        reply("Ev-tw-7", TW, &at(2700), &at(600), Customer, "U0BOB"), // reply to a message of A
        post("Ev-tw-8", TW, &at(2800), Bot, "B0BOT"),     // bots open nothing
        // manual
        post("Ev-m-1", MAN, &at(0), Customer, "U0CAROL"), // no thread yet
        reply("Ev-m-2", MAN, &at(10), &at(0), Customer, "U0CAROL"), // no thread yet
        // opens M (at 15 s): with the conversation delivered before it
        at_ms(
            react("Ev-m-3", MAN, &at(0), "ticket", Agent, "U0AGENT", "U0CAROL"),
            ms(15),
        ),
        reply("Ev-m-4", MAN, &at(20), &at(0), Customer, "U0CAROL"), // joins M (todo already)
        reply("Ev-m-5", MAN, &at(30), &at(0), Agent, "U0AGENT"),    // waiting
        // already a thread: a `todo` decision from 25 s, older than the agent's reply
        // at 30 s, so it changes nothing
        at_ms(
            react(
                "Ev-m-6",
                MAN,
                &at(0),
                "ticket",
                Agent,
                "U0AGENT2",
                "U0CAROL",
            ),
            ms(25),
        ),
        // done (at 40 s)
        at_ms(
            react(
                "Ev-m-7",
                MAN,
                &at(20),
                "white_check_mark",
                Agent,
                "U0AGENT",
                "U0CAROL",
            ),
            ms(40),
        ),
        post("Ev-m-8", MAN, &at(100), Customer, "U0CAROL"), // fact only
        react("Ev-m-9", MAN, &at(100), "ticket", Bot, "B0BOT", "U0CAROL"), // bots open nothing
        // the default mode (slack-thread) still applies elsewhere; ticket means nothing
        post("Ev-d-1", DEF, &at(0), Customer, "U0DAN"),
        react("Ev-d-2", DEF, &at(5), "ticket", Agent, "U0AGENT", "U0DAN"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_window_and_manual_channels() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(
        &cluster,
        &db,
        &[
            ("GROUPING_CHANNELS", "C0WINDOW:time-window,C0MANUAL:manual"),
            ("GROUPING_WINDOW_MINUTES", "30"),
        ],
    ))
    .await;
    let input = script();
    produce(&cluster, &input).await;
    wait_handled(&running, input.len(), Duration::from_secs(60)).await;
    let pool = pool(&db).await;

    let a = thread_id_of(TEAM, TW, &at(0));
    let b = thread_id_of(TEAM, TW, &at(800));
    let c = thread_id_of(TEAM, TW, &at(2500));
    let m = thread_id_of(TEAM, MAN, &at(0));
    let d = thread_id_of(TEAM, DEF, &at(0));
    assert_eq!(
        threads(&pool).await,
        vec![
            (d.clone(), "todo".to_owned()),
            (m.clone(), "done".to_owned()),
            (a.clone(), "todo".to_owned()),
            (b.clone(), "todo".to_owned()),
            (c.clone(), "waiting".to_owned()),
        ]
    );
    assert_eq!(
        thread_details(&pool).await,
        vec![
            (
                d.clone(),
                Some("U0DAN".into()),
                "slack-thread".into(),
                at(0)
            ),
            (m.clone(), Some("U0CAROL".into()), "manual".into(), at(30)),
            (
                a.clone(),
                Some("U0ALICE".into()),
                "time-window".into(),
                at(2700)
            ),
            (
                b.clone(),
                Some("U0BOB".into()),
                "time-window".into(),
                at(800)
            ),
            (
                c.clone(),
                Some("U0ALICE".into()),
                "time-window".into(),
                at(2600)
            ),
        ]
    );
    let messages: Vec<(String, String)> = [
        (at(0), &d),
        // The ticket's thread adopts the conversation delivered before the ticket.
        (at(0), &m),
        (at(10), &m),
        (at(20), &m),
        (at(30), &m),
        (at(0), &a),
        (at(600), &a),
        (at(700), &a),
        (at(800), &b),
        (at(2500), &c),
        (at(2600), &c),
        (at(2700), &a),
    ]
    .into_iter()
    .map(|(ts, thread)| (ts, thread.clone()))
    .collect();
    assert_eq!(thread_messages(&pool).await, messages);
    assert_eq!(count(&pool, "facts").await, input.len() as i64);

    let expected: BTreeMap<String, Vec<T>> = [
        (DEF.to_owned(), vec![t(&d, None, "todo", "opened", &at(0))]),
        (
            MAN.to_owned(),
            vec![
                t(&m, None, "todo", "opened", &at(0)),
                t(&m, Some("todo"), "waiting", "agent_reply", &at(30)),
                t(&m, Some("waiting"), "done", "reaction", &at(20)),
            ],
        ),
        (
            TW.to_owned(),
            vec![
                t(&a, None, "todo", "opened", &at(0)),
                t(&a, Some("todo"), "waiting", "agent_reply", &at(700)),
                t(&b, None, "todo", "opened", &at(800)),
                t(&c, None, "todo", "opened", &at(2500)),
                t(&c, Some("todo"), "waiting", "agent_reply", &at(2600)),
                t(&a, Some("waiting"), "todo", "customer_message", &at(2700)),
            ],
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(transitions(&pool).await, expected);
    let events = thread_events(&cluster, 10).await;
    assert_eq!(total(&events), 10);
    let per_channel: BTreeMap<String, Vec<T>> =
        events.iter().map(|(c, e)| (c.clone(), as_t(e))).collect();
    assert_eq!(per_channel, expected);
    let opened = &events[MAN][0];
    assert_eq!(opened.reaction.as_deref(), Some("ticket"));
    assert_eq!(opened.author_kind.as_deref(), Some("agent"));
    assert_eq!(opened.trigger_event_id, "Ev-m-3");

    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}
