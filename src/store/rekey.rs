//! `tokend rekey`: the offline re-sealing of every credential's tokens from
//! one key to another (or to or from plaintext), run with the daemon
//! stopped. Apart from the runtime [`Store`](super::Store): it takes the
//! database alone ([`sqlite::open_exclusive`]), reads every row with the one
//! decoder, writes the token columns back with the one encoder, and
//! compacts the file.

use std::path::Path;

use super::columns::{self, Shape};
use super::sqlite::{self, Conn};
use super::StoreError;
use crate::credential::Credential;
use crate::seal::Key;

/// What [`rekey`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rekeyed {
    /// Credentials rewritten.
    pub(crate) credentials: usize,
    /// Of those, how many held sealed values before.
    pub(crate) were_sealed: usize,
    /// Of those, how many held plaintext values before (and no sealed one).
    pub(crate) were_plaintext: usize,
}

/// Re-seals every credential's tokens from `old` to `new` (`None`:
/// plaintext) in one transaction, so a crash leaves either every row as it
/// was or every row re-sealed. Plaintext values open with any key. Takes the
/// database's lock file as a daemon does, and SQLite's exclusive lock,
/// throughout; refuses ([`StoreError::InUse`]) if a daemon has the database
/// open. Then compacts the file (`VACUUM`), so no old value survives in free
/// pages.
pub(crate) async fn rekey(
    path: &Path,
    old: Option<&Key>,
    new: Option<&Key>,
) -> Result<Rekeyed, StoreError> {
    let (mut conn, lock) = sqlite::open_exclusive(path).await?;
    let done = reseal_all(&mut conn, old, new).await;
    match done {
        // Committed; what follows only scrubs old values from free space.
        Ok(_) => sqlite::compact(conn).await,
        Err(_) => sqlite::close_conn(conn).await,
    }
    // Only once the connection is closed may another process come in.
    drop(lock);
    done
}

/// Reads every row under `old` and writes its tokens back under `new`, in
/// one transaction; nothing is written if any row does not open.
async fn reseal_all(
    conn: &mut Conn,
    old: Option<&Key>,
    new: Option<&Key>,
) -> Result<Rekeyed, StoreError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let sql = format!(
        "SELECT {} FROM credentials ORDER BY name",
        columns::select_list(Shape::Full)
    );
    let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
    let mut done = Rekeyed::default();
    for row in &rows {
        let decoded = columns::decode(row, Shape::Full, old)?;
        write_tokens(&mut tx, &decoded.cred, new).await?;
        done.credentials += 1;
        if decoded.stored.sealed {
            done.were_sealed += 1;
        } else if decoded.stored.plain_token || decoded.stored.plain_id_token {
            done.were_plaintext += 1;
        }
    }
    tx.commit().await?;
    Ok(done)
}

/// Writes the token columns of `c` (refresh and access token, `extra` with
/// its id_token, the DPoP key) sealed under `new`.
async fn write_tokens(
    conn: &mut Conn,
    c: &Credential,
    new: Option<&Key>,
) -> Result<(), StoreError> {
    let seal =
        |column, s: &crate::token::Secret| columns::seal_column(new, &c.name, column, s.expose());
    sqlx::query(
        "UPDATE credentials SET refresh_token = ?2, access_token = ?3, extra = ?4, dpop_key = ?5
         WHERE name = ?1",
    )
    .bind(&c.name)
    .bind(c.refresh_token.as_ref().map(|s| seal("refresh_token", s)))
    .bind(c.access_token.as_ref().map(|s| seal("access_token", s)))
    .bind(columns::seal_extra(new, &c.name, &c.extra))
    .bind(c.dpop_key.as_ref().map(|k| seal("dpop_key", k.stored())))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{cred, file_bytes, raw_rows};
    use crate::store::Store;

    fn key_a() -> Option<Key> {
        Some(Key::from_bytes([1; 32]))
    }

    fn key_b() -> Option<Key> {
        Some(Key::from_bytes([2; 32]))
    }

    /// "p" plaintext from before encryption, "q" and "r" sealed under a;
    /// returns the store, still open, that wrote the last two.
    async fn p_plain_q_r_under_a(path: &Path) -> Store {
        let store = Store::open(path).await.unwrap();
        store
            .replace(&cred("p", "rt-p", "at-p", "id-p"))
            .await
            .unwrap();
        store.close().await;
        let store = Store::open_with(path, key_a()).await.unwrap();
        for name in ["q", "r"] {
            let c = cred(
                name,
                &format!("rt-{name}"),
                &format!("at-{name}"),
                &format!("id-{name}"),
            );
            store.replace(&c).await.unwrap();
        }
        store
    }

    /// Every refresh token and id_token opens under `key`, and the old
    /// plaintext is gone from the file.
    async fn all_open_under(path: &Path, key: Option<Key>) {
        let store = Store::open_with(path, key).await.unwrap();
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
            !file_bytes(path).contains("rt-p"),
            "VACUUM left the plaintext"
        );
    }

    /// A row "z" under a third key makes the whole rekey refuse, naming it,
    /// with every row left as it was; "z" is then removed.
    async fn a_row_under_another_key_refuses_all(path: &Path) {
        let store = Store::open_with(path, Some(Key::random())).await.unwrap();
        store
            .replace(&cred("z", "rt-z", "at-z", "id-z"))
            .await
            .unwrap();
        store.close().await;
        let before = raw_rows(path).await;
        let err = rekey(path, key_b().as_ref(), key_a().as_ref())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("credential z: refresh_token is encrypted under a different key"),
            "{err}"
        );
        assert_eq!(raw_rows(path).await, before);
        let store = Store::open(path).await.unwrap();
        store.delete("z").await.unwrap();
        store.close().await;
    }

    #[tokio::test]
    async fn rekey_reseals_all_rows_or_none_and_refuses_an_open_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = p_plain_q_r_under_a(&path).await;

        // A store (a daemon) has the file open: refused, nothing changed.
        let before = raw_rows(&path).await;
        let err = rekey(&path, key_a().as_ref(), key_b().as_ref())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("stop the daemon first"), "{err}");
        assert_eq!(raw_rows(&path).await, before);
        store.close().await;

        let done = rekey(&path, key_a().as_ref(), key_b().as_ref())
            .await
            .unwrap();
        let expected = Rekeyed {
            credentials: 3,
            were_sealed: 2,
            were_plaintext: 1,
        };
        assert_eq!(done, expected);
        all_open_under(&path, key_b()).await;
        let store = Store::open_with(&path, key_a()).await.unwrap();
        assert!(store.load_all().await.is_err(), "old key still opens");
        store.close().await;

        a_row_under_another_key_refuses_all(&path).await;

        // Decrypting for good.
        let done = rekey(&path, key_b().as_ref(), None).await.unwrap();
        assert_eq!(done.were_sealed, 3);
        for (name, rt, at, extra) in raw_rows(&path).await {
            assert_eq!(rt.unwrap(), format!("rt-{name}"));
            assert_eq!(at.unwrap(), format!("at-{name}"));
            assert!(extra.contains(&format!("\"id-{name}\"")), "{extra}");
        }
    }
}
