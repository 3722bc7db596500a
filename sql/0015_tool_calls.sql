-- Tool calls in the data model (docs/api.md, "Tool calls"). Both columns are nullable and
-- new, so the release before this one keeps writing rows (they get NULL) and reading
-- them (it never selects these columns).
-- tool_calls: an assistant message's calls, [{id, name, arguments}], or NULL.
-- tool_call_id: on a `tool` message, the id of the call it answers, else NULL.
-- A sealed row (an encrypted tenant's) keeps both inside `sealed` with its content and
-- leaves these columns NULL: call names and arguments are conversation content.
ALTER TABLE messages ADD COLUMN tool_calls jsonb;
ALTER TABLE messages ADD COLUMN tool_call_id text;
