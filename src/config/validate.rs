//! Validation: the raw tables into a [`Config`] the daemon can trust. Every
//! problem is collected (with its key's line) rather than stopping at the
//! first; defaults come from `defaults`, ranges from `bounds`, secrets from
//! `secrets`, and each provider's [`Endpoint`] is built by `endpoint`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use toml::de::DeTable;

use super::collect::{Collector, Scope};
use super::raw::{RawCredential, RawDaemon, RawProvider, RawRequest, RawResponse, PROVIDER_TABLES};
use super::{bounds, credentials, database, defaults, endpoint, hooks, secrets};
use super::{Config, DaemonConfig, Discovery, OnInvalidGrant, ProviderConfig};
use crate::access::Grant;
use crate::provider::{Endpoint, RequestTemplate};
use crate::token::RefreshTiming;

/// A `[providers.NAME]` or `[credentials.NAME]` table: its name, dotted
/// path, line and keys.
type Entry<'r, 'i> = (String, String, usize, &'r DeTable<'i>);

/// The top-level tables of a configuration, each with where it is.
#[derive(Default)]
pub(super) struct Sections<'r, 'i> {
    daemon: Option<(usize, &'r DeTable<'i>)>,
    providers: Vec<Entry<'r, 'i>>,
    credentials: Vec<Entry<'r, 'i>>,
    hooks: Vec<(usize, &'r DeTable<'i>)>,
}

/// Sorts the root table's entries into [`Sections`]; anything else is a
/// problem.
pub(super) fn sections<'r, 'i>(c: &mut Collector<'_>, root: &'r DeTable<'i>) -> Sections<'r, 'i> {
    let mut out = Sections::default();
    for (key, value) in root {
        let line = c.line_of(key.span().start);
        let section = key.get_ref().as_ref();
        let tables = match section {
            "daemon" => {
                out.daemon = c.subtable(line, section, value).map(|t| (line, t));
                continue;
            }
            "hooks" => {
                match value.get_ref().as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            let line = c.line_of(item.span().start);
                            if let Some(t) = c.subtable(line, &format!("hooks[{i}]"), item) {
                                out.hooks.push((line, t));
                            }
                        }
                    }
                    None => c.push(
                        Some(line),
                        "hooks",
                        "must be an array of tables: write each hook as [[hooks]]",
                    ),
                }
                continue;
            }
            "providers" => &mut out.providers,
            "credentials" => &mut out.credentials,
            other => {
                c.push(
                    Some(line),
                    other,
                    "unknown table; the tables are daemon, providers.NAME, credentials.NAME and [[hooks]]",
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
    out
}

/// Validates every section; the configuration, if no problem was found.
pub(super) fn config(c: &mut Collector<'_>, sections: Sections<'_, '_>) -> Option<Config> {
    let (daemon, defaults) = validate_daemon(c, sections.daemon);
    let mut providers = BTreeMap::new();
    for (name, path, line, table) in &sections.providers {
        let (name, line, table) = (name.clone(), *line, *table);
        let (raw, scope, sub) = provider_tables(c, path, line, table);
        if let Some(p) = validate_provider(c, &name, &scope, raw, sub, &defaults) {
            providers.insert(name, Arc::new(p));
        }
    }
    let names: Vec<String> = sections.providers.iter().map(|e| e.0.clone()).collect();
    let tables = sections
        .credentials
        .into_iter()
        .map(|(name, path, line, table)| {
            let (raw, scope) = c.table::<RawCredential>(&path, line, table);
            credentials::Table { name, scope, raw }
        })
        .collect();
    let credentials = credentials::validate(c, tables, &providers, &names);
    let hooks = hooks::validate(c, &sections.hooks);
    c.problems.is_empty().then_some(Config {
        daemon,
        providers,
        credentials: credentials.readers,
        declared: credentials.declared,
        git_hosts: credentials.git,
        sinks: credentials.sinks,
        pending: BTreeMap::new(),
        hooks,
    })
}

/// Reads a provider's own keys and, each on its own, its sub-tables
/// ([`PROVIDER_TABLES`]), so that their keys have their own lines.
fn provider_tables(
    c: &mut Collector<'_>,
    path: &str,
    line: usize,
    table: &DeTable<'_>,
) -> (RawProvider, Scope, Subtables) {
    let (own, nested): (DeTable<'_>, DeTable<'_>) = table
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| !PROVIDER_TABLES.contains(&k.get_ref().as_ref()));
    let (raw, scope) = c.table::<RawProvider>(path, line, &own);
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
            "client_credentials" => sub.client_credentials = Some(c.table(&path, line, table)),
            "authorize" => sub.authorize = Some(c.table(&path, line, table)),
            "device" => sub.device = Some(c.table(&path, line, table)),
            _ => sub.response = Some(c.table(&path, line, table)),
        }
    }
    (raw, scope, sub)
}

