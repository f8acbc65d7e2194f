-- A grant moved to another order takes that order's state in an AFTER trigger, not a BEFORE one.
--
-- 0018 kept download_grants.order_paid right on an `UPDATE OF order_id` with a BEFORE ROW
-- trigger. A BEFORE UPDATE row trigger of any kind makes PostgreSQL fetch and lock the old
-- row for the trigger before it looks at the trigger's column list, on every update of the
-- table: each download start (which never touches order_id) paid for it, ~3 % of
-- PostgreSQL's time in the round statement (docs/operations.md, "Columns, not JSON"). An
-- AFTER trigger's column list is checked before anything is fetched, so updates that leave
-- order_id alone cost nothing. Inserts keep the BEFORE INSERT trigger (the new row carries
-- its flag from the start).
DROP TRIGGER download_grants_order_paid ON download_grants;
CREATE TRIGGER download_grants_order_paid BEFORE INSERT ON download_grants
    FOR EACH ROW EXECUTE FUNCTION satchel_grant_order_paid();

CREATE FUNCTION satchel_grant_order_moved() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE download_grants SET order_paid = EXISTS (
        SELECT 1 FROM orders o WHERE o.id = NEW.order_id AND o.status IN ('paid', 'partially_refunded'))
    WHERE id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER download_grants_order_moved AFTER UPDATE OF order_id ON download_grants
    FOR EACH ROW WHEN (OLD.order_id IS DISTINCT FROM NEW.order_id)
    EXECUTE FUNCTION satchel_grant_order_moved();
