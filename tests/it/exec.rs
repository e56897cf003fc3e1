//! `tokend exec`: the child gets the current token in its environment, is
//! restarted (or signalled) exactly once per new token, gets the signals
//! sent to exec, and its exit status is exec's.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, wait_until, Daemon, FAST_DAEMON};

/// A child that logs each start with its token, each SIGHUP, and SIGTERM
/// (then exits 7).
const CHILD: &str = r#"log=$1
echo "start $TOK" >> "$log"
trap 'echo hup >> "$log"' HUP
trap 'echo term >> "$log"; exit 7' TERM
while :; do sleep 0.02; done
"#;

async fn start() -> (FakeProvider, Daemon) {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    (fake, daemon)
}

fn exec(daemon: &Daemon, action: &str, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args([
            "exec",
            "c=TOK",
            "--on-new-token",
            action,
            "--debounce",
            "100ms",
        ])
        .args(["--", "sh", "-c", CHILD, "child"])
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tokend exec")
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn count(log: &Path, prefix: &str) -> usize {
    lines(log).iter().filter(|l| l.starts_with(prefix)).count()
}

async fn token(daemon: &Daemon) -> String {
    daemon
        .cli(&["get", "c"])
        .await
        .ok()
        .stdout
        .trim()
        .to_string()
}

/// Ends exec with SIGTERM, which reaches the child; exec exits with the
/// child's status (7). Returns exec's stderr.
async fn terminate(mut exec: Child, log: &Path) -> String {
    let pid = exec.id().expect("exec pid");
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let out = tokio::time::timeout(Duration::from_secs(10), async {
        let status = exec.wait().await.expect("wait");
        let mut err = String::new();
        if let Some(mut e) = exec.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut err).await;
        }
        (status, err)
    })
    .await
    .expect("exec ends after SIGTERM");
    assert_eq!(out.0.code(), Some(7), "{out:?} {:?}", lines(log));
    assert_eq!(lines(log).last().map(String::as_str), Some("term"));
    out.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mode_restarts_exactly_once_per_new_token() {
    let (fake, daemon) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("child.log");
    let exec = exec(&daemon, "restart", &log);
    wait_until(Duration::from_secs(10), "the child's start", || async {
        count(&log, "start") == 1
    })
    .await;
    let mut tokens = vec![token(&daemon).await];
    assert_eq!(lines(&log), [format!("start {}", tokens[0])]);
    for round in 1..=3 {
        daemon.cli(&["refresh", "c"]).await.ok();
        tokens.push(token(&daemon).await);
        wait_until(Duration::from_secs(5), "the restart", || async {
            count(&log, "start") == round + 1
        })
        .await;
        // Nothing more comes of this one token.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(count(&log, "start"), round + 1, "{:?}", lines(&log));
    }
    let mut want = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            want.push("term".to_string());
        }
        want.push(format!("start {t}"));
    }
    assert_eq!(lines(&log), want);
    let stderr = terminate(exec, &log).await;
    for t in &tokens {
        assert!(
            !stderr.contains(t.as_str()),
            "a token on exec's stderr: {stderr}"
        );
    }
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_mode_sends_one_signal_per_new_token_and_status_passes_through() {
    let (fake, daemon) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("child.log");
    let exec = exec(&daemon, "signal:HUP", &log);
    wait_until(Duration::from_secs(10), "the child's start", || async {
        count(&log, "start") == 1
    })
    .await;
    for round in 1..=3 {
        daemon.cli(&["refresh", "c"]).await.ok();
        wait_until(Duration::from_secs(5), "the signal", || async {
            count(&log, "hup") == round
        })
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(count(&log, "hup"), round, "{:?}", lines(&log));
    }
    assert_eq!(count(&log, "start"), 1, "{:?}", lines(&log));
    terminate(exec, &log).await;

    // The child's exit status is exec's, and a signal's is 128 + it.
    for (script, want) in [("exit 5", 5), ("exit 0", 0), ("kill -KILL $$", 128 + 9)] {
        let run = daemon
            .cli(&["exec", "c=TOK", "--", "sh", "-c", script])
            .await;
        assert_eq!(run.code, want, "{script}: {run:?}");
    }
    // The token is in the child's environment, under the name asked for.
    let run = daemon
        .cli(&["exec", "c=TOK", "--", "sh", "-c", "printf %s \"$TOK\""])
        .await;
    assert_eq!(run.ok().stdout, token(&daemon).await);
    // A credential that does not exist fails before anything runs.
    let run = daemon
        .cli(&["exec", "nope=TOK", "--", "sh", "-c", "echo ran"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    daemon.finish(&[&fake]).await;
}

/// A child that logs each SIGINT and SIGTERM it gets with who sent it
/// (`signo si_code si_pid`), and exits 7 on SIGTERM. It waits for them with
/// sigwaitinfo, so each one is counted, not folded into a handler's flag.
const COUNTING_CHILD: &str = r#"
import signal, sys
log = sys.argv[1]
wanted = [signal.SIGINT, signal.SIGTERM]
signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")
note("start")
while True:
    i = signal.sigwaitinfo(wanted)
    note(f"{i.si_signo} {i.si_code} {i.si_pid}")
    if i.si_signo == signal.SIGTERM:
        sys.exit(7)
"#;

/// Runs `tokend exec` on a pseudo-terminal, as an interactive shell would
/// (its own session, the terminal's foreground process group), types
/// Ctrl-C three times, then sends it SIGINT and SIGTERM with kill(2). Prints exec's pid
/// and its exit code.
const TERMINAL: &str = r#"
import os, pty, signal, sys, time
log, argv = sys.argv[1], sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
os.set_blocking(fd, False)
def drain():
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
def lines():
    try:
        with open(log) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []
def wait_for(n):
    end = time.monotonic() + 20
    while len(lines()) < n and time.monotonic() < end:
        drain()
        time.sleep(0.02)
wait_for(1)
# Three times: a second SIGINT that arrives while the first is still
# pending is folded into it, so one round could hide a duplicate.
for n in range(2, 5):
    os.write(fd, b"\x03")
    wait_for(n)
    time.sleep(0.3)
    drain()
os.kill(pid, signal.SIGINT)
wait_for(len(lines()) + 1)
os.kill(pid, signal.SIGTERM)
end = time.monotonic() + 20
while time.monotonic() < end:
    drain()
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(pid, os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.02)
else:
    os.kill(pid, signal.SIGKILL)
    print(pid, "hung")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_a_terminal_reaches_the_child_once() {
    let (fake, daemon) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("child.log");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", TERMINAL])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args([
            "exec",
            "c=TOK",
            "--",
            "/usr/bin/python3",
            "-c",
            COUNTING_CHILD,
        ])
        .arg(&log)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run python3 (Debian: python3)");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (pid, code) = printed.trim().split_once(' ').expect("pid and exit code");
    // Each Ctrl-C came once, from the kernel (SI_KERNEL, 0x80), and not
    // again from exec; a SIGINT sent to exec alone was passed on
    // (SI_USER, from exec's pid), and so was the SIGTERM, whose exit status
    // is exec's.
    assert_eq!(
        lines(&log),
        [
            "start".to_string(),
            "2 128 0".to_string(),
            "2 128 0".to_string(),
            "2 128 0".to_string(),
            format!("2 0 {pid}"),
            format!("15 0 {pid}"),
        ]
    );
    assert_eq!(code, "7");
    daemon.finish(&[&fake]).await;
}
