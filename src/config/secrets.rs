//! Secret sources: a client secret written inline, in a file, in an
//! environment variable or in a systemd credential, and the database key's
//! file or credential. Files are refused when whoever could change them is
//! not trusted (`fsguard`), as the configuration file itself is. This is the
//! one part of `parse_config` that reads outside its text.

use std::path::{Path, PathBuf};

use super::collect::{Collector, Scope};
use super::raw::{RawDaemon, RawProvider};
use crate::token::Secret;

/// Where systemd puts `LoadCredential=` files.
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The provider's client secret from the one place it was given, if any.
pub(super) fn client_secret(c: &mut Collector<'_>, s: &Scope, raw: &RawProvider) -> Option<Secret> {
    if !given_once(c, s, raw) {
        return None;
    }
    if let Some(v) = &raw.client_secret {
        return Some(Secret::new(v.clone()));
    }
    if let Some(path) = &raw.client_secret_file {
        let key = "client_secret_file";
        return read_secret_file(c, s.line(key).unwrap_or(s.line), &s.key(key), path);
    }
    if let Some(var) = &raw.client_secret_env {
        return from_env(c, s, var);
    }
    if let Some(cred) = &raw.client_secret_credential {
        return from_credential(c, s, cred);
    }
    None
}

/// Whether the client secret is given one way at most; a second way is a
/// problem.
fn given_once(c: &mut Collector<'_>, s: &Scope, raw: &RawProvider) -> bool {
    let given = [
        ("client_secret", raw.client_secret.is_some()),
        ("client_secret_file", raw.client_secret_file.is_some()),
        ("client_secret_env", raw.client_secret_env.is_some()),
        (
            "client_secret_credential",
            raw.client_secret_credential.is_some(),
        ),
    ];
    let mut given = given.iter().filter(|(_, g)| *g).map(|(k, _)| *k);
    if let (Some(_), Some(second)) = (given.next(), given.next()) {
        c.problem(
            s,
            second,
            "give the client secret one way only: client_secret, client_secret_file, client_secret_env or client_secret_credential",
        );
        return false;
    }
    true
}

fn from_env(c: &mut Collector<'_>, s: &Scope, var: &str) -> Option<Secret> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(Secret::new(v)),
        _ => {
            c.problem(
                s,
                "client_secret_env",
                format!("environment variable {var} is not set or empty"),
            );
            None
        }
    }
}

fn from_credential(c: &mut Collector<'_>, s: &Scope, cred: &str) -> Option<Secret> {
    let key = "client_secret_credential";
    match std::env::var_os(CREDENTIALS_DIRECTORY) {
        Some(dir) => read_secret_file(
            c,
            s.line(key).unwrap_or(s.line),
            &s.key(key),
            &Path::new(&dir).join(cred),
        ),
        None => {
            c.problem(
                s,
                key,
                "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential=, or use client_secret_file",
            );
            None
        }
    }
}

fn read_secret_file(c: &mut Collector<'_>, line: usize, key: &str, path: &Path) -> Option<Secret> {
    // Whoever could change the file could change the secret (and so which
    // client the provider sees): refuse it, as the configuration file itself.
    if let Err(e) = crate::fsguard::check_read_file(path) {
        if !matches!(e, crate::fsguard::UnsafeFile::Io { .. }) {
            c.push(Some(line), key, e.to_string());
            return None;
        }
    }
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim_end_matches(['\n', '\r']);
            if s.is_empty() {
                c.push(Some(line), key, format!("{} is empty", path.display()));
                None
            } else {
                Some(Secret::new(s))
            }
        }
        Err(e) => {
            c.push(
                Some(line),
                key,
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

/// Where the database encryption key is, if configured: its file, or its
/// systemd credential's. The key itself is read at start-up, not here.
pub(super) fn encryption_key_path(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawDaemon,
) -> Option<PathBuf> {
    match (&raw.encryption_key_file, &raw.encryption_key_credential) {
        (Some(_), Some(_)) => {
            c.problem(
                s,
                "encryption_key_file",
                "give the encryption key one way only: encryption_key_file or encryption_key_credential",
            );
            None
        }
        (Some(file), None) => Some(file.clone()),
        (None, Some(name)) => match std::env::var_os(CREDENTIALS_DIRECTORY) {
            Some(dir) => Some(Path::new(&dir).join(name)),
            None => {
                c.problem(
                    s,
                    "encryption_key_credential",
                    "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential=, or use encryption_key_file",
                );
                None
            }
        },
        (None, None) => None,
    }
}
