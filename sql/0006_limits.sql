-- Per-tenant and per-key limits (docs/api.md, 1.1, "Limits"). NULL: the server's
-- setting (CHAT_RATE_LIMIT_PER_S, CHAT_RATE_LIMIT_BURST,
-- CHAT_WS_MAX_CONNECTIONS_PER_TENANT). A key's rate or burst wins over its tenant's.
ALTER TABLE tenants
    ADD COLUMN rate_limit_per_s double precision
        CONSTRAINT tenants_rate_limit_per_s CHECK (rate_limit_per_s > 0),
    ADD COLUMN rate_limit_burst integer
        CONSTRAINT tenants_rate_limit_burst CHECK (rate_limit_burst > 0),
    ADD COLUMN max_stream_connections integer
        CONSTRAINT tenants_max_stream_connections CHECK (max_stream_connections > 0);
ALTER TABLE api_keys
    ADD COLUMN rate_limit_per_s double precision
        CONSTRAINT api_keys_rate_limit_per_s CHECK (rate_limit_per_s > 0),
    ADD COLUMN rate_limit_burst integer
        CONSTRAINT api_keys_rate_limit_burst CHECK (rate_limit_burst > 0);
