//! sd_notify and socket activation, through systemd's own
//! `systemd-socket-activate`: the daemon inherits the listening socket and
//! reports to a datagram socket this test owns.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;
use tokio::process::Command;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, write_private};
use tokend::client::Client;

/// The next notification, as its `KEY=VALUE` lines.
async fn next(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, sock.recv(&mut buf))
        .await
        .expect("no notification in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits for a notification with a line starting with `line`, returning
/// every one seen.
async fn until(sock: &UnixDatagram, line: &str, within: Duration) -> Vec<(Instant, Vec<String>)> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {line} within {within:?}; saw {seen:?}");
        let msg = next(sock, left).await;
        let hit = msg.iter().any(|l| l.starts_with(line));
        seen.push((Instant::now(), msg));
        if hit {
            return seen;
        }
    }
}

async fn health(socket: &Path) -> bool {
    Client::new(socket)
        .raw(hyper::Method::GET, "/v1/health", None, "application/json")
        .await
        .is_ok_and(|(status, _)| status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_watchdog_status_reload_and_stop_under_socket_activation() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = dir.path().join("config.toml");
    write_private(
        &config,
        &format!(
            "[daemon]\ndatabase = {:?}\n{}",
            dir.path().join("tokend.db"),
            provider_toml("p", &fake)
        ),
    );
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&api)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg("WATCHDOG_USEC=1000000")
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .args(["daemon", "--log", "stderr", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-socket-activate must be installed (package systemd)");
    // systemd-socket-activate listens first and starts the daemon on the
    // first connection, which the daemon then serves from the inherited socket.
    let wait_for_socket = Instant::now();
    while !api.exists() {
        assert!(
            wait_for_socket.elapsed() < Duration::from_secs(10),
            "no socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = tokio::spawn({
        let api = api.clone();
        async move { health(&api).await }
    });
    let seen = until(&notify, "READY=1", Duration::from_secs(20)).await;
    // Ready means serving: a new request is answered at once.
    let t = Instant::now();
    assert!(health(&api).await);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(first.await.unwrap(), "the activating connection was served");
    let ready = &seen.last().unwrap().1;
    assert!(
        ready.contains(&"STATUS=0 credentials".to_string()),
        "{ready:?}"
    );

    // Watchdog pings at half of WATCHDOG_USEC, from the refresher's loop.
    let start = Instant::now();
    let mut pings = Vec::new();
    while start.elapsed() < Duration::from_millis(3200) {
        let msg = next(&notify, Duration::from_secs(2)).await;
        if msg.iter().any(|l| l == "WATCHDOG=1") {
            pings.push(Instant::now());
        }
    }
    assert!(
        (5..=8).contains(&pings.len()),
        "{} pings in 3.2 s",
        pings.len()
    );
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(350) && gap < Duration::from_millis(750),
            "{gap:?}"
        );
    }

    // STATUS follows the credentials.
    let body = serde_json::json!({"provider": "p", "refresh_token": fake.issue_refresh_token()});
    let _: serde_json::Value = Client::new(&api)
        .call(hyper::Method::PUT, "/v1/credentials/c", Some(&body))
        .await
        .unwrap();
    // A one-hour token is refreshed 45 to 48 minutes in.
    until(
        &notify,
        "STATUS=1 credential: 1 active; next refresh in 4",
        Duration::from_secs(5),
    )
    .await;

    // SIGHUP: RELOADING=1, then READY=1 again; the credential survives.
    let pid = child.id().unwrap() as i32;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let seen = until(&notify, "RELOADING=1", Duration::from_secs(5)).await;
    let reloading = &seen.last().unwrap().1;
    assert!(
        reloading.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    until(&notify, "READY=1", Duration::from_secs(5)).await;
    assert!(health(&api).await);

    // SIGTERM: STOPPING=1 and a clean exit.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    until(&notify, "STOPPING=1", Duration::from_secs(5)).await;
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("daemon did not exit")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(fake.find_leaks(&log).is_empty());
}
