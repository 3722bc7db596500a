-- Streaming: single-use WebSocket tickets, and a heartbeat on streamed messages.

-- A browser cannot set X-Api-Key on a WebSocket; it trades its key for a ticket
-- (one use, 60 s, bound to one tenant and session). Only sha256(ticket) is stored.
-- Kept in Postgres so that a ticket made on one replica works on any other.
CREATE TABLE ws_tickets (
    ticket_hash  bytea PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    session_id   uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    key_id       text NOT NULL,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ws_tickets_expires ON ws_tickets (expires_at);

-- The replica that holds a streamed answer touches this while its producer is
-- alive; the sweeper interrupts streaming rows whose owner stopped touching them
-- (the replica died), so no message stays `streaming` forever.
ALTER TABLE messages ADD COLUMN stream_seen_at timestamptz;
