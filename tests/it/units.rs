//! The systemd units in `systemd/`, checked by systemd's own tools:
//! `systemd-analyze verify` must accept them without a word,
//! `systemd-analyze security` must rate the service's sandbox at 0.9 or
//! better, and `systemd-sysusers` must create the user and group they name.
//! All three come with Debian's `systemd` package; a machine without them
//! fails these tests rather than skipping them. A few cheap checks tie the
//! files together (user, group, directories, the IP allow list).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What `ExecStart=` says in the shipped unit (the path the .deb installs).
const SHIPPED_EXEC_START: &str = "ExecStart=/usr/bin/tokend daemon";

/// The highest exposure accepted, in tenths: the `--threshold` of
/// `systemd-analyze security` (0.9 on its 0–10 scale).
const MAX_EXPOSURE_TENTHS: u32 = 9;

fn unit_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

/// `systemd-analyze`, or a failure saying what to install.
fn systemd_analyze() -> Command {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("systemd-analyze").is_file())
    });
    assert!(
        found,
        "systemd-analyze is not installed: these tests need it \
         (Debian: `apt-get install -y systemd`)"
    );
    let mut cmd = Command::new("systemd-analyze");
    // Plain, untranslated output without colours, pager or hyperlinks.
    cmd.env("LC_ALL", "C")
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_URLIFY", "0");
    cmd
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Copies both units into a temporary directory, with the service's
/// `ExecStart=` pointed at the binary this build produced (verify checks that
/// the program exists and is executable).
fn staged_units() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tokend.socket");
    std::fs::copy(unit_source("tokend.socket"), &socket).unwrap();

    let shipped = std::fs::read_to_string(unit_source("tokend.service")).unwrap();
    let exec_starts: Vec<&str> = shipped
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec_starts,
        [SHIPPED_EXEC_START],
        "tokend.service should have exactly one ExecStart=, running the installed binary"
    );
    let built = format!("ExecStart={} daemon", env!("CARGO_BIN_EXE_tokend"));
    let service = dir.path().join("tokend.service");
    std::fs::write(&service, shipped.replace(SHIPPED_EXEC_START, &built)).unwrap();
    (dir, socket, service)
}

#[test]
fn units_pass_systemd_analyze_verify_silently() {
    let (_dir, socket, service) = staged_units();
    let out = systemd_analyze()
        .arg("verify")
        .arg(&socket)
        .arg(&service)
        .output()
        .expect("cannot run systemd-analyze verify");
    let report = describe("systemd-analyze verify", &out);
    assert!(out.status.success(), "{report}");
    // verify exits 0 on unknown keys, bad values and missing programs: it only
    // prints them. Anything it prints is a defect.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify complained:\n{report}"
    );
}

/// The number in "→ Overall exposure level for tokend.service: 0.9 OK 🙂", in tenths.
fn overall_exposure_tenths(stdout: &str) -> Option<u32> {
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for tokend.service:"))?;
    let (_, rest) = line.split_once("tokend.service:")?;
    let (whole, tenth) = rest.split_whitespace().next()?.split_once('.')?;
    let (whole, tenth): (u32, u32) = (whole.parse().ok()?, tenth.parse().ok()?);
    (tenth < 10).then_some(whole * 10 + tenth)
}

