-- Publishing: a version's files are stored under keys named after its version string before
-- the version row exists, so two publishes of one version (a double-submitted form, a retried
-- CI job) would write the same keys, and the loser's clean-up would delete the winner's files.
-- A publish claims (product, version segment) here before storing a byte; a second claim of
-- the same pair is refused until the first is published or given up (or older than the
-- stale limit: a publish whose process died).
CREATE TABLE version_claims (
    product_id TEXT NOT NULL,
    segment TEXT NOT NULL,
    token TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (product_id, segment)
);
