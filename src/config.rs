//! Configuration: the TOML file's raw serde shape (unknown keys rejected) and
//! its validation into a [`Config`] the rest of the daemon can trust.
//!
//! [`parse_config`] is pure apart from resolving client secrets (file,
//! environment, systemd credential), so tests build configurations from
//! strings. Validation collects every problem, each with the line and key it
//! concerns, instead of stopping at the first: a table that does not read
//! whole is read again one key at a time, so every unknown key and every
//! value of the wrong type is reported at its own line and under its own
//! name. Every numeric setting has bounds (see "bounds" below).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;
use url::Url;

use crate::access::Grant;
use crate::token::{RefreshTiming, ResponseFields, Secret};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `[daemon]` table.
    pub daemon: DaemonConfig,
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<ProviderConfig>>,
    /// Per-credential readers (`[credentials.NAME] readers = [...]`),
    /// overriding the provider's.
    pub credentials: BTreeMap<String, Arc<[Grant]>>,
}

impl Config {
    /// Who may read a credential: its own `readers` if configured, else its
    /// provider's, else nobody but administrators. `None` means nobody; the
    /// lists are shared, so a million credentials hold a million pointers
    /// to a handful of lists.
    pub fn readers(&self, credential: &str, provider: &str) -> Option<&Arc<[Grant]>> {
        self.credentials
            .get(credential)
            .or_else(|| self.providers.get(provider).map(|p| &p.readers))
    }
}

/// Daemon-wide settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Socket path; `None` means the default for this environment.
    pub socket: Option<PathBuf>,
    /// Database path; `None` means the default for this environment.
    pub database: Option<PathBuf>,
    /// When to refresh relative to a token's lifetime.
    pub timing: RefreshTiming,
    /// Most refresh requests in flight at once, over all providers.
    pub max_concurrent_refreshes: usize,
    /// First retry delay after a transient failure.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long shutdown waits for in-flight refreshes to finish.
    pub shutdown_timeout: Duration,
    /// Longest a token read waits for a refresh before it is answered 503.
    pub read_timeout: Duration,
    /// Members of this group may administer: add, remove, refresh, list all.
    pub admin_gid: Option<u32>,
    /// Group given to the socket file when tokend binds it itself (mode 0660).
    pub socket_gid: Option<u32>,
    /// Where the database encryption key is, if configured.
    pub encryption_key: Option<PathBuf>,
}

/// One token endpoint, described declaratively.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The provider's name (its table key).
    pub name: String,
    /// The token endpoint.
    pub token_url: Url,
    /// OAuth client id, if the provider uses one.
    pub client_id: Option<String>,
    /// OAuth client secret (password), resolved from wherever it was given.
    pub client_secret: Option<Secret>,
    /// The secret is written in the configuration file itself, which must
    /// then not be world-readable.
    pub inline_secret: bool,
    /// How the client authenticates to the token endpoint.
    pub client_auth: ClientAuth,
    /// Scope to request on refresh, if any (`{scope}` in templates).
    pub scope: Option<String>,
    /// The refresh request.
    pub refresh: RequestTemplate,
    /// The authorization-code exchange request.
    pub exchange: RequestTemplate,
    /// Names of the response fields.
    pub response: ResponseFields,
    /// OAuth `error` codes meaning the grant is dead and a human must log in again.
    pub reauth_errors: Vec<String>,
    /// Lifetime assumed when a response states none and the token is no JWT.
    pub default_lifetime: Duration,
    /// Timeout for one token request, connect to last byte.
    pub request_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
    /// Most refresh requests in flight at once to this provider.
    pub max_concurrent_refreshes: usize,
    /// Refresh at least this often, for providers whose idle refresh tokens
    /// expire.
    pub keepalive: Option<Duration>,
    /// Warn when the refresh token has less than this left to live.
    pub refresh_token_warning: Duration,
    /// Whether a credential whose grant was rejected still serves its
    /// unexpired access token.
    pub on_invalid_grant: OnInvalidGrant,
    /// Who may read the tokens of this provider's credentials, unless a
    /// `[credentials.NAME]` table says otherwise.
    pub readers: Arc<[Grant]>,
}

/// What a token read gets once the provider rejected the grant
/// (`invalid_grant` or another of `reauth_errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnInvalidGrant {
    /// Refuse it (409 `needs_reauth`): a provider that revokes the whole
    /// grant has made the access token useless too.
    #[default]
    Withhold,
    /// Serve it until it expires, marked `needs_reauth` with a warning.
    ServeUntilExpiry,
}

/// Client authentication at the token endpoint (RFC 6749 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(id:secret)` (seeds 000/001).
    Basic,
    /// As `Basic`, but id and secret are form-urlencoded first, as RFC 6749
    /// §2.3.1 strictly requires.
    BasicUrlencoded,
    /// `client_id` and `client_secret` in the request body (seed 003).
    Body,
    /// No client authentication; `client_id` is sent in the body if
    /// configured (public clients, RFC 6749 §3.2.1).
    None,
    /// digiRunner: `Basic Base64(id ":" Base64(secret))`, or `Basic Base64(id ":")`
    /// for a public PKCE client without a secret (seed 004).
    DigiRunner,
}

/// Body encoding of a token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json`, every field a string.
    Json,
}

/// The values a template may name as `{name}`.
pub const PLACEHOLDERS: [&str; 7] = [
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
    "code",
    "redirect_uri",
    "code_verifier",
];

/// A request description: encoding, body fields and extra headers, each value
/// a template. A field or header whose template names a value that is not
/// available (no scope configured, no PKCE verifier given) is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTemplate {
    /// Body encoding.
    pub encoding: Encoding,
    /// Body fields in order.
    pub fields: Vec<(String, String)>,
    /// Extra headers in order.
    pub headers: Vec<(String, String)>,
}

