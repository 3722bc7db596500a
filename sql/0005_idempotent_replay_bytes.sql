-- An idempotent replay is byte-identical to the first response (docs/api.md, 1.1):
-- json keeps the text as it was written (key order too), jsonb rewrites it.
-- Numbered 0005: 0004 is taken by the key-scopes change of the same release.
ALTER TABLE idempotency_keys ALTER COLUMN response TYPE json USING response::json;
