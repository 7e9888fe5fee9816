//! slack-thread mode end to end: a scripted conversation over three channels through
//! a real Kafka broker and PostgreSQL, the exact rows, transitions and thread events; and
//! the same input again (plus a duplicate fact under another event id) changing
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use slackline_events::{AuthorKind, MessageEvent, ThreadStatus};
use slackline_testkit::postgres::TestDatabase;

const C1: &str = "C0CUST1";
const C2: &str = "C0CUST2";
const C3: &str = "C0CUST3";

const R1: &str = "1700000000.000100";
const R2: &str = "1700000100.000100";
const ORPHAN_ROOT: &str = "1699999999.000100";
const G1: &str = "1700000200.000100";
const G2: &str = "1700000201.000100";

/// The conversation, in Slack order per channel (channels interleaved).
fn script() -> Vec<MessageEvent> {
    use AuthorKind::{Agent, Bot, Customer};
    vec![
        // C1: the full cycle, and bots.
        post("Ev-c1-1", C1, R1, Customer, "U0CUST"),
        post("Ev-c2-1", C2, R2, Agent, "U0AGENT"),
        reply("Ev-c1-2", C1, "1700000000.000200", R1, Agent, "U0AGENT"),
        degraded("Ev-c3-1", C3, G1),
        reply("Ev-c1-3", C1, "1700000000.000300", R1, Customer, "U0CUST"),
        reply("Ev-c2-2", C2, "1700000100.000200", R2, Customer, "U0CUST2"),
        // The agent's ✅ comes half a second after the customer's reply (Slack's
        // event time of a reaction is its place in Slack's order).
        at_ms(
            react(
                "Ev-c1-4",
                C1,
                R1,
                "white_check_mark",
                Agent,
                "U0AGENT",
                "U0CUST",
            ),
            1_700_000_000_500,
        ),
        post("Ev-c3-2", C3, G2, Customer, "U0CUST3"),
        reply("Ev-c1-5", C1, "1700000001.000400", R1, Customer, "U0CUST"),
        // A customer's ✅ (a thank-you) is recorded in the thread but is no command.
        react(
            "Ev-c2-3",
            C2,
            "1700000100.000200",
            "white_check_mark",
            Customer,
            "U0CUST2",
            "U0CUST2",
        ),
        post("Ev-c1-6", C1, "1700000001.000500", Bot, "B0BOT"),
        react(
            "Ev-c3-3",
            C3,
            G2,
            "white_check_mark",
            Bot,
            "B0BOT",
            "U0CUST3",
        ),
        reply("Ev-c1-7", C1, "1700000001.000600", R1, Bot, "B0BOT"),
        react("Ev-c2-4", C2, R2, "eyes", Customer, "U0CUST2", "U0AGENT"),
        joined("Ev-c3-4", C3, "1700000202.000100", "U0NEW"),
        reply(
            "Ev-c2-5",
            C2,
            "1700000101.000100",
            ORPHAN_ROOT,
            Customer,
            "U0CUST2",
        ),
        reply("Ev-c3-5", C3, "1700000203.000100", G1, Agent, "U0AGENT"),
        edit("Ev-c2-6", C2, R2, "U0AGENT"),
        reply("Ev-c1-8", C1, "1700000001.000700", R1, Bot, "B0BOT"),
    ]
}

fn id(channel: &str, root: &str) -> String {
    thread_id_of(TEAM, channel, root)
}

fn expected_threads() -> Vec<(String, String)> {
    vec![
        (id(C1, R1), "todo".into()),
        (id(C2, ORPHAN_ROOT), "todo".into()),
        (id(C2, R2), "todo".into()),
        (id(C3, G1), "waiting".into()),
        (id(C3, G2), "todo".into()),
    ]
}

fn expected_transitions() -> BTreeMap<String, Vec<T>> {
    let a = id(C1, R1);
    let b = id(C2, R2);
    let orphan = id(C2, ORPHAN_ROOT);
    let g1 = id(C3, G1);
    let g2 = id(C3, G2);
    [
        (
            C1.to_owned(),
            vec![
                t(&a, None, "todo", "opened", R1),
                t(
                    &a,
                    Some("todo"),
                    "waiting",
                    "agent_reply",
                    "1700000000.000200",
                ),
                t(
                    &a,
                    Some("waiting"),
                    "todo",
                    "customer_message",
                    "1700000000.000300",
                ),
                t(&a, Some("todo"), "done", "reaction", R1),
                t(&a, Some("done"), "todo", "reopened", "1700000001.000400"),
            ],
        ),
        (
            C2.to_owned(),
            vec![
                t(&b, None, "waiting", "opened", R2),
                t(
                    &b,
                    Some("waiting"),
                    "todo",
                    "customer_message",
                    "1700000100.000200",
                ),
                t(&orphan, None, "todo", "opened", "1700000101.000100"),
            ],
        ),
        (
            C3.to_owned(),
            vec![
                t(&g1, None, "todo", "opened", G1),
                t(&g2, None, "todo", "opened", G2),
                t(
                    &g1,
                    Some("todo"),
                    "waiting",
                    "agent_reply",
                    "1700000203.000100",
                ),
            ],
        ),
    ]
    .into_iter()
    .collect()
}

