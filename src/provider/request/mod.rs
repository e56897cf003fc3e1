//! The provider's request model: the token endpoint as configuration built
//! it ([`Endpoint`]), what is asked of it ([`TokenGrant`]), and [`prepare`],
//! which turns both into the exact headers and body sent (pure, so tests and
//! benchmarks check requests byte for byte). A new grant is one new variant
//! of [`TokenGrant`] with its arms in the `impl` below.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::assertion::{self, AssertionError, AssertionSettings, AssertionStamp};
use super::auth::{ClientAuth, Parts, SignedAssertion};
use super::authorize::Login;
use super::rotation::SecretRotation;
use super::template::{render, Encoding, RequestTemplate};
use crate::token::{fingerprint, ResponseFields, Secret};

/// Body fields a client_credentials grant's extra `params` may not set:
/// the grant and the client's authentication are tokend's to send, and
/// `scope` has its own setting.
pub(crate) const RESERVED_PARAMS: [&str; 6] = [
    "grant_type",
    "scope",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
];

/// One token endpoint and how to talk to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The provider's name, for log lines.
    pub(crate) name: String,
    /// The token endpoint. For a provider configured by `issuer` alone,
    /// the discovered one: a provider whose endpoints are not known yet
    /// never reaches the refresher (see `discovery`).
    pub token_url: Url,
    /// The authorization endpoint, for `tokend login`.
    pub(crate) authorization_url: Option<Url>,
    /// `tokend login`'s redirect and extra authorization parameters.
    pub(crate) login: Login,
    /// The device authorization endpoint (RFC 8628 §3.1), if the provider
    /// offers the device grant.
    pub(crate) device_authorization_url: Option<Url>,
    /// The issuer (`issuer = "https://..."`), whose metadata (RFC 8414,
    /// OpenID Connect Discovery) fills in the endpoints not configured.
    pub(crate) issuer: Option<String>,
    /// The revocation endpoint (RFC 7009), configured or discovered.
    pub(crate) revocation_url: Option<Url>,
    /// The server metadata last discovered from `issuer`, if any.
    pub(crate) discovered: Option<std::sync::Arc<super::Metadata>>,
    /// Plain http is allowed to any host (`allow_insecure_http`), for
    /// discovered endpoints as for configured ones.
    pub(crate) allow_insecure_http: bool,
    /// OAuth client id, if the provider uses one.
    pub(crate) client_id: Option<String>,
    /// OAuth client secret (password), resolved from wherever it was given.
    pub(crate) client_secret: Option<Secret>,
    /// How the client authenticates to the token endpoint.
    pub(crate) client_auth: ClientAuth,
    /// How client assertions are signed (`private_key_jwt`,
    /// `client_secret_jwt`); `None` for the other methods.
    pub(crate) client_assertion: Option<AssertionSettings>,
    /// Every client secret when several are given (the first is
    /// `client_secret`), and which one worked last; shared by every clone.
    pub(crate) secret_rotation: Option<Arc<SecretRotation>>,
    /// Scope to request on refresh, if any (`{scope}` in templates).
    pub(crate) scope: Option<String>,
    /// The refresh request.
    pub(crate) refresh: RequestTemplate,
    /// The authorization-code exchange request.
    pub(crate) exchange: RequestTemplate,
    /// The client-credentials request.
    pub(crate) client_credentials: RequestTemplate,
    /// The device-code token request (RFC 8628 §3.4).
    pub(crate) device: RequestTemplate,
    /// Names of the response fields.
    pub(crate) response: ResponseFields,
    /// OAuth `error` codes meaning the grant is dead and a human must log in again.
    pub(crate) reauth_errors: Vec<String>,
    /// Timeout for one token request, connect to last byte.
    pub request_timeout: Duration,
    /// Largest response body accepted.
    pub(crate) max_response_bytes: usize,
    /// Its tokens are bound to a per-credential key with DPoP (RFC 9449):
    /// token requests carry a proof, and `token_type` must be `DPoP`.
    pub(crate) dpop: bool,
}

impl Endpoint {
    /// Every client secret this endpoint may send, as text, to scrub from
    /// what a provider answers.
    pub(crate) fn client_secret_values(&self) -> Vec<&str> {
        let mut secrets: Vec<&str> = self.client_secret.iter().map(Secret::expose).collect();
        if let Some(rotation) = &self.secret_rotation {
            secrets.extend(rotation.all().iter().map(Secret::expose));
        }
        secrets
    }

    /// The client secret to send first: with several, the one that worked
    /// last (see `SecretRotation`).
    pub(crate) fn current_secret(&self) -> Option<&Secret> {
        match &self.secret_rotation {
            Some(rotation) => rotation.order().next().map(|(_, s)| s),
            None => self.client_secret.as_ref(),
        }
    }

