//! The `replies` table: one row per reply id, moved on only by the handler call
//! holding its `claim_token` once it is `sending` (see [`crate::handler`]).

use slackline_events::Reply;
use slackline_store::StoreError;
use sqlx::PgPool;
use uuid::Uuid;

/// The state of a reply's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyState {
    /// Not posted yet; may be tried.
    Pending,
    /// A request is about to start or under way (or its process died during it).
    Sending,
    /// Posted.
    Sent,
    /// Refused by Slack for good; a redrive tries again.
    Failed,
    /// May or may not have been posted; never posted again automatically.
    Ambiguous,
}

impl ReplyState {
    fn parse(state: &str) -> Result<Self, StoreError> {
        match state {
            "pending" => Ok(ReplyState::Pending),
            "sending" => Ok(ReplyState::Sending),
            "sent" => Ok(ReplyState::Sent),
            "failed" => Ok(ReplyState::Failed),
            "ambiguous" => Ok(ReplyState::Ambiguous),
            other => Err(StoreError::Query(format!(
                "unknown replies.state {other:?}"
            ))),
        }
    }
}

/// A reply's row as the handler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Its state.
    pub state: ReplyState,
    /// The claim holding it (`sending`, and kept on `ambiguous`).
    pub token: Option<Uuid>,
    /// The message's ts once posted.
    pub ts: Option<String>,
    /// The redrive that last claimed it (every one is in `reply_redrives`).
    pub redrive_id: Option<String>,
    /// How long ago its state last changed (by the database's clock).
    pub age: std::time::Duration,
}

/// `state, claim_token, ts, redrive_id, age in ms` as read.
type RawRow = (String, Option<String>, Option<String>, Option<String>, i64);

/// Access to `replies`.
#[derive(Debug, Clone)]
pub struct ReplyStore {
    pool: PgPool,
}

impl ReplyStore {
    /// On `pool` (whose `search_path` is the sender's schema).
    pub fn new(pool: PgPool) -> Self {
        ReplyStore { pool }
    }

    /// Records `reply` as `pending` unless it is known already, and returns its row.
    pub async fn ensure(&self, reply: &Reply) -> Result<Row, StoreError> {
        sqlx::query(
            "INSERT INTO replies (reply_id, thread_id, team_id, channel_id, thread_ts, \
             agent_id, agent_name, text, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', to_timestamp($9::double precision / 1000)) \
             ON CONFLICT (reply_id) DO NOTHING",
        )
        .bind(&reply.reply_id)
        .bind(&reply.thread_id)
        .bind(&reply.team_id)
        .bind(&reply.channel_id)
        .bind(&reply.thread_ts)
        .bind(&reply.agent.id)
        .bind(&reply.agent.display_name)
        .bind(&reply.text)
        .bind(reply.created_at_ms as f64)
        .execute(&self.pool)
        .await?;
        self.row(&reply.reply_id).await?.ok_or_else(|| {
            StoreError::Query(format!(
                "reply {} vanished after its insert",
                reply.reply_id
            ))
        })
    }

