//! `[[hooks]]`: commands the daemon runs when something happens to a
//! credential (see `crate::hooks`). Each entry is read on its own, so its
//! problems are reported at its own lines.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

use super::collect::{Collector, Scope};
use super::raw::RawDuration;
use crate::hooks::Event;

/// The default time a hook may run before it is killed.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest timeout a hook may have: one credential's hooks run one at
/// a time, so a longer one would hold back every later event.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Most hooks a configuration may have.
const MAX_HOOKS: usize = 64;

/// One `[[hooks]]` entry as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    on: Option<Vec<String>>,
    command: Option<Vec<String>>,
    credentials: Option<Vec<String>>,
    timeout: Option<RawDuration>,
    token_on_stdin: Option<bool>,
}

/// A validated hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hook {
    /// The events it runs on.
    pub(crate) on: Vec<Event>,
    /// The program and its arguments, never through a shell.
    pub(crate) command: Vec<String>,
    /// Only these credentials, if set.
    pub(crate) credentials: Option<Vec<String>>,
    /// Killed (with its process group) after this long.
    pub(crate) timeout: Duration,
    /// Whether the access token is written to its stdin.
    pub(crate) token_on_stdin: bool,
}

impl Hook {
    /// Whether it runs for `event` of `credential`.
    pub(crate) fn wants(&self, event: Event, credential: &str) -> bool {
        self.on.contains(&event)
            && self
                .credentials
                .as_ref()
                .is_none_or(|c| c.iter().any(|n| n == credential))
    }

    /// One line for `tokend check-config`.
    pub(crate) fn describe(&self) -> String {
        let on: Vec<&str> = self.on.iter().map(|e| e.as_str()).collect();
        format!(
            "{} on {}{}, timeout {}{}",
            self.command.first().map(String::as_str).unwrap_or_default(),
            on.join(", "),
            match &self.credentials {
                Some(c) => format!(" for {}", c.join(", ")),
                None => " for every credential".to_string(),
            },
            humantime::format_duration(self.timeout),
            if self.token_on_stdin {
                ", token on stdin"
            } else {
                ""
            }
        )
    }
}

/// Validates the `[[hooks]]` entries, each with its header's line.
pub(super) fn validate(c: &mut Collector<'_>, entries: &[(usize, &DeTable<'_>)]) -> Arc<[Hook]> {
    if entries.len() > MAX_HOOKS {
        c.push(
            entries.first().map(|e| e.0),
            "hooks",
            format!("at most {MAX_HOOKS} hooks; merge some into one script"),
        );
    }
    let mut out = Vec::new();
    for (i, (line, table)) in entries.iter().enumerate() {
        let path = format!("hooks[{i}]");
        let (raw, scope) = c.table::<RawHook>(&path, *line, table);
        if let Some(h) = one(c, &scope, raw) {
            out.push(h);
        }
    }
    out.into()
}

fn one(c: &mut Collector<'_>, s: &Scope, raw: RawHook) -> Option<Hook> {
    let before = c.problems.len();
    let mut on = Vec::new();
    match raw.on {
        None => c.problem(
            s,
            "on",
            "missing; list the events, e.g. on = [\"needs_reauth\"]",
        ),
        Some(v) if v.is_empty() => c.problem(s, "on", "lists no event"),
        Some(v) => {
            for name in v {
                match Event::parse(&name) {
                    Some(e) if !on.contains(&e) => on.push(e),
                    Some(_) => {}
                    None => c.problem(
                        s,
                        "on",
                        format!(
                            "unknown event `{name}`; the events are {}",
                            Event::ALL.map(Event::as_str).join(", ")
                        ),
                    ),
                }
            }
        }
    }
    let command = raw.command.unwrap_or_default();
    match command.first() {
        None => c.problem(
            s,
            "command",
            "missing; the program and its arguments, e.g. [\"/usr/bin/notify-send\", \"tokend\"]",
        ),
        Some(p) if !p.starts_with('/') => c.problem(
            s,
            "command",
            format!("`{p}` is not an absolute path; hooks run with PATH=/usr/bin:/bin, write the full path"),
        ),
        Some(_) => {}
    }
    if command.iter().any(|a| a.contains('\0')) {
        c.problem(s, "command", "an argument contains a NUL byte");
    }
    if let Some(names) = &raw.credentials {
        if names.is_empty() {
            c.problem(
                s,
                "credentials",
                "lists no credential; leave it out for every credential",
            );
        }
    }
    let timeout = c.duration(
        s,
        "timeout",
        raw.timeout.as_ref(),
        DEFAULT_TIMEOUT,
        Duration::from_millis(100)..=MAX_TIMEOUT,
    );
    (c.problems.len() == before).then_some(Hook {
        on,
        command,
        credentials: raw.credentials,
        timeout,
        token_on_stdin: raw.token_on_stdin.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    #[test]
    fn hooks_are_read_with_defaults_and_filters() {
        let cfg = parse_config(
            "[[hooks]]\non = [\"needs_reauth\", \"recovered\"]\ncommand = [\"/bin/true\"]\n\
             [[hooks]]\non = [\"refreshed\"]\ncommand = [\"/bin/cat\", \"-\"]\ncredentials = [\"mail\"]\n\
             timeout = \"2s\"\ntoken_on_stdin = true\n",
        )
        .expect("valid");
        assert_eq!(cfg.hooks.len(), 2);
        assert_eq!(cfg.hooks[0].timeout, DEFAULT_TIMEOUT);
        assert!(!cfg.hooks[0].token_on_stdin);
        assert!(cfg.hooks[0].wants(Event::NeedsReauth, "any"));
        assert!(!cfg.hooks[0].wants(Event::Refreshed, "any"));
        assert!(cfg.hooks[1].wants(Event::Refreshed, "mail"));
        assert!(!cfg.hooks[1].wants(Event::Refreshed, "other"));
        assert_eq!(cfg.hooks[1].timeout, Duration::from_secs(2));
        assert!(cfg.hooks[1].token_on_stdin);
    }

    #[test]
    fn bad_hooks_are_refused_at_their_lines() {
        let err = parse_config(
            "[[hooks]]\non = []\ncommand = [\"sh\", \"-c\"]\nshell = true\n\
             [hooks.x]\n",
        )
        .expect_err("invalid")
        .to_string();
        assert!(err.contains("hooks[0].on"), "{err}");
        assert!(err.contains("not an absolute path"), "{err}");
        assert!(err.contains("shell"), "{err}");
        let err = parse_config("[hooks]\non = [\"refreshed\"]\n")
            .expect_err("a table is not an array of tables")
            .to_string();
        assert!(err.contains("[[hooks]]"), "{err}");
    }
}
