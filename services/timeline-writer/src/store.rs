//! The SQL: writing an entry and keeping its message's posted entry up to date, in
//! one transaction per event.

use slackline_store::StoreError;
use sqlx::{PgPool, Postgres, Transaction};

use crate::entry::{fold_edits, EditRow, Entry, DELETED, EDITED, POSTED};

/// Whether an entry was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The fact was not in the timeline yet; its row is written.
    New,
    /// The fact was already there (a replay, a Slack retry, a second event id for
    /// the same post): nothing changed.
    Duplicate,
}

const INSERT: &str = "INSERT INTO entries (team_id, channel_id, ts, fact, kind, thread_ts, \
     event_id, event_time_ms, author_id, author_kind, author_name, mode, degraded_reason, \
     archive_key, text, reaction, files, edited_ts, original_text) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     CASE WHEN $5 = 'posted' THEN $15 END) \
     ON CONFLICT (team_id, channel_id, ts, fact) DO NOTHING";

/// Writes `entry` unless its fact is already in the timeline; for a post, an edit or
/// a delete, then recomputes the message's posted entry (current text, history,
/// tombstone) from the facts stored for the message. Everything in one transaction.
pub(crate) async fn write(pool: &PgPool, entry: &Entry) -> Result<Written, StoreError> {
    let mut tx = pool.begin().await?;
    let touches_posted = entry.touches_posted();
    if touches_posted {
        // One message's post, edits and delete are applied one at a time even if two
        // consumers hold its channel for a moment (a rebalance): each sees the
        // others' committed rows.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "timeline/{}/{}/{}",
                entry.team_id, entry.channel_id, entry.ts
            ))
            .execute(&mut *tx)
            .await?;
    }
    let inserted = sqlx::query(INSERT)
        .bind(&entry.team_id)
        .bind(&entry.channel_id)
        .bind(&entry.ts)
        .bind(&entry.fact)
        .bind(entry.kind)
        .bind(&entry.thread_ts)
        .bind(&entry.event_id)
        .bind(entry.event_time_ms)
        .bind(&entry.author_id)
        .bind(entry.author_kind)
        .bind(&entry.author_name)
        .bind(entry.mode)
        .bind(&entry.degraded_reason)
        .bind(&entry.archive_key)
        .bind(&entry.text)
        .bind(&entry.reaction)
        .bind(&entry.files)
        .bind(&entry.edited_ts)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !inserted {
        // The transaction that wrote the fact also applied it.
        tx.rollback().await?;
        return Ok(Written::Duplicate);
    }
    if touches_posted {
        refresh_posted(&mut tx, &entry.team_id, &entry.channel_id, &entry.ts).await?;
    }
    tx.commit().await?;
    Ok(Written::New)
}

/// Sets the posted entry of message (team, channel, ts), if there is one, to what its
/// stored edits and delete make of it.
async fn refresh_posted(
    tx: &mut Transaction<'static, Postgres>,
    team_id: &str,
    channel_id: &str,
    ts: &str,
) -> Result<(), StoreError> {
    let original: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT original_text FROM entries \
         WHERE team_id = $1 AND channel_id = $2 AND ts = $3 AND fact = $4 FOR UPDATE",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(ts)
    .bind(POSTED)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((original,)) = original else {
        // Not posted yet: the edits and the delete wait in their own rows and are
        // applied when the post arrives.
        return Ok(());
    };
    let edits: Vec<EditRow> = sqlx::query_as(
        "SELECT fact, edited_ts, event_time_ms, text FROM entries \
         WHERE team_id = $1 AND channel_id = $2 AND ts = $3 AND kind = $4",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(ts)
    .bind(EDITED)
    .fetch_all(&mut **tx)
    .await?;
    let view = fold_edits(original.as_deref(), edits);
    sqlx::query(
        "UPDATE entries SET text = $5, history = $6, applied_edits = $7, \
         deleted = EXISTS (SELECT 1 FROM entries d WHERE d.team_id = $1 AND d.channel_id = $2 \
                           AND d.ts = $3 AND d.kind = $8) \
         WHERE team_id = $1 AND channel_id = $2 AND ts = $3 AND fact = $4",
    )
    .bind(team_id)
    .bind(channel_id)
    .bind(ts)
    .bind(POSTED)
    .bind(&view.text)
    .bind(&view.history)
    .bind(&view.applied_edits)
    .bind(DELETED)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
