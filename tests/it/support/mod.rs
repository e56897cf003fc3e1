//! Test support: the strict fake provider, and [`Daemon`], which runs the real
//! `tokend` binary on a temporary directory (its own socket, database and
//! configuration) and drives it through the real CLI.

pub mod browser;
pub mod deb;
pub mod fake_provider;
pub mod oidc;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_provider::{FakeProvider, Flavor};
use tokio::process::{Child, Command};

/// Daemon settings that make short-lived tokens testable.
pub const FAST_DAEMON: &str = r#"
min_refresh_interval = "500ms"
retry_initial = "200ms"
retry_max = "2s"
request_timeout = "2s"
shutdown_timeout = "3s"
"#;

/// A running daemon and its files.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub database: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The exit code (-1 if killed by a signal) and output of a finished process.
    pub fn from_output(out: &std::process::Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }
}

/// The provider table for `fake` under `[providers.NAME]`, written the way the
/// README tells users to write it for that seed.
pub fn provider_toml(name: &str, fake: &FakeProvider) -> String {
    let cfg = fake.config();
    let url = fake.token_url();
    let secret = cfg.client_secret.clone().unwrap_or_default();
    match cfg.flavor {
        Flavor::Didit => format!(
            "[providers.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{}\"\nclient_secret = \"{secret}\"\nclient_auth = \"basic\"\n",
            cfg.client_id
        ),
        Flavor::Bakrypt => format!(
            "[providers.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{}\"\nclient_secret = \"{secret}\"\nclient_auth = \"body\"\n",
            cfg.client_id
        ),
        Flavor::DigiRunner => format!(
            "[providers.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{}\"\nclient_secret = \"{secret}\"\nclient_auth = \"digirunner\"\n",
            cfg.client_id
        ),
        Flavor::DigiRunnerPublic => format!(
            "[providers.{name}]\ntoken_url = \"{url}\"\nclient_id = \"{}\"\nclient_auth = \"digirunner\"\n",
            cfg.client_id
        ),
        Flavor::Partner => format!(
            "[providers.{name}]\ntoken_url = \"{url}\"\nclient_auth = \"none\"\n\
             [providers.{name}.refresh]\nencoding = \"json\"\nfields = {{ refreshToken = \"{{refresh_token}}\" }}\n\
             headers = {{ partnerId = \"{}\", grantType = \"refresh_token\" }}\n",
            cfg.partner_id
        ),
    }
}

impl Daemon {
    /// Lets other users reach the socket's directory (the socket itself
    /// stays 0660, so its group still decides who may connect).
    pub fn open_to_other_users(&self) {
        use std::os::unix::fs::PermissionsExt;
        for dir in [self.dir.path(), self.socket.parent().expect("socket dir")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .expect("chmod 0755");
        }
    }

    /// Starts a daemon whose configuration is `[daemon]` + `daemon_extra` +
    /// `providers`, and waits until its socket answers.
    pub async fn start(daemon_extra: &str, providers: &str) -> Daemon {
        let mut d = Daemon::prepare(daemon_extra, providers);
        d.spawn().await;
        d
    }

    /// Lays out the files of a daemon without starting it, so a test can
    /// arrange its directories first; [`Daemon::spawn`] starts it.
    pub fn prepare(daemon_extra: &str, providers: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/tokend.sock");
        let database = dir.path().join("state/tokend.db");
        let config = dir.path().join("config.toml");
        let log = dir.path().join("daemon.log");
        let d = Daemon {
            dir,
            socket,
            database,
            config,
            log,
            child: None,
        };
        d.write_config(daemon_extra, providers);
        d
    }

