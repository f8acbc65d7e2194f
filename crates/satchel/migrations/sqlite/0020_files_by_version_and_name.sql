-- A version's files by name. Every download start looks up one file of the grant's current
-- version: the one it names, or the version's first by name. With an index on the version
-- alone, PostgreSQL collected all of a version's files and sorted them for every start (a
-- bitmap scan, a relation-size `lseek` and a sort per start; SQLite sorted them only when a
-- batch first met the version); this index hands over the first match in name order,
-- whatever the version's file count.
-- It also serves every look-up by version alone, so the old index goes.
CREATE INDEX files_version_name ON files (version_id, name);
DROP INDEX files_version;
