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
//! - `template`: request templates, their placeholders and the renderer.
//! - `client`: the HTTP exchange and reading the answer.

use std::time::Duration;

mod auth;
mod client;
pub(crate) mod dpop;
mod request;
mod template;

pub(crate) use auth::{ClientAuth, Needs};
pub use client::ProviderClient;
pub use dpop::DpopKey;
pub(crate) use request::RESERVED_PARAMS;
pub use request::{prepare, Endpoint, PreparedRequest, TokenGrant};
#[cfg(test)]
pub(crate) use template::pairs;
pub(crate) use template::{unknown_placeholders, Encoding, RequestTemplate, PLACEHOLDERS};

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
