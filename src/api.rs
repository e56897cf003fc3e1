//! Wire types of the socket API: the only serialized types in tokend. Each is
//! shown with a JSON example; the daemon's domain types never cross the
//! socket directly.

use serde::{Deserialize, Serialize};

use std::fmt;

use crate::refresh::View;
use crate::token::fingerprint;
use crate::token::now_ms;

/// `GET /v1/tokens/{name}`:
///
/// ```json
/// {"name":"mail","access_token":"ya29...","token_type":"Bearer",
///  "expires_at":1767225600,"expires_in":3312,"scope":"openid","state":"active"}
/// ```
///
/// A credential that needs re-authorization or is paused still serves its
/// unexpired token, with `state` saying so and `warning` saying what to do.
#[derive(Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// Credential name.
    pub name: String,
    /// The access token.
    pub access_token: String,
    /// Token type, normally `Bearer`.
    pub token_type: String,
    /// Expiry as Unix seconds.
    pub expires_at: i64,
    /// Seconds until expiry.
    pub expires_in: i64,
    /// Granted scope, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The OpenID Connect ID token, if the provider issued one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The credential's state: `active`, `needs_reauth` or `paused`.
    pub state: String,
    /// What an operator should do, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl TokenResponse {
    /// Builds the response from a view holding a valid token.
    pub fn from_view(view: &View) -> Option<Self> {
        let expires_at_ms = view.expires_at?;
        Some(TokenResponse {
            name: view.name.to_string(),
            access_token: view.access_token.as_ref()?.expose().to_string(),
            token_type: view.token_type.to_string(),
            expires_at: expires_at_ms / 1000,
            expires_in: expires_at_ms.saturating_sub(now_ms()).max(0) / 1000,
            scope: view.scope.as_deref().map(str::to_string),
            id_token: view
                .extras()
                .id_token
                .as_ref()
                .map(|t| t.expose().to_string()),
            state: view.state_name().to_string(),
            warning: view.caveat(),
        })
    }
}

/// `GET /v1/credentials[/{name}]`: state, never secrets.
///
/// ```json
/// {"name":"mail","provider":"google","state":"active","expires_at":1767225600,
///  "expires_in":3312,"refresh_token_expires_at":null,"last_refresh_at":1767222000,
///  "next_refresh_at":1767224880,"refreshing":false,"last_error":null,
///  "lifetime_source":"expires_in","scope":"openid","token_type":"Bearer",
///  "has_refresh_token":true,"uncommitted":false,"warning":null,
///  "created_at":1767000000,"updated_at":1767222001}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialStatus {
    /// Credential name.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// `active`, `needs_reauth` or `paused`.
    pub state: String,
    /// Access-token expiry, Unix seconds.
    pub expires_at: Option<i64>,
    /// Seconds until the access token expires (negative once expired).
    pub expires_in: Option<i64>,
    /// Refresh-token expiry, Unix seconds, if the provider stated one.
    pub refresh_token_expires_at: Option<i64>,
    /// Last successful refresh, Unix seconds.
    pub last_refresh_at: Option<i64>,
    /// Next scheduled refresh, Unix seconds.
    pub next_refresh_at: Option<i64>,
    /// Whether a refresh is in flight.
    pub refreshing: bool,
    /// The last failure, or why the credential is paused.
    pub last_error: Option<String>,
    /// Where the expiry came from: `expires_in`, `jwt_exp` or `default`.
    pub lifetime_source: Option<String>,
    /// Granted scope.
    pub scope: Option<String>,
    /// Token type.
    pub token_type: String,
    /// Whether a refresh token is held.
    pub has_refresh_token: bool,
    /// Tokens newer than the database's are held in memory only, because
    /// committing them failed; the commit is being retried.
    pub uncommitted: bool,
    /// Something to act on although the credential works (e.g. a refresh
    /// token about to expire).
    pub warning: Option<String>,
    /// When the credential was added, Unix seconds.
    pub created_at: i64,
    /// When it last changed, Unix seconds.
    pub updated_at: i64,
}

