//! The SQLite backend: everything in the store that knows it runs on SQLite.
//!
//! The rest of the store (the handle, the column list and row decoder, the
//! batched statements, the group-commit queue, rekey) calls only what this
//! module exports: [`open`] and [`open_exclusive`] (file checks, lock,
//! inspection, pragmas, migrations), [`scan`] (the start-up read),
//! [`begin_write`] and [`begin_write_on`], [`close`] (which returns only once every handle on the
//! file is closed, see [`close_all`]), [`close_conn`] and [`compact`], and
//! the connection, row and query types as [`Pool`], [`Conn`], [`Row`] and
//! [`Query`]. Its rows are read through [`Source`], which the decoder
//! takes.
//!
//! The PostgreSQL backend stands beside this one as `store/postgres/` with
//! the same functions, its own migrations and its own `Source` rows; the
//! choice between them is made once, where the store opens (`backend`).
//!
//! - `file`: the directory, the lock file and the database's companions,
//!   checked before SQLite opens anything.
//! - `inspect`: the read-only look at an existing file.
//! - `migrate`: the one embedded migrator.
//! - `scan`: the start-up scan through SQLite's C API (`unsafe`; the module
//!   says why it exists).

mod file;
mod inspect;
mod migrate;
mod scan;

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::Row as _;

pub(super) use file::DbLock;

use super::columns::{Bound, Source};
use super::StoreError;

/// The connection pool.
pub(super) type Pool = sqlx::sqlite::SqlitePool;

/// One connection (rekey's, held alone).
pub(super) type Conn = sqlx::sqlite::SqliteConnection;

/// A row as returned by a query.
pub(super) type Row = sqlx::sqlite::SqliteRow;

/// A statement with its bound parameters.
pub(super) type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// A write transaction on the pool.
pub(super) type Transaction = sqlx::Transaction<'static, sqlx::Sqlite>;

impl From<scan::ScanError> for StoreError {
    fn from(e: scan::ScanError) -> Self {
        StoreError::Load(e.0)
    }
}

/// Checks the file, takes its lock, inspects an existing database read-only,
/// then opens the pool (WAL, `synchronous=FULL`, `secure_delete`) and
/// migrates. The lock is held until the caller drops it.
pub(super) async fn open(path: &Path) -> Result<(Pool, DbLock), StoreError> {
    let lock = file::guard(path)?;
    inspect::inspect_existing(path).await?;
    file::prepare_file(path)?;
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
    if let Err(reason) = migrate::MIGRATOR.run(&pool).await {
        // Closed before the lock is dropped, as on a normal close.
        close_all(&pool).await;
        return Err(migration_failed(path, reason));
    }
    Ok((pool, lock))
}

/// A read-only connection to an existing database, taking no lock: for
/// `tokend check-config` to read what a running daemon keeps there.
pub(super) async fn open_read_only(path: &Path) -> Result<Conn, StoreError> {
    crate::fsguard::check_read_file(path).map_err(|reason| StoreError::Unsafe {
        path: path.to_path_buf(),
        reason,
    })?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(1));
    Ok(sqlx::ConnectOptions::connect(&options).await?)
}

/// As [`open`], for an offline tool: one connection holding SQLite's
/// exclusive lock until it closes. Refuses ([`StoreError::InUse`]) if
/// another connection (a daemon) has the file open.
pub(super) async fn open_exclusive(path: &Path) -> Result<(Conn, DbLock), StoreError> {
    let lock = file::guard(path)?;
    inspect::inspect_existing(path).await?;
    let busy = busy_is_in_use(path);
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
        .map_err(busy)?;
    match take_and_migrate(path, &mut conn).await {
        Ok(()) => Ok((conn, lock)),
        Err(e) => {
            // Closed before the lock is dropped.
            close_conn(conn).await;
            Err(e)
        }
    }
}

/// Takes SQLite's exclusive lock on `conn` (in exclusive locking mode the
/// first write takes it and keeps it until the connection closes), then
/// migrates.
async fn take_and_migrate(path: &Path, conn: &mut Conn) -> Result<(), StoreError> {
    let busy = busy_is_in_use(path);
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(busy)?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    migrate::MIGRATOR
        .run(conn)
        .await
        .map_err(|reason| migration_failed(path, reason))
}

/// Starts a write transaction. `IMMEDIATE` takes the write lock at once, so
/// a transaction that reads before it writes cannot fail half-way on a lock
/// it could not upgrade.
pub(super) async fn begin_write(pool: &Pool) -> Result<Transaction, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// As [`begin_write`], on a connection the caller holds.
pub(super) async fn begin_write_on(
    conn: &mut Conn,
) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, sqlx::Error> {
    sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await
}

/// Runs `sql` and calls `each` with every row, in order, on one of the
/// pool's connections, through [`scan`](scan::scan).
pub(super) async fn scan(
    pool: &Pool,
    sql: &str,
    mut each: impl FnMut(&dyn Source) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let mut handle = conn.lock_handle().await?;
    // This blocks the runtime thread for the length of the scan (about
    // a second per 300k rows), which only happens before the socket
    // serves anything.
    scan::scan(handle.as_raw_handle(), sql, |row| each(row))
}

