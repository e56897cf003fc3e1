//! The SQLite store: every SQL statement in tokend lives here and only here.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a commit has
//! reached the disk (fsync of the WAL) before any call here returns `Ok`. That
//! is what lets the refresher promise that a rotated refresh token is durable
//! before the access token that came with it is served. Queries are runtime
//! `sqlx::query` calls mapped by hand, so no `.sqlx/` offline data is needed
//! to build.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use crate::credential::{Credential, State};
use crate::token::{LifetimeSource, Secret};

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
}

// By hand rather than `#[from]`, which would also make the cause the error's
// `source()` and print it twice in `{:#}` chains.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Sqlx(e)
    }
}

/// Handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating with mode 0600 if needed) and migrates the database.
    /// An existing file is inspected read-only first: a corrupt file, another
    /// program's database or one written by a newer tokend is refused
    /// without being modified.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        inspect_existing(path).await?;
        prepare_file(path).map_err(|reason| StoreError::Prepare {
            path: path.to_path_buf(),
            reason,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Our own writes take milliseconds; a longer lock is a fault
            // (a backup, another process) better retried than waited out.
            .busy_timeout(Duration::from_secs(1))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|reason| StoreError::Migrate {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(Store { pool })
    }

    /// Every credential, for start-up.
    pub async fn load_all(&self) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query("SELECT * FROM credentials ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Inserts or replaces a credential, bumping its generation so a refresh
    /// still in flight for the old one cannot overwrite it. Returns the stored
    /// generation.
    pub async fn replace(&self, c: &Credential) -> Result<i64, StoreError> {
        let query = sqlx::query(
            "INSERT INTO credentials (name, provider, generation, refresh_token, access_token,
                token_type, scope, expires_at, lifetime_source, refresh_expires_at, extra, state,
                last_error, refresh_started_at, last_refresh_at, created_at, updated_at)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15)
             ON CONFLICT (name) DO UPDATE SET
                provider = excluded.provider, generation = generation + 1,
                refresh_token = excluded.refresh_token, access_token = excluded.access_token,
                token_type = excluded.token_type, scope = excluded.scope,
                expires_at = excluded.expires_at, lifetime_source = excluded.lifetime_source,
                refresh_expires_at = excluded.refresh_expires_at, extra = excluded.extra,
                state = excluded.state, last_error = excluded.last_error,
                refresh_started_at = excluded.refresh_started_at,
                last_refresh_at = excluded.last_refresh_at, updated_at = excluded.updated_at
             RETURNING generation",
        )
        .bind(&c.name)
        .bind(&c.provider);
        let row = bind_state(query, c)
            .bind(c.created_at)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("generation")?)
    }

    /// Records durably that a refresh of this generation is about to be sent.
    /// Returns false if the credential was replaced or removed meanwhile.
    pub async fn mark_refresh_started(
        &self,
        name: &str,
        generation: i64,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE credentials SET refresh_started_at = ?3, updated_at = ?3
             WHERE name = ?1 AND generation = ?2",
        )
        .bind(name)
        .bind(generation)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Writes the outcome of a refresh (new tokens, or a new state and error)
    /// in one durable transaction. Returns false, writing nothing, if the
    /// credential was replaced or removed since the refresh began.
    pub async fn save_outcome(&self, c: &Credential) -> Result<bool, StoreError> {
        let query = sqlx::query(
            "UPDATE credentials SET refresh_token = ?3, access_token = ?4, token_type = ?5,
                scope = ?6, expires_at = ?7, lifetime_source = ?8, refresh_expires_at = ?9,
                extra = ?10, state = ?11, last_error = ?12, refresh_started_at = ?13,
                last_refresh_at = ?14, updated_at = ?15
             WHERE name = ?1 AND generation = ?2",
        )
        .bind(&c.name)
        .bind(c.generation);
        let done = bind_state(query, c)
            .bind(c.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a credential. Returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM credentials WHERE name = ?1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Checkpoints the WAL and closes every connection.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }
}

/// Checks, read-only, that an existing non-empty file at `path` is a
/// healthy tokend database this version knows how to migrate.
async fn inspect_existing(path: &Path) -> Result<(), StoreError> {
    let unusable = |reason: String| StoreError::Unusable {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => {}
        _ => return Ok(()),
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut conn = sqlx::ConnectOptions::connect(&options)
        .await
        .map_err(|e| unusable(format!("cannot be opened as SQLite ({e})")))?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| unusable(format!("is not a SQLite database or is corrupt ({e})")))?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| unusable(format!("is corrupt ({e})")))?;
    if check != "ok" {
        return Err(unusable(format!("is corrupt (quick_check: {check})")));
    }
    let ours = tables.iter().any(|t| t == "_sqlx_migrations");
    if !tables.is_empty() && !ours {
        return Err(unusable(format!(
            "is another program's database (tables: {})",
            tables.join(", ")
        )));
    }
    if ours {
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await?;
        let known = sqlx::migrate!("./migrations")
            .iter()
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        if let Some(v) = newest.filter(|v| *v > known) {
            return Err(unusable(format!(
                "was written by a newer tokend (schema {v}; this version knows up to {known}); upgrade tokend or restore a backup"
            )));
        }
    }
    let _ = sqlx::Connection::close(conn).await;
    Ok(())
}

