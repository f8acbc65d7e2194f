-- Verified-buyer reviews: one per buyer (email) per product, editable. Whether a review is
-- shown is decided when it is read: not hidden by the seller AND the buyer still holds a
-- paid, not-refunded purchase of the product (so a refund hides it, a won dispute restores it).
CREATE TABLE reviews (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    email TEXT NOT NULL,
    order_id TEXT NOT NULL REFERENCES orders(id),
    rating BIGINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    title TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL DEFAULT '',
    display_name TEXT NOT NULL DEFAULT '',
    hidden BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (product_id, email)
);
CREATE INDEX reviews_product ON reviews (product_id, id);
CREATE INDEX reviews_seller ON reviews (seller_id, id);
CREATE INDEX reviews_email ON reviews (email);

-- Affiliate clicks per UTC day, for the affiliate portal's click → sale view.
CREATE TABLE affiliate_click_days (
    affiliate_id TEXT NOT NULL REFERENCES affiliates(id),
    day BIGINT NOT NULL,
    clicks BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (affiliate_id, day)
);
CREATE INDEX commissions_affiliate ON commissions (affiliate_id, id);
