//! Helpers shared by the store's unit tests: opening stores, writing rows
//! past the store, and reading what is on disk.

use std::path::Path;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::Row;

use super::Store;
use crate::credential::Credential;
use crate::seal::Key;
use crate::token::Secret;

/// Opens a store at `path`, sealing under `key` if given.
pub(super) async fn open(path: &Path, key: Option<[u8; 32]>) -> Store {
    Store::open_with(path, key.map(Key::from_bytes))
        .await
        .unwrap()
}

/// Inserts `n` credentials `c0`..`c{n-1}` (generation 1, refresh token
/// `rt-<name>`, stored as plaintext) in one statement.
pub(super) async fn insert_many(store: &Store, n: usize) {
    sqlx::query(
        "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?1)
         INSERT INTO credentials (name, provider, refresh_token, created_at, updated_at)
         SELECT 'c' || n, 'p', 'rt-c' || n, 100, 100 FROM i",
    )
    .bind(n as i64)
    .execute(store.sqlite_pool())
    .await
    .unwrap();
}

/// A credential with these tokens and a non-secret extra beside the id_token.
pub(super) fn cred(name: &str, rt: &str, at: &str, id_token: &str) -> Credential {
    let mut c = Credential::new(name, "p", Some(Secret::new(rt)), 100);
    c.access_token = Some(Secret::new(at));
    c.extra.insert("id_token".into(), id_token.into());
    c.extra.insert("jti".into(), "not-secret".into());
    c
}

/// A stored credential with refresh token `rt` and generation set.
pub(super) async fn stored(store: &Store, name: &str, rt: &str) -> Credential {
    let mut c = Credential::new(name, "p", Some(Secret::new(rt)), 100);
    c.access_token = Some(Secret::new(format!("at-{name}")));
    c.extra
        .insert("id_token".into(), format!("idt-{name}").into());
    c.generation = store.replace(&c).await.unwrap();
    c
}

/// The outcome of a refresh of `c`: new tokens, mark cleared.
pub(super) fn refreshed(c: &Credential, rt: &str, at: i64) -> Credential {
    let mut c = c.clone();
    c.refresh_token = Some(Secret::new(rt));
    c.access_token = Some(Secret::new(format!("at-{rt}")));
    c.refresh_started_at = None;
    c.last_refresh_at = Some(at);
    c.expires_at = Some(at + 3_600_000);
    c.updated_at = at;
    c
}

/// Saves one outcome through the batch path; whether it matched its row.
pub(super) async fn save_one(store: &Store, c: &Credential) -> bool {
    let saved = store.save_outcomes(std::slice::from_ref(c)).await.unwrap();
    saved == [true]
}

/// The refresh token of `c`, `""` if none.
pub(super) fn rt(c: &Credential) -> &str {
    c.refresh_token.as_ref().map_or("", Secret::expose)
}

/// The stored credential called `name`, in full.
pub(super) async fn by_name(store: &Store, name: &str) -> Option<Credential> {
    let all = store.load_all().await.unwrap();
    all.into_iter().find(|c| c.name == name)
}

/// The token columns and extra of every row, as stored.
pub(super) async fn raw_rows(path: &Path) -> Vec<(String, Option<String>, Option<String>, String)> {
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
pub(super) fn file_bytes(path: &Path) -> String {
    let mut all = std::fs::read(path).unwrap();
    if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
        all.extend(wal);
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// What this process's descriptors open on the database at `path`, its
/// WAL or its shm (any SQLite handle on the file holds some of them).
pub(super) fn open_handles(path: &Path) -> Vec<String> {
    let names: Vec<String> = ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| format!("{}{suffix}", path.display()))
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .filter(|target| names.contains(target))
        .collect()
}
