//! The SQL of thread-state: facts, threads, their messages and transitions, in schema
//! `thread_state` (the pool's `search_path`).
//!
//! Every function that changes something runs inside the caller's transaction; the
//! thread rows a fact touches are locked (`FOR UPDATE`) before they are read for a
//! decision.

use slackline_events::{ThreadEvent, ThreadStatus};
use sqlx::{PgConnection, PgPool, Row};

use slackline_store::StoreError;

/// A Slack `ts` (`seconds.micros`) as microseconds, so windows and "latest" compare
/// by Slack's time, never the wall clock. `None` for anything that is not a ts.
pub(crate) fn ts_micros(ts: &str) -> Option<i64> {
    let (secs, frac) = ts.split_once('.').unwrap_or((ts, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut micros: i64 = 0;
    for i in 0..6 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        micros = micros * 10 + digit;
    }
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// The message key of a fact (guarantee 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FactKey {
    pub(crate) team_id: String,
    /// `""` when the event names no channel.
    pub(crate) channel_id: String,
    /// `""` when the event has no ts.
    pub(crate) ts: String,
    pub(crate) fact: String,
}

/// Where a status decision sits in Slack's order: its Slack time in microseconds, then
/// a tie-break (`0:<fact>` for a message, `1:<fact>` for a reaction, so a reaction
/// reported in the same microsecond as a message counts after it, and two facts never
/// compare equal). Compared as a tuple: numerically by time, never as ts strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Order {
    pub(crate) micros: i64,
    pub(crate) key: String,
}

impl Order {
    /// The order of a message fact: its own ts.
    pub(crate) fn message(ts: &str, fact: &str) -> Order {
        Order {
            micros: ts_micros(ts).unwrap_or(0),
            key: format!("0:{fact}"),
        }
    }

    /// The order of a reaction fact on message `item_ts` at `event_time_ms`: never
    /// before the message it is on (a reaction cannot precede its message, and
    /// Slack's `event_time` has only whole seconds).
    pub(crate) fn reaction(item_ts: &str, event_time_ms: Option<i64>, fact: &str) -> Order {
        let item = ts_micros(item_ts).unwrap_or(0);
        let at = event_time_ms
            .and_then(|ms| ms.checked_mul(1000))
            .unwrap_or(0);
        Order {
            micros: item.max(at),
            key: format!("1:{fact}"),
        }
    }

    /// The time as a Slack ts (`seconds.micros`).
    pub(crate) fn ts(&self) -> String {
        format!(
            "{}.{:06}",
            self.micros.div_euclid(1_000_000),
            self.micros.rem_euclid(1_000_000)
        )
    }
}

/// A locked thread, as far as a decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Thread {
    pub(crate) thread_id: String,
    pub(crate) root_ts: String,
    pub(crate) status: ThreadStatus,
    /// The order of the fact that decided `status`.
    pub(crate) order: Order,
}

/// The columns [`thread_from`] reads (of `threads`, aliased `t`).
const THREAD_COLUMNS: &str = "t.thread_id, t.root_ts, t.status, t.status_micros, t.status_key";

fn thread_from(row: &sqlx::postgres::PgRow) -> Result<Thread, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Thread {
        thread_id: row.try_get("thread_id")?,
        root_ts: row.try_get("root_ts")?,
        status: status
            .parse()
            .map_err(|e| StoreError::Query(format!("threads.status: {e}")))?,
        order: Order {
            micros: row.try_get("status_micros")?,
            key: row.try_get("status_key")?,
        },
    })
}

