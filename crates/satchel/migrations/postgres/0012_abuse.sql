-- Download abuse detection and seller grant actions (src/abuse.rs, src/grants.rs).
-- abuse_since: events before it are ignored by detection (set when a seller resets a grant
--   or clears its flag, so what they accepted does not trip the thresholds again).
-- reconfirmed_at: when the buyer last confirmed by email; the soft measure is not asked
--   again within the detection window, suspension still is.
-- reconfirm_nonce / reconfirm_sent_at: the one live re-confirmation link (its nonce; the
--   link's MAC is what authorizes it) and when it was emailed.
ALTER TABLE download_grants ADD COLUMN abuse_since BIGINT NOT NULL DEFAULT 0;
ALTER TABLE download_grants ADD COLUMN reconfirmed_at BIGINT;
ALTER TABLE download_grants ADD COLUMN reconfirm_nonce TEXT;
ALTER TABLE download_grants ADD COLUMN reconfirm_sent_at BIGINT;

-- How a flag was resolved (cleared | suspended | revoked) and by whom (user id).
ALTER TABLE abuse_flags ADD COLUMN resolution TEXT;
ALTER TABLE abuse_flags ADD COLUMN resolved_by TEXT;
-- At most one open flag per grant, whatever races between instances.
CREATE UNIQUE INDEX abuse_flags_one_open_per_grant ON abuse_flags (subject_id) WHERE subject_kind = 'grant' AND status = 'open';
CREATE INDEX abuse_flags_seller ON abuse_flags (seller_id, status, id);
