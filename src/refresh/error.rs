//! [`RefreshError`]: why a token or credential operation failed, one
//! variant per answer the socket API gives.

use std::time::Duration;

use crate::provider::dpop::DpopError;
use crate::provider::Failure;
use crate::store::StoreError;

/// Why a token or credential operation failed; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefreshError {
    /// No such credential.
    #[error("no credential named `{0}`; see `tokend status` for the list")]
    NotFound(String),
    /// The grant is dead.
    #[error("credential `{name}` needs re-authorization ({reason}); add a new refresh token with `tokend add {name} --provider {provider}` or run `tokend exchange`")]
    NeedsReauth {
        /// Credential.
        name: String,
        /// Its provider.
        provider: String,
        /// The provider's answer.
        reason: String,
    },
    /// Refreshing is paused because the provider is missing or misconfigured.
    #[error("credential `{name}` is paused: {reason}")]
    Paused {
        /// Credential.
        name: String,
        /// Why.
        reason: String,
    },
    /// No valid token can be had right now; retrying.
    #[error("no valid token for `{name}` right now: {reason}")]
    Unavailable {
        /// Credential.
        name: String,
        /// Why.
        reason: String,
    },
    /// No valid token can be had before the refresh schedule allows the
    /// next attempt, which is `retry_after` away.
    #[error("no valid token for `{name}` right now: {reason}")]
    RetryLater {
        /// Credential.
        name: String,
        /// Why, and when the next attempt is.
        reason: String,
        /// When to ask again.
        retry_after: Duration,
    },
    /// The caller asked for a token valid longer than the provider issues.
    #[error("credential `{name}`: the provider issued its last token valid for only {lifetime_secs}s, so a min_valid of {min_valid_secs}s can never be met; ask for less than {lifetime_secs}s")]
    MinValidUnsatisfiable {
        /// Credential.
        name: String,
        /// What was asked for.
        min_valid_secs: u64,
        /// The lifetime of the last token issued.
        lifetime_secs: i64,
    },
    /// The named provider is not in the configuration.
    #[error("provider `{0}` is not configured; add a [providers.{0}] table to the configuration")]
    UnknownProvider(String),
    /// The provider cannot serve this grant (client_credentials with
    /// `client_auth = "none"`).
    #[error("provider `{0}` has client_auth = \"none\", but a client_credentials request must authenticate the client; give the provider a client secret and a client_auth such as basic or body")]
    UnauthenticatedClient(String),
    /// The authorization-code exchange was refused or failed.
    #[error("authorization code exchange failed: {0}")]
    ExchangeFailed(Failure),
    /// The device authorization request was refused or failed.
    #[error("device authorization failed: {0}")]
    DeviceFailed(Failure),
    /// The provider has no device authorization endpoint.
    #[error("provider `{0}` has no device_authorization_url; set it in [providers.{0}] to the provider's device authorization endpoint")]
    NoDeviceEndpoint(String),
    /// As many device logins as the daemon holds are pending.
    #[error("{max} device logins are pending already; cancel one (`DELETE /v1/logins/NAME`) or wait for one to finish", max = super::device::MAX_LOGINS)]
    TooManyLogins,
    /// No device login of that name.
    #[error("no device login for `{0}`; see `GET /v1/logins`")]
    LoginNotFound(String),
    /// The login was replaced by a newer one, or cancelled, while it started.
    #[error("the device login for `{0}` was replaced or cancelled while it started")]
    LoginReplaced(String),
    /// An asked-for revocation failed; the credential was kept.
    #[error("credential `{name}` was kept because its revocation failed: {message}; remove it anyway with `tokend remove {name} --revoke --force`")]
    RevocationFailed {
        /// Credential.
        name: String,
        /// Why, scrubbed of the token and the client secret.
        message: String,
    },
    /// The credential has no DPoP key: its provider does not use DPoP.
    #[error("credential `{0}` is not bound to a DPoP key (its provider does not set dpop = true); read it as a bearer token with `tokend get {0}`")]
    NotDpop(String),
    /// The credential's current token is not a DPoP token.
    #[error("the current token of `{0}` is a {1} token, not a DPoP one (it was issued before its provider used DPoP); it is replaced at its next refresh (`tokend refresh {0}`)")]
    NotDpopToken(String, String),
    /// A DPoP key or proof could not be made, or the request for one is bad.
    #[error(transparent)]
    Dpop(#[from] DpopError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The daemon is stopping.
    #[error("tokend is shutting down")]
    ShuttingDown,
}
