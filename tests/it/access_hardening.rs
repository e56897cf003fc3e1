//! Access under attack from other socket users: a unit rule a user cannot
//! satisfy from their own systemd manager, a connection flood from one uid
//! that leaves the others served, and refusals that cannot flood the log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, wait_until, Daemon, Run, FAST_DAEMON};

const SOCKET_GID: u32 = 4252;
/// The system's Python: a `python3` found first on root's PATH may live
/// where other users cannot run it.
const PYTHON: &str = "/usr/bin/python3";

async fn start(readers: &str) -> (FakeProvider, Daemon) {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!("{}{readers}", provider_toml("p", &fake));
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &providers).await;
    daemon.open_to_other_users();
    (fake, daemon)
}

/// `setpriv` arguments running the rest as `uid` in the socket's group.
fn setpriv(uid: u32) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={SOCKET_GID}"),
        "--clear-groups".into(),
    ]
}

/// Runs the CLI as `uid`, first moving into the cgroup `cgroup` if given.
async fn cli_as(daemon: &Daemon, uid: u32, cgroup: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = match cgroup {
        // `$0` is the cgroup.procs file, the rest the command to exec there.
        Some(dir) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#"echo $$ > "$0" && exec "$@""#)
                .arg(dir.join("cgroup.procs"));
            c.args(setpriv(uid));
            c
        }
        None => {
            let argv = setpriv(uid);
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let out = cmd
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("sh and setpriv (util-linux) must be installed");
    Run::from_output(&out)
}

/// A writable cgroup v2 hierarchy, if this machine has one.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Cgroups made for a test, removed leaf first when dropped.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    /// Creates every directory of `path` under `base` that is missing.
    fn make(&mut self, base: &Path, path: &str) -> std::io::Result<PathBuf> {
        let mut dir = base.to_path_buf();
        for part in path.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)?;
                self.0.push(dir.clone());
            }
        }
        Ok(dir)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_manager_cannot_pass_for_a_system_unit() {
    let (fake, daemon) = start(
        "[credentials.sys]\nreaders = [\"unit:backup.service\"]\n\
         [credentials.mine]\nreaders = [\"user-unit:1000/backup.service\"]\n",
    )
    .await;
    for name in ["sys", "mine"] {
        daemon
            .add(name, "p", &fake.issue_refresh_token())
            .await
            .ok();
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("no cgroup v2 hierarchy here: the unit tests in access.rs cover unit_of");
        daemon.finish(&[&fake]).await;
        return;
    };
    let base = format!("tokend-test-{}", std::process::id());
    let mut made = Cgroups(Vec::new());
    let (user, system) = match (
        made.make(
            &root,
            &format!(
                "{base}/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service"
            ),
        ),
        made.make(&root, &format!("{base}/system.slice/backup.service")),
    ) {
        (Ok(u), Ok(s)) => (u, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "cannot create cgroups under {}: {e}; the unit tests cover unit_of",
                root.display()
            );
            daemon.finish(&[&fake]).await;
            return;
        }
    };

    // The spoof: uid 1000 runs `backup.service` under its own manager.
    let run = cli_as(&daemon, 1000, Some(&user), &["get", "sys"]).await;
    assert_eq!(run.code, 1, "a user unit passed for a system one: {run:?}");
    // A refused read answers as a missing name; the log says who asked.
    assert!(run.stderr.contains("that you may read"), "{run:?}");
    assert!(
        daemon
            .logs()
            .lines()
            .any(|l| l.contains("access denied") && l.contains("user-unit:1000/backup.service")),
        "the denial names the user unit:\n{}",
        daemon.logs()
    );
    // The explicit rule for that user's unit grants it.
    let run = cli_as(&daemon, 1000, Some(&user), &["get", "mine"]).await;
    assert!(!run.ok().stdout.is_empty());
    // The system service is granted by unit:, and is no user's unit.
    let run = cli_as(&daemon, 1000, Some(&system), &["get", "sys"]).await;
    assert!(!run.ok().stdout.is_empty());
    let run = cli_as(&daemon, 1000, Some(&system), &["get", "mine"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("that you may read"), "{run:?}");
    assert!(
        daemon.logs().lines().any(|l| l.contains("access denied")
            && l.contains("credential=\"mine\"")
            && l.contains("peer_unit=\"unit:backup.service\"")),
        "the denial names the system unit:\n{}",
        daemon.logs()
    );
    // Outside any unit, neither.
    let run = cli_as(&daemon, 1000, None, &["get", "sys"]).await;
    assert_eq!(run.code, 1, "{run:?}");

    drop(made);
    assert!(
        !root.join(&base).exists(),
        "test cgroups left behind under {}",
        root.display()
    );
    daemon.finish(&[&fake]).await;
}

