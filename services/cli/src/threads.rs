//! `slackline threads` and `slackline thread <id>`: support threads and their
//! timelines, read from PostgreSQL. This is the one place that reads two services'
//! tables together (`thread_state.threads` and `thread_messages` for the thread and
//! its messages, `timeline.entries` for what happened to them); the services
//! themselves never read each other's schemas. The schemas are named through the
//! owning crates' constants ([`slackline_thread_state::SCHEMA`],
//! [`slackline_timeline_writer::SCHEMA`]), next to their migrations.

use std::io::Write;

use serde_json::json;
use slackline_store::sqlx::{self, PgPool, Row};
use slackline_store::StoreError;

/// `slackline threads`' flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only threads with this status.
    #[arg(long)]
    pub status: Option<Status>,
    /// Only threads of this channel.
    #[arg(long)]
    pub channel: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
    /// The database to read.
    #[command(flatten)]
    pub database: crate::common::DatabaseArgs,
}

/// `slackline thread`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The thread id (`<team>-<channel>-<root ts>`, as `threads` prints it).
    pub id: String,
    /// Print JSON lines: the thread, then one line per timeline entry.
    #[arg(long)]
    pub json: bool,
    /// The database to read.
    #[command(flatten)]
    pub database: crate::common::DatabaseArgs,
}

/// A thread's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Status {
    /// `todo`.
    Todo,
    /// `waiting`.
    Waiting,
    /// `done`.
    Done,
}

impl Status {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Todo => "todo",
            Status::Waiting => "waiting",
            Status::Done => "done",
        }
    }
}

/// `slackline threads`: prints the threads (a table, or JSON lines).
///
/// # Errors
///
/// No database, PostgreSQL fails, or stdout is closed.
pub async fn run_list(args: ListArgs) -> anyhow::Result<()> {
    let pool = args.database.pool().await?;
    let list = list_threads(
        &pool,
        args.status.map(Status::as_str),
        args.channel.as_deref(),
        args.limit,
    )
    .await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        for t in &list {
            writeln!(out, "{}", thread_json(t))?;
        }
    } else {
        print_threads(&mut out, &list)?;
    }
    out.flush()?;
    Ok(())
}

/// `slackline thread <id>`: prints the thread, its timeline and its replies.
///
/// # Errors
///
/// No such thread, no database, PostgreSQL fails, or stdout is closed.
pub async fn run_show(args: ShowArgs) -> anyhow::Result<()> {
    let pool = args.database.pool().await?;
    let Some((thread, entries)) = thread(&pool, &args.id).await? else {
        anyhow::bail!("no thread {}", args.id);
    };
    let thread_replies = crate::replies::thread_replies(&pool, &args.id).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.json {
        writeln!(out, "{}", thread_json(&thread))?;
        for e in &entries {
            writeln!(out, "{}", entry_json(&thread.thread_id, e))?;
        }
        for r in &thread_replies {
            writeln!(out, "{}", crate::replies::reply_json(&thread.thread_id, r))?;
        }
    } else {
        print_thread(&mut out, &thread, &entries)?;
        crate::replies::print_replies(&mut out, &thread_replies)?;
    }
    out.flush()?;
    Ok(())
}

/// One support thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadRow {
    /// `<team>-<channel>-<root ts>`.
    pub thread_id: String,
    /// The installing workspace.
    pub team_id: String,
    /// The channel.
    pub channel_id: String,
    /// The root message's ts.
    pub root_ts: String,
    /// `todo`, `waiting` or `done`.
    pub status: String,
    /// How its messages were grouped.
    pub grouping: String,
    /// The latest message's ts.
    pub last_ts: String,
    /// When thread-state last changed it (RFC 3339).
    pub updated_at: String,
}

/// One timeline entry of a thread.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryRow {
    /// `posted`, `edited`, `deleted`, `reaction_added`, ...
    pub kind: String,
    /// The message the fact is about.
    pub ts: String,
    /// The fact key.
    pub fact: String,
    /// Who.
    pub author_id: Option<String>,
    /// `agent`, `customer`, `bot`, `unknown`.
    pub author_kind: Option<String>,
    /// Display name, when known.
    pub author_name: Option<String>,
    /// `full` or `degraded`.
    pub mode: String,
    /// Why it is degraded.
    pub degraded_reason: Option<String>,
    /// The raw request in the archive.
    pub archive_key: String,
    /// The text (for posted entries: the current text).
    pub text: Option<String>,
    /// The reaction's name.
    pub reaction: Option<String>,
    /// Earlier versions of a posted message.
    pub history: serde_json::Value,
    /// Files.
    pub files: serde_json::Value,
    /// Whether the posted message was deleted.
    pub deleted: bool,
    /// When it happened (ms since the epoch), when known.
    pub event_time_ms: Option<i64>,
}

const THREAD_COLUMNS: &str = "thread_id, team_id, channel_id, root_ts, status, grouping, \
     last_ts, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated_at";

