//! The token-endpoint client. Turns a provider's declarative description
//! ([`Endpoint`], built by configuration) into HTTP requests (refresh and
//! authorization-code exchange), sends them, and classifies every outcome
//! as success, needs re-authorization, provider misconfigured, or
//! transient. Knows nothing of storage, scheduling or the configuration
//! file.
//!
//! - `request`: the request model ([`Endpoint`], [`TokenGrant`]) and
//!   [`prepare`], which renders it into headers and body.
//! - `auth`: every client-auth method's name, needs and wire form.
//! - `assertion`: signed client assertions (`private_key_jwt`,
//!   `client_secret_jwt`): the key, the claims and the signing.
//! - `rotation`: several client secrets, and which one worked last.
//! - `template`: request templates, their placeholders and the renderer.
//! - `client`: the HTTP exchange and reading the answer.
//! - `authorize`: the authorization request of `tokend login` (its
//!   loopback redirect, extra parameters and URL).
//! - `device`: the device authorization response (RFC 8628), read strictly.
//! - `discovery`: the authorization server's metadata (RFC 8414, OpenID
//!   Connect Discovery): where it is, fetching it, what is trusted in it.
//! - `revoke`: token revocation (RFC 7009), built as purely as `prepare`.

use std::time::Duration;

mod assertion;
mod auth;
mod authorize;
mod client;
mod device;
mod discovery;
pub(crate) mod dpop;
mod request;
mod revoke;
mod rotation;
mod template;

pub(crate) use assertion::{Alg, AssertionSettings, Audience, SigningKey, MIN_HMAC_SECRET_BYTES};
pub use assertion::{AssertionError, AssertionStamp};
pub(crate) use auth::{ClientAuth, Needs};
pub(crate) use authorize::{
    authorization_url, AuthorizationRequest, AuthorizeError, Login, Redirect, RedirectHost,
    RESERVED_AUTHORIZE_PARAMS,
};
pub use client::ProviderClient;
pub(crate) use discovery::Metadata;
pub use dpop::DpopKey;
pub(crate) use request::RESERVED_PARAMS;
pub use request::{prepare, Endpoint, PreparedRequest, TokenGrant};
pub(crate) use revoke::Revocable;
pub(crate) use rotation::SecretRotation;
#[cfg(test)]
pub(crate) use template::pairs;
pub(crate) use template::{unknown_placeholders, Encoding, RequestTemplate, PLACEHOLDERS};

/// Whether tokens may be sent to `url`: https, or plain http to a loopback
/// address, or anywhere with `allow_insecure_http`. Configured and
/// discovered endpoints alike.
pub(crate) fn check_transport(url: &url::Url, allow_insecure_http: bool) -> Result<(), String> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback || allow_insecure_http => Ok(()),
        "http" => Err("plain http would send client secrets and tokens in clear text; use https, or set allow_insecure_http = true if you really mean it".into()),
        other => Err(format!("unsupported scheme `{other}`; use https")),
    }
}

/// How a failed token request should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The grant is dead (`invalid_grant`, digiRunner's `invalid_token`): a
    /// human must authorize again. Stop refreshing.
    Reauth,
    /// The client itself is rejected (`invalid_client`, `unauthorized_client`,
    /// `unsupported_grant_type`, `invalid_scope`): fix the provider's
    /// configuration. Pause, keeping the tokens.
    Misconfigured,
    /// Anything else: retry with backoff.
    Transient,
}

/// A failed token request, already scrubbed of secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What to do about it.
    pub(crate) kind: FailureKind,
    /// HTTP status, if a response arrived.
    pub(crate) status: Option<u16>,
    /// OAuth `error` code, if the body had one.
    pub(crate) error_code: Option<String>,
    /// One line for operators: what happened, scrubbed of secrets.
    pub(crate) message: String,
    /// `Retry-After` from a 429/503, if any.
    pub(crate) retry_after: Option<Duration>,
    /// The request may have reached the provider and been processed (a
    /// timeout or reset after sending): a rotating provider may already have
    /// spent the refresh token.
    pub(crate) outcome_unknown: bool,
}

/// Classifies an error response by its OAuth `error` code. Whatever the
/// status, an answer without a code that says "dead grant" or "bad client"
/// (429, 5xx, a proxy's error page) may pass: retry it.
pub(crate) fn classify(error_code: Option<&str>, reauth_errors: &[String]) -> FailureKind {
    match error_code {
        Some(code) if reauth_errors.iter().any(|e| e == code) => FailureKind::Reauth,
        Some(
            "invalid_client" | "unauthorized_client" | "unsupported_grant_type" | "invalid_scope",
        ) => FailureKind::Misconfigured,
        _ => FailureKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_by_error_code() {
        let reauth = vec!["invalid_grant".to_string(), "invalid_token".to_string()];
        assert_eq!(
            classify(Some("invalid_grant"), &reauth),
            FailureKind::Reauth
        );
        assert_eq!(
            classify(Some("invalid_token"), &reauth),
            FailureKind::Reauth
        );
        for code in [
            "invalid_client",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
        ] {
            assert_eq!(
                classify(Some(code), &reauth),
                FailureKind::Misconfigured,
                "{code}"
            );
        }
        assert_eq!(
            classify(Some("invalid_request"), &reauth),
            FailureKind::Transient
        );
        assert_eq!(classify(None, &reauth), FailureKind::Transient);
        assert_eq!(
            classify(Some("temporarily_unavailable"), &reauth),
            FailureKind::Transient
        );
        assert_eq!(classify(None, &reauth), FailureKind::Transient);
        assert_eq!(classify(None, &reauth), FailureKind::Transient);
    }
}
