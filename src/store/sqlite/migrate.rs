//! The schema: the migrations under `migrations/sqlite/`, embedded once.
//!
//! Every open runs [`MIGRATOR`], and the read-only inspection before it asks
//! [`newest_known`] so that a database written by a newer tokend is refused
//! instead of being run against a schema it does not know.

use sqlx::migrate::Migrator;

/// The embedded migrations (append-only files under `migrations/sqlite/`).
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The newest schema version this build knows.
pub(super) fn newest_known() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}
