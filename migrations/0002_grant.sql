-- How a credential obtains its tokens: from a refresh token (every
-- credential before this migration) or by the client alone.
ALTER TABLE credentials ADD COLUMN grant_type TEXT NOT NULL DEFAULT 'refresh_token'
    CHECK (grant_type IN ('refresh_token', 'client_credentials'));
-- What a client_credentials request asks for, as JSON:
-- {"scope": "...", "params": [["audience", "..."]]}; NULL for refresh tokens.
ALTER TABLE credentials ADD COLUMN grant_request TEXT;
