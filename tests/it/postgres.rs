//! tokend on PostgreSQL: the real daemon on a real PostgreSQL server that the
//! tests start themselves (`support::postgres`), with the strict fake
//! provider: the credential's life on it, sealed columns, the one-owner
//! lock, TLS, and the refusals an operator meets (a password in the URL, a
//! wrong password, a missing database, a wrong CA).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::postgres::{server, Postgres, ROLE, ROLE_PASSWORD};
use crate::support::{provider_toml, wait_until, write_private, Daemon, Run, FAST_DAEMON};

const KEY_HEX: &str = "3a1c2a9b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

/// A daemon's files with its configuration naming the PostgreSQL `url`, the
/// role's password in a private file, and `extra` in `[daemon]`.
fn prepare(url: &str, extra: &str, providers: &str) -> Daemon {
    let d = Daemon::prepare("", "");
    let password = d.dir.path().join("db-password");
    write_private(&password, &format!("{ROLE_PASSWORD}\n"));
    write_config(&d, url, &password, extra, providers);
    d
}

fn write_config(d: &Daemon, url: &str, password: &Path, extra: &str, providers: &str) {
    write_private(
        &d.config,
        &format!(
            "[daemon]\nsocket = {:?}\ndatabase = {url:?}\ndatabase_password_file = {password:?}\n{FAST_DAEMON}\n{extra}\n{providers}",
            d.socket
        ),
    );
}

fn key_file(d: &Daemon) -> PathBuf {
    let path = d.dir.path().join("db.key");
    write_private(&path, KEY_HEX);
    path
}

/// Runs `tokend daemon` on `d`'s configuration expecting it to give up.
async fn start_refused(d: &Daemon) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("daemon")
            .arg("--config")
            .arg(&d.config)
            .env("RUST_LOG", "info")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tokend neither started nor gave up")
    .expect("run tokend");
    let run = Run::from_output(&out);
    assert_ne!(run.code, 0, "tokend started: {}", run.stderr);
    assert!(!d.socket.exists(), "a refused daemon left a socket");
    run
}

/// `tokend check-config` on `d`'s configuration.
async fn check_config(d: &Daemon) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("check-config")
        .arg(&d.config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tokend check-config");
    Run::from_output(&out)
}

fn rows(pg: &Postgres, db: &str) -> String {
    pg.admin_sql(db, "SELECT * FROM credentials ORDER BY name")
}

