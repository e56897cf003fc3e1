//! The public face of the refresher: the cloneable [`RefresherHandle`], the
//! published [`View`] of a credential, the requests it accepts and the
//! [`RefreshError`]s it answers with.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::access::Grant;
use crate::config::OnInvalidGrant;
use crate::credential::{Credential, State};
use crate::provider::Failure;
use crate::store::StoreError;
use crate::token::{duration_ms, now_ms, LifetimeSource, Secret};

/// A published, immutable snapshot of one credential: everything the socket
/// API serves or shows, and nothing more. It holds no refresh token: that
/// stays in the database and is read only when a refresh starts, so a
/// million credentials cost memory for their access tokens and little else.
#[derive(Debug, Clone)]
pub struct View {
    /// Credential name (shared with the published map's key).
    pub name: Arc<str>,
    /// Provider name.
    pub provider: Arc<str>,
    /// The current access token, if one was ever obtained.
    pub access_token: Option<Secret>,
    /// Token type, normally `Bearer`.
    pub token_type: Arc<str>,
    /// Granted scope.
    pub scope: Option<Arc<str>>,
    /// When the access token expires (Unix ms).
    pub expires_at: Option<i64>,
    /// When the last successful refresh was sent (Unix ms).
    pub last_refresh_at: Option<i64>,
    /// When the credential was first stored (Unix ms).
    pub created_at: i64,
    /// When its row last changed (Unix ms).
    pub updated_at: i64,
    /// When the next refresh is due (Unix ms), if one is scheduled.
    pub next_refresh_at: Option<i64>,
    /// Who may read its token (besides administrators).
    pub readers: Arc<[Grant]>,
    /// Lifecycle state as stored.
    pub state: State,
    /// Where `expires_at` came from.
    pub lifetime_source: Option<LifetimeSource>,
    /// Whether the database holds a refresh token for it.
    pub has_refresh_token: bool,
    /// Whether a refresh is in flight now.
    pub refreshing: bool,
    /// Whether its token is still served once the grant was rejected (its
    /// provider's `on_invalid_grant`).
    pub on_invalid_grant: OnInvalidGrant,
    /// Newer tokens than the database holds are kept in memory because
    /// committing them failed; the commit is being retried.
    pub uncommitted: bool,
    /// Fields most credentials never have, boxed so they cost one pointer.
    pub notes: Option<Box<Notes>>,
    /// The refresher's slot number for it.
    pub(crate) slot: u32,
}

/// The rarely set part of a [`View`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// The OpenID Connect ID token of the last response, if any.
    pub id_token: Option<Secret>,
    /// When the refresh token expires (Unix ms), if the provider said.
    pub refresh_expires_at: Option<i64>,
    /// The last failure, scrubbed of secrets.
    pub last_error: Option<String>,
    /// Why refreshing is paused, if it is (provider missing or misconfigured).
    pub paused: Option<String>,
    /// Something the operator should know although the credential works
    /// (a refresh token about to expire).
    pub warning: Option<String>,
}

impl Notes {
    /// `None` when there is nothing to note, so the common case allocates nothing.
    pub fn boxed(self) -> Option<Box<Notes>> {
        (self != Notes::default()).then(|| Box::new(self))
    }
}

impl View {
    /// The view of a credential record (as stored or just refreshed), with
    /// no schedule and no flags yet. Strings shared by many credentials
    /// (provider, token type, scope) come from `interner`.
    pub fn of(
        name: Arc<str>,
        cred: &Credential,
        interner: &mut Interner,
        readers: Arc<[Grant]>,
    ) -> View {
        View {
            name,
            provider: interner.get(&cred.provider),
            access_token: cred.access_token.clone(),
            token_type: interner.get(&cred.token_type),
            scope: cred.scope.as_deref().map(|s| interner.get(s)),
            expires_at: cred.expires_at,
            last_refresh_at: cred.last_refresh_at,
            created_at: cred.created_at,
            updated_at: cred.updated_at,
            next_refresh_at: None,
            readers,
            state: cred.state,
            lifetime_source: cred.lifetime_source,
            has_refresh_token: cred.refresh_token.is_some(),
            refreshing: false,
            on_invalid_grant: OnInvalidGrant::default(),
            uncommitted: false,
            slot: 0,
            notes: Notes {
                id_token: match cred.extra.get("id_token") {
                    Some(serde_json::Value::String(id)) => Some(Secret::new(id.as_str())),
                    _ => None,
                },
                refresh_expires_at: cred.refresh_expires_at,
                last_error: cred.last_error.clone(),
                paused: None,
                warning: None,
            }
            .boxed(),
        }
    }

