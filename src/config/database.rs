//! `database`: an SQLite file's path, or a PostgreSQL database as
//! `postgres://ROLE@HOST:PORT/DBNAME?sslmode=...` with its password and CA
//! from `database_password_file` / `database_password_credential` and
//! `database_ca_file`. Builds the store's [`Location`]; connects to nothing.

use std::net::IpAddr;
use std::path::PathBuf;

use super::collect::{Collector, Scope};
use super::raw::RawDaemon;
use super::secrets;
use crate::store::{Location, PgHost, PgSettings, SslMode};

/// PostgreSQL's port when the URL names none.
const DEFAULT_PORT: u16 = 5432;

/// The keys that only a PostgreSQL database uses.
const PG_KEYS: [&str; 3] = [
    "database_password_file",
    "database_password_credential",
    "database_ca_file",
];

/// Where the database is; `None` for the default file (or after a problem).
pub(super) fn location(c: &mut Collector<'_>, s: &Scope, raw: &RawDaemon) -> Option<Location> {
    let url = raw
        .database
        .as_deref()
        .filter(|d| d.starts_with("postgres://") || d.starts_with("postgresql://"));
    let Some(url) = url else {
        let given = [
            raw.database_password_file.is_some(),
            raw.database_password_credential.is_some(),
            raw.database_ca_file.is_some(),
        ];
        for (key, _) in PG_KEYS.iter().zip(given).filter(|(_, g)| *g) {
            c.problem(
                s,
                key,
                "is for a PostgreSQL database only (database = \"postgres://ROLE@HOST/DBNAME\")",
            );
        }
        return raw.database.as_ref().map(|p| Location::File(PathBuf::from(p)));
    };
    postgres(c, s, raw, url).map(Location::Postgres)
}

/// A name in the URL (role, database): plain, so that it means the same to
/// every tool and needs no decoding.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn postgres(c: &mut Collector<'_>, s: &Scope, raw: &RawDaemon, text: &str) -> Option<PgSettings> {
    let problem = |c: &mut Collector<'_>, message: String| {
        c.problem(s, "database", message);
    };
    let url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(e) => {
            problem(c, format!("is not a URL ({e}): write postgres://ROLE@HOST:PORT/DBNAME"));
            return None;
        }
    };
    let password_elsewhere = "put the password in a file only tokend's user can read, named by database_password_file, or in the systemd credential tokend-db-password (LoadCredential=)";
    if url.password().is_some() {
        problem(
            c,
            format!("holds a password: the configuration file is read by check-config, copied and backed up, and the URL is logged; remove it from the URL and {password_elsewhere}"),
        );
        return None;
    }
    let mut host = None;
    let mut ssl = None;
    for (name, value) in url.query_pairs() {
        match &*name {
            "sslmode" => match SslMode::parse(&value) {
                Some(mode) => ssl = Some(mode),
                None => {
                    problem(
                        c,
                        format!("sslmode `{value}` is not one tokend takes: use verify-full (TLS, the certificate checked), require (TLS, not checked) or disable (loopback or a Unix socket only)"),
                    );
                    return None;
                }
            },
            "host" if value.starts_with('/') => host = Some(PgHost::Socket(PathBuf::from(&*value))),
            "host" => {
                problem(c, format!("host `{value}` in the query must be the absolute directory of the server's Unix socket (e.g. /run/postgresql); put a network host before the path"));
                return None;
            }
            "password" => {
                problem(c, format!("holds a password: remove it from the URL and {password_elsewhere}"));
                return None;
            }
            "sslrootcert" => {
                problem(c, "sslrootcert is not read from the URL: use database_ca_file".into());
                return None;
            }
            other => {
                problem(c, format!("parameter `{other}` is not one tokend reads (only sslmode and host)"));
                return None;
            }
        }
    }
    let user = url.username();
    if !plain_name(user) {
        problem(c, "must name the role as postgres://ROLE@HOST/DBNAME (letters, digits, `_`, `-`, `.`)".into());
        return None;
    }
    let dbname = url.path().trim_start_matches('/');
    if !plain_name(dbname) {
        problem(c, "must name the database as postgres://ROLE@HOST/DBNAME (letters, digits, `_`, `-`, `.`)".into());
        return None;
    }
    let host = match (host, url.host_str()) {
        (Some(socket), _) => socket,
        (None, Some(h)) if !h.is_empty() => {
            PgHost::Tcp(h.trim_start_matches('[').trim_end_matches(']').to_string())
        }
        (None, _) => {
            problem(c, "names no host: give one (postgres://ROLE@HOST/DBNAME) or a Unix socket directory (?host=/run/postgresql)".into());
            return None;
        }
    };
    let local = match &host {
        PgHost::Socket(_) => true,
        PgHost::Tcp(h) => h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
    };
    // Off this machine, what is not checked can be intercepted: the tokens
    // travel in these connections.
    let ssl = match ssl {
        None if local => SslMode::Disable,
        None => SslMode::VerifyFull,
        Some(SslMode::Disable) if !local => {
            problem(c, "sslmode=disable would send tokens in the clear over the network: use verify-full (with database_ca_file for a private CA); disable is for loopback and Unix sockets only".into());
            return None;
        }
        Some(mode) => mode,
    };
    let ca_file = raw.database_ca_file.clone();
    if let Some(ca) = &ca_file {
        if ssl != SslMode::VerifyFull || matches!(host, PgHost::Socket(_)) {
            c.problem(
                s,
                "database_ca_file",
                "is used with sslmode=verify-full over TCP only: add ?sslmode=verify-full to the URL",
            );
            return None;
        }
        // Whoever could change the CA file could pose as the server.
        if let Err(e) = crate::fsguard::check_read_file(ca) {
            c.problem(s, "database_ca_file", e.to_string());
            return None;
        }
    }
    let (password_from, password) = secrets::database_password(c, s, raw).unzip();
    Some(PgSettings {
        host,
        port: url.port().unwrap_or(DEFAULT_PORT),
        user: user.to_string(),
        dbname: dbname.to_string(),
        ssl,
        ca_file,
        password,
        password_from,
    })
}
