//! `[[credentials.NAME.sinks]]`: the files that hold a credential's
//! current token. Whether the file can be written is the writer's to find
//! out (the directory may appear later); here the keys are judged, and an
//! owner the daemon could not give the file is refused up front.

use super::collect::{Collector, Scope};
use super::raw::RawSink;
use crate::fsguard;
use crate::sinks::{spec, Format, OnRemove, Sink};

/// Every sink of one credential; each bad key is a problem.
pub(super) fn validate(c: &mut Collector<'_>, s: &Scope, raw: &[RawSink]) -> Vec<Sink> {
    let mut out: Vec<Sink> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let mut bad = |c: &mut Collector<'_>, key: &str, msg: String| {
            c.push(
                s.line("sinks"),
                format!("{}[{i}].{key}", s.key("sinks")),
                msg,
            );
        };
        let before = c.problems.len();
        let path = match &r.path {
            None => {
                bad(
                    c,
                    "path",
                    "missing; give the file's absolute path, e.g. path = \"/run/app/token\"".into(),
                );
                continue;
            }
            Some(p) if !p.is_absolute() || p.file_name().is_none() => {
                bad(
                    c,
                    "path",
                    format!(
                        "`{}` is not an absolute file path; give one such as \"/run/app/token\"",
                        p.display()
                    ),
                );
                continue;
            }
            Some(p) => p.clone(),
        };
        if out.iter().any(|o| o.path == path) {
            bad(
                c,
                "path",
                format!("`{}` is already a sink of this credential", path.display()),
            );
        }
        let format = format(c, &mut bad, r);
        let mode = mode(c, &mut bad, r.mode.as_ref());
        let uid = owner(c, &mut bad, r.owner.as_ref());
        let gid = group(c, &mut bad, r.group.as_ref());
        let on_remove = match r.on_remove.as_deref() {
            None => OnRemove::Delete,
            Some(n) => OnRemove::from_name(n).unwrap_or_else(|| {
                bad(
                    c,
                    "on_remove",
                    format!("unknown `{n}`; use delete, keep or empty"),
                );
                OnRemove::Delete
            }),
        };
        if c.problems.len() == before {
            if let Some(format) = format {
                out.push(Sink {
                    path,
                    format,
                    mode,
                    uid,
                    gid,
                    on_remove,
                });
            }
        }
    }
    out
}

type Bad<'b> = dyn FnMut(&mut Collector<'_>, &str, String) + 'b;

fn format(c: &mut Collector<'_>, bad: &mut Bad<'_>, r: &RawSink) -> Option<Format> {
    let format = match r.format.as_deref().unwrap_or("token") {
        "token" => Format::Token,
        "header" => Format::Header,
        "json" => Format::Json,
        "template" => {
            let Some(t) = r.template.clone() else {
                bad(c, "template", "missing; format = \"template\" needs template = \"...\", e.g. \"TOKEN={access_token}\\n\"".into());
                return None;
            };
            for name in spec::unknown_placeholders(&t) {
                bad(
                    c,
                    "template",
                    format!(
                        "unknown placeholder {{{name}}}; use {}",
                        spec::PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ),
                );
            }
            if !t.contains("{access_token}") {
                bad(
                    c,
                    "template",
                    "does not name {access_token}; the file would not hold the token".into(),
                );
            }
            Format::Template(t)
        }
        other => {
            bad(
                c,
                "format",
                format!("unknown `{other}`; use token, header, json or template"),
            );
            return None;
        }
    };
    if r.template.is_some() && !matches!(format, Format::Template(_)) {
        bad(
            c,
            "template",
            "only format = \"template\" takes a template".into(),
        );
    }
    Some(format)
}

/// The mode: an octal string ("0640", "640") or an integer; 0600 if absent.
fn mode(c: &mut Collector<'_>, bad: &mut Bad<'_>, v: Option<&toml::Value>) -> u32 {
    let parsed = match v {
        None => return 0o600,
        Some(toml::Value::Integer(i)) => u32::try_from(*i).ok(),
        Some(toml::Value::String(s)) => {
            let digits = s.strip_prefix("0o").unwrap_or(s);
            u32::from_str_radix(digits, 8).ok()
        }
        Some(_) => None,
    };
    match parsed {
        Some(m) if m & !0o777 == 0 => {
            if m & 0o002 != 0 {
                bad(
                    c,
                    "mode",
                    format!("{m:04o} lets every user write the token file; use e.g. \"0640\""),
                );
            }
            m
        }
        _ => {
            bad(c, "mode", "must be permission bits in octal, e.g. \"0640\" or 0o640 (no set-id or sticky bits)".into());
            0o600
        }
    }
}

fn owner(c: &mut Collector<'_>, bad: &mut Bad<'_>, v: Option<&toml::Value>) -> Option<u32> {
    let uid = match v? {
        toml::Value::Integer(i) => u32::try_from(*i).ok(),
        toml::Value::String(s) => s.parse::<u32>().ok().or_else(|| {
            nix::unistd::User::from_name(s)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        }),
        _ => None,
    };
    let Some(uid) = uid else {
        bad(c, "owner", "no such user; give a user name or uid".into());
        return None;
    };
    let euid = fsguard::euid();
    if euid != 0 && uid != euid {
        bad(c, "owner", format!("uid {uid} differs from tokend's uid {euid}, and only root may give a file away; leave owner out, or use group"));
    }
    Some(uid)
}

fn group(c: &mut Collector<'_>, bad: &mut Bad<'_>, v: Option<&toml::Value>) -> Option<u32> {
    let gid = match v? {
        toml::Value::Integer(i) => u32::try_from(*i).ok(),
        toml::Value::String(s) => s.parse::<u32>().ok().or_else(|| {
            nix::unistd::Group::from_name(s)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        }),
        _ => None,
    };
    let Some(gid) = gid else {
        bad(c, "group", "no such group; give a group name or gid".into());
        return None;
    };
    if fsguard::euid() != 0 && !member(gid) {
        bad(c, "group", format!("tokend is not root and not in group {gid}, so it cannot give the file that group; add tokend's user to it"));
    }
    Some(gid)
}

/// Whether the daemon's process is in `gid` (so it may chgrp a file to it).
fn member(gid: u32) -> bool {
    let gid = nix::unistd::Gid::from_raw(gid);
    nix::unistd::getegid() == gid || nix::unistd::getgroups().is_ok_and(|g| g.contains(&gid))
}