fn thread_from_row(row: &sqlx::postgres::PgRow) -> Result<ThreadRow, sqlx::Error> {
    Ok(ThreadRow {
        thread_id: row.try_get("thread_id")?,
        team_id: row.try_get("team_id")?,
        channel_id: row.try_get("channel_id")?,
        root_ts: row.try_get("root_ts")?,
        status: row.try_get("status")?,
        grouping: row.try_get("grouping")?,
        last_ts: row.try_get("last_ts")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Threads, most recently updated first, optionally only those with `status` or in
/// `channel`.
///
/// # Errors
///
/// When PostgreSQL fails (or thread-state has not created its tables yet).
pub async fn list_threads(
    pool: &PgPool,
    status: Option<&str>,
    channel: Option<&str>,
    limit: i64,
) -> Result<Vec<ThreadRow>, StoreError> {
    let threads = slackline_thread_state::SCHEMA;
    let sql = format!(
        "SELECT {THREAD_COLUMNS} FROM {threads}.threads \
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR channel_id = $2) \
         ORDER BY updated_at DESC, thread_id LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(status)
        .bind(channel)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(thread_from_row).collect::<Result<_, _>>()?)
}

/// A thread and its timeline (every entry about one of its messages, in the order
/// things happened), or `None` when there is no such thread.
///
/// # Errors
///
/// When PostgreSQL fails.
pub async fn thread(
    pool: &PgPool,
    thread_id: &str,
) -> Result<Option<(ThreadRow, Vec<EntryRow>)>, StoreError> {
    let threads = slackline_thread_state::SCHEMA;
    let timeline = slackline_timeline_writer::SCHEMA;
    let sql = format!("SELECT {THREAD_COLUMNS} FROM {threads}.threads WHERE thread_id = $1");
    let Some(row) = sqlx::query(&sql)
        .bind(thread_id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let thread = thread_from_row(&row)?;
    let sql = format!(
        "SELECT e.kind, e.ts, e.fact, e.author_id, e.author_kind, e.author_name, e.mode, \
                e.degraded_reason, e.archive_key, e.text, e.reaction, e.history, e.files, \
                e.deleted, e.event_time_ms \
         FROM {timeline}.entries e \
         WHERE e.team_id = $1 AND e.channel_id = $2 AND e.ts IN ( \
             SELECT ts FROM {threads}.thread_messages WHERE thread_id = $3 \
             UNION SELECT $4) \
         ORDER BY COALESCE(e.event_time_ms, (NULLIF(e.ts, '')::numeric * 1000)::bigint), \
                  NULLIF(e.ts, '')::numeric, e.fact"
    );
    let rows = sqlx::query(&sql)
        .bind(&thread.team_id)
        .bind(&thread.channel_id)
        .bind(&thread.thread_id)
        .bind(&thread.root_ts)
        .fetch_all(pool)
        .await?;
    let entries = rows
        .iter()
        .map(|row| {
            Ok(EntryRow {
                kind: row.try_get("kind")?,
                ts: row.try_get("ts")?,
                fact: row.try_get("fact")?,
                author_id: row.try_get("author_id")?,
                author_kind: row.try_get("author_kind")?,
                author_name: row.try_get("author_name")?,
                mode: row.try_get("mode")?,
                degraded_reason: row.try_get("degraded_reason")?,
                archive_key: row.try_get("archive_key")?,
                text: row.try_get("text")?,
                reaction: row.try_get("reaction")?,
                history: row.try_get("history")?,
                files: row.try_get("files")?,
                deleted: row.try_get("deleted")?,
                event_time_ms: row.try_get("event_time_ms")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some((thread, entries)))
}

/// The JSON line of a thread.
pub fn thread_json(thread: &ThreadRow) -> serde_json::Value {
    json!({
        "thread_id": thread.thread_id,
        "team_id": thread.team_id,
        "channel_id": thread.channel_id,
        "root_ts": thread.root_ts,
        "status": thread.status,
        "grouping": thread.grouping,
        "last_ts": thread.last_ts,
        "updated_at": thread.updated_at,
    })
}

/// The JSON line of a timeline entry of `thread_id`.
pub fn entry_json(thread_id: &str, entry: &EntryRow) -> serde_json::Value {
    json!({
        "thread_id": thread_id,
        "kind": entry.kind,
        "ts": entry.ts,
        "fact": entry.fact,
        "author_id": entry.author_id,
        "author_kind": entry.author_kind,
        "author_name": entry.author_name,
        "mode": entry.mode,
        "degraded_reason": entry.degraded_reason,
        "archive_key": entry.archive_key,
        "text": entry.text,
        "reaction": entry.reaction,
        "history": entry.history,
        "files": entry.files,
        "deleted": entry.deleted,
        "event_time_ms": entry.event_time_ms,
    })
}

/// Prints threads as a table.
///
/// # Errors
///
/// When writing fails.
pub fn print_threads(out: &mut impl Write, threads: &[ThreadRow]) -> std::io::Result<()> {
    let line = |cells: [&str; 6]| {
        format!(
            "{:<40} {:<12} {:<8} {:<13} {:<19} {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    writeln!(
        out,
        "{}",
        line(["THREAD", "CHANNEL", "STATUS", "GROUPING", "ROOT TS", "LAST TS"])
    )?;
    for t in threads {
        writeln!(
            out,
            "{}",
            line([
                &t.thread_id,
                &t.channel_id,
                &t.status,
                &t.grouping,
                &t.root_ts,
                &t.last_ts,
            ])
        )?;
    }
    writeln!(out, "{} thread(s)", threads.len())
}

fn when(entry: &EntryRow) -> String {
    let ms = entry.event_time_ms.or_else(|| {
        entry
            .ts
            .parse::<f64>()
            .ok()
            .map(|secs| (secs * 1000.0) as i64)
    });
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
}

/// Prints a thread and its timeline for a person.
///
/// # Errors
///
/// When writing fails.
pub fn print_thread(
    out: &mut impl Write,
    thread: &ThreadRow,
    entries: &[EntryRow],
) -> std::io::Result<()> {
    writeln!(
        out,
        "thread {}  channel {}  status {}  ({}, root {})",
        thread.thread_id, thread.channel_id, thread.status, thread.grouping, thread.root_ts
    )?;
    for e in entries {
        let who = match (&e.author_kind, &e.author_name, &e.author_id) {
            (kind, Some(name), _) => format!("{} {name}", kind.as_deref().unwrap_or("unknown")),
            (kind, None, Some(id)) => format!("{} {id}", kind.as_deref().unwrap_or("unknown")),
            (kind, None, None) => kind.as_deref().unwrap_or("unknown").to_owned(),
        };
        let mut detail = match (&e.reaction, &e.text) {
            (Some(reaction), _) => format!(":{reaction}:"),
            (None, Some(text)) => text.replace('\n', " ⏎ "),
            (None, None) => String::new(),
        };
        if e.deleted {
            detail.push_str("  [deleted]");
        }
        if let Some(n) = e.history.as_array().map(Vec::len).filter(|n| *n > 0) {
            detail.push_str(&format!("  [edited {n}x]"));
        }
        if let Some(files) = e.files.as_array().filter(|f| !f.is_empty()) {
            let names: Vec<&str> = files
                .iter()
                .filter_map(|f| f.get("name").and_then(|n| n.as_str()))
                .collect();
            detail.push_str(&format!("  [files: {}]", names.join(", ")));
        }
        if e.mode == "degraded" {
            detail.push_str(&format!(
                "  [degraded: {}; archive {}]",
                e.degraded_reason.as_deref().unwrap_or("?"),
                e.archive_key
            ));
        }
        writeln!(out, "  {}  {:<16} {:<24} {detail}", when(e), e.kind, who)?;
    }
    writeln!(
        out,
        "{} entr{}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, text: Option<&str>) -> EntryRow {
        EntryRow {
            kind: kind.to_owned(),
            ts: "1764000000.000100".to_owned(),
            fact: kind.to_owned(),
            author_id: Some("U1".to_owned()),
            author_kind: Some("customer".to_owned()),
            author_name: None,
            mode: "full".to_owned(),
            degraded_reason: None,
            archive_key: "raw/k.json".to_owned(),
            text: text.map(str::to_owned),
            reaction: None,
            history: serde_json::json!([]),
            files: serde_json::json!([]),
            deleted: false,
            event_time_ms: None,
        }
    }

    #[test]
    fn a_thread_prints_what_happened() {
        let thread = ThreadRow {
            thread_id: "T1-C1-1764000000.000100".into(),
            team_id: "T1".into(),
            channel_id: "C1".into(),
            root_ts: "1764000000.000100".into(),
            status: "todo".into(),
            grouping: "slack-thread".into(),
            last_ts: "1764000000.000100".into(),
            updated_at: "2026-11-25T00:00:00.000Z".into(),
        };
        let mut posted = entry("posted", Some("line one\nline two"));
        posted.deleted = true;
        posted.history = serde_json::json!([{"text": "old"}]);
        posted.files = serde_json::json!([{"name": "a.log"}]);
        let mut degraded = entry("degraded", Some("?"));
        degraded.mode = "degraded".into();
        degraded.degraded_reason = Some("unknown message subtype".into());
        degraded.author_kind = None;
        degraded.author_id = None;
        let mut out = Vec::new();
        print_thread(&mut out, &thread, &[posted, degraded]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("thread T1-C1-1764000000.000100  channel C1  status todo"),
            "{text}"
        );
        assert!(text.contains("2025-11-24 16:00:00  posted"), "{text}");
        assert!(
            text.contains("line one ⏎ line two  [deleted]  [edited 1x]  [files: a.log]"),
            "{text}"
        );
        assert!(text.contains("unknown"), "{text}");
        assert!(
            text.contains("[degraded: unknown message subtype; archive raw/k.json]"),
            "{text}"
        );
        assert!(text.ends_with("2 entries\n"), "{text}");

        let mut out = Vec::new();
        print_threads(&mut out, &[thread]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
    }
}