/// A provider's sub-tables, each with where its keys are.
#[derive(Default)]
struct Subtables {
    refresh: Option<(RawRequest, Scope)>,
    exchange: Option<(RawRequest, Scope)>,
    client_credentials: Option<(RawRequest, Scope)>,
    device: Option<(RawRequest, Scope)>,
    response: Option<(RawResponse, Scope)>,
    authorize: Option<(toml::Table, Scope)>,
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
        None => (RawDaemon::default(), Scope::absent("daemon")),
    };
    let timing = refresh_timing(c, &s, &raw);
    let max_concurrent_refreshes = c.count(
        &s,
        "max_concurrent_refreshes",
        raw.max_concurrent_refreshes,
        defaults::MAX_CONCURRENT_REFRESHES,
        bounds::CONCURRENCY,
    );
    let (retry_initial, retry_max) = retry_delays(c, &s, &raw);
    let daemon = DaemonConfig {
        encryption_key: secrets::encryption_key_path(c, &s, &raw),
        admin_gid: c.group(&s, "admin_group", raw.admin_group.as_deref()),
        socket_gid: c.group(&s, "socket_group", raw.socket_group.as_deref()),
        socket: raw.socket.clone(),
        database: database::location(c, &s, &raw),
        timing,
        max_concurrent_refreshes: max_concurrent_refreshes.max(1),
        retry_initial,
        retry_max,
        shutdown_timeout: c.duration(
            &s,
            "shutdown_timeout",
            raw.shutdown_timeout.as_ref(),
            defaults::SHUTDOWN_TIMEOUT,
            bounds::SHUTDOWN_TIMEOUT,
        ),
        read_timeout: c.duration(
            &s,
            "read_timeout",
            raw.read_timeout.as_ref(),
            defaults::READ_TIMEOUT,
            bounds::READ_TIMEOUT,
        ),
        metrics_credential_limit: c.count(
            &s,
            "metrics_credential_limit",
            raw.metrics_credential_limit,
            defaults::METRICS_CREDENTIAL_LIMIT,
            bounds::METRICS_CREDENTIAL_LIMIT,
        ),
        metrics_listen: metrics_listen(c, &s, raw.metrics_listen.as_deref()),
    };
    (daemon, provider_defaults(c, &s, &raw))
}

/// `metrics_listen`: a loopback address and port only, since the listener
/// has no way to tell who connects.
fn metrics_listen(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: Option<&str>,
) -> Option<std::net::SocketAddr> {
    let raw = raw?;
    match raw.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => Some(addr),
        Ok(_) => {
            c.problem(
                s,
                "metrics_listen",
                format!("`{raw}` is not a loopback address: use 127.0.0.1:PORT or [::1]:PORT (the listener cannot tell who connects; scrape the socket from elsewhere)"),
            );
            None
        }
        Err(_) => {
            c.problem(
                s,
                "metrics_listen",
                format!("`{raw}` is not an address and port such as 127.0.0.1:9464 or [::1]:9464"),
            );
            None
        }
    }
}

/// `refresh_remaining`, `refresh_jitter`, `min_refresh_interval` and
/// `max_refresh_margin`.
fn refresh_timing(c: &mut Collector<'_>, s: &Scope, raw: &RawDaemon) -> RefreshTiming {
    let base = defaults::timing();
    let remaining = raw.refresh_remaining.unwrap_or(base.remaining_fraction);
    let remaining_ok = bounds::REFRESH_REMAINING.contains(&remaining);
    if !remaining_ok {
        c.problem(
            s,
            "refresh_remaining",
            "must be between 0.05 and 0.9 (the fraction of a token's lifetime left when it is refreshed)",
        );
    }
    let jitter = raw.refresh_jitter.unwrap_or(base.jitter_fraction);
    if !bounds::REFRESH_JITTER.contains(&jitter)
        || (remaining_ok && remaining + jitter > bounds::REMAINING_PLUS_JITTER)
    {
        c.problem(
            s,
            "refresh_jitter",
            "must be between 0 and 0.5, and refresh_remaining + refresh_jitter at most 0.95",
        );
    }
    RefreshTiming {
        remaining_fraction: remaining,
        jitter_fraction: jitter,
        min_interval: c.duration(
            s,
            "min_refresh_interval",
            raw.min_refresh_interval.as_ref(),
            base.min_interval,
            bounds::MIN_REFRESH_INTERVAL,
        ),
        max_margin: c.duration(
            s,
            "max_refresh_margin",
            raw.max_refresh_margin.as_ref(),
            base.max_margin,
            bounds::MAX_REFRESH_MARGIN,
        ),
    }
}

