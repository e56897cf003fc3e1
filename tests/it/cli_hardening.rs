//! The CLI's edges against hostile or merely unlucky input and output: values
//! that begin with `-`, secrets kept off argv, a reader that closes the pipe
//! early, and what the daemon's log shows of its dependencies.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

use crate::support::fake_provider::{pkce_s256, FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, Daemon, FAST_DAEMON};

/// A PKCE verifier (RFC 7636: 43-128 of `[A-Za-z0-9-._~]`) that begins with `-`.
const VERIFIER: &str = "-tVerifier.with~every_kind-of-char-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_takes_hyphen_led_secrets_on_argv_and_on_stdin() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("didit", &fake)).await;
    let redirect = "http://127.0.0.1/cb";
    let challenge = pkce_s256(VERIFIER);

    // On argv, as providers' codes come: a leading '-' is a value, not a flag.
    let code = fake.issue_code_with_prefix("-t", redirect, Some(&challenge));
    let run = daemon
        .cli(&[
            "exchange",
            "-argv",
            "--provider",
            "didit",
            "--code",
            &code,
            "--redirect-uri",
            redirect,
            "--code-verifier",
            VERIFIER,
        ])
        .await;
    run.ok();
    assert!(run.stdout.contains("-argv: created"), "{run:?}");

    // On stdin, out of `ps`'s sight: the code, then the verifier.
    let code = fake.issue_code_with_prefix("-t", redirect, Some(&challenge));
    let run = daemon
        .cli_stdin(
            &[
                "exchange",
                "stdin",
                "--provider",
                "didit",
                "--redirect-uri",
                redirect,
            ],
            Some(&format!("{code}\n{VERIFIER}\n")),
        )
        .await;
    run.ok();
    assert!(run.stdout.contains("stdin: created"), "{run:?}");
    assert_eq!(fake.exchange_count(), 2, "{:?}", fake.rejections());

    // A hyphen-led name is read by clap, not the plain `get` fast path.
    let got = daemon.cli(&["get", "-argv"]).await;
    got.ok();
    assert!(!got.stdout.trim().is_empty(), "{got:?}");
    daemon.finish(&[&fake]).await;
}

/// A pipe whose reader is already gone: every write to it fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors on success, which we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_every_command_quietly() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("didit", &fake)).await;
    daemon
        .add("svc", "didit", &fake.issue_refresh_token())
        .await
        .ok();
    let config = daemon.config.to_str().unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "svc"],
        &["get", "svc"],
        &["get", "svc", "--json"],
        &["refresh", "svc"],
        &["check-config", config],
        &["--help"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .await
            .expect("run tokend");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "`tokend {}` on a closed pipe: {} {stderr}",
            args.join(" "),
            out.status
        );
    }
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_certificate_is_logged_once_by_tokend_without_dependency_paths() {
    use std::time::Duration;

    use tokio::process::Command;

    use crate::support::wait_until;

    // A TLS endpoint on loopback with a self-signed certificate, which the
    // platform verifier rejects (and logs at error from its own code).
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run openssl req");
    assert!(made.success(), "openssl req: {made}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _tls = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run openssl s_server");
    wait_until(Duration::from_secs(10), "the TLS endpoint", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;

    // The daemon with the default log filter: no RUST_LOG.
    let daemon = Daemon::prepare(
        FAST_DAEMON,
        &format!(
            "[providers.p]\ntoken_url = \"https://127.0.0.1:{port}/token\"\nclient_auth = \"none\"\n"
        ),
    );
    let log = std::fs::File::create(&daemon.log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["daemon", "--log", "stderr", "--config"])
        .arg(&daemon.config)
        .env_remove("RUST_LOG")
        .env_remove("TOKEND_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tokend");
    wait_until(Duration::from_secs(20), "the daemon's socket", || async {
        tokio::net::UnixStream::connect(&daemon.socket)
            .await
            .is_ok()
    })
    .await;
    let add = daemon.add("c", "p", "a-refresh-token").await;
    assert_eq!(add.code, 1, "{add:?}");
    assert!(add.stderr.contains("certificate"), "{add:?}");
    wait_until(
        Duration::from_secs(10),
        "a second failed refresh",
        || async { daemon.logs().matches("refresh failed").count() >= 2 },
    )
    .await;
    child.kill().await.expect("kill tokend");

    let logs = daemon.logs();
    assert!(
        logs.contains("certificate"),
        "tokend names the reason: {logs}"
    );
    for absent in [
        ".cargo/registry",
        "log.file",
        "failed to verify TLS",
        "ERROR",
    ] {
        assert!(!logs.contains(absent), "`{absent}` in the log: {logs}");
    }
}