    /// The row of `reply_id`, if any.
    pub async fn row(&self, reply_id: &str) -> Result<Option<Row>, StoreError> {
        let row: Option<RawRow> = sqlx::query_as(
            "SELECT state, claim_token::text, ts, redrive_id, \
             GREATEST(0, (EXTRACT(EPOCH FROM (now() - updated_at)) * 1000))::bigint \
             FROM replies WHERE reply_id = $1",
        )
        .bind(reply_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(state, token, ts, redrive_id, age_ms)| {
            Ok(Row {
                state: ReplyState::parse(&state)?,
                token: token
                    .map(|t| {
                        Uuid::parse_str(&t)
                            .map_err(|e| StoreError::Query(format!("replies.claim_token: {e}")))
                    })
                    .transpose()?,
                ts,
                redrive_id,
                age: std::time::Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)),
            })
        })
        .transpose()
    }

    /// Whether `redrive` claimed this reply before (`reply_redrives`).
    pub async fn redrive_tried(&self, reply_id: &str, redrive: &str) -> Result<bool, StoreError> {
        let tried: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM reply_redrives WHERE reply_id = $1 AND redrive_id = $2")
                .bind(reply_id)
                .bind(redrive)
                .fetch_optional(&self.pool)
                .await?;
        Ok(tried.is_some())
    }

    /// Claims a `pending` reply (or a `failed` one for a `redrive` that never claimed
    /// it: not in `reply_redrives`) for a send under `token`, just before the
    /// request, and records `redrive` in `reply_redrives` in the same statement; false
    /// when it is in another state (someone else claimed it) or the redrive was tried.
    pub async fn begin_send(
        &self,
        reply_id: &str,
        token: Uuid,
        redrive: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (claimed,): (i64,) = sqlx::query_as(
            "WITH claimed AS ( \
               UPDATE replies SET state = 'sending', claim_token = $2::uuid, \
               redrive_id = COALESCE($3, redrive_id), \
               attempts = attempts + 1, updated_at = now() \
               WHERE reply_id = $1 AND (state = 'pending' OR (state = 'failed' \
               AND $3::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM reply_redrives t \
               WHERE t.reply_id = $1 AND t.redrive_id = $3::text))) \
               RETURNING reply_id), \
             noted AS ( \
               INSERT INTO reply_redrives (reply_id, redrive_id) \
               SELECT reply_id, $3::text FROM claimed WHERE $3::text IS NOT NULL \
               ON CONFLICT DO NOTHING) \
             SELECT count(*) FROM claimed",
        )
        .bind(reply_id)
        .bind(token.to_string())
        .bind(redrive)
        .fetch_one(&self.pool)
        .await?;
        Ok(claimed == 1)
    }

    /// Records the post of `token`'s send with Slack's `ts` (also over `ambiguous`,
    /// set by a consumer that found the send under way, and over `pending` still
    /// holding `token`, which only the runbook's forced retry of an `ambiguous` reply
    /// leaves: a redrive then finds it `sent` and posts nothing); false when `token`
    /// holds no such row.
    pub async fn mark_sent(
        &self,
        reply_id: &str,
        token: Uuid,
        ts: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE replies SET state = 'sent', ts = $3, sent_at = now(), updated_at = now(), \
             last_error = NULL \
             WHERE reply_id = $1 AND claim_token = $2::uuid \
             AND state IN ('sending', 'ambiguous', 'pending')",
        )
        .bind(reply_id)
        .bind(token.to_string())
        .bind(ts)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Records a post found in the thread (`conversations.replies`) for a row still
    /// `sending` or `ambiguous` under `token` (none for a row without one); false when
    /// it moved on meanwhile.
    pub async fn mark_reconciled(
        &self,
        reply_id: &str,
        token: Option<Uuid>,
        ts: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE replies SET state = 'sent', ts = $3, sent_at = now(), updated_at = now(), \
             last_error = NULL \
             WHERE reply_id = $1 AND claim_token IS NOT DISTINCT FROM $2::uuid \
             AND state IN ('sending', 'ambiguous')",
        )
        .bind(reply_id)
        .bind(token.map(|t| t.to_string()))
        .bind(ts)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    async fn leave_sending(
        &self,
        reply_id: &str,
        token: Uuid,
        state: &str,
        error: &str,
        keep_token: bool,
    ) -> Result<bool, StoreError> {
        let token_set = if keep_token {
            ""
        } else {
            "claim_token = NULL, "
        };
        let sql = format!(
            "UPDATE replies SET state = $3, {token_set}last_error = $4, updated_at = now() \
             WHERE reply_id = $1 AND claim_token = $2::uuid AND state = 'sending'"
        );
        let done = sqlx::query(&sql)
            .bind(reply_id)
            .bind(token.to_string())
            .bind(state)
            .bind(error)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done == 1)
    }

    /// Back to `pending` after a send Slack certainly did not take.
    pub async fn release(
        &self,
        reply_id: &str,
        token: Uuid,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.leave_sending(reply_id, token, "pending", error, false)
            .await
    }

    /// `failed` with Slack's error.
    pub async fn mark_failed(
        &self,
        reply_id: &str,
        token: Uuid,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.leave_sending(reply_id, token, "failed", error, false)
            .await
    }

    /// `ambiguous`, keeping the token (its owner may still record the post).
    pub async fn mark_ambiguous(
        &self,
        reply_id: &str,
        token: Uuid,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.leave_sending(reply_id, token, "ambiguous", reason, true)
            .await
    }

    /// Records why a `pending` reply was not tried (a bad record, no token).
    pub async fn note_pending_error(&self, reply_id: &str, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE replies SET state = 'failed', last_error = $2, updated_at = now() \
             WHERE reply_id = $1 AND state IN ('pending', 'failed')",
        )
        .bind(reply_id)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
