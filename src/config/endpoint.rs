//! Building the provider's request model from a `[providers.NAME]` table:
//! the token endpoint, the client's identity and authentication (checked
//! against what the method needs, [`ClientAuth::needs`]), and the request
//! templates over their defaults. The model and its vocabulary belong to
//! `provider`; this only reads the configuration into it.

use std::sync::Arc;

use url::Url;

use super::collect::{Collector, Scope};
use super::raw::{RawProvider, RawRequest, RawResponse};
use super::{bounds, defaults, secrets};
use crate::provider::{
    check_transport, unknown_placeholders, Alg, AssertionSettings, Audience, ClientAuth, Encoding,
    Login, Needs, Redirect, RedirectHost, RequestTemplate, SecretRotation, SigningKey,
    MIN_HMAC_SECRET_BYTES, PLACEHOLDERS, RESERVED_AUTHORIZE_PARAMS,
};
use crate::token::{ResponseFields, Secret};

/// Who the client is and how it proves it: the endpoint, the secret and the
/// client-auth method, checked against what the method needs.
pub(super) struct Client {
    pub(super) token_url: Option<Url>,
    pub(super) device_authorization_url: Option<Url>,
    pub(super) client_secret: Option<Secret>,
    pub(super) client_auth: ClientAuth,
    pub(super) client_assertion: Option<AssertionSettings>,
    pub(super) secret_rotation: Option<Arc<SecretRotation>>,
}

/// The settings only the signed client-auth methods read.
const ASSERTION_KEYS: [&str; 7] = [
    "client_assertion_key_file",
    "client_assertion_key_credential",
    "client_assertion_alg",
    "client_assertion_kid",
    "assertion_audience",
    "assertion_lifetime",
    "send_client_id",
];

/// `token_url`, the client secret and `client_auth`, checked together.
pub(super) fn client(c: &mut Collector<'_>, s: &Scope, raw: &RawProvider) -> Client {
    let token_url = match &raw.token_url {
        Some(url) => check_url(c, s, "token_url", url, raw.allow_insecure_http),
        // Discovered from the issuer's metadata at run time.
        None if raw.issuer.is_some() => None,
        None => {
            c.problem(s, "token_url", "missing; give the provider's token endpoint, e.g. token_url = \"https://login.example/oauth/token\", or its issuer to discover it, e.g. issuer = \"https://login.example\"");
            None
        }
    };
    let device_authorization_url = raw.device_authorization_url.as_deref().and_then(|url| {
        check_url(
            c,
            s,
            "device_authorization_url",
            url,
            raw.allow_insecure_http,
        )
    });
    let client_secrets = secrets::client_secrets(c, s, raw);
    let client_secret = client_secrets.first().cloned();
    let client_auth = match raw.client_auth.as_deref() {
        None => defaults::CLIENT_AUTH,
        Some(name) => ClientAuth::from_name(name).unwrap_or_else(|| {
            c.problem(
                s,
                "client_auth",
                format!("unknown value `{name}`; use {}", ClientAuth::known_names()),
            );
            defaults::CLIENT_AUTH
        }),
    };
    check_auth_inputs(c, s, client_auth, raw, &client_secret);
    let client_assertion = assertion_settings(c, s, raw, client_auth, &client_secrets);
    let secret_rotation =
        (client_secrets.len() > 1).then(|| Arc::new(SecretRotation::new(client_secrets)));
    Client {
        token_url,
        device_authorization_url,
        client_secret,
        client_auth,
        client_assertion,
        secret_rotation,
    }
}

