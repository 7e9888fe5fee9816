-- thread-state's tables (schema thread_state; search_path is set by the pool).
-- The `slackline threads` CLI reads `threads` and `thread_messages`.

CREATE TABLE threads (
  thread_id text PRIMARY KEY,            -- "<team_id>-<channel_id>-<root_ts>"
  team_id text NOT NULL, channel_id text NOT NULL, root_ts text NOT NULL,
  status text NOT NULL CHECK (status IN ('todo','waiting','done')),
  grouping text NOT NULL,                -- slack-thread | time-window | manual
  opened_by text,                        -- user id of the root's author, if any
  last_ts text NOT NULL,                 -- ts of the latest message in the thread
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  root_micros bigint,                    -- root_ts in microseconds (NULL if not a Slack ts)
  last_micros bigint,                    -- last_ts in microseconds: "most recently updated" by Slack time
  UNIQUE (team_id, channel_id, root_ts)
);
CREATE INDEX threads_open_by_channel ON threads (team_id, channel_id, last_micros)
  WHERE status <> 'done';

CREATE TABLE thread_messages (            -- which thread each message ts belongs to
  team_id text NOT NULL, channel_id text NOT NULL, ts text NOT NULL,
  thread_id text NOT NULL REFERENCES threads(thread_id),
  author_id text, author_kind text NOT NULL,
  ts_micros bigint,                      -- ts in microseconds, for the time window
  PRIMARY KEY (team_id, channel_id, ts)
);
CREATE INDEX thread_messages_by_author ON thread_messages (thread_id, author_id, ts_micros);

CREATE TABLE facts (                      -- one row per fact handled: the idempotency key
  team_id text NOT NULL, channel_id text NOT NULL, ts text NOT NULL, fact text NOT NULL,
  event_id text NOT NULL, thread_id text, handled_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (team_id, channel_id, ts, fact)
);

CREATE TABLE transitions (
  transition_id text PRIMARY KEY,         -- "<thread_id>/<trigger_ts>/<fact>" (deterministic)
  thread_id text NOT NULL REFERENCES threads(thread_id),
  from_status text, to_status text NOT NULL, cause text NOT NULL,
  trigger_ts text NOT NULL, trigger_event_id text NOT NULL, trigger_fact text NOT NULL,
  author_kind text, reaction text, event_time_ms bigint,
  at timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz,               -- NULL until Kafka acknowledged the thread event
  seq bigint GENERATED ALWAYS AS IDENTITY -- commit order, so unpublished ones go out in order
);
CREATE INDEX transitions_by_thread ON transitions (thread_id, seq);
CREATE INDEX transitions_unpublished ON transitions (seq) WHERE published_at IS NULL;
