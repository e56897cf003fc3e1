//! The requests the refresher accepts: the [`Command`]s its handle sends,
//! with what they carry ([`NewCredential`], [`ExchangeRequest`]) and the
//! `oneshot` [`Reply`] each is answered on.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{RefreshError, View};
use crate::token::Secret;

/// A new credential from a refresh token (`PUT /v1/credentials/{name}`).
#[derive(Debug, Clone)]
pub struct NewCredential {
    /// Credential name.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// The refresh token.
    pub refresh_token: Secret,
    /// A current access token and its lifetime in seconds, if the caller has one.
    pub access_token: Option<(Secret, u64)>,
    /// Scope, if known.
    pub scope: Option<String>,
}

/// A new credential from an authorization code.
#[derive(Debug, Clone)]
pub struct ExchangeRequest {
    /// Credential name.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// The authorization code.
    pub code: Secret,
    /// The redirect URI of the authorization request.
    pub redirect_uri: String,
    /// PKCE verifier, if used.
    pub code_verifier: Option<Secret>,
}

/// Where the owner sends its answer to one request.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, RefreshError>>;

/// Requests to the owner.
pub(crate) enum Command {
    Ensure {
        name: String,
        min_valid_ms: i64,
        reply: Reply<Arc<View>>,
    },
    RefreshNow {
        name: String,
        reply: Reply<Arc<View>>,
    },
    Put {
        new: NewCredential,
        reply: Reply<Arc<View>>,
    },
    Exchange {
        req: ExchangeRequest,
        reply: Reply<Arc<View>>,
    },
    Remove {
        name: String,
        reply: Reply<()>,
    },
    Reload {
        config: Arc<crate::config::Config>,
        reply: Reply<()>,
    },
}

