//! A rolling deploy over migration 0002 (issue 12, item 1): until it is replaced, a pod
//! of the version before keeps consuming with its own SQL, which knows nothing of
//! `status_micros`/`status_key`. The database gives its writes the order of the
//! thread's newest known fact (migration 0003's triggers), so a later redrive of an
//! older fact through the new version cannot reopen a thread the old pod closed.
//! The old writer is simulated with the exact statements of the version before
//! (`git show 6f95d1d:services/thread-state/src/store.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use slackline_events::AuthorKind::Customer;
use slackline_testkit::postgres::TestDatabase;
use sqlx::PgPool;

const CH: &str = "C0ROLLING";

fn at(secs: i64) -> String {
    format!("{}.000100", 1_700_000_000 + secs)
}

fn micros(secs: i64) -> i64 {
    (1_700_000_000 + secs) * 1_000_000 + 100
}

/// The old version's `create_thread` (its exact statement).
async fn old_create_thread(pool: &PgPool, thread_id: &str, root: i64, status: &str) {
    sqlx::query(
        "INSERT INTO thread_state.threads (thread_id, team_id, channel_id, root_ts, status, \
                              grouping, opened_by, last_ts, root_micros, last_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(thread_id)
    .bind(TEAM)
    .bind(CH)
    .bind(at(root))
    .bind(status)
    .bind("slack-thread")
    .bind("U0CUST")
    .bind(at(root))
    .bind(micros(root))
    .bind(micros(root))
    .execute(pool)
    .await
    .expect("old create_thread");
}

/// The old version's `add_message` (its exact statements).
async fn old_add_message(pool: &PgPool, thread_id: &str, ts: i64, kind: &str) {
    sqlx::query(
        "INSERT INTO thread_state.thread_messages (team_id, channel_id, ts, thread_id, \
                                      author_id, author_kind, ts_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(TEAM)
    .bind(CH)
    .bind(at(ts))
    .bind(thread_id)
    .bind("U0SOMEONE")
    .bind(kind)
    .bind(micros(ts))
    .execute(pool)
    .await
    .expect("old add_message insert");
    sqlx::query(
        "UPDATE thread_state.threads SET last_ts = $2, last_micros = $3, updated_at = now() \
         WHERE thread_id = $1 AND (last_micros IS NULL OR last_micros < $3)",
    )
    .bind(thread_id)
    .bind(at(ts))
    .bind(micros(ts))
    .execute(pool)
    .await
    .expect("old add_message update");
}

/// The old version's `transition` (its exact statements).
#[allow(clippy::too_many_arguments)]
async fn old_transition(
    pool: &PgPool,
    thread_id: &str,
    from: Option<&str>,
    to: &str,
    cause: &str,
    trigger_ts: &str,
    fact: &str,
    event_time_ms: i64,
) {
    sqlx::query(
        "UPDATE thread_state.threads SET status = $2, updated_at = now() WHERE thread_id = $1",
    )
    .bind(thread_id)
    .bind(to)
    .execute(pool)
    .await
    .expect("old status update");
    sqlx::query(
        "INSERT INTO thread_state.transitions (transition_id, thread_id, from_status, \
             to_status, cause, trigger_ts, trigger_event_id, trigger_fact, author_kind, \
             reaction, event_time_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
    )
    .bind(format!("{thread_id}/{trigger_ts}/{fact}"))
    .bind(thread_id)
    .bind(from)
    .bind(to)
    .bind(cause)
    .bind(trigger_ts)
    .bind(format!("Ev-old-{trigger_ts}-{fact}"))
    .bind(fact)
    .bind("agent")
    .bind(None::<String>)
    .bind(event_time_ms)
    .execute(pool)
    .await
    .expect("old transition insert");
}

async fn status_order(pool: &PgPool, thread_id: &str) -> (String, i64) {
    sqlx::query_as("SELECT status, status_micros FROM thread_state.threads WHERE thread_id = $1")
        .bind(thread_id)
        .fetch_one(pool)
        .await
        .expect("the thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_writer_during_a_rolling_deploy_leaves_an_order_a_stale_fact_respects() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    // The new version migrates the schema; the old pods keep writing with their SQL.
    let running = start(config(&cluster, &db, &[])).await;
    let pool = pool(&db).await;

    // Thread A, all of it by an old pod: the customer's root (t=0), the agent's reply
    // (t=2), the agent's ✅ (t=5).
    let a = thread_id_of(TEAM, CH, &at(0));
    old_create_thread(&pool, &a, 0, "todo").await;
    old_add_message(&pool, &a, 0, "customer").await;
    assert_eq!(
        status_order(&pool, &a).await,
        ("todo".into(), micros(0)),
        "an old insert takes its newest fact's order"
    );
    old_add_message(&pool, &a, 2, "agent").await;
    old_transition(
        &pool,
        &a,
        Some("todo"),
        "waiting",
        "agent_reply",
        &at(2),
        "posted",
        (1_700_000_000 + 2) * 1000,
    )
    .await;
    assert_eq!(status_order(&pool, &a).await, ("waiting".into(), micros(2)));
    old_transition(
        &pool,
        &a,
        Some("waiting"),
        "done",
        "reaction",
        &at(0),
        "reaction_added:white_check_mark:U0AGENT",
        (1_700_000_000 + 5) * 1000,
    )
    .await;
    assert_eq!(
        status_order(&pool, &a).await,
        ("done".into(), (1_700_000_000 + 5) * 1_000_000),
        "the old pod's ✅ holds from its time"
    );

    // A redrive of the customer's follow-up (t=3, older than the ✅) through the new
    // version: the thread stays done and nothing is published.
    let late = reply("Ev-late-3", CH, &at(3), &at(0), Customer, "U0CUST");
    produce(&cluster, &[late]).await;
    wait_handled(&running, 1, Duration::from_secs(60)).await;
    assert_eq!(status_order(&pool, &a).await.0, "done", "not reopened");
    let reopened: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM thread_state.transitions WHERE thread_id = $1 AND trigger_ts = $2",
    )
    .bind(&a)
    .bind(at(3))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reopened, 0, "no transition from the stale fact");
    // The follow-up is a member all the same.
    let member: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM thread_state.thread_messages WHERE thread_id = $1 AND ts = $2",
    )
    .bind(&a)
    .bind(at(3))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(member, 1);

    running.stop().await;
    pool.close().await;
    db.drop_database().await;
}
