//! journald logging against a real systemd-journald (private, in its own
//! mount namespace): structured fields, priorities, MESSAGE_IDs, and no
//! token anywhere in the journal.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokend::events::Kind;
use tokio::process::Command;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Fault, Flavor};
use crate::support::{cli_at, provider_toml, wait_until, write_private, FAST_DAEMON};

/// `journalctl -D DIR -o json MATCHES...`, one JSON object per entry.
async fn journal(dir: &std::path::Path, matches: &[&str]) -> Vec<Value> {
    let out = Command::new("journalctl")
        .arg("-D")
        .arg(dir)
        .args(["-o", "json", "--no-pager"])
        .args(matches)
        .output()
        .await
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal JSON"))
        .collect()
}

fn of_kind(entries: &[Value], kind: Kind) -> Vec<&Value> {
    entries
        .iter()
        .filter(|e| e["MESSAGE_ID"] == kind.message_id())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_gets_structured_events_with_priorities_and_no_secrets() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tokend.sock");
    let config = dir.path().join("config.toml");
    write_private(
        &config,
        &format!(
            "[daemon]\nsocket = {socket:?}\ndatabase = {:?}\n{FAST_DAEMON}\n{}",
            dir.path().join("tokend.db"),
            provider_toml("p", &fake)
        ),
    );
    let wrapper = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/support/journald-wrapper.sh"
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", wrapper])
        .arg(dir.path())
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .args(["daemon", "--log", "journald", "--config"])
        .arg(&config)
        // Even debug and trace lines must not carry a token.
        .env(
            "RUST_LOG",
            "trace,hyper=info,h2=info,sqlx=info,reqwest=info,rustls=info",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("unshare (util-linux) must be installed");
    wait_until(Duration::from_secs(20), "the daemon's socket", || async {
        tokio::net::UnixStream::connect(&socket).await.is_ok()
    })
    .await;

    cli_at(
        &socket,
        &["add", "c", "--provider", "p"],
        Some(&fake.issue_refresh_token()),
    )
    .await
    .ok();
    wait_until(Duration::from_secs(10), "three refreshes", || async {
        fake.refresh_count() >= 3
    })
    .await;
    // One transient failure, then a dead grant.
    fake.push_fault(Fault::server_error(503));
    let before = fake.request_count();
    wait_until(Duration::from_secs(10), "a failed refresh", || async {
        fake.request_count() > before + 1
    })
    .await;
    // The next proactive refresh (2 s tokens) meets the dead grant. Forcing
    // one here would race a refresh already in flight with the old token.
    fake.revoke_all();
    wait_until(Duration::from_secs(10), "needs_reauth", || async {
        let run = cli_at(&socket, &["status", "c", "--json"], None).await;
        run.stdout.contains("\"state\": \"needs_reauth\"")
    })
    .await;

    let pid: i32 = std::fs::read_to_string(dir.path().join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: plain kill(2) on the daemon the wrapper started for us.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wrapper did not finish")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Everything went to the journal, nothing to stderr.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let journal_dir = dir.path().join("journal");
    let entries = journal(&journal_dir, &["TOKEND_CREDENTIAL=c"]).await;
    let refreshed = of_kind(&entries, Kind::Refreshed);
    assert!(
        refreshed.len() >= 3,
        "{} refreshed entries",
        refreshed.len()
    );
    for e in &refreshed {
        assert_eq!(e["PRIORITY"], "6", "a refresh is informational: {e}");
        assert_eq!(e["TOKEND_EVENT"], "refreshed");
        assert_eq!(e["TOKEND_PROVIDER"], "p");
        assert_eq!(e["SYSLOG_IDENTIFIER"], "tokend");
        assert!(
            e["TOKEND_EXPIRES_IN"]
                .as_str()
                .is_some_and(|s| s.parse::<u64>().is_ok()),
            "{e}"
        );
        assert!(
            e["TOKEND_ACCESS_TOKEN"]
                .as_str()
                .unwrap()
                .starts_with("sha256:"),
            "{e}"
        );
    }
    let failed = of_kind(&entries, Kind::RefreshFailed);
    assert!(!failed.is_empty());
    assert!(
        failed.iter().all(|e| e["PRIORITY"] == "4"),
        "a transient failure is a warning"
    );
    let reauth = of_kind(&entries, Kind::NeedsReauth);
    assert_eq!(reauth.len(), 1);
    assert_eq!(reauth[0]["PRIORITY"], "3", "needs re-auth is an error");
    assert!(reauth[0]["TOKEND_ERROR"]
        .as_str()
        .unwrap()
        .contains("invalid_grant"));

    // The stable MESSAGE_ID finds every "re-authorization needed" ever logged.
    let by_id = journal(
        &journal_dir,
        &[&format!("MESSAGE_ID={}", Kind::NeedsReauth.message_id())],
    )
    .await;
    assert_eq!(by_id.len(), 1);
    let started = journal(
        &journal_dir,
        &[&format!("MESSAGE_ID={}", Kind::Started.message_id())],
    )
    .await;
    assert_eq!(started.len(), 1);

    // No token or secret anywhere in the journal, in any field.
    let everything = Command::new("journalctl")
        .arg("-D")
        .arg(&journal_dir)
        .args(["-o", "export", "--no-pager"])
        .output()
        .await
        .unwrap();
    assert!(everything.stdout.len() > 1000);
    let text = String::from_utf8_lossy(&everything.stdout);
    assert_eq!(fake.find_leaks(&text), Vec::<String>::new());
}
