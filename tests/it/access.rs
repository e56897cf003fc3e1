//! Who may read which token, decided from the kernel's word about the caller
//! (SO_PEERCRED): clients run as other users through `setpriv`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use tokio::process::Command;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_as, provider_toml, setpriv, write_private, Daemon, Run, FAST_DAEMON};

const SOCKET_GID: u32 = 4242;
const ADMIN_GID: u32 = 4243;
const READER_GID: u32 = 4244;

/// Runs the CLI as `uid`, with primary group `gid` and supplementary `groups`.
async fn as_user(daemon: &Daemon, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Run {
    cli_as(&daemon.socket, uid, gid, groups, args).await
}

async fn start() -> (FakeProvider, Daemon) {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = format!(
        "{}readers = [\"uid:1000\", \"gid:{READER_GID}\", \"unit:backup.service\"]\n\
         [credentials.private]\nreaders = [\"uid:1001\"]\n",
        provider_toml("p", &fake)
    );
    let extra =
        format!("{FAST_DAEMON}admin_group = \"{ADMIN_GID}\"\nsocket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &providers).await;
    daemon.open_to_other_users();
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    daemon
        .add("private", "p", &fake.issue_refresh_token())
        .await
        .ok();
    (fake, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_groups_units_and_admins() {
    let (fake, daemon) = start().await;
    let token = daemon.cli(&["get", "c"]).await.stdout;

    // An allowed uid gets the token.
    let run = as_user(&daemon, 1000, SOCKET_GID, &[], &["get", "c"]).await;
    assert_eq!(run.stdout, token, "{run:?}");
    // A denied uid is told no more than for a missing credential.
    let run = as_user(&daemon, 1002, SOCKET_GID, &[], &["get", "c"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("no credential named `c` that you may read"),
        "{run:?}"
    );
    assert!(run.stdout.is_empty());
    // A supplementary group grants it.
    let run = as_user(&daemon, 1002, SOCKET_GID, &[READER_GID], &["get", "c"]).await;
    assert_eq!(run.stdout, token, "{run:?}");
    // A per-credential rule overrides the provider's.
    let run = as_user(&daemon, 1000, SOCKET_GID, &[], &["get", "private"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("that you may read"), "{run:?}");
    let run = as_user(&daemon, 1001, SOCKET_GID, &[], &["get", "private"]).await;
    run.ok();

    // A non-admin sees only what it may read, and may change nothing.
    let run = as_user(&daemon, 1000, SOCKET_GID, &[], &["status", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&run.ok().stdout).unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c"]);
    for args in [
        &["refresh", "c"][..],
        &["remove", "c"],
        &[
            "exchange",
            "x",
            "--provider",
            "p",
            "--code",
            "k",
            "--redirect-uri",
            "http://127.0.0.1/cb",
        ],
    ] {
        let run = as_user(&daemon, 1000, SOCKET_GID, &[], args).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains("may not"), "{args:?}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("members of group {ADMIN_GID}")),
            "{run:?}"
        );
    }
    let add = setpriv(1000, SOCKET_GID, &[])
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args([
            "add",
            "x",
            "--provider",
            "p",
            "--refresh-token-file",
            "/dev/null",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(add.status.code(), Some(1));

    // A member of the admin group may administer and sees everything.
    let run = as_user(&daemon, 1005, SOCKET_GID, &[ADMIN_GID], &["refresh", "c"]).await;
    run.ok();
    let run = as_user(&daemon, 1005, SOCKET_GID, &[ADMIN_GID], &["status"]).await;
    assert!(run.ok().stdout.contains("private"));
    assert!(daemon.logs().contains("access denied"));
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_modes_and_socket_group() {
    let (fake, daemon) = start().await;
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), SOCKET_GID);
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", daemon.database.display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
    // Outside the socket's group, the kernel refuses the connection itself.
    let run = as_user(&daemon, 1000, 1000, &[], &["get", "c"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("Permission denied"), "{run:?}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposed_secrets_and_unsafe_directories_stop_start_up() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let text = format!(
        "[daemon]\nsocket = {:?}\ndatabase = {:?}\n{}",
        dir.path().join("s.sock"),
        state.join("tokend.db"),
        provider_toml("p", &fake)
    );
    let daemon = |config: std::path::PathBuf| async move {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            Command::new(env!("CARGO_BIN_EXE_tokend"))
                .args(["daemon", "--config"])
                .arg(&config)
                .output(),
        )
        .await
        .expect("tokend should refuse at once")
        .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // An inline client secret in a world-readable file.
    std::fs::write(&config, &text).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = daemon(config.clone()).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("readable by every user") && err.contains("providers p"),
        "{err}"
    );
    assert!(!state.join("tokend.db").exists());
    // A state directory anyone may write to.
    write_private(&config, &text);
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = daemon(config.clone()).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("writable by every user"), "{err}");
}
