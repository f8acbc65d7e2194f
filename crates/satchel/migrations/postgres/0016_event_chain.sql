-- Each grant's download events form a list, newest first, instead of a (grant_id, at) index.
--
-- Every download start appends an event. With the index, that append also rewrote the
-- index leaf of its grant: one more B-tree page per start, written to the log at every
-- commit (SQLite's writer spent 17-18 µs per start with it, 11-13 µs without, measured in
-- the bench; see docs/operations.md). Now the grant row, which a start updates anyway,
-- holds the head of its list:
--   download_grants.last_event_id   the grant's newest event;
--   download_grants.prior_event_id  the event before it (the head's prev_id): the statement
--                                   that moves the head sets it from the old head and
--                                   returns it, so the new event can point at its
--                                   predecessor without a second statement;
--   download_events.prev_id         the event logged before this one on the same grant.
-- Readers walk the list from the head (src/delivery/events.rs); a grant's events are few,
-- and time-bounded reads stop at their window.
ALTER TABLE download_events ADD COLUMN prev_id TEXT;
ALTER TABLE download_grants ADD COLUMN last_event_id TEXT;
ALTER TABLE download_grants ADD COLUMN prior_event_id TEXT;

-- The lists of events logged before this migration, in (at, id) order: one pass over the
-- table with window functions (a correlated look-up per event took ~1 ms each on a busy
-- grant's events).
UPDATE download_events AS e SET prev_id = o.prev
FROM (SELECT id, LAG(id) OVER (PARTITION BY grant_id ORDER BY at, id) AS prev FROM download_events) AS o
WHERE o.id = e.id AND o.prev IS NOT NULL;
UPDATE download_grants AS g SET last_event_id = h.id, prior_event_id = h.prev_id
FROM (SELECT grant_id, id, prev_id, ROW_NUMBER() OVER (PARTITION BY grant_id ORDER BY at DESC, id DESC) AS n
      FROM download_events) AS h
WHERE h.grant_id = g.id AND h.n = 1;

DROP INDEX download_events_grant;