#[test]
fn the_harness_serves_each_test_its_own_database() {
    let pg = server();
    let (a, b) = (pg.database(), pg.database());
    assert_ne!(a, b);
    let owner = pg.admin_sql(
        "postgres",
        &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{a}'"),
    );
    assert_eq!(owner.trim(), ROLE);
    assert_eq!(pg.admin_sql(&b, "SELECT 1").trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_lives_on_postgres_sealed_across_restarts_until_removed() {
    let pg = server();
    let db = pg.database();
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(3))).await;
    let mut daemon = prepare(&pg.tcp_url(&db, ""), "", &provider_toml("p", &fake));
    let key = key_file(&daemon);
    let url = pg.tcp_url(&db, "");
    let password = daemon.dir.path().join("db-password");
    write_config(
        &daemon,
        &url,
        &password,
        &format!("encryption_key_file = {key:?}"),
        &provider_toml("p", &fake),
    );

    let check = check_config(&daemon).await;
    check.ok();
    assert!(
        check.stdout.contains(&format!(
            "database: postgres://{ROLE}@127.0.0.1:{}/{db} (no TLS, password from {})",
            pg.port,
            password.display()
        )),
        "{}",
        check.stdout
    );
    assert!(!check.stdout.contains(ROLE_PASSWORD), "{}", check.stdout);

    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    daemon
        .add("gone", "p", &fake.issue_refresh_token())
        .await
        .ok();
    let first = daemon.cli(&["get", "c"]).await;
    first.ok();
    assert!(fake.access_token_expiry(first.stdout.trim()).is_some());
    wait_until(Duration::from_secs(15), "two rotations", || async {
        fake.refresh_count() >= 4
    })
    .await;
    daemon.stop().await;

    // The rows hold sealed tokens only: no issued secret, whole or in part.
    let stored = rows(pg, &db);
    let leaks = fake.find_leaks(&stored);
    assert!(leaks.is_empty(), "secrets in PostgreSQL: {leaks:?}");
    for secret in fake.issued_secrets() {
        assert!(
            !stored.contains(&secret),
            "an issued secret is stored in clear"
        );
    }
    let sealed = pg.admin_sql(
        &db,
        "SELECT count(*) FROM credentials WHERE refresh_token LIKE 'tk1:%' AND access_token LIKE 'tk1:%'",
    );
    assert_eq!(sealed.trim(), "2", "{stored}");
    // One refresh token per credential is alive at the provider: the stored one.
    assert_eq!(fake.current_refresh_tokens().len(), 2);

    let before = fake.refresh_count();
    daemon.spawn().await;
    let again = daemon.cli(&["get", "c"]).await;
    again.ok();
    assert!(fake.access_token_expiry(again.stdout.trim()).is_some());
    wait_until(Duration::from_secs(15), "refreshing to go on", || async {
        fake.refresh_count() >= before + 2
    })
    .await;
    assert_eq!(fake.reused_refresh_tokens(), 0);
    assert_eq!(daemon.status("c").await["state"], "active");

    daemon.cli(&["remove", "gone"]).await.ok();
    let names = pg.admin_sql(&db, "SELECT name FROM credentials ORDER BY name");
    assert_eq!(names.trim(), "c");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_database_is_refused_naming_the_first() {
    let pg = server();
    let db = pg.database();
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let mut first = prepare(&pg.tcp_url(&db, ""), "", &provider_toml("p", &fake));
    first.spawn().await;
    // The same database through the Unix socket: still the same database.
    let second = prepare(&pg.socket_url(&db), "", &provider_toml("p", &fake));
    let run = start_refused(&second).await;
    assert!(
        run.stderr.contains("is in use by another tokend")
            && run.stderr.contains("not supported yet")
            && run.stderr.contains("\"tokend "),
        "{}",
        run.stderr
    );
    // The first one goes on working; once it stops, the second starts.
    first.add("c", "p", &fake.issue_refresh_token()).await.ok();
    first.stop().await;
    let mut second = second;
    second.spawn().await;
    second.cli(&["get", "c"]).await.ok();
    second.finish(&[&fake]).await;
    first.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_a_missing_database_is_explained() {
    let pg = server();
    let db = pg.database();
    let d = prepare(&pg.tcp_url(&db, ""), "", "");
    write_private(&d.dir.path().join("db-password"), "not-the-password\n");
    let run = start_refused(&d).await;
    assert!(
        run.stderr.contains("password authentication failed")
            && run.stderr.contains("database_password_file"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("not-the-password"), "{}", run.stderr);

    let d = prepare(&pg.tcp_url("no_such_db", ""), "", "");
    let run = start_refused(&d).await;
    assert!(
        run.stderr.contains("no_such_db") && run.stderr.contains("createdb"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_is_refused_and_rekey_refuses_postgres() {
    let pg = server();
    let db = pg.database();
    let url = format!(
        "postgres://{ROLE}:{ROLE_PASSWORD}@127.0.0.1:{}/{db}",
        pg.port
    );
    let d = prepare(&url, "", "");
    let run = check_config(&d).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("holds a password") && run.stderr.contains("database_password_file"),
        "{}",
        run.stderr
    );
    let run = start_refused(&d).await;
    assert!(run.stderr.contains("holds a password"), "{}", run.stderr);

    let d = prepare(&pg.tcp_url(&db, ""), "", "");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("rekey")
        .arg("--config")
        .arg(&d.config)
        .arg("--decrypt")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tokend rekey");
    let run = Run::from_output(&out);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("SQLite file only") && run.stderr.contains("nothing was changed"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_accepts_the_servers_ca_and_refuses_another() {
    let pg = server();
    let db = pg.database();
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let url = pg.tcp_url(&db, "sslmode=verify-full");
    // Copied: tokend refuses a CA file that another user could replace.
    let ca_file = |d: &Daemon, ca: &Path| {
        let path = d.dir.path().join("db-ca.pem");
        std::fs::copy(ca, &path).expect("copy the CA");
        path
    };
    let wrong = prepare(&url, "", "");
    let path = ca_file(&wrong, &pg.wrong_ca);
    write_config(
        &wrong,
        &url,
        &wrong.dir.path().join("db-password"),
        &format!("database_ca_file = {path:?}"),
        &provider_toml("p", &fake),
    );
    let run = start_refused(&wrong).await;
    assert!(
        run.stderr.contains("database_ca_file") && run.stderr.contains("sslmode"),
        "{}",
        run.stderr
    );

    let mut right = prepare(&url, "", "");
    let path = ca_file(&right, &pg.ca);
    write_config(
        &right,
        &url,
        &right.dir.path().join("db-password"),
        &format!("database_ca_file = {path:?}"),
        &provider_toml("p", &fake),
    );
    right.spawn().await;
    right.add("c", "p", &fake.issue_refresh_token()).await.ok();
    right.cli(&["get", "c"]).await.ok();
    // The daemon's own sessions are encrypted.
    let ssl = pg.admin_sql(
        "postgres",
        &format!(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{db}' AND a.application_name LIKE 'tokend %'"
        ),
    );
    assert_eq!(ssl.trim(), "t");
    right.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_pauses_refreshes_until_the_lock_is_taken_back() {
    let pg = server();
    let db = pg.database();
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let mut daemon = prepare(&pg.tcp_url(&db, ""), "", &provider_toml("p", &fake));
    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // Every session of the daemon ends, the lock's with them.
    let ended = pg.admin_sql(
        "postgres",
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{db}' AND application_name LIKE 'tokend %'"
        ),
    );
    assert_ne!(ended.trim(), "0");
    // Still served from memory meanwhile.
    daemon.cli(&["get", "c"]).await.ok();
    wait_until(Duration::from_secs(20), "the lock taken back", || async {
        daemon
            .logs()
            .contains("took the ownership of the database back")
    })
    .await;
    assert!(
        daemon.logs().contains("lost the PostgreSQL session"),
        "{}",
        daemon.logs()
    );
    let held = pg.admin_sql(
        &db,
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'tokend %' \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    assert_eq!(held.trim(), "1");
    let before = fake.refresh_count();
    daemon.cli(&["refresh", "c"]).await.ok();
    assert_eq!(fake.refresh_count(), before + 1);

    // Now another session takes the lock as soon as the daemon's ends, and
    // keeps it a while: no refresh reaches the provider until it is free.
    let taker = pg.admin_command(
        &db,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db}' AND application_name LIKE 'tokend %'; \
             SELECT pg_advisory_lock({}, 1); SELECT pg_sleep(8);",
            0x746f_6b65
        ),
    );
    wait_until(Duration::from_secs(20), "the other holder seen", || async {
        daemon.logs().contains("ownership lock is held by")
    })
    .await;
    let paused = fake.refresh_count();
    let refresh = {
        let socket = daemon.socket.clone();
        tokio::spawn(async move { crate::support::cli_at(&socket, &["refresh", "c"], None).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fake.refresh_count(),
        paused,
        "a refresh was sent without the lock: {}",
        daemon.logs()
    );
    assert!(
        daemon
            .logs()
            .contains("no longer holds the PostgreSQL database's ownership lock"),
        "{}",
        daemon.logs()
    );
    let out = tokio::task::spawn_blocking(move || taker.wait_with_output())
        .await
        .expect("join")
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(30),
        "the refresh once the lock is back",
        || async { fake.refresh_count() > paused },
    )
    .await;
    let _ = refresh.await;
    assert_eq!(fake.reused_refresh_tokens(), 0);
    daemon.finish(&[&fake]).await;
}