/// Records the fact; `false` when it was recorded before (then nothing else is done).
pub(crate) async fn insert_fact(
    conn: &mut PgConnection,
    key: &FactKey,
    event_id: &str,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO facts (team_id, channel_id, ts, fact, event_id) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&key.team_id)
    .bind(&key.channel_id)
    .bind(&key.ts)
    .bind(&key.fact)
    .bind(event_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Notes which thread the fact belonged to.
pub(crate) async fn set_fact_thread(
    conn: &mut PgConnection,
    key: &FactKey,
    thread_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE facts SET thread_id = $5 \
         WHERE team_id = $1 AND channel_id = $2 AND ts = $3 AND fact = $4",
    )
    .bind(&key.team_id)
    .bind(&key.channel_id)
    .bind(&key.ts)
    .bind(&key.fact)
    .bind(thread_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The thread rooted at `root_ts`, locked.
pub(crate) async fn thread_by_root(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    root_ts: &str,
) -> Result<Option<Thread>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {THREAD_COLUMNS} FROM threads t \
         WHERE t.team_id = $1 AND t.channel_id = $2 AND t.root_ts = $3 FOR UPDATE"
    ))
    .bind(team_id)
    .bind(channel_id)
    .bind(root_ts)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(thread_from).transpose()
}

/// The thread message `ts` belongs to (as its root, or as one of its messages), locked.
pub(crate) async fn thread_of_message(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    ts: &str,
) -> Result<Option<Thread>, StoreError> {
    if let Some(thread) = thread_by_root(&mut *conn, team_id, channel_id, ts).await? {
        return Ok(Some(thread));
    }
    let row = sqlx::query(&format!(
        "SELECT {THREAD_COLUMNS} FROM threads t \
         JOIN thread_messages m ON m.thread_id = t.thread_id \
         WHERE m.team_id = $1 AND m.channel_id = $2 AND m.ts = $3 FOR UPDATE OF t"
    ))
    .bind(team_id)
    .bind(channel_id)
    .bind(ts)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(thread_from).transpose()
}

/// A thread's status as of the Slack order `($3, $4)` (the newest decision strictly
/// before it), `'todo'` when none is that old: SQL for the queries below (thread `t`).
/// They first drop the threads done since before `$3` (done as of it too), so the
/// open threads' index does most of the work.
const STATUS_AS_OF: &str = "coalesce((SELECT d.status FROM thread_decisions d \
      WHERE d.thread_id = t.thread_id \
        AND (d.order_micros, d.order_key) < ($3, $4::text COLLATE \"C\") \
      ORDER BY d.order_micros DESC, d.order_key DESC LIMIT 1), 'todo')";

/// For `time-window`: the newest (by root ts) thread of the channel that is not done
/// as of `at` (Slack's order, whatever was delivered since) and in which `author_id`
/// wrote a message within `window_micros` before `at`, locked.
pub(crate) async fn window_thread(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    at: &Order,
    author_id: &str,
    window_micros: i64,
) -> Result<Option<Thread>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {THREAD_COLUMNS} FROM threads t \
         WHERE t.team_id = $1 AND t.channel_id = $2 \
           AND (t.status <> 'done' OR t.status_micros >= $3) AND {STATUS_AS_OF} <> 'done' \
           AND EXISTS (SELECT 1 FROM thread_messages m \
                       WHERE m.thread_id = t.thread_id AND m.author_id = $5 \
                         AND m.ts_micros BETWEEN $3 - $6 AND $3) \
         ORDER BY t.root_micros DESC NULLS LAST, t.thread_id DESC LIMIT 1 FOR UPDATE"
    ))
    .bind(team_id)
    .bind(channel_id)
    .bind(at.micros)
    .bind(&at.key)
    .bind(author_id)
    .bind(window_micros)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(thread_from).transpose()
}

/// For `time-window` agent messages at `at`: of the channel's threads rooted at or
/// before `at` and not done as of `at` (Slack's order, whatever was delivered since),
/// the one with the latest message at or before `at`, locked. So a late reply joins
/// the thread it answered, not one opened after it.
pub(crate) async fn open_thread_at(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    at: &Order,
) -> Result<Option<Thread>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {THREAD_COLUMNS} FROM threads t \
         WHERE t.team_id = $1 AND t.channel_id = $2 AND t.root_micros <= $3 \
           AND (t.status <> 'done' OR t.status_micros >= $3) AND {STATUS_AS_OF} <> 'done' \
         ORDER BY (SELECT max(m.ts_micros) FROM thread_messages m \
                   WHERE m.thread_id = t.thread_id AND m.ts_micros <= $3) DESC NULLS LAST, \
                  t.thread_id DESC LIMIT 1 FOR UPDATE"
    ))
    .bind(team_id)
    .bind(channel_id)
    .bind(at.micros)
    .bind(&at.key)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(thread_from).transpose()
}

