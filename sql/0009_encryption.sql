-- Envelope encryption of conversation content, per tenant opt-in (docs/security.md).

-- `tenants update T --encryption on`: new content of this tenant is stored sealed.
ALTER TABLE tenants ADD COLUMN encrypted boolean NOT NULL DEFAULT false;

-- One data key per (tenant, user): 32 random bytes wrapped by the key-encryption key
-- (CHAT_ENCRYPTION_KEK) named by `kek_id`. Erasing the user deletes this row in the
-- erasure's transaction (crypto-shredding). Backups leave this table's rows out, so a
-- backup restored later opens only what the live key table still holds keys for.
CREATE TABLE data_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id     text NOT NULL,
    wrapped     bytea NOT NULL,
    kek_id      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    wrapped_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT data_keys_user UNIQUE (tenant_id, user_id)
);
CREATE INDEX data_keys_kek ON data_keys (kek_id);

-- A sealed message keeps `content`, `context` and `metadata` in `sealed` (AES-256-GCM
-- under its data key, bound to tenant, session and message); the plain columns hold
-- '' / NULL / '{}'. No foreign key: a shredded key leaves rows that no longer open.
ALTER TABLE messages
    ADD COLUMN sealed bytea,
    ADD COLUMN data_key_id uuid;
ALTER TABLE sessions
    ADD COLUMN sealed_title bytea,
    ADD COLUMN data_key_id uuid;
