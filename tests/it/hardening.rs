//! Files and sockets another user could touch: database files planted in a
//! shared directory, two daemons on one database, configuration and secret
//! files others may write, a squatted socket, and the descriptor limit.
//! Other users are uid 65534 (files given away with chown, processes run
//! through `setpriv`); the tests run as root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{
    cli_as, cli_at, provider_toml, setpriv, wait_until, write_private, Daemon, FAST_DAEMON,
};

const OTHER: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn give_away(path: &Path) {
    std::os::unix::fs::chown(path, Some(OTHER), Some(OTHER)).unwrap();
}

/// A 0600 configuration naming `socket` and `database`, then `rest`.
fn write_config(path: &Path, socket: &Path, database: &Path, rest: &str) {
    write_private(
        path,
        &format!("[daemon]\nsocket = {socket:?}\ndatabase = {database:?}\n{rest}"),
    );
}

/// Runs `tokend ARGS`, which must exit on its own (a refusal) within 20 s.
async fn run_to_exit(args: &[&str], config: &Path) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("TOKEND_SOCKET")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tokend should refuse at once, not start")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn daemon_refuses(config: &Path) -> (Option<i32>, String) {
    run_to_exit(&["daemon"], config).await
}

/// `tokend check-config FILE`.
async fn check_config(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("check-config")
        .arg(config)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code(), text)
}

/// The pid of the `tokend daemon` whose command line names `config`.
fn daemon_pid(config: &Path) -> u32 {
    let want = config.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&b"daemon".as_slice()) && args.contains(&want) {
            return pid;
        }
    }
    panic!("no tokend daemon running with {}", config.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_files_planted_by_another_user_or_linked_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let socket = dir.path().join("s.sock");
    let plant = |db: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", db.display()));
            std::fs::write(&file, b"").unwrap();
            chmod(&file, 0o666);
            give_away(&file);
        }
    };

    // In a shared sticky directory, like /tmp.
    let shared = dir.path().join("tmp");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let db = shared.join("tokend.db");
    plant(&db);
    write_config(&config, &socket, &db, "");
    let (code, err) = daemon_refuses(&config).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("writable by every user"), "{err}");
    assert!(err.contains(&shared.display().to_string()), "{err}");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "the planted file was touched");

    // In a private directory, but owned by someone else (left behind, or
    // planted while the directory was open).
    let private = dir.path().join("state");
    std::fs::create_dir(&private).unwrap();
    chmod(&private, 0o700);
    let db = private.join("tokend.db");
    plant(&db);
    write_config(&config, &socket, &db, "");
    let (code, err) = daemon_refuses(&config).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), OTHER);

    // A symbolic link in place of the database.
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    let real = linked.join("real.db");
    std::fs::write(&real, b"").unwrap();
    chmod(&real, 0o600);
    let db = linked.join("tokend.db");
    std::os::unix::fs::symlink(&real, &db).unwrap();
    write_config(&config, &socket, &db, "");
    let (code, err) = daemon_refuses(&config).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_per_database_and_rekey_waits_for_it() {
    let daemon = Daemon::start(FAST_DAEMON, "").await;
    let pid = daemon_pid(&daemon.config);
    let second = daemon.dir.path().join("second.toml");
    let other_socket = daemon.dir.path().join("other/tokend.sock");
    write_config(&second, &other_socket, &daemon.database, FAST_DAEMON);
    let (code, err) = daemon_refuses(&second).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("tokend pid {pid}")), "{err}");
    assert!(!other_socket.exists());
    // The first one keeps serving.
    daemon.cli(&["status"]).await.ok();
    // Another database on the same socket: refused by the live socket.
    let other_db = daemon.dir.path().join("other/tokend.db");
    write_config(&second, &daemon.socket, &other_db, FAST_DAEMON);
    let (code, err) = daemon_refuses(&second).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already listening"), "{err}");

    let db = daemon.database.display().to_string();
    let (code, err) = run_to_exit(&["rekey", "--database", &db, "--decrypt"], &daemon.config).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("tokend pid {pid}")), "{err}");
    daemon.cli(&["status"]).await.ok();
    let lock = PathBuf::from(format!("{db}.lock"));
    assert_eq!(
        std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        pid.to_string()
    );
    daemon.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_check_config_refuse_what_start_up_refuses() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = provider_toml("p", &fake);
    let daemon = Daemon::start(FAST_DAEMON, &providers).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();

    // Same content with an inline client_secret, now readable by every user.
    chmod(&daemon.config, 0o644);
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        "the reload to be refused",
        || async { daemon.logs().contains("new configuration rejected") },
    )
    .await;
    let logs = daemon.logs();
    assert!(logs.contains("readable by every user"), "{logs}");
    assert!(!logs.contains("configuration reloaded"), "{logs}");
    daemon.cli(&["get", "c"]).await.ok();
    let (code, out) = check_config(&daemon.config).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("readable by every user"), "{out}");

    // Put right, the same file reloads.
    chmod(&daemon.config, 0o600);
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reload", || async {
        daemon.logs().contains("configuration reloaded")
    })
    .await;
    assert_eq!(check_config(&daemon.config).await.0, Some(0));
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_or_foreign_configuration_secret_and_key_files_are_refused() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let socket = dir.path().join("run/tokend.sock");
    let db = dir.path().join("state/tokend.db");
    let secret = dir.path().join("client.secret");
    write_private(&secret, fake.config().client_secret.as_deref().unwrap());
    let key = dir.path().join("db.key");
    write_private(&key, &"ab".repeat(32));
    let with_secret_file = provider_toml("p", &fake).replace(
        &format!(
            "client_secret = \"{}\"",
            fake.config().client_secret.as_deref().unwrap()
        ),
        &format!("client_secret_file = {secret:?}"),
    );
    assert!(with_secret_file.contains("client_secret_file"));
    let refused = |what: &'static str, needle: String| {
        let config = config.clone();
        async move {
            let (code, err) = daemon_refuses(&config).await;
            assert!(matches!(code, Some(1 | 2)), "{what}: {code:?} {err}");
            assert!(err.contains(&needle), "{what}: {err}");
            let (code, out) = check_config(&config).await;
            assert!(matches!(code, Some(1 | 2)), "{what}: check-config {out}");
            assert!(out.contains(&needle), "{what}: check-config {out}");
        }
    };

    // The configuration file, writable by every user, or another user's.
    write_config(&config, &socket, &db, "");
    chmod(&config, 0o602);
    refused(
        "o+w config",
        format!("{} is writable by every user", config.display()),
    )
    .await;
    chmod(&config, 0o600);
    give_away(&config);
    refused("foreign config", "owned by uid 65534".into()).await;
    std::os::unix::fs::chown(&config, Some(0), Some(0)).unwrap();

    // The client secret file.
    write_config(&config, &socket, &db, &with_secret_file);
    assert_eq!(check_config(&config).await.0, Some(0));
    chmod(&secret, 0o602);
    refused(
        "o+w secret",
        format!("{} is writable by every user", secret.display()),
    )
    .await;
    chmod(&secret, 0o600);
    give_away(&secret);
    refused("foreign secret", "owned by uid 65534".into()).await;
    std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();

    // The database key file (mode 0600, so only its owner is wrong).
    write_config(
        &config,
        &socket,
        &db,
        &format!("encryption_key_file = {key:?}\n"),
    );
    assert_eq!(check_config(&config).await.0, Some(0));
    give_away(&key);
    refused("foreign key", "owned by uid 65534".into()).await;
    assert!(!db.exists() && !socket.exists());

    // Under $CREDENTIALS_DIRECTORY the files are systemd's: not checked.
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client"), "s3cret").unwrap();
    chmod(&creds.join("client"), 0o666);
    give_away(&creds.join("client"));
    write_config(
        &config,
        &socket,
        &db,
        &with_secret_file.replace(
            &format!("client_secret_file = {secret:?}"),
            "client_secret_credential = \"client\"",
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("check-config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_directories_others_control_are_refused_and_group_readers_get_in() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let config = dir.path().join("config.toml");
    let db = dir.path().join("state/tokend.db");

    // Writable by every user (sticky or not), or owned by someone else.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    write_config(&config, &shared.join("tokend.sock"), &db, "");
    let (code, err) = daemon_refuses(&config).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refusing the socket"), "{err}");
    let squatted = dir.path().join("tokend-1000");
    std::fs::create_dir(&squatted).unwrap();
    give_away(&squatted);
    write_config(&config, &squatted.join("tokend.sock"), &db, "");
    let (code, err) = daemon_refuses(&config).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");

    // A directory created for a socket_group: its members can reach the socket.
    let socket = dir.path().join("run/tokend.sock");
    write_config(&config, &socket, &db, "socket_group = \"4242\"\n");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["daemon", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "the socket", || async {
        tokio::net::UnixStream::connect(&socket).await.is_ok()
    })
    .await;
    let meta = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o750, 4242));
    cli_as(&socket, 1000, 4242, &[], &["status"]).await.ok();
    daemon.kill().await.unwrap();
}

