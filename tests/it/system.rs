//! The system test: tokend's .deb under a real systemd as PID 1.
//!
//! `tests/system/nspawn.sh` boots the host's own /usr with
//! `systemd-nspawn --boot --volatile=yes` in a private mount namespace,
//! installs the package of this build (`support::deb`, made with cargo-deb)
//! with `dpkg -i`, and walks an administrator's path with the installed
//! files: socket activation, `tokend add`, reload, restart, stop, start
//! again, and finally `dpkg --purge`. This
//! test runs two strict fake providers on 127.0.0.1 (the container shares the
//! host's network), writes the configuration (client secrets as systemd
//! credentials through a `LoadCredential=` drop-in), runs the script and
//! asserts on its report, on the journal it brings out and on what the fakes
//! saw. The script needs root and `systemd-nspawn` (Debian:
//! `systemd-container`); without them this test fails, it does not skip.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::FAST_DAEMON;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/system/nspawn.sh");

/// How long the script may run in all (it enforces this itself too).
const DEADLINE: Duration = Duration::from_secs(120);

fn write(path: &Path, contents: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A provider block whose client secret comes from the systemd credential
/// `NAME-client-secret`.
fn provider(name: &str, fake: &FakeProvider) -> String {
    format!(
        "[providers.{name}]\ntoken_url = \"{}\"\nclient_id = \"{}\"\n\
         client_secret_credential = \"{name}-client-secret\"\nclient_auth = \"basic\"\n",
        fake.token_url(),
        fake.config().client_id
    )
}

/// The script's report: its `KEY=VALUE` lines (each key once).
fn report(stdout: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for line in stdout.lines() {
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line:?}"));
        let old = map.insert(key.to_string(), value.to_string());
        assert!(old.is_none(), "{key} reported twice");
    }
    map
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The entries of `journalctl -o json` output.
fn entries(json_lines: &str) -> Vec<Value> {
    json_lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal JSON"))
        .collect()
}

/// A journal field as text (journalctl -o json gives non-UTF-8 values as
/// byte arrays; tokend's are all text).
fn field<'a>(entry: &'a Value, name: &str) -> &'a str {
    entry[name].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_work_under_systemd_as_pid_1_in_nspawn() {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("systemd-nspawn").is_file())
    });
    assert!(
        found,
        "systemd-nspawn is not installed: the system test needs it \
         (Debian: `apt-get install -y systemd-container`)"
    );

    // `fast` tokens live 2 s (refreshed every ~1.5 s in the background);
    // `slow` ones an hour, so that nothing but an explicit refresh changes
    // them and "the same token after a reload" is exact.
    let fast =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(2))).await;
    let slow = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let etc = work.join("etc");
    write(
        &etc.join("tokend/config.toml"),
        &format!(
            "[daemon]\n{FAST_DAEMON}\n{}\n{}",
            provider("fast", &fast),
            provider("slow", &slow)
        ),
        0o640,
    );
    for (name, fake) in [("fast", &fast), ("slow", &slow)] {
        let secret = fake.config().client_secret.clone().unwrap();
        write(&etc.join(format!("tokend/{name}.secret")), &secret, 0o600);
        write(
            &work.join(format!("{name}.rt")),
            &fake.issue_refresh_token(),
            0o600,
        );
    }
    write(
        &etc.join("systemd/system/tokend.service.d/credentials.conf"),
        "[Service]\n\
         LoadCredential=fast-client-secret:/etc/tokend/fast.secret\n\
         LoadCredential=slow-client-secret:/etc/tokend/slow.secret\n",
        0o644,
    );

    let package = tokio::task::spawn_blocking(crate::support::deb::package)
        .await
        .expect("building the .deb");
    let started = Instant::now();
    let mut child = Command::new(SCRIPT)
        .arg(work)
        .arg(&package)
        .env("TOKEND_SYSTEST_DEADLINE", DEADLINE.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run tests/system/nspawn.sh");
    // Read both pipes while waiting; no kill_on_drop: a SIGKILLed script
    // could not power the container off (its guardian would, but the
    // orderly way is SIGTERM and the script's own clean-up).
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let run = async {
        let (a, b, status) = tokio::join!(
            out.read_to_string(&mut stdout),
            err.read_to_string(&mut stderr),
            child.wait()
        );
        a.and(b).and(status)
    };
    let status = match tokio::time::timeout(DEADLINE + Duration::from_secs(30), run).await {
        Ok(status) => status.expect("waiting for the script"),
        Err(_) => {
            let pid = child.id().expect("pid") as i32;
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
            panic!("tests/system/nspawn.sh did not finish within {DEADLINE:?}");
        }
    };
    let elapsed = started.elapsed();
    let boot_log = std::fs::read_to_string(work.join("boot.log")).unwrap_or_default();
    // Written by the script when it fails.
    let failure_journal =
        std::fs::read_to_string(work.join("journal-failure.txt")).unwrap_or_default();
    let context = format!(
        "--- report ---\n{stdout}\n--- script stderr ---\n{stderr}\n\
         --- container console (tail) ---\n{}\n--- journal (tail) ---\n{}",
        tail(&boot_log, 30),
        tail(&failure_journal, 60)
    );
    assert!(status.success(), "nspawn.sh failed ({status}):\n{context}");
    eprintln!("system test: {elapsed:?} in all\n{stderr}");
    let r = report(&stdout);
    let get = |key: &str| -> &str {
        r.get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} missing from the report:\n{context}"))
    };
    let expect = |key: &str, want: &str| {
        assert_eq!(get(key), want, "{key}:\n{context}");
    };

    // The container booted, a pristine system without tokend.
    assert!(
        matches!(get("BOOT_STATE"), "running" | "degraded"),
        "{context}"
    );
    assert!(
        !get("FAILED_UNITS").contains("tokend"),
        "failed units: {}",
        get("FAILED_UNITS")
    );
    expect("USER_BEFORE_INSTALL", "none");

    // dpkg installed the package (its Depends met by the system's own
    // packages), and its postinst created the user and the sandbox's root
    // directory, gave the conffile to root:tokend 0640, and enabled and
    // started nothing.
    expect("DPKG_INSTALL_RC", "0");
    expect("DPKG_STATUS", "ii");
    expect(
        "INSTALLED_VERSION",
        &format!("tokend {}", env!("CARGO_PKG_VERSION")),
    );
    expect("INSTALLED_BINARY", "755 root:root");
    expect("TOKEND_USER", "tokend:/var/lib/tokend:/usr/sbin/nologin");
    expect("ROOT_DIRECTORY", "755 root:root");
    expect("CONFIG_FILE", "640 root:tokend");
    expect("CONFFILES", "/etc/tokend/config.toml");
    expect("ENABLED_AFTER_INSTALL", "disabled,disabled");
    expect("ACTIVE_AFTER_INSTALL", "inactive,inactive");
    // Completions where each shell looks for them, and the manual.
    assert!(
        get("BASH_COMPLETION").starts_with("complete ")
            && get("BASH_COMPLETION").contains(" -F _tokend ")
            && get("BASH_COMPLETION").ends_with(" tokend"),
        "{}",
        get("BASH_COMPLETION")
    );
    expect("ZSH_COMPLETION", "#compdef ");
    let fish: u32 = get("FISH_COMPLETION").parse().expect("a count");
    assert!(fish > 20, "{fish} fish completions");
    let pages: u32 = get("MAN_PAGES").parse().expect("a count");
    assert!(pages > 10, "{pages} man pages");
    assert!(
        get("MAN_TITLE").starts_with(".TH tokend-get 1 "),
        "{}",
        get("MAN_TITLE")
    );
    // An administrator's edit keeps the conffile's owner and mode.
    expect("CONFIG_AFTER_EDIT", "640 root:tokend");

    // Socket activation: the socket is systemd's, the first client starts the
    // service.
    expect("ENABLE_RC", "0");
    expect("SOCKET_ENABLED", "enabled");
    expect("SOCKET_START_RC", "0");
    expect("SOCKET_STATE", "active");
    expect("SERVICE_BEFORE_CLIENT", "inactive");
    expect("SOCKET_FILE", "socket 660 tokend:tokend");
    expect("FIRST_CLIENT_RC", "0");
    expect("SERVICE_AFTER_CLIENT", "active");
    expect("SERVICE_USER", "tokend");
    expect(
        "SERVICE_SANDBOX",
        "CapEff:0000000000000000 CapBnd:0000000000000000 NoNewPrivs:1 Seccomp:2",
    );

    // Credentials added through the CLI are refreshed against the fakes on
    // the host (with client secrets from LoadCredential=), and in the
    // background.
    expect("ADD_FAST_RC", "0");
    expect("ADD_SLOW_RC", "0");
    expect("FAST_REFRESHES", "2");

    // Reload: the same process, the same tokens, and refreshing goes on.
    expect("RELOAD_RC", "0");
    expect("SERVICE_AFTER_RELOAD", "active");
    expect("SAME_PID_AFTER_RELOAD", "yes");
    let slow_token = get("SLOW_BEFORE_RELOAD");
    assert_ne!(slow_token, "none", "{context}");
    expect("SLOW_AFTER_RELOAD", slow_token);
    expect("FAST_REFRESHES_AFTER_RELOAD", "1");

    // Restarting the service alone leaves the socket (and its file) to
    // systemd: clients still get through.
    expect("SERVICE_RESTART_RC", "0");
    expect("SOCKET_FILE_AFTER_SERVICE_RESTART", "socket");
    expect("CLIENT_AFTER_SERVICE_RESTART_RC", "0");

    // Stop is clean: inactive, not failed, exited 0 (no signal, no watchdog
    // abort), and the socket file is gone.
    expect("STOP_RC", "0");
    expect("SERVICE_AFTER_STOP", "inactive");
    expect("SOCKET_AFTER_STOP", "inactive");
    expect("SERVICE_RESULT", "success");
    expect("SERVICE_EXIT", "1/0"); // CLD_EXITED, status 0
    expect("SOCKET_FILE_AFTER_STOP", "absent");
    expect("STATE_DIRECTORY", "700 tokend:tokend");
    expect("DATABASE_FILE", "600 tokend:tokend");

    // Started again: the database survived (the same slow token, served
    // without a refresh), background refreshing goes on, and an explicit
    // refresh works with the refresh token on record.
    expect("SOCKET_RESTART_RC", "0");
    expect("STATUS_AFTER_RESTART_RC", "0");
    expect("SERVICE_AFTER_RESTART", "active");
    expect("SLOW_AFTER_RESTART", slow_token);
    expect("FAST_REFRESHES_AFTER_RESTART", "2");
    expect("SLOW_REFRESH_RC", "0");
    let refreshed = get("SLOW_AFTER_REFRESH");
    assert!(refreshed != slow_token && refreshed != "none", "{context}");
    expect("NRESTARTS", "0");
    expect("SERVICE_AT_END", "active");
    // Purged: the package's files and the unit are gone, the service was
    // stopped, and the database of refresh tokens is kept.
    expect("PURGE_RC", "0");
    expect("SERVICE_AFTER_PURGE", "inactive");
    expect("SOCKET_AFTER_PURGE", "inactive");
    expect("BINARY_AFTER_PURGE", "absent");
    expect("UNIT_AFTER_PURGE", "absent");
    expect("CONFIG_AFTER_PURGE", "absent");
    expect("STATOVERRIDE_AFTER_PURGE", "none");
    expect("DATABASE_AFTER_PURGE", "600 tokend:tokend");
    expect("NSPAWN_EXIT", "0");
    assert!(r.contains_key("DONE"), "{context}");

    let status: Value = serde_json::from_str(
        &std::fs::read_to_string(work.join("status-after-restart.json")).unwrap(),
    )
    .expect("status JSON");
    let listed = status.as_array().expect("a list of credentials");
    let mut names: Vec<&str> = listed.iter().map(|c| field(c, "name")).collect();
    names.sort_unstable();
    assert_eq!(names, ["fast", "slow"], "{status}");
    assert!(
        listed.iter().all(|c| field(c, "state") == "active"),
        "{status}"
    );

    // What the fakes saw: exactly two refreshes of slow (the add and the
    // explicit refresh; none on reload or restart), many of fast, no refresh
    // token ever presented twice, no malformed request (so the client secrets
    // from LoadCredential= were right).
    assert_eq!(slow.refresh_count(), 2);
    assert!(fast.refresh_count() >= 6, "{}", fast.refresh_count());
    assert_eq!(fast.reused_refresh_tokens(), 0);
    assert_eq!(slow.reused_refresh_tokens(), 0);
    assert_eq!(fast.rejections(), Vec::<String>::new());
    assert_eq!(slow.rejections(), Vec::<String>::new());

    // `journalctl -u tokend` shows the events, from three daemon runs
    // (activation, service restart, activation after the stop).
    let journal = std::fs::read_to_string(work.join("journal-unit.json")).unwrap();
    let unit = entries(&journal);
    let events = |event: &str, credential: Option<&str>| {
        unit.iter()
            .filter(|e| field(e, "TOKEND_EVENT") == event)
            .filter(|e| credential.is_none_or(|c| field(e, "TOKEND_CREDENTIAL") == c))
            .count()
    };
    assert_eq!(events("started", None), 3, "{journal}");
    assert_eq!(events("stopping", None), 2, "{journal}");
    assert_eq!(events("reloaded", None), 1, "{journal}");
    assert_eq!(events("credential_added", None), 2, "{journal}");
    assert_eq!(events("refreshed", Some("slow")), 2, "{journal}");
    assert!(events("refreshed", Some("fast")) >= 6, "{journal}");
    assert_eq!(events("refresh_failed", None), 0, "{journal}");
    for e in unit.iter().filter(|e| !field(e, "TOKEND_EVENT").is_empty()) {
        assert_eq!(field(e, "_SYSTEMD_UNIT"), "tokend.service", "{e}");
        assert_eq!(field(e, "SYSLOG_IDENTIFIER"), "tokend", "{e}");
    }
    // systemd's own view of the unit: no crash, no watchdog, no failure.
    let manager: Vec<&str> = unit
        .iter()
        .filter(|e| field(e, "_PID") == "1")
        .map(|e| field(e, "MESSAGE"))
        .collect();
    for bad in [
        "Watchdog timeout",
        "dumped core",
        "code=killed",
        "Failed with result",
        "Main process exited, code=exited, status=",
    ] {
        assert!(
            !manager.iter().any(|m| m.contains(bad)),
            "systemd said {bad:?}: {manager:#?}"
        );
    }

    // No token or secret anywhere: not in the whole journal (every unit,
    // every field), the console, or the script's output.
    let export = std::fs::read(work.join("journal.export")).unwrap();
    assert!(export.len() > 10_000, "the journal export looks empty");
    let export = String::from_utf8_lossy(&export);
    for fake in [&fast, &slow] {
        for text in [&*export, &boot_log, &stdout, &stderr] {
            assert_eq!(fake.find_leaks(text), Vec::<String>::new());
        }
    }
}
