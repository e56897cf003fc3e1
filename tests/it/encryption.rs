//! Encryption at rest: with a key, no token reaches the database file, its
//! WAL or its shm, even while the daemon runs; a database opens only with its
//! key; `tokend rekey` changes the key; a plaintext database keeps working
//! once a key is added.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, wait_until, write_private, Daemon, Run, FAST_DAEMON};

const KEY1_HEX: &str = "8f1c2a9b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

/// The `[daemon]` lines for a key file.
fn with_key(path: &Path) -> String {
    format!("{FAST_DAEMON}\nencryption_key_file = {path:?}\n")
}

/// The database, its WAL and its shm as they are now (absent ones omitted).
fn db_files(db: &Path) -> Vec<(String, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            std::fs::read(&p).ok().map(|b| (p.display().to_string(), b))
        })
        .collect()
}

/// Every secret the fake issued that appears in `files`: whole or as a
/// 20-character fragment (lossy text), and whole as raw bytes.
fn leaks(fake: &FakeProvider, files: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, bytes) in files {
        for leak in fake.find_leaks(&String::from_utf8_lossy(bytes)) {
            found.push(format!("{name}: {leak}"));
        }
        for (i, secret) in fake.issued_secrets().iter().enumerate() {
            let s = secret.as_bytes();
            if !s.is_empty() && bytes.windows(s.len()).any(|w| w == s) {
                found.push(format!("{name}: issued secret #{i} appears whole"));
            }
        }
    }
    found
}

