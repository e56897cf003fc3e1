-- One row per credential. Times are Unix milliseconds (wall clock).
CREATE TABLE credentials (
    name               TEXT    PRIMARY KEY NOT NULL,
    provider           TEXT    NOT NULL,
    -- Bumped whenever the credential is replaced, so a refresh that was in
    -- flight for an older generation cannot overwrite the new tokens.
    generation         INTEGER NOT NULL DEFAULT 1,
    refresh_token      TEXT,
    access_token       TEXT,
    token_type         TEXT    NOT NULL DEFAULT 'Bearer',
    scope              TEXT,
    expires_at         INTEGER,
    lifetime_source    TEXT,
    refresh_expires_at INTEGER,
    -- Every other field of the last token response (id_token, jti, ...).
    extra              TEXT    NOT NULL DEFAULT '{}',
    state              TEXT    NOT NULL DEFAULT 'active'
                               CHECK (state IN ('active', 'needs_reauth')),
    last_error         TEXT,
    -- Set durably before a refresh request is sent, cleared with its result:
    -- a value found at start-up means the daemon died mid-refresh.
    refresh_started_at INTEGER,
    last_refresh_at    INTEGER,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
) STRICT;
