-- Follow-up of 0002 (issue 12, item 1).
--
-- 1. Old writers during a rolling deploy. A pod of the version before 0002 keeps
--    consuming until it is replaced: it creates threads without status_micros (0) and
--    sets `status` without touching status_micros/status_key, so a later fact would be
--    compared with a stale order (a redrive of an old customer message would reopen a
--    done thread). These triggers give such a write the order of the thread's newest
--    known fact: its newest message (last_micros) and, once the old writer records
--    the transition, that transition's event time (a reaction's time). The key
--    '2:legacy-writer' sorts after every fact of the same microsecond. The current
--    writer always sets status_micros/status_key with `status`, so they never fire
--    for it.
CREATE FUNCTION threads_legacy_status_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.status_micros = 0 AND NEW.status_key = '' THEN
      NEW.status_micros := greatest(coalesce(NEW.last_micros, 0), coalesce(NEW.root_micros, 0));
      NEW.status_key := '2:legacy-writer';
    END IF;
  ELSIF NEW.status IS DISTINCT FROM OLD.status
        AND NEW.status_micros = OLD.status_micros AND NEW.status_key = OLD.status_key THEN
    NEW.status_micros := greatest(OLD.status_micros, coalesce(NEW.last_micros, 0),
                                  coalesce(OLD.last_micros, 0));
    NEW.status_key := '2:legacy-writer';
  END IF;
  IF NEW.status_key = '2:legacy-writer' THEN
    NEW.status_ts := (NEW.status_micros / 1000000)::text || '.'
                     || lpad((NEW.status_micros % 1000000)::text, 6, '0');
  END IF;
  RETURN NEW;
END $$;

CREATE TRIGGER threads_legacy_status_order BEFORE INSERT OR UPDATE ON threads
  FOR EACH ROW EXECUTE FUNCTION threads_legacy_status_order();

-- An old writer's transition carries its fact's event time: a status it set holds
-- from then on (a reaction's time is later than the thread's last message).
-- (SET search_path FROM CURRENT: the schema the migration runs in, whatever the
-- writer's search_path.)
CREATE FUNCTION transitions_legacy_status_order() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
BEGIN
  IF NEW.event_time_ms IS NOT NULL THEN
    UPDATE threads SET status_micros = greatest(status_micros, NEW.event_time_ms * 1000)
     WHERE thread_id = NEW.thread_id AND status_key = '2:legacy-writer'
       AND status = NEW.to_status;
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER transitions_legacy_status_order AFTER INSERT ON transitions
  FOR EACH ROW EXECUTE FUNCTION transitions_legacy_status_order();

-- 2. Every status decision applied to a thread (also those older than its current
--    one), so that time-window grouping can ask a thread's status *as of* a Slack
--    time: a late fact is placed as in-order delivery would have placed it.
CREATE TABLE thread_decisions (
  thread_id text NOT NULL REFERENCES threads(thread_id),
  order_micros bigint NOT NULL,
  order_key text COLLATE "C" NOT NULL,
  status text NOT NULL CHECK (status IN ('todo','waiting','done')),
  PRIMARY KEY (thread_id, order_micros, order_key)
);
-- Threads from before: their current status, from the time that decided it.
INSERT INTO thread_decisions (thread_id, order_micros, order_key, status)
  SELECT thread_id, status_micros, status_key, status FROM threads
  ON CONFLICT DO NOTHING;

-- 3. Loose facts from before 0002 (facts with no thread) cannot be remembered here:
--    `facts` keeps no author or role. They are never adopted (see the README).
