-- The last metadata document fetched for each provider configured by its
-- issuer, so that a restart works while the issuer is down. It holds no
-- secret. Times are Unix milliseconds.
CREATE TABLE discovery (
    provider   TEXT    PRIMARY KEY NOT NULL,
    issuer     TEXT    NOT NULL,
    document   TEXT    NOT NULL,
    fetched_at BIGINT  NOT NULL
);
