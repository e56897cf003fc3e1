//! The SQLite store: every SQL statement in tokend lives here and only here.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a commit has
//! reached the disk (fsync of the WAL) before any call here returns `Ok`. That
//! is what lets the refresher promise that a rotated refresh token is durable
//! before the access token that came with it is served. Queries are runtime
//! `sqlx::query` calls mapped by hand, so no `.sqlx/` offline data is needed
//! to build.
//!
//! With a key ([`Store::open_with`]), the refresh token, the access token and
//! the `id_token` kept in `extra` are sealed on every write and opened on
//! every read (see [`crate::seal`]); plaintext values written before a key
//! was configured are read as they are and sealed on their next write.
//! Deleted content is overwritten (`secure_delete`), so a value replaced by
//! its sealed form does not linger in the file's free space.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};

use crate::credential::{Credential, Loaded, State};
use crate::fsguard::{self, Create, UnsafeFile};

use crate::seal::{self, Key, SealError};
use crate::token::{LifetimeSource, Secret};

mod batch;
mod scan;

pub use batch::{GroupCommit, GroupStats};

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
    /// The start-up scan of the credentials failed.
    #[error("cannot read the credentials from the database: {0}; check the file with `sqlite3 FILE 'PRAGMA integrity_check'` or restore a backup")]
    Load(String),
    /// A grouped commit failed: every request that was in it gets the same
    /// error, shown as it is.
    #[error(transparent)]
    Shared(Arc<StoreError>),
}

/// What [`Store::rekey`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rekeyed {
    /// Credentials rewritten.
    pub credentials: usize,
    /// Of those, how many held sealed values before.
    pub were_sealed: usize,
    /// Of those, how many held plaintext values before (and no sealed one).
    pub were_plaintext: usize,
}

// By hand rather than `#[from]`, which would also make the cause the error's
// `source()` and print it twice in `{:#}` chains.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Sqlx(e)
    }
}

impl From<scan::ScanError> for StoreError {
    fn from(e: scan::ScanError) -> Self {
        StoreError::Load(e.0)
    }
}

/// Handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    key: Option<Arc<Key>>,
    /// The database's lock, held until [`Store::close`].
    lock: Arc<std::sync::Mutex<Option<DbLock>>>,
}

/// The exclusive `flock` on `DATABASE.lock` that makes one process (a daemon
/// or `tokend rekey`) the database's only user. The file holds the holder's
/// pid, so a refused process can name it. The kernel drops the lock when the
/// process dies, however it dies.
#[derive(Debug)]
struct DbLock {
    _file: std::fs::File,
}

impl DbLock {
    fn acquire(database: &Path) -> Result<DbLock, StoreError> {
        use std::io::{Read, Seek, Write};
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let unsafe_file = |reason| StoreError::Unsafe {
            path: database.to_path_buf(),
            reason,
        };
        let prepare = |reason| StoreError::Prepare {
            path: path.clone(),
            reason,
        };
        let mut file = fsguard::open_private(&path, Create::IfMissing)
            .map_err(unsafe_file)?
            .ok_or_else(|| prepare(std::io::ErrorKind::NotFound.into()))?;
        give_to_directory_owner(&file, fsguard::parent_dir(database)).map_err(prepare)?;
        if !fsguard::try_lock_exclusive(&file).map_err(prepare)? {
            let mut text = String::new();
            let _ = (&mut file).take(32).read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("tokend pid {pid}, which holds {}", path.display()),
                Err(_) => format!("another tokend, which holds {}", path.display()),
            };
            return Err(StoreError::InUse {
                path: database.to_path_buf(),
                holder,
            });
        }
        file.set_len(0).map_err(prepare)?;
        file.rewind().map_err(prepare)?;
        writeln!(file, "{}", std::process::id()).map_err(prepare)?;
        Ok(DbLock { _file: file })
    }
}