/// How `private_key_jwt` and `client_secret_jwt` sign; `None` for the other
/// methods, which must not be given these settings.
fn assertion_settings(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawProvider,
    auth: ClientAuth,
    secrets: &[Secret],
) -> Option<AssertionSettings> {
    let given = [
        raw.client_assertion_key_file.is_some(),
        raw.client_assertion_key_credential.is_some(),
        raw.client_assertion_alg.is_some(),
        raw.client_assertion_kid.is_some(),
        raw.assertion_audience.is_some(),
        raw.assertion_lifetime.is_some(),
        raw.send_client_id.is_some(),
    ];
    if !auth.signs() {
        for (key, _) in ASSERTION_KEYS.iter().zip(given).filter(|(_, g)| *g) {
            c.problem(
                s,
                key,
                "only used with client_auth = \"private_key_jwt\" or \"client_secret_jwt\"",
            );
        }
        return None;
    }
    let key = if auth == ClientAuth::PrivateKeyJwt {
        signing_key(c, s, raw)
    } else {
        for (key, _) in ASSERTION_KEYS.iter().zip(given).take(2).filter(|(_, g)| *g) {
            c.problem(s, key, "client_secret_jwt signs with the client secret; remove this key, or use client_auth = \"private_key_jwt\"");
        }
        hmac_secrets_long_enough(c, s, secrets);
        None
    };
    let alg = assertion_alg(c, s, raw, auth, key.as_ref());
    let audience = match raw.assertion_audience.as_deref() {
        Some("") => {
            c.problem(s, "assertion_audience", "is empty; use \"token_endpoint\" (the default), \"issuer\" or the audience the provider documents");
            Audience::TokenEndpoint
        }
        Some(v) => Audience::from_setting(v),
        None => defaults::ASSERTION_AUDIENCE,
    };
    if raw.client_assertion_kid.as_deref() == Some("") {
        c.problem(
            s,
            "client_assertion_kid",
            "is empty; give the key id the provider knows the key by, or leave it out",
        );
    }
    Some(AssertionSettings {
        alg,
        key,
        kid: raw.client_assertion_kid.clone().filter(|k| !k.is_empty()),
        audience,
        lifetime: c.duration(
            s,
            "assertion_lifetime",
            raw.assertion_lifetime.as_ref(),
            defaults::ASSERTION_LIFETIME,
            bounds::ASSERTION_LIFETIME,
        ),
        send_client_id: raw.send_client_id.unwrap_or(defaults::SEND_CLIENT_ID),
    })
}

/// The private key of `private_key_jwt`, parsed.
fn signing_key(c: &mut Collector<'_>, s: &Scope, raw: &RawProvider) -> Option<SigningKey> {
    let (key, pem) = secrets::assertion_key(c, s, raw)?;
    match SigningKey::from_pem(pem.expose().as_bytes()) {
        Ok(k) => Some(k),
        Err(e) => {
            c.problem(s, &key, format!("the file {e}"));
            None
        }
    }
}

/// RFC 7518 §3.2: an HS256 key at least as long as the hash.
fn hmac_secrets_long_enough(c: &mut Collector<'_>, s: &Scope, secrets: &[Secret]) {
    for (i, secret) in secrets.iter().enumerate() {
        if secret.expose().len() < MIN_HMAC_SECRET_BYTES {
            c.problem(
                s,
                "client_secret",
                format!(
                    "client secret number {} is {} bytes; client_secret_jwt signs with HS256, whose key must be at least {MIN_HMAC_SECRET_BYTES} bytes (RFC 7518 §3.2): ask the provider for a longer secret, or use another client_auth",
                    i + 1,
                    secret.expose().len()
                ),
            );
        }
    }
}

/// `client_assertion_alg`, or the key's own, checked against the key.
fn assertion_alg(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawProvider,
    auth: ClientAuth,
    key: Option<&SigningKey>,
) -> Alg {
    let key_name = "client_assertion_alg";
    let default = match key {
        Some(k) => k.kind().default_alg(),
        None if auth == ClientAuth::ClientSecretJwt => Alg::Hs256,
        None => Alg::Rs256,
    };
    let Some(name) = raw.client_assertion_alg.as_deref() else {
        return default;
    };
    let Some(alg) = Alg::from_name(name) else {
        c.problem(
            s,
            key_name,
            format!("unknown algorithm `{name}`; use RS256, PS256, ES256 or EdDSA (private_key_jwt), or HS256 (client_secret_jwt)"),
        );
        return default;
    };
    match (auth, key) {
        (ClientAuth::ClientSecretJwt, _) if alg != Alg::Hs256 => c.problem(
            s,
            key_name,
            format!("client_secret_jwt signs with the client secret, so with HS256, not {name}; for {name} use client_auth = \"private_key_jwt\" and a private key"),
        ),
        (ClientAuth::PrivateKeyJwt, Some(k)) if !k.kind().signs(alg) => c.problem(
            s,
            key_name,
            format!("{name} cannot be signed with this {k:?}; use {} or another key", k.kind().algs()),
        ),
        (ClientAuth::PrivateKeyJwt, _) if alg == Alg::Hs256 => c.problem(
            s,
            key_name,
            "HS256 signs with the client secret: use client_auth = \"client_secret_jwt\" for it",
        ),
        _ => {}
    }
    alg
}