/// Holds `n` connections to `socket` open as `uid` until dropped; returns
/// once they are all connected.
async fn hold_connections(uid: u32, socket: &Path, n: usize) -> tokio::process::Child {
    let script = "import socket, sys\n\
        held = []\n\
        for _ in range(int(sys.argv[2])):\n    \
            c = socket.socket(socket.AF_UNIX)\n    \
            c.connect(sys.argv[1])\n    \
            held.append(c)\n\
        print('held', flush=True)\n\
        sys.stdin.read()\n";
    let argv = setpriv(uid);
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .args([PYTHON, "-c", script])
        .arg(socket)
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("/usr/bin/python3 must be installed");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the holder connects in time")
        .expect("holder stdout");
    assert_eq!(line.as_deref(), Some("held"));
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_holding_connections_does_not_lock_out_the_others() {
    let (fake, daemon) = start("readers = [\"uid:1001\"]\n").await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // More than the daemon's whole connection cap (4096).
    let holder = hold_connections(1000, &daemon.socket, 4200).await;
    wait_until(
        Duration::from_secs(10),
        "the per-uid cap to close some",
        || async {
            daemon
                .logs()
                .contains("too many open API connections from one uid")
        },
    )
    .await;
    for _ in 0..5 {
        let began = Instant::now();
        let run = cli_as(&daemon, 1001, None, &["get", "c"]).await;
        assert!(!run.ok().stdout.is_empty());
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "served only after {:?}",
            began.elapsed()
        );
    }
    let lines = daemon
        .logs()
        .lines()
        .filter(|l| l.contains("too many open API connections"))
        .count();
    assert!(lines <= 10, "{lines} cap lines logged");
    drop(holder);
    daemon.finish(&[&fake]).await;
}

/// Sends `n` requests for the token `name` as `uid`, one connection each;
/// returns how many were refused with 404 (a refused read answers as a missing name).
async fn denied_requests(uid: u32, socket: &Path, name: &str, n: usize) -> usize {
    let script = "import socket, sys\n\
        denied = 0\n\
        req = ('GET /v1/tokens/%s HTTP/1.1\\r\\nHost: tokend\\r\\nConnection: close\\r\\n\\r\\n' % sys.argv[3]).encode()\n\
        for _ in range(int(sys.argv[2])):\n    \
            c = socket.socket(socket.AF_UNIX)\n    \
            c.connect(sys.argv[1])\n    \
            c.sendall(req)\n    \
            data = b''\n    \
            while True:\n        \
                b = c.recv(65536)\n        \
                if not b:\n            \
                    break\n        \
                data += b\n    \
            c.close()\n    \
            if data.split(b'\\r\\n')[0].split(b' ')[1:2] == [b'404']:\n        \
                denied += 1\n\
        print(denied)\n";
    let argv = setpriv(uid);
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .args([PYTHON, "-c", script])
        .arg(socket)
        .arg(n.to_string())
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("/usr/bin/python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.trim().parse().unwrap_or_else(|_| {
        panic!(
            "requester failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_cannot_flood_the_log() {
    let (fake, daemon) = start("readers = [\"uid:1001\"]\n").await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    assert_eq!(denied_requests(1002, &daemon.socket, "c", 2000).await, 2000);
    let denials = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("access denied") && l.contains("peer_uid=1002"))
            .count()
    };
    let logged = denials(&daemon.logs());
    assert!(
        (1..=30).contains(&logged),
        "{logged} lines for 2000 refusals"
    );
    // Once the window is over, the next refusal's line counts the rest.
    wait_until(
        Duration::from_secs(20),
        "a line with the suppressed count",
        || async {
            assert_eq!(denied_requests(1002, &daemon.socket, "c", 1).await, 1);
            daemon
                .logs()
                .lines()
                .any(|l| l.contains("access denied") && l.contains("suppressed="))
        },
    )
    .await;
    // Another uid's refusals are logged on their own.
    assert_eq!(denied_requests(1000, &daemon.socket, "c", 1).await, 1);
    assert!(daemon.logs().contains("peer_uid=1000"));
    assert!(denials(&daemon.logs()) <= 40);
    daemon.finish(&[&fake]).await;
}