    /// How the client authenticates, as `tokend check-config` shows it: the
    /// method, how its assertions are signed, how many client secrets it
    /// rotates through. Never a secret, only the key's public fingerprint.
    pub(crate) fn describe_auth(&self) -> String {
        let mut out = format!("client_auth {}", self.client_auth.name());
        if let Some(a) = self
            .client_assertion
            .as_ref()
            .filter(|_| self.client_auth.signs())
        {
            out.push_str(&format!(" ({}", a.alg.name()));
            if let Some(key) = &a.key {
                out.push_str(&format!(", {key:?}"));
            }
            if let Some(kid) = &a.kid {
                out.push_str(&format!(", kid {kid}"));
            }
            out.push_str(&format!(
                ", audience {}, lifetime {}s, client_id {})",
                a.audience.describe(),
                a.lifetime.as_secs(),
                if a.send_client_id { "sent" } else { "not sent" }
            ));
        }
        if let Some(r) = &self.secret_rotation {
            out.push_str(&format!(", {} client secrets tried in turn", r.len()));
        }
        out
    }
}

/// What is being asked of the token endpoint.
#[derive(Debug, Clone)]
pub enum TokenGrant {
    /// `grant_type=refresh_token` (RFC 6749 §6).
    Refresh {
        /// The refresh token on record.
        refresh_token: Secret,
    },
    /// `grant_type=authorization_code` (RFC 6749 §4.1.3, RFC 7636 §4.5).
    Exchange {
        /// The authorization code.
        code: Secret,
        /// The redirect URI used in the authorization request.
        redirect_uri: String,
        /// The PKCE verifier, if the authorization used PKCE.
        code_verifier: Option<Secret>,
    },
    /// `grant_type=client_credentials` (RFC 6749 §4.4.2).
    ClientCredentials {
        /// Scope to request (`{scope}`), overriding the provider's.
        scope: Option<String>,
        /// Extra body fields (`audience`, `resource`, ...), sent after the
        /// template's own, as given.
        params: Vec<(String, String)>,
    },
    /// `grant_type=urn:ietf:params:oauth:grant-type:device_code` (RFC 8628 §3.4).
    DeviceCode {
        /// The device code of the device authorization response.
        device_code: Secret,
    },
}

impl TokenGrant {
    /// The request template this grant is sent with.
    fn template<'a>(&self, e: &'a Endpoint) -> &'a RequestTemplate {
        match self {
            TokenGrant::Refresh { .. } => &e.refresh,
            TokenGrant::Exchange { .. } => &e.exchange,
            TokenGrant::ClientCredentials { .. } => &e.client_credentials,
            TokenGrant::DeviceCode { .. } => &e.device,
        }
    }

    /// The scope this grant asks for itself, over the provider's.
    fn scope(&self) -> Option<&str> {
        match self {
            TokenGrant::ClientCredentials { scope, .. } => scope.as_deref(),
            TokenGrant::Refresh { .. }
            | TokenGrant::Exchange { .. }
            | TokenGrant::DeviceCode { .. } => None,
        }
    }

    /// Body fields this grant adds to its template's.
    fn params(&self) -> &[(String, String)] {
        match self {
            TokenGrant::ClientCredentials { params, .. } => params,
            TokenGrant::Refresh { .. }
            | TokenGrant::Exchange { .. }
            | TokenGrant::DeviceCode { .. } => &[],
        }
    }

    /// The value of a grant's own placeholder, if this grant has it.
    fn value(&self, placeholder: &str) -> Option<String> {
        match (placeholder, self) {
            ("refresh_token", TokenGrant::Refresh { refresh_token }) => {
                Some(refresh_token.expose().to_string())
            }
            ("code", TokenGrant::Exchange { code, .. }) => Some(code.expose().to_string()),
            ("redirect_uri", TokenGrant::Exchange { redirect_uri, .. }) => {
                Some(redirect_uri.clone())
            }
            ("code_verifier", TokenGrant::Exchange { code_verifier, .. }) => {
                code_verifier.as_ref().map(|v| v.expose().to_string())
            }
            ("device_code", TokenGrant::DeviceCode { device_code }) => {
                Some(device_code.expose().to_string())
            }
            _ => None,
        }
    }

    /// The secrets this grant carries, to scrub from anything logged.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match self {
            TokenGrant::Refresh { refresh_token } => vec![refresh_token.expose()],
            TokenGrant::Exchange {
                code,
                code_verifier,
                ..
            } => {
                let mut v = vec![code.expose()];
                v.extend(code_verifier.as_ref().map(Secret::expose));
                v
            }
            TokenGrant::DeviceCode { device_code } => vec![device_code.expose()],
            // The client secret is the endpoint's, scrubbed with it.
            TokenGrant::ClientCredentials { .. } => Vec::new(),
        }
    }
}

