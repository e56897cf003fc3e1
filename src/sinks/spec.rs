//! What one configured sink is: where the file goes, what it holds, who owns
//! it and what happens to it when its credential is removed.

use std::path::PathBuf;

/// What a sink file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Format {
    /// The bare access token, no newline.
    Token,
    /// `Authorization: Bearer <token>` and a newline (the token type as
    /// issued, e.g. `DPoP`).
    Header,
    /// A JSON object: `access_token`, `token_type`, `expires_at`, `name`.
    Json,
    /// A template naming [`PLACEHOLDERS`].
    Template(String),
}

/// The names a sink template may use as `{name}`.
pub(crate) const PLACEHOLDERS: [&str; 4] = ["access_token", "token_type", "expires_at", "name"];

/// What happens to a sink file when its credential is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnRemove {
    /// The file is deleted.
    Delete,
    /// The file keeps the last token.
    Keep,
    /// The file is emptied (atomically, like any write).
    Empty,
}

impl OnRemove {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "delete" => Some(OnRemove::Delete),
            "keep" => Some(OnRemove::Keep),
            "empty" => Some(OnRemove::Empty),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            OnRemove::Delete => "delete",
            OnRemove::Keep => "keep",
            OnRemove::Empty => "empty",
        }
    }
}

/// One `[[credentials.NAME.sinks]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sink {
    /// Absolute path of the file.
    pub(crate) path: PathBuf,
    pub(crate) format: Format,
    /// Permission bits of the file.
    pub(crate) mode: u32,
    /// Owner to give the file (only when running as root, or the daemon's own).
    pub(crate) uid: Option<u32>,
    /// Group to give the file.
    pub(crate) gid: Option<u32>,
    pub(crate) on_remove: OnRemove,
}

impl Sink {
    /// What `check-config` prints of one sink.
    pub(crate) fn describe(&self) -> String {
        let sink = self;
        let mut line = format!(
            "sink {} ({}, mode {:04o}",
            sink.path.display(),
            sink.format.name(),
            sink.mode
        );
        if let Some(uid) = sink.uid {
            line.push_str(&format!(", owner {uid}"));
        }
        if let Some(gid) = sink.gid {
            line.push_str(&format!(", group {gid}"));
        }
        line.push_str(&format!(", on_remove {})", sink.on_remove.name()));
        line
    }
}

impl Format {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Format::Token => "token",
            Format::Header => "header",
            Format::Json => "json",
            Format::Template(_) => "template",
        }
    }
}

/// The contents of a sink file for one token.
pub(crate) fn render(
    format: &Format,
    name: &str,
    token: &str,
    token_type: &str,
    expires_at: Option<i64>,
) -> String {
    match format {
        Format::Token => token.to_owned(),
        Format::Header => format!("Authorization: {} {token}\n", header_scheme(token_type)),
        Format::Json => {
            let mut v = serde_json::json!({
                "name": name,
                "access_token": token,
                "token_type": token_type,
            });
            v["expires_at"] = expires_at.map_or(serde_json::Value::Null, |e| e.into());
            let mut s = v.to_string();
            s.push('\n');
            s
        }
        Format::Template(t) => {
            let expires = expires_at.map(|e| e.to_string()).unwrap_or_default();
            fill(t, |key| match key {
                "access_token" => Some(token),
                "token_type" => Some(token_type),
                "expires_at" => Some(expires.as_str()),
                "name" => Some(name),
                _ => None,
            })
        }
    }
}

/// `Bearer` as RFC 6750 writes it, whatever case the provider used; other
/// types (`DPoP`) as issued.
fn header_scheme(token_type: &str) -> &str {
    if token_type.eq_ignore_ascii_case("bearer") {
        "Bearer"
    } else {
        token_type
    }
}

/// Substitutes the known `{name}`s; other braces stay as written.
fn fill<'a>(template: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after
            .find('}')
            .and_then(|end| Some((end, lookup(&after[..end])?)))
        {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The names written like a placeholder (`{lower_case}`) that are none.
pub(crate) fn unknown_placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        if let Some(end) = after.find('}') {
            let name = &after[..end];
            let looks =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if looks && !PLACEHOLDERS.contains(&name) {
                out.push(name.to_owned());
            }
        }
        rest = after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_render_exactly() {
        let r = |f: &Format| render(f, "c", "tok", "bearer", Some(17));
        assert_eq!(r(&Format::Token), "tok");
        assert_eq!(r(&Format::Header), "Authorization: Bearer tok\n");
        assert_eq!(
            render(&Format::Header, "c", "tok", "DPoP", None),
            "Authorization: DPoP tok\n"
        );
        let json: serde_json::Value = serde_json::from_str(&r(&Format::Json)).unwrap();
        assert_eq!(json["access_token"], "tok");
        assert_eq!(json["expires_at"], 17);
        assert_eq!(json["name"], "c");
        let t = Format::Template("{name}={access_token} {token_type} {expires_at} {x} {".into());
        assert_eq!(r(&t), "c=tok bearer 17 {x} {");
    }

    #[test]
    fn unknown_placeholders_are_reported() {
        assert_eq!(
            unknown_placeholders("{acess_token} {name} {1}"),
            vec!["acess_token"]
        );
    }
}
