-- Licensing.
-- 1. Every change to a license or to the set of its live devices is announced at commit on
--    channel `satchel_licenses` with the payload '<schema> <license_id>', so instances that
--    cache license rows for validations (licensing::cache) drop them at once. Check-ins
--    (`last_check_in_at` only) are not announced: they would be a NOTIFY per validation.
CREATE FUNCTION satchel_license_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_id TEXT;
BEGIN
    IF TG_TABLE_NAME = 'license_keys' THEN
        row_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    ELSE
        row_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.license_id ELSE NEW.license_id END;
    END IF;
    PERFORM pg_notify('satchel_licenses', TG_TABLE_SCHEMA || ' ' || row_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER license_keys_changed AFTER UPDATE OR DELETE ON license_keys
    FOR EACH ROW EXECUTE FUNCTION satchel_license_changed();
CREATE TRIGGER license_activations_changed
    AFTER INSERT OR DELETE OR UPDATE OF license_id, fingerprint, deactivated_at ON license_activations
    FOR EACH ROW EXECUTE FUNCTION satchel_license_changed();

-- 2. Key-guessing flags are looked up by network before one is raised.
CREATE INDEX abuse_flags_subject ON abuse_flags (subject_kind, subject_id, reason, created_at);
