//! One daemon per PostgreSQL database, for now: the ownership lock.
//!
//! The daemon takes a session-level advisory lock on a connection of its
//! own (apart from the pool) before it migrates or reads anything, and
//! keeps that session for its whole life; a second daemon is refused,
//! naming the holder from `pg_stat_activity`. The lock is the server's: it
//! lasts exactly as long as that session, whatever becomes of this process.
//!
//! If the session ends (the server restarted, the connection broke), the
//! lock is gone and another daemon could take it. So every transaction that
//! marks refreshes as started first checks, inside the transaction, that
//! the session this daemon took the lock with still holds it
//! ([`OwnerCheck::check`]); without it no refresh starts (they fail as
//! transient, before anything is sent, and back off), while the tokens
//! already in memory are still served and outcomes of refreshes already
//! sent are still saved. A keeper task notices the broken session, connects
//! again and takes the lock back when it is free; refreshes then resume.
//! The daemon does not exit: exiting would stop serving tokens that are
//! still good.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};

use super::{connect_failed, Conn, PgSettings};
use crate::store::StoreError;

/// The lock's two keys (`pg_try_advisory_lock(int, int)`): "toke" and the
/// one lock of the one-owner rule. Leases will be rows, not other keys.
const CLASS: i32 = 0x746f_6b65;
const OWNER: i32 = 1;

/// How often the keeper checks its session.
const KEEP_EVERY: Duration = Duration::from_secs(2);

/// The held ownership lock. Dropping it ends the keeper and its session,
/// which releases the lock.
#[derive(Debug)]
pub(crate) struct PgLock {
    /// The server pid of the session holding the lock for this daemon (0:
    /// none).
    holder: Arc<AtomicI32>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for PgLock {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl PgLock {
    /// Connects and takes the lock, or refuses naming who holds it.
    pub(super) async fn take(
        settings: &PgSettings,
        options: PgConnectOptions,
    ) -> Result<PgLock, StoreError> {
        let mut conn = options
            .connect()
            .await
            .map_err(|e| connect_failed(settings, e))?;
        match try_lock(&mut conn).await? {
            Some(pid) => {
                let holder = Arc::new(AtomicI32::new(pid));
                let keeper = tokio::spawn(keep(conn, options, Arc::clone(&holder)));
                Ok(PgLock { holder, keeper })
            }
            None => {
                let holder = describe_holder(&mut conn)
                    .await
                    .unwrap_or_else(|_| "another session".into());
                let _ = conn.close().await;
                Err(StoreError::PgInUse {
                    database: settings.url(),
                    holder,
                })
            }
        }
    }

    /// What checks that the lock is still held, for the store's writes.
    pub(crate) fn owner_check(&self) -> OwnerCheck {
        OwnerCheck(Arc::clone(&self.holder))
    }
}

/// Checks, inside a transaction, that this daemon still holds the lock.
#[derive(Debug, Clone)]
pub(crate) struct OwnerCheck(Arc<AtomicI32>);

impl OwnerCheck {
    /// Fails unless the session this daemon took the lock with still holds
    /// it; run inside the transaction whose writes need it.
    pub(crate) async fn check(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let pid = self.0.load(Ordering::Acquire);
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND classid::bigint = $1 AND objid::bigint = $2
                  AND objsubid = 2 AND granted AND pid = $3
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        )
        .bind(i64::from(CLASS))
        .bind(i64::from(OWNER))
        .bind(pid)
        .fetch_one(&mut *conn)
        .await?;
        match held {
            true => Ok(()),
            false => Err(StoreError::PgLockLost),
        }
    }
}

/// `pg_try_advisory_lock` on `conn`: the session's server pid if taken.
async fn try_lock(conn: &mut PgConnection) -> Result<Option<i32>, StoreError> {
    let (taken, pid): (bool, i32) =
        sqlx::query_as("SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()")
            .bind(CLASS)
            .bind(OWNER)
            .fetch_one(&mut *conn)
            .await?;
    Ok(taken.then_some(pid))
}

/// Who holds the lock: the holder's `application_name` (which a tokend
/// sets to its host and pid), its address and since when.
async fn describe_holder(conn: &mut PgConnection) -> Result<String, sqlx::Error> {
    let row: Option<(String, String, i32, String)> = sqlx::query_as(
        "SELECT coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'a Unix socket'),
                a.pid, coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?')
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.classid::bigint = $1 AND l.objid::bigint = $2
           AND l.objsubid = 2 AND l.granted
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
         LIMIT 1",
    )
    .bind(i64::from(CLASS))
    .bind(i64::from(OWNER))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((app, addr, pid, since)) => {
            // Whoever holds it chose its application_name: shown printable
            // and short.
            let app: String = app.chars().filter(|c| !c.is_control()).take(64).collect();
            format!("\"{app}\" (server pid {pid}, from {addr}, connected since {since})")
        }
        None => "another session".into(),
    })
}

/// Keeps the lock's session alive and, once it breaks, connects again and
/// takes the lock back as soon as it is free.
async fn keep(mut conn: PgConnection, options: PgConnectOptions, holder: Arc<AtomicI32>) {
    loop {
        tokio::time::sleep(KEEP_EVERY).await;
        let alive = tokio::time::timeout(KEEP_EVERY * 2, conn.ping()).await;
        if matches!(alive, Ok(Ok(()))) {
            continue;
        }
        tracing::error!(
            "lost the PostgreSQL session that holds this daemon's ownership of the database: no refresh starts until it is taken back (tokens already held are still served)"
        );
        conn = retake(&options, &holder).await;
        tracing::info!("took the ownership of the database back: refreshes resume");
    }
}

/// Connects and takes the lock, retrying until both succeed.
async fn retake(options: &PgConnectOptions, holder: &AtomicI32) -> PgConnection {
    let mut refused_by = String::new();
    loop {
        if let Ok(mut conn) = options.connect().await {
            match try_lock(&mut conn).await {
                Ok(Some(pid)) => {
                    holder.store(pid, Ordering::Release);
                    return conn;
                }
                Ok(None) => {
                    let now = describe_holder(&mut conn).await.unwrap_or_default();
                    if now != refused_by {
                        tracing::warn!(
                            "the database's ownership lock is held by {now}; waiting for it to be free"
                        );
                        refused_by = now;
                    }
                    let _ = conn.close().await;
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(KEEP_EVERY).await;
    }
}
