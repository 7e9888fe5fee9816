//! The `sent` table: one row per (target, fact) claimed or sent.

use slackline_store::StoreError;
use sqlx::PgPool;

use crate::notification::FactKey;

/// The state of a (target, fact) row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Claimed: a send started and was not recorded as finished.
    Sending,
    /// Delivered.
    Sent,
}

/// Access to `sent`.
#[derive(Debug, Clone)]
pub struct SentStore {
    pool: PgPool,
}

impl SentStore {
    /// On `pool` (whose `search_path` is the notifier's schema).
    pub fn new(pool: PgPool) -> Self {
        SentStore { pool }
    }

    /// The row's state, if there is a row.
    pub async fn state(&self, target: &str, key: &FactKey) -> Result<Option<RowState>, StoreError> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM sent \
             WHERE target = $1 AND team_id = $2 AND channel_id = $3 AND ts = $4 AND fact = $5",
        )
        .bind(target)
        .bind(&key.team_id)
        .bind(&key.channel_id)
        .bind(&key.ts)
        .bind(&key.fact)
        .fetch_optional(&self.pool)
        .await?;
        Ok(state.map(|s| {
            if s == "sent" {
                RowState::Sent
            } else {
                RowState::Sending
            }
        }))
    }

    /// Inserts a `sending` claim; false when a row was there already.
    pub async fn claim(
        &self,
        target: &str,
        key: &FactKey,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO sent (target, team_id, channel_id, ts, fact, event_id, state) \
             VALUES ($1, $2, $3, $4, $5, $6, 'sending') ON CONFLICT DO NOTHING",
        )
        .bind(target)
        .bind(&key.team_id)
        .bind(&key.channel_id)
        .bind(&key.ts)
        .bind(&key.fact)
        .bind(event_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Takes over a `sending` claim this process knows was not delivered.
    pub async fn reclaim(
        &self,
        target: &str,
        key: &FactKey,
        event_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sent SET event_id = $6, claimed_at = now() \
             WHERE target = $1 AND team_id = $2 AND channel_id = $3 AND ts = $4 AND fact = $5 \
             AND state = 'sending'",
        )
        .bind(target)
        .bind(&key.team_id)
        .bind(&key.channel_id)
        .bind(&key.ts)
        .bind(&key.fact)
        .bind(event_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the delivery.
    pub async fn mark_sent(&self, target: &str, key: &FactKey) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sent SET state = 'sent', sent_at = now() \
             WHERE target = $1 AND team_id = $2 AND channel_id = $3 AND ts = $4 AND fact = $5",
        )
        .bind(target)
        .bind(&key.team_id)
        .bind(&key.channel_id)
        .bind(&key.ts)
        .bind(&key.fact)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops a claim whose send was not delivered, so any process may send again.
    pub async fn release(&self, target: &str, key: &FactKey) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM sent \
             WHERE target = $1 AND team_id = $2 AND channel_id = $3 AND ts = $4 AND fact = $5 \
             AND state = 'sending'",
        )
        .bind(target)
        .bind(&key.team_id)
        .bind(&key.channel_id)
        .bind(&key.ts)
        .bind(&key.fact)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