impl RequestTemplate {
    fn default_refresh() -> Self {
        RequestTemplate {
            encoding: Encoding::Form,
            fields: pairs(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "{refresh_token}"),
                ("scope", "{scope}"),
            ]),
            headers: Vec::new(),
        }
    }

    fn default_exchange() -> Self {
        RequestTemplate {
            encoding: Encoding::Form,
            fields: pairs(&[
                ("code", "{code}"),
                ("grant_type", "authorization_code"),
                ("redirect_uri", "{redirect_uri}"),
                ("code_verifier", "{code_verifier}"),
            ]),
            headers: Vec::new(),
        }
    }

    /// Whether any field or header names `{placeholder}`.
    pub fn mentions(&self, placeholder: &str) -> bool {
        let needle = format!("{{{placeholder}}}");
        self.fields
            .iter()
            .chain(&self.headers)
            .any(|(_, v)| v.contains(&needle))
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Substitutes `{name}` placeholders. Returns `None` if a named value is not
/// available, so the caller leaves that field out.
pub fn render(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) if PLACEHOLDERS.contains(&&after[..end]) => {
                out.push_str(&lookup(&after[..end])?);
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Every problem found in a configuration file.
#[derive(Debug)]
pub struct ConfigErrors {
    /// The file, if the configuration came from one.
    pub file: Option<PathBuf>,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

/// One configuration problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key concerned (of its table if the key is
    /// missing), when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `providers.didit.client_auth`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigErrors {
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

impl std::error::Error for ConfigErrors {}

/// Errors loading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
    Invalid(#[from] ConfigErrors),
}

/// Reads and validates a configuration file.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
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

// ---- raw shape -------------------------------------------------------------
//
// Every field is optional: a table that does not read whole is read again one
// key at a time (`Collector::table`), and a missing required key is the
// validation's to report.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    readers: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<PathBuf>,
    database: Option<PathBuf>,
    refresh_remaining: Option<f64>,
    refresh_jitter: Option<f64>,
    min_refresh_interval: Option<RawDuration>,
    max_refresh_margin: Option<RawDuration>,
    max_concurrent_refreshes: Option<usize>,
    retry_initial: Option<RawDuration>,
    retry_max: Option<RawDuration>,
    shutdown_timeout: Option<RawDuration>,
    read_timeout: Option<RawDuration>,
    default_lifetime: Option<RawDuration>,
    request_timeout: Option<RawDuration>,
    max_response_bytes: Option<usize>,
    admin_group: Option<String>,
    socket_group: Option<String>,
    encryption_key_file: Option<PathBuf>,
    encryption_key_credential: Option<String>,
}

/// A provider's keys but its sub-tables ([`PROVIDER_TABLES`]), which are read
/// on their own so that their keys have their own lines.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    token_url: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    client_secret_credential: Option<String>,
    client_auth: Option<String>,
    scope: Option<String>,
    reauth_errors: Option<Vec<String>>,
    default_lifetime: Option<RawDuration>,
    request_timeout: Option<RawDuration>,
    max_response_bytes: Option<usize>,
    allow_insecure_http: Option<bool>,
    max_concurrent_refreshes: Option<usize>,
    keepalive: Option<RawDuration>,
    refresh_token_warning: Option<RawDuration>,
    on_invalid_grant: Option<String>,
    readers: Option<Vec<String>>,
}

/// The sub-tables of `[providers.NAME]`.
const PROVIDER_TABLES: [&str; 3] = ["refresh", "exchange", "response"];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    encoding: Option<String>,
    fields: Option<toml::Table>,
    headers: Option<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<String>,
    token_type: Option<String>,
    scope: Option<String>,
}

