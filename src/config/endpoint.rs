//! Building the provider's request model from a `[providers.NAME]` table:
//! the token endpoint, the client's identity and authentication (checked
//! against what the method needs, [`ClientAuth::needs`]), and the request
//! templates over their defaults. The model and its vocabulary belong to
//! `provider`; this only reads the configuration into it.

use url::Url;

use super::collect::{Collector, Scope};
use super::raw::{RawProvider, RawRequest, RawResponse};
use super::{defaults, secrets};
use crate::provider::{
    check_transport, unknown_placeholders, ClientAuth, Encoding, Needs, RequestTemplate,
    PLACEHOLDERS,
};
use crate::token::{ResponseFields, Secret};

/// Who the client is and how it proves it: the endpoint, the secret and the
/// client-auth method, checked against what the method needs.
pub(super) struct Client {
    pub(super) token_url: Option<Url>,
    pub(super) client_secret: Option<Secret>,
    pub(super) client_auth: ClientAuth,
}

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
    let client_secret = secrets::client_secret(c, s, raw);
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
    check_auth_inputs(c, s, client_auth, &raw.client_id, &client_secret);
    Client {
        token_url,
        client_secret,
        client_auth,
    }
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

/// Whether the configuration gives what `auth` needs ([`ClientAuth::needs`]).
fn check_auth_inputs(
    c: &mut Collector<'_>,
    s: &Scope,
    auth: ClientAuth,
    client_id: &Option<String>,
    secret: &Option<Secret>,
) {
    let needs = auth.needs();
    if needs != Needs::Nothing && client_id.is_none() {
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
