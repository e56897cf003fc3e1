//! Wire types of the socket API: the only serialized types in tokend. Each is
//! shown with a JSON example. This module is a leaf: it knows nothing of the
//! daemon, whose domain types never cross the socket; `server` builds these
//! from the refresher's views, and `cli` reads them through `client`.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;
use std::fmt;

use crate::token::fingerprint;

mod dpop;
mod git;
mod login;

pub(crate) use dpop::{DpopQuery, DpopTokenResponse};
pub(crate) use git::{GitCredential, GitCredentialQuery};
pub(crate) use login::{
    AuthorizeQuery, AuthorizeUrl, LoginSettings, LoginState, LoginStatus, StartDeviceLogin,
};

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
pub(crate) struct TokenResponse {
    /// Credential name.
    pub(crate) name: String,
    /// The access token.
    pub(crate) access_token: String,
    /// Token type, normally `Bearer`.
    pub(crate) token_type: String,
    /// Expiry as Unix seconds.
    pub(crate) expires_at: i64,
    /// Seconds until expiry.
    pub(crate) expires_in: i64,
    /// Granted scope, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    /// The OpenID Connect ID token, if the provider issued one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id_token: Option<String>,
    /// The credential's state.
    pub(crate) state: CredentialState,
    /// What an operator should do, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) warning: Option<String>,
}

/// `GET /v1/credentials[/{name}]`: state, never secrets.
///
/// ```json
/// {"name":"mail","provider":"google","state":"active","expires_at":1767225600,
///  "expires_in":3312,"refresh_token_expires_at":null,"last_refresh_at":1767222000,
///  "next_refresh_at":1767224880,"refreshing":false,"last_error":null,
///  "lifetime_source":"expires_in","scope":"openid","token_type":"Bearer",
///  "has_refresh_token":true,"grant":"refresh_token","uncommitted":false,"warning":null,
///  "created_at":1767000000,"updated_at":1767222001}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialStatus {
    /// Credential name.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// The credential's state.
    pub state: CredentialState,
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
    /// Where the expiry came from.
    pub lifetime_source: Option<LifetimeSource>,
    /// Granted scope.
    pub scope: Option<String>,
    /// Token type.
    pub token_type: String,
    /// Whether a refresh token is held.
    pub has_refresh_token: bool,
    /// How the credential obtains its tokens.
    #[serde(default)]
    pub grant: GrantType,
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

/// `PUT /v1/credentials/{name}`, from a refresh token:
///
/// ```json
/// {"provider":"didit","refresh_token":"8xLOxBtZp8"}
/// ```
///
/// or acquired by the client alone (RFC 6749 §4.4), with an optional scope
/// and extra form fields:
///
/// ```json
/// {"provider":"api","grant":"client_credentials","scope":"read","params":{"audience":"https://api.example"}}
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutCredential {
    /// Provider name from the configuration.
    pub provider: String,
    /// How the credential obtains its tokens; `refresh_token` if absent.
    #[serde(default, skip_serializing_if = "GrantType::is_refresh_token")]
    pub grant: GrantType,
    /// The refresh token; required for the `refresh_token` grant, refused
    /// for `client_credentials`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refresh_token: String,
    /// Extra form fields of a client_credentials request (`audience`,
    /// `resource`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// A current access token, if the caller has one (then `expires_in` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Lifetime of `access_token` in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Scope: as granted, if known, for a refresh token; to request, for
    /// client_credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// How a credential obtains its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// Refreshed with a refresh token.
    #[default]
    RefreshToken,
    /// Acquired with the client's own credentials.
    ClientCredentials,
}

impl GrantType {
    /// Whether this is the default, `refresh_token`.
    fn is_refresh_token(&self) -> bool {
        *self == GrantType::RefreshToken
    }
}

/// `POST /v1/credentials/{name}/exchange`:
///
/// ```json
/// {"provider":"didit","code":"abc","redirect_uri":"https://app/cb","code_verifier":"..."}
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExchangeCode {
    /// Provider name from the configuration.
    pub(crate) provider: String,
    /// The authorization code.
    pub(crate) code: String,
    /// The redirect URI used in the authorization request.
    pub(crate) redirect_uri: String,
    /// PKCE code verifier (RFC 7636), if the authorization used PKCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) code_verifier: Option<String>,
}

/// A credential's state, as `state` in `TokenResponse` and
/// [`CredentialStatus`]: `"active"`, `"needs_reauth"` or `"paused"`.
///
/// ```json
/// "needs_reauth"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    /// Refreshed on schedule.
    Active,
    /// The provider rejected the grant; a human must authorize again.
    NeedsReauth,
    /// Refreshes are paused (e.g. its provider is misconfigured); `last_error`
    /// says why.
    Paused,
}