/// A duration as whole seconds or a human string ("90s", "5m", "1h 30m").
#[derive(Clone)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: whole seconds, or a string such as \"90s\" or \"5m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawDuration, E> {
                u64::try_from(v)
                    .map(RawDuration::Seconds)
                    .map_err(|_| E::custom(format!("`{v}` is negative; a duration is 0 or more")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

// ---- bounds ----------------------------------------------------------------
//
// Every numeric setting has a range: below it the setting means nothing or
// stops tokend working (a zero timeout, a body cap no response fits in),
// above it no deployment has a use for it and the millisecond arithmetic
// would have to be trusted with it.

const DAY: u64 = 86_400;
const CONCURRENCY: RangeInclusive<usize> = 1..=4096;
const RESPONSE_BYTES: RangeInclusive<usize> = 1024..=64 << 20;
const MIN_REFRESH_INTERVAL: RangeInclusive<Duration> = ms(100)..=secs(3600);
const MAX_REFRESH_MARGIN: RangeInclusive<Duration> = secs(1)..=secs(30 * DAY);
const RETRY_INITIAL: RangeInclusive<Duration> = ms(10)..=secs(3600);
const RETRY_MAX: RangeInclusive<Duration> = ms(10)..=secs(DAY);
const SHUTDOWN_TIMEOUT: RangeInclusive<Duration> = ms(100)..=secs(3600);
const LIFETIME: RangeInclusive<Duration> = secs(1)..=secs(366 * DAY);
const REQUEST_TIMEOUT: RangeInclusive<Duration> = ms(100)..=secs(600);
/// Below the socket's own 75 s request limit, so the 503 gets through.
const READ_TIMEOUT: RangeInclusive<Duration> = ms(100)..=secs(60);
const KEEPALIVE: RangeInclusive<Duration> = secs(60)..=secs(366 * DAY);
const REFRESH_TOKEN_WARNING: RangeInclusive<Duration> = secs(0)..=secs(366 * DAY);

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---- validation ------------------------------------------------------------

struct Collector<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

/// A table being validated: its dotted path and where it and each of its
/// keys are, so that a problem points at its key's own line.
struct Scope {
    path: String,
    line: usize,
    keys: BTreeMap<String, usize>,
}

impl Scope {
    /// The line of `key`, or of the table if the key is absent.
    fn line(&self, key: &str) -> Option<usize> {
        Some(self.keys.get(key).copied().unwrap_or(self.line))
    }

    /// The dotted path of `key`.
    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }
}

impl Collector<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn push(&mut self, line: Option<usize>, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A problem with `key` of the table `s`, at the key's line.
    fn problem(&mut self, s: &Scope, key: &str, message: impl Into<String>) {
        self.push(s.line(key), s.key(key), message);
    }

    /// `value` as a table, or a problem at `line`.
    fn subtable<'v, 'i>(
        &mut self,
        line: usize,
        path: &str,
        value: &'v Spanned<DeValue<'i>>,
    ) -> Option<&'v DeTable<'i>> {
        let table = value.get_ref().as_table();
        if table.is_none() {
            self.push(
                Some(line),
                path,
                format!("must be a table; found {}", value.get_ref().type_str()),
            );
        }
        table
    }

    /// Reads `table`, found at `line` under `path`, into `T`. A table that
    /// does not read whole is read one key at a time, so that every unknown
    /// key and every value of the wrong type is reported, each at its own
    /// line; the keys that read are kept.
    fn table<T: DeserializeOwned + Default>(
        &mut self,
        path: &str,
        line: usize,
        table: &DeTable<'_>,
    ) -> (T, Scope) {
        let scope = Scope {
            path: path.to_string(),
            line,
            keys: table
                .iter()
                .map(|(k, _)| (k.get_ref().to_string(), self.line_of(k.span().start)))
                .collect(),
        };
        let read = |t: DeTable<'_>| {
            T::deserialize(ValueDeserializer::from(Spanned::new(
                0..0,
                DeValue::Table(t),
            )))
        };
        if let Ok(whole) = read(table.clone()) {
            return (whole, scope);
        }
        let mut good = DeTable::new();
        for (k, v) in table {
            let mut one = DeTable::new();
            one.insert(k.clone(), v.clone());
            match read(one) {
                Ok(_) => {
                    good.insert(k.clone(), v.clone());
                }
                Err(e) => self.problem(&scope, k.get_ref(), e.message().trim()),
            }
        }
        (read(good).unwrap_or_default(), scope)
    }

    fn grants(&mut self, s: &Scope, key: &str, rules: &[String]) -> Vec<Grant> {
        rules
            .iter()
            .filter_map(|r| Grant::parse(r).map_err(|e| self.problem(s, key, e)).ok())
            .collect()
    }

    fn group(&mut self, s: &Scope, key: &str, name: Option<&str>) -> Option<u32> {
        let name = name?;
        if let Ok(gid) = name.parse::<u32>() {
            return Some(gid);
        }
        match Grant::parse(&format!("group:{name}")) {
            Ok(Grant::Gid(gid)) => Some(gid),
            Ok(_) => None,
            Err(e) => {
                self.problem(s, key, e);
                None
            }
        }
    }

    /// A duration setting: `default` if absent; a value that does not parse
    /// or lies outside `range` is a problem.
    fn duration(
        &mut self,
        s: &Scope,
        key: &str,
        raw: Option<&RawDuration>,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let value = match raw {
            None => return default,
            Some(RawDuration::Seconds(n)) => Duration::from_secs(*n),
            Some(RawDuration::Text(t)) => match humantime::parse_duration(t) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(
                        s,
                        key,
                        format!("`{t}` is not a duration ({e}); write e.g. 30, \"90s\" or \"5m\""),
                    );
                    return default;
                }
            },
        };
        if !range.contains(&value) {
            self.problem(
                s,
                key,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end())
                ),
            );
        }
        value
    }

    /// A count setting: `default` if absent; outside `range` is a problem.
    fn count(
        &mut self,
        s: &Scope,
        key: &str,
        raw: Option<usize>,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> usize {
        let Some(value) = raw else { return default };
        if !range.contains(&value) {
            self.problem(
                s,
                key,
                format!("must be between {} and {}", range.start(), range.end()),
            );
        }
        value
    }
}