/// The response field names of `[providers.NAME.response]` over their
/// defaults.
pub(super) fn response_fields(raw: Option<(RawResponse, Scope)>) -> ResponseFields {
    let d = defaults::response();
    let Some((r, _)) = raw else { return d };
    ResponseFields {
        access_token: r.access_token.unwrap_or(d.access_token),
        refresh_token: r.refresh_token.unwrap_or(d.refresh_token),
        expires_in: r.expires_in.unwrap_or(d.expires_in),
        token_type: r.token_type.unwrap_or(d.token_type),
        scope: r.scope.unwrap_or(d.scope),
    }
}

/// The issuer (RFC 8414 §2: a URL with no query or fragment, https unless
/// `allow_insecure_http`) and the revocation endpoint, each if configured.
pub(super) fn discovery_keys(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawProvider,
) -> (Option<String>, Option<Url>) {
    let issuer = raw.issuer.as_ref().and_then(|issuer| {
        let url = check_url(c, s, "issuer", issuer, raw.allow_insecure_http)?;
        if url.query().is_some() || url.fragment().is_some() {
            c.problem(
                s,
                "issuer",
                "an issuer has no query or fragment (RFC 8414 §2); give the issuer exactly as the provider's metadata states it",
            );
            return None;
        }
        // Kept as written: the metadata's `issuer` must equal it exactly.
        Some(issuer.clone())
    });
    let revocation_url = raw
        .revocation_url
        .as_ref()
        .and_then(|url| check_url(c, s, "revocation_url", url, raw.allow_insecure_http));
    (issuer, revocation_url)
}

fn check_url(
    c: &mut Collector<'_>,
    s: &Scope,
    key: &str,
    raw: &str,
    allow_insecure_http: Option<bool>,
) -> Option<Url> {
    let url = match Url::parse(raw) {
        Ok(url) => url,
        Err(e) => {
            c.problem(s, key, format!("`{raw}` is not a URL ({e})"));
            return None;
        }
    };
    match check_transport(&url, allow_insecure_http == Some(true)) {
        Ok(()) => Some(url),
        Err(message) => {
            c.problem(s, key, message);
            None
        }
    }
}

/// `authorization_url`, the loopback redirect and the extra authorization
/// parameters of `[providers.NAME.authorize]`, for `tokend login`.
pub(super) fn login(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawProvider,
    authorize: Option<(toml::Table, Scope)>,
) -> (Option<Url>, Login) {
    let authorization_url = raw.authorization_url.as_deref().and_then(|url| {
        let url = check_url(c, s, "authorization_url", url, raw.allow_insecure_http)?;
        if url.fragment().is_some() {
            // RFC 6749 §3.1: the endpoint URI must not include a fragment.
            c.problem(s, "authorization_url", "must not have a #fragment");
            return None;
        }
        if raw.client_id.is_none() {
            c.problem(
                s,
                "client_id",
                "missing; logging in (authorization_url) sends the client id",
            );
        }
        Some(url)
    });
    let host = match raw.redirect_host.as_deref() {
        None => defaults::REDIRECT_HOST,
        Some(name) => RedirectHost::from_name(name).unwrap_or_else(|| {
            c.problem(
                s,
                "redirect_host",
                format!("`{name}` is not a loopback host; use 127.0.0.1, localhost or [::1] (RFC 8252 §7.3)"),
            );
            defaults::REDIRECT_HOST
        }),
    };
    let path = raw
        .redirect_path
        .clone()
        .unwrap_or_else(|| defaults::REDIRECT_PATH.to_string());
    if !redirect_path_ok(&path) {
        c.problem(
            s,
            "redirect_path",
            "must begin with '/' and hold only letters, digits and -._~/ (no query, no fragment)",
        );
    }
    let redirect = Redirect {
        host,
        port: raw.redirect_port.unwrap_or(defaults::REDIRECT_PORT),
        path,
    };
    let params = authorize.map_or_else(Vec::new, |(table, a)| {
        let mut out = Vec::new();
        for (k, v) in table {
            let key = a.key(&k);
            let line = a.line(&k);
            if RESERVED_AUTHORIZE_PARAMS.contains(&k.as_str()) {
                c.push(line, key, "tokend sends this parameter itself; remove it (scope has its own key under the provider)");
                continue;
            }
            match v {
                toml::Value::String(v) => out.push((k, v)),
                toml::Value::Integer(i) => out.push((k, i.to_string())),
                toml::Value::Boolean(b) => out.push((k, b.to_string())),
                other => c.push(line, key, format!("must be a string; found {}", other.type_str())),
            }
        }
        out
    });
    (authorization_url, Login { redirect, params })
}

