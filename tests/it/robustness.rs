//! Faults that are not the provider's: a stampede of callers, a database that
//! refuses writes, hostile socket clients, and unusable database files.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_at, provider_toml, wait_until, Daemon, FAST_DAEMON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_min_valid_gets_cause_exactly_one_refresh() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(100)))
            .await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = fake.refresh_count();
    let calls: Vec<_> = (0..100)
        .map(|_| daemon.cli(&["get", "c", "--min-valid", "99"]))
        .collect();
    let runs = futures::future::join_all(calls).await;
    let tokens: std::collections::HashSet<_> = runs.iter().map(|r| r.ok().stdout.clone()).collect();
    assert_eq!(tokens.len(), 1, "every caller got the same new token");
    assert_eq!(
        fake.refresh_count(),
        before + 1,
        "exactly one refresh request"
    );
    assert_eq!(fake.reused_refresh_tokens(), 0);
    daemon.finish(&[&fake]).await;
}

/// Holds SQLite's write lock on the daemon's database from another process'
/// point of view (a second connection), as a backup tool or a wedged disk would.
async fn lock_database(path: &std::path::Path) -> sqlx::pool::PoolConnection<sqlx::Sqlite> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *conn)
        .await
        .unwrap();
    conn
}

async fn stored_refresh_token(path: &std::path::Path) -> String {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let pool = sqlx::sqlite::SqlitePool::connect_with(opts).await.unwrap();
    let rt: String = sqlx::query_scalar("SELECT refresh_token FROM credentials WHERE name = 'c'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    rt
}

/// While the database refuses writes (`why`), the proactive refresh (at
/// 15-16 s of a 20 s token) still happens: the new tokens are served from
/// memory, the token never lapses, and status and log say the commit failed.
async fn serve_while_commits_fail(daemon: &Daemon, fake: &FakeProvider, why: &str) {
    let start = Instant::now();
    while fake.refresh_count() < 2 || start.elapsed() < Duration::from_secs(1) {
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "no refresh while {why}"
        );
        let get = daemon.cli(&["get", "c"]).await;
        get.ok();
        let exp = fake
            .access_token_expiry(get.stdout.trim())
            .expect("issued token");
        assert!(exp > SystemTime::now(), "expired token served");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until(
        Duration::from_secs(5),
        "the failed commit to show",
        || async { daemon.status("c").await["uncommitted"] == true },
    )
    .await;
    let served = daemon.cli(&["get", "c"]).await.stdout;
    assert!(fake.access_token_expiry(served.trim()).is_some());
    assert!(daemon.logs().contains("commit_failed"));
}

/// Once writes work again, the retried commit lands within `within`; after a
/// restart the database holds the provider's one live refresh token, and
/// refreshing with it works.
async fn commit_lands_and_survives_restart(
    daemon: &mut Daemon,
    fake: &FakeProvider,
    within: Duration,
) {
    wait_until(within, "the commit to land", || async {
        daemon.status("c").await["uncommitted"] == false
    })
    .await;
    daemon.stop().await;
    let alive = fake.current_refresh_tokens();
    assert_eq!(alive.len(), 1);
    assert_eq!(
        stored_refresh_token(&daemon.database).await,
        alive[0],
        "the newest refresh token is on disk"
    );
    daemon.spawn().await;
    daemon.cli(&["refresh", "c"]).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_mid_run_loses_no_refresh_token() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(20))).await;
    let mut daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let mut lock = lock_database(&daemon.database).await;

    serve_while_commits_fail(&daemon, &fake, "locked").await;

    // The lock goes away: the commit is retried and lands.
    sqlx::query("ROLLBACK").execute(&mut *lock).await.unwrap();
    drop(lock);
    commit_lands_and_survives_restart(&mut daemon, &fake, Duration::from_secs(10)).await;
    assert_eq!(fake.reused_refresh_tokens(), 0);
    daemon.finish(&[&fake]).await;
}

