-- Attachments are found by message (a tombstone erases them; deleting a message row
-- sets their message_id to NULL through the foreign key) and swept while pending.
CREATE INDEX attachments_message ON attachments (message_id) WHERE message_id IS NOT NULL;
CREATE INDEX attachments_pending ON attachments (created_at) WHERE status = 'pending';
