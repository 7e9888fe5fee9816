-- The timeline: one row per fact about a message (guarantee 2). The primary key is
-- the message key plus the kind of change; `slackline thread <id>` reads this table.
CREATE TABLE entries (
  team_id text NOT NULL, channel_id text NOT NULL,
  ts text NOT NULL,               -- the message the fact is about ("" when the event had none)
  fact text NOT NULL,             -- MessageEvent::fact()
  kind text NOT NULL,             -- posted|edited|deleted|reaction_added|reaction_removed|member_joined|member_left|degraded
  thread_ts text,                 -- root ts when in a thread
  event_id text NOT NULL, event_time_ms bigint,
  author_id text, author_kind text, author_name text,
  mode text NOT NULL,             -- full|degraded
  degraded_reason text, archive_key text NOT NULL,
  text text,                      -- posted: the current text (after edits); edited: the new text;
                                  -- deleted: the text before the delete, when Slack sent it;
                                  -- otherwise whatever text the event had (rendered_text else text)
  reaction text,                  -- reaction name for reaction entries
  files jsonb NOT NULL DEFAULT '[]'::jsonb,   -- [{id,name,mimetype,size,url_private}]
  history jsonb NOT NULL DEFAULT '[]'::jsonb, -- posted entries: earlier versions, oldest first:
                                              -- [{"text": text before the edit, "edited_ts": that edit's ts}]
  deleted boolean NOT NULL DEFAULT false,     -- posted entries: tombstone (the row stays, text kept)
  written_at timestamptz NOT NULL DEFAULT now(),
  -- Edited entries: the edit's ts (Edited::edited_ts), which orders the edits.
  edited_ts text,
  -- Posted entries: the text as originally posted, from which text and history are
  -- recomputed whenever an edit or the post itself arrives.
  original_text text,
  -- Posted entries: the facts (`edited:<edited_ts>`) of the edits applied to text and
  -- history, in edited_ts order. Edits whose text did not change anything (an unfurl, a
  -- new reply) are listed too.
  applied_edits jsonb NOT NULL DEFAULT '[]'::jsonb,
  PRIMARY KEY (team_id, channel_id, ts, fact)
);
CREATE INDEX entries_thread ON entries (team_id, channel_id, thread_ts);
