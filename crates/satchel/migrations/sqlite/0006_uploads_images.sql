-- Resumable (tus) uploads: the state a PATCH needs to continue after a dropped connection or
-- a restart, a lease so two requests never write one upload at once, and the S3 parts
-- already stored. Preview images of products with their thumbnails.
ALTER TABLE uploads ADD COLUMN hash_state TEXT NOT NULL DEFAULT '';
ALTER TABLE uploads ADD COLUMN lock_token TEXT;
ALTER TABLE uploads ADD COLUMN locked_until BIGINT;
ALTER TABLE uploads ADD COLUMN completed_at BIGINT;
ALTER TABLE uploads ADD COLUMN version_id TEXT;
CREATE INDEX uploads_seller ON uploads (seller_id, id);
CREATE INDEX uploads_expiry ON uploads (status, expires_at);

CREATE TABLE upload_parts (
    upload_id TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    etag TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (upload_id, number)
);

CREATE TABLE product_images (
    id TEXT PRIMARY KEY,
    product_id TEXT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    object_key TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    thumb_key TEXT NOT NULL,
    thumb_content_type TEXT NOT NULL,
    thumb_width BIGINT NOT NULL,
    thumb_height BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX product_images_product ON product_images (product_id, position);
