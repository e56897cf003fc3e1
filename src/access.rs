//! Who may do what. The caller's identity comes from the kernel
//! (`SO_PEERCRED` on the socket, then `/proc/<pid>` for secondary groups and
//! the systemd unit), never from anything the client says; the rules come
//! from the configuration (`readers = ["user:alice", "group:mail",
//! "unit:backup.service"]`).

use std::fmt;

/// One rule granting read access to a credential's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    /// A user, by uid (`user:NAME` or `uid:N`).
    Uid(u32),
    /// A group, by gid, primary or secondary (`group:NAME` or `gid:N`).
    Gid(u32),
    /// Processes of a system service (`unit:NAME.service`): a unit of the
    /// system manager, never one a user's manager runs.
    Unit(String),
    /// Processes of a service run by a user's own manager
    /// (`user-unit:USER/NAME.service`, USER a name or uid).
    UserUnit {
        /// The uid whose manager (`user@UID.service`) runs the unit.
        uid: u32,
        /// The unit's name.
        name: String,
    },
}

impl Grant {
    /// Parses a rule, resolving user and group names to ids now so a typo is
    /// a configuration error, not a silent denial.
    pub(crate) fn parse(rule: &str) -> Result<Grant, String> {
        let (kind, value) = rule.split_once(':').ok_or_else(|| {
            format!(
                "`{rule}` is not KIND:VALUE; use user:, uid:, group:, gid:, unit: or user-unit:"
            )
        })?;
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("`{rule}`: `{v}` is not a number"))
        };
        match kind {
            "uid" => number(value).map(Grant::Uid),
            "gid" => number(value).map(Grant::Gid),
            "user" => match nix::unistd::User::from_name(value) {
                Ok(Some(u)) => Ok(Grant::Uid(u.uid.as_raw())),
                _ => Err(format!("`{rule}`: no user named `{value}` on this machine")),
            },
            "group" => match nix::unistd::Group::from_name(value) {
                Ok(Some(g)) => Ok(Grant::Gid(g.gid.as_raw())),
                _ => Err(format!(
                    "`{rule}`: no group named `{value}` on this machine"
                )),
            },
            // A user's manager runs whatever its user asks, so granting it
            // would grant that user under a name that hides it.
            "unit" if value.starts_with("user@") => Err(format!(
                "`{rule}`: that is a user's manager, which runs anything its user starts; \
                 use uid:N for the user, or user-unit:USER/NAME.service for one of its units"
            )),
            "unit" if is_service_name(value) => Ok(Grant::Unit(value.to_string())),
            "unit" => Err(format!(
                "`{rule}`: give a full service name, e.g. unit:backup.service"
            )),
            "user-unit" => parse_user_unit(rule, value),
            other => Err(format!(
                "`{rule}`: unknown kind `{other}`; use user:, uid:, group:, gid:, unit: or user-unit:"
            )),
        }
    }
}

/// `user-unit:USER/NAME.service`, USER a name or a uid.
fn parse_user_unit(rule: &str, value: &str) -> Result<Grant, String> {
    let (user, name) = value.split_once('/').ok_or_else(|| {
        format!("`{rule}`: write user-unit:USER/NAME.service, e.g. user-unit:alice/sync.service")
    })?;
    if !is_service_name(name) {
        return Err(format!(
            "`{rule}`: give a full service name after the user, e.g. user-unit:alice/sync.service"
        ));
    }
    let uid = match user.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => u.uid.as_raw(),
            _ => return Err(format!("`{rule}`: no user named `{user}` on this machine")),
        },
    };
    Ok(Grant::UserUnit {
        uid,
        name: name.to_string(),
    })
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Uid(u) => write!(f, "uid:{u}"),
            Grant::Gid(g) => write!(f, "gid:{g}"),
            Grant::Unit(u) => write!(f, "unit:{u}"),
            Grant::UserUnit { uid, name } => write!(f, "user-unit:{uid}/{name}"),
        }
    }
}

/// `NAME.service` with a non-empty NAME and no path separator.
fn is_service_name(s: &str) -> bool {
    s.strip_suffix(".service").is_some_and(|n| !n.is_empty()) && !s.contains('/')
}

/// The systemd service a process runs in, read from its cgroup path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerUnit {
    /// A service of the system manager.
    System(String),
    /// A service of the user manager `user@UID.service`, which that user
    /// controls.
    User {
        /// Whose manager runs it.
        uid: u32,
        /// The unit's name.
        name: String,
    },
}