impl From<&View> for CredentialStatus {
    fn from(view: &View) -> Self {
        let secs = |ms: i64| ms.div_euclid(1000);
        let extras = view.extras();
        CredentialStatus {
            name: view.name.to_string(),
            provider: view.provider.to_string(),
            state: view.state_name().to_string(),
            expires_at: view.expires_at.map(secs),
            expires_in: view.expires_at.map(|e| secs(e.saturating_sub(now_ms()))),
            refresh_token_expires_at: extras.refresh_expires_at.map(secs),
            last_refresh_at: view.last_refresh_at.map(secs),
            next_refresh_at: view.next_refresh_at.map(secs),
            refreshing: view.refreshing,
            last_error: extras.paused.clone().or_else(|| extras.last_error.clone()),
            lifetime_source: view.lifetime_source.map(|s| s.as_str().to_string()),
            scope: view.scope.as_deref().map(str::to_string),
            token_type: view.token_type.to_string(),
            has_refresh_token: view.has_refresh_token,
            uncommitted: view.uncommitted,
            warning: extras.warning.clone(),
            created_at: secs(view.created_at),
            updated_at: secs(view.updated_at),
        }
    }
}

/// `PUT /v1/credentials/{name}`:
///
/// ```json
/// {"provider":"didit","refresh_token":"8xLOxBtZp8"}
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutCredential {
    /// Provider name from the configuration.
    pub provider: String,
    /// The refresh token.
    pub refresh_token: String,
    /// A current access token, if the caller has one (then `expires_in` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Lifetime of `access_token` in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Scope, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// `POST /v1/credentials/{name}/exchange`:
///
/// ```json
/// {"provider":"didit","code":"abc","redirect_uri":"https://app/cb","code_verifier":"..."}
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeCode {
    /// Provider name from the configuration.
    pub provider: String,
    /// The authorization code.
    pub code: String,
    /// The redirect URI used in the authorization request.
    pub redirect_uri: String,
    /// PKCE code verifier (RFC 7636), if the authorization used PKCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_verifier: Option<String>,
}

/// Every error: `{"error":"needs_reauth","message":"credential `mail` needs ..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable kind, one per status (see README, "Socket API"):
    /// `bad_request`, `unknown_provider` (400), `forbidden` (403),
    /// `not_found` (404), `method_not_allowed` (405), `timeout` (408),
    /// `needs_reauth` (409), `payload_too_large` (413), `internal` (500),
    /// `exchange_failed` (502), `unavailable`, `paused`, `shutting_down` (503).
    pub error: String,
    /// One line for humans.
    pub message: String,
}

/// `GET /v1/health`: `{"status":"ok","credentials":3,"version":"0.1.0"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: String,
    /// Number of credentials.
    pub credentials: usize,
    /// Daemon version.
    pub version: String,
}

// The types that carry secrets print fingerprints, never values, so a stray
// `{:?}` in a log line or a panic message cannot leak them.

fn redacted(value: &str) -> String {
    format!("<{}>", fingerprint(value))
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("name", &self.name)
            .field("access_token", &redacted(&self.access_token))
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("state", &self.state)
            .field("id_token", &self.id_token.as_deref().map(redacted))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PutCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutCredential")
            .field("provider", &self.provider)
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("access_token", &self.access_token.as_deref().map(redacted))
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

impl fmt::Debug for ExchangeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeCode")
            .field("provider", &self.provider)
            .field("code", &redacted(&self.code))
            .field("redirect_uri", &self.redirect_uri)
            .field(
                "code_verifier",
                &self.code_verifier.as_deref().map(redacted),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        let put = PutCredential {
            provider: "p".into(),
            refresh_token: "rt-very-secret".into(),
            access_token: Some("at-very-secret".into()),
            expires_in: Some(60),
            scope: None,
        };
        let code = ExchangeCode {
            provider: "p".into(),
            code: "code-very-secret".into(),
            redirect_uri: "https://app/cb".into(),
            code_verifier: Some("verifier-very-secret".into()),
        };
        let token = TokenResponse {
            name: "c".into(),
            access_token: "at-very-secret".into(),
            token_type: "Bearer".into(),
            expires_at: 0,
            expires_in: 0,
            scope: None,
            id_token: Some("idt-very-secret".into()),
            state: "active".into(),
            warning: None,
        };
        let all = format!("{put:?} {code:?} {token:?} {put:#?}");
        assert!(!all.contains("very-secret"), "{all}");
        assert!(all.contains("sha256:"));
    }
}
