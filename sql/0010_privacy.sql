-- Data protection, per tenant (docs/security.md).
-- redact_pii: personal data in messages (emails, phones, payment cards, IBANs, IP
-- addresses, and the tenant's own patterns) is replaced by <TYPE> placeholders before
-- a message or a finished stream is committed.
-- pii_patterns: the tenant's own patterns, {"NAME": "regex"}: a match becomes <NAME>.
ALTER TABLE tenants ADD COLUMN redact_pii boolean NOT NULL DEFAULT false;
ALTER TABLE tenants ADD COLUMN pii_patterns jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(pii_patterns) = 'object');

-- `chat-storage audit` reads a tenant's records by time, and the records that name no
-- tenant (failed authentications of unknown keys) too.
CREATE INDEX audit_log_untenanted_created ON audit_log (created_at) WHERE tenant_id IS NULL;
