-- One row per credential. Times are Unix milliseconds (wall clock). The
-- same schema as SQLite's migrations/sqlite/, version for version; integer
-- columns are BIGINT to hold milliseconds.
CREATE TABLE credentials (
    name               TEXT    PRIMARY KEY NOT NULL,
    provider           TEXT    NOT NULL,
    -- Bumped whenever the credential is replaced, so a refresh that was in
    -- flight for an older generation cannot overwrite the new tokens.
    generation         BIGINT  NOT NULL DEFAULT 1,
    refresh_token      TEXT,
    access_token       TEXT,
    token_type         TEXT    NOT NULL DEFAULT 'Bearer',
    scope              TEXT,
    expires_at         BIGINT,
    lifetime_source    TEXT,
    refresh_expires_at BIGINT,
    -- Every other field of the last token response (id_token, jti, ...), as
    -- JSON text (the id_token sealed inside it with a key).
    extra              TEXT    NOT NULL DEFAULT '{}',
    state              TEXT    NOT NULL DEFAULT 'active'
                               CHECK (state IN ('active', 'needs_reauth')),
    last_error         TEXT,
    -- Set durably before a refresh request is sent, cleared with its result:
    -- a value found at start-up means the daemon died mid-refresh.
    refresh_started_at BIGINT,
    last_refresh_at    BIGINT,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL
);