/// A listener run by another user on `socket`: for each of `connections`
/// connections it prints how many bytes the client sent first.
const SQUATTER: &str = r#"
use IO::Socket::UNIX; $| = 1;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $ARGV[0], Listen => 5)
    or die "listen: $!";
print "listening\n";
for (1 .. $ARGV[1]) {
    my $c = $s->accept or die "accept: $!";
    my $n = sysread($c, my $buf, 65536);
    print "got ", ($n // 0), " bytes\n";
    close $c;
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_on_the_socket_gets_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let squatted = dir.path().join("tokend-0");
    std::fs::create_dir(&squatted).unwrap();
    give_away(&squatted);
    let socket = squatted.join("tokend.sock");
    let mut squatter = setpriv(65534, 65534, &[])
        .args(["perl", "-e", SQUATTER])
        .arg(&socket)
        .arg("2")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("setpriv and perl must be installed");
    let mut lines = BufReader::new(squatter.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the squatter listens")
        .unwrap();
    assert_eq!(first.as_deref(), Some("listening"));

    let add = cli_at(
        &socket,
        &["add", "c", "--provider", "p"],
        Some("refresh-token-for-the-squatter"),
    )
    .await;
    assert_eq!(add.code, 1, "{add:?}");
    assert!(add.stderr.contains("refusing to talk to"), "{add:?}");
    assert!(add.stderr.contains("uid 65534"), "{add:?}");
    let exchange = cli_at(
        &socket,
        &[
            "exchange",
            "c",
            "--provider",
            "p",
            "--code",
            "code-for-the-squatter",
            "--redirect-uri",
            "http://localhost/cb",
        ],
        None,
    )
    .await;
    assert_eq!(exchange.code, 1, "{exchange:?}");
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the squatter reports")
            .unwrap();
        assert_eq!(line.as_deref(), Some("got 0 bytes"));
    }
    squatter.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let socket = dir.path().join("run/tokend.sock");
    write_config(&config, &socket, &dir.path().join("state/tokend.db"), "");
    let mut daemon = Command::new("prlimit")
        .arg("--nofile=512:4096")
        .arg(env!("CARGO_BIN_EXE_tokend"))
        .args(["daemon", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) must be installed");
    wait_until(Duration::from_secs(20), "the socket", || async {
        tokio::net::UnixStream::connect(&socket).await.is_ok()
    })
    .await;
    let pid = daemon.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    daemon.kill().await.unwrap();
}
