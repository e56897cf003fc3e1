//! [`RefresherHandle`]: the cheap, cloneable way every other task talks to
//! the refresher. Reads of fresh tokens are served from the published views
//! without asking the owner; everything else is a [`Command`] with a
//! `oneshot` reply.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::request::{Command, Reply};
use super::tally::summary;
use super::{ExchangeRequest, NewCredential, RefreshError, View};
use crate::access::Policy;
use crate::config::{Config, GitHost, GitHosts, ProviderConfig};
use crate::provider::DpopKey;
use crate::store::Store;
use crate::token::{duration_ms, now_ms};

/// How long a caller waits for the owner before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Cheap, cloneable handle for talking to the owner and reading its views.
/// The server clones it for every request (axum's `State`), so a clone is
/// one reference count: cloning each part would touch a cache line shared
/// by every worker several times per request (and take the cancellation
/// token's lock).
#[derive(Clone)]
pub(crate) struct RefresherHandle {
    shared: Arc<Shared>,
}

impl std::ops::Deref for RefresherHandle {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl RefresherHandle {
    pub(super) fn new(shared: Shared) -> RefresherHandle {
        RefresherHandle {
            shared: Arc::new(shared),
        }
    }
}

/// What every clone of a [`RefresherHandle`] shares.
pub(crate) struct Shared {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) published: Arc<DashMap<Arc<str>, Arc<View>>>,
    pub(super) settings: Arc<LiveSettings>,
    pub(super) logins: Arc<super::Logins>,
    /// For revocations, which the handle sends itself: the owner never
    /// awaits a provider.
    pub(super) client: crate::provider::ProviderClient,
    /// For the one read that skips the owner: a credential's DPoP key.
    pub(super) store: Store,
    /// Outputs subscribe here; weak, so the channel closes with the owner.
    pub(super) updates: broadcast::WeakSender<super::Update>,
    /// Fires at shutdown, so long-lived outputs end first.
    pub(super) cancel: CancellationToken,
}

/// The configuration handles read directly, kept current by the owner on
/// reload.
pub(crate) struct LiveSettings {
    /// Who administers.
    policy: RwLock<Policy>,
    /// `daemon.read_timeout` in ms.
    read_timeout_ms: AtomicU64,
    /// The providers, for what the server answers about them (`tokend
    /// login`'s authorization URL) without asking the owner.
    providers: RwLock<BTreeMap<String, Arc<ProviderConfig>>>,
    /// The git hosts mapped to credentials, for `tokend git-credential`.
    git_hosts: RwLock<GitHosts>,
    /// `daemon.metrics_credential_limit`.
    metrics_credential_limit: AtomicUsize,
}

impl LiveSettings {
    /// The settings of `config`.
    pub(crate) fn new(config: &Config) -> LiveSettings {
        LiveSettings {
            policy: RwLock::new(Policy::for_this_process(config.daemon.admin_gid)),
            read_timeout_ms: AtomicU64::new(read_timeout_ms(config)),
            providers: RwLock::new(config.providers.clone()),
            git_hosts: RwLock::new(config.git_hosts.clone()),
            metrics_credential_limit: AtomicUsize::new(config.daemon.metrics_credential_limit),
        }
    }

    /// Takes the settings of a reloaded `config`.
    pub(crate) fn update(&self, config: &Config) {
        if let Ok(mut policy) = self.policy.write() {
            *policy = Policy::for_this_process(config.daemon.admin_gid);
        }
        self.read_timeout_ms
            .store(read_timeout_ms(config), Ordering::Relaxed);
        if let Ok(mut providers) = self.providers.write() {
            *providers = config.providers.clone();
        }
        if let Ok(mut git_hosts) = self.git_hosts.write() {
            *git_hosts = config.git_hosts.clone();
        }
        self.metrics_credential_limit
            .store(config.daemon.metrics_credential_limit, Ordering::Relaxed);
    }
}

/// Whether a token read of `view` is answered from it now, without asking
/// the owner: its token is valid for at least `min_valid` more.
pub(crate) fn is_fresh(view: &View, min_valid: Duration) -> bool {
    view.valid_token(now_ms(), duration_ms(min_valid)).is_some()
}

fn read_timeout_ms(config: &Config) -> u64 {
    u64::try_from(duration_ms(config.daemon.read_timeout)).unwrap_or(0)
}

