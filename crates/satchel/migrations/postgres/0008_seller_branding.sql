-- Dashboard settings: the name buyers see in the From line of the store's emails
-- (empty = the configured email.from as is).
ALTER TABLE sellers ADD COLUMN sender_name TEXT NOT NULL DEFAULT '';
