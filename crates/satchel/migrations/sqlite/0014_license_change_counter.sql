-- Licensing: a counter that moves with every change to a license or to the set of its live
-- devices, so instances caching license rows for validations (licensing::cache) notice a
-- change another process committed (PostgreSQL announces the same changes with NOTIFY,
-- migration 0010). Check-ins (`last_check_in_at` only) do not move it.
CREATE TABLE license_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n BIGINT NOT NULL
);
INSERT INTO license_changes (id, n) VALUES (1, 0);

CREATE TRIGGER license_keys_updated AFTER UPDATE ON license_keys
BEGIN UPDATE license_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER license_keys_deleted AFTER DELETE ON license_keys
BEGIN UPDATE license_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER license_activations_inserted AFTER INSERT ON license_activations
BEGIN UPDATE license_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER license_activations_deleted AFTER DELETE ON license_activations
BEGIN UPDATE license_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER license_activations_updated AFTER UPDATE OF license_id, fingerprint, deactivated_at ON license_activations
BEGIN UPDATE license_changes SET n = n + 1 WHERE id = 1; END;
