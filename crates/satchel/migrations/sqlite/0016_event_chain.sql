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

-- The lists of events logged before this migration, in (at, id) order, built while the
-- index still answers "the event before this one".
UPDATE download_events SET prev_id = (
    SELECT p.id FROM download_events p
    WHERE p.grant_id = download_events.grant_id
      AND (p.at < download_events.at OR (p.at = download_events.at AND p.id < download_events.id))
    ORDER BY p.at DESC, p.id DESC
    LIMIT 1
);
UPDATE download_grants SET last_event_id = (
    SELECT e.id FROM download_events e WHERE e.grant_id = download_grants.id ORDER BY e.at DESC, e.id DESC LIMIT 1
);
UPDATE download_grants SET prior_event_id = (
    SELECT e.prev_id FROM download_events e WHERE e.id = download_grants.last_event_id
);

DROP INDEX download_events_grant;
