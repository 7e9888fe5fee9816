-- Status decisions in Slack's order (issue 12, item 1): a thread keeps the Slack time
-- of the fact that decided its current status, and a fact older than that (a late
-- Slack retry, a DLQ redrive, a replay out of order) sets no status.

ALTER TABLE threads
  ADD COLUMN status_ts text,                        -- Slack time ("seconds.micros") of the deciding fact
  ADD COLUMN status_micros bigint NOT NULL DEFAULT 0, -- the same in microseconds
  ADD COLUMN status_key text NOT NULL DEFAULT '';     -- tie-break within one microsecond: "0:<fact>" for a message, "1:<fact>" for a reaction

-- Threads from before this migration: the newest of their last message and their
-- last transition's event time decided them (an approximation; '' sorts first).
UPDATE threads t SET status_micros = greatest(
    coalesce(t.last_micros, 0),
    coalesce((SELECT max(x.event_time_ms) * 1000 FROM transitions x WHERE x.thread_id = t.thread_id), 0));
UPDATE threads SET status_ts =
    (status_micros / 1000000)::text || '.' || lpad((status_micros % 1000000)::text, 6, '0');

-- Every message fact seen (also those that belong to no thread yet: a bot's message,
-- a reply in a manual channel before its ticket, a reply delivered before its root),
-- so that a thread opened later adopts them whatever the delivery order.
CREATE TABLE seen_messages (
  team_id text NOT NULL, channel_id text NOT NULL, ts text NOT NULL, fact text NOT NULL,
  thread_ts text,                        -- the Slack thread's root for a reply
  author_id text, author_kind text NOT NULL,
  role text NOT NULL,                    -- customer | agent | silent (changes no status)
  event_id text NOT NULL, event_time_ms bigint,
  PRIMARY KEY (team_id, channel_id, ts, fact)
);
CREATE INDEX seen_messages_by_thread_ts ON seen_messages (team_id, channel_id, thread_ts);

-- Every reaction fact seen (bots' excepted), with the status it commands if any, so
-- that a command on a message that joins a thread later still applies.
CREATE TABLE seen_reactions (
  team_id text NOT NULL, channel_id text NOT NULL, ts text NOT NULL, fact text NOT NULL,
  name text NOT NULL, author_kind text NOT NULL,
  command_status text,                   -- the status it sets, NULL when it commands nothing
  order_micros bigint NOT NULL,          -- its Slack time in microseconds
  event_id text NOT NULL, event_time_ms bigint,
  PRIMARY KEY (team_id, channel_id, ts, fact)
);
