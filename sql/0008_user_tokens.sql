-- User tokens, trusted identity providers and per-tenant CORS (docs/api.md, 1.1,
-- "Credentials", "CORS"; docs/auth.md).

-- The keys that sign a tenant's user tokens (HS256). `id` is the token's `kid`: public.
-- The key itself is sealed (AES-GCM) under the server's CHAT_SECRET_KEY, bound to its id
-- and tenant, so a database copy alone cannot mint tokens. One key per tenant is
-- active; `tenants rotate-signing-key` retires it, and tokens it signed stop working.
CREATE TABLE signing_keys (
    id          text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sealed_key  bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
CREATE UNIQUE INDEX signing_keys_active ON signing_keys (tenant_id) WHERE retired_at IS NULL;

-- A tenant may trust one OpenID Connect issuer: its JWTs act as user tokens, the user
-- taken from `oidc_user_claim`. `cors_origins`: pages this tenant's callers may use, on
-- top of CHAT_CORS_ORIGINS.
ALTER TABLE tenants
    ADD COLUMN oidc_issuer text,
    ADD COLUMN oidc_audience text,
    ADD COLUMN oidc_user_claim text NOT NULL DEFAULT 'sub',
    ADD COLUMN cors_origins text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT tenants_oidc_audience CHECK (oidc_issuer IS NULL OR oidc_audience IS NOT NULL);
CREATE INDEX tenants_oidc_issuer ON tenants (oidc_issuer) WHERE oidc_issuer IS NOT NULL;

-- A ticket a user token asked for stands for that user: `user_id` and the token's
-- scopes; `key_id` then names the credential (`token:<kid>` or `oidc`), not an API key.
ALTER TABLE ws_tickets
    ADD COLUMN user_id text,
    ADD COLUMN user_scopes text[];