impl RefresherHandle {
    /// Who administers (as of the last configuration load).
    pub(crate) fn policy(&self) -> Policy {
        self.settings
            .policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// A provider's configuration (as of the last configuration load).
    pub(crate) fn provider(&self, name: &str) -> Option<Arc<ProviderConfig>> {
        let providers = self
            .settings
            .providers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        providers.get(name).cloned()
    }

    /// The mapping for a git host and path (as of the last configuration
    /// load).
    pub(crate) fn git_host(&self, host: &str, path: Option<&str>) -> Option<GitHost> {
        let git_hosts = self
            .settings
            .git_hosts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        git_hosts.lookup(host, path).cloned()
    }

    /// The current view of one credential, without asking the owner.
    pub(crate) fn view(&self, name: &str) -> Option<Arc<View>> {
        self.published.get(name).map(|v| Arc::clone(v.value()))
    }

    /// Every credential's view, by name.
    pub(crate) fn list(&self) -> Vec<Arc<View>> {
        let mut all: Vec<_> = self
            .published
            .iter()
            .map(|v| Arc::clone(v.value()))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The DPoP key of credential `name`, read from the database: keys
    /// are not kept in memory (as refresh tokens are not), so a proof
    /// costs one read by primary key. Its private half goes no further
    /// than the proof it signs. `NotDpop` if it has none.
    pub(crate) async fn dpop_key(&self, name: &str) -> Result<DpopKey, RefreshError> {
        self.store
            .load_dpop_key(name)
            .await?
            .ok_or_else(|| RefreshError::NotDpop(name.to_string()))
    }

    /// Every new token, state change and removal from now on; `None` once
    /// the owner has stopped. Subscribe before reading the current view, so
    /// nothing between the read and the first update is missed.
    pub(crate) fn subscribe(&self) -> Option<broadcast::Receiver<super::Update>> {
        if self.cancel.is_cancelled() {
            return None;
        }
        self.updates.upgrade().map(|tx| tx.subscribe())
    }

    /// Fires when the daemon shuts down.
    pub(crate) fn shutdown(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The status line, from every published view (one pass, no sorting).
    pub(crate) fn summary(&self) -> String {
        let views: Vec<Arc<View>> = self
            .published
            .iter()
            .map(|v| Arc::clone(v.value()))
            .collect();
        summary(views.iter().map(|v| &**v), now_ms())
    }

    /// The metrics page, with the credentials' families computed from
    /// every published view now.
    pub(crate) fn metrics(
        &self,
        format: crate::metrics::Format,
        audience: crate::metrics::Audience,
    ) -> String {
        let views: Vec<Arc<View>> = self
            .published
            .iter()
            .map(|v| Arc::clone(v.value()))
            .collect();
        let limit = match audience {
            crate::metrics::Audience::Administrators => self
                .settings
                .metrics_credential_limit
                .load(Ordering::Relaxed),
            crate::metrics::Audience::AnyLocalUser => 0,
        };
        crate::metrics::render(&views, limit, now_ms(), format)
    }

    /// Number of credentials.
    pub(crate) fn len(&self) -> usize {
        self.published.len()
    }

    /// A token valid for at least `min_valid`. Served from the published view
    /// when it is fresh enough; otherwise the owner refreshes first (joining a
    /// refresh already in flight or scheduled) if its schedule allows, and
    /// the caller waits at most `daemon.read_timeout` for it.
    pub(crate) async fn token(
        &self,
        name: &str,
        min_valid: Duration,
    ) -> Result<Arc<View>, RefreshError> {
        if let Some(view) = self.view(name) {
            if is_fresh(&view, min_valid) {
                return Ok(view);
            }
        }
        let min_valid_ms = duration_ms(min_valid);
        let bound = Duration::from_millis(self.settings.read_timeout_ms.load(Ordering::Relaxed));
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
                    .and_then(|v| v.extras().last_error.clone())
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
    pub(crate) async fn refresh_now(&self, name: &str) -> Result<Arc<View>, RefreshError> {
        self.ask(|reply| Command::RefreshNow {
            name: name.to_string(),
            reply,
        })
        .await
    }

    /// Adds or replaces a credential and waits for its first refresh attempt.
    pub(crate) async fn put(&self, new: NewCredential) -> Result<Arc<View>, RefreshError> {
        self.ask(|reply| Command::Put { new, reply }).await
    }

    /// Creates a credential from an authorization code.
    pub(crate) async fn exchange(&self, req: ExchangeRequest) -> Result<Arc<View>, RefreshError> {
        self.ask(|reply| Command::Exchange { req, reply }).await
    }

    /// Starts a device login and answers with the codes to show the user;
    /// the daemon then polls on its own.
    pub(crate) async fn device_login(
        &self,
        req: super::DeviceLoginRequest,
    ) -> Result<super::LoginView, RefreshError> {
        self.ask(|reply| Command::DeviceLogin { req, reply }).await
    }

    /// The device logins, pending or recently finished.
    pub(crate) fn logins(&self) -> &super::Logins {
        &self.logins
    }

    /// Applies a new, already validated configuration: changed providers take
    /// effect at once, credentials of a removed provider pause, paused ones
    /// whose provider is back (or fixed) resume. Tokens are untouched.
    pub(crate) async fn reload(&self, config: Arc<Config>) -> Result<(), RefreshError> {
        self.ask(|reply| Command::Reload { config, reply }).await
    }

    /// Deletes a credential.
    pub(crate) async fn remove(&self, name: &str) -> Result<(), RefreshError> {
        self.ask(|reply| Command::Remove {
            name: name.to_string(),
            reply,
        })
        .await
    }

    pub(super) async fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, RefreshError> {
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
