-- Whether a grant's order is paid is kept on the grant row itself, by the database (the
-- PostgreSQL migration of the same number says why). download_grants.order_paid is 1 exactly
-- while orders.status of its order is 'paid' or 'partially_refunded'; the triggers keep it so
-- on every write, in the writing transaction.
ALTER TABLE download_grants ADD COLUMN order_paid INTEGER NOT NULL DEFAULT 1;
UPDATE download_grants SET order_paid = 0 WHERE NOT EXISTS (
    SELECT 1 FROM orders o WHERE o.id = download_grants.order_id AND o.status IN ('paid', 'partially_refunded'));

CREATE TRIGGER orders_paid_changed AFTER UPDATE OF status ON orders
WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE download_grants SET order_paid = (NEW.status IN ('paid', 'partially_refunded'))
    WHERE order_id = NEW.id;
END;

CREATE TRIGGER download_grants_order_paid AFTER INSERT ON download_grants
BEGIN
    UPDATE download_grants SET order_paid = EXISTS (
        SELECT 1 FROM orders o WHERE o.id = NEW.order_id AND o.status IN ('paid', 'partially_refunded'))
    WHERE id = NEW.id;
END;

CREATE TRIGGER download_grants_order_moved AFTER UPDATE OF order_id ON download_grants
BEGIN
    UPDATE download_grants SET order_paid = EXISTS (
        SELECT 1 FROM orders o WHERE o.id = NEW.order_id AND o.status IN ('paid', 'partially_refunded'))
    WHERE id = NEW.id;
END;
