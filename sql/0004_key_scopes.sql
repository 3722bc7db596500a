-- What an API key may do (docs/api.md, "Credentials"): `admin` reaches everything of
-- its tenant, `write` every session and message but not user erasure, `read` only GET
-- routes. Keys made before scopes existed reached everything: they become `admin`.
ALTER TABLE api_keys
    ADD COLUMN scope text NOT NULL DEFAULT 'admin'
    CONSTRAINT api_keys_scope CHECK (scope IN ('admin', 'write', 'read'));