    /// The notes, or empty ones.
    pub fn notes(&self) -> &Notes {
        static NONE: Notes = Notes {
            id_token: None,
            refresh_expires_at: None,
            last_error: None,
            paused: None,
            warning: None,
        };
        self.notes.as_deref().unwrap_or(&NONE)
    }

    /// Changes the notes, dropping the box when they become empty.
    pub fn edit_notes(&mut self, edit: impl FnOnce(&mut Notes)) {
        let mut notes = self.notes.take().map(|b| *b).unwrap_or_default();
        edit(&mut notes);
        self.notes = notes.boxed();
    }

    /// Why refreshing is paused, if it is.
    pub fn paused(&self) -> Option<&str> {
        self.notes().paused.as_deref()
    }

    /// The access token if it is still valid for at least `min_valid_ms` at
    /// `now` and may be served. After the grant was rejected it is served
    /// only if the provider says `serve_until_expiry`: an access token may
    /// outlive a dead refresh token (keeping clients working while a human
    /// re-authorizes), but a provider that revokes the whole grant has killed
    /// it too, and a script must not take it for a good one.
    pub fn valid_token(&self, now: i64, min_valid_ms: i64) -> Option<&Secret> {
        if self.state == State::NeedsReauth && self.on_invalid_grant == OnInvalidGrant::Withhold {
            return None;
        }
        match (&self.access_token, self.expires_at) {
            (Some(t), Some(exp)) if exp.saturating_sub(now) > min_valid_ms => Some(t),
            _ => None,
        }
    }

    /// How long the last token the provider issued was valid for (ms), if
    /// known: no token can be valid for longer after a refresh.
    pub fn issued_lifetime_ms(&self) -> Option<i64> {
        let lifetime = self.expires_at?.saturating_sub(self.last_refresh_at?);
        (lifetime > 0).then_some(lifetime)
    }

    /// The state shown to users: `paused` overrides the stored state.
    pub fn state_name(&self) -> &'static str {
        match (self.paused(), self.state) {
            (_, State::NeedsReauth) => "needs_reauth",
            (Some(_), State::Active) => "paused",
            (None, State::Active) => "active",
        }
    }

    /// Why a token served from this view deserves a caveat, if it does: the
    /// credential needs re-authorization or is paused (its token is still
    /// served until it expires), or its refresh token is about to expire.
    pub fn caveat(&self) -> Option<String> {
        let notes = self.notes();
        match (&notes.paused, self.state) {
            (_, State::NeedsReauth) => Some(format!(
                "credential `{}` needs re-authorization ({}); this token is served until it expires: add a new refresh token with `tokend add {} --provider {}`",
                self.name,
                notes.last_error.as_deref().unwrap_or("the provider rejected the grant"),
                self.name,
                self.provider
            )),
            (Some(reason), _) => Some(format!(
                "credential `{}` is paused: {reason}; this token is served until it expires",
                self.name
            )),
            (None, State::Active) => notes.warning.clone(),
        }
    }
}

/// Shares the strings many credentials have in common (provider names,
/// token types, scopes), so each costs one reference, not one copy.
#[derive(Default)]
pub struct Interner {
    strings: std::collections::HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
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

/// Credentials counted by the state users see, kept up to date as views
/// are published so the status line never needs a pass over all of them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    active: usize,
    needs_reauth: usize,
    paused: usize,
}

impl Tally {
    fn slot(&mut self, view: &View) -> &mut usize {
        match view.state_name() {
            "active" => &mut self.active,
            "needs_reauth" => &mut self.needs_reauth,
            _ => &mut self.paused,
        }
    }

