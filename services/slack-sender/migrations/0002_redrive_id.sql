-- The redrive (the `slackline-redrive` header of the record: which dead letter it came
-- from) that last claimed a 'failed' reply. A 'failed' reply is tried again only for a
-- record carrying a redrive other than this one: a rewind or replay of
-- support.replies (no header, or the header of a redrive already tried) posts nothing.
ALTER TABLE replies ADD COLUMN redrive_id text;
