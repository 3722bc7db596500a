-- A message's attachments are listed in the order its attachment_ids named them
-- (docs/api.md, 1.1): the position is kept when the attachment is linked.
-- Numbered 0007: 0006 is taken by the rate-limit overrides of the same release.
ALTER TABLE attachments ADD COLUMN link_pos int;
-- a session's attachments are listed by (created_at, id), optionally by status
CREATE INDEX attachments_session_list ON attachments (session_id, created_at, id);
