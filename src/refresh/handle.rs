//! The public face of the refresher: the cloneable [`RefresherHandle`], the
//! published [`View`] of a credential, the requests it accepts and the
//! [`RefreshError`]s it answers with.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::credential::{Credential, State};
use crate::provider::Failure;
use crate::store::StoreError;
use crate::token::{now_ms, Secret};

/// A published, immutable snapshot of one credential.
#[derive(Debug, Clone)]
pub struct View {
    /// The credential as last committed (or, after a failed commit, as held
    /// in memory).
    pub cred: Credential,
    /// Why refreshing is paused, if it is (provider missing or misconfigured).
    pub paused: Option<String>,
    /// When the next refresh is due (Unix ms), if one is scheduled.
    pub next_refresh_at: Option<i64>,
    /// Whether a refresh is in flight now.
    pub refreshing: bool,
    /// Newer tokens than the database holds are kept in memory because
    /// committing them failed; the commit is being retried.
    pub uncommitted: bool,
    /// Something the operator should know although the credential works
    /// (a refresh token about to expire).
    pub warning: Option<String>,
    /// Who may read its token (besides administrators).
    pub readers: Vec<crate::access::Grant>,
}

impl View {
    /// The state shown to users: `paused` overrides the stored state.
    pub fn state_name(&self) -> &'static str {
        match (&self.paused, self.cred.state) {
            (_, State::NeedsReauth) => "needs_reauth",
            (Some(_), State::Active) => "paused",
            (None, State::Active) => "active",
        }
    }

    /// Why a token served from this view deserves a caveat, if it does: the
    /// credential needs re-authorization or is paused (its token is still
    /// served until it expires), or its refresh token is about to expire.
    pub fn caveat(&self) -> Option<String> {
        let c = &self.cred;
        match (&self.paused, c.state) {
            (_, State::NeedsReauth) => Some(format!(
                "credential `{}` needs re-authorization ({}); this token is served until it expires: add a new refresh token with `tokend add {} --provider {}`",
                c.name,
                c.last_error.as_deref().unwrap_or("the provider rejected the grant"),
                c.name,
                c.provider
            )),
            (Some(reason), _) => Some(format!(
                "credential `{}` is paused: {reason}; this token is served until it expires",
                c.name
            )),
            (None, State::Active) => self.warning.clone(),
        }
    }
}

/// Why a token or credential operation failed; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
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
    /// The named provider is not in the configuration.
    #[error("provider `{0}` is not configured; add a [providers.{0}] table to the configuration")]
    UnknownProvider(String),
    /// The authorization-code exchange was refused or failed.
    #[error("authorization code exchange failed: {0}")]
    ExchangeFailed(Failure),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The daemon is stopping.
    #[error("tokend is shutting down")]
    ShuttingDown,
}

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

pub(super) type Reply<T> = oneshot::Sender<Result<T, RefreshError>>;

/// How long a caller waits for the owner before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Requests to the owner.
pub(super) enum Command {
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

/// The one-line summary for `systemctl status`, e.g. "12 credentials: 11
/// active, 1 needs re-auth; next refresh in 4m".
pub fn summary<'a>(views: impl Iterator<Item = &'a View>, now: i64) -> String {
    let (mut total, mut active, mut reauth, mut paused) = (0, 0, 0, 0);
    let mut next: Option<i64> = None;
    for v in views {
        total += 1;
        match v.state_name() {
            "active" => active += 1,
            "needs_reauth" => reauth += 1,
            _ => paused += 1,
        }
        if let Some(at) = v.next_refresh_at {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    let mut out = format!("{total} credential{}", if total == 1 { "" } else { "s" });
    let mut parts = Vec::new();
    if total > 0 {
        parts.push(format!("{active} active"));
    }
    if reauth > 0 {
        parts.push(format!(
            "{reauth} need{} re-auth",
            if reauth == 1 { "s" } else { "" }
        ));
    }
    if paused > 0 {
        parts.push(format!("{paused} paused"));
    }
    if !parts.is_empty() {
        out.push_str(": ");
        out.push_str(&parts.join(", "));
    }
    if let Some(at) = next {
        let secs = ((at - now).max(0) + 999) / 1000;
        out.push_str(&format!(
            "; next refresh in {}",
            humantime::format_duration(Duration::from_secs(secs as u64))
        ));
    }
    out
}

/// Cheap, cloneable handle for talking to the owner and reading its views.
#[derive(Clone)]
pub struct RefresherHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) published: Arc<DashMap<String, Arc<View>>>,
    pub(super) policy: Arc<std::sync::RwLock<crate::access::Policy>>,
}

