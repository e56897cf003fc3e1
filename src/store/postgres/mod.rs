//! The PostgreSQL backend: everything in the store that knows it runs on
//! PostgreSQL, beside `sqlite/` with the same functions ([`open`],
//! [`scan`], [`begin_write`], [`close`]) and types ([`Pool`], [`Conn`],
//! [`Row`]). The rest of the store reads its rows through [`Source`].
//!
//! Durability is PostgreSQL's: a commit returns once the server has flushed
//! its WAL (`synchronous_commit` as the server sets it, `on` by default).
//!
//! One daemon owns a database for now ([`lock`]): until refreshes take
//! leases, two daemons on one database would each rotate the same refresh
//! tokens and invalidate each other's.
//!
//! - `settings`: [`PgSettings`], what `config` builds and [`open`] connects
//!   with.
//! - `lock`: the ownership lock (a session-level advisory lock) and the
//!   check that a refresh's mark is written while it is held.

mod lock;
mod settings;

use std::time::Duration;

use futures::TryStreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::Row as _;

pub(crate) use lock::{OwnerCheck, PgLock};
pub(crate) use settings::{PgHost, PgSettings, SslMode};

use super::columns::Source;
use super::StoreError;

/// The connection pool.
pub(super) type Pool = sqlx::postgres::PgPool;

/// One connection.
pub(super) type Conn = sqlx::postgres::PgConnection;

/// A row as returned by a query.
pub(super) type Row = sqlx::postgres::PgRow;

/// A write transaction on the pool.
pub(super) type Transaction = sqlx::Transaction<'static, sqlx::Postgres>;

/// The embedded migrations (append-only files under `migrations/postgres/`,
/// version for version the same schema as SQLite's).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// What the start-up scan reads `extra`'s id_token with.
pub(super) const ID_TOKEN: &str = "(extra::jsonb ->> 'id_token')";

/// Connects, takes the ownership lock (refusing if another daemon holds
/// it), refuses a schema newer than this build knows, then migrates. The
/// lock is held until the returned [`PgLock`] is dropped.
pub(super) async fn open(settings: &PgSettings) -> Result<(Pool, PgLock), StoreError> {
    let name = application_name();
    let options = settings.connect_options(&name);
    let lock = PgLock::take(settings, options.clone()).await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| connect_failed(settings, e))?;
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    let newest: Option<i64> = match migrated {
        true => {
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
                .fetch_one(&pool)
                .await?
        }
        false => None,
    };
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(newest) = newest.filter(|n| *n > known) {
        pool.close().await;
        return Err(StoreError::PgUnusable {
            database: settings.url(),
            reason: format!(
                "has schema version {newest}, newer than this tokend knows ({known}): run the newer tokend"
            ),
        });
    }
    if let Err(reason) = MIGRATOR.run(&pool).await {
        pool.close().await;
        return Err(StoreError::PgUnusable {
            database: settings.url(),
            reason: format!("cannot be migrated: {reason}"),
        });
    }
    Ok((pool, lock))
}

/// Starts a write transaction.
pub(super) async fn begin_write(pool: &Pool) -> Result<Transaction, sqlx::Error> {
    pool.begin().await
}

/// As [`begin_write`], on a connection the caller holds.
pub(super) async fn begin_write_on(
    conn: &mut Conn,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    sqlx::Connection::begin(conn).await
}

/// Runs `sql` and calls `each` with every row, in order, as the rows arrive:
/// the driver reads them from the socket on this task, so a million rows
/// are never all held at once.
pub(super) async fn scan(
    pool: &Pool,
    sql: &str,
    mut each: impl FnMut(&dyn Source) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query(sql).fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        each(&row)?;
    }
    Ok(())
}

/// Runs `sql` with one text parameter on a connection of its own, taking no
/// lock: for `tokend check-config` beside a running daemon.
pub(super) async fn read_one(
    settings: &PgSettings,
    sql: &str,
    param: &str,
) -> Result<Option<Row>, sqlx::Error> {
    use sqlx::{ConnectOptions as _, Connection as _};
    let mut conn = settings
        .connect_options("tokend check-config")
        .connect()
        .await?;
    let row = sqlx::query(sql).bind(param).fetch_optional(&mut conn).await;
    let _ = conn.close().await;
    row
}

/// Closes every connection of the pool.
pub(super) async fn close(pool: &Pool) {
    pool.close().await;
}

/// The `application_name` of this daemon's connections: what `psql`'s
/// `pg_stat_activity` and a refused second daemon show.
fn application_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(40)
        .collect();
    format!("tokend {host} pid {}", std::process::id())
}

/// A failed connection, with what the operator should check.
fn connect_failed(settings: &PgSettings, reason: sqlx::Error) -> StoreError {
    let code = match &reason {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    // rustls's refusals reach sqlx as I/O errors of the handshake.
    let text = reason.to_string().to_lowercase();
    let tls = settings.ssl != SslMode::Disable
        && (matches!(reason, sqlx::Error::Tls(_))
            || ["certificate", "tls", "handshake"]
                .iter()
                .any(|w| text.contains(w)));
    let hint = match (code.as_deref(), &reason) {
        (Some("28P01" | "28000"), _) => {
            "check the role in the URL and the password in database_password_file (or the tokend-db-password credential), and the server's pg_hba.conf"
        }
        (Some("3D000"), _) => {
            "create the database first (`createdb --owner ROLE DBNAME` as the postgres user; see README, Using PostgreSQL)"
        }
        _ if tls => {
            "check sslmode and database_ca_file: the server's certificate must chain to that CA and name the host in the URL"
        }
        (_, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => {
            "check that the server is running and reachable at that address"
        }
        _ => "check the database URL and the server's log",
    };
    StoreError::PgConnect {
        database: settings.url(),
        reason,
        hint,
    }
}

impl Source for Row {
    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        Ok(self.try_get::<Option<&str>, _>(i)?)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get::<Option<i64>, _>(i)?)
    }
}