/// Parses and validates configuration text. Client secrets given by file,
/// environment variable or systemd credential are read here.
pub fn parse_config(text: &str) -> Result<Config, ConfigErrors> {
    let mut c = Collector {
        text,
        problems: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let line = e.span().map(|s| c.line_of(s.start));
            c.push(line, "(file)", e.message().to_string());
            return Err(ConfigErrors {
                file: None,
                problems: c.problems,
            });
        }
    };
    let mut daemon_table = None;
    let mut providers = BTreeMap::new();
    let mut credentials = BTreeMap::new();
    let (mut provider_tables, mut credential_tables) = (Vec::new(), Vec::new());
    for (key, value) in root.get_ref() {
        let line = c.line_of(key.span().start);
        let section = key.get_ref().as_ref();
        let tables = match section {
            "daemon" => {
                daemon_table = c.subtable(line, section, value).map(|t| (line, t));
                continue;
            }
            "providers" => &mut provider_tables,
            "credentials" => &mut credential_tables,
            other => {
                c.push(
                    Some(line),
                    other,
                    "unknown table; the tables are daemon, providers.NAME and credentials.NAME",
                );
                continue;
            }
        };
        let Some(entries) = c.subtable(line, section, value) else {
            continue;
        };
        for (name, value) in entries {
            let line = c.line_of(name.span().start);
            let path = format!("{section}.{}", name.get_ref());
            if let Some(table) = c.subtable(line, &path, value) {
                tables.push((name.get_ref().to_string(), path, line, table));
            }
        }
    }
    let (daemon, defaults) = validate_daemon(&mut c, daemon_table);
    for (name, path, line, table) in provider_tables {
        let (own, nested): (DeTable<'_>, DeTable<'_>) = table
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| !PROVIDER_TABLES.contains(&k.get_ref().as_ref()));
        let (raw, scope) = c.table::<RawProvider>(&path, line, &own);
        let mut sub = Subtables::default();
        for (key, value) in &nested {
            let line = c.line_of(key.span().start);
            let path = format!("{path}.{}", key.get_ref());
            let Some(table) = c.subtable(line, &path, value) else {
                continue;
            };
            match key.get_ref().as_ref() {
                "refresh" => sub.refresh = Some(c.table(&path, line, table)),
                "exchange" => sub.exchange = Some(c.table(&path, line, table)),
                _ => sub.response = Some(c.table(&path, line, table)),
            }
        }
        if let Some(p) = validate_provider(&mut c, &name, &scope, raw, sub, &defaults) {
            providers.insert(name, Arc::new(p));
        }
    }
    for (name, path, line, table) in credential_tables {
        let (raw, scope) = c.table::<RawCredential>(&path, line, table);
        match raw.readers {
            Some(readers) => {
                let grants = c.grants(&scope, "readers", &readers);
                credentials.insert(name, Arc::from(grants));
            }
            None => c.problem(
                &scope,
                "readers",
                "missing; list who may read this credential, e.g. readers = [\"user:backup\"]",
            ),
        }
    }
    if c.problems.is_empty() {
        Ok(Config {
            daemon,
            providers,
            credentials,
        })
    } else {
        c.problems.sort_by_key(|p| p.line);
        Err(ConfigErrors {
            file: None,
            problems: c.problems,
        })
    }
}

/// A provider's sub-tables, each with where its keys are.
#[derive(Default)]
struct Subtables {
    refresh: Option<(RawRequest, Scope)>,
    exchange: Option<(RawRequest, Scope)>,
    response: Option<(RawResponse, Scope)>,
}

/// Provider settings whose defaults the `[daemon]` table sets.
struct ProviderDefaults {
    default_lifetime: Duration,
    request_timeout: Duration,
    max_response_bytes: usize,
}

fn validate_daemon(
    c: &mut Collector<'_>,
    table: Option<(usize, &DeTable<'_>)>,
) -> (DaemonConfig, ProviderDefaults) {
    let (raw, s) = match table {
        Some((line, table)) => c.table::<RawDaemon>("daemon", line, table),
        None => (
            RawDaemon::default(),
            Scope {
                path: "daemon".into(),
                line: 1,
                keys: BTreeMap::new(),
            },
        ),
    };
    let base = RefreshTiming::default();
    let remaining = raw.refresh_remaining.unwrap_or(base.remaining_fraction);
    if !(0.05..=0.9).contains(&remaining) {
        c.problem(
            &s,
            "refresh_remaining",
            "must be between 0.05 and 0.9 (the fraction of a token's lifetime left when it is refreshed)",
        );
    }
    let jitter = raw.refresh_jitter.unwrap_or(base.jitter_fraction);
    let sum_checked = (0.05..=0.9).contains(&remaining);
    if !(0.0..=0.5).contains(&jitter) || (sum_checked && remaining + jitter > 0.95) {
        c.problem(
            &s,
            "refresh_jitter",
            "must be between 0 and 0.5, and refresh_remaining + refresh_jitter at most 0.95",
        );
    }
    let timing = RefreshTiming {
        remaining_fraction: remaining,
        jitter_fraction: jitter,
        min_interval: c.duration(
            &s,
            "min_refresh_interval",
            raw.min_refresh_interval.as_ref(),
            base.min_interval,
            MIN_REFRESH_INTERVAL,
        ),
        max_margin: c.duration(
            &s,
            "max_refresh_margin",
            raw.max_refresh_margin.as_ref(),
            base.max_margin,
            MAX_REFRESH_MARGIN,
        ),
    };
    let max_concurrent_refreshes = c.count(
        &s,
        "max_concurrent_refreshes",
        raw.max_concurrent_refreshes,
        16,
        CONCURRENCY,
    );
    let before = c.problems.len();
    let retry_initial = c.duration(
        &s,
        "retry_initial",
        raw.retry_initial.as_ref(),
        Duration::from_secs(1),
        RETRY_INITIAL,
    );
    let retry_max = c.duration(
        &s,
        "retry_max",
        raw.retry_max.as_ref(),
        Duration::from_secs(300),
        RETRY_MAX,
    );
    if c.problems.len() == before && retry_max < retry_initial {
        c.problem(&s, "retry_initial", "must not be above retry_max");
    }
    let encryption_key = match (&raw.encryption_key_file, &raw.encryption_key_credential) {
        (Some(_), Some(_)) => {
            c.problem(
                &s,
                "encryption_key_file",
                "give the encryption key one way only: encryption_key_file or encryption_key_credential",
            );
            None
        }
        (Some(file), None) => Some(file.clone()),
        (None, Some(name)) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Some(Path::new(&dir).join(name)),
            None => {
                c.problem(
                    &s,
                    "encryption_key_credential",
                    "$CREDENTIALS_DIRECTORY is not set: run under systemd with LoadCredential=, or use encryption_key_file",
                );
                None
            }
        },
        (None, None) => None,
    };
    let daemon = DaemonConfig {
        admin_gid: c.group(&s, "admin_group", raw.admin_group.as_deref()),
        socket_gid: c.group(&s, "socket_group", raw.socket_group.as_deref()),
        encryption_key,
        socket: raw.socket,
        database: raw.database,
        timing,
        max_concurrent_refreshes: max_concurrent_refreshes.max(1),
        retry_initial,
        retry_max,
        shutdown_timeout: c.duration(
            &s,
            "shutdown_timeout",
            raw.shutdown_timeout.as_ref(),
            Duration::from_secs(10),
            SHUTDOWN_TIMEOUT,
        ),
        read_timeout: c.duration(
            &s,
            "read_timeout",
            raw.read_timeout.as_ref(),
            Duration::from_secs(5),
            READ_TIMEOUT,
        ),
    };
    let defaults = ProviderDefaults {
        default_lifetime: c.duration(
            &s,
            "default_lifetime",
            raw.default_lifetime.as_ref(),
            Duration::from_secs(3600),
            LIFETIME,
        ),
        request_timeout: c.duration(
            &s,
            "request_timeout",
            raw.request_timeout.as_ref(),
            Duration::from_secs(30),
            REQUEST_TIMEOUT,
        ),
        max_response_bytes: c.count(
            &s,
            "max_response_bytes",
            raw.max_response_bytes,
            1 << 20,
            RESPONSE_BYTES,
        ),
    };
    (daemon, defaults)
}

