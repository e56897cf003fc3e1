//! `git_hosts` and `git_username` of `[credentials.NAME]`: which git hosts
//! (and paths on them) `tokend git-credential` answers with which
//! credential. The CLI cannot read the configuration (it may be readable by
//! root alone), so the daemon answers the lookup (`GET /v1/git-credential`).

use super::collect::{Collector, Scope};

/// Sent as the Basic username when `git_username` is not set: GitLab takes
/// any name with an OAuth2 token; GitHub wants `x-access-token`.
pub(crate) const DEFAULT_GIT_USERNAME: &str = "oauth2";

/// One `git_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitHost {
    /// `host` or `host:port`, lowercase, as git sends it.
    host: String,
    /// A path prefix, whole segments, without slashes at either end; empty
    /// for the whole host.
    path: String,
    /// The credential's name.
    pub(crate) credential: String,
    /// The username to send with the token.
    pub(crate) username: String,
}

impl GitHost {
    /// `host[/path]`, as configured.
    pub(crate) fn pattern(&self) -> String {
        match self.path.as_str() {
            "" => self.host.clone(),
            path => format!("{}/{path}", self.host),
        }
    }
}

/// Every mapping, for the lookup.
#[derive(Debug, Clone, Default)]
pub(crate) struct GitHosts(Vec<GitHost>);