/// Remembers a status decision applied to a thread (older ones too), for
/// [`window_thread`] and [`open_thread_at`].
pub(crate) async fn record_decision(
    conn: &mut PgConnection,
    thread_id: &str,
    status: ThreadStatus,
    order: &Order,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO thread_decisions (thread_id, order_micros, order_key, status) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(thread_id)
    .bind(order.micros)
    .bind(&order.key)
    .bind(status.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets the remembered message and reaction facts of the messages `ts` once they
/// belong to a thread (`thread_messages` and `facts` keep what is needed).
pub(crate) async fn forget_seen(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    ts: &[&str],
) -> Result<(), StoreError> {
    for table in ["seen_messages", "seen_reactions"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE team_id = $1 AND channel_id = $2 AND ts = ANY($3)"
        ))
        .bind(team_id)
        .bind(channel_id)
        .bind(ts)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A thread to create.
#[derive(Debug)]
pub(crate) struct NewThread<'a> {
    pub(crate) thread_id: &'a str,
    pub(crate) team_id: &'a str,
    pub(crate) channel_id: &'a str,
    pub(crate) root_ts: &'a str,
    pub(crate) status: ThreadStatus,
    /// The order of the fact that opened it (and decided `status`).
    pub(crate) order: &'a Order,
    pub(crate) grouping: &'a str,
    pub(crate) opened_by: Option<&'a str>,
    pub(crate) last_ts: &'a str,
}

/// Creates the thread; `false` when it exists already.
pub(crate) async fn create_thread(
    conn: &mut PgConnection,
    t: &NewThread<'_>,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO threads (thread_id, team_id, channel_id, root_ts, status, grouping, \
                              opened_by, last_ts, root_micros, last_micros, \
                              status_ts, status_micros, status_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING",
    )
    .bind(t.thread_id)
    .bind(t.team_id)
    .bind(t.channel_id)
    .bind(t.root_ts)
    .bind(t.status.as_str())
    .bind(t.grouping)
    .bind(t.opened_by)
    .bind(t.last_ts)
    .bind(ts_micros(t.root_ts))
    .bind(ts_micros(t.last_ts))
    .bind(t.order.ts())
    .bind(t.order.micros)
    .bind(&t.order.key)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A message that belongs to a thread.
#[derive(Debug)]
pub(crate) struct NewMessage<'a> {
    pub(crate) team_id: &'a str,
    pub(crate) channel_id: &'a str,
    pub(crate) ts: &'a str,
    pub(crate) thread_id: &'a str,
    pub(crate) author_id: Option<&'a str>,
    pub(crate) author_kind: &'a str,
}

/// Records that the message belongs to the thread (a message already recorded keeps
/// its thread) and moves the thread's `last_ts` forward.
pub(crate) async fn add_message(
    conn: &mut PgConnection,
    m: &NewMessage<'_>,
) -> Result<(), StoreError> {
    let micros = ts_micros(m.ts);
    sqlx::query(
        "INSERT INTO thread_messages (team_id, channel_id, ts, thread_id, author_id, \
                                      author_kind, ts_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(m.team_id)
    .bind(m.channel_id)
    .bind(m.ts)
    .bind(m.thread_id)
    .bind(m.author_id)
    .bind(m.author_kind)
    .bind(micros)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE threads SET last_ts = $2, last_micros = $3, updated_at = now() \
         WHERE thread_id = $1 AND (last_micros IS NULL OR last_micros < $3)",
    )
    .bind(m.thread_id)
    .bind(m.ts)
    .bind(micros)
    .execute(conn)
    .await?;
    Ok(())
}

