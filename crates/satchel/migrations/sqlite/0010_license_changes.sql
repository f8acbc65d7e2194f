-- Licensing. (PostgreSQL also gets triggers that announce license changes to caching
-- instances; SQLite validations read the database every time, so it needs none.)
-- Key-guessing flags are looked up by network before one is raised.
CREATE INDEX abuse_flags_subject ON abuse_flags (subject_kind, subject_id, reason, created_at);