const TRANSITIONS: usize = 11;

/// Checks every table and the topic against the script's expectations.
async fn assert_state(cluster: &TestCluster, pool: &sqlx::PgPool, facts: i64) {
    assert_eq!(threads(pool).await, expected_threads());
    assert_eq!(
        thread_details(pool).await,
        vec![
            (
                id(C1, R1),
                Some("U0CUST".into()),
                "slack-thread".into(),
                "1700000001.000700".into()
            ),
            (
                id(C2, ORPHAN_ROOT),
                None,
                "slack-thread".into(),
                "1700000101.000100".into()
            ),
            (
                id(C2, R2),
                Some("U0AGENT".into()),
                "slack-thread".into(),
                "1700000100.000200".into()
            ),
            (
                id(C3, G1),
                None,
                "slack-thread".into(),
                "1700000203.000100".into()
            ),
            (
                id(C3, G2),
                Some("U0CUST3".into()),
                "slack-thread".into(),
                G2.into()
            ),
        ]
    );
    let a = id(C1, R1);
    let messages: Vec<(String, String)> = [
        (R1, &a),
        ("1700000000.000200", &a),
        ("1700000000.000300", &a),
        ("1700000001.000400", &a),
        // the bot's top-level message (…0500) belongs to no thread; its replies do
        ("1700000001.000600", &a),
        ("1700000001.000700", &a),
        (R2, &id(C2, R2)),
        ("1700000100.000200", &id(C2, R2)),
        ("1700000101.000100", &id(C2, ORPHAN_ROOT)),
        (G1, &id(C3, G1)),
        (G2, &id(C3, G2)),
        ("1700000203.000100", &id(C3, G1)),
    ]
    .into_iter()
    .map(|(ts, thread)| (ts.to_owned(), thread.clone()))
    .collect();
    assert_eq!(thread_messages(pool).await, messages);
    assert_eq!(count(pool, "facts").await, facts);
    assert_eq!(transitions(pool).await, expected_transitions());

    let events = thread_events(cluster, TRANSITIONS).await;
    assert_eq!(total(&events), TRANSITIONS, "{events:#?}");
    let per_channel: BTreeMap<String, Vec<T>> =
        events.iter().map(|(c, e)| (c.clone(), as_t(e))).collect();
    assert_eq!(per_channel, expected_transitions());
    // The full record of one event.
    let reopened = &events[C1][4];
    assert_eq!(
        reopened.transition_id,
        format!("{a}/1700000001.000400/posted")
    );
    assert_eq!(reopened.team_id, TEAM);
    assert_eq!(reopened.root_ts, R1);
    assert_eq!(reopened.from_status, Some(ThreadStatus::Done));
    assert_eq!(reopened.trigger_event_id, "Ev-c1-5");
    assert_eq!(reopened.trigger_fact, "posted");
    assert_eq!(reopened.author_kind.as_deref(), Some("customer"));
    assert_eq!(reopened.reaction, None);
    assert_eq!(reopened.event_time_ms, Some(1_700_000_001_000));
    let done = &events[C1][3];
    assert_eq!(done.reaction.as_deref(), Some("white_check_mark"));
    assert_eq!(done.author_kind.as_deref(), Some("agent"));
    assert_eq!(
        done.transition_id,
        format!("{a}/{R1}/reaction_added:white_check_mark:U0AGENT:Ev-c1-4")
    );
    let unreadable = &events[C3][0];
    assert_eq!(unreadable.author_kind.as_deref(), Some("unknown"));
    assert_eq!(unreadable.trigger_fact, "degraded:Ev-c3-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_conversation_gives_exact_threads_transitions_and_events() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(&cluster, &db, &[])).await;
    let input = script();
    produce(&cluster, &input).await;
    wait_handled(&running, input.len(), Duration::from_secs(60)).await;
    let pool = pool(&db).await;
    assert_state(&cluster, &pool, input.len() as i64).await;
    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_input_again_changes_nothing() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(&cluster, &db, &[])).await;
    let input = script();
    produce(&cluster, &input).await;
    wait_handled(&running, input.len(), Duration::from_secs(60)).await;
    let pool = pool(&db).await;
    assert_state(&cluster, &pool, input.len() as i64).await;

    // Replay everything, plus two posted facts again under other event ids (as an
    // app_mention of the same message would be): the customer's root, and the agent's
    // reply, which applied again now would move C1's thread back to `waiting`.
    let mut again = input.clone();
    let mut mention = input[0].clone();
    mention.event_id = "Ev-c1-1-app-mention".into();
    again.push(mention);
    let mut mention = input[2].clone();
    assert_eq!(mention.event_id, "Ev-c1-2");
    mention.event_id = "Ev-c1-2-app-mention".into();
    again.push(mention);
    produce(&cluster, &again).await;
    wait_handled(&running, input.len() + again.len(), Duration::from_secs(60)).await;
    assert_state(&cluster, &pool, input.len() as i64).await;
    let duplicates = slackline_testkit::metrics::metric(
        running.registry(),
        "slackline_thread_state_facts_total",
        &[("outcome", "duplicate")],
    );
    assert_eq!(duplicates, again.len() as f64);
    assert_eq!(
        counter(
            running.registry(),
            "slackline_thread_state_thread_events_published_total"
        ),
        TRANSITIONS as f64
    );

    // A restarted service (same group, offsets committed) changes nothing either.
    running.stop().await;
    let running = start(config(&cluster, &db, &[])).await;
    produce(&cluster, &input[..3]).await;
    wait_handled(&running, 3, Duration::from_secs(60)).await;
    assert_state(&cluster, &pool, input.len() as i64).await;

    // A crash between the commit and Kafka's acknowledgement leaves a transition
    // unpublished: the redelivered fact publishes it (and only it).
    let agent_reply = format!("{}/1700000000.000200/posted", id(C1, R1));
    sqlx::query("UPDATE thread_state.transitions SET published_at = NULL WHERE transition_id = $1")
        .bind(&agent_reply)
        .execute(&pool)
        .await
        .unwrap();
    produce(&cluster, &input[2..3]).await;
    wait_handled(&running, 4, Duration::from_secs(60)).await;
    let _ = transitions(&pool).await; // every transition is marked published again
    let events = thread_events(&cluster, TRANSITIONS + 1).await;
    assert_eq!(total(&events), TRANSITIONS + 1);
    let c1 = &events[C1];
    assert_eq!(c1.len(), 6);
    assert_eq!(c1[5].transition_id, agent_reply);
    assert_eq!(c1[5], c1[1], "the same record again");
    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}

