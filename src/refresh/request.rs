//! The requests the refresher accepts: the [`Command`]s its handle sends,
//! with what they carry ([`NewCredential`], [`ExchangeRequest`]) and the
//! `oneshot` [`Reply`] each is answered on.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{RefreshError, View};
use crate::credential::CredentialGrant;
use crate::token::Secret;

/// A new credential (`PUT /v1/credentials/{name}`): from a refresh token,
/// or acquired by the client alone.
#[derive(Debug, Clone)]
pub(crate) struct NewCredential {
    /// Credential name.
    pub(crate) name: String,
    /// Provider name.
    pub(crate) provider: String,
    /// How it obtains its tokens.
    pub(crate) grant: CredentialGrant,
    /// The refresh token; `None` for a client_credentials credential.
    pub(crate) refresh_token: Option<Secret>,
    /// A current access token and its lifetime in seconds, if the caller has one.
    pub(crate) access_token: Option<(Secret, u64)>,
    /// Scope, if known.
    pub(crate) scope: Option<String>,
}

/// A new credential from an authorization code.
#[derive(Debug, Clone)]
pub(crate) struct ExchangeRequest {
    /// Credential name.
    pub(crate) name: String,
    /// Provider name.
    pub(crate) provider: String,
    /// The authorization code.
    pub(crate) code: Secret,
    /// The redirect URI of the authorization request.
    pub(crate) redirect_uri: String,
    /// PKCE verifier, if used.
    pub(crate) code_verifier: Option<Secret>,
}

/// Where the owner sends its answer to one request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, RefreshError>>;

/// Requests to the owner.
pub(crate) enum Command {
    /// A token valid for at least `min_valid_ms` ([`super::RefresherHandle::token`]).
    Ensure {
        name: String,
        min_valid_ms: i64,
        reply: Reply<Arc<View>>,
    },
    /// Refresh now, whatever the state ([`super::RefresherHandle::refresh_now`]).
    RefreshNow {
        name: String,
        reply: Reply<Arc<View>>,
    },
    /// Add or replace a credential, then wait for its first attempt.
    Put {
        new: NewCredential,
        reply: Reply<Arc<View>>,
    },
    /// Create a credential from an authorization code.
    Exchange {
        req: ExchangeRequest,
        reply: Reply<Arc<View>>,
    },
    /// Start a device login; answered once the provider gave its codes.
    DeviceLogin {
        req: super::DeviceLoginRequest,
        reply: Reply<super::LoginView>,
    },
    /// Delete a credential.
    Remove { name: String, reply: Reply<()> },
    /// Read a credential, tokens included, and its provider, to revoke it
    /// before it is removed.
    ForRevocation {
        name: String,
        reply: Reply<(
            crate::credential::Credential,
            Option<Arc<crate::config::ProviderConfig>>,
        )>,
    },
    /// Apply a new, validated configuration.
    Reload {
        config: Arc<crate::config::Config>,
        reply: Reply<()>,
    },
}
