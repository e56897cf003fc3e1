//! Configuration: the TOML file read into a [`Config`] the rest of the
//! daemon can trust.
//!
//! - `raw`: the file's serde shape, unknown keys rejected.
//! - `collect`: gathering problems, each at its key's own line.
//! - `validate`: raw tables into validated settings; it builds the
//!   provider's request model (`provider::Endpoint`) but does not define it.
//! - `defaults` and `bounds`: every setting's default and allowed range.
//! - `credentials`: `[credentials.NAME]`, readers and declared credentials.
//! - `hooks`: `[[hooks]]`, commands run on credential events.
//! - `git`: `git_hosts`, the git hosts mapped to credentials.
//! - `secrets`: client secrets and the database key's location, from files,
//!   the environment or systemd credentials.
//!
//! [`parse_config`] is pure apart from resolving client secrets (file,
//! environment, systemd credential), so tests build configurations from
//! strings. Validation collects every problem, each with the line and key it
//! concerns, instead of stopping at the first: a table that does not read
//! whole is read again one key at a time, so every unknown key and every
//! value of the wrong type is reported at its own line and under its own
//! name.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::de::DeTable;

use crate::access::Grant;
use crate::credential::CredentialGrant;
use crate::provider::Endpoint;
use crate::token::RefreshTiming;
pub(crate) use git::{GitHost, GitHosts, DEFAULT_GIT_USERNAME};
pub(crate) use hooks::Hook;

mod bounds;
mod collect;
mod credentials;
mod database;
pub(crate) mod defaults;
mod endpoint;
mod git;
mod hooks;
mod raw;
mod secrets;
mod sinks;
mod validate;

#[cfg(test)]
mod tests;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `[daemon]` table.
    pub(crate) daemon: DaemonConfig,
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<ProviderConfig>>,
    /// Per-credential readers (`[credentials.NAME] readers = [...]`),
    /// overriding the provider's.
    pub(crate) credentials: BTreeMap<String, Arc<[Grant]>>,
    /// Credentials the configuration declares (`[credentials.NAME] grant =
    /// ...`): created at start-up and reload when the database lacks them.
    pub(crate) declared: BTreeMap<String, Declared>,
    /// Git hosts mapped to credentials (`[credentials.NAME] git_hosts`).
    pub(crate) git_hosts: GitHosts,
    /// Files that hold a credential's current token
    /// (`[[credentials.NAME.sinks]]`), by credential.
    pub(crate) sinks: crate::sinks::Sinks,
    /// Providers held back because their endpoints are not discovered yet,
    /// each with why: their credentials wait. Always empty as parsed; the
    /// daemon's discovery moves providers here (`discovery::effective`).
    pub(crate) pending: BTreeMap<String, String>,
    /// `[[hooks]]`: commands run on credential events.
    pub(crate) hooks: Arc<[Hook]>,
}

/// A credential the configuration declares: its provider and grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    /// The provider's name.
    pub(crate) provider: String,
    /// How it is acquired.
    pub(crate) grant: CredentialGrant,
}

impl Config {
    /// Who may read a credential: its own `readers` if configured, else its
    /// provider's, else nobody but administrators. `None` means nobody; the
    /// lists are shared, so a million credentials hold a million pointers
    /// to a handful of lists.
    pub(crate) fn readers(&self, credential: &str, provider: &str) -> Option<&Arc<[Grant]>> {
        self.credentials
            .get(credential)
            .or_else(|| self.providers.get(provider).map(|p| &p.readers))
    }
}

/// Daemon-wide settings.
#[derive(Debug, Clone)]
pub(crate) struct DaemonConfig {
    /// Socket path; `None` means the default for this environment.
    pub(crate) socket: Option<PathBuf>,
    /// The database: an SQLite file or PostgreSQL; `None` means the
    /// default file for this environment.
    pub(crate) database: Option<crate::store::Location>,
    /// When to refresh relative to a token's lifetime.
    pub(crate) timing: RefreshTiming,
    /// Most refresh requests in flight at once, over all providers.
    pub(crate) max_concurrent_refreshes: usize,
    /// First retry delay after a transient failure.
    pub(crate) retry_initial: Duration,
    /// Longest retry delay.
    pub(crate) retry_max: Duration,
    /// How long shutdown waits for in-flight refreshes to finish.
    pub(crate) shutdown_timeout: Duration,
    /// Longest a token read waits for a refresh before it is answered 503.
    pub(crate) read_timeout: Duration,
    /// Members of this group may administer: add, remove, refresh, list all.
    pub(crate) admin_gid: Option<u32>,
    /// Group given to the socket file when tokend binds it itself (mode 0660).
    pub(crate) socket_gid: Option<u32>,
    /// Where the database encryption key is, if configured.
    pub(crate) encryption_key: Option<PathBuf>,
    /// Most credentials with an expiry series of their own on `/metrics`.
    pub(crate) metrics_credential_limit: usize,
    /// The loopback address of the optional metrics listener.
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
}