/// `retry_initial` and `retry_max`, the first not above the second.
fn retry_delays(c: &mut Collector<'_>, s: &Scope, raw: &RawDaemon) -> (Duration, Duration) {
    let before = c.problems.len();
    let initial = c.duration(
        s,
        "retry_initial",
        raw.retry_initial.as_ref(),
        defaults::RETRY_INITIAL,
        bounds::RETRY_INITIAL,
    );
    let max = c.duration(
        s,
        "retry_max",
        raw.retry_max.as_ref(),
        defaults::RETRY_MAX,
        bounds::RETRY_MAX,
    );
    if c.problems.len() == before && max < initial {
        c.problem(s, "retry_initial", "must not be above retry_max");
    }
    (initial, max)
}

/// The `[daemon]` settings that are defaults for every provider.
fn provider_defaults(c: &mut Collector<'_>, s: &Scope, raw: &RawDaemon) -> ProviderDefaults {
    ProviderDefaults {
        default_lifetime: c.duration(
            s,
            "default_lifetime",
            raw.default_lifetime.as_ref(),
            defaults::DEFAULT_LIFETIME,
            bounds::LIFETIME,
        ),
        request_timeout: c.duration(
            s,
            "request_timeout",
            raw.request_timeout.as_ref(),
            defaults::REQUEST_TIMEOUT,
            bounds::REQUEST_TIMEOUT,
        ),
        max_response_bytes: c.count(
            s,
            "max_response_bytes",
            raw.max_response_bytes,
            defaults::MAX_RESPONSE_BYTES,
            bounds::RESPONSE_BYTES,
        ),
    }
}

/// A provider's settings that are durations.
struct Durations {
    default_lifetime: Duration,
    request_timeout: Duration,
    keepalive: Option<Duration>,
    refresh_token_warning: Duration,
}

fn validate_provider(
    c: &mut Collector<'_>,
    name: &str,
    s: &Scope,
    raw: RawProvider,
    mut sub: Subtables,
    defaults: &ProviderDefaults,
) -> Option<ProviderConfig> {
    let before = c.problems.len();
    check_name(c, s, name);
    let client = endpoint::client(c, s, &raw);
    let (issuer, revocation_url) = endpoint::discovery_keys(c, s, &raw);
    let discovery_refresh = c.duration(
        s,
        "discovery_refresh",
        raw.discovery_refresh.as_ref(),
        defaults::DISCOVERY_REFRESH,
        bounds::DISCOVERY_REFRESH,
    );
    let (refresh, exchange, client_credentials) = request_templates(c, s, &mut sub);
    let device = endpoint::request_template(
        c,
        s,
        "device",
        sub.device.take(),
        defaults::device(),
        Some("device_code"),
    );
    let response = endpoint::response_fields(sub.response);
    let (authorization_url, login) = endpoint::login(c, s, &raw, sub.authorize.take());
    let durations = provider_durations(c, s, &raw, defaults);
    let on_invalid_grant = on_invalid_grant(c, s, raw.on_invalid_grant.as_deref());
    let readers: Arc<[Grant]> =
        Arc::from(c.grants(s, "readers", raw.readers.as_deref().unwrap_or_default()));
    let (max_response_bytes, max_concurrent_refreshes) = provider_counts(c, s, &raw, defaults);
    if c.problems.len() > before {
        return None;
    }
    let discovery = issuer.as_ref().map(|_| Discovery {
        refresh: discovery_refresh,
        token_url_configured: client.token_url.is_some(),
    });
    // Until discovery says otherwise, a provider given by its issuer alone
    // stands with the issuer as its token URL; such a provider is held back
    // from the refresher until its metadata is known (`discovery`), so
    // nothing is ever sent there.
    let token_url = match (client.token_url, &issuer) {
        (Some(url), _) => url,
        (None, Some(issuer)) => url::Url::parse(issuer).ok()?,
        (None, None) => return None,
    };
    let endpoint = Endpoint {
        name: name.to_string(),
        token_url,
        authorization_url,
        login,
        device_authorization_url: client.device_authorization_url,
        issuer,
        revocation_url,
        discovered: None,
        allow_insecure_http: raw.allow_insecure_http == Some(true),
        client_id: raw.client_id,
        client_secret: client.client_secret,
        client_auth: client.client_auth,
        client_assertion: client.client_assertion,
        secret_rotation: client.secret_rotation,
        scope: raw.scope,
        refresh,
        exchange,
        client_credentials,
        device,
        response,
        reauth_errors: raw
            .reauth_errors
            .unwrap_or_else(|| defaults::REAUTH_ERRORS.map(String::from).to_vec()),
        request_timeout: durations.request_timeout,
        max_response_bytes,
        dpop: raw.dpop.unwrap_or(defaults::DPOP),
    };
    Some(ProviderConfig {
        name: name.to_string(),
        endpoint,
        inline_secret: raw.client_secret.is_some(),
        default_lifetime: durations.default_lifetime,
        max_concurrent_refreshes,
        keepalive: durations.keepalive,
        refresh_token_warning: durations.refresh_token_warning,
        on_invalid_grant,
        readers,
        revoke_on_remove: raw.revoke_on_remove.unwrap_or(defaults::REVOKE_ON_REMOVE),
        discovery,
    })
}