fn validate_provider(
    c: &mut Collector<'_>,
    name: &str,
    s: &Scope,
    raw: RawProvider,
    sub: Subtables,
    defaults: &ProviderDefaults,
) -> Option<ProviderConfig> {
    let before = c.problems.len();
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        c.push(
            Some(s.line),
            s.path.clone(),
            "provider names may only contain letters, digits, '-', '_' and '.'",
        );
    }
    let token_url = match &raw.token_url {
        Some(url) => check_url(c, s, url, raw.allow_insecure_http),
        None => {
            c.problem(s, "token_url", "missing; give the provider's token endpoint, e.g. token_url = \"https://login.example/oauth/token\"");
            None
        }
    };
    let client_secret = resolve_secret(c, s, &raw);
    let client_auth = match raw.client_auth.as_deref().unwrap_or("basic") {
        "basic" | "client_secret_basic" => ClientAuth::Basic,
        "basic_urlencoded" => ClientAuth::BasicUrlencoded,
        "body" | "client_secret_post" => ClientAuth::Body,
        "none" => ClientAuth::None,
        "digirunner" => ClientAuth::DigiRunner,
        other => {
            c.problem(
                s,
                "client_auth",
                format!("unknown value `{other}`; use basic, basic_urlencoded, body, none or digirunner"),
            );
            ClientAuth::Basic
        }
    };
    check_auth_inputs(c, s, client_auth, &raw.client_id, &client_secret);
    let refresh = request_template(
        c,
        s,
        "refresh",
        sub.refresh,
        RequestTemplate::default_refresh(),
        "refresh_token",
    );
    let exchange = request_template(
        c,
        s,
        "exchange",
        sub.exchange,
        RequestTemplate::default_exchange(),
        "code",
    );
    let response = sub.response.map_or_else(ResponseFields::default, |(r, _)| {
        let d = ResponseFields::default();
        ResponseFields {
            access_token: r.access_token.unwrap_or(d.access_token),
            refresh_token: r.refresh_token.unwrap_or(d.refresh_token),
            expires_in: r.expires_in.unwrap_or(d.expires_in),
            token_type: r.token_type.unwrap_or(d.token_type),
            scope: r.scope.unwrap_or(d.scope),
        }
    });
    let default_lifetime = c.duration(
        s,
        "default_lifetime",
        raw.default_lifetime.as_ref(),
        defaults.default_lifetime,
        LIFETIME,
    );
    let request_timeout = c.duration(
        s,
        "request_timeout",
        raw.request_timeout.as_ref(),
        defaults.request_timeout,
        REQUEST_TIMEOUT,
    );
    let keepalive = raw
        .keepalive
        .as_ref()
        .map(|k| c.duration(s, "keepalive", Some(k), Duration::ZERO, KEEPALIVE));
    let refresh_token_warning = c.duration(
        s,
        "refresh_token_warning",
        raw.refresh_token_warning.as_ref(),
        Duration::from_secs(3 * DAY),
        REFRESH_TOKEN_WARNING,
    );
    let on_invalid_grant = match raw.on_invalid_grant.as_deref() {
        None | Some("withhold") => OnInvalidGrant::Withhold,
        Some("serve_until_expiry") => OnInvalidGrant::ServeUntilExpiry,
        Some(other) => {
            c.problem(
                s,
                "on_invalid_grant",
                format!("unknown value `{other}`; use withhold or serve_until_expiry"),
            );
            OnInvalidGrant::Withhold
        }
    };
    let readers: Arc<[Grant]> =
        Arc::from(c.grants(s, "readers", raw.readers.as_deref().unwrap_or_default()));
    let max_response_bytes = c.count(
        s,
        "max_response_bytes",
        raw.max_response_bytes,
        defaults.max_response_bytes,
        RESPONSE_BYTES,
    );
    let max_concurrent_refreshes = c.count(
        s,
        "max_concurrent_refreshes",
        raw.max_concurrent_refreshes,
        4,
        CONCURRENCY,
    );
    if c.problems.len() > before {
        return None;
    }
    Some(ProviderConfig {
        name: name.to_string(),
        token_url: token_url?,
        client_id: raw.client_id,
        inline_secret: raw.client_secret.is_some(),
        client_secret,
        client_auth,
        scope: raw.scope,
        refresh,
        exchange,
        response,
        reauth_errors: raw
            .reauth_errors
            .unwrap_or_else(|| vec!["invalid_grant".into(), "invalid_token".into()]),
        default_lifetime,
        request_timeout,
        max_response_bytes,
        max_concurrent_refreshes,
        keepalive,
        refresh_token_warning,
        on_invalid_grant,
        readers,
    })
}