impl GitHosts {
    /// The mapping for `host` and, if git sent one (`credential.useHttpPath`),
    /// `path`: the longest path prefix wins, and one for the whole host
    /// matches any path.
    pub(crate) fn lookup(&self, host: &str, path: Option<&str>) -> Option<&GitHost> {
        let path = path.unwrap_or_default().trim_matches('/');
        self.0
            .iter()
            .filter(|m| m.host.eq_ignore_ascii_case(host))
            .filter(|m| {
                m.path.is_empty()
                    || path
                        .strip_prefix(m.path.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|m| m.path.len())
    }

    /// Every mapping, for `check-config`.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &GitHost> {
        self.0.iter()
    }
}

/// Reads one table's `git_hosts` and `git_username` into `out`.
pub(super) fn validate(
    c: &mut Collector<'_>,
    s: &Scope,
    credential: &str,
    hosts: Option<&[String]>,
    username: Option<&str>,
    out: &mut GitHosts,
) {
    let Some(hosts) = hosts else {
        if username.is_some() {
            c.problem(
                s,
                "git_username",
                "is used only with git_hosts; add git_hosts = [\"github.com\"]",
            );
        }
        return;
    };
    let username = match username {
        // It is written into git's credential protocol, one attribute a line.
        Some(u) if u.is_empty() || u.chars().any(char::is_control) => {
            c.problem(
                s,
                "git_username",
                "must be a non-empty name without control characters",
            );
            return;
        }
        Some(u) => u.to_string(),
        None => DEFAULT_GIT_USERNAME.to_string(),
    };
    for entry in hosts {
        match parse(entry) {
            Ok((host, path)) => {
                let mapping = GitHost {
                    host,
                    path,
                    credential: credential.to_string(),
                    username: username.clone(),
                };
                if let Some(other) = out.0.iter().find(|m| m.pattern() == mapping.pattern()) {
                    c.problem(
                        s,
                        "git_hosts",
                        format!(
                            "`{entry}` is also mapped to credential `{}`; map each host or path to one credential",
                            other.credential
                        ),
                    );
                    continue;
                }
                out.0.push(mapping);
            }
            Err(why) => c.problem(s, "git_hosts", format!("`{entry}`: {why}")),
        }
    }
}

/// `host[:port][/path]` into the lowercase host and the trimmed path.
fn parse(entry: &str) -> Result<(String, String), &'static str> {
    if entry.contains("://") {
        return Err(
            "give the host without a scheme, e.g. \"github.com\" or \"gitlab.example/group\"",
        );
    }
    if entry.is_empty()
        || entry
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err("must be a host, e.g. \"github.com\", without spaces");
    }
    if entry.contains(['@', '?', '#', '\\']) {
        return Err("must be host[:port][/path], with no user, query or fragment");
    }
    let (host, path) = entry.split_once('/').unwrap_or((entry, ""));
    if host.is_empty() {
        return Err("has no host; write it as host[:port][/path]");
    }
    let path = path.trim_matches('/');
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("the path may not contain `.` or `..` segments");
    }
    Ok((host.to_ascii_lowercase(), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[(&str, &str)]) -> GitHosts {
        GitHosts(
            entries
                .iter()
                .map(|(entry, credential)| {
                    let (host, path) = parse(entry).unwrap();
                    GitHost {
                        host,
                        path,
                        credential: credential.to_string(),
                        username: DEFAULT_GIT_USERNAME.into(),
                    }
                })
                .collect(),
        )
    }

    #[test]
    fn the_longest_path_prefix_wins_on_whole_segments() {
        let map = hosts(&[
            ("GitLab.example", "all"),
            ("gitlab.example/group", "group"),
            ("gitlab.example/group/sub/", "sub"),
            ("github.com:8443", "port"),
        ]);
        let find = |host, path| map.lookup(host, path).map(|m| m.credential.as_str());
        assert_eq!(find("gitlab.example", None), Some("all"));
        assert_eq!(
            find("GITLAB.example", Some("group/repo.git")),
            Some("group")
        );
        assert_eq!(find("gitlab.example", Some("group")), Some("group"));
        assert_eq!(
            find("gitlab.example", Some("groupie/repo.git")),
            Some("all")
        );
        assert_eq!(find("gitlab.example", Some("group/sub/x.git")), Some("sub"));
        assert_eq!(find("github.com", None), None);
        assert_eq!(find("github.com:8443", Some("a")), Some("port"));
        assert_eq!(find("evil.example", None), None);
    }

    #[test]
    fn entries_are_hosts_with_optional_paths() {
        assert_eq!(parse("a.example/g/"), Ok(("a.example".into(), "g".into())));
        for bad in [
            "https://a.example",
            "",
            "a b",
            "u@a.example",
            "/group",
            "a.example/../x",
            "a.example\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::parse_config;

    #[test]
    fn git_hosts_in_credential_tables() {
        let cfg = parse_config(
            r#"
            [credentials.github]
            readers = ["uid:1000"]
            git_hosts = ["GitHub.com"]
            git_username = "x-access-token"
            [credentials.group]
            readers = ["uid:1000"]
            git_hosts = ["gitlab.example/group", "gitlab.example:8443"]
            "#,
        )
        .unwrap();
        let github = cfg.git_hosts.lookup("github.com", None).unwrap();
        assert_eq!(
            (github.credential.as_str(), github.username.as_str()),
            ("github", "x-access-token")
        );
        let group = cfg
            .git_hosts
            .lookup("gitlab.example", Some("group/r.git"))
            .unwrap();
        assert_eq!(
            (group.credential.as_str(), group.username.as_str()),
            ("group", "oauth2")
        );
        assert!(cfg.git_hosts.lookup("gitlab.example", None).is_none());
        assert_eq!(cfg.git_hosts.iter().count(), 3);
    }

    #[test]
    fn bad_git_settings_are_reported_each() {
        let problems = parse_config(
            r#"
            [credentials.a]
            readers = ["uid:1000"]
            git_hosts = ["https://github.com", "github.com", "u@x"]
            [credentials.b]
            readers = ["uid:1000"]
            git_hosts = ["GITHUB.com"]
            git_username = "a\nb"
            [credentials.c]
            readers = ["uid:1000"]
            git_username = "x"
            "#,
        )
        .unwrap_err()
        .problems;
        let text: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        let has = |key: &str, words: &str| {
            assert!(
                text.iter().any(|t| t.starts_with(key) && t.contains(words)),
                "{key} {words}: {text:#?}"
            )
        };
        has("credentials.a.git_hosts", "without a scheme");
        has("credentials.a.git_hosts", "no user");
        has("credentials.b.git_username", "control characters");
        has("credentials.c.git_username", "only with git_hosts");
        assert_eq!(text.len(), 4, "{text:#?}");
    }

    #[test]
    fn one_host_maps_to_one_credential() {
        let problems = parse_config(
            r#"
            [credentials.a]
            readers = ["uid:1000"]
            git_hosts = ["github.com"]
            [credentials.b]
            readers = ["uid:1000"]
            git_hosts = ["GITHUB.com/"]
            "#,
        )
        .unwrap_err()
        .problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0]
            .message
            .contains("also mapped to credential `a`"));
    }
}
