//! The CLI and socket edges: check-config, the status table, the raw API,
//! socket file handling.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_at, provider_toml, write_private, Daemon, FAST_DAEMON};
use tokend::client::Client;

#[tokio::test]
async fn check_config_reports_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[daemon]\nretry_max = \"soon\"\n\n[providers.a]\ntoken_url = \"ftp://x\"\nclient_id = \"x\"\nclient_secret = \"s\"\n\n[providers.b]\ntoken_url = \"https://b.example/t\"\nclientid = \"typo\"\n",
    )
    .unwrap();
    let run = cli_at(dir.path(), &["check-config", file.to_str().unwrap()], None).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("bad.toml:2: daemon.retry_max"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("bad.toml:5: providers.a.token_url"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("bad.toml:11: providers.b.clientid: unknown field `clientid`"),
        "{}",
        run.stderr
    );
    // And providers.b's client_auth (basic by default) lacks an id and a secret.
    assert!(run.stderr.contains("5 problem(s)"), "{}", run.stderr);
}

#[tokio::test]
async fn the_example_configuration_is_valid_and_has_no_live_provider() {
    let dir = tempfile::tempdir().unwrap();
    let example = dir.path().join("config.toml");
    // Installed as a world-unreadable conffile, but it must hold no secret.
    std::fs::write(&example, EXAMPLE).unwrap();
    let run = check_config(&example, dir.path());
    assert!(run.status.success(), "{run:?}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("ok, 0 provider"), "{stdout}");
}

#[tokio::test]
async fn every_commented_out_example_provider_is_valid_once_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap();
    let (head, examples) = EXAMPLE
        .split_once("# --- examples ---\n")
        .expect("the examples marker");
    // Drop one leading `#`: prose (`##`) stays a comment, settings go live.
    let uncommented: String = examples
        .lines()
        .map(|line| line.strip_prefix('#').unwrap_or(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let config = format!("{head}{uncommented}").replace("/etc/tokend/", &format!("{base}/"));
    let example = dir.path().join("config.toml");
    write_private(&example, &config);
    write_private(&dir.path().join("didit.secret"), "s1\n");
    write_private(&dir.path().join("digirunner.secret"), "s2\n");
    write_private(&dir.path().join("machine.secret"), "s4\n");
    write_private(&dir.path().join("google.secret"), "s5\n");
    // RFC 8032 §7.1's first Ed25519 key, as PKCS#8.
    write_private(
        &dir.path().join("corp-client.pem"),
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n",
    );
    std::fs::create_dir(dir.path().join("creds")).unwrap();
    write_private(&dir.path().join("creds/bakrypt-client-secret"), "s3");
    let run = check_config(&example, dir.path());
    assert!(run.status.success(), "{run:?}\n{config}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("ok, 8 provider"), "{stdout}");
    assert!(
        stdout.contains("provider google: login at https://accounts.google.com/o/oauth2/v2/auth, redirect http://127.0.0.1:PORT/callback, authorize params access_type=offline prompt=consent"),
        "{stdout}"
    );
    assert!(
        stdout.contains("credential billing-api: client_credentials from provider machine"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "hook: /usr/bin/notify-send on needs_reauth, refresh_token_expiring for mail, timeout 10s"
        ),
        "{stdout}"
    );
}

const EXAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));

/// `tokend check-config FILE`, with `dir/creds` as the systemd credentials.
fn check_config(file: &std::path::Path, dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("check-config")
        .arg(file)
        .env("CREDENTIALS_DIRECTORY", dir.join("creds"))
        .output()
        .expect("run tokend check-config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_api_status_table_and_socket_file() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Partner)).await;
    let mut daemon = Daemon::start(FAST_DAEMON, &provider_toml("partner", &fake)).await;
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    let db_mode = std::fs::metadata(&daemon.database)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(db_mode, 0o600);

    daemon
        .add("svc", "partner", &fake.issue_refresh_token())
        .await
        .ok();
    let table = daemon.cli(&["status"]).await;
    table.ok();
    let header = table.stdout.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("LAST ERROR"),
        "{table:?}"
    );
    assert!(
        table.stdout.contains("svc") && table.stdout.contains("active"),
        "{table:?}"
    );

    // The raw API: text/plain gives the bare token; JSON errors carry a kind.
    let client = Client::new(&daemon.socket);
    let (status, body) = client
        .raw(hyper::Method::GET, "/v1/tokens/svc", None, "text/plain")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let bare = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(bare, daemon.cli(&["get", "svc"]).await.stdout);
    let (status, body) = client
        .raw(
            hyper::Method::GET,
            "/v1/tokens/nope",
            None,
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["error"], "not_found");
    let (status, _) = client
        .raw(
            hyper::Method::PUT,
            "/v1/credentials/x",
            Some(b"{\"provider\":1}".to_vec()),
            "application/json",
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    let list = daemon.cli(&["status", "--json"]).await.stdout;
    assert!(
        !list.contains(fake.current_refresh_tokens()[0].as_str()),
        "status shows no secrets"
    );

    // A second daemon on the same socket is refused; a stale socket file is replaced.
    let second = cli_at(
        &daemon.socket,
        &["daemon", "--config", daemon.config.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(second.code, 1);
    // Refused by the database's lock, which is taken before the socket.
    assert!(second.stderr.contains("in use by tokend pid"), "{second:?}");
    daemon.stop().await;
    let stale = std::os::unix::net::UnixListener::bind(&daemon.socket).unwrap();
    drop(stale);
    assert!(daemon.socket.exists());
    daemon.spawn().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    daemon.cli(&["get", "svc"]).await.ok();
    daemon.finish(&[&fake]).await;
}

#[tokio::test]
async fn cli_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let run = cli_at(&sock, &["get", "x"], None).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("cannot reach tokend"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one-line reason: {run:?}");
    assert_eq!(
        run.stderr.matches("No such file").count(),
        1,
        "cause printed once: {run:?}"
    );
}