/// A request ready to send: useful on its own for tests and `--dry-run`s.
/// Its `Debug` prints fingerprints of the header values and the body, which
/// hold the refresh token, code or client secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedRequest {
    /// Headers in order (Authorization included).
    pub headers: Vec<(String, String)>,
    /// Content-Type of the body.
    pub content_type: &'static str,
    /// The encoded body.
    pub body: String,
    /// The signed client assertion in the body, if any, to scrub from
    /// whatever the provider answers.
    pub(crate) client_assertion: Option<Secret>,
}

impl fmt::Debug for PreparedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), fingerprint(value)))
            .collect();
        f.debug_struct("PreparedRequest")
            .field("headers", &headers)
            .field("content_type", &self.content_type)
            .field(
                "body",
                &format_args!("{} bytes, {}", self.body.len(), fingerprint(&self.body)),
            )
            .finish()
    }
}

/// Builds the request for `grant` from the endpoint's description; a client
/// assertion is signed at `stamp`.
pub fn prepare(
    e: &Endpoint,
    grant: &TokenGrant,
    stamp: &AssertionStamp,
) -> Result<PreparedRequest, AssertionError> {
    prepare_with_secret(e, grant, stamp, e.client_secret.as_ref())
}

/// [`prepare`] with one of the provider's client secrets (rotation).
pub(crate) fn prepare_with_secret(
    e: &Endpoint,
    grant: &TokenGrant,
    stamp: &AssertionStamp,
    secret: Option<&Secret>,
) -> Result<PreparedRequest, AssertionError> {
    build(e, grant.template(e), Some(grant), stamp, secret)
}

/// Builds the device authorization request (RFC 8628 §3.1): the provider's
/// scope and the client's authentication, as for a token request.
pub(crate) fn prepare_device_authorization(
    e: &Endpoint,
    stamp: &AssertionStamp,
    secret: Option<&Secret>,
) -> Result<PreparedRequest, AssertionError> {
    build(
        e,
        &RequestTemplate::device_authorization(),
        None,
        stamp,
        secret,
    )
}

/// Renders `template` with the endpoint's values and `grant`'s own, then
/// adds the client's authentication (`secret`, or an assertion signed at
/// `stamp`).
fn build(
    e: &Endpoint,
    template: &RequestTemplate,
    grant: Option<&TokenGrant>,
    stamp: &AssertionStamp,
    secret: Option<&Secret>,
) -> Result<PreparedRequest, AssertionError> {
    let lookup = |key: &str| -> Option<String> {
        match key {
            "client_id" => e.client_id.clone(),
            "client_secret" => secret.map(|s| s.expose().to_string()),
            "scope" => grant
                .and_then(TokenGrant::scope)
                .map(str::to_string)
                .or_else(|| e.scope.clone()),
            _ => grant.and_then(|g| g.value(key)),
        }
    };
    let rendered = |items: &[(String, String)]| -> Vec<(String, String)> {
        items
            .iter()
            .filter_map(|(k, v)| render(v, lookup).map(|v| (k.clone(), v)))
            .collect()
    };
    let mut parts = Parts {
        headers: rendered(&template.headers),
        fields: rendered(&template.fields),
    };
    parts
        .fields
        .extend(grant.map_or(&[][..], TokenGrant::params).iter().cloned());
    authenticate(e, template, parts, stamp, secret)
}

/// Adds the client's authentication to a request's `parts` (`secret`, or an
/// assertion signed at `stamp`) and encodes its body as `template` says.
pub(super) fn authenticate(
    e: &Endpoint,
    template: &RequestTemplate,
    mut parts: Parts,
    stamp: &AssertionStamp,
    secret: Option<&Secret>,
) -> Result<PreparedRequest, AssertionError> {
    let signed = match (&e.client_assertion, e.client_auth.signs()) {
        (Some(settings), true) => Some((
            assertion::sign(e, settings, secret.map(Secret::expose), stamp)?,
            settings.send_client_id,
        )),
        (None, true) => return Err(AssertionError::NoKey),
        (_, false) => None,
    };
    e.client_auth.apply(
        e.client_id.as_deref(),
        secret.map(Secret::expose),
        signed
            .as_ref()
            .map(|(jwt, with_client_id)| SignedAssertion {
                jwt,
                with_client_id: *with_client_id,
            }),
        template,
        &mut parts,
    );
    Ok(PreparedRequest {
        headers: parts.headers,
        content_type: template.encoding.content_type(),
        body: encode(template.encoding, parts.fields),
        client_assertion: signed.map(|(jwt, _)| Secret::new(jwt)),
    })
}

/// The body of `fields` in `encoding`.
fn encode(encoding: Encoding, fields: Vec<(String, String)>) -> String {
    match encoding {
        Encoding::Form => url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&fields)
            .finish(),
        Encoding::Json => {
            let obj: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            Value::Object(obj).to_string()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
