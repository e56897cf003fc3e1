//! The caller as the kernel reports it: `SO_PEERCRED` and `SO_PEERGROUPS`
//! when it connects, and its systemd unit from `/proc/<pid>/cgroup` when a
//! rule or a message first needs it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::OnceLock;

use super::{is_service_name, Grant, PeerUnit};

/// A connected client, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Effective uid.
    pub(crate) uid: u32,
    /// Effective gid.
    pub(crate) gid: u32,
    /// Process id, when the kernel reports one.
    pub(crate) pid: Option<i32>,
    /// Supplementary groups (`SO_PEERGROUPS`, else `/proc/<pid>/status`).
    pub(crate) groups: Vec<u32>,
    /// The systemd service the process runs in, if any: read from `/proc`
    /// only when a rule or a message needs it, since most callers are
    /// granted by uid or group and a token read must stay cheap.
    unit: OnceLock<Option<PeerUnit>>,
}

impl Peer {
    /// The peer at the other end of `stream`, whose credentials
    /// (`SO_PEERCRED`) are `cred`. The groups are the kernel's copy from
    /// when the client connected (`SO_PEERGROUPS`); on a kernel without it
    /// they come from `/proc`, and are dropped if the process changed while
    /// being read (it exited and its pid was reused), so a reused pid can
    /// never lend its groups.
    pub(crate) fn from_socket(stream: &impl AsFd, cred: tokio::net::unix::UCred) -> Peer {
        let mut peer = Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups: Vec::new(),
            unit: OnceLock::new(),
        };
        match peer_groups(stream.as_fd()) {
            Ok(groups) => peer.groups = groups,
            Err(_) => {
                if let Some(status) = peer.pid.and_then(|pid| peer.read_proc(pid, "status")) {
                    peer.groups = status_ids(&status, "Groups:");
                }
            }
        }
        peer
    }

    /// A peer with a known unit (tests and the like).
    #[cfg(test)]
    pub(crate) fn with_unit(
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        groups: Vec<u32>,
        unit: Option<PeerUnit>,
    ) -> Peer {
        Peer {
            uid,
            gid,
            pid,
            groups,
            unit: OnceLock::from(unit),
        }
    }

    /// The systemd service the process runs in, read once from
    /// `/proc/<pid>/cgroup`. A client that has exited by then has none: its
    /// pid may already be another process's, whose unit it must not get.
    pub(crate) fn unit(&self) -> Option<&PeerUnit> {
        self.unit
            .get_or_init(|| {
                let cgroup = self.read_proc(self.pid?, "cgroup")?;
                unit_of(&cgroup)
            })
            .as_ref()
    }

    /// `/proc/<pid>/FILE`, if the process was the same from before the read
    /// to after it (same start time) and runs as this peer's uid.
    fn read_proc(&self, pid: i32, file: &str) -> Option<String> {
        let read = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok();
        let before = start_time(pid)?;
        let text = read(file)?;
        let status = if file == "status" {
            None
        } else {
            Some(read("status")?)
        };
        let owner = status_ids(status.as_deref().unwrap_or(&text), "Uid:");
        (start_time(pid) == Some(before) && owner.get(1) == Some(&self.uid)).then_some(text)
    }

    /// Whether this peer matches a rule.
    pub(crate) fn matches(&self, grant: &Grant) -> bool {
        match grant {
            Grant::Uid(u) => self.uid == *u,
            Grant::Gid(g) => self.gid == *g || self.groups.contains(g),
            Grant::Unit(u) => {
                matches!(self.unit(), Some(PeerUnit::System(name)) if name == u)
            }
            Grant::UserUnit { uid, name } => matches!(
                self.unit(),
                Some(PeerUnit::User { uid: owner, name: n }) if owner == uid && n == name
            ),
        }
    }

    /// `uid 1000 (pid 42, system unit backup.service)`, for denials and logs.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("uid {}", self.uid);
        if let Some(pid) = self.pid {
            s.push_str(&format!(" (pid {pid}"));
            if let Some(unit) = self.unit() {
                s.push_str(&format!(", {unit}"));
            }
            s.push(')');
        }
        s
    }
}