fn contains(files: &[(String, Vec<u8>)], needle: &str) -> bool {
    files
        .iter()
        .any(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// Runs `tokend daemon` on this daemon's configuration, expecting it to
/// refuse to start; returns its exit code and stderr.
async fn start_refused(daemon: &Daemon, env: &[(&str, &Path)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokend"));
    cmd.arg("daemon")
        .arg("--config")
        .arg(&daemon.config)
        .env("RUST_LOG", "info")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("tokend neither started nor gave up")
        .expect("run tokend");
    let run = Run::from_output(&out);
    assert!(!daemon.socket.exists(), "a refused daemon left a socket");
    run
}

fn write_key(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_database_wal_and_shm_hold_no_secret_and_keys_change_only_by_rekey() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(2))).await;
    let providers = provider_toml("p", &fake);
    let keys = tempfile::tempdir().unwrap();
    let key1 = write_key(keys.path(), "key1", format!("{KEY1_HEX}\n").as_bytes());
    let key2 = write_key(
        keys.path(),
        "key2",
        base64::engine::general_purpose::STANDARD
            .encode([0x42u8; 32])
            .as_bytes(),
    );

    let mut daemon = Daemon::start(&with_key(&key1), &providers).await;
    assert!(
        daemon.logs().contains("tokens are encrypted at rest"),
        "{}",
        daemon.logs()
    );
    daemon
        .add("c1", "p", &fake.issue_refresh_token())
        .await
        .ok();
    daemon
        .add("c2", "p", &fake.issue_refresh_token())
        .await
        .ok();
    let redirect = "https://app.example/cb";
    let code = fake.issue_code(redirect, None, true);
    daemon
        .cli(&[
            "exchange",
            "c3",
            "--provider",
            "p",
            "--code",
            &code,
            "--redirect-uri",
            redirect,
        ])
        .await
        .ok();
    wait_until(Duration::from_secs(20), "several rotations", || async {
        fake.refresh_count() >= 8
    })
    .await;

    // Copies taken while the daemon runs: the WAL holds the fresh rows.
    let running = db_files(&daemon.database);
    let wal = running.iter().find(|(n, _)| n.ends_with("-wal"));
    assert!(
        wal.is_some_and(|(_, b)| !b.is_empty()),
        "no WAL content to check: {:?}",
        running
            .iter()
            .map(|(n, b)| (n, b.len()))
            .collect::<Vec<_>>()
    );
    assert!(contains(&running, "tk1:"), "no sealed value found");
    assert_eq!(leaks(&fake, &running), Vec::<String>::new());

    // Rekeying under a running daemon is refused, and changes nothing.
    let run = daemon
        .cli(&[
            "rekey",
            "--config",
            daemon.config.to_str().unwrap(),
            "--new-key",
            key2.to_str().unwrap(),
        ])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("in use"), "{run:?}");
    assert!(run.stderr.contains("stop the daemon first"), "{run:?}");

    daemon.stop().await;
    let stopped = db_files(&daemon.database);
    assert!(contains(&stopped, "tk1:"));
    assert_eq!(leaks(&fake, &stopped), Vec::<String>::new());

    // Same database, same key: the tokens (and the id_token) are still served.
    daemon.spawn().await;
    let token = daemon.cli(&["get", "c1"]).await;
    token.ok();
    assert!(fake.access_token_expiry(token.stdout.trim()).is_some());
    let c3 = daemon.cli(&["get", "c3", "--json"]).await;
    c3.ok();
    let c3: serde_json::Value = serde_json::from_str(&c3.stdout).unwrap();
    assert!(
        c3["id_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("eyJ")),
        "{c3}"
    );
    daemon.stop().await;

    // Another key, no key, or an unusable key file: start-up fails with a
    // message that says what to do, and the file is not modified.
    let before = std::fs::read(&daemon.database).unwrap();
    daemon.write_config(&with_key(&key2), &providers);
    let run = start_refused(&daemon, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("credential c1: refresh_token is encrypted under a different key"),
        "{run:?}"
    );
    assert!(run.stderr.contains("tokend rekey"), "{run:?}");

    daemon.write_config(FAST_DAEMON, &providers);
    let run = start_refused(&daemon, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("is encrypted, but no database encryption key is configured"),
        "{run:?}"
    );
    // The tokend-db-key systemd credential is used without configuration.
    let creds = tempfile::tempdir().unwrap();
    std::fs::copy(&key2, creds.path().join("tokend-db-key")).unwrap();
    let run = start_refused(&daemon, &[("CREDENTIALS_DIRECTORY", creds.path())]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("tokend-db-key credential"), "{run:?}");
    assert!(run.stderr.contains("different key"), "{run:?}");

    daemon.write_config(&with_key(&keys.path().join("missing")), &providers);
    let run = start_refused(&daemon, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("cannot read the database encryption key"),
        "{run:?}"
    );
    let open_key = write_key(keys.path(), "open", KEY1_HEX.as_bytes());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    daemon.write_config(&with_key(&open_key), &providers);
    let run = start_refused(&daemon, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("chmod 600"), "{run:?}");
    assert_eq!(
        std::fs::read(&daemon.database).unwrap(),
        before,
        "a refused start modified the database"
    );

    // Rotation: rekey from key1 to key2, then run with key2.
    daemon.write_config(&with_key(&key1), &providers);
    let run = daemon
        .cli(&[
            "rekey",
            "--config",
            daemon.config.to_str().unwrap(),
            "--new-key",
            key2.to_str().unwrap(),
        ])
        .await;
    run.ok();
    assert!(
        run.stdout.contains("3 credential(s) re-encrypted with key"),
        "{run:?}"
    );
    daemon.write_config(&with_key(&key2), &providers);
    daemon.spawn().await;
    daemon.cli(&["get", "c2"]).await.ok();
    let before = fake.refresh_count();
    wait_until(
        Duration::from_secs(20),
        "refreshes under the new key",
        || async { fake.refresh_count() >= before + 3 },
    )
    .await;
    daemon.stop().await;
    let rekeyed = db_files(&daemon.database);
    assert_eq!(leaks(&fake, &rekeyed), Vec::<String>::new());

    // Control: decrypted, the same search finds the tokens.
    let run = daemon
        .cli(&[
            "rekey",
            "--database",
            daemon.database.to_str().unwrap(),
            "--key",
            key2.to_str().unwrap(),
            "--decrypt",
        ])
        .await;
    run.ok();
    assert!(run.stdout.contains("3 credential(s) decrypted"), "{run:?}");
    let plain = db_files(&daemon.database);
    let current = fake.current_refresh_tokens();
    assert_eq!(current.len(), 3, "{current:?}");
    for rt in &current {
        assert!(contains(&plain, rt), "decrypted refresh token not found");
    }
    assert!(!leaks(&fake, &plain).is_empty());
    daemon.write_config(FAST_DAEMON, &providers);
    daemon.spawn().await;
    daemon.cli(&["get", "c1"]).await.ok();
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_database_keeps_working_after_a_key_is_added() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(2))).await;
    let providers = provider_toml("p", &fake);
    let mut daemon = Daemon::start(FAST_DAEMON, &providers).await;
    assert!(
        daemon
            .logs()
            .contains("tokens are stored unencrypted in the database"),
        "{}",
        daemon.logs()
    );
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    wait_until(Duration::from_secs(10), "a rotation", || async {
        fake.refresh_count() >= 2
    })
    .await;
    daemon.stop().await;
    let plain = db_files(&daemon.database);
    assert!(contains(&plain, &fake.current_refresh_tokens()[0]));

    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key");
    write_private(&key, KEY1_HEX);
    daemon.write_config(&with_key(&key), &providers);
    daemon.spawn().await;
    let token = daemon.cli(&["get", "c"]).await;
    token.ok();
    assert!(fake.access_token_expiry(token.stdout.trim()).is_some());
    assert!(
        daemon.logs().contains("sealed on their next write"),
        "{}",
        daemon.logs()
    );
    let before = fake.refresh_count();
    wait_until(
        Duration::from_secs(10),
        "refreshes with the key",
        || async { fake.refresh_count() >= before + 2 },
    )
    .await;
    daemon.stop().await;

    // The row was sealed on its next write, and what it held before was
    // overwritten (secure_delete) and checkpointed away.
    let sealed = db_files(&daemon.database);
    assert!(contains(&sealed, "tk1:"));
    assert_eq!(leaks(&fake, &sealed), Vec::<String>::new());

    daemon.spawn().await;
    daemon.cli(&["get", "c"]).await.ok();
    assert_eq!(daemon.status("c").await["state"], "active");
    daemon.finish(&[&fake]).await;
}
