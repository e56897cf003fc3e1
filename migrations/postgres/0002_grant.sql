-- How a credential obtains its tokens: from a refresh token or by the
-- client alone ('client_credentials'). As in SQLite, no CHECK constraint:
-- the store refuses a value it does not know when it reads the row.
ALTER TABLE credentials ADD COLUMN grant_type TEXT NOT NULL DEFAULT 'refresh_token';
-- What a client_credentials request asks for, as JSON:
-- {"scope": "...", "params": [["audience", "..."]]}; NULL for refresh tokens.
ALTER TABLE credentials ADD COLUMN grant_request TEXT;
