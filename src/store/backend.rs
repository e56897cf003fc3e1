//! The seam between the store and its two backends: the pool, connection,
//! transaction and row of either, chosen once where the store opens
//! ([`Pool`]), and the few ways the rest of the store runs a statement on
//! them. SQL text is shared: `$N` placeholders, which both drivers take,
//! and values bound as [`Bound`] in the column's own type (PostgreSQL types
//! each parameter of a multi-row `VALUES` from what is bound).

use sqlx::Row as _;

use super::columns::{Bound, Source};
use super::{postgres, sqlite, StoreError};

/// The connection pool of the backend in use.
#[derive(Debug, Clone)]
pub(super) enum Pool {
    Sqlite(sqlite::Pool),
    Postgres(postgres::Pool),
}

/// A row of either backend.
pub(super) enum Row {
    Sqlite(sqlite::Row),
    Postgres(postgres::Row),
}

/// A connection of either backend, borrowed (from the pool or a
/// transaction).
pub(super) enum Conn<'a> {
    Sqlite(&'a mut sqlite::Conn),
    Postgres(&'a mut postgres::Conn),
}

/// A connection taken from the pool.
pub(super) enum PoolConn {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

/// A write transaction, on a connection of the pool's own (`'static`) or
/// on one a caller holds ([`PoolConn::begin_write`]).
pub(super) enum Transaction<'c> {
    Sqlite(sqlx::Transaction<'c, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'c, sqlx::Postgres>),
}

/// What keeps a second process off the database until the store closes:
/// held (its drop releases it), never read.
#[derive(Debug)]
pub(super) enum Lock {
    Sqlite(#[allow(dead_code)] sqlite::DbLock),
    Postgres(#[allow(dead_code)] postgres::PgLock),
}

impl Pool {
    /// A connection for a statement of its own.
    pub(super) async fn acquire(&self) -> Result<PoolConn, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => PoolConn::Sqlite(p.acquire().await?),
            Pool::Postgres(p) => PoolConn::Postgres(p.acquire().await?),
        })
    }

    /// Starts a write transaction (SQLite's takes the write lock at once).
    pub(super) async fn begin_write(&self) -> Result<Transaction<'static>, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Transaction::Sqlite(sqlite::begin_write(p).await?),
            Pool::Postgres(p) => Transaction::Postgres(postgres::begin_write(p).await?),
        })
    }

    /// Every row `sql` returns with `args` bound.
    pub(super) async fn fetch_all(
        &self,
        sql: &str,
        args: Vec<Bound<'_>>,
    ) -> Result<Vec<Row>, sqlx::Error> {
        self.acquire()
            .await?
            .conn()
            .fetch_all(sql, args, true)
            .await
    }

    /// The one row `sql` returns, if any.
    pub(super) async fn fetch_optional(
        &self,
        sql: &str,
        args: Vec<Bound<'_>>,
    ) -> Result<Option<Row>, sqlx::Error> {
        Ok(self.fetch_all(sql, args).await?.into_iter().next())
    }

    /// Runs `sql`; how many rows it changed.
    pub(super) async fn execute(
        &self,
        sql: &str,
        args: Vec<Bound<'_>>,
    ) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => sqlite::bind_all(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
            Pool::Postgres(p) => bind_pg(sqlx::query(sql), args)
                .execute(p)
                .await?
                .rows_affected(),
        })
    }
}

impl PoolConn {
    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            PoolConn::Sqlite(c) => Conn::Sqlite(c),
            PoolConn::Postgres(c) => Conn::Postgres(c),
        }
    }

    /// Starts a write transaction on this connection, as
    /// [`Pool::begin_write`] does on one of the pool's.
    pub(super) async fn begin_write(&mut self) -> Result<Transaction<'_>, sqlx::Error> {
        Ok(match self {
            PoolConn::Sqlite(c) => Transaction::Sqlite(sqlite::begin_write_on(c).await?),
            PoolConn::Postgres(c) => Transaction::Postgres(postgres::begin_write_on(c).await?),
        })
    }
}

impl Transaction<'_> {
    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            Transaction::Sqlite(t) => Conn::Sqlite(t),
            Transaction::Postgres(t) => Conn::Postgres(t),
        }
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Transaction::Sqlite(t) => t.commit().await,
            Transaction::Postgres(t) => t.commit().await,
        }
    }
}

impl Conn<'_> {
    /// Every row `sql` returns with `args` bound; `persistent`: kept
    /// prepared on the connection.
    pub(super) async fn fetch_all(
        &mut self,
        sql: &str,
        args: Vec<Bound<'_>>,
        persistent: bool,
    ) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match self {
            Conn::Sqlite(c) => sqlite::bind_all(sqlx::query(sql).persistent(persistent), args)
                .fetch_all(&mut **c)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
            Conn::Postgres(c) => bind_pg(sqlx::query(sql).persistent(persistent), args)
                .fetch_all(&mut **c)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
        })
    }
}

impl Row {
    /// A text column by name.
    pub(super) fn get_text(&self, column: &str) -> Result<String, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(column),
            Row::Postgres(r) => r.try_get(column),
        }
    }

    /// An integer column by name.
    pub(super) fn get_int(&self, column: &str) -> Result<i64, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(column),
            Row::Postgres(r) => r.try_get(column),
        }
    }

    /// A nullable text column by name.
    pub(super) fn get_opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            Row::Sqlite(r) => r.try_get(column),
            Row::Postgres(r) => r.try_get(column),
        }
    }
}

impl Source for Row {
    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        match self {
            Row::Sqlite(r) => Source::text(r, i),
            Row::Postgres(r) => Source::text(r, i),
        }
    }

    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self {
            Row::Sqlite(r) => Source::int(r, i),
            Row::Postgres(r) => Source::int(r, i),
        }
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `values` to a PostgreSQL statement, in order.
fn bind_pg<'q>(mut query: PgQuery<'q>, values: Vec<Bound<'q>>) -> PgQuery<'q> {
    for value in values {
        query = match value {
            Bound::Text(text) => query.bind(text),
            Bound::Int(int) => query.bind(int),
        };
    }
    query
}