fn check_url(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &str,
    allow_insecure_http: Option<bool>,
) -> Option<Url> {
    let key = "token_url";
    let url = match Url::parse(raw) {
        Ok(url) => url,
        Err(e) => {
            c.problem(s, key, format!("`{raw}` is not a URL ({e})"));
            return None;
        }
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Some(url),
        "http" if loopback || allow_insecure_http == Some(true) => Some(url),
        "http" => {
            c.problem(
                s,
                key,
                "plain http would send client secrets and tokens in clear text; use https, or set allow_insecure_http = true if you really mean it",
            );
            None
        }
        other => {
            c.problem(s, key, format!("unsupported scheme `{other}`; use https"));
            None
        }
    }
}

fn resolve_secret(c: &mut Collector<'_>, s: &Scope, raw: &RawProvider) -> Option<Secret> {
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
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                c.problem(
                    s,
                    "client_secret_env",
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        };
    }
    if let Some(cred) = &raw.client_secret_credential {
        let key = "client_secret_credential";
        return match std::env::var_os("CREDENTIALS_DIRECTORY") {
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
        };
    }
    None
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

fn check_auth_inputs(
    c: &mut Collector<'_>,
    s: &Scope,
    auth: ClientAuth,
    client_id: &Option<String>,
    secret: &Option<Secret>,
) {
    let needs_secret = matches!(
        auth,
        ClientAuth::Basic | ClientAuth::BasicUrlencoded | ClientAuth::Body
    );
    let needs_id = needs_secret || auth == ClientAuth::DigiRunner;
    if needs_id && client_id.is_none() {
        c.problem(s, "client_auth", "this client_auth needs client_id");
    }
    let secret_reported = c
        .problems
        .iter()
        .any(|p| p.key.starts_with(&s.key("client_secret")));
    if needs_secret && secret.is_none() && !secret_reported {
        c.problem(
            s,
            "client_auth",
            "this client_auth needs a client secret (client_secret, client_secret_file, client_secret_env or client_secret_credential); for a public client use client_auth = \"none\"",
        );
    }
}

fn request_template(
    c: &mut Collector<'_>,
    provider: &Scope,
    name: &str,
    raw: Option<(RawRequest, Scope)>,
    default: RequestTemplate,
    required: &str,
) -> RequestTemplate {
    let Some((raw, s)) = raw else { return default };
    let encoding = match raw.encoding.as_deref() {
        None | Some("form") => Encoding::Form,
        Some("json") => Encoding::Json,
        Some(other) => {
            c.problem(
                &s,
                "encoding",
                format!("unknown encoding `{other}`; use form or json"),
            );
            Encoding::Form
        }
    };
    let mut table = |part: &str, t: Option<toml::Table>| -> Option<Vec<(String, String)>> {
        let t = t?;
        let line = s.line(part);
        let mut out = Vec::new();
        for (k, v) in t {
            let key = format!("{}.{k}", s.key(part));
            match v {
                toml::Value::String(v) => {
                    check_placeholders(c, line, &key, &v);
                    out.push((k, v));
                }
                toml::Value::Integer(i) => out.push((k, i.to_string())),
                other => c.push(
                    line,
                    key,
                    format!("must be a string; found {}", other.type_str()),
                ),
            }
        }
        Some(out)
    };
    let template = RequestTemplate {
        encoding,
        fields: table("fields", raw.fields).unwrap_or(default.fields),
        headers: table("headers", raw.headers).unwrap_or(default.headers),
    };
    if !template.mentions(required) {
        c.push(
            s.line("fields"),
            provider.key(name),
            format!("no field or header sends {{{required}}}; add e.g. {required} = \"{{{required}}}\" to fields"),
        );
    }
    template
}