    /// Counts a view in.
    pub fn add(&mut self, view: &View) {
        *self.slot(view) += 1;
    }

    /// Counts a view out.
    pub fn remove(&mut self, view: &View) {
        let n = self.slot(view);
        *n = n.saturating_sub(1);
    }

    /// The one-line summary for `systemctl status`, e.g. "12 credentials: 11
    /// active, 1 needs re-auth; next refresh in 4m".
    pub fn line(&self, next_refresh_at: Option<i64>, now: i64) -> String {
        let total = self.active + self.needs_reauth + self.paused;
        let mut out = format!("{total} credential{}", if total == 1 { "" } else { "s" });
        let mut parts = Vec::new();
        if total > 0 {
            parts.push(format!("{} active", self.active));
        }
        if self.needs_reauth > 0 {
            parts.push(format!(
                "{} need{} re-auth",
                self.needs_reauth,
                if self.needs_reauth == 1 { "s" } else { "" }
            ));
        }
        if self.paused > 0 {
            parts.push(format!("{} paused", self.paused));
        }
        if !parts.is_empty() {
            out.push_str(": ");
            out.push_str(&parts.join(", "));
        }
        if let Some(at) = next_refresh_at {
            let secs = (at.saturating_sub(now).max(0).saturating_add(999)) / 1000;
            out.push_str(&format!(
                "; next refresh in {}",
                humantime::format_duration(Duration::from_secs(secs as u64))
            ));
        }
        out
    }
}

/// The status line for a set of views (see [`Tally::line`]).
pub fn summary<'a>(views: impl Iterator<Item = &'a View>, now: i64) -> String {
    let mut tally = Tally::default();
    let mut next: Option<i64> = None;
    for v in views {
        tally.add(v);
        if let Some(at) = v.next_refresh_at {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    }
    tally.line(next, now)
}

/// Cheap, cloneable handle for talking to the owner and reading its views.
#[derive(Clone)]
pub struct RefresherHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) published: Arc<DashMap<Arc<str>, Arc<View>>>,
    pub(super) policy: Arc<std::sync::RwLock<crate::access::Policy>>,
    /// `daemon.read_timeout` in ms, kept current by the owner on reload.
    pub(super) read_timeout_ms: Arc<std::sync::atomic::AtomicU64>,
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
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The status line, from every published view (one pass, no sorting).
    pub fn summary(&self) -> String {
        let views: Vec<Arc<View>> = self
            .published
            .iter()
            .map(|v| Arc::clone(v.value()))
            .collect();
        summary(views.iter().map(|v| &**v), now_ms())
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
    /// refresh already in flight or scheduled) if its schedule allows, and
    /// the caller waits at most `daemon.read_timeout` for it.
    pub async fn token(&self, name: &str, min_valid: Duration) -> Result<Arc<View>, RefreshError> {
        let min_valid_ms = duration_ms(min_valid);
        if let Some(view) = self.view(name) {
            if view.valid_token(now_ms(), min_valid_ms).is_some() {
                return Ok(view);
            }
        }
        let bound = Duration::from_millis(
            self.read_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let asked = self.ask(|reply| Command::Ensure {
            name: name.to_string(),
            min_valid_ms,
            reply,
        });
        match tokio::time::timeout(bound, asked).await {
            Ok(result) => result,
            Err(_) => {
                let last = self
                    .view(name)
                    .and_then(|v| v.notes().last_error.clone())
                    .map_or(String::new(), |e| format!(" (last error: {e})"));
                Err(RefreshError::Unavailable {
                    name: name.to_string(),
                    reason: format!(
                        "the refresh did not finish within the read timeout of {}{last}; it goes on in the background, try again later",
                        humantime::format_duration(bound)
                    ),
                })
            }
        }
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
        let mut view = View::of(
            Arc::from("c"),
            &cred,
            &mut Interner::default(),
            Arc::from(Vec::new()),
        );
        view.next_refresh_at = next;
        view.edit_notes(|n| n.paused = paused.then(|| "x".to_string()));
        view
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
