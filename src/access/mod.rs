//! Who may do what. The caller's identity comes from the kernel
//! (`SO_PEERCRED` and `SO_PEERGROUPS` on the socket, then `/proc/<pid>` for
//! the systemd unit; `peer`), never from anything the client says; the rules come
//! from the configuration (`readers = ["user:alice", "group:mail",
//! "unit:backup.service"]`).

use std::fmt;

mod peer;

pub(crate) use peer::Peer;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32], unit: Option<&str>) -> Peer {
        Peer::with_unit(
            uid,
            gid,
            Some(1),
            groups.to_vec(),
            unit.map(|u| PeerUnit::System(u.to_string())),
        )
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
}