/// Sends raw bytes and returns what came back before the server closed.
fn raw_exchange(socket: &std::path::Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_socket_clients_do_not_block_others() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let socket = daemon.socket.clone();

    // A thousand idle connections, and a few half-sent requests.
    let idle: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut slow: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    for s in &mut slow {
        s.write_all(b"GET /v1/tokens/c HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
    }
    let started = Instant::now();
    for _ in 0..5 {
        daemon.cli(&["get", "c"]).await.ok();
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "normal clients were slowed: {:?}",
        started.elapsed()
    );

    let answers = tokio::task::spawn_blocking(move || {
        let malformed = raw_exchange(&socket, b"THIS IS NOT HTTP\r\n\r\n");
        let huge_head = raw_exchange(
            &socket,
            format!("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024)).as_bytes(),
        );
        let body = "x".repeat(1 << 20);
        let huge_body = raw_exchange(
            &socket,
            format!(
                "PUT /v1/credentials/d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        (malformed, huge_head, huge_body)
    })
    .await
    .unwrap();
    assert!(
        answers.0.is_empty() || answers.0.starts_with("HTTP/1.1 400"),
        "{:.80}",
        answers.0
    );
    assert!(
        answers.1.is_empty() || answers.1.starts_with("HTTP/1.1 431"),
        "{:.80}",
        answers.1
    );
    assert!(answers.2.starts_with("HTTP/1.1 413"), "{:.80}", answers.2);

    // Everyone else is still served, and the daemon is still up.
    daemon.cli(&["get", "c"]).await.ok();
    daemon.cli(&["status"]).await.ok();
    drop(idle);
    drop(slow);
    daemon.finish(&[&fake]).await;
}

#[tokio::test]
async fn unusable_database_files_stop_start_up_and_stay_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokend.db");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nsocket = {:?}\ndatabase = {db:?}\n",
            dir.path().join("s.sock")
        ),
    )
    .unwrap();
    let garbage: Vec<u8> = (0..16384u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let run = cli_at(
        dir.path(),
        &["daemon", "--config", config.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("left it untouched"), "{run:?}");
    assert_eq!(std::fs::read(&db).unwrap(), garbage, "file modified");
    assert!(!dir.path().join("s.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_unknown_against_a_strict_provider_says_so() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // The provider rotates, then the connection breaks before the answer.
    fake.push_fault(crate::support::fake_provider::Fault::ProcessThenReset);
    let run = daemon.cli(&["refresh", "c"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    // tokend retries with the only refresh token it has; a strict provider
    // has spent it, so the credential needs re-authorization, and says why.
    wait_until(Duration::from_secs(10), "needs_reauth", || async {
        daemon.status("c").await["state"] == "needs_reauth"
    })
    .await;
    let status = daemon.status("c").await;
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("without a known outcome"), "{error}");
    // Its last token is withheld (the default `on_invalid_grant`).
    let get = daemon.cli(&["get", "c"]).await;
    assert_eq!(get.code, 3, "{get:?}");
    daemon.finish(&[&fake]).await;
}

/// A small tmpfs mounted for one test, unmounted however the test ends.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
            .arg(at)
            .status()
            .expect("mount (util-linux) must be installed; the tests run as root");
        assert!(ok.success(), "cannot mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    /// Fills the file system to the last byte; returns the filler's path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_mid_run_loses_no_refresh_token() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(20))).await;
    let mut daemon = Daemon::prepare(FAST_DAEMON, &provider_toml("p", &fake));
    let state = Tmpfs::mount(daemon.database.parent().unwrap());
    daemon.spawn().await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let filler = state.fill();

    serve_while_commits_fail(&daemon, &fake, "the disk is full").await;

    // Space again: the commit is retried and lands.
    std::fs::remove_file(filler).unwrap();
    commit_lands_and_survives_restart(&mut daemon, &fake, Duration::from_secs(15)).await;
    assert_eq!(fake.reused_refresh_tokens(), 0);
    daemon.finish(&[&fake]).await;
    drop(state);
}
