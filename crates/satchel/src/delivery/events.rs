//! A grant's download events, read as the list they form.
//!
//! Each grant's events are a list, newest first: `download_grants.last_event_id` is its head
//! and each `download_events.prev_id` names the event logged before it on the same grant
//! (migration `0016_event_chain`). The statement that logs an event moves the head in the
//! grant row, which a download start updates anyway, instead of inserting into a
//! `(grant_id, at)` index: that index cost every start one more random B-tree leaf written at
//! commit (see docs/operations.md, "A grant's events as a list").
//!
//! Moving the head is `SET prior_event_id = last_event_id, last_event_id = <new>` with
//! `RETURNING prior_event_id`: the right-hand sides read the row as it was, so the statement
//! returns the old head for the new event's `prev_id`. Whoever moves a head writes its event
//! in the same transaction, and two writers of one grant take turns on its row (SQLite's one
//! writer; PostgreSQL's row lock, whose re-check reads the newest head), so a list never
//! forks or skips.
//!
//! The list runs in the order events were committed. Their `at` is when each request
//! arrived, which can precede an earlier-committed event's by as long as a request waits for
//! its transaction, so a walk bounded by time goes [`SLACK`] seconds further back than asked
//! and the caller filters on `at`.

/// How much further back than its window a time-bounded walk goes (seconds): more than any
/// request waits for its transaction (SQLite's busy timeout is 30 s).
pub const SLACK: i64 = 600;

/// The columns a walk carries (`prev_id` is how it steps).
const COLUMNS: &str =
    "e.id, e.prev_id, e.grant_id, e.file_id, e.at, e.ip, e.ip_prefix, e.user_agent, e.outcome, e.bytes";

/// A `WITH RECURSIVE chain AS (…)` clause: the events of grant `grant` (an SQL expression),
/// newest first, back to the first one at or before `since - SLACK` (`since` an SQL
/// expression, seconds). Select from `chain` with `at > since` for the window itself.
pub fn since(grant: &str, since: &str) -> String {
    format!(
        "WITH RECURSIVE chain AS (
             SELECT {COLUMNS} FROM download_grants g JOIN download_events e ON e.id = g.last_event_id
             WHERE g.id = {grant}
             UNION ALL
             SELECT {COLUMNS} FROM chain c JOIN download_events e ON e.id = c.prev_id
             WHERE c.at > {since} - {SLACK}
         )"
    )
}

/// A `WITH RECURSIVE chain AS (…)` clause with a `depth` column (1, 2, …): at most `limit`
/// events of grant `grant`, newest first, starting after the event `cursor` ('' for the
/// newest). A cursor that is not one of this grant's events starts nothing.
pub fn page(grant: &str, cursor: &str, limit: &str) -> String {
    format!(
        "WITH RECURSIVE chain AS (
             SELECT {COLUMNS}, 1 AS depth FROM download_events e
             WHERE e.id = CASE WHEN {cursor} = ''
                               THEN (SELECT g.last_event_id FROM download_grants g WHERE g.id = {grant})
                               ELSE (SELECT p.prev_id FROM download_events p WHERE p.id = {cursor} AND p.grant_id = {grant})
                          END
             UNION ALL
             SELECT {COLUMNS}, c.depth + 1 FROM chain c JOIN download_events e ON e.id = c.prev_id
             WHERE c.depth < {limit}
         )"
    )
}

/// The new head of a grant's list, `event` (an SQL expression), as `SET` assignments; the
/// statement returns `prior_event_id`, the old head, as the new event's `prev_id`.
pub fn push(event: &str) -> String {
    format!("prior_event_id = last_event_id, last_event_id = {event}")
}
