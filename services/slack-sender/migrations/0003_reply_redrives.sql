-- Every redrive (the `slackline-redrive` header of a record) that ever claimed a reply,
-- written by the claim's own statement. A 'failed' reply is tried again only for a
-- record carrying a redrive not in here: a rewind or replay of support.replies re-reads
-- the records of every redrive already tried (not only the last one, which is all
-- replies.redrive_id keeps) and posts nothing for any of them.
CREATE TABLE reply_redrives (
  reply_id text NOT NULL REFERENCES replies (reply_id) ON DELETE CASCADE,
  redrive_id text NOT NULL,
  claimed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (reply_id, redrive_id)
);
INSERT INTO reply_redrives (reply_id, redrive_id)
  SELECT reply_id, redrive_id FROM replies WHERE redrive_id IS NOT NULL;