impl PeerUnit {
    /// The rule that would match this unit, e.g. for a log field.
    pub(crate) fn rule(&self) -> String {
        match self {
            PeerUnit::System(name) => format!("unit:{name}"),
            PeerUnit::User { uid, name } => format!("user-unit:{uid}/{name}"),
        }
    }
}

impl fmt::Display for PeerUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerUnit::System(name) => write!(f, "system unit {name}"),
            PeerUnit::User { uid, name } => write!(f, "user unit {name} of uid {uid}"),
        }
    }
}

/// A connected client, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Effective uid.
    pub(crate) uid: u32,
    /// Effective gid.
    pub(crate) gid: u32,
    /// Process id, when the kernel reports one.
    pub(crate) pid: Option<i32>,
    /// Supplementary groups (from `/proc/<pid>/status`).
    pub(crate) groups: Vec<u32>,
    /// The systemd service the process runs in, if any.
    pub(crate) unit: Option<PeerUnit>,
}

impl Peer {
    /// The peer behind credentials read from the socket (`SO_PEERCRED`).
    /// Groups and unit come from `/proc`; they are dropped if the process
    /// changed while being read (it exited and its pid was reused), so a
    /// reused pid can never lend its groups.
    pub(crate) fn from_cred(cred: tokio::net::unix::UCred) -> Peer {
        let mut peer = Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups: Vec::new(),
            unit: None,
        };
        if let Some(pid) = peer.pid {
            let before = start_time(pid);
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let owner = status_ids(&status, "Uid:");
            // Same process start time, and /proc agrees with SO_PEERCRED.
            if before.is_some() && before == start_time(pid) && owner.get(1) == Some(&peer.uid) {
                peer.groups = status_ids(&status, "Groups:");
                peer.unit = unit_of(&cgroup);
            }
        }
        peer
    }

    /// Whether this peer matches a rule.
    pub(crate) fn matches(&self, grant: &Grant) -> bool {
        match grant {
            Grant::Uid(u) => self.uid == *u,
            Grant::Gid(g) => self.gid == *g || self.groups.contains(g),
            Grant::Unit(u) => {
                matches!(&self.unit, Some(PeerUnit::System(name)) if name == u)
            }
            Grant::UserUnit { uid, name } => matches!(
                &self.unit,
                Some(PeerUnit::User { uid: owner, name: n }) if owner == uid && n == name
            ),
        }
    }

    /// `uid 1000 (pid 42, system unit backup.service)`, for denials and logs.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("uid {}", self.uid);
        if let Some(pid) = self.pid {
            s.push_str(&format!(" (pid {pid}"));
            if let Some(unit) = &self.unit {
                s.push_str(&format!(", {unit}"));
            }
            s.push(')');
        }
        s
    }
}

/// The daemon-wide part of the rules: who is an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The daemon's own uid: always allowed everything.
    pub(crate) daemon_uid: u32,
    /// Members of this group may administer (add, remove, refresh, list all).
    pub(crate) admin_gid: Option<u32>,
}

impl Policy {
    /// The policy for this process.
    pub(crate) fn for_this_process(admin_gid: Option<u32>) -> Policy {
        Policy {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            admin_gid,
        }
    }

    /// Root, the daemon's uid, or a member of the admin group.
    pub(crate) fn is_admin(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.daemon_uid
            || self.admin_gid.is_some_and(|g| peer.matches(&Grant::Gid(g)))
    }

