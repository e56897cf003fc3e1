//! `[[hooks]]`: a hook gets a clean environment naming the event and the
//! credential and never the token, the token on stdin only when it asked;
//! it is killed with its process group at its timeout; one credential's
//! hooks never overlap; `check-config` lists them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Fault, Flavor};
use crate::support::{cli_at, provider_toml, wait_until, write_private, Daemon, FAST_DAEMON};

/// Writes an executable `/bin/sh` script into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path
}

/// A `[[hooks]]` entry running `/bin/sh SCRIPT OUT`.
fn hook(on: &str, script: &Path, out: &Path, extra: &str) -> String {
    format!(
        "[[hooks]]\non = [{on}]\ncommand = [\"/bin/sh\", {:?}, {:?}]\n{extra}\n",
        script, out
    )
}

/// The files in `dir` whose names start with `prefix`, with their contents.
fn files(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

const RECORD: &str = r#"n=$(date +%s%N)
env > "$1/$TOKEND_EVENT.$n.env.tmp"
cat > "$1/$TOKEND_EVENT.$n.stdin"
mv "$1/$TOKEND_EVENT.$n.env.tmp" "$1/$TOKEND_EVENT.$n.env""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_the_event_in_a_clean_environment_and_the_token_only_on_stdin_when_asked() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let work = tempfile::tempdir().unwrap();
    let (plain, stdin) = (work.path().join("plain"), work.path().join("stdin"));
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::create_dir_all(&stdin).unwrap();
    let record = script(work.path(), "record.sh", RECORD);
    let config = format!(
        "{}on_invalid_grant = \"serve_until_expiry\"\n{}{}",
        provider_toml("p", &fake),
        hook("\"refreshed\", \"needs_reauth\"", &record, &plain, ""),
        hook(
            "\"refreshed\"",
            &record,
            &stdin,
            "credentials = [\"c\"]\ntoken_on_stdin = true"
        ),
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // A recorded environment is whole (renamed into place once written),
    // and its stdin was written before it.
    wait_until(Duration::from_secs(10), "refreshed hooks", || async {
        !envs(&plain, "refreshed").is_empty() && !envs(&stdin, "refreshed").is_empty()
    })
    .await;
    let env = envs(&plain, "refreshed").remove(0);
    assert_eq!(
        env.get("TOKEND_EVENT").map(String::as_str),
        Some("refreshed")
    );
    assert_eq!(env.get("TOKEND_CREDENTIAL").map(String::as_str), Some("c"));
    assert_eq!(env.get("TOKEND_PROVIDER").map(String::as_str), Some("p"));
    assert_eq!(env.get("TOKEND_STATE").map(String::as_str), Some("active"));
    assert_eq!(env.get("PATH").map(String::as_str), Some("/usr/bin:/bin"));
    let expires: i64 = env["TOKEND_EXPIRES_AT"].parse().expect("Unix seconds");
    assert!(expires > 1_700_000_000, "{expires}");
    // Nothing of the daemon's (or the test's) environment: only what /bin/sh
    // itself sets besides ours.
    for key in env.keys() {
        assert!(
            key.starts_with("TOKEND_")
                || ["PATH", "PWD", "OLDPWD", "SHLVL", "_"].contains(&key.as_str()),
            "unexpected variable {key} in {env:?}"
        );
    }
    // No stdin without token_on_stdin.
    for f in std::fs::read_dir(&plain).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "stdin") {
            assert_eq!(std::fs::read_to_string(&p).unwrap(), "", "{p:?}");
        }
    }
    // The token on stdin, when asked, and never in any environment.
    let tokens: Vec<String> = files(&stdin, "refreshed")
        .into_iter()
        .filter(|t| !t.contains("TOKEND_EVENT") && !t.is_empty())
        .collect();
    let token = tokens.first().expect("a token on stdin").trim().to_string();
    assert!(fake.access_token_expiry(&token).is_some(), "{token:?}");
    for dir in [&plain, &stdin] {
        for f in std::fs::read_dir(dir).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "env") {
                let text = std::fs::read_to_string(&p).unwrap();
                for secret in fake.issued_secrets() {
                    assert!(!text.contains(&secret), "a token in {p:?}");
                }
            }
        }
    }

    // A dead grant: needs_reauth, for the hook that asked for it only.
    fake.revoke_all();
    assert_eq!(daemon.cli(&["refresh", "c"]).await.code, 1);
    wait_until(Duration::from_secs(10), "needs_reauth hook", || async {
        !envs(&plain, "needs_reauth").is_empty()
    })
    .await;
    let env = envs(&plain, "needs_reauth").remove(0);
    assert_eq!(
        env.get("TOKEND_EVENT").map(String::as_str),
        Some("needs_reauth")
    );
    assert_eq!(
        env.get("TOKEND_STATE").map(String::as_str),
        Some("needs_reauth")
    );
    assert_eq!(env.get("TOKEND_CREDENTIAL").map(String::as_str), Some("c"));
    assert!(files(&stdin, "needs_reauth").is_empty());
    assert!(daemon.logs().contains("hook_ran"), "{}", daemon.logs());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_past_its_timeout_is_killed_with_its_children() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let work = tempfile::tempdir().unwrap();
    let sleeper = script(
        work.path(),
        "sleep.sh",
        "/bin/sleep 30 &\necho $! > \"$1/child.pid\"\necho $$ > \"$1/hook.pid\"\nwait",
    );
    let config = format!(
        "{}{}",
        provider_toml("p", &fake),
        hook("\"refreshed\"", &sleeper, work.path(), "timeout = \"1s\"")
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let (hook_pid, child_pid) = (work.path().join("hook.pid"), work.path().join("child.pid"));
    wait_until(Duration::from_secs(10), "the hook to start", || async {
        hook_pid.exists() && child_pid.exists()
    })
    .await;
    let started = Instant::now();
    let (hook_pid, child_pid) = (
        std::fs::read_to_string(&hook_pid).unwrap(),
        std::fs::read_to_string(&child_pid).unwrap(),
    );
    assert!(!dead(&hook_pid) && !dead(&child_pid), "started alive");
    wait_until(Duration::from_secs(5), "the hook to be killed", || async {
        daemon.logs().contains("hook_timed_out")
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wait_until(Duration::from_secs(2), "both processes gone", || async {
        dead(&hook_pid) && dead(&child_pid)
    })
    .await;
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credentials_hooks_run_one_after_the_other() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let work = tempfile::tempdir().unwrap();
    let slow = script(
        work.path(),
        "slow.sh",
        "echo \"start $TOKEND_EVENT\" >> \"$1/log\"\n/bin/sleep 1\necho \"end $TOKEND_EVENT\" >> \"$1/log\"",
    );
    let config = format!(
        "{}on_invalid_grant = \"serve_until_expiry\"\n{}",
        provider_toml("p", &fake),
        hook("\"refreshed\", \"needs_reauth\"", &slow, work.path(), "")
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    fake.revoke_all();
    assert_eq!(daemon.cli(&["refresh", "c"]).await.code, 1);
    let log = work.path().join("log");
    wait_until(Duration::from_secs(10), "both hooks to finish", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("end needs_reauth"))
    })
    .await;
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines.len() >= 4, "{lines:?}");
    for pair in lines.chunks(2) {
        assert!(pair[0].starts_with("start "), "{lines:?}");
        assert_eq!(
            pair.get(1).map(|l| &l[4..]),
            Some(&pair[0][6..]),
            "{lines:?}"
        );
    }
    assert_eq!(lines.first().map(String::as_str), Some("start refreshed"));
    assert_eq!(lines.last().map(String::as_str), Some("end needs_reauth"));
    daemon.finish(&[&fake]).await;
}