    /// Starts (or restarts) the daemon process, appending to the same log.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                "trace,hyper=info,h2=info,sqlx=info,reqwest=info,rustls=info",
            )
            .env_remove("TOKEND_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tokend");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tokend exited early with {status}: {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "tokend did not start: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for a clean exit; checks the socket is gone.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let pid = child.id().expect("pid") as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("tokend did not stop within 15s of SIGTERM")
            .expect("wait");
        assert!(
            status.success(),
            "tokend exited with {status}: {}",
            self.logs()
        );
        assert!(!self.socket.exists(), "socket file left behind");
    }

    /// Sends SIGKILL and reaps the process: no clean-up at all, so the socket
    /// file stays behind (stale) and a refresh in flight is cut wherever it
    /// is. [`Daemon::spawn`] starts it again on the same files.
    pub async fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.child.take().expect("daemon running");
        let pid = child.id().expect("pid") as i32;
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("tokend did not die within 10s of SIGKILL")
            .expect("wait");
        // It may have exited on its own before the signal: say so.
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "tokend was not running when killed ({status}): {}",
            self.logs()
        );
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the running daemon.
    pub fn signal(&self, signal: i32) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("daemon running") as i32;
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid, signal) };
    }

    /// Rewrites the configuration file: `[daemon]` + `daemon_extra` + `providers`,
    /// keeping this daemon's socket and database.
    pub fn write_config(&self, daemon_extra: &str, providers: &str) {
        write_private(
            &self.config,
            &format!(
                "[daemon]\nsocket = {:?}\ndatabase = {:?}\n{daemon_extra}\n{providers}",
                self.socket, self.database
            ),
        );
    }

    /// Whether the daemon process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs the CLI against this daemon.
    pub async fn cli(&self, args: &[&str]) -> Run {
        self.cli_stdin(args, None).await
    }

    /// Runs the CLI with `stdin` piped in.
    pub async fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        cli_at(&self.socket, args, stdin).await
    }

    /// Adds a credential from a refresh token through `tokend add` (stdin).
    pub async fn add(&self, name: &str, provider: &str, refresh_token: &str) -> Run {
        self.cli_stdin(&["add", name, "--provider", provider], Some(refresh_token))
            .await
    }

    /// `tokend status NAME --json`, parsed.
    pub async fn status(&self, name: &str) -> serde_json::Value {
        let run = self.cli(&["status", name, "--json"]).await;
        run.ok();
        serde_json::from_str(&run.stdout).expect("status JSON")
    }

    /// The daemon's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon if running and asserts that none of the fakes'
    /// secrets (tokens, codes, client secrets and their encodings), whole or
    /// as a fragment, ever reached its log.
    pub async fn finish(mut self, fakes: &[&FakeProvider]) {
        if self.child.is_some() {
            self.stop().await;
        }
        let logs = self.logs();
        assert!(logs.contains("tokend started"), "no log captured: {logs}");
        for fake in fakes {
            let leaks = fake.find_leaks(&logs);
            assert!(leaks.is_empty(), "secrets in the daemon log: {leaks:?}");
        }
    }
}

/// Writes a file only its owner may read: configuration files hold client
/// secrets, and tokend refuses a world-readable one.
pub fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Runs the CLI against the socket at `socket`.
pub async fn cli_at(socket: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tokend cli");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.expect("stdin");
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(100), child.wait_with_output())
        .await
        .expect("cli timed out")
        .expect("cli output");
    Run::from_output(&out)
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `setpriv` command that runs what follows as `uid` with primary group
/// `gid` and exactly the supplementary `groups`: another local user, as the
/// kernel will report them to the daemon (SO_PEERCRED, /proc).
pub fn setpriv(uid: u32, gid: u32, groups: &[u32]) -> Command {
    let groups = match groups {
        [] => "--clear-groups".to_string(),
        _ => {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            format!("--groups={}", list.join(","))
        }
    };
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups);
    cmd
}

/// Runs the CLI against `socket` as `uid`:`gid` with `groups` (see
/// [`setpriv`]), stdin closed.
pub async fn cli_as(socket: &Path, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Run {
    let out = setpriv(uid, gid, groups)
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("setpriv (util-linux) must be installed");
    Run::from_output(&out)
}

/// Adds `n` credentials named `name(i)`, each its own grant family of
/// `fake`, through the library client, `concurrency` PUTs at a time (each
/// waits for the credential's first refresh). Returns the families by index.
pub async fn add_families(
    daemon: &Daemon,
    fake: &FakeProvider,
    n: usize,
    name: impl Fn(usize) -> String,
    concurrency: usize,
) -> Vec<u64> {
    use futures::StreamExt as _;
    let client = tokend::client::Client::new(&daemon.socket);
    let grants: Vec<(String, u64)> = (0..n).map(|_| fake.issue_refresh_token_family()).collect();
    let added: Vec<_> = futures::stream::iter(grants.iter().enumerate())
        .map(|(i, (rt, _))| {
            let (client, path) = (client.clone(), format!("/v1/credentials/{}", name(i)));
            async move {
                let body = serde_json::json!({"provider": "p", "refresh_token": rt});
                client
                    .call::<serde_json::Value>(hyper::Method::PUT, &path, Some(&body))
                    .await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for r in added {
        if let Err(e) = r {
            panic!("adding a credential failed: {e}");
        }
    }
    grants.into_iter().map(|(_, family)| family).collect()
}

/// One HTTP response read raw off a socket: its status, its head (lower
/// case, for header checks) and its body.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawAnswer {
    /// Splits a whole response; panics (with the text) on one without a
    /// complete head or a status line.
    pub fn parse(raw: &[u8]) -> RawAnswer {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete response head: {text:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        RawAnswer {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }
}