/// How long [`close`] waits for the pool's last connection to close. The
/// daemon has stopped every task that uses the store by then, so this only
/// bounds a connection something still holds.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What [`close`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    /// Every connection's SQLite handle is closed.
    All,
    /// This many connections were still open when [`CLOSE_WAIT`] ran out.
    Lingering(u32),
}

/// Checkpoints the WAL (so the file alone holds everything) and closes
/// every connection, returning once every handle on the file is closed (or
/// [`CLOSE_WAIT`] has passed).
pub(super) async fn close(pool: &Pool) -> Closed {
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await;
    close_all(pool).await
}

/// Closes the pool and waits until it holds no connection.
///
/// One `Pool::close` is not enough (sqlx 0.8): a connection put back just
/// before it is checked on a spawned task, and can land in the idle queue
/// after `close` has emptied that queue for the last time. Nothing closes
/// it then until the last clone of the pool is dropped, so it would outlive
/// the lock. Each further `close` empties the idle queue again, and `size`
/// counts a connection until its handle has been closed.
///
/// Waiting first until every connection is back in the idle queue lets
/// `close` close them one after another, so the last is alone on the file
/// and removes the WAL; two closing at once would each leave it to the
/// other.
async fn close_all(pool: &Pool) -> Closed {
    close_within(pool, CLOSE_WAIT).await
}

/// As [`close_all`], giving up after `wait`: `Pool::close` itself waits for
/// as long as a connection is in use. Waiting for every connection to be
/// idle takes at most half of it, so a connection still in use does not
/// keep the idle ones open too.
pub(super) async fn close_within(pool: &Pool, wait: Duration) -> Closed {
    let emptied = tokio::time::timeout(wait, async {
        let _ = tokio::time::timeout(wait / 2, async {
            while !all_idle(pool) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        loop {
            pool.close().await;
            if pool.size() == 0 {
                return;
            }
            // Lets the spawned task that is putting a connection back finish.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    match emptied {
        Ok(()) => Closed::All,
        Err(_) => Closed::Lingering(pool.size()),
    }
}

/// Whether every connection of the pool is in its idle queue (none is in
/// use or on its way back).
fn all_idle(pool: &Pool) -> bool {
    usize::try_from(pool.size()).is_ok_and(|size| pool.num_idle() >= size)
}

/// Closes one connection, waiting until its handle is closed (dropping it
/// would leave that to sqlx's worker thread, later).
pub(super) async fn close_conn(conn: Conn) {
    let _ = sqlx::Connection::close(conn).await;
}

/// After a committed rewrite of every row: compacts the file (`VACUUM`) and
/// checkpoints the WAL, so no old value survives in free pages, then closes.
pub(super) async fn compact(mut conn: Conn) {
    for step in ["VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"] {
        if let Err(e) = sqlx::query(step).execute(&mut conn).await {
            tracing::warn!(
                "rekey committed, but `{step}` failed ({e}): old values may linger in the file's free pages until SQLite reuses them"
            );
        }
    }
    close_conn(conn).await;
}

/// Maps an error to [`StoreError::InUse`] when SQLite said another
/// connection holds the file, to [`StoreError::Sqlx`] otherwise.
fn busy_is_in_use(path: &Path) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |e| match is_busy(&e) {
        true => in_use(path),
        false => StoreError::Sqlx(e),
    }
}

/// The refusal for a database another process holds.
fn in_use(path: &Path) -> StoreError {
    StoreError::InUse {
        path: path.to_path_buf(),
        holder: "another process (a running tokend daemon, or `tokend rekey`)".into(),
    }
}

fn migration_failed(path: &Path, reason: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Migrate {
        path: path.to_path_buf(),
        reason,
    }
}

/// Binds `values` to `query`, in order.
pub(super) fn bind_all<'q>(
    mut query: Query<'q>,
    values: impl IntoIterator<Item = Bound<'q>>,
) -> Query<'q> {
    for value in values {
        query = match value {
            Bound::Text(text) => query.bind(text),
            Bound::Int(int) => query.bind(int),
        };
    }
    query
}

/// What the start-up scan reads `extra`'s id_token with.
pub(super) const ID_TOKEN: &str = "json_extract(extra, '$.id_token')";

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

impl Source for Row {
    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        Ok(self.try_get::<Option<&str>, _>(i)?)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get::<Option<i64>, _>(i)?)
    }
}

impl Source for scan::Columns<'_> {
    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        Ok(scan::Columns::text(self, column(i)?)?)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(scan::Columns::int(self, column(i)?))
    }
}

/// A column index as SQLite's C API takes it.
fn column(i: usize) -> Result<std::ffi::c_int, StoreError> {
    std::ffi::c_int::try_from(i).map_err(|_| StoreError::Load(format!("no column {i}")))
}
