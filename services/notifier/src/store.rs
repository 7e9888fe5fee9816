//! The `sent` table: one row per (target, fact) claimed or sent.
//!
//! Every change of a row after its insert is conditional on the row's `claim_token`
//! (and state), so a handler call only ever moves on a claim it holds: two consumers
//! of the same record (a rebalance overlap, a zombie member) cannot both send.

use slackline_store::StoreError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::notification::FactKey;

/// The state of a (target, fact) row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// Claimed; the request has not started.
    Claimed,
    /// The request is about to start or under way, or its process died during it.
    Sending,
    /// Delivered.
    Sent,
    /// May or may not have been delivered; never sent again.
    Ambiguous,
}

impl RowState {
    fn parse(state: &str) -> Result<Self, StoreError> {
        match state {
            "claimed" => Ok(RowState::Claimed),
            "sending" => Ok(RowState::Sending),
            "sent" => Ok(RowState::Sent),
            "ambiguous" => Ok(RowState::Ambiguous),
            other => Err(StoreError::Query(format!("unknown sent.state {other:?}"))),
        }
    }
}

/// A row of `sent`: its state and the token of the claim that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The state.
    pub state: RowState,
    /// The token written by the claim (or takeover) that holds the row.
    pub token: Uuid,
}

/// Access to `sent`.
#[derive(Debug, Clone)]
pub struct SentStore {
    pool: PgPool,
}

const WHERE_KEY: &str =
    "WHERE target = $1 AND team_id = $2 AND channel_id = $3 AND ts = $4 AND fact = $5";

impl SentStore {
    /// On `pool` (whose `search_path` is the notifier's schema).
    pub fn new(pool: PgPool) -> Self {
        SentStore { pool }
    }

    fn keyed<'q>(
        sql: &'q str,
        target: &'q str,
        key: &'q FactKey,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql)
            .bind(target)
            .bind(&key.team_id)
            .bind(&key.channel_id)
            .bind(&key.ts)
            .bind(&key.fact)
    }

    /// The row, if there is one.
    pub async fn row(&self, target: &str, key: &FactKey) -> Result<Option<Row>, StoreError> {
        let sql = format!("SELECT state, claim_token::text FROM sent {WHERE_KEY}");
        let row: Option<(String, String)> = sqlx::query_as(&sql)
            .bind(target)
            .bind(&key.team_id)
            .bind(&key.channel_id)
            .bind(&key.ts)
            .bind(&key.fact)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|(state, token)| {
            Ok(Row {
                state: RowState::parse(&state)?,
                token: Uuid::parse_str(&token)
                    .map_err(|e| StoreError::Query(format!("sent.claim_token: {e}")))?,
            })
        })
        .transpose()
    }

    /// Inserts a `claimed` row with `token`; false when a row was there already
    /// (whoever wrote it: read it to find out).
    pub async fn claim(
        &self,
        target: &str,
        key: &FactKey,
        event_id: &str,
        token: Uuid,
    ) -> Result<bool, StoreError> {
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO sent (target, team_id, channel_id, ts, fact, event_id, claim_token, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::uuid, 'claimed') \
             ON CONFLICT DO NOTHING RETURNING claim_token::text",
        )
        .bind(target)
        .bind(&key.team_id)
        .bind(&key.channel_id)
        .bind(&key.ts)
        .bind(&key.fact)
        .bind(event_id)
        .bind(token.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(inserted.is_some())
    }

    /// Replaces the token of a `claimed` row held by `old` with `new` (a claim whose
    /// request never started); false when the row is no longer `claimed` by `old`.
    pub async fn take_over(
        &self,
        target: &str,
        key: &FactKey,
        old: Uuid,
        new: Uuid,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE sent SET claim_token = $7::uuid, event_id = $8, claimed_at = now() \
             {WHERE_KEY} AND claim_token = $6::uuid AND state = 'claimed'"
        );
        let done = Self::keyed(&sql, target, key)
            .bind(old.to_string())
            .bind(new.to_string())
            .bind(event_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done == 1)
    }

    /// Moves the claim of `token` to `sending`, just before the request starts;
    /// false when `token` no longer holds a `claimed` (or `sending`) row.
    pub async fn begin_send(
        &self,
        target: &str,
        key: &FactKey,
        token: Uuid,
    ) -> Result<bool, StoreError> {
        self.update_held(
            "state = 'sending'",
            "('claimed', 'sending')",
            target,
            key,
            token,
        )
        .await
    }

    /// Records the delivery of the send of `token` (also over `ambiguous`, set by
    /// another consumer that found the send under way); false when `token` holds no
    /// such row.
    pub async fn mark_sent(
        &self,
        target: &str,
        key: &FactKey,
        token: Uuid,
    ) -> Result<bool, StoreError> {
        self.update_held(
            "state = 'sent', sent_at = now()",
            "('sending', 'ambiguous')",
            target,
            key,
            token,
        )
        .await
    }

    /// Marks the `sending` row of `token` `ambiguous`; false when it is not (it was
    /// sent meanwhile, or deleted).
    pub async fn mark_ambiguous(
        &self,
        target: &str,
        key: &FactKey,
        token: Uuid,
    ) -> Result<bool, StoreError> {
        self.update_held(
            "state = 'ambiguous'",
            "('sending', 'ambiguous')",
            target,
            key,
            token,
        )
        .await
    }

    async fn update_held(
        &self,
        set: &str,
        states: &str,
        target: &str,
        key: &FactKey,
        token: Uuid,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE sent SET {set} {WHERE_KEY} AND claim_token = $6::uuid AND state IN {states}"
        );
        let done = Self::keyed(&sql, target, key)
            .bind(token.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done == 1)
    }

    /// Drops the claim of `token` whose send was not delivered, so any process may
    /// send again.
    pub async fn release(
        &self,
        target: &str,
        key: &FactKey,
        token: Uuid,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "DELETE FROM sent {WHERE_KEY} AND claim_token = $6::uuid \
             AND state IN ('claimed', 'sending')"
        );
        Self::keyed(&sql, target, key)
            .bind(token.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
