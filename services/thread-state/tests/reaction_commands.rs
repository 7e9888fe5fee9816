//! Whose reaction is a command: by default only an agent's (an author of the
//! installing workspace). In a Slack Connect channel a customer's ✅ is often a
//! thank-you and must not close the thread; `REACTION_COMMANDS` entries ending in
//! `:anyone` let customers' reactions count too. Either way the reaction is recorded as
//! a fact of the message's thread.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_events::AuthorKind::{Agent, Customer, Unknown};
use slackline_events::MessageEvent;
use slackline_testkit::postgres::TestDatabase;

const CH: &str = "C0CONNECT";
const ROOT: &str = "1700000000.000100";
const ANSWER: &str = "1700000000.000200";
const CHECK: &str = "white_check_mark";

/// A customer's question and an agent's answer, then ✅ on the question by the
/// customer, by an author Slack did not attribute, and last by the agent.
fn script() -> Vec<MessageEvent> {
    vec![
        post("Ev-1", CH, ROOT, Customer, "U0CUST"),
        reply("Ev-2", CH, ANSWER, ROOT, Agent, "U0AGENT"),
        // Reactions come after the answer in Slack's order (their event time).
        at_ms(
            react("Ev-3", CH, ROOT, CHECK, Customer, "U0CUST", "U0CUST"),
            1_700_000_001_000,
        ),
        at_ms(
            react("Ev-4", CH, ROOT, CHECK, Unknown, "U0WHO", "U0CUST"),
            1_700_000_002_000,
        ),
        at_ms(
            react("Ev-5", CH, ROOT, CHECK, Agent, "U0AGENT", "U0CUST"),
            1_700_000_003_000,
        ),
    ]
}

/// `(fact, thread_id)` of the reaction facts, by event id.
async fn reaction_facts(pool: &sqlx::PgPool) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT fact, thread_id FROM thread_state.facts \
         WHERE fact LIKE 'reaction_added:%' ORDER BY event_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// What a run gave: the channel's transitions (checked against the published thread
/// events), who triggered each (event id and author kind), the reaction facts.
struct Outcome {
    transitions: Vec<T>,
    triggers: Vec<(String, Option<String>)>,
    facts: Vec<(String, Option<String>)>,
}

/// Runs the script with `extra` config.
async fn run(extra: &[(&str, &str)]) -> Outcome {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(&cluster, &db, extra)).await;
    let input = script();
    produce(&cluster, &input).await;
    wait_handled(&running, input.len(), Duration::from_secs(60)).await;
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "facts").await, input.len() as i64);
    let mut transitions = transitions(&pool).await;
    let transitions = transitions.remove(CH).unwrap_or_default();
    let events = thread_events(&cluster, transitions.len()).await;
    assert_eq!(total(&events), transitions.len(), "{events:#?}");
    assert_eq!(as_t(&events[CH]), transitions);
    let triggers = events[CH]
        .iter()
        .map(|e| (e.trigger_event_id.clone(), e.author_kind.clone()))
        .collect();
    let facts = reaction_facts(&pool).await;
    running.stop().await;
    pool.close().await;
    db.drop_database().await;
    Outcome {
        transitions,
        triggers,
        facts,
    }
}

fn triggers(list: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
    list.iter()
        .map(|(event, kind)| ((*event).to_owned(), Some((*kind).to_owned())))
        .collect()
}

fn opened_and_answered(thread: &str) -> Vec<T> {
    vec![
        t(thread, None, "todo", "opened", ROOT),
        t(thread, Some("todo"), "waiting", "agent_reply", ANSWER),
    ]
}

/// Every reaction, command or not, is a fact of the question's thread.
fn all_reaction_facts(thread: &str) -> Vec<(String, Option<String>)> {
    [("U0CUST", "Ev-3"), ("U0WHO", "Ev-4"), ("U0AGENT", "Ev-5")]
        .iter()
        .map(|(user, event)| {
            (
                format!("reaction_added:{CHECK}:{user}:{event}"),
                Some(thread.to_owned()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_agents_check_mark_closes_the_thread_by_default() {
    let thread = thread_id_of(TEAM, CH, ROOT);
    let mut expected = opened_and_answered(&thread);
    expected.push(t(&thread, Some("waiting"), "done", "reaction", ROOT));
    // Neither the customer's nor the unattributed ✅ closed it: the agent's did. The
    // same with the entry spelled out, `:agents`.
    for extra in [
        vec![],
        vec![("REACTION_COMMANDS", "white_check_mark:done:agents")],
    ] {
        let outcome = run(&extra).await;
        assert_eq!(outcome.transitions, expected, "{extra:?}");
        assert_eq!(
            outcome.triggers,
            triggers(&[("Ev-1", "customer"), ("Ev-2", "agent"), ("Ev-5", "agent")]),
            "{extra:?}"
        );
        assert_eq!(outcome.facts, all_reaction_facts(&thread), "{extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anyone_lets_a_customers_check_mark_close_the_thread() {
    let thread = thread_id_of(TEAM, CH, ROOT);
    let outcome = run(&[(
        "REACTION_COMMANDS",
        "white_check_mark:done:anyone,eyes:waiting",
    )])
    .await;
    let mut expected = opened_and_answered(&thread);
    expected.push(t(&thread, Some("waiting"), "done", "reaction", ROOT));
    assert_eq!(outcome.transitions, expected);
    // The customer's ✅ closed it; the later ones found it done already.
    assert_eq!(
        outcome.triggers,
        triggers(&[
            ("Ev-1", "customer"),
            ("Ev-2", "agent"),
            ("Ev-3", "customer")
        ])
    );
    assert_eq!(outcome.facts, all_reaction_facts(&thread));
}