impl CredentialState {
    /// The wire name, for tables and messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CredentialState::Active => "active",
            CredentialState::NeedsReauth => "needs_reauth",
            CredentialState::Paused => "paused",
        }
    }
}

impl fmt::Display for CredentialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an access token's expiry came from, as `lifetime_source` in
/// [`CredentialStatus`]: `"expires_in"`, `"jwt_exp"` or `"default"`.
///
/// ```json
/// "jwt_exp"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifetimeSource {
    /// The token response's `expires_in`.
    ExpiresIn,
    /// The access token is a JWT and its `exp` came first.
    JwtExp,
    /// Neither: the provider's configured default lifetime.
    Default,
}

/// The query of `GET /v1/tokens/{name}`: `?min_valid=60` asks for a token
/// valid at least that many seconds more, refreshing first if needed.
///
/// ```json
/// {"min_valid":60}
/// ```
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct TokenQuery {
    /// Seconds the token must still be valid; none means any unexpired token.
    pub(crate) min_valid: Option<u64>,
}

/// The query of `DELETE /v1/credentials/{name}`: `?revoke=true` revokes
/// the token at the provider first (RFC 7009) and keeps the credential if
/// that fails, unless `&force=true`.
///
/// ```json
/// {"revoke":true,"force":false}
/// ```
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct RemoveQuery {
    /// Revoke first.
    pub(crate) revoke: Option<bool>,
    /// Delete even if the revocation failed.
    pub(crate) force: Option<bool>,
}

/// `DELETE /v1/credentials/{name}`: what was removed and what became of
/// its revocation.
///
/// ```json
/// {"name":"mail","revocation":"failed","revocation_error":"revocation at https://... failed: answered 503"}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    /// The credential.
    pub name: String,
    /// Whether its token was revoked at the provider.
    pub revocation: Revocation,
    /// Why the revocation failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_error: Option<String>,
}

/// The `revocation` of a [`Removed`]:
///
/// ```json
/// "revoked"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// Neither asked for nor configured (`revoke_on_remove`).
    NotRequested,
    /// The provider accepted the revocation.
    Revoked,
    /// The credential held no token to revoke.
    NothingToRevoke,
    /// The revocation failed (the credential was removed all the same).
    Failed,
    /// A value from a newer daemon.
    #[serde(other)]
    Other,
}

/// Every error answer:
///
/// ```json
/// {"error":"needs_reauth","message":"credential `mail` needs re-authorization (...)"}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable kind, one per status (see README, "Socket API").
    pub error: ErrorKind,
    /// One line for humans.
    pub message: String,
}

/// The `error` of an [`ErrorBody`], with its status:
///
/// ```json
/// "not_found"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the request is malformed.
    BadRequest,
    /// 400: no provider of that name is configured.
    UnknownProvider,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: no such endpoint, or no credential the caller may read.
    NotFound,
    /// 405: the endpoint does not take that method.
    MethodNotAllowed,
    /// 408: the request was not answered in time.
    Timeout,
    /// 409: the grant is dead; a human must authorize again.
    NeedsReauth,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 422: `min_valid` is at or above the provider's token lifetime.
    MinValidUnsatisfiable,
    /// 500: something failed inside the daemon (its log says what).
    Internal,
    /// 502: the provider refused or failed the code exchange.
    ExchangeFailed,
    /// 502: an asked-for revocation failed; the credential was kept.
    RevocationFailed,
    /// 503: no token can be had now; retry later.
    Unavailable,
    /// 503: the credential's refreshes are paused.
    Paused,
    /// 503: the daemon is stopping.
    ShuttingDown,
    /// Not one of tokend's kinds: an answer that is not tokend's error JSON,
    /// or a kind from a newer daemon. The daemon never sends it.
    #[serde(other)]
    Other,
}

/// `GET /v1/health`:
///
/// ```json
/// {"status":"ok","credentials":3,"version":"0.1.0"}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: HealthStatus,
    /// Number of credentials.
    pub credentials: usize,
    /// Daemon version.
    pub version: String,
}

/// The `status` of [`Health`]:
///
/// ```json
/// "ok"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The daemon answers.
    Ok,
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
            .field("grant", &self.grant)
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("access_token", &self.access_token.as_deref().map(redacted))
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("params", &self.params.keys().collect::<Vec<_>>())
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
mod tests;
