//! The read-only look at an existing file before anything writes to it: a
//! corrupt file, another program's database or one written by a newer tokend
//! is refused and left exactly as it was.

use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::{close_conn, in_use, is_busy, migrate};
use crate::store::StoreError;

/// Checks, read-only, that an existing non-empty file at `path` is a
/// healthy tokend database this version knows how to migrate.
pub(super) async fn inspect_existing(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => {}
        _ => return Ok(()),
    }
    let unusable = |reason: String| unusable(path, reason);
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false);
    let mut conn =
        sqlx::ConnectOptions::connect(&options)
            .await
            .map_err(|e| match is_busy(&e) {
                true => in_use(path),
                false => unusable(format!("cannot be opened as SQLite ({e})")),
            })?;
    let checked = check(path, &mut conn).await;
    // Closed on every path, refusal included: a dropped connection would be
    // closed later by sqlx's worker thread, after the caller has perhaps
    // given up the lock.
    close_conn(conn).await;
    checked
}

/// The checks of [`inspect_existing`] on its read-only connection.
async fn check(path: &Path, conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let unusable = |reason: String| unusable(path, reason);
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| match is_busy(&e) {
                true => in_use(path),
                false => unusable(format!("is not a SQLite database or is corrupt ({e})")),
            })?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| unusable(format!("is corrupt ({e})")))?;
    if check != "ok" {
        return Err(unusable(format!("is corrupt (quick_check: {check})")));
    }
    check_ours(path, &tables, conn).await
}

/// Refuses a database that holds tables but not ours, or whose schema is
/// newer than this build's.
async fn check_ours(
    path: &Path,
    tables: &[String],
    conn: &mut SqliteConnection,
) -> Result<(), StoreError> {
    let ours = tables.iter().any(|t| t == "_sqlx_migrations");
    if !tables.is_empty() && !ours {
        return Err(unusable(
            path,
            format!(
                "is another program's database (tables: {})",
                tables.join(", ")
            ),
        ));
    }
    if !ours {
        return Ok(());
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?;
    let known = migrate::newest_known();
    match newest.filter(|v| *v > known) {
        Some(v) => Err(unusable(
            path,
            format!("was written by a newer tokend (schema {v}; this version knows up to {known}); upgrade tokend or restore a backup"),
        )),
        None => Ok(()),
    }
}

fn unusable(path: &Path, reason: String) -> StoreError {
    StoreError::Unusable {
        path: path.to_path_buf(),
        reason,
    }
}
