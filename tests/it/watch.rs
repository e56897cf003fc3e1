//! `GET /v1/tokens/{name}/watch` and `tokend watch`: every new token reaches a
//! watcher within 100 ms of its commit, a state change and a removal are
//! told, the read ACL and the per-uid connection cap hold, and what a
//! watcher costs the daemon (memory, delay) is measured.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdout, Command};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_as, provider_toml, Daemon, FAST_DAEMON};

const SOCKET_GID: u32 = 4262;
const PYTHON: &str = "/usr/bin/python3";

/// `tokend watch NAME --json` as the test's own user, its stdout as lines.
fn watch(daemon: &Daemon, name: &str) -> (Child, tokio::io::Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["watch", name, "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tokend watch");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// The next printed token, parsed, within `limit`.
async fn next_token(
    lines: &mut tokio::io::Lines<BufReader<ChildStdout>>,
    limit: Duration,
) -> serde_json::Value {
    let line = tokio::time::timeout(limit, lines.next_line())
        .await
        .expect("a token in time")
        .expect("watch stdout")
        .expect("a line before the end");
    serde_json::from_str(&line).expect("a JSON line")
}

async fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text).await;
    }
    text
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_token_arrives_within_100ms_and_removal_ends_the_stream() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!(
        "{}on_invalid_grant = \"serve_until_expiry\"\n",
        provider_toml("p", &fake)
    );
    let daemon = Daemon::start(FAST_DAEMON, &providers).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let (mut child, mut lines) = watch(&daemon, "c");
    let first = next_token(&mut lines, Duration::from_secs(10)).await;
    let current = daemon.cli(&["get", "c"]).await;
    assert_eq!(
        first["access_token"].as_str().map(|t| format!("{t}\n")),
        Some(current.ok().stdout.clone())
    );

    let client = tokend::client::Client::new(&daemon.socket);
    let (mut after_return, mut after_start) = (Vec::new(), Vec::new());
    let mut seen = vec![first["access_token"].as_str().unwrap().to_string()];
    for _ in 0..40 {
        let began = Instant::now();
        client
            .call::<serde_json::Value>(
                hyper::Method::POST,
                "/v1/credentials/c/refresh",
                None::<&()>,
            )
            .await
            .expect("refresh");
        let returned = Instant::now();
        let token = next_token(&mut lines, Duration::from_secs(2)).await;
        let arrived = Instant::now();
        // The commit happened between `began` and `returned`.
        after_return.push(arrived.saturating_duration_since(returned));
        after_start.push(arrived - began);
        let value = token["access_token"].as_str().expect("a token").to_string();
        assert!(!seen.contains(&value), "token delivered twice");
        seen.push(value);
    }
    // Exactly one event per token: the last one is the current one, and
    // nothing else is waiting.
    let current = daemon.cli(&["get", "c"]).await;
    assert_eq!(
        Some(current.ok().stdout.trim()),
        seen.last().map(String::as_str)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lines.next_line())
            .await
            .is_err(),
        "an extra event arrived"
    );
    after_return.sort();
    after_start.sort();
    println!(
        "watch delivery delay over {} tokens: after the refresh's answer p50 {:?} p99 {:?}; \
         from the refresh's start (a bound on commit to delivery) p50 {:?} p99 {:?}",
        after_return.len(),
        percentile(&after_return, 50),
        percentile(&after_return, 99),
        percentile(&after_start, 50),
        percentile(&after_start, 99),
    );
    let worst = after_return.last().copied().unwrap_or_default();
    assert!(worst < Duration::from_millis(100), "a token took {worst:?}");

    // A dead grant is a state event (on stderr), and the stream goes on.
    fake.revoke_all();
    assert_eq!(daemon.cli(&["refresh", "c"]).await.code, 1);
    daemon.cli(&["remove", "c"]).await.ok();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("the watch ends on removal")
        .expect("wait");
    let stderr = stderr_of(&mut child).await;
    assert!(status.success(), "{status:?} {stderr}");
    assert!(stderr.contains("`c` is now needs_reauth"), "{stderr}");
    assert!(stderr.contains("`c` was removed"), "{stderr}");
    assert!(lines.next_line().await.expect("stdout").is_none());

    // A missing credential is refused at once.
    let run = daemon.cli(&["watch", "nope"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    daemon.finish(&[&fake]).await;
}

/// Opens `n` watches of `name` as `uid`, one connection each, and prints how
/// many were answered 200; holds them until stdin closes.
const FLOOD: &str = "import socket, sys\n\
    held, ok = [], 0\n\
    req = ('GET /v1/tokens/%s/watch HTTP/1.1\\r\\nHost: tokend\\r\\n\\r\\n' % sys.argv[2]).encode()\n\
    for _ in range(int(sys.argv[3])):\n    \
        c = socket.socket(socket.AF_UNIX)\n    \
        c.settimeout(5)\n    \
        try:\n        \
            c.connect(sys.argv[1])\n        \
            c.sendall(req)\n        \
            if c.recv(64).startswith(b'HTTP/1.1 200'):\n            \
                ok += 1\n        \
            held.append(c)\n    \
        except OSError:\n        \
            pass\n\
    print(ok, flush=True)\n\
    sys.stdin.read()\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_keep_the_read_acl_and_the_per_uid_cap() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!(
        "{}readers = [\"uid:1000\", \"uid:1001\"]\n",
        provider_toml("p", &fake)
    );
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &providers).await;
    daemon.open_to_other_users();
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();

    // Another uid, not among the readers, is told no more than for a
    // missing credential.
    let run = cli_as(&daemon.socket, 1002, SOCKET_GID, &[], &["watch", "c"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("that you may read"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");

    // One uid's flood of watchers stops at its connection cap (128)...
    let mut flood = crate::support::setpriv(1000, SOCKET_GID, &[])
        .args([PYTHON, "-c", FLOOD])
        .arg(&daemon.socket)
        .args(["c", "200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("setpriv and /usr/bin/python3 must be installed");
    let mut out = BufReader::new(flood.stdout.take().unwrap()).lines();
    let ok: usize = tokio::time::timeout(Duration::from_secs(60), out.next_line())
        .await
        .expect("the flood ends in time")
        .expect("flood stdout")
        .expect("a count")
        .trim()
        .parse()
        .expect("a number");
    assert!((1..=128).contains(&ok), "{ok} watches of 200 answered");
    assert!(daemon
        .logs()
        .contains("too many open API connections from one uid"));
    // ...and another reader still watches, and sees a new token.
    let mut other = crate::support::setpriv(1001, SOCKET_GID, &[])
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["watch", "c"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("setpriv");
    let mut other_lines = BufReader::new(other.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), other_lines.next_line())
        .await
        .expect("in time")
        .unwrap()
        .expect("the current token");
    daemon.cli(&["refresh", "c"]).await.ok();
    let second = tokio::time::timeout(Duration::from_secs(2), other_lines.next_line())
        .await
        .expect("in time")
        .unwrap()
        .expect("the new token");
    assert_ne!(first, second);
    drop(flood);

    // Shutdown ends the streams promptly: the watcher fails (the stream
    // did not end with a removal).
    let began = Instant::now();
    daemon_stop_and_wait(daemon, &fake, &mut other).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
}

async fn daemon_stop_and_wait(daemon: Daemon, fake: &FakeProvider, watcher: &mut Child) {
    daemon.finish(&[fake]).await;
    let status = tokio::time::timeout(Duration::from_secs(5), watcher.wait())
        .await
        .expect("the watcher ends with the daemon")
        .expect("wait");
    assert_eq!(status.code(), Some(1), "{status:?}");
}

/// The daemon's resident memory in KiB.
fn daemon_rss_kib(daemon: &Daemon) -> u64 {
    let config = daemon.config.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let path = entry.expect("entry").path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "daemon") && args.iter().any(|a| a == &config) {
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            if let Some(rss) = rss {
                return rss;
            }
        }
    }
    panic!("daemon process not found");
}

/// A raw watch connection, read until `tokens` token events have come.
async fn read_tokens(stream: &mut BufReader<UnixStream>, tokens: usize) {
    let mut seen = 0;
    let mut line = String::new();
    while seen < tokens {
        line.clear();
        let n = stream.read_line(&mut line).await.expect("read");
        assert!(n > 0, "the stream ended");
        if line.starts_with("event: token") {
            seen += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_watcher_and_fan_out_to_500() {
    const WATCHERS: usize = 500;
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // Warm the daemon up so the baseline includes its steady state.
    for _ in 0..3 {
        daemon.cli(&["get", "c"]).await.ok();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = daemon_rss_kib(&daemon);
    let mut streams = Vec::with_capacity(WATCHERS);
    for _ in 0..WATCHERS {
        let mut s = UnixStream::connect(&daemon.socket).await.expect("connect");
        s.write_all(b"GET /v1/tokens/c/watch HTTP/1.1\r\nHost: tokend\r\n\r\n")
            .await
            .expect("request");
        let mut s = BufReader::new(s);
        read_tokens(&mut s, 1).await;
        streams.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = daemon_rss_kib(&daemon);
    let per = after.saturating_sub(before) * 1024 / WATCHERS as u64;
    println!(
        "daemon RSS: {before} KiB with 0 watchers, {after} KiB with {WATCHERS}: about {per} bytes per watcher"
    );
    assert!(per < 64 * 1024, "{per} bytes per watcher");

    // One refresh reaches every watcher.
    let began = Instant::now();
    daemon.cli(&["refresh", "c"]).await.ok();
    let all = futures::future::join_all(streams.iter_mut().map(|s| read_tokens(s, 1)));
    tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("every watcher hears the new token");
    println!(
        "one new token reached {WATCHERS} watchers within {:?} of the refresh command's start",
        began.elapsed()
    );
    drop(streams);
    daemon.finish(&[&fake]).await;
}