/// The provider's refresh, exchange and client_credentials requests: each
/// its default unless the provider gives its table.
fn request_templates(
    c: &mut Collector<'_>,
    s: &Scope,
    sub: &mut Subtables,
) -> (RequestTemplate, RequestTemplate, RequestTemplate) {
    let refresh = endpoint::request_template(
        c,
        s,
        "refresh",
        sub.refresh.take(),
        defaults::refresh(),
        Some("refresh_token"),
    );
    let exchange = endpoint::request_template(
        c,
        s,
        "exchange",
        sub.exchange.take(),
        defaults::exchange(),
        Some("code"),
    );
    // Its grant_type is a literal, so no placeholder is required.
    let client_credentials = endpoint::request_template(
        c,
        s,
        "client_credentials",
        sub.client_credentials.take(),
        defaults::client_credentials(),
        None,
    );
    (refresh, exchange, client_credentials)
}

fn check_name(c: &mut Collector<'_>, s: &Scope, name: &str) {
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
}

fn provider_durations(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawProvider,
    defaults: &ProviderDefaults,
) -> Durations {
    Durations {
        default_lifetime: c.duration(
            s,
            "default_lifetime",
            raw.default_lifetime.as_ref(),
            defaults.default_lifetime,
            bounds::LIFETIME,
        ),
        request_timeout: c.duration(
            s,
            "request_timeout",
            raw.request_timeout.as_ref(),
            defaults.request_timeout,
            bounds::REQUEST_TIMEOUT,
        ),
        keepalive: raw
            .keepalive
            .as_ref()
            .map(|k| c.duration(s, "keepalive", Some(k), Duration::ZERO, bounds::KEEPALIVE)),
        refresh_token_warning: c.duration(
            s,
            "refresh_token_warning",
            raw.refresh_token_warning.as_ref(),
            defaults::REFRESH_TOKEN_WARNING,
            bounds::REFRESH_TOKEN_WARNING,
        ),
    }
}

fn on_invalid_grant(c: &mut Collector<'_>, s: &Scope, raw: Option<&str>) -> OnInvalidGrant {
    match raw {
        None => defaults::ON_INVALID_GRANT,
        Some("withhold") => OnInvalidGrant::Withhold,
        Some("serve_until_expiry") => OnInvalidGrant::ServeUntilExpiry,
        Some(other) => {
            c.problem(
                s,
                "on_invalid_grant",
                format!("unknown value `{other}`; use withhold or serve_until_expiry"),
            );
            defaults::ON_INVALID_GRANT
        }
    }
}

/// A provider's `max_response_bytes` and `max_concurrent_refreshes`.
fn provider_counts(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawProvider,
    defaults: &ProviderDefaults,
) -> (usize, usize) {
    let bytes = c.count(
        s,
        "max_response_bytes",
        raw.max_response_bytes,
        defaults.max_response_bytes,
        bounds::RESPONSE_BYTES,
    );
    let concurrency = c.count(
        s,
        "max_concurrent_refreshes",
        raw.max_concurrent_refreshes,
        defaults::PROVIDER_MAX_CONCURRENT_REFRESHES,
        bounds::CONCURRENCY,
    );
    (bytes, concurrency)
}
