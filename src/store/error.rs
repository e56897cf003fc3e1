//! The store's one error type, [`StoreError`]: each variant says what the
//! caller (the daemon at start-up, a refresh job, `tokend rekey`) must do.

use std::path::PathBuf;
use std::sync::Arc;

use crate::fsguard::UnsafeFile;
use crate::seal::SealError;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file or its directory could not be prepared.
    #[error("cannot prepare database file {path}: {reason}; check that the directory exists and is writable by this user")]
    Prepare {
        /// The database path.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// A migration failed.
    #[error("cannot migrate database {path}: {reason}; restore a backup or move the file aside")]
    Migrate {
        /// The database path.
        path: PathBuf,
        /// Why.
        reason: sqlx::migrate::MigrateError,
    },
    /// A query failed (disk full, read-only file system, corruption...).
    #[error("database error: {0}")]
    Sqlx(sqlx::Error),
    /// The file exists but is not a tokend database this version can use;
    /// it was left untouched.
    #[error(
        "{path} {reason}; tokend left it untouched: move it aside or point --database elsewhere"
    )]
    Unusable {
        /// The database path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A row holds a value this version cannot read.
    #[error("database row for credential {name} is unreadable: {reason}")]
    Corrupt {
        /// The credential.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A sealed token cannot be opened: no key, another key, or altered.
    #[error("credential {name}: {column} is {reason}")]
    Sealed {
        /// The credential.
        name: String,
        /// The column (`refresh_token`, `access_token`, `id_token`).
        column: &'static str,
        /// Why it does not open.
        reason: SealError,
    },
    /// Another process holds the database (a running daemon, another rekey).
    #[error("{path} is in use by {holder}: stop the daemon first (e.g. `systemctl stop tokend`) and try again; nothing was changed")]
    InUse {
        /// The database path.
        path: PathBuf,
        /// Who holds it: `tokend pid N` from the lock file, else "another process".
        holder: String,
    },
    /// The database, a file beside it or a directory above it could be read
    /// or replaced by another user; nothing was opened.
    #[error("refusing the database {path}: {reason}")]
    Unsafe {
        /// The database path.
        path: PathBuf,
        /// What is wrong.
        reason: UnsafeFile,
    },
    /// The PostgreSQL server could not be reached or refused the login.
    #[error("cannot connect to the PostgreSQL database {database}: {reason}; {hint}")]
    PgConnect {
        /// The database, as a URL without secrets.
        database: String,
        /// Why.
        reason: sqlx::Error,
        /// What to check.
        hint: &'static str,
    },
    /// Another daemon owns the PostgreSQL database.
    #[error("the PostgreSQL database {database} is in use by another tokend, {holder}: several instances on one database are not supported yet; stop that one, or give this one a database of its own")]
    PgInUse {
        /// The database, as a URL without secrets.
        database: String,
        /// Who holds it, from `pg_stat_activity`.
        holder: String,
    },
    /// The PostgreSQL database is not one this version can use; it was left
    /// untouched.
    #[error("the PostgreSQL database {database} {reason}")]
    PgUnusable {
        /// The database, as a URL without secrets.
        database: String,
        /// What is wrong with it.
        reason: String,
    },
    /// This daemon's session holding the PostgreSQL database's ownership
    /// lock has ended; no refresh starts until it is taken back.
    #[error("this daemon no longer holds the PostgreSQL database's ownership lock (its session ended): the refresh waits until the lock is taken back")]
    PgLockLost,
    /// The start-up scan of the credentials failed.
    #[error("cannot read the credentials from the database: {0}; check the file with `sqlite3 FILE 'PRAGMA integrity_check'` or restore a backup")]
    Load(String),
    /// A grouped commit failed: every request that was in it gets the same
    /// error, shown as it is.
    #[error(transparent)]
    Shared(Arc<StoreError>),
}

impl StoreError {
    /// Whether this daemon no longer owns its PostgreSQL database, so must
    /// not send a refresh ([`StoreError::PgLockLost`], also inside a shared
    /// group-commit error).
    pub(crate) fn is_ownership_lost(&self) -> bool {
        match self {
            StoreError::PgLockLost => true,
            StoreError::Shared(e) => e.is_ownership_lost(),
            _ => false,
        }
    }
}

// By hand rather than `#[from]`, which would also make the cause the error's
// `source()` and print it twice in `{:#}` chains.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Sqlx(e)
    }
}
