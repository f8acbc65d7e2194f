-- Subscription events can arrive in any order: remember the newest one applied.
ALTER TABLE subscriptions ADD COLUMN last_event_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN product_id TEXT;
ALTER TABLE subscriptions ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX subscriptions_order ON subscriptions (order_id);
