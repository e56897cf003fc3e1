//! Who may do what. The caller's identity comes from the kernel
//! (`SO_PEERCRED` on the socket, then `/proc/<pid>` for secondary groups and
//! the systemd unit), never from anything the client says; the rules come
//! from the configuration (`readers = ["user:alice", "group:mail",
//! "unit:backup.service"]`).

use std::fmt;

/// One rule granting read access to a credential's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A user, by uid (`user:NAME` or `uid:N`).
    Uid(u32),
    /// A group, by gid, primary or secondary (`group:NAME` or `gid:N`).
    Gid(u32),
    /// Processes of a systemd unit (`unit:NAME.service`).
    Unit(String),
}

impl Grant {
    /// Parses a rule, resolving user and group names to ids now so a typo is
    /// a configuration error, not a silent denial.
    pub fn parse(rule: &str) -> Result<Grant, String> {
        let (kind, value) = rule.split_once(':').ok_or_else(|| {
            format!("`{rule}` is not KIND:VALUE; use user:, uid:, group:, gid: or unit:")
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
            "unit" if value.contains('.') && !value.contains('/') => {
                Ok(Grant::Unit(value.to_string()))
            }
            "unit" => Err(format!(
                "`{rule}`: give the full unit name, e.g. unit:backup.service"
            )),
            other => Err(format!(
                "`{rule}`: unknown kind `{other}`; use user:, uid:, group:, gid: or unit:"
            )),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Uid(u) => write!(f, "uid:{u}"),
            Grant::Gid(g) => write!(f, "gid:{g}"),
            Grant::Unit(u) => write!(f, "unit:{u}"),
        }
    }
}

/// A connected client, as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id, when the kernel reports one.
    pub pid: Option<i32>,
    /// Supplementary groups (from `/proc/<pid>/status`).
    pub groups: Vec<u32>,
    /// The systemd unit the process runs in, if any.
    pub unit: Option<String>,
}

impl Peer {
    /// Reads the peer of a Unix stream. Groups and unit come from `/proc`;
    /// they are dropped if the process changed while being read (it exited
    /// and its pid was reused), so a reused pid can never lend its groups.
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
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
        Ok(peer)
    }

    /// Whether this peer matches a rule.
    pub fn matches(&self, grant: &Grant) -> bool {
        match grant {
            Grant::Uid(u) => self.uid == *u,
            Grant::Gid(g) => self.gid == *g || self.groups.contains(g),
            Grant::Unit(u) => self.unit.as_deref() == Some(u.as_str()),
        }
    }

    /// `uid 1000 (pid 42, unit backup.service)`, for denials and logs.
    pub fn describe(&self) -> String {
        let mut s = format!("uid {}", self.uid);
        if let Some(pid) = self.pid {
            s.push_str(&format!(" (pid {pid}"));
            if let Some(unit) = &self.unit {
                s.push_str(&format!(", unit {unit}"));
            }
            s.push(')');
        }
        s
    }
}

/// The daemon-wide part of the rules: who is an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The daemon's own uid: always allowed everything.
    pub daemon_uid: u32,
    /// Members of this group may administer (add, remove, refresh, list all).
    pub admin_gid: Option<u32>,
}

impl Policy {
    /// The policy for this process.
    pub fn for_this_process(admin_gid: Option<u32>) -> Policy {
        Policy {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            admin_gid,
        }
    }

    /// Root, the daemon's uid, or a member of the admin group.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.daemon_uid
            || self.admin_gid.is_some_and(|g| peer.matches(&Grant::Gid(g)))
    }

    /// Whether `peer` may read a credential whose readers are `readers`;
    /// the error names what would have granted it.
    pub fn may_read(&self, peer: &Peer, readers: &[Grant]) -> Result<(), String> {
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

/// The unit in a cgroup v2 path such as `0::/system.slice/backup.service`
/// (or `.../app.slice/foo.service/...` under a user manager).
fn unit_of(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    path.split('/')
        .rev()
        .find(|seg| {
            [".service", ".scope", ".socket", ".timer"]
                .iter()
                .any(|s| seg.ends_with(s))
        })
        .map(str::to_string)
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
            unit: unit.map(str::to_string),
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
        assert_eq!(
            unit_of("0::/system.slice/backup.service\n").as_deref(),
            Some("backup.service")
        );
        assert_eq!(
            unit_of("0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service\n")
                .as_deref(),
            Some("foo.service")
        );
        assert_eq!(unit_of("0::/\n"), None);
        assert!(start_time(std::process::id() as i32).is_some());
    }

    #[tokio::test]
    async fn peer_of_a_real_socket_is_this_process() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        assert_eq!(p.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(p.pid, Some(std::process::id() as i32));
    }
}
