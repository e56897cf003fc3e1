//! The store: every SQL statement in tokend lives here and only here.
//!
//! An SQLite database runs in WAL mode with `synchronous=FULL`, so a commit
//! has reached the disk (fsync of the WAL) before any call here returns `Ok`;
//! a PostgreSQL commit returns once the server has flushed its WAL. That
//! is what lets the refresher promise that a rotated refresh token is durable
//! before the access token that came with it is served. Queries are runtime
//! `sqlx::query` calls mapped by hand, so no `.sqlx/` offline data is needed
//! to build.
//!
//! With a key (`Store::open_with`), the refresh token, the access token and
//! the `id_token` kept in `extra` are sealed on every write and opened on
//! every read (see `crate::seal`); plaintext values written before a key
//! was configured are read as they are and sealed on their next write.
//! Deleted content is overwritten (`secure_delete`), so a value replaced by
//! its sealed form does not linger in the file's free space.
//!
//! The parts, one concern each:
//! - this file: the [`Store`] handle, its reads and its single-credential
//!   operator writes (replace, delete);
//! - `columns`: the one column list, the encoder and the one row decoder;
//! - `batch`: the multi-row statements that mark and save refreshes;
//! - `group_commit`: [`GroupCommit`], the queue that commits the writes of
//!   many refreshes in one transaction; refresh writes go only through it;
//! - `rekey`: the offline re-sealing of every row (`tokend rekey`), apart
//!   from the runtime store;
//! - `backend`: the seam: the pool, connection, transaction and row of
//!   either backend, chosen once where the store opens ([`Location`]);
//! - `sqlite`: everything SQLite-specific (file checks and lock, pragmas,
//!   migrations, inspection, the raw start-up scan);
//! - `postgres`: everything PostgreSQL-specific (connection settings and
//!   TLS, the one-owner lock, migrations, the streamed start-up scan);
//! - `discovery`: the stored copies of providers' metadata documents;
//! - `error`: [`StoreError`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::credential::{Credential, Loaded};
use crate::provider::DpopKey;
use crate::seal::Key;

mod backend;
mod batch;
mod columns;
mod discovery;
mod error;
mod group_commit;
mod postgres;
mod rekey;
mod sqlite;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use backend::Pool;
use batch::{RowWrite, RowWritten};
use columns::Bound;
use columns::Shape;
pub(crate) use discovery::read_metadata_offline;
pub use error::StoreError;
pub use group_commit::{GroupCommit, GroupStats};
pub(crate) use postgres::{PgHost, PgSettings, SslMode};
pub(crate) use rekey::{rekey, Rekeyed};

/// Where the credentials are kept: what `database` in the configuration
/// names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Location {
    /// An SQLite file, embedded.
    File(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgSettings),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Postgres(pg) => write!(f, "{}", pg.url()),
        }
    }
}

/// Handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    key: Option<Arc<Key>>,
    /// The database's lock, held until [`Store::close`].
    lock: Arc<Mutex<Option<backend::Lock>>>,
    /// On PostgreSQL: the check that this daemon still owns the database,
    /// made before refreshes are marked as started.
    owner: Option<postgres::OwnerCheck>,
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
    pub(crate) async fn open_with(path: &Path, key: Option<Key>) -> Result<Store, StoreError> {
        Store::open_at(&Location::File(path.to_path_buf()), key).await
    }

    /// Opens the database at `location` (an SQLite file, or PostgreSQL,
    /// where the daemon must be the only one on the database), sealing
    /// tokens under `key` when there is one.
    pub(crate) async fn open_at(
        location: &Location,
        key: Option<Key>,
    ) -> Result<Store, StoreError> {
        let (pool, lock, owner) = match location {
            Location::File(path) => {
                let (pool, lock) = sqlite::open(path).await?;
                (Pool::Sqlite(pool), backend::Lock::Sqlite(lock), None)
            }
            Location::Postgres(settings) => {
                let (pool, lock) = postgres::open(settings).await?;
                let owner = Some(lock.owner_check());
                (Pool::Postgres(pool), backend::Lock::Postgres(lock), owner)
            }
        };
        Ok(Store {
            pool,
            key: key.map(Arc::new),
            lock: Arc::new(Mutex::new(Some(lock))),
            owner,
        })
    }

    /// Every credential, in full (refresh tokens included), by name. For
    /// tests and tools; the daemon streams lighter records with
    /// `Store::load_each`.
    pub async fn load_all(&self) -> Result<Vec<Credential>, StoreError> {
        let sql = format!(
            "SELECT {} FROM credentials ORDER BY name",
            columns::select_list(Shape::Full)
        );
        let rows = self.pool.fetch_all(&sql, Vec::new()).await?;
        rows.iter().map(|row| self.decode_full(row)).collect()
    }

    /// Streams every credential to `each`, for start-up, without its refresh
    /// token (only whether there is one) and without response extras other
    /// than the id_token: the daemon does not keep those in memory. Returns
    /// how many there were. Fails, naming the credential, if a sealed token
    /// does not open with this store's key (or without one).
    pub(crate) async fn load_each(
        &self,
        mut each: impl FnMut(Loaded),
    ) -> Result<usize, StoreError> {
        let key = self.key.as_deref();
        let (mut count, mut plain) = (0, 0);
        let mut visit = |row: &dyn columns::Source| {
            let decoded = columns::decode(row, Shape::Startup, key)?;
            plain += usize::from(decoded.stored.plain_token);
            count += 1;
            each(Loaded {
                cred: decoded.cred,
                has_refresh_token: decoded.has_refresh_token,
            });
            Ok(())
        };
        let select = |id_token| {
            format!(
                "SELECT {} FROM credentials",
                columns::startup_list(id_token)
            )
        };
        match &self.pool {
            Pool::Sqlite(pool) => sqlite::scan(pool, &select(sqlite::ID_TOKEN), &mut visit).await?,
            Pool::Postgres(pool) => {
                postgres::scan(pool, &select(postgres::ID_TOKEN), &mut visit).await?
            }
        }
        if key.is_some() && plain > 0 {
            tracing::warn!(
                tokend_credentials = plain,
                "{plain} credential(s) still have unencrypted tokens in the database; they are sealed on their next write, or run `tokend rekey` with the daemon stopped to seal them all now"
            );
        }
        Ok(count)
    }

    /// One credential in full, refresh token included; `None` if absent.
    pub(crate) async fn load(&self, name: &str) -> Result<Option<Credential>, StoreError> {
        let sql = format!(
            "SELECT {} FROM credentials WHERE name = $1",
            columns::select_list(Shape::Full)
        );
        let row = self
            .pool
            .fetch_optional(&sql, vec![Bound::text(name)])
            .await?;
        row.map(|row| self.decode_full(&row)).transpose()
    }

    /// The DPoP key of credential `name`, opened with this store's key;
    /// `None` if it has none or does not exist.
    pub(crate) async fn load_dpop_key(&self, name: &str) -> Result<Option<DpopKey>, StoreError> {
        let row = self
            .pool
            .fetch_optional(
                "SELECT dpop_key FROM credentials WHERE name = $1",
                vec![Bound::text(name)],
            )
            .await?;
        let stored: Option<String> = match row {
            Some(row) => row.get_opt_text("dpop_key")?,
            None => None,
        };
        stored
            .map(|s| columns::open_dpop_key(self.key.as_deref(), name, &s))
            .transpose()
    }

    /// Inserts or replaces a credential, bumping its generation so a refresh
    /// still in flight for the old one cannot overwrite it. Returns the stored
    /// generation.
    pub(crate) async fn replace(&self, c: &Credential) -> Result<i64, StoreError> {
        let (grant_type, grant_request) = columns::grant_values(c);
        let mut args = vec![
            Bound::text(&c.name),
            Bound::text(&c.provider),
            Bound::text(grant_type),
            Bound::Text(grant_request.map(std::borrow::Cow::Owned)),
        ];
        args.extend(columns::state_values(c, self.key.as_deref()));
        args.push(Bound::Int(Some(c.created_at)));
        let row = self
            .pool
            .fetch_optional(columns::replace_sql(), args)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok(row.get_int("generation")?)
    }

    /// Deletes a credential. Returns whether it existed.
    pub(crate) async fn delete(&self, name: &str) -> Result<bool, StoreError> {
        let done = self
            .pool
            .execute(
                "DELETE FROM credentials WHERE name = $1",
                vec![Bound::text(name)],
            )
            .await?;
        Ok(done == 1)
    }

    /// On SQLite, checkpoints the WAL, closes every connection and then,
    /// once no SQLite handle on the file is left open, releases the lock.
    /// On PostgreSQL, closes the pool, then the lock's session.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => {
                if let sqlite::Closed::Lingering(open) = sqlite::close(pool).await {
                    // The lock stays held (until the last clone of this
                    // handle is dropped), so no second process comes in
                    // beside them.
                    tracing::warn!(
                        "{open} database connection(s) still open after closing the store; keeping its lock"
                    );
                    return;
                }
            }
            Pool::Postgres(pool) => postgres::close(pool).await,
        }
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }

    /// Records durably, in one transaction, that a refresh of each
    /// `(name, generation)` is about to be sent at `at`, and returns each
    /// credential as stored (tokens opened with this store's key), in input
    /// order. `None` for a credential that was replaced or removed: its row
    /// is left alone. If any stored token does not open, nothing is written.
    pub async fn begin_refreshes(
        &self,
        items: &[(String, i64)],
        at: i64,
    ) -> Result<Vec<Option<Credential>>, StoreError> {
        let writes: Vec<RowWrite<'_>> = items
            .iter()
            .map(|(name, generation)| RowWrite::MarkStarted {
                name,
                generation: *generation,
                at,
            })
            .collect();
        let mut tx = self.begin_for(&writes).await?;
        let written = batch::apply(&mut tx.conn(), &writes, self.key.as_deref()).await?;
        // Decoded before the commit, so a row that does not open rolls
        // every mark back instead of leaving marks for refreshes never sent.
        let creds = written
            .into_iter()
            .map(|w| self.decode_marked(w.into_row()))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(creds)
    }

    /// Writes the outcomes of many refreshes (tokens, state and error,
    /// sealed under this store's key) in one durable transaction. Returns,
    /// per input, whether its row matched; a credential replaced or removed
    /// since its refresh began is not written. A name given twice is written
    /// in input order.
    pub async fn save_outcomes(&self, creds: &[Credential]) -> Result<Vec<bool>, StoreError> {
        let writes: Vec<RowWrite<'_>> = creds.iter().map(RowWrite::SaveOutcome).collect();
        let written = self.apply_committed(&writes).await?;
        Ok(written.iter().map(RowWritten::matched).collect())
    }

    /// Runs `writes` in one transaction, committed (one fsync) before it
    /// returns.
    async fn apply_committed(
        &self,
        writes: &[RowWrite<'_>],
    ) -> Result<Vec<RowWritten>, StoreError> {
        let mut conn = self.writer().await?;
        self.apply_committed_on(&mut conn, writes).await
    }

    /// A connection for a caller that writes again and again
    /// ([`GroupCommit`]), which keeps it between transactions.
    async fn writer(&self) -> Result<backend::PoolConn, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// As [`Store::apply_committed`], on `conn`.
    async fn apply_committed_on(
        &self,
        conn: &mut backend::PoolConn,
        writes: &[RowWrite<'_>],
    ) -> Result<Vec<RowWritten>, StoreError> {
        // One statement is its own transaction (SQLite's autocommit: all or
        // nothing, committed when it completes). Leaving out BEGIN and
        // COMMIT spares two trips through sqlx's worker thread, which is
        // most of what a lone request would otherwise pay over a plain
        // one-row statement.
        if batch::single_statement(writes) && !self.checks_owner(writes) {
            return Ok(batch::apply(&mut conn.conn(), writes, self.key.as_deref()).await?);
        }
        let mut tx = conn.begin_write().await?;
        self.check_owner(&mut tx, writes).await?;
        let written = batch::apply(&mut tx.conn(), writes, self.key.as_deref()).await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Whether `writes` must first check that this daemon owns the database:
    /// on PostgreSQL, when they mark refreshes as started. Outcomes are
    /// always saved, since their refreshes were already sent.
    fn checks_owner(&self, writes: &[RowWrite<'_>]) -> bool {
        self.owner.is_some()
            && writes
                .iter()
                .any(|w| matches!(w, RowWrite::MarkStarted { .. }))
    }

    /// A write transaction for `writes`, in which this daemon's ownership
    /// of the database has been checked if they need it.
    async fn begin_for(
        &self,
        writes: &[RowWrite<'_>],
    ) -> Result<backend::Transaction<'static>, StoreError> {
        let mut tx = self.pool.begin_write().await?;
        self.check_owner(&mut tx, writes).await?;
        Ok(tx)
    }

    /// In `tx`, checks that this daemon still owns the database, if
    /// `writes` need it ([`Store::checks_owner`]).
    async fn check_owner(
        &self,
        tx: &mut backend::Transaction<'_>,
        writes: &[RowWrite<'_>],
    ) -> Result<(), StoreError> {
        if let (true, Some(owner), backend::Conn::Postgres(conn)) =
            (self.checks_owner(writes), &self.owner, tx.conn())
        {
            owner.check(conn).await?;
        }
        Ok(())
    }

    /// The SQLite pool, for tests that look at the file's rows.
    #[cfg(test)]
    fn sqlite_pool(&self) -> &sqlite::Pool {
        match &self.pool {
            Pool::Sqlite(pool) => pool,
            Pool::Postgres(_) => panic!("not an SQLite store"),
        }
    }

    /// A row read back by a mark, as a credential.
    fn decode_marked(&self, row: Option<backend::Row>) -> Result<Option<Credential>, StoreError> {
        row.map(|row| self.decode_full(&row)).transpose()
    }

    /// A row of [`columns::select_list`]`(Shape::Full)` as a credential.
    fn decode_full(&self, row: &backend::Row) -> Result<Credential, StoreError> {
        columns::decode(row, Shape::Full, self.key.as_deref()).map(|d| d.cred)
    }
}
