-- One row per (target, message fact) the notifier has claimed or sent.
-- 'sending': claimed, the send may be under way (or the process died during it);
-- 'sent': delivered. A fact is notified at most once per target (guarantee 2).
CREATE TABLE sent (
  target text NOT NULL, team_id text NOT NULL, channel_id text NOT NULL, ts text NOT NULL, fact text NOT NULL,
  event_id text NOT NULL,
  state text NOT NULL CHECK (state IN ('sending','sent')),
  claimed_at timestamptz NOT NULL DEFAULT now(), sent_at timestamptz,
  PRIMARY KEY (target, team_id, channel_id, ts, fact)
);
