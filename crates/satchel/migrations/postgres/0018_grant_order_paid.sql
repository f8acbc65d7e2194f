-- Whether a grant's order is paid is kept on the grant row itself, by the database.
--
-- A download start counts only while its order is paid (or partially refunded): a refund or
-- an open dispute stops every link at once. The round statement checked that with a look-up
-- of the order per start, which was ~10 µs of PostgreSQL's ~47 µs per start on a 2-core VM
-- (pgbench on the round statement alone, 27 starts per round; docs/operations.md, "The
-- order's state on the grant"). The grant row is read and updated by the start anyway.
--
-- download_grants.order_paid is true exactly while orders.status of its order is 'paid' or
-- 'partially_refunded'. Triggers keep it so on every write whatever code makes it: an order's
-- status change rewrites its grants' flag in the same statement (so in the same transaction,
-- and a start decrementing one of those grants concurrently waits on the row lock and then
-- re-checks the new row), and a new grant takes its order's state when inserted.
ALTER TABLE download_grants ADD COLUMN order_paid BOOLEAN NOT NULL DEFAULT TRUE;
-- Only the grants of orders not paid are rewritten (few: refunded, disputed), not every row.
UPDATE download_grants AS g SET order_paid = FALSE WHERE NOT EXISTS (
    SELECT 1 FROM orders o WHERE o.id = g.order_id AND o.status IN ('paid', 'partially_refunded'));

-- Both functions resolve table names in the schema they were created in, whatever the
-- search_path of the session whose write fires them.
CREATE FUNCTION satchel_order_paid_changed() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE download_grants SET order_paid = (NEW.status IN ('paid', 'partially_refunded'))
    WHERE order_id = NEW.id AND order_paid <> (NEW.status IN ('paid', 'partially_refunded'));
    RETURN NULL;
END
$$;
CREATE TRIGGER orders_paid_changed AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION satchel_order_paid_changed();

CREATE FUNCTION satchel_grant_order_paid() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    NEW.order_paid := EXISTS (
        SELECT 1 FROM orders o WHERE o.id = NEW.order_id AND o.status IN ('paid', 'partially_refunded'));
    RETURN NEW;
END
$$;
CREATE TRIGGER download_grants_order_paid BEFORE INSERT OR UPDATE OF order_id ON download_grants
    FOR EACH ROW EXECUTE FUNCTION satchel_grant_order_paid();
