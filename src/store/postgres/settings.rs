//! How to reach a PostgreSQL database: what `config` builds from
//! `database = "postgres://..."` and its `database_*` keys, and what
//! [`open`](super::open) connects with. Nothing here connects.

use std::path::PathBuf;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::token::Secret;

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgHost {
    /// A host name or an IP address, over TCP.
    Tcp(String),
    /// The directory of the server's Unix socket.
    Socket(PathBuf),
}

/// TLS towards the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// No TLS: only for a loopback address or a Unix socket.
    Disable,
    /// TLS without checking the server's certificate: encrypted, but anyone
    /// on the path can pose as the server.
    Require,
    /// TLS with the certificate checked against the CA file (or the
    /// built-in web roots) and the host name.
    VerifyFull,
}

impl SslMode {
    /// The name used in the URL's `sslmode`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode named `s`, of the three tokend accepts.
    pub(crate) fn parse(s: &str) -> Option<SslMode> {
        [SslMode::Disable, SslMode::Require, SslMode::VerifyFull]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// A PostgreSQL database and how to log in to it.
#[derive(Clone)]
pub(crate) struct PgSettings {
    pub(crate) host: PgHost,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) dbname: String,
    pub(crate) ssl: SslMode,
    /// The CA certificates (PEM) a `verify-full` server certificate must
    /// chain to, besides the built-in web roots.
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) password: Option<Secret>,
    /// Where the password came from, for `check-config`.
    pub(crate) password_from: Option<PathBuf>,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl PartialEq for PgSettings {
    /// The same database reached the same way; the password is compared by
    /// where it comes from, not by value.
    fn eq(&self, other: &Self) -> bool {
        (
            &self.host,
            self.port,
            &self.user,
            &self.dbname,
            self.ssl,
            &self.ca_file,
            &self.password_from,
        ) == (
            &other.host,
            other.port,
            &other.user,
            &other.dbname,
            other.ssl,
            &other.ca_file,
            &other.password_from,
        )
    }
}

impl PgSettings {
    /// The database as a URL without any secret, for messages and logs.
    pub(crate) fn url(&self) -> String {
        match &self.host {
            PgHost::Tcp(host) if host.contains(':') => {
                format!(
                    "postgres://{}@[{host}]:{}/{}",
                    self.user, self.port, self.dbname
                )
            }
            PgHost::Tcp(host) => {
                format!(
                    "postgres://{}@{host}:{}/{}",
                    self.user, self.port, self.dbname
                )
            }
            PgHost::Socket(dir) => format!(
                "postgres://{}@localhost:{}/{}?host={}",
                self.user,
                self.port,
                self.dbname,
                dir.display()
            ),
        }
    }

    /// One line for `check-config` and the start-up log: the URL, TLS and
    /// where the password comes from (never the password).
    pub(crate) fn describe(&self) -> String {
        let tls = match (&self.host, self.ssl, &self.ca_file) {
            (PgHost::Socket(_), _, _) => "Unix socket, no TLS".to_string(),
            (_, SslMode::VerifyFull, Some(ca)) => {
                format!("TLS verify-full, CA {}", ca.display())
            }
            (_, SslMode::VerifyFull, None) => "TLS verify-full, built-in web roots".into(),
            (_, SslMode::Require, _) => {
                "TLS require (the server's certificate is not checked)".into()
            }
            (_, SslMode::Disable, _) => "no TLS".into(),
        };
        let password = match &self.password_from {
            Some(path) => format!("password from {}", path.display()),
            None => "no password".into(),
        };
        format!("{} ({tls}, {password})", self.url())
    }

    /// The connection options, with `application_name` saying which tokend
    /// this is (what a second instance's refusal names).
    pub(super) fn connect_options(&self, application_name: &str) -> PgConnectOptions {
        let mut options = PgConnectOptions::new_without_pgpass()
            .port(self.port)
            .username(&self.user)
            .database(&self.dbname)
            .application_name(application_name)
            .ssl_mode(match (&self.host, self.ssl) {
                (PgHost::Socket(_), _) | (_, SslMode::Disable) => PgSslMode::Disable,
                (_, SslMode::Require) => PgSslMode::Require,
                (_, SslMode::VerifyFull) => PgSslMode::VerifyFull,
            });
        options = match &self.host {
            PgHost::Tcp(host) => options.host(host),
            PgHost::Socket(dir) => options.socket(dir),
        };
        if let Some(ca) = &self.ca_file {
            options = options.ssl_root_cert(ca);
        }
        if let Some(password) = &self.password {
            options = options.password(password.expose());
        }
        options
    }
}
