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

/// The provider's client secrets from the one place they were given, in
/// order: one, or several during a rotation (the first is tried first).
pub(super) fn client_secrets(c: &mut Collector<'_>, s: &Scope, raw: &RawProvider) -> Vec<Secret> {
    if !given_once(c, s, raw) {
        return Vec::new();
    }
    let sources = [
        ("client_secret", &raw.client_secret),
        ("client_secret_file", &raw.client_secret_file),
        ("client_secret_env", &raw.client_secret_env),
        ("client_secret_credential", &raw.client_secret_credential),
    ];
    let Some((key, Some(values))) = sources.into_iter().find(|(_, v)| v.is_some()) else {
        return Vec::new();
    };
    if values.0.is_empty() {
        c.problem(
            s,
            key,
            "the list is empty; give one value or several, the one in use first",
        );
        return Vec::new();
    }
    let line = s.line(key).unwrap_or(s.line);
    values
        .0
        .iter()
        .filter_map(|v| match key {
            "client_secret" => Some(Secret::new(v.clone())),
            "client_secret_file" => read_secret_file(c, line, &s.key(key), Path::new(v)),
            "client_secret_env" => from_env(c, s, v),
            _ => from_credential(c, s, key, v)
                .and_then(|path| read_secret_file(c, line, &s.key(key), &path)),
        })
        .collect()
}

/// The private key of `private_key_jwt`, from `client_assertion_key_file`
/// or `client_assertion_key_credential`, as the PEM text it holds.
pub(super) fn assertion_key(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawProvider,
) -> Option<(String, Secret)> {
    let (key, path) = match (
        &raw.client_assertion_key_file,
        &raw.client_assertion_key_credential,
    ) {
        (Some(_), Some(_)) => {
            c.problem(
                s,
                "client_assertion_key_credential",
                "give the private key one way only: client_assertion_key_file or client_assertion_key_credential",
            );
            return None;
        }
        (Some(file), None) => ("client_assertion_key_file", file.clone()),
        (None, Some(name)) => {
            let key = "client_assertion_key_credential";
            (key, from_credential(c, s, key, name)?)
        }
        (None, None) => return None,
    };
    let line = s.line(key).unwrap_or(s.line);
    if let Some(mode) = open_to_others(&path) {
        // Whoever can read the key can sign in as the client.
        c.push(
            Some(line),
            s.key(key),
            format!(
                "{} is readable by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        );
        return None;
    }
    read_secret_file(c, line, &s.key(key), &path).map(|pem| (key.to_string(), pem))
}

/// The mode of `path` if its group or others have any access to it (and it
/// is not systemd's credential, which systemd keeps private).
fn open_to_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    if crate::fsguard::under_credentials_dir(path) {
        return None;
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
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

/// Where systemd put credential `cred`, for the setting `key`.
fn from_credential(c: &mut Collector<'_>, s: &Scope, key: &str, cred: &str) -> Option<PathBuf> {
    match std::env::var_os(CREDENTIALS_DIRECTORY) {
        Some(dir) => Some(Path::new(&dir).join(cred)),
        None => {
            let file_key = key.replace("_credential", "_file");
            c.problem(
                s,
                key,
                format!("$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential=, or use {file_key}"),
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

/// The systemd credential the PostgreSQL password is read from when no key
/// names one.
pub(super) const DB_PASSWORD_CREDENTIAL: &str = "tokend-db-password";

/// The PostgreSQL password and where it came from: `database_password_file`,
/// `database_password_credential`, else the `tokend-db-password` systemd
/// credential if there is one; `None` for none (a server that trusts the
/// Unix socket's peer, for one). The file must be private to its owner.
pub(super) fn database_password(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawDaemon,
) -> Option<(PathBuf, Secret)> {
    let (key, path) = match (
        &raw.database_password_file,
        &raw.database_password_credential,
    ) {
        (Some(_), Some(_)) => {
            c.problem(
                s,
                "database_password_credential",
                "give the database password one way only: database_password_file or database_password_credential",
            );
            return None;
        }
        (Some(file), None) => ("database_password_file", file.clone()),
        (None, Some(name)) => {
            let key = "database_password_credential";
            (key, from_credential(c, s, key, name)?)
        }
        (None, None) => {
            let dir = std::env::var_os(CREDENTIALS_DIRECTORY)?;
            let path = Path::new(&dir).join(DB_PASSWORD_CREDENTIAL);
            if !path.exists() {
                return None;
            }
            ("database", path)
        }
    };
    let line = s.line(key).unwrap_or(s.line);
    if let Some(mode) = open_to_others(&path) {
        c.push(
            Some(line),
            s.key(key),
            format!(
                "{} is readable by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        );
        return None;
    }
    read_secret_file(c, line, &s.key(key), &path).map(|secret| (path, secret))
}