/// A redirect path the redirect URI can hold as written, so that the URI
/// the CLI builds is the one the provider compares byte for byte.
fn redirect_path_ok(path: &str) -> bool {
    path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
}

/// Whether the configuration gives what `auth` needs ([`ClientAuth::needs`]).
fn check_auth_inputs(
    c: &mut Collector<'_>,
    s: &Scope,
    auth: ClientAuth,
    raw: &RawProvider,
    secret: &Option<Secret>,
) {
    let needs = auth.needs();
    if needs != Needs::Nothing && raw.client_id.is_none() {
        c.problem(s, "client_auth", "this client_auth needs client_id");
    }
    // A secret source already reported (unreadable file, unset variable)
    // says more than "missing" would.
    let secret_reported = c
        .problems
        .iter()
        .any(|p| p.key.starts_with(&s.key("client_secret")));
    if needs == Needs::IdAndSecret && secret.is_none() && !secret_reported {
        c.problem(
            s,
            "client_auth",
            "this client_auth needs a client secret (client_secret, client_secret_file, client_secret_env or client_secret_credential); for a public client use client_auth = \"none\"",
        );
    }
    let key_given =
        raw.client_assertion_key_file.is_some() || raw.client_assertion_key_credential.is_some();
    if needs == Needs::IdAndKey && !key_given {
        c.problem(
            s,
            "client_auth",
            "private_key_jwt needs a private key: give client_assertion_key_file (a PEM file, mode 0600) or client_assertion_key_credential",
        );
    }
}

/// A request table over its default, which must still send `{required}`
/// when the grant has a value of its own.
pub(super) fn request_template(
    c: &mut Collector<'_>,
    provider: &Scope,
    name: &str,
    raw: Option<(RawRequest, Scope)>,
    default: RequestTemplate,
    required: Option<&str>,
) -> RequestTemplate {
    let Some((raw, s)) = raw else { return default };
    let encoding = match raw.encoding.as_deref() {
        None => defaults::ENCODING,
        Some(name) => Encoding::from_name(name).unwrap_or_else(|| {
            c.problem(
                &s,
                "encoding",
                format!("unknown encoding `{name}`; use {}", Encoding::known_names()),
            );
            defaults::ENCODING
        }),
    };
    let template = RequestTemplate {
        encoding,
        fields: template_pairs(c, &s, "fields", raw.fields).unwrap_or(default.fields),
        headers: template_pairs(c, &s, "headers", raw.headers).unwrap_or(default.headers),
    };
    if let Some(required) = required.filter(|r| !template.mentions(r)) {
        c.push(
            s.line("fields"),
            provider.key(name),
            format!("no field or header sends {{{required}}}; add e.g. {required} = \"{{{required}}}\" to fields"),
        );
    }
    template
}

/// The `fields` or `headers` of a request table, each value a template
/// string (integers are taken as their digits).
fn template_pairs(
    c: &mut Collector<'_>,
    s: &Scope,
    part: &str,
    table: Option<toml::Table>,
) -> Option<Vec<(String, String)>> {
    let line = s.line(part);
    let mut out = Vec::new();
    for (k, v) in table? {
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
}

fn check_placeholders(c: &mut Collector<'_>, line: Option<usize>, key: &str, value: &str) {
    for name in unknown_placeholders(value) {
        c.push(
            line,
            key,
            format!(
                "unknown placeholder {{{name}}}; known: {}",
                PLACEHOLDERS.join(", ")
            ),
        );
    }
}