fn check_placeholders(c: &mut Collector<'_>, line: Option<usize>, key: &str, value: &str) {
    let mut rest = value;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty()
            && name.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_')
            && !PLACEHOLDERS.contains(&name)
        {
            c.push(
                line,
                key,
                format!(
                    "unknown placeholder {{{name}}}; known: {}",
                    PLACEHOLDERS.join(", ")
                ),
            );
        }
        rest = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        parse_config(text).unwrap_err().problems
    }

    #[test]
    fn empty_config_is_valid_with_defaults() {
        let cfg = parse_config("").unwrap();
        assert!(cfg.providers.is_empty());
        assert_eq!(cfg.daemon.max_concurrent_refreshes, 16);
        assert_eq!(cfg.daemon.retry_max, Duration::from_secs(300));
    }

    #[test]
    fn seed_000_basic_auth_form_defaults() {
        let cfg = parse_config(
            r#"
            [providers.didit]
            token_url = "https://apx.didit.me/auth/v2/token"
            client_id = "id"
            client_secret = "secret"
            "#,
        )
        .unwrap();
        let p = &cfg.providers["didit"];
        assert_eq!(p.client_auth, ClientAuth::Basic);
        assert_eq!(p.refresh, RequestTemplate::default_refresh());
        assert_eq!(p.reauth_errors, ["invalid_grant", "invalid_token"]);
    }

    #[test]
    fn seed_002_json_body_and_headers() {
        let cfg = parse_config(
            r#"
            [providers.partner]
            token_url = "https://partner.example/v1/auth/token"
            client_auth = "none"
            [providers.partner.refresh]
            encoding = "json"
            fields = { refreshToken = "{refresh_token}" }
            headers = { partnerId = 42, grantType = "refresh_token" }
            "#,
        )
        .unwrap();
        let p = &cfg.providers["partner"];
        assert_eq!(p.refresh.encoding, Encoding::Json);
        assert_eq!(
            p.refresh.fields,
            pairs(&[("refreshToken", "{refresh_token}")])
        );
        assert_eq!(
            p.refresh.headers,
            pairs(&[("grantType", "refresh_token"), ("partnerId", "42")])
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"
[daemon]
refresh_remaining = 2.0

[providers.a]
token_url = "http://example.com/token"
client_id = "x"
client_auth = "magic"

[providers.b]
token_url = "https://b.example/token"
client_scret = "typo"
"#;
        let p = problems(text);
        let keys: Vec<_> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert!(
            keys.contains(&(Some(3), "daemon.refresh_remaining")),
            "{p:?}"
        );
        assert!(keys.contains(&(Some(6), "providers.a.token_url")), "{p:?}");
        assert!(
            keys.contains(&(Some(8), "providers.a.client_auth")),
            "{p:?}"
        );
        let b = p
            .iter()
            .find(|p| p.key == "providers.b.client_scret")
            .expect("b reported");
        assert_eq!(b.line, Some(12));
        assert!(
            b.message.contains("unknown field `client_scret`"),
            "{}",
            b.message
        );
    }

    /// `(line, key)` of every problem, in order.
    fn where_(text: &str) -> Vec<(usize, String)> {
        problems(text)
            .into_iter()
            .map(|p| (p.line.expect("a line"), p.key))
            .collect()
    }

    #[test]
    fn every_bad_key_of_a_table_is_reported_at_its_own_line() {
        let text = "\
[daemon]
socket = \"/s\"
max_response_bytes = \"big\"
retry_max = -5
typo_one = 1
max_concurrent_refreshes = 0

[providers.a]
token_url = \"https://a.example/t\"
client_auth = \"none\"
max_response_bytes = 0
request_timeout = 0
clientid = \"x\"
keepalive = true
readers = \"uid:1\"
";
        assert_eq!(
            where_(text),
            [
                (3, "daemon.max_response_bytes".to_string()),
                (4, "daemon.retry_max".into()),
                (5, "daemon.typo_one".into()),
                (6, "daemon.max_concurrent_refreshes".into()),
                (11, "providers.a.max_response_bytes".into()),
                (12, "providers.a.request_timeout".into()),
                (13, "providers.a.clientid".into()),
                (14, "providers.a.keepalive".into()),
                (15, "providers.a.readers".into()),
            ]
        );
        let p = problems(text);
        let message = |key: &str| &p.iter().find(|p| p.key == key).unwrap().message;
        assert!(
            message("daemon.max_response_bytes").contains("invalid type: string \"big\""),
            "{p:?}"
        );
        assert!(message("daemon.retry_max").contains("negative"), "{p:?}");
        assert!(
            message("providers.a.clientid").contains("unknown field"),
            "{p:?}"
        );
        assert!(
            message("providers.a.max_response_bytes").contains("between 1024 and"),
            "{p:?}"
        );
        assert!(
            message("providers.a.request_timeout").contains("between 100ms and 10m"),
            "{p:?}"
        );
        // As check-config prints them.
        let shown = parse_config(text).unwrap_err().to_string();
        assert!(
            shown.contains("config:14: providers.a.keepalive: invalid type: boolean `true`, expected a duration"),
            "{shown}"
        );
    }

    #[test]
    fn sub_tables_and_credentials_report_their_keys_lines() {
        let text = "\
[providers.a]
token_url = \"https://a.example/t\"
client_auth = \"none\"
[providers.a.refresh]
encoding = \"xml\"
encodng = \"json\"
fields = { rt = \"{refresh_tokn}\", n = 1.5 }
[providers.a.response]
acess_token = \"at\"
[credentials.c]
readers = [\"uid:1\"]
reader = 1
[credentials.d]
";
        assert_eq!(
            where_(text),
            [
                (5, "providers.a.refresh.encoding".to_string()),
                (6, "providers.a.refresh.encodng".into()),
                (7, "providers.a.refresh.fields.n".into()),
                (7, "providers.a.refresh.fields.rt".into()),
                (7, "providers.a.refresh".into()),
                (9, "providers.a.response.acess_token".into()),
                (12, "credentials.c.reader".into()),
                (13, "credentials.d.readers".into()),
            ]
        );
    }

    #[test]
    fn on_invalid_grant_defaults_to_withhold_and_names_its_values() {
        let base = "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_auth = \"none\"\n";
        let cfg = parse_config(base).unwrap();
        assert_eq!(
            cfg.providers["a"].on_invalid_grant,
            OnInvalidGrant::Withhold
        );
        let cfg = parse_config(&format!(
            "{base}on_invalid_grant = \"serve_until_expiry\"\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.providers["a"].on_invalid_grant,
            OnInvalidGrant::ServeUntilExpiry
        );
        let p = problems(&format!("{base}on_invalid_grant = \"serve\"\n"));
        assert_eq!(p[0].key, "providers.a.on_invalid_grant", "{p:?}");
        assert!(
            p[0].message.contains("withhold or serve_until_expiry"),
            "{p:?}"
        );
    }

    #[test]
    fn every_numeric_limit_refuses_zero_and_absurd_values() {
        let daemon_zero = [
            "min_refresh_interval",
            "max_refresh_margin",
            "max_concurrent_refreshes",
            "retry_initial",
            "retry_max",
            "shutdown_timeout",
            "read_timeout",
            "default_lifetime",
            "request_timeout",
            "max_response_bytes",
        ];
        for key in daemon_zero {
            for value in ["0", "99999999999"] {
                let p = problems(&format!("[daemon]\n{key} = {value}\n"));
                assert_eq!(
                    (p.len(), p[0].line, p[0].key.as_str()),
                    (1, Some(2), format!("daemon.{key}").as_str()),
                    "{key} = {value}: {p:?}"
                );
                assert!(p[0].message.starts_with("must be between"), "{p:?}");
            }
        }
        let provider_zero = [
            "default_lifetime",
            "request_timeout",
            "max_response_bytes",
            "max_concurrent_refreshes",
            "keepalive",
        ];
        for key in provider_zero.into_iter().chain(["refresh_token_warning"]) {
            for value in ["0", "99999999999"] {
                if key == "refresh_token_warning" && value == "0" {
                    continue; // zero means: never warn
                }
                let text = format!(
                    "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_auth = \"none\"\n{key} = {value}\n"
                );
                let p = problems(&text);
                assert_eq!(
                    (p.len(), p[0].line, p[0].key.as_str()),
                    (1, Some(4), format!("providers.a.{key}").as_str()),
                    "{key} = {value}: {p:?}"
                );
            }
        }
        assert!(parse_config("[daemon]\nretry_initial = \"10m\"\nretry_max = \"5m\"\n").is_err());
        assert!(parse_config("[daemon]\nrefresh_remaining = nan\n").is_err());
        parse_config("[daemon]\nmax_response_bytes = 1024\nmax_concurrent_refreshes = 4096\nshutdown_timeout = \"100ms\"\n").unwrap();
    }

    #[test]
    fn unknown_top_level_key_and_syntax_errors_have_lines() {
        let p = problems("[daemon]\nsocket = \"/x\"\n[deamon]\n");
        assert_eq!(p[0].line, Some(3));
        let p = problems("[daemon\n");
        assert_eq!(p[0].line, Some(1));
    }

    #[test]
    fn basic_auth_without_secret_and_unknown_placeholder() {
        let p = problems(
            r#"
            [providers.a]
            token_url = "https://a.example/token"
            client_id = "x"
            [providers.a.refresh]
            fields = { rt = "{refresh_tokn}" }
            "#,
        );
        let msgs: Vec<_> = p.iter().map(|p| p.message.as_str()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("needs a client secret")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("unknown placeholder {refresh_tokn}")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("no field or header sends {refresh_token}")),
            "{msgs:?}"
        );
    }

    #[test]
    fn secret_sources_are_exclusive_and_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let cfg = parse_config(&format!(
            "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"x\"\nclient_secret_file = {:?}\n",
            file
        ))
        .unwrap();
        assert_eq!(
            cfg.providers["a"].client_secret.as_ref().unwrap().expose(),
            "from-file"
        );
        let p = problems(
            "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"x\"\nclient_secret = \"a\"\nclient_secret_env = \"B\"\n",
        );
        assert!(p[0].message.contains("one way only"));
        let p = problems(
            "[providers.a]\ntoken_url = \"https://a.example/t\"\nclient_id = \"x\"\nclient_secret_env = \"TOKEND_TEST_SURELY_UNSET\"\n",
        );
        assert!(p[0].message.contains("TOKEND_TEST_SURELY_UNSET is not set"));
    }

    #[test]
    fn readers_per_provider_and_per_credential() {
        let cfg = parse_config(
            r#"
            [daemon]
            admin_group = "root"
            socket_group = "0"
            [providers.a]
            token_url = "https://a.example/t"
            client_id = "x"
            client_secret = "s"
            readers = ["uid:1000", "group:root", "unit:backup.service"]
            [credentials.special]
            readers = ["user:root"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.daemon.admin_gid, Some(0));
        assert_eq!(cfg.daemon.socket_gid, Some(0));
        assert_eq!(
            **cfg.readers("other", "a").unwrap(),
            [
                Grant::Uid(1000),
                Grant::Gid(0),
                Grant::Unit("backup.service".into())
            ]
        );
        assert_eq!(**cfg.readers("special", "a").unwrap(), [Grant::Uid(0)]);
        assert!(cfg.readers("x", "unknown").is_none());
        let p = problems("[credentials.c]\nreaders = [\"user:surely-nobody-here\"]\n");
        assert_eq!(
            (p[0].line, p[0].key.as_str()),
            (Some(2), "credentials.c.readers")
        );
    }

    #[test]
    fn render_substitutes_and_omits_missing_values() {
        let lookup = |k: &str| (k == "refresh_token").then(|| "RT".to_string());
        assert_eq!(render("{refresh_token}", lookup).as_deref(), Some("RT"));
        assert_eq!(
            render("Bearer {refresh_token}!", lookup).as_deref(),
            Some("Bearer RT!")
        );
        assert_eq!(render("{scope}", lookup), None);
        assert_eq!(
            render("{literal} {", lookup).as_deref(),
            Some("{literal} {")
        );
    }

    #[test]
    fn durations_accept_seconds_and_text() {
        let cfg = parse_config("[daemon]\nretry_initial = 2\nretry_max = \"10m\"\n").unwrap();
        assert_eq!(cfg.daemon.retry_initial, Duration::from_secs(2));
        assert_eq!(cfg.daemon.retry_max, Duration::from_secs(600));
        let p = problems("[daemon]\nretry_max = \"soon\"\n");
        assert_eq!(p[0].key, "daemon.retry_max");
    }
}
