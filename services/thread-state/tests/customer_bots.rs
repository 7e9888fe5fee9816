//! Customers' own bots (issue 12, item 5): in a shared channel a bot of the customer's
//! workspace (an incoming webhook, a CI app) speaks for the customer, so its message
//! opens or joins a thread like a customer's (`todo`), its author kind staying `bot`;
//! so does a bot whose workspace Slack did not tell. In a `BOT_QUIET_CHANNELS`
//! channel customers' bots change nothing, and bots of the installing workspace never
//! do.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use slackline_events::AuthorKind::{Agent, Bot, Customer};
use slackline_testkit::postgres::TestDatabase;

const LOUD: &str = "C0LOUDBOTS";
const QUIET: &str = "C0QUIETBOTS";
const OURS: &str = "C0OURBOTS";

fn at(secs: i64) -> String {
    format!("{}.000100", 1_700_000_000 + secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_bot_opens_and_joins_threads_unless_its_channel_is_quiet() {
    let input = vec![
        // The customer's monitoring alert opens a thread; the agent answers it.
        customer_bot(post("Ev-l-1", LOUD, &at(0), Bot, "B0ALERTS")),
        reply("Ev-l-2", LOUD, &at(1), &at(0), Agent, "U0AGENT"),
        // Its follow-up in the thread moves it back to todo.
        customer_bot(reply("Ev-l-3", LOUD, &at(2), &at(0), Bot, "B0ALERTS")),
        // A bot whose workspace Slack did not tell: the customer's too.
        bot_of(post("Ev-l-4", LOUD, &at(10), Bot, "B0WHO"), None),
        // Quiet channel: the customer's bot changes nothing, opens nothing; in a
        // customer's thread it is a member that sets no status.
        customer_bot(post("Ev-q-1", QUIET, &at(0), Bot, "B0CI")),
        post("Ev-q-2", QUIET, &at(1), Customer, "U0CUST"),
        reply("Ev-q-3", QUIET, &at(2), &at(1), Agent, "U0AGENT"),
        customer_bot(reply("Ev-q-4", QUIET, &at(3), &at(1), Bot, "B0CI")),
        // Our own workspace's bots change nothing anywhere.
        post("Ev-o-1", OURS, &at(0), Bot, "B0OURS"),
        post("Ev-o-2", OURS, &at(1), Customer, "U0CUST"),
        reply("Ev-o-3", OURS, &at(2), &at(1), Agent, "U0AGENT"),
        reply("Ev-o-4", OURS, &at(3), &at(1), Bot, "B0OURS"),
    ];
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(&cluster, &db, &[("BOT_QUIET_CHANNELS", QUIET)])).await;
    produce(&cluster, &input).await;
    wait_handled(&running, input.len(), Duration::from_secs(60)).await;
    let pool = pool(&db).await;

    let alert = thread_id_of(TEAM, LOUD, &at(0));
    let unknown = thread_id_of(TEAM, LOUD, &at(10));
    let quiet = thread_id_of(TEAM, QUIET, &at(1));
    let ours = thread_id_of(TEAM, OURS, &at(1));
    assert_eq!(
        threads(&pool).await,
        vec![
            (alert.clone(), "todo".into()),
            (unknown.clone(), "todo".into()),
            (ours.clone(), "waiting".into()),
            (quiet.clone(), "waiting".into()),
        ]
    );
    let details = thread_details(&pool).await;
    assert_eq!(
        details[0].1.as_deref(),
        Some("B0ALERTS"),
        "opened by the bot"
    );
    let members: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT channel_id, ts, author_kind FROM thread_state.thread_messages \
         ORDER BY channel_id, ts",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let m = |c: &str, ts: String, kind: &str| (c.to_owned(), ts, kind.to_owned());
    assert_eq!(
        members,
        vec![
            m(LOUD, at(0), "bot"),
            m(LOUD, at(1), "agent"),
            m(LOUD, at(2), "bot"),
            m(LOUD, at(10), "bot"),
            m(OURS, at(1), "customer"),
            m(OURS, at(2), "agent"),
            m(OURS, at(3), "bot"),
            m(QUIET, at(1), "customer"),
            m(QUIET, at(2), "agent"),
            m(QUIET, at(3), "bot"),
        ]
    );
    let expected: BTreeMap<String, Vec<T>> = [
        (
            LOUD.to_owned(),
            vec![
                t(&alert, None, "todo", "opened", &at(0)),
                t(&alert, Some("todo"), "waiting", "agent_reply", &at(1)),
                t(&alert, Some("waiting"), "todo", "customer_message", &at(2)),
                t(&unknown, None, "todo", "opened", &at(10)),
            ],
        ),
        (
            OURS.to_owned(),
            vec![
                t(&ours, None, "todo", "opened", &at(1)),
                t(&ours, Some("todo"), "waiting", "agent_reply", &at(2)),
            ],
        ),
        (
            QUIET.to_owned(),
            vec![
                t(&quiet, None, "todo", "opened", &at(1)),
                t(&quiet, Some("todo"), "waiting", "agent_reply", &at(2)),
            ],
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(transitions(&pool).await, expected);
    let events = thread_events(&cluster, 8).await;
    assert_eq!(total(&events), 8);
    let opened = &events[LOUD][0];
    assert_eq!(
        opened.author_kind.as_deref(),
        Some("bot"),
        "the kind stays bot"
    );
    assert_eq!(opened.trigger_event_id, "Ev-l-1");
    assert_eq!(events[LOUD][2].author_kind.as_deref(), Some("bot"));

    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}
