-- Satchel schema v1. Integers are BIGINT, times are unix seconds, ids are prefixed text.
-- The SQLite and PostgreSQL files differ only where marked DIALECT.

CREATE TABLE sellers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    store_name TEXT NOT NULL,
    accent_color TEXT NOT NULL DEFAULT '#5b4bdb',
    logo_key TEXT,
    support_email TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    password_hash TEXT,
    role TEXT NOT NULL CHECK (role IN ('admin', 'seller', 'buyer', 'affiliate')),
    seller_id TEXT REFERENCES sellers(id),
    created_at BIGINT NOT NULL,
    last_login_at BIGINT
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE magic_links (
    token_hash TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    purpose TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE products (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    slug TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    description_md TEXT NOT NULL DEFAULT '',
    price BIGINT NOT NULL CHECK (price >= 0),
    currency TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('one_time', 'subscription', 'bundle')),
    billing_interval TEXT,
    pwyw_min BIGINT,
    category TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '',
    license_policy TEXT NOT NULL DEFAULT '{"type":"none"}',
    download_policy TEXT NOT NULL DEFAULT '{}',
    watermark_policy TEXT NOT NULL DEFAULT 'none',
    status TEXT NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
    featured BOOLEAN NOT NULL DEFAULT FALSE,
    cover_key TEXT,
    current_version_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX products_listing ON products (status, id);
CREATE INDEX products_seller ON products (seller_id, id);
CREATE INDEX products_category ON products (status, category, id);

CREATE TABLE product_tags (
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (tag, product_id)
);

CREATE TABLE bundle_items (
    bundle_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    product_id TEXT NOT NULL REFERENCES products(id),
    PRIMARY KEY (bundle_id, product_id)
);

CREATE TABLE product_versions (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    changelog_md TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    UNIQUE (product_id, version)
);

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    version_id TEXT NOT NULL REFERENCES product_versions(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX files_version ON files (version_id);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    length BIGINT,
    upload_offset BIGINT NOT NULL DEFAULT 0,
    file_name TEXT NOT NULL DEFAULT '',
    content_type TEXT NOT NULL DEFAULT 'application/octet-stream',
    metadata TEXT NOT NULL DEFAULT '{}',
    object_key TEXT NOT NULL,
    backend_state TEXT NOT NULL DEFAULT '{}',
    sha256 TEXT,
    status TEXT NOT NULL DEFAULT 'uploading',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE discount_codes (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    code TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('percent', 'fixed')),
    amount BIGINT NOT NULL,
    currency TEXT,
    product_id TEXT REFERENCES products(id),
    max_redemptions BIGINT,
    redemptions BIGINT NOT NULL DEFAULT 0,
    once_per_customer BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at BIGINT,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at BIGINT NOT NULL,
    UNIQUE (seller_id, code)
);

CREATE TABLE affiliates (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    email TEXT NOT NULL,
    code TEXT NOT NULL UNIQUE,
    commission_bps BIGINT NOT NULL DEFAULT 3000,
    product_id TEXT REFERENCES products(id),
    clicks BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'active',
    created_at BIGINT NOT NULL
);

CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL REFERENCES sellers(id),
    email TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'failed', 'expired', 'refunded', 'partially_refunded', 'disputed')),
    currency TEXT NOT NULL,
    subtotal BIGINT NOT NULL,
    discount_total BIGINT NOT NULL DEFAULT 0,
    total BIGINT NOT NULL,
    refunded_total BIGINT NOT NULL DEFAULT 0,
    discount_code_id TEXT REFERENCES discount_codes(id),
    affiliate_id TEXT REFERENCES affiliates(id),
    access_token_hash TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_session_id TEXT UNIQUE,
    provider_payment_id TEXT,
    provider_subscription_id TEXT,
    provider_customer_id TEXT,
    mode TEXT NOT NULL DEFAULT 'payment',
    created_at BIGINT NOT NULL,
    paid_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX orders_seller ON orders (seller_id, id);
CREATE INDEX orders_email ON orders (email, id);
CREATE INDEX orders_payment ON orders (provider_payment_id);
CREATE INDEX orders_subscription ON orders (provider_subscription_id);

CREATE TABLE order_items (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    product_id TEXT NOT NULL REFERENCES products(id),
    parent_item_id TEXT REFERENCES order_items(id),
    title TEXT NOT NULL,
    unit_price BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    discount BIGINT NOT NULL DEFAULT 0,
    total BIGINT NOT NULL,
    refunded BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'active'
);
CREATE INDEX order_items_order ON order_items (order_id);
CREATE INDEX order_items_product ON order_items (product_id);

CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id),
    provider TEXT NOT NULL,
    provider_ref TEXT,
    kind TEXT NOT NULL DEFAULT 'charge',
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX payments_order ON payments (order_id);

CREATE TABLE refunds (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id),
    provider_ref TEXT UNIQUE,
    amount BIGINT NOT NULL CHECK (amount > 0),
    reason TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'succeeded',
    created_at BIGINT NOT NULL
);
CREATE INDEX refunds_order ON refunds (order_id);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id),
    provider_subscription_id TEXT UNIQUE,
    status TEXT NOT NULL,
    current_period_end BIGINT,
    cancel_at_period_end BOOLEAN NOT NULL DEFAULT FALSE,
    grace_days BIGINT NOT NULL DEFAULT 7,
    updated_at BIGINT NOT NULL
);

CREATE TABLE commissions (
    id TEXT PRIMARY KEY,
    affiliate_id TEXT NOT NULL REFERENCES affiliates(id),
    order_id TEXT NOT NULL REFERENCES orders(id),
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'payable', 'paid', 'reversed')),
    reversed_amount BIGINT NOT NULL DEFAULT 0,
    payable_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (order_id, affiliate_id)
);

CREATE TABLE download_grants (
    id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id),
    order_item_id TEXT NOT NULL REFERENCES order_items(id),
    product_id TEXT NOT NULL REFERENCES products(id),
    email TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    max_downloads BIGINT NOT NULL,
    remaining BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ip_policy TEXT NOT NULL DEFAULT 'none',
    ip_bound TEXT,
    ip_allow TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'suspended', 'reconfirm')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX download_grants_order ON download_grants (order_id);

CREATE TABLE download_events (
    id TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL REFERENCES download_grants(id),
    file_id TEXT,
    at BIGINT NOT NULL,
    ip TEXT NOT NULL,
    ip_prefix TEXT NOT NULL,
    user_agent TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    bytes BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX download_events_grant ON download_events (grant_id, at);

CREATE TABLE license_keys (
    id TEXT PRIMARY KEY,
    license_key TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL REFERENCES orders(id),
    order_item_id TEXT NOT NULL REFERENCES order_items(id),
    product_id TEXT NOT NULL REFERENCES products(id),
    email TEXT NOT NULL,
    license_type TEXT NOT NULL CHECK (license_type IN ('perpetual', 'subscription', 'single_use')),
    max_activations BIGINT,
    activations BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'revoked', 'expired', 'consumed')),
    expires_at BIGINT,
    paid_through BIGINT,
    check_in_hours BIGINT NOT NULL DEFAULT 24,
    grace_days BIGINT NOT NULL DEFAULT 7,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX license_keys_order ON license_keys (order_id);

CREATE TABLE license_activations (
    id TEXT PRIMARY KEY,
    license_id TEXT NOT NULL REFERENCES license_keys(id),
    fingerprint TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    meta TEXT NOT NULL DEFAULT '{}',
    ip TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    last_check_in_at BIGINT NOT NULL,
    deactivated_at BIGINT
);
CREATE UNIQUE INDEX license_activations_live ON license_activations (license_id, fingerprint) WHERE deactivated_at IS NULL;

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'dead')),
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    locked_until BIGINT,
    locked_by TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_ready ON jobs (status, run_at);

CREATE TABLE email_outbox (
    id TEXT PRIMARY KEY,
    seller_id TEXT,
    to_email TEXT NOT NULL,
    subject TEXT NOT NULL,
    body_text TEXT NOT NULL,
    body_html TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX email_outbox_seller ON email_outbox (seller_id, id);

CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    processed_at BIGINT,
    outcome TEXT NOT NULL DEFAULT ''
);

CREATE TABLE domain_events (
    id TEXT PRIMARY KEY,
    seller_id TEXT,
    event_type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX domain_events_seller ON domain_events (seller_id, id);

CREATE TABLE abuse_flags (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'open',
    created_at BIGINT NOT NULL,
    resolved_at BIGINT
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}',
    at BIGINT NOT NULL
);

CREATE TABLE kv_settings (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, name)
);

-- DIALECT: full-text search. PostgreSQL: a generated tsvector with a GIN index.
ALTER TABLE products ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('simple', coalesce(title, '')), 'A') ||
    setweight(to_tsvector('simple', coalesce(summary, '') || ' ' || coalesce(tags, '')), 'B') ||
    setweight(to_tsvector('simple', coalesce(description_md, '')), 'C')
) STORED;
CREATE INDEX products_search ON products USING GIN (search);