impl RefresherHandle {
    /// Who administers (as of the last configuration load).
    pub fn policy(&self) -> crate::access::Policy {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The current view of one credential, without asking the owner.
    pub fn view(&self, name: &str) -> Option<Arc<View>> {
        self.published.get(name).map(|v| Arc::clone(v.value()))
    }

    /// Every credential's view, by name.
    pub fn list(&self) -> Vec<Arc<View>> {
        let mut all: Vec<_> = self
            .published
            .iter()
            .map(|v| Arc::clone(v.value()))
            .collect();
        all.sort_by(|a, b| a.cred.name.cmp(&b.cred.name));
        all
    }

    /// Number of credentials.
    pub fn len(&self) -> usize {
        self.published.len()
    }

    /// Whether there are no credentials.
    pub fn is_empty(&self) -> bool {
        self.published.is_empty()
    }

    /// A token valid for at least `min_valid`. Served from the published view
    /// when it is fresh enough; otherwise the owner refreshes first (joining a
    /// refresh already in flight).
    pub async fn token(&self, name: &str, min_valid: Duration) -> Result<Arc<View>, RefreshError> {
        let min_valid_ms = min_valid.as_millis() as i64;
        if let Some(view) = self.view(name) {
            if view.cred.valid_token(now_ms(), min_valid_ms).is_some() {
                return Ok(view);
            }
        }
        self.ask(|reply| Command::Ensure {
            name: name.to_string(),
            min_valid_ms,
            reply,
        })
        .await
    }

    /// Refreshes now, even a credential that needs re-authorization or is
    /// paused, and reports the outcome.
    pub async fn refresh_now(&self, name: &str) -> Result<Arc<View>, RefreshError> {
        self.ask(|reply| Command::RefreshNow {
            name: name.to_string(),
            reply,
        })
        .await
    }

    /// Adds or replaces a credential and waits for its first refresh attempt.
    pub async fn put(&self, new: NewCredential) -> Result<Arc<View>, RefreshError> {
        self.ask(|reply| Command::Put { new, reply }).await
    }

    /// Creates a credential from an authorization code.
    pub async fn exchange(&self, req: ExchangeRequest) -> Result<Arc<View>, RefreshError> {
        self.ask(|reply| Command::Exchange { req, reply }).await
    }

    /// Applies a new, already validated configuration: changed providers take
    /// effect at once, credentials of a removed provider pause, paused ones
    /// whose provider is back (or fixed) resume. Tokens are untouched.
    pub async fn reload(&self, config: Arc<crate::config::Config>) -> Result<(), RefreshError> {
        self.ask(|reply| Command::Reload { config, reply }).await
    }

    /// Deletes a credential.
    pub async fn remove(&self, name: &str) -> Result<(), RefreshError> {
        self.ask(|reply| Command::Remove {
            name: name.to_string(),
            reply,
        })
        .await
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, RefreshError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| RefreshError::ShuttingDown)?;
        match tokio::time::timeout(WAIT_LIMIT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RefreshError::ShuttingDown),
            Err(_) => Err(RefreshError::Unavailable {
                name: String::new(),
                reason: format!("no answer within {WAIT_LIMIT:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Credential;

    fn view(state: State, paused: bool, next: Option<i64>) -> View {
        let mut cred = Credential::new("c", "p", None, 0);
        cred.state = state;
        View {
            cred,
            paused: paused.then(|| "x".to_string()),
            next_refresh_at: next,
            refreshing: false,
            uncommitted: false,
            warning: None,
            readers: Vec::new(),
        }
    }

    #[test]
    fn summary_counts_states_and_names_the_next_refresh() {
        let views = [
            view(State::Active, false, Some(300_000)),
            view(State::Active, false, Some(240_000)),
            view(State::NeedsReauth, false, None),
            view(State::Active, true, None),
        ];
        assert_eq!(
            summary(views.iter(), 0),
            "4 credentials: 2 active, 1 needs re-auth, 1 paused; next refresh in 4m"
        );
        assert_eq!(summary([].iter(), 0), "0 credentials");
    }
}