/// When root (`tokend rekey` on the system daemon's database) creates the
/// lock file, gives it to the owner of the directory, as SQLite does with
/// the `-wal` and `-shm`, so the daemon can open it afterwards.
fn give_to_directory_owner(file: &std::fs::File, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if fsguard::euid() != 0 {
        return Ok(());
    }
    let owner = std::fs::metadata(dir)?.uid();
    if file.metadata()?.uid() != owner && fsguard::trusted(owner) {
        std::os::unix::fs::fchown(file, Some(owner), None)?;
    }
    Ok(())
}

/// Everything done before SQLite sees the file: the directory rules, the
/// lock, and the database, `-wal` and `-shm` (if present) checked and
/// tightened. Creates a missing directory with mode 0700.
fn guard(path: &Path) -> Result<DbLock, StoreError> {
    let unsafe_file = |reason| StoreError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    let dir = fsguard::parent_dir(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|reason| StoreError::Prepare {
                path: path.to_path_buf(),
                reason,
            })?;
    }
    fsguard::check_private_dir(dir).map_err(unsafe_file)?;
    let lock = DbLock::acquire(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        fsguard::open_private(Path::new(&file), Create::No).map_err(unsafe_file)?;
    }
    Ok(lock)
}

impl Store {
    /// Opens (creating with mode 0600 if needed) and migrates the database,
    /// writing tokens unencrypted. An existing file is inspected read-only
    /// first: a corrupt file, another program's database or one written by a
    /// newer tokend is refused without being modified.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, None).await
    }

    /// As [`Store::open`], sealing tokens under `key` when there is one.
    pub async fn open_with(path: &Path, key: Option<Key>) -> Result<Store, StoreError> {
        let lock = guard(path)?;
        inspect_existing(path).await?;
        prepare_file(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Our own writes take milliseconds; a longer lock is a fault
            // (a backup, another process) better retried than waited out.
            .busy_timeout(Duration::from_secs(1))
            .foreign_keys(true)
            .pragma("secure_delete", "ON");
        // Connections are never retired, so the pool keeps at least the one
        // that connected (no `min_connections`: a second connection opened
        // beside the first while it turns on WAL would find the file
        // locked). Its lock on the file is what tells `tokend rekey` that a
        // daemon is running.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|reason| StoreError::Migrate {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(Store {
            pool,
            key: key.map(Arc::new),
            lock: Arc::new(std::sync::Mutex::new(Some(lock))),
        })
    }

    /// Every credential, in full (refresh tokens included). For tests and
    /// tools; the daemon streams lighter records with [`Store::load_each`].
    pub async fn load_all(&self) -> Result<Vec<Credential>, StoreError> {
        let rows = sqlx::query("SELECT * FROM credentials ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let key = self.key.as_deref();
        rows.iter().map(|row| from_row(row, key)).collect()
    }

    /// Streams every credential to `each`, for start-up, without its refresh
    /// token (only whether there is one) and without response extras other
    /// than the id_token: the daemon does not keep those in memory. Returns
    /// how many there were. Fails, naming the credential, if a sealed token
    /// does not open with this store's key (or without one).
    pub async fn load_each(&self, mut each: impl FnMut(Loaded)) -> Result<usize, StoreError> {
        let key = self.key.as_deref();
        let (mut count, mut plain) = (0, 0);
        let mut conn = self.pool.acquire().await?;
        let mut handle = conn.lock_handle().await?;
        // This blocks the runtime thread for the length of the scan (about
        // a second per 300k rows), which only happens before the socket
        // serves anything.
        scan::scan(
            handle.as_raw_handle(),
            "SELECT name, provider, generation, refresh_token, access_token,
                token_type, scope, expires_at, lifetime_source, refresh_expires_at,
                json_extract(extra, '$.id_token'), state, last_error, refresh_started_at,
                last_refresh_at, created_at, updated_at
             FROM credentials",
            |row| {
                let (loaded, plaintext) = loaded_from_columns(row, key)?;
                plain += usize::from(plaintext);
                count += 1;
                each(loaded);
                Ok::<_, StoreError>(())
            },
        )?;
        drop(handle);
        if key.is_some() && plain > 0 {
            tracing::warn!(
                tokend_credentials = plain,
                "{plain} credential(s) still have unencrypted tokens in the database; they are sealed on their next write, or run `tokend rekey` with the daemon stopped to seal them all now"
            );
        }
        Ok(count)
    }

    /// One credential in full, refresh token included; `None` if absent.
    pub async fn load(&self, name: &str) -> Result<Option<Credential>, StoreError> {
        let row = sqlx::query("SELECT * FROM credentials WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| from_row(&row, self.key.as_deref()))
            .transpose()
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
        let row = bind_state(query, c, self.key.as_deref())
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
        let done = bind_state(query, c, self.key.as_deref())
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

    /// Checkpoints the WAL, closes every connection and releases the lock.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }

    /// Re-seals every credential's tokens from `old` to `new` (`None`:
    /// plaintext) in one transaction, so a crash leaves either every row as
    /// it was or every row re-sealed. Plaintext values open with any key.
    /// Takes the database's lock file as a daemon does, and SQLite's
    /// exclusive lock, throughout; refuses ([`StoreError::InUse`]) if a
    /// daemon has the database open. Then
    /// compacts the file (`VACUUM`), so no old value survives in free pages.
    pub async fn rekey(
        path: &Path,
        old: Option<&Key>,
        new: Option<&Key>,
    ) -> Result<Rekeyed, StoreError> {
        let _lock = guard(path)?;
        inspect_existing(path).await?;
        let in_use = |e: sqlx::Error| {
            if is_busy(&e) {
                StoreError::InUse {
                    path: path.to_path_buf(),
                    holder: "another process (a running tokend daemon, or `tokend rekey`)".into(),
                }
            } else {
                StoreError::Sqlx(e)
            }
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .locking_mode(SqliteLockingMode::Exclusive)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(500))
            .pragma("secure_delete", "ON");
        let mut conn = sqlx::ConnectOptions::connect(&options)
            .await
            .map_err(in_use)?;
        // In exclusive locking mode the first write takes the file's lock and
        // keeps it until the connection closes.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .map_err(in_use)?;
        sqlx::query("COMMIT").execute(&mut conn).await?;
        sqlx::migrate!("./migrations")
            .run(&mut conn)
            .await
            .map_err(|reason| StoreError::Migrate {
                path: path.to_path_buf(),
                reason,
            })?;
        let mut tx = conn.begin().await?;
        let rows = sqlx::query(
            "SELECT name, refresh_token, access_token, extra FROM credentials ORDER BY name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut done = Rekeyed {
            credentials: 0,
            were_sealed: 0,
            were_plaintext: 0,
        };
        for row in &rows {
            let name: String = row.try_get("name")?;
            let mut sealed = false;
            let mut plain = false;
            let mut reseal = |column: &'static str,
                              value: Option<String>|
             -> Result<Option<String>, StoreError> {
                let Some(v) = value else { return Ok(None) };
                sealed |= seal::is_sealed(&v);
                plain |= !seal::is_sealed(&v);
                let opened =
                    seal::open(old, &v, column, &name).map_err(|reason| StoreError::Sealed {
                        name: name.clone(),
                        column,
                        reason,
                    })?;
                Ok(Some(seal::seal(new, &opened, column, &name)))
            };
            let refresh = reseal("refresh_token", row.try_get("refresh_token")?)?;
            let access = reseal("access_token", row.try_get("access_token")?)?;
            let extra: String = row.try_get("extra")?;
            let mut extra: Map<String, Value> =
                serde_json::from_str(&extra).map_err(|e| StoreError::Corrupt {
                    name: name.clone(),
                    reason: format!("extra is not JSON: {e}"),
                })?;
            if let Some(Value::String(id)) = extra.get_mut("id_token") {
                if let Some(v) = reseal("id_token", Some(std::mem::take(id)))? {
                    *id = v;
                }
            }
            sqlx::query(
                "UPDATE credentials SET refresh_token = ?2, access_token = ?3, extra = ?4
                 WHERE name = ?1",
            )
            .bind(&name)
            .bind(refresh)
            .bind(access)
            .bind(Value::Object(extra).to_string())
            .execute(&mut *tx)
            .await?;
            done.credentials += 1;
            if sealed {
                done.were_sealed += 1;
            } else if plain {
                done.were_plaintext += 1;
            }
        }
        tx.commit().await?;
        // Committed; what follows only scrubs old values from free space.
        for step in ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"] {
            if let Err(e) = sqlx::query(step).execute(&mut conn).await {
                tracing::warn!(
                    "rekey committed, but `{step}` failed ({e}): old values may linger in the file's free pages until SQLite reuses them"
                );
            }
        }
        let _ = conn.close().await;
        Ok(done)
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
    let in_use = || StoreError::InUse {
        path: path.to_path_buf(),
        holder: "another process (a running tokend daemon, or `tokend rekey`)".into(),
    };
    let mut conn =
        sqlx::ConnectOptions::connect(&options)
            .await
            .map_err(|e| match is_busy(&e) {
                true => in_use(),
                false => unusable(format!("cannot be opened as SQLite ({e})")),
            })?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| match is_busy(&e) {
                true => in_use(),
                false => unusable(format!("is not a SQLite database or is corrupt ({e})")),
            })?;
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

/// Creates the database file with mode 0600 (`O_NOFOLLOW`, its directory
/// already checked by [`guard`]) so SQLite, which gives the WAL and shm files
/// the database's mode, never creates anything readable by others.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    fsguard::open_private(path, Create::IfMissing)
        .map(drop)
        .map_err(|reason| StoreError::Unsafe {
            path: path.to_path_buf(),
            reason,
        })
}

/// Whether SQLite said another connection holds a lock (SQLITE_BUSY or
/// SQLITE_LOCKED, extended codes included).
fn is_busy(e: &sqlx::Error) -> bool {
    let code = match e {
        sqlx::Error::Database(db) => db.code(),
        _ => None,
    };
    code.and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds parameters ?3 to ?14: the credential's tokens and state, in the
/// column order both `replace` and `save_outcome` use. Tokens are sealed
/// under `key` when there is one.
fn bind_state<'q>(query: Query<'q>, c: &'q Credential, key: Option<&Key>) -> Query<'q> {
    let seal = |column: &str, s: &Secret| seal::seal(key, s.expose(), column, &c.name);
    let mut extra = c.extra.clone();
    if let Some(Value::String(id)) = extra.get_mut("id_token") {
        *id = seal::seal(key, id, "id_token", &c.name);
    }
    query
        .bind(c.refresh_token.as_ref().map(|s| seal("refresh_token", s)))
        .bind(c.access_token.as_ref().map(|s| seal("access_token", s)))
        .bind(&c.token_type)
        .bind(&c.scope)
        .bind(c.expires_at)
        .bind(c.lifetime_source.map(LifetimeSource::as_str))
        .bind(c.refresh_expires_at)
        .bind(Value::Object(extra).to_string())
        .bind(c.state.as_str())
        .bind(&c.last_error)
        .bind(c.refresh_started_at)
        .bind(c.last_refresh_at)
}

fn from_row(row: &SqliteRow, key: Option<&Key>) -> Result<Credential, StoreError> {
    let name: String = row.try_get("name")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        name: name.clone(),
        reason,
    };
    let open = |column: &'static str, stored: &str| {
        seal::open(key, stored, column, &name).map_err(|reason| StoreError::Sealed {
            name: name.clone(),
            column,
            reason,
        })
    };
    let state: String = row.try_get("state")?;
    let extra: String = row.try_get("extra")?;
    let mut extra: Map<String, Value> =
        serde_json::from_str(&extra).map_err(|e| corrupt(format!("extra is not JSON: {e}")))?;
    if let Some(Value::String(id)) = extra.get_mut("id_token") {
        *id = open("id_token", id)?;
    }
    let secret = |column: &'static str| -> Result<Option<Secret>, StoreError> {
        row.try_get::<Option<String>, _>(column)?
            .map(|v| open(column, &v).map(Secret::new))
            .transpose()
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

/// Decodes a row of [`Store::load_each`]'s query. Also says whether the
/// row still holds a token in clear.
fn loaded_from_columns(
    row: &scan::Columns<'_>,
    key: Option<&Key>,
) -> Result<(Loaded, bool), StoreError> {
    let name = row.text(0)?.unwrap_or_default().to_string();
    let corrupt = |reason: String| StoreError::Corrupt {
        name: name.clone(),
        reason,
    };
    let open = |column: &'static str, stored: &str| {
        seal::open(key, stored, column, &name).map_err(|reason| StoreError::Sealed {
            name: name.clone(),
            column,
            reason,
        })
    };
    let required = |i, what: &str| row.int(i).ok_or_else(|| corrupt(format!("{what} is NULL")));
    // The refresh token is opened only to prove it opens (a sealed value
    // that does not must stop start-up, not the first refresh), then dropped.
    let refresh_token = row.text(3)?;
    let access_token = row.text(4)?;
    let plaintext = [refresh_token, access_token]
        .into_iter()
        .flatten()
        .any(|v| !seal::is_sealed(v));
    let has_refresh_token = match refresh_token {
        Some(rt) => open("refresh_token", rt).map(|_| true)?,
        None => false,
    };
    let access_token = access_token
        .map(|v| open("access_token", v).map(Secret::new))
        .transpose()?;
    let mut extra = Map::new();
    if let Some(id) = row.text(10)? {
        extra.insert("id_token".into(), Value::String(open("id_token", id)?));
    }
    let state = State::from_str(row.text(11)?.unwrap_or_default()).map_err(&corrupt)?;
    let cred = Credential {
        provider: row.text(1)?.unwrap_or_default().to_string(),
        generation: required(2, "generation")?,
        refresh_token: None,
        access_token,
        token_type: row.text(5)?.unwrap_or("Bearer").to_string(),
        scope: row.text(6)?.map(str::to_string),
        expires_at: row.int(7),
        lifetime_source: row.text(8)?.map(LifetimeSource::parse),
        refresh_expires_at: row.int(9),
        extra,
        state,
        last_error: row.text(12)?.map(str::to_string),
        refresh_started_at: row.int(13),
        last_refresh_at: row.int(14),
        created_at: required(15, "created_at")?,
        updated_at: required(16, "updated_at")?,
        name: name.clone(),
    };
    let loaded = Loaded {
        cred,
        has_refresh_token,
    };
    Ok((loaded, plaintext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

    /// The token columns and extra of every row, as stored.
    async fn raw_rows(path: &Path) -> Vec<(String, Option<String>, Option<String>, String)> {
        let opts = SqliteConnectOptions::new().filename(path).read_only(true);
        let pool = SqlitePool::connect_with(opts).await.unwrap();
        let rows = sqlx::query(
            "SELECT name, refresh_token, access_token, extra FROM credentials ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows.iter()
            .map(|r| {
                (
                    r.get("name"),
                    r.get("refresh_token"),
                    r.get("access_token"),
                    r.get("extra"),
                )
            })
            .collect()
    }

    /// Every byte of the database and its WAL, lossily as text.
    fn file_bytes(path: &Path) -> String {
        let mut all = std::fs::read(path).unwrap();
        if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
            all.extend(wal);
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    fn cred(name: &str, rt: &str, at: &str, id_token: &str) -> Credential {
        let mut c = Credential::new(name, "p", Some(Secret::new(rt)), 100);
        c.access_token = Some(Secret::new(at));
        c.extra.insert("id_token".into(), id_token.into());
        c.extra.insert("jti".into(), "not-secret".into());
        c
    }

    #[tokio::test]
    async fn with_a_key_tokens_are_sealed_on_disk_and_open_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let key = Key::from_bytes([7; 32]);
        let store = Store::open_with(&path, Some(Key::from_bytes([7; 32])))
            .await
            .unwrap();
        let mut c = cred("mail", "rt-secret-one", "at-secret-one", "idt-secret-one");
        c.generation = store.replace(&c).await.unwrap();
        c.refresh_token = Some(Secret::new("rt-secret-two"));
        c.access_token = Some(Secret::new("at-secret-two"));
        assert!(store.save_outcome(&c).await.unwrap());

        let loaded = store.load_all().await.unwrap();
        assert_eq!(
            loaded[0].refresh_token.as_ref().unwrap().expose(),
            "rt-secret-two"
        );
        assert_eq!(
            loaded[0].access_token.as_ref().unwrap().expose(),
            "at-secret-two"
        );
        assert_eq!(loaded[0].extra["id_token"], "idt-secret-one");
        assert_eq!(loaded[0].extra["jti"], "not-secret");

        let (_, rt, at, extra) = raw_rows(&path).await.remove(0);
        let extra: Map<String, Value> = serde_json::from_str(&extra).unwrap();
        let id = extra["id_token"].as_str().unwrap();
        for (column, v, plain) in [
            ("refresh_token", rt.unwrap(), "rt-secret-two"),
            ("access_token", at.unwrap(), "at-secret-two"),
            ("id_token", id.to_string(), "idt-secret-one"),
        ] {
            assert!(seal::is_sealed(&v), "{column}: {v}");
            assert_eq!(key.open(&v, column, "mail").unwrap(), plain);
        }
        assert_eq!(extra["jti"], "not-secret");
        let bytes = file_bytes(&path);
        assert!(bytes.contains("tk1:"));
        assert!(!bytes.contains("-secret-"), "plaintext on disk");
        store.close().await;
        assert!(!file_bytes(&path).contains("-secret-"), "plaintext on disk");
    }

    #[tokio::test]
    async fn sealed_rows_without_the_key_or_with_another_fail_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = Store::open_with(&path, Some(Key::random())).await.unwrap();
        store
            .replace(&cred("mail", "rt", "at", "idt"))
            .await
            .unwrap();
        store.close().await;

        let store = Store::open(&path).await.unwrap();
        let err = store.load_all().await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Sealed {
                    reason: SealError::NoKey,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("credential mail: "), "{msg}");
        assert!(
            msg.contains("is encrypted, but no database encryption key is configured"),
            "{msg}"
        );
        store.close().await;

        let store = Store::open_with(&path, Some(Key::random())).await.unwrap();
        let err = store.load_all().await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Sealed {
                    reason: SealError::WrongKey { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("encrypted under a different key"),
            "{err}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn plaintext_rows_are_read_and_sealed_on_their_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = Store::open(&path).await.unwrap();
        let mut c = cred("old", "rt-plain", "at-plain", "idt-plain");
        c.generation = store.replace(&c).await.unwrap();
        store.close().await;
        let (_, rt, _, _) = raw_rows(&path).await.remove(0);
        assert_eq!(rt.as_deref(), Some("rt-plain"));

        let store = Store::open_with(&path, Some(Key::random())).await.unwrap();
        let loaded = store.load_all().await.unwrap();
        assert_eq!(
            loaded[0].refresh_token.as_ref().unwrap().expose(),
            "rt-plain"
        );
        assert_eq!(loaded[0].extra["id_token"], "idt-plain");
        c.access_token = Some(Secret::new("at-next"));
        assert!(store.save_outcome(&c).await.unwrap());
        let (_, rt, at, extra) = raw_rows(&path).await.remove(0);
        assert!(seal::is_sealed(&rt.unwrap()));
        assert!(seal::is_sealed(&at.unwrap()));
        assert!(extra.contains("\"id_token\":\"tk1:"), "{extra}");
        assert_eq!(
            store.load_all().await.unwrap()[0]
                .refresh_token
                .as_ref()
                .unwrap()
                .expose(),
            "rt-plain"
        );
        store.close().await;
        // secure_delete: the replaced plaintext does not linger in free space.
        assert!(!file_bytes(&path).contains("rt-plain"));
    }

    #[tokio::test]
    async fn rekey_reseals_all_rows_or_none_and_refuses_an_open_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let a = || Some(Key::from_bytes([1; 32]));
        let b = || Some(Key::from_bytes([2; 32]));
        // "p" is plaintext from before encryption, "q" and "r" sealed under a.
        let store = Store::open(&path).await.unwrap();
        store
            .replace(&cred("p", "rt-p", "at-p", "id-p"))
            .await
            .unwrap();
        store.close().await;
        let store = Store::open_with(&path, a()).await.unwrap();
        store
            .replace(&cred("q", "rt-q", "at-q", "id-q"))
            .await
            .unwrap();
        store
            .replace(&cred("r", "rt-r", "at-r", "id-r"))
            .await
            .unwrap();

        // A store (a daemon) has the file open: refused, nothing changed.
        let before = raw_rows(&path).await;
        let err = Store::rekey(&path, a().as_ref(), b().as_ref())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("stop the daemon first"), "{err}");
        assert_eq!(raw_rows(&path).await, before);
        store.close().await;

        let done = Store::rekey(&path, a().as_ref(), b().as_ref())
            .await
            .unwrap();
        assert_eq!(
            done,
            Rekeyed {
                credentials: 3,
                were_sealed: 2,
                were_plaintext: 1
            }
        );
        let store = Store::open_with(&path, b()).await.unwrap();
        let loaded = store.load_all().await.unwrap();
        let tokens: Vec<_> = loaded
            .iter()
            .map(|c| {
                (
                    c.refresh_token.as_ref().unwrap().expose(),
                    c.extra["id_token"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            tokens,
            [("rt-p", "id-p"), ("rt-q", "id-q"), ("rt-r", "id-r")]
        );
        store.close().await;
        assert!(
            !file_bytes(&path).contains("rt-p"),
            "VACUUM left the plaintext"
        );
        let store = Store::open_with(&path, a()).await.unwrap();
        assert!(store.load_all().await.is_err(), "old key still opens");
        store.close().await;

        // One row under a third key: the whole rekey is refused, naming it,
        // and every row stays as it was.
        let store = Store::open_with(&path, Some(Key::random())).await.unwrap();
        store
            .replace(&cred("z", "rt-z", "at-z", "id-z"))
            .await
            .unwrap();
        store.close().await;
        let before = raw_rows(&path).await;
        let err = Store::rekey(&path, b().as_ref(), a().as_ref())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("credential z: refresh_token is encrypted under a different key"),
            "{err}"
        );
        assert_eq!(raw_rows(&path).await, before);
        let store = Store::open(&path).await.unwrap();
        store.delete("z").await.unwrap();
        store.close().await;

        // Decrypting for good.
        let done = Store::rekey(&path, b().as_ref(), None).await.unwrap();
        assert_eq!(done.were_sealed, 3);
        for (name, rt, at, extra) in raw_rows(&path).await {
            assert_eq!(rt.unwrap(), format!("rt-{name}"));
            assert_eq!(at.unwrap(), format!("at-{name}"));
            assert!(extra.contains(&format!("\"id-{name}\"")), "{extra}");
        }
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

    #[tokio::test]
    async fn one_store_per_database_and_the_refusal_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let store = Store::open(&path).await.unwrap();
        let err = Store::open(&path).await.unwrap_err();
        let pid = format!("tokend pid {}", std::process::id());
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains(&pid), "{err}");
        let err = Store::rekey(&path, None, None).await.unwrap_err();
        assert!(err.to_string().contains(&pid), "{err}");
        let lock = dir.path().join("l.db.lock");
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        store.close().await;
        Store::open(&path).await.unwrap().close().await;
    }

    #[tokio::test]
    async fn linked_or_foreign_database_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.db");
        Store::open(&real).await.unwrap().close().await;
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Store::open(&link).await.unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        if fsguard::euid() != 0 {
            return; // giving a file away needs root; the tests run as root
        }
        let wal = dir.path().join("real.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::os::unix::fs::chown(&wal, Some(65534), Some(65534)).unwrap();
        let err = Store::open(&real).await.unwrap_err();
        assert!(matches!(err, StoreError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
