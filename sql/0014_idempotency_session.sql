-- Each stored idempotent reply names the session it belongs to, so that deleting a
-- message, a session or a user's data also reaches the copies of it kept in replies
-- (message content, attachment names, titles) through an index instead of a scan of
-- every reply of the tenant. Numbered 0014: 0012 and 0013 are taken by other changes.
ALTER TABLE idempotency_keys ADD COLUMN session_id uuid;

-- replies already stored: the session from the shapes the routes answer with
-- (a message, a batch, an attachment, a session created)
UPDATE idempotency_keys SET session_id = COALESCE(
        response->>'session_id',
        response->'data'->0->>'session_id',
        response->'attachment'->>'session_id',
        CASE WHEN response->>'user_id' IS NOT NULL THEN response->>'id' END)::uuid
    WHERE response IS NOT NULL;

CREATE INDEX idempotency_keys_session ON idempotency_keys (tenant_id, session_id)
    WHERE session_id IS NOT NULL;
