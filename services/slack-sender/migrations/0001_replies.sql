-- One row per reply (reply_id, the producer's idempotency key) the slack-sender has seen.
-- 'pending': not posted yet (never tried, or Slack refused it for now: 429, 5xx, no
--   connection; last_error says why). The runtime retries it.
-- 'sending': the chat.postMessage request is about to start or under way (or its
--   process died during it). Only the handler call holding claim_token moves it on.
-- 'sent': Slack posted it; ts is the message's ts in the channel.
-- 'failed': Slack refused it for good (channel_not_found, not_in_channel, ...; last_error
--   holds Slack's error); the record went to slack-sender.dlq. A redrive tries again.
-- 'ambiguous': the request got no answer (or an answer saying it may have been posted);
--   it may or may not be in Slack and is never posted again automatically (see the
--   README's runbook). The record went to slack-sender.dlq.
-- At most one Slack message per reply_id.
CREATE TABLE replies (
  reply_id text PRIMARY KEY,
  thread_id text NOT NULL,
  team_id text NOT NULL,
  channel_id text NOT NULL,
  thread_ts text NOT NULL,
  agent_id text NOT NULL,
  agent_name text NOT NULL,
  text text NOT NULL,
  state text NOT NULL CHECK (state IN ('pending','sending','sent','failed','ambiguous')),
  claim_token uuid,
  ts text,
  last_error text,
  attempts integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL,
  first_seen_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  sent_at timestamptz
);
-- Every message we posted, by its Slack key: (team, channel, ts).
CREATE UNIQUE INDEX replies_posted ON replies (team_id, channel_id, ts) WHERE ts IS NOT NULL;
CREATE INDEX replies_thread ON replies (thread_id, created_at);
