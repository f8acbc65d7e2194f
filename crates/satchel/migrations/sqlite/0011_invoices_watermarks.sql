-- Invoices and credit notes: immutable snapshots, numbered without gaps per seller and year.
CREATE TABLE invoices (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    order_id TEXT NOT NULL REFERENCES orders(id),
    refund_id TEXT REFERENCES refunds(id),
    kind TEXT NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
    number TEXT NOT NULL,
    currency TEXT NOT NULL,
    total BIGINT NOT NULL,
    issued_at BIGINT NOT NULL,
    -- JSON snapshot of everything printed (seller, buyer, lines, totals, payment), so an
    -- issued document never changes when the product or the store settings do.
    document TEXT NOT NULL,
    UNIQUE (seller_id, number)
);
CREATE UNIQUE INDEX invoices_one_per_order ON invoices (order_id) WHERE kind = 'invoice';
CREATE UNIQUE INDEX invoices_one_per_refund ON invoices (refund_id) WHERE refund_id IS NOT NULL;
CREATE INDEX invoices_seller ON invoices (seller_id, id);

-- Next number per seller and series (e.g. 'INV-2026'); bumped inside the issuing
-- transaction, so a rolled-back order leaves no gap.
CREATE TABLE invoice_counters (
    seller_id TEXT NOT NULL,
    series TEXT NOT NULL,
    last_number BIGINT NOT NULL,
    PRIMARY KEY (seller_id, series)
);

-- Per-buyer watermark tails: the buyer's file is original[..cut] followed by the object at
-- tail_key. 'unsupported' records why a file of a watermarked product went out unmarked.
CREATE TABLE watermarks (
    grant_id TEXT NOT NULL REFERENCES download_grants(id),
    file_id TEXT NOT NULL REFERENCES files(id),
    status TEXT NOT NULL CHECK (status IN ('ready', 'unsupported')),
    cut BIGINT NOT NULL,
    tail_key TEXT NOT NULL,
    tail_size BIGINT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (grant_id, file_id)
);
