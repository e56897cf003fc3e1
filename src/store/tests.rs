//! The store's own tests: files and their checks, round trips through the
//! handle, sealing on disk.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

use super::test_support::{cred, file_bytes, open_handles, raw_rows, save_one};
use super::{Store, StoreError};
use crate::credential::{Credential, CredentialGrant};
use crate::fsguard;
use crate::seal::{self, Key, SealError};
use crate::token::Secret;

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
    let begun = store
        .begin_refreshes(&[("a".into(), 1)], 200)
        .await
        .unwrap();
    assert!(begun[0].is_some());

    let loaded = store.load_all().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].refresh_started_at, Some(200));
    assert_eq!(loaded[0].extra["id_token"], "idt");

    // A replacement bumps the generation; the old generation's write is refused.
    let gen2 = store.replace(&c).await.unwrap();
    assert_eq!(gen2, 2);
    c.refresh_token = Some(Secret::new("rt-stale"));
    assert!(!save_one(&store, &c).await);
    c.generation = gen2;
    assert!(save_one(&store, &c).await);
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
    assert!(save_one(&store, &c).await);

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
    assert!(save_one(&store, &c).await);
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

async fn refused_untouched(path: &Path, expect: &str) {
    let before = std::fs::read(path).unwrap();
    let err = Store::open(path).await.unwrap_err();
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
    assert!(err.to_string().contains(expect), "{err}");
    assert_eq!(std::fs::read(path).unwrap(), before, "file modified");
    // The look that refused it has closed its connection, too.
    assert_eq!(open_handles(path), Vec::<String>::new());
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
    let err = super::rekey(&path, None, None).await.unwrap_err();
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
    // Nothing of that store is left to close later, which would delete the
    // WAL planted below.
    assert_eq!(open_handles(&real), Vec::<String>::new());
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

/// Opens, uses and closes a store at `path` `rounds` times, checking after
/// each close, with the handle still alive (a connection left in its pool
/// would still be open), that no descriptor of this process points at the
/// database, its WAL or its shm, and that the last connection to close
/// removed the WAL.
async fn close_leaves_nothing_open(path: &Path, rounds: usize) {
    let wal = path.with_extension("db-wal");
    for round in 0..rounds {
        let store = Store::open(path).await.unwrap();
        store.replace(&cred("a", "rt", "at", "idt")).await.unwrap();
        assert_eq!(store.load_each(drop).await.unwrap(), 1);
        store.close().await;
        assert_eq!(open_handles(path), Vec::<String>::new(), "round {round}");
        assert!(!wal.exists(), "round {round}: the WAL is still there");
        drop(store);
    }
}

#[tokio::test]
async fn close_returns_only_once_every_handle_on_the_file_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    close_leaves_nothing_open(&dir.path().join("c.db"), 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_leaves_nothing_open_on_a_multi_threaded_runtime() {
    let dir = tempfile::tempdir().unwrap();
    close_leaves_nothing_open(&dir.path().join("c.db"), 30).await;
}

#[tokio::test]
async fn close_gives_up_on_a_connection_still_in_use_and_says_so() {
    use super::sqlite::{close_within, Closed};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.db");
    let store = Store::open(&path).await.unwrap();
    let held = store.sqlite_pool().acquire().await.unwrap();
    let wait = Duration::from_millis(200);
    assert_eq!(
        close_within(store.sqlite_pool(), wait).await,
        Closed::Lingering(1)
    );
    assert!(!open_handles(&path).is_empty());
    // Put back into the closed pool, it is closed; the next close sees none.
    drop(held);
    assert_eq!(close_within(store.sqlite_pool(), wait).await, Closed::All);
    assert_eq!(open_handles(&path), Vec::<String>::new());
}

#[tokio::test]
async fn the_grant_round_trips_and_a_refresh_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("tokend.db")).await.unwrap();
    let mut c = Credential::new("svc", "p", None, 100);
    c.grant = CredentialGrant::ClientCredentials {
        scope: Some("read".into()),
        params: vec![("audience".into(), "https://api".into())],
    };
    c.generation = store.replace(&c).await.unwrap();
    let plain = Credential::new("rt", "p", Some(Secret::new("rt-1")), 100);
    store.replace(&plain).await.unwrap();
    c.access_token = Some(Secret::new("at-1"));
    assert!(save_one(&store, &c).await);
    let loaded = store.load("svc").await.unwrap().unwrap();
    assert_eq!(loaded.grant, c.grant);
    assert_eq!(loaded.access_token.unwrap().expose(), "at-1");
    assert!(loaded.refresh_token.is_none());
    let loaded = store.load("rt").await.unwrap().unwrap();
    assert_eq!(loaded.grant, CredentialGrant::RefreshToken);
}

#[tokio::test]
async fn a_dpop_key_is_sealed_kept_by_saves_and_left_out_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.db");
    let store = super::test_support::open(&path, Some([7; 32])).await;
    let key = crate::provider::DpopKey::generate().unwrap();
    let private = key.stored().expose().to_string();
    let mut c = cred("d", "rt-d", "at-d", "idt-d");
    c.dpop_key = Some(key.clone());
    c.generation = store.replace(&c).await.unwrap();
    let plain = cred("p", "rt-p", "at-p", "idt-p");
    store.replace(&plain).await.unwrap();
    // A refresh's save writes the same key back.
    assert!(save_one(&store, &c).await);
    assert!(!file_bytes(&path).contains(&private[10..40]));

    let full = store.load("d").await.unwrap().unwrap();
    assert_eq!(full.dpop_key.unwrap().thumbprint(), key.thumbprint());
    let read = store.load_dpop_key("d").await.unwrap().unwrap();
    assert_eq!(read.thumbprint(), key.thumbprint());
    assert!(store.load_dpop_key("p").await.unwrap().is_none());
    assert!(store.load_dpop_key("missing").await.unwrap().is_none());
    let mut at_start = Vec::new();
    store.load_each(|l| at_start.push(l.cred)).await.unwrap();
    assert!(at_start.iter().all(|c| c.dpop_key.is_none()));
    store.close().await;

    // Under another key, the sealed DPoP key does not open: start-up stops.
    let other = super::test_support::open(&path, Some([8; 32])).await;
    let err = other.load_dpop_key("d").await.unwrap_err();
    assert!(err.to_string().contains("dpop_key"), "{err}");
    assert!(other.load_each(|_| {}).await.is_err());
}

#[tokio::test]
async fn rekey_reseals_the_dpop_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.db");
    let store = super::test_support::open(&path, Some([1; 32])).await;
    let key = crate::provider::DpopKey::generate().unwrap();
    let mut c = cred("d", "rt-d", "at-d", "idt-d");
    c.dpop_key = Some(key.clone());
    store.replace(&c).await.unwrap();
    store.close().await;
    let (a, b) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
    super::rekey(&path, Some(&a), Some(&b)).await.unwrap();
    let store = super::test_support::open(&path, Some([2; 32])).await;
    let read = store.load_dpop_key("d").await.unwrap().unwrap();
    assert_eq!(read.thumbprint(), key.thumbprint());
    store.close().await;
    // Decrypted, it is the stored form itself; under the old key it is not.
    super::rekey(&path, Some(&b), None).await.unwrap();
    assert!(file_bytes(&path).contains(key.stored().expose()));
}
