-- chat-storage schema, version 1.
-- Every row that belongs to a tenant carries tenant_id, and every query filters by it.

CREATE TABLE tenants (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    retention_days  integer CHECK (retention_days IS NULL OR retention_days > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A key is "cs_<id>_<secret>"; only sha256(key) is stored, looked up by id.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL DEFAULT '',
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);

CREATE TABLE sessions (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id            text NOT NULL,
    title              text NOT NULL DEFAULT '',
    favorite           boolean NOT NULL DEFAULT false,
    metadata           jsonb NOT NULL DEFAULT '{}'::jsonb,
    message_count      integer NOT NULL DEFAULT 0,
    -- last_seq is bumped under this row's lock: it orders every writer, on any replica.
    last_seq           bigint NOT NULL DEFAULT 0,
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    total_tokens       bigint NOT NULL DEFAULT 0,
    expires_at         timestamptz,
    last_message_at    timestamptz,
    -- coalesce(last_message_at, created_at), kept as a column so lists can use an index
    activity_at        timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_tenant_activity ON sessions (tenant_id, activity_at DESC, id DESC);
CREATE INDEX sessions_tenant_user_activity
    ON sessions (tenant_id, user_id, activity_at DESC, id DESC);
CREATE INDEX sessions_expires ON sessions (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE messages (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    session_id    uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq           bigint NOT NULL,
    parent_id     uuid,
    role          text NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content       text NOT NULL DEFAULT '',
    sender_id     text,
    context       jsonb,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
    usage         jsonb,
    feedback      jsonb,
    feedback_at   timestamptz,
    status        text NOT NULL DEFAULT 'complete'
                  CHECK (status IN ('complete', 'streaming', 'aborted', 'interrupted', 'deleted')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    CONSTRAINT messages_session_seq UNIQUE (session_id, seq)
);
-- Full-text search; the query must use the same expression.
CREATE INDEX messages_search ON messages USING gin (to_tsvector('english', content));
CREATE INDEX messages_tenant_created ON messages (tenant_id, created_at DESC, id DESC);
CREATE INDEX messages_feedback ON messages (tenant_id, feedback_at DESC, id DESC)
    WHERE feedback IS NOT NULL;
CREATE INDEX messages_streaming ON messages (status) WHERE status = 'streaming';

CREATE TABLE attachments (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL,
    session_id  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    message_id  uuid REFERENCES messages (id) ON DELETE SET NULL,
    name        text NOT NULL,
    mime        text NOT NULL,
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    object_key  text NOT NULL,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_session ON attachments (session_id);

-- An Idempotency-Key is claimed (locked_until) before the work and answered
-- (status_code, response) in the same transaction as the work itself.
CREATE TABLE idempotency_keys (
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    locked_until  timestamptz,
    status_code   integer,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid,
    actor       text NOT NULL,
    action      text NOT NULL,
    target      text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_id  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_created ON audit_log (tenant_id, created_at);