#[test]
fn service_sandbox_exposure_is_at_most_0_9() {
    let (_dir, _socket, service) = staged_units();
    // --offline reads the unit file itself rather than asking a running
    // systemd (there need not be one); a path argument is loaded as is,
    // together with its directory, so neither --root nor --image is needed.
    let out = systemd_analyze()
        .arg("security")
        .arg("--offline=true")
        .arg(format!("--threshold={MAX_EXPOSURE_TENTHS}"))
        .arg("--no-pager")
        .arg(&service)
        .output()
        .expect("cannot run systemd-analyze security");
    let report = describe("systemd-analyze security", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exposure = overall_exposure_tenths(&stdout)
        .unwrap_or_else(|| panic!("no overall exposure level in the output\n{report}"));
    assert!(
        exposure <= MAX_EXPOSURE_TENTHS,
        "exposure {}.{} is above 0.{MAX_EXPOSURE_TENTHS}; every line marked ✗ costs:\n{report}",
        exposure / 10,
        exposure % 10
    );
    // With --threshold, the exit status says the same.
    assert!(out.status.success(), "{report}");
}

/// Every value of `key=` in a unit file, in order (comments skipped).
fn settings(unit: &str, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(unit_source(unit)).unwrap();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

fn setting(unit: &str, key: &str) -> String {
    let values = settings(unit, key);
    assert_eq!(
        values.len(),
        1,
        "{unit}: expected one {key}=, found {values:?}"
    );
    values[0].clone()
}

/// The socket's owner and group must exist before the service has ever run
/// and must be the service's own: the service's `RuntimeDirectory=` set-up
/// chowns /run/tokend, socket included, to `User=`/`Group=`. So a static user
/// from sysusers.d, no `DynamicUser=`, and `RuntimeDirectoryPreserve=yes` so
/// that stopping the service does not delete the socket tokend.socket serves.
#[test]
fn socket_service_and_sysusers_agree_on_user_group_and_directory() {
    let user = setting("tokend.service", "User");
    assert_eq!(setting("tokend.service", "Group"), user);
    assert_eq!(setting("tokend.socket", "SocketUser"), user);
    assert_eq!(setting("tokend.socket", "SocketGroup"), user);
    assert!(
        settings("tokend.service", "DynamicUser").is_empty(),
        "DynamicUser= would chown /run/tokend to a transient group, or move it under /run/private"
    );
    assert_eq!(setting("tokend.service", "RuntimeDirectoryPreserve"), "yes");
    let runtime = setting("tokend.service", "RuntimeDirectory");
    let runtime_dir = runtime.split_whitespace().next().unwrap();
    let listen = setting("tokend.socket", "ListenStream");
    assert_eq!(
        Path::new(&listen).parent(),
        Some(Path::new("/run").join(runtime_dir).as_path()),
        "the socket must live in the service's RuntimeDirectory"
    );

    // systemd-sysusers itself, on an empty root, creates exactly that user
    // and its group from the file the package installs.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(unit_source("tokend.sysusers"))
        .output()
        .expect("cannot run systemd-sysusers (Debian: `apt-get install -y systemd`)");
    assert!(
        out.status.success(),
        "{}",
        describe("systemd-sysusers", &out)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with(&format!("{user}:"))),
        "{passwd}"
    );
    assert!(
        group.lines().any(|l| l.starts_with(&format!("{user}:"))),
        "{group}"
    );
}

/// The service's root directory is the one tokend.tmpfile creates, owned by
/// root (so the daemon cannot write into its own root).
#[test]
fn root_directory_is_made_by_the_tmpfiles_entry() {
    let root = setting("tokend.service", "RootDirectory");
    let tmpfile = std::fs::read_to_string(unit_source("tokend.tmpfile")).unwrap();
    let entries: Vec<Vec<&str>> = tmpfile
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        entries,
        [vec!["d", root.as_str(), "0755", "root", "root", "-"]],
        "{tmpfile}"
    );
}

/// Whether `addr` falls in any IPv4 entry of the service's `IPAddressAllow=`.
fn ipv4_allowed(allow: &[String], addr: std::net::Ipv4Addr) -> bool {
    allow
        .iter()
        .flat_map(|v| v.split_whitespace())
        .any(|entry| {
            if entry == "localhost" {
                return addr.is_loopback();
            }
            let Some((net, len)) = entry.split_once('/') else {
                return false;
            };
            let (Ok(net), Ok(len)) = (net.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else {
                return false; // an IPv6 entry
            };
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(addr) & mask == u32::from(net) & mask
        })
}

/// The allow list is what its comment says: all IPv4 unicast except
/// 0.0.0.0/8 and link-local, nothing multicast or reserved.
#[test]
fn ip_allow_list_is_unicast_without_link_local() {
    assert_eq!(setting("tokend.service", "IPAddressDeny"), "any");
    let allow = settings("tokend.service", "IPAddressAllow");
    for reachable in [
        "127.0.0.1",
        "1.1.1.1",
        "10.20.30.40",
        "100.64.0.1",
        "169.253.255.255",
        "169.255.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "203.0.113.9",
        "223.255.255.255",
    ] {
        assert!(
            ipv4_allowed(&allow, reachable.parse().unwrap()),
            "{reachable} should be allowed"
        );
    }
    for blocked in [
        "0.0.0.1",
        "169.254.0.1",
        "169.254.169.254",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
    ] {
        assert!(
            !ipv4_allowed(&allow, blocked.parse().unwrap()),
            "{blocked} should be blocked"
        );
    }
}

#[test]
fn exposure_parser_reads_systemd_analyze_summary() {
    let sample = "✗ PrivateNetwork=  Service has access to the host's network  0.5\n\n\
                  → Overall exposure level for tokend.service: 0.9 OK 🙂\n";
    assert_eq!(overall_exposure_tenths(sample), Some(9));
    assert_eq!(
        overall_exposure_tenths("-> Overall exposure level for tokend.service: 10.0 DANGEROUS :-{"),
        Some(100)
    );
    assert_eq!(overall_exposure_tenths("nothing here"), None);
}