/// A shared channel served by two installations: the same channel and root ts under
/// two installing teams are two independent threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_channel_under_two_teams_gives_two_threads() {
    use AuthorKind::{Agent, Customer};
    const SHARED: &str = "C0SHARED";
    const PARTNER: &str = "T0PARTNER";
    let in_team = |mut e: MessageEvent, team: &str| {
        e.team_id = team.to_owned();
        e
    };
    let input = vec![
        post("Ev-a-1", SHARED, R1, Customer, "U0CUST"),
        in_team(post("Ev-b-1", SHARED, R1, Customer, "U0CUST"), PARTNER),
        reply("Ev-a-2", SHARED, "1700000000.000200", R1, Agent, "U0AGENT"),
        in_team(
            reply(
                "Ev-b-2",
                SHARED,
                "1700000000.000300",
                R1,
                Customer,
                "U0CUST",
            ),
            PARTNER,
        ),
        at_ms(
            react(
                "Ev-a-3",
                SHARED,
                R1,
                "white_check_mark",
                Agent,
                "U0AGENT",
                "U0CUST",
            ),
            1_700_000_001_000,
        ),
    ];
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(&cluster, &db, &[])).await;
    produce(&cluster, &input).await;
    // No record may go to the DLQ.
    wait_handled(&running, input.len(), Duration::from_secs(60)).await;
    let pool = pool(&db).await;

    let a = thread_id_of(TEAM, SHARED, R1);
    let b = thread_id_of(PARTNER, SHARED, R1);
    assert_eq!(
        threads(&pool).await,
        vec![(a.clone(), "done".into()), (b.clone(), "todo".into())]
    );
    let messages: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT team_id, ts, thread_id FROM thread_state.thread_messages ORDER BY team_id, ts",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |team: &str, ts: &str, thread: &str| (team.into(), ts.into(), thread.to_owned());
    assert_eq!(
        messages,
        vec![
            row(TEAM, R1, &a),
            row(TEAM, "1700000000.000200", &a),
            row(PARTNER, R1, &b),
            row(PARTNER, "1700000000.000300", &b),
        ]
    );
    assert_eq!(count(&pool, "facts").await, input.len() as i64);
    let expected = vec![
        t(&a, None, "todo", "opened", R1),
        t(&b, None, "todo", "opened", R1),
        t(
            &a,
            Some("todo"),
            "waiting",
            "agent_reply",
            "1700000000.000200",
        ),
        t(&a, Some("waiting"), "done", "reaction", R1),
    ];
    assert_eq!(
        transitions(&pool).await,
        [(SHARED.to_owned(), expected.clone())]
            .into_iter()
            .collect()
    );
    let events = thread_events(&cluster, expected.len()).await;
    assert_eq!(total(&events), expected.len());
    assert_eq!(as_t(&events[SHARED]), expected);
    let teams: Vec<&str> = events[SHARED].iter().map(|e| e.team_id.as_str()).collect();
    assert_eq!(teams, vec![TEAM, PARTNER, TEAM, TEAM]);
    assert_eq!(
        events[SHARED][1].transition_id,
        format!("{b}/{R1}/posted"),
        "transition ids derive from the team-scoped thread id"
    );

    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}