    /// Whether `peer` may read a credential whose readers are `readers`;
    /// the error names what would have granted it.
    pub(crate) fn may_read(&self, peer: &Peer, readers: &[Grant]) -> Result<(), String> {
        if self.is_admin(peer) || readers.iter().any(|g| peer.matches(g)) {
            return Ok(());
        }
        let needed = if readers.is_empty() {
            "no readers are configured for it (add `readers = [...]` to its provider or [credentials.NAME] table)".to_string()
        } else {
            let list: Vec<String> = readers.iter().map(Grant::to_string).collect();
            format!("it may be read by {} only", list.join(", "))
        };
        Err(format!(
            "{} may not read this credential: {needed}",
            peer.describe()
        ))
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

    fn peer(uid: u32, gid: u32, groups: &[u32], unit: Option<&str>) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(1),
            groups: groups.to_vec(),
            unit: unit.map(|u| PeerUnit::System(u.to_string())),
        }
    }

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
        let mut p = peer(1000, 1000, &[], None);
        let system_rule = Grant::parse("unit:backup.service").unwrap();
        let user_rule = Grant::parse("user-unit:1000/backup.service").unwrap();
        p.unit = user(1000, "backup.service");
        assert!(!p.matches(&system_rule), "a user's unit is no system unit");
        assert!(p.matches(&user_rule));
        assert!(!p.matches(&Grant::parse("user-unit:1001/backup.service").unwrap()));
        p.unit = system("backup.service");
        assert!(p.matches(&system_rule));
        assert!(!p.matches(&user_rule));
        assert!(
            p.describe().contains("system unit backup.service"),
            "{}",
            p.describe()
        );
        p.unit = user(1000, "backup.service");
        assert!(
            p.describe()
                .contains("user unit backup.service of uid 1000"),
            "{}",
            p.describe()
        );
        assert_eq!(
            p.unit.as_ref().unwrap().rule(),
            "user-unit:1000/backup.service"
        );
    }

    #[test]
    fn user_unit_rules_parse() {
        assert_eq!(
            Grant::parse("user-unit:root/sync.service"),
            Ok(Grant::UserUnit {
                uid: 0,
                name: "sync.service".into()
            })
        );
        assert_eq!(
            Grant::parse("user-unit:1000/sync.service").map(|g| g.to_string()),
            Ok("user-unit:1000/sync.service".to_string())
        );
        for bad in [
            "user-unit:sync.service",
            "user-unit:surely-no-such-user/sync.service",
            "user-unit:1000/sync",
            "user-unit:1000/a/b.service",
            "unit:user@1000.service",
            "unit:session-3.scope",
            "unit:.service",
        ] {
            assert!(Grant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_parse_and_resolve_names() {
        assert_eq!(Grant::parse("uid:1000"), Ok(Grant::Uid(1000)));
        assert_eq!(Grant::parse("gid:5"), Ok(Grant::Gid(5)));
        assert_eq!(Grant::parse("user:root"), Ok(Grant::Uid(0)));
        assert_eq!(Grant::parse("group:root"), Ok(Grant::Gid(0)));
        assert_eq!(
            Grant::parse("unit:backup.service"),
            Ok(Grant::Unit("backup.service".into()))
        );
        assert!(Grant::parse("user:surely-no-such-user")
            .unwrap_err()
            .contains("no user named"));
        assert!(Grant::parse("unit:backup").is_err());
        assert!(Grant::parse("alice").is_err());
        assert!(Grant::parse("host:x").unwrap_err().contains("unknown kind"));
    }

    #[test]
    fn admins_readers_and_denials() {
        let policy = Policy {
            daemon_uid: 999,
            admin_gid: Some(50),
        };
        let readers = [
            Grant::Uid(1000),
            Grant::Gid(100),
            Grant::Unit("backup.service".into()),
        ];
        assert!(policy.may_read(&peer(0, 0, &[], None), &[]).is_ok(), "root");
        assert!(
            policy.may_read(&peer(999, 999, &[], None), &[]).is_ok(),
            "daemon uid"
        );
        assert!(
            policy.is_admin(&peer(7, 7, &[50], None)),
            "admin group, secondary"
        );
        assert!(policy
            .may_read(&peer(1000, 1000, &[], None), &readers)
            .is_ok());
        assert!(
            policy
                .may_read(&peer(2000, 2000, &[100], None), &readers)
                .is_ok(),
            "secondary group"
        );
        assert!(
            policy
                .may_read(&peer(2000, 100, &[], None), &readers)
                .is_ok(),
            "primary group"
        );
        assert!(policy
            .may_read(&peer(2000, 2000, &[], Some("backup.service")), &readers)
            .is_ok());
        let denied = policy
            .may_read(&peer(2000, 2000, &[], None), &readers)
            .unwrap_err();
        assert!(denied.contains("uid 2000"), "{denied}");
        assert!(
            denied.contains("uid:1000, gid:100, unit:backup.service"),
            "{denied}"
        );
        let none = policy
            .may_read(&peer(2000, 2000, &[], None), &[])
            .unwrap_err();
        assert!(none.contains("no readers are configured"), "{none}");
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
        let p = Peer::from_cred(a.peer_cred().unwrap());
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(p.pid, Some(std::process::id() as i32));
    }
}