/// Creates the database file with mode 0600 (and its directory with 0700) so
/// SQLite, which gives the WAL and shm files the database's mode, never
/// creates anything readable by others. Tightens a file found too open.
fn prepare_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "database file was readable by others; setting mode 0600"
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds parameters ?3 to ?14: the credential's tokens and state, in the
/// column order both `replace` and `save_outcome` use.
fn bind_state<'q>(query: Query<'q>, c: &'q Credential) -> Query<'q> {
    query
        .bind(c.refresh_token.as_ref().map(Secret::expose))
        .bind(c.access_token.as_ref().map(Secret::expose))
        .bind(&c.token_type)
        .bind(&c.scope)
        .bind(c.expires_at)
        .bind(c.lifetime_source.map(LifetimeSource::as_str))
        .bind(c.refresh_expires_at)
        .bind(Value::Object(c.extra.clone()).to_string())
        .bind(c.state.as_str())
        .bind(&c.last_error)
        .bind(c.refresh_started_at)
        .bind(c.last_refresh_at)
}

fn from_row(row: &SqliteRow) -> Result<Credential, StoreError> {
    let name: String = row.try_get("name")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        name: name.clone(),
        reason,
    };
    let state: String = row.try_get("state")?;
    let extra: String = row.try_get("extra")?;
    let extra: Map<String, Value> =
        serde_json::from_str(&extra).map_err(|e| corrupt(format!("extra is not JSON: {e}")))?;
    let secret = |col: &str| -> Result<Option<Secret>, sqlx::Error> {
        Ok(row.try_get::<Option<String>, _>(col)?.map(Secret::new))
    };
    Ok(Credential {
        provider: row.try_get("provider")?,
        generation: row.try_get("generation")?,
        refresh_token: secret("refresh_token")?,
        access_token: secret("access_token")?,
        token_type: row.try_get("token_type")?,
        scope: row.try_get("scope")?,
        expires_at: row.try_get("expires_at")?,
        lifetime_source: row
            .try_get::<Option<String>, _>("lifetime_source")?
            .map(|s| LifetimeSource::parse(&s)),
        refresh_expires_at: row.try_get("refresh_expires_at")?,
        extra,
        state: State::from_str(&state).map_err(corrupt)?,
        last_error: row.try_get("last_error")?,
        refresh_started_at: row.try_get("refresh_started_at")?,
        last_refresh_at: row.try_get("last_refresh_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_is_private_and_rows_round_trip_with_generation_guard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/tokend.db");
        let store = Store::open(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut c = Credential::new("a", "p", Some(Secret::new("rt-1")), 100);
        c.extra.insert("id_token".into(), "idt".into());
        c.generation = store.replace(&c).await.unwrap();
        assert_eq!(c.generation, 1);
        assert!(store.mark_refresh_started("a", 1, 200).await.unwrap());

        let loaded = store.load_all().await.unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].refresh_started_at, Some(200));
        assert_eq!(loaded[0].extra["id_token"], "idt");

        // A replacement bumps the generation; the old generation's write is refused.
        let gen2 = store.replace(&c).await.unwrap();
        assert_eq!(gen2, 2);
        c.refresh_token = Some(Secret::new("rt-stale"));
        assert!(!store.save_outcome(&c).await.unwrap());
        c.generation = gen2;
        assert!(store.save_outcome(&c).await.unwrap());
        store.close().await;

        let store = Store::open(&path).await.unwrap();
        let loaded = store.load_all().await.unwrap();
        assert_eq!(
            loaded[0].refresh_token.as_ref().unwrap().expose(),
            "rt-stale"
        );
        assert!(store.delete("a").await.unwrap());
        assert!(!store.delete("a").await.unwrap());
    }

    async fn refused_untouched(path: &Path, expect: &str) {
        let before = std::fs::read(path).unwrap();
        let err = Store::open(path).await.unwrap_err();
        assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
        assert!(err.to_string().contains(expect), "{err}");
        assert_eq!(std::fs::read(path).unwrap(), before, "file modified");
        let wal = path.with_extension("db-wal");
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    }

    #[tokio::test]
    async fn corrupt_foreign_and_newer_databases_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5au8; 8192]).unwrap();
        refused_untouched(&garbage, "not a SQLite database").await;

        let foreign = dir.path().join("foreign.db");
        {
            let opts = SqliteConnectOptions::new()
                .filename(&foreign)
                .create_if_missing(true);
            let pool = SqlitePool::connect_with(opts).await.unwrap();
            sqlx::query("CREATE TABLE mail (id INTEGER)")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        refused_untouched(&foreign, "another program's database (tables: mail)").await;

        let newer = dir.path().join("newer.db");
        Store::open(&newer).await.unwrap().close().await;
        {
            let opts = SqliteConnectOptions::new().filename(&newer);
            let pool = SqlitePool::connect_with(opts).await.unwrap();
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
                 VALUES (99, 'future', 1, x'00', 0)",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        refused_untouched(&newer, "newer tokend (schema 99").await;
    }

    #[tokio::test]
    async fn too_open_database_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(&path).await.unwrap().close().await;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