/// A message fact as remembered in `seen_messages`.
#[derive(Debug, Clone)]
pub(crate) struct SeenMessage {
    pub(crate) ts: String,
    pub(crate) fact: String,
    pub(crate) thread_ts: Option<String>,
    pub(crate) author_id: Option<String>,
    pub(crate) author_kind: String,
    /// `customer`, `agent` or `silent`.
    pub(crate) role: String,
    pub(crate) event_id: String,
    pub(crate) event_time_ms: Option<i64>,
}

/// Remembers a message fact (whether or not it belongs to a thread).
pub(crate) async fn insert_seen_message(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    m: &SeenMessage,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO seen_messages (team_id, channel_id, ts, fact, thread_ts, author_id, \
                                   author_kind, role, event_id, event_time_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(&m.ts)
    .bind(&m.fact)
    .bind(&m.thread_ts)
    .bind(&m.author_id)
    .bind(&m.author_kind)
    .bind(&m.role)
    .bind(&m.event_id)
    .bind(m.event_time_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// The remembered message facts that belong to no thread yet and whose ts or Slack
/// thread root is one of `roots`, except the fact `(except_ts, except_fact)`, by ts.
pub(crate) async fn loose_messages(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    roots: &[&str],
    except: (&str, &str),
) -> Result<Vec<SeenMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.ts, s.fact, s.thread_ts, s.author_id, s.author_kind, s.role, s.event_id, \
                s.event_time_ms \
         FROM seen_messages s \
         WHERE s.team_id = $1 AND s.channel_id = $2 \
           AND (s.ts = ANY($3) OR s.thread_ts = ANY($3)) \
           AND NOT (s.ts = $4 AND s.fact = $5) \
           AND NOT EXISTS (SELECT 1 FROM thread_messages m \
                           WHERE m.team_id = s.team_id AND m.channel_id = s.channel_id \
                             AND m.ts = s.ts) \
         ORDER BY s.ts, s.fact",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(roots)
    .bind(except.0)
    .bind(except.1)
    .fetch_all(conn)
    .await?;
    rows.iter().map(seen_message_from).collect()
}

/// For `time-window`: the remembered top-level agent messages of the channel that
/// belong to no thread (no thread was open as of their ts when they arrived), by ts.
pub(crate) async fn loose_agent_posts(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
) -> Result<Vec<SeenMessage>, StoreError> {
    let rows = sqlx::query(
        "SELECT s.ts, s.fact, s.thread_ts, s.author_id, s.author_kind, s.role, s.event_id, \
                s.event_time_ms \
         FROM seen_messages s \
         WHERE s.team_id = $1 AND s.channel_id = $2 AND s.thread_ts IS NULL \
           AND s.role = 'agent' \
           AND NOT EXISTS (SELECT 1 FROM thread_messages m \
                           WHERE m.team_id = s.team_id AND m.channel_id = s.channel_id \
                             AND m.ts = s.ts) \
         ORDER BY s.ts, s.fact",
    )
    .bind(team_id)
    .bind(channel_id)
    .fetch_all(conn)
    .await?;
    rows.iter().map(seen_message_from).collect()
}

fn seen_message_from(r: &sqlx::postgres::PgRow) -> Result<SeenMessage, StoreError> {
    Ok(SeenMessage {
        ts: r.try_get("ts")?,
        fact: r.try_get("fact")?,
        thread_ts: r.try_get("thread_ts")?,
        author_id: r.try_get("author_id")?,
        author_kind: r.try_get("author_kind")?,
        role: r.try_get("role")?,
        event_id: r.try_get("event_id")?,
        event_time_ms: r.try_get("event_time_ms")?,
    })
}

/// A reaction fact as remembered in `seen_reactions`.
#[derive(Debug, Clone)]
pub(crate) struct SeenReaction {
    pub(crate) ts: String,
    pub(crate) fact: String,
    pub(crate) name: String,
    pub(crate) author_kind: String,
    pub(crate) command_status: Option<ThreadStatus>,
    pub(crate) order_micros: i64,
    pub(crate) event_id: String,
    pub(crate) event_time_ms: Option<i64>,
}

/// Remembers a reaction fact.
pub(crate) async fn insert_seen_reaction(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    r: &SeenReaction,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO seen_reactions (team_id, channel_id, ts, fact, name, author_kind, \
                                    command_status, order_micros, event_id, event_time_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(&r.ts)
    .bind(&r.fact)
    .bind(&r.name)
    .bind(&r.author_kind)
    .bind(r.command_status.map(ThreadStatus::as_str))
    .bind(r.order_micros)
    .bind(&r.event_id)
    .bind(r.event_time_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// The remembered reaction commands on the messages `ts`.
pub(crate) async fn reaction_commands_on(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    ts: &[&str],
) -> Result<Vec<SeenReaction>, StoreError> {
    let rows = sqlx::query(
        "SELECT ts, fact, name, author_kind, command_status, order_micros, event_id, \
                event_time_ms \
         FROM seen_reactions \
         WHERE team_id = $1 AND channel_id = $2 AND ts = ANY($3) \
           AND command_status IS NOT NULL",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(ts)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let status: Option<String> = r.try_get("command_status")?;
            Ok(SeenReaction {
                ts: r.try_get("ts")?,
                fact: r.try_get("fact")?,
                name: r.try_get("name")?,
                author_kind: r.try_get("author_kind")?,
                command_status: status
                    .map(|s| {
                        s.parse().map_err(|e| {
                            StoreError::Query(format!("seen_reactions.command_status: {e}"))
                        })
                    })
                    .transpose()?,
                order_micros: r.try_get("order_micros")?,
                event_id: r.try_get("event_id")?,
                event_time_ms: r.try_get("event_time_ms")?,
            })
        })
        .collect()
}

/// Notes `thread_id` on the remembered message and reaction facts of the messages
/// `ts` that name no thread yet (they were applied before their message joined it).
pub(crate) async fn set_facts_thread(
    conn: &mut PgConnection,
    team_id: &str,
    channel_id: &str,
    ts: &[&str],
    thread_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE facts f SET thread_id = $4 \
         WHERE f.team_id = $1 AND f.channel_id = $2 AND f.ts = ANY($3) AND f.thread_id IS NULL \
           AND (EXISTS (SELECT 1 FROM seen_messages s WHERE s.team_id = f.team_id \
                          AND s.channel_id = f.channel_id AND s.ts = f.ts AND s.fact = f.fact) \
             OR EXISTS (SELECT 1 FROM seen_reactions s WHERE s.team_id = f.team_id \
                          AND s.channel_id = f.channel_id AND s.ts = f.ts AND s.fact = f.fact))",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(ts)
    .bind(thread_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets who opened a thread when that was not known (its root arrived after a reply).
pub(crate) async fn fill_opened_by(
    conn: &mut PgConnection,
    thread_id: &str,
    opened_by: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE threads SET opened_by = $2 WHERE thread_id = $1 AND opened_by IS NULL")
        .bind(thread_id)
        .bind(opened_by)
        .execute(conn)
        .await?;
    Ok(())
}

/// A transition to record.
#[derive(Debug)]
pub(crate) struct NewTransition<'a> {
    pub(crate) thread_id: &'a str,
    pub(crate) from_status: Option<ThreadStatus>,
    pub(crate) to_status: ThreadStatus,
    pub(crate) cause: &'static str,
    pub(crate) key: &'a FactKey,
    pub(crate) event_id: &'a str,
    pub(crate) author_kind: Option<&'a str>,
    pub(crate) reaction: Option<&'a str>,
    pub(crate) event_time_ms: Option<i64>,
}

/// The deterministic id of the transition a fact causes in a thread: one fact
/// causes at most one transition, and the same fact always the same id.
pub(crate) fn transition_id(thread_id: &str, key: &FactKey) -> String {
    format!("{thread_id}/{}/{}", key.ts, key.fact)
}

/// Sets the thread's status and the order of the fact that decided it.
pub(crate) async fn set_decision(
    conn: &mut PgConnection,
    thread_id: &str,
    status: ThreadStatus,
    order: &Order,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE threads SET status = $2, status_ts = $3, status_micros = $4, status_key = $5, \
                            updated_at = now() \
         WHERE thread_id = $1",
    )
    .bind(thread_id)
    .bind(status.as_str())
    .bind(order.ts())
    .bind(order.micros)
    .bind(&order.key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a transition (the thread's status is set by [`set_decision`] or
/// [`create_thread`]).
pub(crate) async fn transition(
    conn: &mut PgConnection,
    t: &NewTransition<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transitions (transition_id, thread_id, from_status, to_status, cause, \
             trigger_ts, trigger_event_id, trigger_fact, author_kind, reaction, event_time_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
    )
    .bind(transition_id(t.thread_id, t.key))
    .bind(t.thread_id)
    .bind(t.from_status.map(ThreadStatus::as_str))
    .bind(t.to_status.as_str())
    .bind(t.cause)
    .bind(&t.key.ts)
    .bind(t.event_id)
    .bind(&t.key.fact)
    .bind(t.author_kind)
    .bind(t.reaction)
    .bind(t.event_time_ms)
    .execute(conn)
    .await?;
    Ok(())
}

fn status_column(row: &sqlx::postgres::PgRow, name: &str) -> Result<ThreadStatus, StoreError> {
    let text: String = row.try_get(name)?;
    text.parse()
        .map_err(|e| StoreError::Query(format!("transitions.{name}: {e}")))
}

/// The channel's transitions not yet acknowledged by Kafka, in commit order.
pub(crate) async fn unpublished(
    pool: &PgPool,
    team_id: &str,
    channel_id: &str,
) -> Result<Vec<ThreadEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT t.transition_id, t.thread_id, th.team_id, th.channel_id, th.root_ts, \
                t.from_status, t.to_status, t.cause, t.trigger_ts, t.trigger_event_id, \
                t.trigger_fact, t.author_kind, t.reaction, t.event_time_ms \
         FROM transitions t JOIN threads th ON th.thread_id = t.thread_id \
         WHERE t.published_at IS NULL AND th.team_id = $1 AND th.channel_id = $2 \
         ORDER BY t.seq",
    )
    .bind(team_id)
    .bind(channel_id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let from: Option<String> = row.try_get("from_status")?;
            Ok(ThreadEvent {
                transition_id: row.try_get("transition_id")?,
                thread_id: row.try_get("thread_id")?,
                team_id: row.try_get("team_id")?,
                channel_id: row.try_get("channel_id")?,
                root_ts: row.try_get("root_ts")?,
                from_status: from
                    .map(|s| {
                        s.parse()
                            .map_err(|e| StoreError::Query(format!("transitions.from_status: {e}")))
                    })
                    .transpose()?,
                to_status: status_column(row, "to_status")?,
                cause: row.try_get("cause")?,
                trigger_ts: row.try_get("trigger_ts")?,
                trigger_event_id: row.try_get("trigger_event_id")?,
                trigger_fact: row.try_get("trigger_fact")?,
                author_kind: row.try_get("author_kind")?,
                reaction: row.try_get("reaction")?,
                event_time_ms: row.try_get("event_time_ms")?,
            })
        })
        .collect()
}

/// Marks a transition as acknowledged by Kafka.
pub(crate) async fn mark_published(pool: &PgPool, transition_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE transitions SET published_at = now() \
         WHERE transition_id = $1 AND published_at IS NULL",
    )
    .bind(transition_id)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ts_micros;

    #[test]
    fn slack_ts_to_micros() {
        assert_eq!(ts_micros("1700000000.000100"), Some(1_700_000_000_000_100));
        assert_eq!(ts_micros("1700000000.1"), Some(1_700_000_000_100_000));
        assert_eq!(ts_micros("1700000000"), Some(1_700_000_000_000_000));
        assert_eq!(ts_micros("1700000000.1234567"), Some(1_700_000_000_123_456));
        // Numerically, not as strings of different lengths.
        assert!(ts_micros("999999999.9") < ts_micros("1000000000.000001"));
        for bad in ["", ".5", "abc", "1.2.3", "-1.0", "17e9"] {
            assert_eq!(ts_micros(bad), None, "{bad}");
        }
    }
}
