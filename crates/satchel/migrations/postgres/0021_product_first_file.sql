-- A product carries its current version's first file (by name): its id and size.
--
-- Every download start through a link that names no file delivers that file, and the round
-- statement looked it up per start (`LATERAL (SELECT … FROM files … ORDER BY name LIMIT 1)`,
-- an index descent and a heap fetch). Read off the product row, which the start joins anyway,
-- the round statement ran 4.5 % more rounds per second under `pgbench` (docs/operations.md,
-- "The first file on the product"). Links naming a file still look it up.
--
-- products.first_file_id / first_file_size are exactly the first file by name of the
-- product's current version (NULL while it has none). Triggers keep them so whatever code
-- writes: a product's current version changing recomputes them in the same statement, and a
-- file of the current version added, renamed, resized or removed recomputes them in the
-- writing statement (a start decrementing concurrently waits on nothing: it reads the
-- product row as committed).
ALTER TABLE products ADD COLUMN first_file_id TEXT, ADD COLUMN first_file_size BIGINT;
UPDATE products p SET (first_file_id, first_file_size) = (
    SELECT f.id, f.size FROM files f WHERE f.version_id = p.current_version_id ORDER BY f.name LIMIT 1)
WHERE p.current_version_id IS NOT NULL;

-- Both functions resolve table names in the schema they were created in, whatever the
-- search_path of the session whose write fires them.
CREATE FUNCTION satchel_product_first_file() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    NEW.first_file_id := NULL;
    NEW.first_file_size := NULL;
    SELECT f.id, f.size INTO NEW.first_file_id, NEW.first_file_size
    FROM files f WHERE f.version_id = NEW.current_version_id ORDER BY f.name LIMIT 1;
    RETURN NEW;
END
$$;
-- Products are written rarely (a download start only reads them), so BEFORE triggers cost
-- nothing that matters; the WHEN clauses skip the function when the version stays.
CREATE TRIGGER products_first_file_insert BEFORE INSERT ON products
    FOR EACH ROW WHEN (NEW.current_version_id IS NOT NULL)
    EXECUTE FUNCTION satchel_product_first_file();
CREATE TRIGGER products_first_file_update BEFORE UPDATE OF current_version_id ON products
    FOR EACH ROW WHEN (OLD.current_version_id IS DISTINCT FROM NEW.current_version_id)
    EXECUTE FUNCTION satchel_product_first_file();

CREATE FUNCTION satchel_files_first_file() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE products p SET (first_file_id, first_file_size) = (
            SELECT f.id, f.size FROM files f WHERE f.version_id = p.current_version_id ORDER BY f.name LIMIT 1)
        WHERE p.id = OLD.product_id AND p.current_version_id = OLD.version_id;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        UPDATE products p SET (first_file_id, first_file_size) = (
            SELECT f.id, f.size FROM files f WHERE f.version_id = p.current_version_id ORDER BY f.name LIMIT 1)
        WHERE p.id = NEW.product_id AND p.current_version_id = NEW.version_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER files_first_file AFTER INSERT OR UPDATE OR DELETE ON files
    FOR EACH ROW EXECUTE FUNCTION satchel_files_first_file();