#[tokio::test]
async fn check_config_lists_hooks_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    write_private(
        &file,
        "[[hooks]]\non = [\"needs_reauth\"]\ncommand = [\"/usr/bin/notify-send\", \"tokend\"]\ncredentials = [\"mail\"]\n",
    );
    let run = cli_at(dir.path(), &["check-config", file.to_str().unwrap()], None).await;
    run.ok();
    assert!(
        run.stdout
            .contains("hook: /usr/bin/notify-send on needs_reauth for mail, timeout 10s"),
        "{run:?}"
    );
    write_private(
        &file,
        "[[hooks]]\non = [\"sometimes\"]\ncommand = [\"notify-send\"]\ntimeout = \"1h\"\n",
    );
    let run = cli_at(dir.path(), &["check-config", file.to_str().unwrap()], None).await;
    assert_ne!(run.code, 0, "{run:?}");
    for want in [
        "unknown event `sometimes`",
        "not an absolute path",
        "hooks[0].timeout",
    ] {
        assert!(run.stderr.contains(want), "{want}: {run:?}");
    }
}

/// The environments recorded in `dir` (by [`RECORD`]) for `event`, oldest
/// first.
fn envs(dir: &Path, event: &str) -> Vec<BTreeMap<String, String>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{event}.")) && n.ends_with(".env"))
    });
    // `date +%s%N` names: the same width for a long while, so they sort
    // by time.
    names.sort();
    names
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse_env(&t))
        .collect()
}

