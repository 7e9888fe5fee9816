-- One row per (target, message fact) the notifier has claimed or sent.
-- 'claimed': a claim by the handler call holding claim_token; no request started yet.
-- 'sending': the request is about to start or under way (or its process died during it).
-- 'sent': delivered.
-- 'ambiguous': a send that may or may not have been delivered; never sent again, the
--   event went to notifier.dlq. An operator deletes the row to have a redrive send it.
-- claim_token: a random token per claim attempt; only the handler call that wrote it may
--   move the row on (a 'claimed' row may be taken over by writing a new token).
-- A fact is notified at most once per target (guarantee 2).
CREATE TABLE sent (
  target text NOT NULL, team_id text NOT NULL, channel_id text NOT NULL, ts text NOT NULL, fact text NOT NULL,
  event_id text NOT NULL,
  claim_token uuid NOT NULL,
  state text NOT NULL CHECK (state IN ('claimed','sending','sent','ambiguous')),
  claimed_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz,
  PRIMARY KEY (target, team_id, channel_id, ts, fact)
);
