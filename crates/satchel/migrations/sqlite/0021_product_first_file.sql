-- A product carries its current version's first file (by name): its id and size (the
-- PostgreSQL migration of the same number says why). products.first_file_id /
-- first_file_size are exactly the first file by name of the product's current version (NULL
-- while it has none); the triggers keep them so on every write, in the writing statement.
ALTER TABLE products ADD COLUMN first_file_id TEXT;
ALTER TABLE products ADD COLUMN first_file_size INTEGER;

-- The full-text index follows the columns it indexes only: setting a product's version (or
-- the columns above) no longer deletes and re-adds its search entry.
DROP TRIGGER products_fts_au;
CREATE TRIGGER products_fts_au AFTER UPDATE OF title, summary, description_md, tags ON products BEGIN
    INSERT INTO products_fts(products_fts, rowid, title, summary, description_md, tags) VALUES ('delete', old.rowid, old.title, old.summary, old.description_md, old.tags);
    INSERT INTO products_fts(rowid, title, summary, description_md, tags) VALUES (new.rowid, new.title, new.summary, new.description_md, new.tags);
END;

UPDATE products SET (first_file_id, first_file_size) = (
    SELECT f.id, f.size FROM files f WHERE f.version_id = products.current_version_id ORDER BY f.name LIMIT 1)
WHERE current_version_id IS NOT NULL;

CREATE TRIGGER products_first_file_insert AFTER INSERT ON products
WHEN NEW.current_version_id IS NOT NULL
BEGIN
    UPDATE products SET (first_file_id, first_file_size) = (
        SELECT f.id, f.size FROM files f WHERE f.version_id = NEW.current_version_id ORDER BY f.name LIMIT 1)
    WHERE id = NEW.id;
END;

CREATE TRIGGER products_first_file_update AFTER UPDATE OF current_version_id ON products
WHEN OLD.current_version_id IS NOT NEW.current_version_id
BEGIN
    UPDATE products SET (first_file_id, first_file_size) = (
        SELECT f.id, f.size FROM files f WHERE f.version_id = NEW.current_version_id ORDER BY f.name LIMIT 1)
    WHERE id = NEW.id;
END;

CREATE TRIGGER files_first_file_insert AFTER INSERT ON files
BEGIN
    UPDATE products SET (first_file_id, first_file_size) = (
        SELECT f.id, f.size FROM files f WHERE f.version_id = NEW.version_id ORDER BY f.name LIMIT 1)
    WHERE id = NEW.product_id AND current_version_id = NEW.version_id;
END;

CREATE TRIGGER files_first_file_delete AFTER DELETE ON files
BEGIN
    UPDATE products SET (first_file_id, first_file_size) = (
        SELECT f.id, f.size FROM files f WHERE f.version_id = OLD.version_id ORDER BY f.name LIMIT 1)
    WHERE id = OLD.product_id AND current_version_id = OLD.version_id;
END;

CREATE TRIGGER files_first_file_update AFTER UPDATE ON files
BEGIN
    UPDATE products SET (first_file_id, first_file_size) = (
        SELECT f.id, f.size FROM files f WHERE f.version_id = products.current_version_id ORDER BY f.name LIMIT 1)
    WHERE (id = OLD.product_id AND current_version_id = OLD.version_id)
       OR (id = NEW.product_id AND current_version_id = NEW.version_id);
END;