/// Asserts that no token, code or secret the fake ever issued is in any
/// environment recorded in `dir`.
fn assert_no_secret_in_envs(dir: &Path, fake: &FakeProvider) {
    for f in std::fs::read_dir(dir).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "env") {
            let text = std::fs::read_to_string(&p).unwrap();
            let leaks = fake.find_leaks(&text);
            assert!(leaks.is_empty(), "secrets in {p:?}: {leaks:?}");
        }
    }
}

fn now_secs() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

/// Waits until the log says "configuration reloaded" `n` times.
async fn reloaded(daemon: &Daemon, n: usize) {
    wait_until(Duration::from_secs(10), "the reload", || async {
        daemon.logs().matches("configuration reloaded").count() >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_failed_runs_for_failed_attempts_at_growing_intervals_and_recovered_ends_them() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let record = script(work.path(), "record.sh", RECORD);
    let config = format!(
        "{}{}",
        provider_toml("p", &fake),
        hook(
            "\"refreshed\", \"refresh_failed\", \"recovered\", \"needs_reauth\"",
            &record,
            &out,
            ""
        ),
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    daemon.cli(&["refresh", "c"]).await.ok();
    wait_until(Duration::from_secs(10), "two refreshed hooks", || async {
        envs(&out, "refreshed").len() >= 2
    })
    .await;
    assert!(
        envs(&out, "refresh_failed").is_empty(),
        "a success is no failure"
    );
    assert!(envs(&out, "recovered").is_empty());

    // The provider is down: every attempt fails and is retried with backoff
    // (200 ms doubling to 2 s).
    fake.set_sticky_fault(Some(Fault::server_error(503)));
    assert_eq!(daemon.cli(&["refresh", "c"]).await.code, 1);
    wait_until(
        Duration::from_secs(15),
        "the 4th failure's hook",
        || async {
            envs(&out, "refresh_failed")
                .iter()
                .any(|e| e.get("TOKEND_ATTEMPT").map(String::as_str) == Some("4"))
        },
    )
    .await;
    let failed = envs(&out, "refresh_failed");
    let first = &failed[0];
    assert_eq!(first["TOKEND_EVENT"], "refresh_failed");
    assert_eq!(first["TOKEND_CREDENTIAL"], "c");
    assert_eq!(first["TOKEND_PROVIDER"], "p");
    assert_eq!(first["TOKEND_STATE"], "active");
    assert_eq!(first["TOKEND_ATTEMPT"], "1");
    assert!(first["TOKEND_ERROR"].contains("503"), "{first:?}");
    let retry: i64 = first["TOKEND_NEXT_REFRESH_AT"]
        .parse()
        .expect("Unix seconds");
    assert!(
        (now_secs() - 60..now_secs() + 60).contains(&retry),
        "{retry}"
    );
    // Not every failure: the 1st, 2nd and 4th, not the 3rd.
    let attempts: Vec<&str> = failed
        .iter()
        .map(|e| e["TOKEND_ATTEMPT"].as_str())
        .collect();
    assert_eq!(&attempts[..3], ["1", "2", "4"], "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|a| a.parse::<u32>().unwrap().is_power_of_two()),
        "{attempts:?}"
    );
    let refreshed_before = envs(&out, "refreshed").len();

    // Back up: the next retry succeeds, and the streak is over.
    fake.set_sticky_fault(None);
    wait_until(Duration::from_secs(10), "recovered", || async {
        !envs(&out, "recovered").is_empty()
    })
    .await;
    let back = &envs(&out, "recovered")[0];
    assert_eq!(back["TOKEND_STATE"], "active");
    for gone in ["TOKEND_ERROR", "TOKEND_ATTEMPT"] {
        assert!(!back.contains_key(gone), "{gone} in {back:?}");
    }
    wait_until(Duration::from_secs(10), "its refreshed hook", || async {
        envs(&out, "refreshed").len() > refreshed_before
    })
    .await;
    let failures = envs(&out, "refresh_failed").len();

    // A rejected grant is needs_reauth, not also refresh_failed.
    fake.revoke_all();
    assert_eq!(daemon.cli(&["refresh", "c"]).await.code, 1);
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // Hooks of one credential run in order: once the second recovery is
    // recorded, whatever the rejection ran has been recorded too.
    wait_until(
        Duration::from_secs(10),
        "needs_reauth, then recovered",
        || async { envs(&out, "recovered").len() >= 2 },
    )
    .await;
    assert_eq!(envs(&out, "needs_reauth").len(), 1);
    assert_eq!(envs(&out, "refresh_failed").len(), failures);
    assert_no_secret_in_envs(&out, &fake);
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_expiring_runs_once_when_the_warning_appears() {
    let fake = FakeProvider::start(
        FakeConfig::new(Flavor::Didit).with_refresh_ttl(Duration::from_secs(3600)),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let record = script(work.path(), "record.sh", RECORD);
    let config = |warning: &str| {
        format!(
            "{}refresh_token_warning = \"{warning}\"\n{}",
            provider_toml("p", &fake),
            hook(
                "\"refreshed\", \"refresh_token_expiring\"",
                &record,
                &out,
                ""
            ),
        )
    };
    let mut daemon = Daemon::start(FAST_DAEMON, &config("30m")).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    wait_until(Duration::from_secs(10), "refreshed", || async {
        !envs(&out, "refreshed").is_empty()
    })
    .await;
    let refreshed = &envs(&out, "refreshed")[0];
    let rt_expires: i64 = refreshed["TOKEND_REFRESH_TOKEN_EXPIRES_AT"]
        .parse()
        .expect("Unix seconds");
    assert!(
        (now_secs() + 3500..now_secs() + 3700).contains(&rt_expires),
        "{rt_expires}"
    );
    assert!(!refreshed.contains_key("TOKEND_WARNING"), "{refreshed:?}");
    assert!(
        envs(&out, "refresh_token_expiring").is_empty(),
        "an hour left, a 30 min window"
    );

    // A wider window: the warning appears on reload, without a new token.
    daemon.write_config(FAST_DAEMON, &config("2h"));
    daemon.signal(libc::SIGHUP);
    reloaded(&daemon, 1).await;
    wait_until(
        Duration::from_secs(10),
        "refresh_token_expiring",
        || async { !envs(&out, "refresh_token_expiring").is_empty() },
    )
    .await;
    let expiring = &envs(&out, "refresh_token_expiring")[0];
    assert_eq!(expiring["TOKEND_CREDENTIAL"], "c");
    assert_eq!(expiring["TOKEND_STATE"], "active");
    assert!(
        expiring["TOKEND_WARNING"].contains("refresh token expires in"),
        "{expiring:?}"
    );
    assert_eq!(
        expiring["TOKEND_REFRESH_TOKEN_EXPIRES_AT"],
        rt_expires.to_string()
    );

    // Each refresh renews the warning's text, not its appearance. Hooks of
    // one credential run in order: once the last refresh's hook is recorded,
    // whatever an earlier one ran has been recorded too.
    for n in 2..=4 {
        daemon.cli(&["refresh", "c"]).await.ok();
        wait_until(Duration::from_secs(10), "refreshed", || async {
            envs(&out, "refreshed").len() >= n
        })
        .await;
    }
    assert_eq!(envs(&out, "refresh_token_expiring").len(), 1);

    // A new credential whose first token comes with the warning.
    daemon.add("d", "p", &fake.issue_refresh_token()).await.ok();
    wait_until(
        Duration::from_secs(10),
        "d's refresh_token_expiring",
        || async {
            envs(&out, "refresh_token_expiring")
                .iter()
                .any(|e| e["TOKEND_CREDENTIAL"] == "d")
        },
    )
    .await;
    assert_eq!(envs(&out, "refresh_token_expiring").len(), 2);
    assert!(!daemon.logs().contains("change only on restart"));

    // A warning that stands when tokend starts is told again then: no update
    // would tell it (the machine may have been off as it appeared).
    daemon.stop().await;
    daemon.spawn().await;
    wait_until(Duration::from_secs(10), "the standing warnings", || async {
        envs(&out, "refresh_token_expiring").len() >= 4
    })
    .await;
    let mut told: Vec<String> = envs(&out, "refresh_token_expiring")[2..]
        .iter()
        .map(|e| e["TOKEND_CREDENTIAL"].clone())
        .collect();
    told.sort();
    assert_eq!(told, ["c", "d"]);
    assert_no_secret_in_envs(&out, &fake);
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_hooks_without_a_restart() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let work = tempfile::tempdir().unwrap();
    let (first, second) = (work.path().join("first"), work.path().join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    let record = script(work.path(), "record.sh", RECORD);
    let provider = provider_toml("p", &fake);
    // No hook at start: the runner starts with the first one a reload brings.
    let mut daemon = Daemon::start(FAST_DAEMON, &provider).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();

    daemon.write_config(
        FAST_DAEMON,
        &format!("{provider}{}", hook("\"refreshed\"", &record, &first, "")),
    );
    daemon.signal(libc::SIGHUP);
    reloaded(&daemon, 1).await;
    assert!(
        envs(&first, "refreshed").is_empty(),
        "nothing ran before the reload"
    );
    daemon.cli(&["refresh", "c"]).await.ok();
    wait_until(Duration::from_secs(10), "the added hook", || async {
        !envs(&first, "refreshed").is_empty()
    })
    .await;
    assert_eq!(envs(&first, "refreshed")[0]["TOKEND_CREDENTIAL"], "c");

    // The first hook is replaced by another. Both would run in order for
    // one event, the first one first: once the second has run, the first
    // would have.
    daemon.write_config(
        FAST_DAEMON,
        &format!("{provider}{}", hook("\"refreshed\"", &record, &second, "")),
    );
    daemon.signal(libc::SIGHUP);
    reloaded(&daemon, 2).await;
    daemon.cli(&["refresh", "c"]).await.ok();
    wait_until(Duration::from_secs(10), "the new hook", || async {
        !envs(&second, "refreshed").is_empty()
    })
    .await;
    assert_eq!(envs(&first, "refreshed").len(), 1, "the removed hook ran");
    assert!(daemon.logs().contains("hooks ([[hooks]]) changed"));
    assert!(!daemon.logs().contains("change only on restart"));
    assert!(daemon.is_running());
    assert_no_secret_in_envs(&first, &fake);
    assert_no_secret_in_envs(&second, &fake);
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_running_during_a_reload_that_removes_it_finishes() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let work = tempfile::tempdir().unwrap();
    let (go, log) = (work.path().join("go"), work.path().join("log"));
    // Runs until the test lets it go, so it is surely running at the reload.
    let slow = script(
        work.path(),
        "slow.sh",
        &format!(
            "echo start >> \"$1/log\"\nwhile [ ! -e {go:?} ]; do /bin/sleep 0.05; done\necho end >> \"$1/log\""
        ),
    );
    let provider = provider_toml("p", &fake);
    let daemon = Daemon::start(
        FAST_DAEMON,
        &format!(
            "{provider}{}",
            hook("\"refreshed\"", &slow, work.path(), "timeout = \"30s\"")
        ),
    )
    .await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    wait_until(Duration::from_secs(10), "the hook to start", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("start"))
    })
    .await;
    daemon.write_config(FAST_DAEMON, &provider);
    daemon.signal(libc::SIGHUP);
    reloaded(&daemon, 1).await;
    assert!(daemon.logs().contains("hooks ([[hooks]]) changed"));
    std::fs::write(&go, "").unwrap();
    wait_until(Duration::from_secs(10), "the hook to finish", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("end"))
    })
    .await;
    wait_until(Duration::from_secs(10), "hook_ran", || async {
        daemon.logs().contains("hook_ran")
    })
    .await;
    daemon.finish(&[&fake]).await;
}