/// One provider: its token endpoint and how tokend treats its credentials.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The provider's name (its table key).
    pub(crate) name: String,
    /// The token endpoint and how to talk to it.
    pub endpoint: Endpoint,
    /// The secret is written in the configuration file itself, which must
    /// then not be world-readable.
    pub(crate) inline_secret: bool,
    /// Lifetime assumed when a response states none and the token is no JWT.
    pub(crate) default_lifetime: Duration,
    /// Most refresh requests in flight at once to this provider.
    pub(crate) max_concurrent_refreshes: usize,
    /// Refresh at least this often, for providers whose idle refresh tokens
    /// expire.
    pub(crate) keepalive: Option<Duration>,
    /// Warn when the refresh token has less than this left to live.
    pub(crate) refresh_token_warning: Duration,
    /// Whether a credential whose grant was rejected still serves its
    /// unexpired access token.
    pub(crate) on_invalid_grant: OnInvalidGrant,
    /// Who may read the tokens of this provider's credentials, unless a
    /// `[credentials.NAME]` table says otherwise.
    pub(crate) readers: Arc<[Grant]>,
    /// Revoke a credential's token at the provider (RFC 7009) before it is
    /// removed, even when the remover did not ask to.
    pub(crate) revoke_on_remove: bool,
    /// How the provider's metadata is discovered, if it has an issuer.
    pub(crate) discovery: Option<Discovery>,
}

/// A provider with an `issuer`: how its metadata is kept current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Discovery {
    /// How often the metadata is fetched again (`discovery_refresh`).
    pub(crate) refresh: Duration,
    /// `token_url` is configured, so the provider works without metadata.
    pub(crate) token_url_configured: bool,
}

/// What a token read gets once the provider rejected the grant
/// (`invalid_grant` or another of `reauth_errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInvalidGrant {
    /// Refuse it (409 `needs_reauth`): a provider that revokes the whole
    /// grant has made the access token useless too.
    Withhold,
    /// Serve it until it expires, marked `needs_reauth` with a warning.
    ServeUntilExpiry,
}

impl Default for OnInvalidGrant {
    fn default() -> Self {
        defaults::ON_INVALID_GRANT
    }
}

/// A configuration that does not validate: every problem found in it.
#[derive(Debug)]
pub struct InvalidConfig {
    /// The file, if the configuration came from one.
    pub(crate) file: Option<PathBuf>,
    /// The problems, in file order.
    pub(crate) problems: Vec<Problem>,
}

/// One configuration problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// 1-based line of the key concerned (of its table if the key is
    /// missing), when known.
    pub(crate) line: Option<usize>,
    /// Dotted key path, e.g. `providers.didit.client_auth`.
    pub(crate) key: String,
    /// What is wrong and how to fix it.
    pub(crate) message: String,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".into());
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.line {
                Some(line) => write!(f, "{file}:{line}: {}: {}", p.key, p.message)?,
                None => write!(f, "{file}: {}: {}", p.key, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for InvalidConfig {}

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The file was read but is invalid.
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
}

/// Reads and validates a configuration file.
pub(crate) fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    })?;
    parse_config(&text).map_err(|mut e| {
        e.file = Some(path.to_path_buf());
        ConfigError::Invalid(e)
    })
}

impl Default for Config {
    fn default() -> Self {
        parse_config("").expect("the empty configuration is valid")
    }
}

/// Parses and validates configuration text. Client secrets given by file,
/// environment variable or systemd credential are read here.
pub fn parse_config(text: &str) -> Result<Config, InvalidConfig> {
    let mut c = collect::Collector::new(text);
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let line = e.span().map(|s| c.line_of(s.start));
            c.push(line, "(file)", e.message().to_string());
            return Err(InvalidConfig {
                file: None,
                problems: c.problems,
            });
        }
    };
    let sections = validate::sections(&mut c, root.get_ref());
    match validate::config(&mut c, sections) {
        Some(config) => Ok(config),
        None => {
            c.problems.sort_by_key(|p| p.line);
            Err(InvalidConfig {
                file: None,
                problems: c.problems,
            })
        }
    }
}