/// The supplementary groups of the process at the other end of a Unix
/// socket, as the kernel recorded them when it connected (`SO_PEERGROUPS`,
/// Linux 4.13).
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; most processes have a handful.
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`, a live
        // buffer of that many bytes aligned for gid_t, and sets `len` to
        // what it wrote (or, with ERANGE, to what it needs).
        let done = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if done == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(e);
        }
        groups.resize(count, 0);
    }
}

/// The process start time (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The numbers on a `/proc/<pid>/status` line such as `Groups:` or `Uid:`.
fn status_ids(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The service in a cgroup v2 path (`0::/system.slice/backup.service`).
///
/// Only the first `.service` component counts: everything below a service
/// is that service's (a service with `Delegate=` may name sub-cgroups as it
/// likes, so nothing deeper can be believed). When that first service is a
/// user's manager, `user@UID.service`, the process belongs to that user's
/// manager and the unit is the first service below it; the manager's own
/// processes, and anything of a manager whose instance is not a uid, have
/// no unit. Scopes (login sessions, `init.scope`) are not services.
fn unit_of(cgroup: &str) -> Option<PeerUnit> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mut services = path.split('/').filter(|seg| is_service_name(seg));
    let first = services.next()?;
    match first
        .strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
    {
        None => Some(PeerUnit::System(first.to_string())),
        Some(instance) => {
            let uid = instance.parse::<u32>().ok()?;
            let name = services.next()?;
            Some(PeerUnit::User {
                uid,
                name: name.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(name: &str) -> Option<PeerUnit> {
        Some(PeerUnit::System(name.into()))
    }

    fn user(uid: u32, name: &str) -> Option<PeerUnit> {
        Some(PeerUnit::User {
            uid,
            name: name.into(),
        })
    }

    #[test]
    fn units_from_real_cgroup_paths() {
        let cases = [
            ("0::/system.slice/backup.service\n", system("backup.service")),
            (
                "0::/system.slice/foo.slice/backup.service\n",
                system("backup.service"),
            ),
            (
                "0::/system.slice/backup.service/worker\n",
                system("backup.service"),
            ),
            (
                "0::/system.slice/system-getty.slice/getty@tty1.service\n",
                system("getty@tty1.service"),
            ),
            ("0::/system.slice/foo@bar.service\n", system("foo@bar.service")),
            // A delegated service naming its sub-cgroups like a user manager
            // is still that service.
            (
                "0::/system.slice/ci.service/user@0.service/x.service\n",
                system("ci.service"),
            ),
            // The spoof: a user's own manager running `backup.service`.
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service\n",
                user(1000, "backup.service"),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-x@y.service/sub\n",
                user(1000, "app-x@y.service"),
            ),
            // A user unit named like another user's manager stays the user's.
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/user@0.service/backup.service\n",
                user(1000, "user@0.service"),
            ),
            // The manager itself, sessions, PID 1: no service.
            ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", None),
            ("0::/user.slice/user-1000.slice/user@1000.service\n", None),
            ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
            ("0::/init.scope\n", None),
            ("0::/user.slice/user@alice.service/app.slice/backup.service\n", None),
            // Inside a test's cgroup tree the same rule holds.
            ("0::/tokend-test-9/system.slice/backup.service\n", system("backup.service")),
            (
                "0::/tokend-test-9/user.slice/user-1000.slice/user@1000.service/app.slice/backup.service\n",
                user(1000, "backup.service"),
            ),
            ("0::/\n", None),
            ("1:name=systemd:/system.slice/backup.service\n", None),
            ("", None),
        ];
        for (cgroup, want) in cases {
            assert_eq!(unit_of(cgroup), want, "{cgroup}");
        }
    }

    #[test]
    fn unit_rules_match_only_their_manager() {
        let mut p = Peer::with_unit(1000, 1000, Some(1), Vec::new(), None);
        let system_rule = Grant::parse("unit:backup.service").unwrap();
        let user_rule = Grant::parse("user-unit:1000/backup.service").unwrap();
        p.unit = OnceLock::from(user(1000, "backup.service"));
        assert!(!p.matches(&system_rule), "a user's unit is no system unit");
        assert!(p.matches(&user_rule));
        assert!(!p.matches(&Grant::parse("user-unit:1001/backup.service").unwrap()));
        p.unit = OnceLock::from(system("backup.service"));
        assert!(p.matches(&system_rule));
        assert!(!p.matches(&user_rule));
        assert!(
            p.describe().contains("system unit backup.service"),
            "{}",
            p.describe()
        );
        p.unit = OnceLock::from(user(1000, "backup.service"));
        assert!(
            p.describe()
                .contains("user unit backup.service of uid 1000"),
            "{}",
            p.describe()
        );
        assert_eq!(p.unit().unwrap().rule(), "user-unit:1000/backup.service");
    }

    #[test]
    fn proc_parsing() {
        assert_eq!(
            status_ids("Name:\tx\nGroups:\t4 24 27 \nUid:\t1 2 3 4\n", "Groups:"),
            [4, 24, 27]
        );
        assert_eq!(
            status_ids("Uid:\t1000\t1000\t1000\t1000\n", "Uid:")[1],
            1000
        );
        assert!(start_time(std::process::id() as i32).is_some());
    }

    #[tokio::test]
    async fn peer_of_a_real_socket_is_this_process() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let p = Peer::from_socket(&a, a.peer_cred().unwrap());
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(p.pid, Some(std::process::id() as i32));
        let own = |v: &mut Vec<u32>| {
            v.sort_unstable();
            v.dedup();
            v.clone()
        };
        let mut expected: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        assert_eq!(own(&mut p.groups.clone()), own(&mut expected));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(p.groups, status_ids(&status, "Groups:"));
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(p.unit(), unit_of(&cgroup).as_ref());
    }

    /// A client with more groups than the first buffer holds, in a forked
    /// child that sets them (root only, as setgroups needs it).
    #[test]
    fn peer_groups_of_a_long_list_grow_the_buffer() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: setgroups needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let addr = socket2::SockAddr::unix(&path).unwrap();
        let groups: Vec<libc::gid_t> = (60_000..60_100).collect();
        // SAFETY: the child calls only async-signal-safe functions on
        // memory prepared before the fork, then _exit.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                libc::setgroups(groups.len(), groups.as_ptr());
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::connect(fd, addr.as_ptr().cast(), addr.len());
                // Wait until the parent has read the groups and closed.
                let mut byte = 0u8;
                libc::read(fd, (&mut byte as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        assert!(child > 0, "fork failed");
        let (stream, _) = listener.accept().unwrap();
        let read = peer_groups(stream.as_fd());
        drop(stream);
        // SAFETY: reaping our own child; a null status pointer is allowed.
        assert_eq!(
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) },
            child
        );
        assert_eq!(read.unwrap(), groups);
    }
}