/// Degraded events follow their author's kind; without an author they count as a
/// customer's; a broken edit, delete or reply notice has no thread effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_events_follow_their_author() {
    use AuthorKind::{Agent, Bot, Customer};
    const THREADED: &str = "C0DEGRADED1";
    const TOP: &str = "C0DEGRADED2";
    let input = vec![
        post("Ev-d-1", THREADED, R1, Customer, "U0CUST"),
        // An agent's reply we could not read: the thread waits on the customer.
        degraded_as(
            "Ev-d-2",
            THREADED,
            "1700000000.000200",
            "huddle_thread",
            Some(R1),
            Some((Agent, "U0AGENT")),
        ),
        // Broken notices about messages, by a customer, even in the thread: no effect.
        degraded_as(
            "Ev-d-3",
            THREADED,
            "1700000000.000300",
            "message_replied",
            Some(R1),
            Some((Customer, "U0CUST")),
        ),
        degraded_as(
            "Ev-d-4",
            THREADED,
            "1700000001.000400",
            "message_deleted",
            Some(R1),
            None,
        ),
        degraded_as(
            "Ev-d-5",
            TOP,
            "1700000100.000100",
            "message_changed",
            None,
            Some((Customer, "U0CUST")),
        ),
        degraded_as(
            "Ev-d-6",
            TOP,
            "1700000100.000200",
            "message_changed",
            None,
            None,
        ),
        // A bot's unreadable message opens nothing.
        degraded_as(
            "Ev-d-7",
            TOP,
            "1700000100.000300",
            "huddle_thread",
            None,
            Some((Bot, "B0BOT")),
        ),
        // Unreadable and unattributable: it must surface as a customer's.
        degraded("Ev-d-8", TOP, "1700000100.000400"),
    ];
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let running = start(config(&cluster, &db, &[])).await;
    produce(&cluster, &input).await;
    wait_handled(&running, input.len(), Duration::from_secs(60)).await;
    let pool = pool(&db).await;

    let x = id(THREADED, R1);
    let y = id(TOP, "1700000100.000400");
    assert_eq!(
        threads(&pool).await,
        vec![(x.clone(), "waiting".into()), (y.clone(), "todo".into())]
    );
    assert_eq!(
        thread_messages(&pool).await,
        vec![
            (R1.to_owned(), x.clone()),
            ("1700000000.000200".to_owned(), x.clone()),
            ("1700000100.000400".to_owned(), y.clone()),
        ]
    );
    assert_eq!(count(&pool, "facts").await, input.len() as i64);
    let expected: BTreeMap<String, Vec<T>> = [
        (
            THREADED.to_owned(),
            vec![
                t(&x, None, "todo", "opened", R1),
                t(
                    &x,
                    Some("todo"),
                    "waiting",
                    "agent_reply",
                    "1700000000.000200",
                ),
            ],
        ),
        (
            TOP.to_owned(),
            vec![t(&y, None, "todo", "opened", "1700000100.000400")],
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(transitions(&pool).await, expected);
    let events = thread_events(&cluster, 3).await;
    assert_eq!(total(&events), 3);
    assert_eq!(events[THREADED][1].author_kind.as_deref(), Some("agent"));
    assert_eq!(events[THREADED][1].trigger_fact, "degraded:Ev-d-2");
    assert_eq!(events[TOP][0].author_kind.as_deref(), Some("unknown"));

    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}
