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
        return raw
            .database
            .as_ref()
            .map(|p| Location::File(PathBuf::from(p)));
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
            problem(
                c,
                format!("is not a URL ({e}): write postgres://ROLE@HOST:PORT/DBNAME"),
            );
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
                problem(
                    c,
                    format!("holds a password: remove it from the URL and {password_elsewhere}"),
                );
                return None;
            }
            "sslrootcert" => {
                problem(
                    c,
                    "sslrootcert is not read from the URL: use database_ca_file".into(),
                );
                return None;
            }
            other => {
                problem(
                    c,
                    format!("parameter `{other}` is not one tokend reads (only sslmode and host)"),
                );
                return None;
            }
        }
    }
    let user = url.username();
    if !plain_name(user) {
        problem(
            c,
            "must name the role as postgres://ROLE@HOST/DBNAME (letters, digits, `_`, `-`, `.`)"
                .into(),
        );
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

#[cfg(test)]
mod tests {
    use crate::config::parse_config;
    use crate::store::{Location, PgHost, PgSettings, SslMode};

    fn pg(database: &str) -> PgSettings {
        let cfg = parse_config(&format!("[daemon]\ndatabase = {database:?}\n")).unwrap();
        match cfg.daemon.database {
            Some(Location::Postgres(pg)) => pg,
            other => panic!("not PostgreSQL: {other:?}"),
        }
    }

    fn problem(text: &str) -> String {
        let problems = parse_config(text).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        format!("{}: {}", problems[0].key, problems[0].message)
    }

    #[test]
    fn tls_is_checked_by_default_off_this_machine_only() {
        let remote = pg("postgres://tokend@db.example.net/tokens");
        assert_eq!(remote.host, PgHost::Tcp("db.example.net".into()));
        assert_eq!((remote.port, remote.ssl), (5432, SslMode::VerifyFull));
        assert_eq!(
            (remote.user.as_str(), remote.dbname.as_str()),
            ("tokend", "tokens")
        );
        for local in [
            "postgres://tokend@127.0.0.1:5433/t",
            "postgresql://tokend@localhost/t",
            "postgres://tokend@[::1]/t",
        ] {
            assert_eq!(pg(local).ssl, SslMode::Disable, "{local}");
        }
        assert_eq!(
            pg("postgres://tokend@[::1]/t").host,
            PgHost::Tcp("::1".into())
        );
        let socket = pg("postgres://tokend@localhost/t?host=/run/postgresql");
        assert_eq!(socket.host, PgHost::Socket("/run/postgresql".into()));
        assert_eq!(
            pg("postgres://tokend@127.0.0.1/t?sslmode=require").ssl,
            SslMode::Require
        );
        assert_eq!(
            pg("postgres://tokend@db.example.net/t").describe(),
            "postgres://tokend@db.example.net:5432/t (TLS verify-full, built-in web roots, no password)"
        );
        // A path is an SQLite file, as before.
        let cfg = parse_config("[daemon]\ndatabase = \"/var/lib/tokend/tokend.db\"\n").unwrap();
        assert_eq!(
            cfg.daemon.database,
            Some(Location::File("/var/lib/tokend/tokend.db".into()))
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_with_where_to_put_it() {
        for url in [
            "postgres://tokend:hunter2@db.example.net/t",
            "postgres://tokend@db.example.net/t?password=hunter2",
        ] {
            let p = problem(&format!("[daemon]\ndatabase = {url:?}\n"));
            assert!(p.starts_with("daemon.database: holds a password"), "{p}");
            assert!(p.contains("database_password_file"), "{p}");
            assert!(!p.contains("hunter2"), "{p}");
        }
    }

    #[test]
    fn unsafe_or_unknown_settings_are_refused() {
        let cases = [
            (
                "postgres://tokend@db.example.net/t?sslmode=disable",
                "in the clear",
            ),
            (
                "postgres://tokend@db.example.net/t?sslmode=prefer",
                "not one tokend takes",
            ),
            (
                "postgres://tokend@db.example.net/t?connect_timeout=3",
                "not one tokend reads",
            ),
            (
                "postgres://tokend@db.example.net/t?sslrootcert=/ca.pem",
                "database_ca_file",
            ),
            (
                "postgres://tokend@db.example.net/t?host=db2",
                "absolute directory",
            ),
            ("postgres://db.example.net/t", "must name the role"),
            (
                "postgres://tokend@db.example.net/",
                "must name the database",
            ),
            (
                "postgres://tokend@db.example.net/a%20b",
                "must name the database",
            ),
        ];
        for (url, expected) in cases {
            let p = problem(&format!("[daemon]\ndatabase = {url:?}\n"));
            assert!(p.contains(expected), "{url}: {p}");
        }
        let p = problem(
            "[daemon]\ndatabase = \"postgres://tokend@127.0.0.1/t\"\ndatabase_ca_file = \"/etc/ssl/ca.pem\"\n",
        );
        assert!(p.contains("sslmode=verify-full"), "{p}");
        let p = problem("[daemon]\ndatabase = \"/tmp/t.db\"\ndatabase_password_file = \"/x\"\n");
        assert!(p.contains("for a PostgreSQL database only"), "{p}");
    }

    #[test]
    fn the_password_comes_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[daemon]\ndatabase = \"postgres://tokend@db.example.net/t\"\ndatabase_password_file = {file:?}\n"
        );
        let cfg = parse_config(&text).unwrap();
        let Some(Location::Postgres(pg)) = cfg.daemon.database else {
            panic!("not PostgreSQL")
        };
        assert_eq!(pg.password.as_ref().map(|p| p.expose()), Some("s3cret-pw"));
        assert_eq!(pg.password_from.as_deref(), Some(file.as_path()));
        assert!(!format!("{pg:?}").contains("s3cret-pw"));

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = problem(&text);
        assert!(p.contains("readable by other users"), "{p}");
    }
}
