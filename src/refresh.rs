//! The refresher: the one owner of live credential state.
//!
//! A single task ([`Refresher::run`]) holds every credential, decides when
//! each is refreshed, and publishes an immutable [`View`] of each into a
//! concurrent map that the socket API reads without waiting on anyone. Other
//! tasks talk to it through a [`RefresherHandle`] (bounded channel, `oneshot`
//! replies).
//!
//! The owner never awaits a token endpoint: each refresh runs as its own task
//! (at most one per credential, a bounded number overall) which records the
//! attempt durably, calls the provider, commits the outcome to the store
//! (guarded by the credential's generation, so a replaced or removed
//! credential is never overwritten) and only then reports back. The owner
//! publishes new tokens only after that commit, so a rotated refresh token is
//! always on disk before the access token that came with it is served.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ProviderConfig};
use crate::credential::{Credential, State};
use crate::provider::{Failure, FailureKind, Grant, ProviderClient};
use crate::store::{Store, StoreError};
use crate::token::{backoff, expires_at_ms, now_ms, Secret};

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

type Reply<T> = oneshot::Sender<Result<T, RefreshError>>;

/// How long a caller waits for the owner before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(60);
/// The longest single sleep: wall time is re-read at least this often, so
/// suspend/resume or a clock jump cannot make a refresh late.
const MAX_SLEEP_MS: i64 = 60_000;

enum Command {
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
}

/// Results reported to the owner by the tasks it started.
enum Report {
    Refreshed {
        cred: Credential,
        saved: bool,
    },
    Failed {
        cred: Credential,
        failure: Failure,
    },
    /// The credential was replaced or removed while the job ran.
    Superseded,
    Exchanged {
        result: Result<Credential, Failure>,
        reply: Reply<Arc<View>>,
    },
    Persisted {
        name: String,
        generation: i64,
    },
}

/// What a waiter wants from the next refresh attempt.
enum Waiter {
    /// A token valid for at least this long.
    Token {
        min_valid_ms: i64,
        reply: Reply<Arc<View>>,
    },
    /// The outcome of the attempt: an error if it failed.
    Attempt { reply: Reply<Arc<View>> },
    /// The credential's view after the attempt, whatever happened.
    Settled { reply: Reply<Arc<View>> },
}

struct Entry {
    cred: Credential,
    provider: Option<Arc<ProviderConfig>>,
    paused: Option<String>,
    in_flight: bool,
    /// New tokens are held in memory because committing them failed.
    unsaved: bool,
    next_at: Option<i64>,
    attempt: u32,
    waiters: Vec<Waiter>,
}

/// Cheap, cloneable handle for talking to the owner and reading its views.
#[derive(Clone)]
pub struct RefresherHandle {
    tx: mpsc::Sender<Command>,
    published: Arc<DashMap<String, Arc<View>>>,
}

impl RefresherHandle {
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

/// The owner task's state.
pub struct Refresher {
    config: Arc<Config>,
    store: Store,
    client: ProviderClient,
    entries: HashMap<String, Entry>,
    schedule: BTreeSet<(i64, String)>,
    /// Providers that asked us (Retry-After) to stay away until then.
    blocked_until: HashMap<String, i64>,
    published: Arc<DashMap<String, Arc<View>>>,
    commands: mpsc::Receiver<Command>,
    reports_tx: mpsc::UnboundedSender<(String, i64, Report)>,
    reports: mpsc::UnboundedReceiver<(String, i64, Report)>,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Refresher {
    /// Builds the owner from the stored credentials and returns it with its
    /// handle. Call [`Refresher::run`] on a task of its own.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        client: ProviderClient,
        creds: Vec<Credential>,
        cancel: CancellationToken,
    ) -> (Refresher, RefresherHandle) {
        let (tx, commands) = mpsc::channel(1024);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let published = Arc::new(DashMap::new());
        let mut r = Refresher {
            permits: Arc::new(Semaphore::new(config.daemon.max_concurrent_refreshes)),
            config,
            store,
            client,
            entries: HashMap::new(),
            schedule: BTreeSet::new(),
            blocked_until: HashMap::new(),
            published: Arc::clone(&published),
            commands,
            reports_tx,
            reports,
            tasks: TaskTracker::new(),
            cancel,
        };
        let now = now_ms();
        for cred in creds {
            r.load(cred, now);
        }
        (r, RefresherHandle { tx, published })
    }

    fn load(&mut self, cred: Credential, now: i64) {
        let name = cred.name.clone();
        if cred.refresh_started_at.is_some() && cred.state == State::Active {
            tracing::warn!(
                credential = %name,
                provider = %cred.provider,
                event = "refresh_interrupted",
                "a refresh was in flight when tokend last stopped; retrying with the refresh token on record"
            );
        }
        let entry = self.entry_for(cred);
        let due = match (&entry.paused, entry.cred.state) {
            (None, State::Active) if entry.cred.refresh_started_at.is_some() => Some(now),
            (None, State::Active) => Some(self.next_refresh_at(&entry.cred, now)),
            _ => None,
        };
        self.entries.insert(name.clone(), entry);
        if let Some(at) = due {
            self.set_schedule(&name, at);
        }
        self.publish(&name);
    }

    fn entry_for(&self, cred: Credential) -> Entry {
        let provider = self.config.providers.get(&cred.provider).cloned();
        let paused = provider.is_none().then(|| {
            format!(
                "provider `{}` is not in the configuration; add it back and restart tokend",
                cred.provider
            )
        });
        Entry {
            cred,
            provider,
            paused,
            in_flight: false,
            unsaved: false,
            next_at: None,
            attempt: 0,
            waiters: Vec::new(),
        }
    }

    /// When a credential holding a current token should next be refreshed.
    fn next_refresh_at(&self, cred: &Credential, now: i64) -> i64 {
        next_refresh_at(&self.config.daemon.timing, cred, now)
    }
}

/// When a credential holding a current token should next be refreshed.
fn next_refresh_at(timing: &crate::token::RefreshTiming, cred: &Credential, now: i64) -> i64 {
    let Some(expires_at) = cred.expires_at.filter(|_| cred.access_token.is_some()) else {
        return now;
    };
    if cred.refresh_token.is_none() {
        // Nothing to refresh with: look again when the token dies, to
        // mark the credential as needing re-authorization.
        return expires_at;
    }
    let issued = cred.last_refresh_at.unwrap_or(cred.updated_at);
    timing.refresh_at_ms(issued, expires_at, rand::random::<f64>())
}

impl Refresher {
    /// Runs until cancelled, then waits (bounded) for in-flight refreshes.
    pub async fn run(mut self) {
        loop {
            let now = now_ms();
            self.start_due(now);
            let sleep_ms = self
                .schedule
                .first()
                .map_or(MAX_SLEEP_MS, |(at, _)| (at - now).clamp(0, MAX_SLEEP_MS));
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some((name, generation, report)) = self.reports.recv() => {
                    self.on_report(&name, generation, report).await;
                }
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c).await,
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(mut self) {
        for entry in self.entries.values_mut() {
            for w in entry.waiters.drain(..) {
                w.answer(Err(RefreshError::ShuttingDown));
            }
        }
        self.tasks.close();
        let in_flight = self.tasks.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for in-flight refreshes to finish");
        }
        if tokio::time::timeout(self.config.daemon.shutdown_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight refreshes did not finish within {:?}; they will be retried at next start",
                self.config.daemon.shutdown_timeout
            );
        }
    }

    fn start_due(&mut self, now: i64) {
        while let Some((at, name)) = self.schedule.first().cloned() {
            if at > now {
                break;
            }
            self.schedule.pop_first();
            if let Some(e) = self.entries.get_mut(&name) {
                e.next_at = None;
            }
            self.start_refresh(&name, now);
        }
    }

    fn set_schedule(&mut self, name: &str, at: i64) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if let Some(old) = e.next_at.take() {
            self.schedule.remove(&(old, name.to_string()));
        }
        e.next_at = Some(at);
        self.schedule.insert((at, name.to_string()));
    }

    fn unschedule(&mut self, name: &str) {
        if let Some(old) = self.entries.get_mut(name).and_then(|e| e.next_at.take()) {
            self.schedule.remove(&(old, name.to_string()));
        }
    }

    fn publish(&self, name: &str) {
        if let Some(e) = self.entries.get(name) {
            self.published.insert(name.to_string(), Arc::new(e.view()));
        }
    }

    /// Starts a refresh job unless one is in flight or the provider asked us
    /// to wait, in which case the refresh is scheduled for later.
    fn start_refresh(&mut self, name: &str, now: i64) {
        let Some(e) = self.entries.get(name) else {
            return;
        };
        if e.in_flight || e.unsaved {
            return;
        }
        let Some(provider) = e.provider.clone() else {
            let reason = e.paused.clone().unwrap_or_default();
            self.answer_all(name, |n| RefreshError::Paused {
                name: n.to_string(),
                reason: reason.clone(),
            });
            return;
        };
        if let Some(&until) = self.blocked_until.get(&provider.name).filter(|u| **u > now) {
            self.set_schedule(name, until);
            return;
        }
        self.unschedule(name);
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        e.in_flight = true;
        let job = RefreshJob {
            store: self.store.clone(),
            client: self.client.clone(),
            provider,
            cred: e.cred.clone(),
            permits: Arc::clone(&self.permits),
        };
        let reports = self.reports_tx.clone();
        let generation = e.cred.generation;
        let name = name.to_string();
        self.publish(&name);
        self.tasks.spawn(async move {
            let report = job.run().await;
            let _ = reports.send((name, generation, report));
        });
    }

    fn answer_all(&mut self, name: &str, err: impl Fn(&str) -> RefreshError) {
        if let Some(e) = self.entries.get_mut(name) {
            for w in e.waiters.drain(..) {
                w.answer(Err(err(name)));
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        let now = now_ms();
        match command {
            Command::Ensure {
                name,
                min_valid_ms,
                reply,
            } => self.ensure(
                &name,
                now,
                Waiter::Token {
                    min_valid_ms,
                    reply,
                },
                false,
            ),
            Command::RefreshNow { name, reply } => {
                self.ensure(&name, now, Waiter::Attempt { reply }, true)
            }
            Command::Put { new, reply } => {
                let result = self.put(new, now).await;
                match result {
                    Ok(name) => self.ensure(&name, now, Waiter::Settled { reply }, false),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Exchange { req, reply } => self.exchange(req, reply),
            Command::Remove { name, reply } => {
                let _ = reply.send(self.remove(&name).await);
            }
        }
    }

    /// Answers `waiter` from the current token if it is good enough, else
    /// queues it on the next refresh, starting one if needed.
    fn ensure(&mut self, name: &str, now: i64, waiter: Waiter, force: bool) {
        let Some(e) = self.entries.get_mut(name) else {
            waiter.answer(Err(RefreshError::NotFound(name.to_string())));
            return;
        };
        if let Waiter::Token { min_valid_ms, .. } = &waiter {
            if e.cred.valid_token(now, *min_valid_ms).is_some() {
                waiter.answer(Ok(Arc::new(e.view())));
                return;
            }
        }
        if let Waiter::Settled { .. } = &waiter {
            if e.cred.valid_token(now, 0).is_some() {
                waiter.answer(Ok(Arc::new(e.view())));
                return;
            }
        }
        if !force {
            if let Err(err) = e.blocked_reason() {
                waiter.answer(Err(err));
                return;
            }
        } else if e.provider.is_some() {
            e.paused = None;
        }
        e.waiters.push(waiter);
        self.start_refresh(name, now);
    }

    async fn put(&mut self, new: NewCredential, now: i64) -> Result<String, RefreshError> {
        if !self.config.providers.contains_key(&new.provider) {
            return Err(RefreshError::UnknownProvider(new.provider));
        }
        let mut cred = Credential::new(&new.name, &new.provider, Some(new.refresh_token), now);
        cred.scope = new.scope;
        if let Some((token, secs)) = new.access_token {
            cred.access_token = Some(token);
            cred.expires_at = Some(now + secs as i64 * 1000);
            cred.lifetime_source = Some(crate::token::LifetimeSource::ExpiresIn);
            cred.last_refresh_at = Some(now);
        }
        self.replace(cred).await?;
        tracing::info!(credential = %new.name, provider = %new.provider, event = "credential_added", "credential stored");
        Ok(new.name)
    }

    /// Stores `cred` as a new generation, carrying waiters over from the
    /// credential it replaces, and schedules it.
    async fn replace(&mut self, mut cred: Credential) -> Result<(), RefreshError> {
        let now = now_ms();
        if let Some(old) = self.entries.get(&cred.name) {
            cred.created_at = old.cred.created_at;
        }
        cred.generation = self.store.replace(&cred).await?;
        let name = cred.name.clone();
        self.unschedule(&name);
        let mut entry = self.entry_for(cred);
        if let Some(old) = self.entries.remove(&name) {
            entry.waiters = old.waiters;
        }
        let due = self.next_refresh_at(&entry.cred, now);
        self.entries.insert(name.clone(), entry);
        self.set_schedule(&name, due);
        self.publish(&name);
        Ok(())
    }

    fn exchange(&mut self, req: ExchangeRequest, reply: Reply<Arc<View>>) {
        let Some(provider) = self.config.providers.get(&req.provider).cloned() else {
            let _ = reply.send(Err(RefreshError::UnknownProvider(req.provider)));
            return;
        };
        let client = self.client.clone();
        let reports = self.reports_tx.clone();
        let permits = Arc::clone(&self.permits);
        self.tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let sent_at = now_ms();
            let grant = Grant::Exchange {
                code: req.code,
                redirect_uri: req.redirect_uri,
                code_verifier: req.code_verifier,
            };
            let result = client.request(&provider, &grant).await.map(|set| {
                let (expires_at, source) = expires_at_ms(&set, sent_at, provider.default_lifetime);
                let mut cred = Credential::new(&req.name, &provider.name, None, sent_at);
                cred.apply(set, sent_at, expires_at, source);
                cred
            });
            let _ = reports.send((req.name, 0, Report::Exchanged { result, reply }));
        });
    }

    async fn remove(&mut self, name: &str) -> Result<(), RefreshError> {
        if !self.entries.contains_key(name) {
            return Err(RefreshError::NotFound(name.to_string()));
        }
        self.store.delete(name).await?;
        self.unschedule(name);
        if let Some(e) = self.entries.remove(name) {
            for w in e.waiters {
                w.answer(Err(RefreshError::NotFound(name.to_string())));
            }
        }
        self.published.remove(name);
        tracing::info!(credential = %name, event = "credential_removed", "credential removed");
        Ok(())
    }

    async fn on_report(&mut self, name: &str, generation: i64, report: Report) {
        let now = now_ms();
        match report {
            Report::Exchanged { result, reply } => {
                let outcome = match result {
                    Ok(cred) => {
                        if cred.refresh_token.is_none() {
                            tracing::warn!(credential = %name, provider = %cred.provider, event = "no_refresh_token",
                                "the provider issued no refresh token (was offline access requested?); the access token is served until it expires, then the credential needs re-authorization");
                        }
                        match self.replace(cred).await {
                            Ok(()) => {
                                tracing::info!(credential = %name, event = "credential_exchanged", "authorization code exchanged");
                                self.entries
                                    .get(name)
                                    .map(|e| Arc::new(e.view()))
                                    .ok_or_else(|| RefreshError::NotFound(name.to_string()))
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(failure) => Err(RefreshError::ExchangeFailed(failure)),
                };
                let _ = reply.send(outcome);
            }
            Report::Persisted { name, generation } => {
                let timing = self.config.daemon.timing.clone();
                if let Some(e) = self
                    .entries
                    .get_mut(&name)
                    .filter(|e| e.cred.generation == generation)
                {
                    e.unsaved = false;
                    tracing::info!(credential = %name, event = "commit_recovered", "tokens held in memory are now committed");
                    let due = next_refresh_at(&timing, &e.cred, now);
                    self.set_schedule(&name, due);
                }
            }
            Report::Superseded => {
                if let Some(e) = self
                    .entries
                    .get_mut(name)
                    .filter(|e| e.cred.generation == generation)
                {
                    e.in_flight = false;
                }
            }
            Report::Refreshed { cred, saved } => {
                self.on_refreshed(name, generation, cred, saved, now)
            }
            Report::Failed { cred, failure } => {
                self.on_failed(name, generation, cred, failure, now)
            }
        }
    }

    fn current(&mut self, name: &str, generation: i64) -> Option<&mut Entry> {
        self.entries
            .get_mut(name)
            .filter(|e| e.cred.generation == generation)
    }

    fn on_refreshed(
        &mut self,
        name: &str,
        generation: i64,
        cred: Credential,
        saved: bool,
        now: i64,
    ) {
        let due = self.next_refresh_at(&cred, now);
        let store = self.store.clone();
        let reports = self.reports_tx.clone();
        let retry = (
            self.config.daemon.retry_initial,
            self.config.daemon.retry_max,
        );
        let Some(e) = self.current(name, generation) else {
            return;
        };
        e.in_flight = false;
        e.attempt = 0;
        e.paused = None;
        let expires_in = (cred.expires_at.unwrap_or(now) - now) / 1000;
        tracing::info!(
            credential = %name,
            provider = %cred.provider,
            event = "refreshed",
            access_token = %cred.access_token.as_ref().map(Secret::fingerprint).unwrap_or_default(),
            expires_in,
            "access token refreshed"
        );
        e.cred = cred;
        let unsaved = (!saved).then(|| e.cred.clone());
        e.unsaved = !saved;
        let waiters = std::mem::take(&mut e.waiters);
        let view = Arc::new(e.view());
        for w in waiters {
            w.answer_after(&view, now, None);
        }
        if let Some(cred) = unsaved {
            tracing::error!(credential = %name, event = "commit_failed",
                "could not commit the new tokens to the database; serving them from memory and retrying the commit (check disk space and permissions)");
            self.tasks
                .spawn(persist_until_saved(store, cred, reports, retry));
        }
        if saved {
            self.set_schedule(name, due);
        }
        self.publish(name);
    }

    fn on_failed(
        &mut self,
        name: &str,
        generation: i64,
        cred: Credential,
        failure: Failure,
        now: i64,
    ) {
        let (retry_initial, retry_max) = (
            self.config.daemon.retry_initial,
            self.config.daemon.retry_max,
        );
        if let (Some(ra), FailureKind::Transient) = (failure.retry_after, failure.kind) {
            self.blocked_until
                .insert(cred.provider.clone(), now + ra.as_millis() as i64);
        }
        let Some(e) = self.current(name, generation) else {
            return;
        };
        e.in_flight = false;
        e.cred = cred;
        let mut next = None;
        match failure.kind {
            FailureKind::Reauth => {
                tracing::error!(
                    credential = %name, provider = %e.cred.provider, event = "needs_reauth",
                    error = %failure.message,
                    "the provider rejected the refresh token; credential needs re-authorization: run `tokend add {name} --provider {}` with a new refresh token, or `tokend exchange`",
                    e.cred.provider
                );
            }
            FailureKind::Misconfigured => {
                e.paused = Some(format!(
                    "{}; fix providers.{} in the configuration and restart, or run `tokend refresh {name}`",
                    failure.message, e.cred.provider
                ));
                tracing::error!(
                    credential = %name, provider = %e.cred.provider, event = "provider_misconfigured",
                    error = %failure.message,
                    "the provider rejected the client itself; refreshing is paused until the provider configuration is fixed"
                );
            }
            FailureKind::Transient => {
                let delay = backoff(e.attempt, retry_initial, retry_max, rand::random::<f64>());
                e.attempt = e.attempt.saturating_add(1);
                let mut at = now + delay.as_millis() as i64;
                // Never let the current token die without having tried again.
                if let Some(exp) = e.cred.expires_at.filter(|exp| *exp > now) {
                    at = at.min(exp);
                }
                if let Some(ra) = failure.retry_after {
                    at = at.max(now + ra.as_millis() as i64);
                }
                tracing::warn!(
                    credential = %name, provider = %e.cred.provider, event = "refresh_failed",
                    error = %failure.message, attempt = e.attempt, retry_in_ms = at - now,
                    "refresh failed; will retry"
                );
                next = Some(at);
            }
        }
        let waiters = std::mem::take(&mut e.waiters);
        let view = Arc::new(e.view());
        let provider = e.cred.provider.clone();
        for w in waiters {
            w.answer_after(&view, now, Some((&failure, &provider)));
        }
        if let Some(at) = next {
            self.set_schedule(name, at);
        }
        self.publish(name);
    }
}

impl Entry {
    fn view(&self) -> View {
        View {
            cred: self.cred.clone(),
            paused: self.paused.clone(),
            next_refresh_at: self.next_at,
            refreshing: self.in_flight,
        }
    }

    /// Why this credential will not be refreshed on its own, if it will not.
    fn blocked_reason(&self) -> Result<(), RefreshError> {
        if self.cred.state == State::NeedsReauth {
            return Err(RefreshError::NeedsReauth {
                name: self.cred.name.clone(),
                provider: self.cred.provider.clone(),
                reason: self.cred.last_error.clone().unwrap_or_default(),
            });
        }
        if let Some(reason) = &self.paused {
            return Err(RefreshError::Paused {
                name: self.cred.name.clone(),
                reason: reason.clone(),
            });
        }
        Ok(())
    }
}

impl Waiter {
    fn answer(self, result: Result<Arc<View>, RefreshError>) {
        let reply = match self {
            Waiter::Token { reply, .. } | Waiter::Attempt { reply } | Waiter::Settled { reply } => {
                reply
            }
        };
        let _ = reply.send(result);
    }

    /// Answers after a refresh attempt; `failure` is set if it failed.
    fn answer_after(self, view: &Arc<View>, now: i64, failure: Option<(&Failure, &str)>) {
        let name = view.cred.name.clone();
        let error = |f: &Failure, provider: &str| match f.kind {
            FailureKind::Reauth => RefreshError::NeedsReauth {
                name: name.clone(),
                provider: provider.to_string(),
                reason: f.message.clone(),
            },
            FailureKind::Misconfigured => RefreshError::Paused {
                name: name.clone(),
                reason: f.message.clone(),
            },
            FailureKind::Transient => RefreshError::Unavailable {
                name: name.clone(),
                reason: f.message.clone(),
            },
        };
        match self {
            Waiter::Settled { reply } => {
                let _ = reply.send(Ok(Arc::clone(view)));
            }
            Waiter::Attempt { reply } => {
                let _ = reply.send(match failure {
                    None => Ok(Arc::clone(view)),
                    Some((f, p)) => Err(error(f, p)),
                });
            }
            Waiter::Token {
                min_valid_ms,
                reply,
            } => {
                let result = if view.cred.valid_token(now, min_valid_ms).is_some() {
                    Ok(Arc::clone(view))
                } else if let Some((f, p)) = failure {
                    Err(error(f, p))
                } else {
                    let secs = (view.cred.expires_at.unwrap_or(now) - now) / 1000;
                    Err(RefreshError::Unavailable {
                        name: name.clone(),
                        reason: format!(
                            "the provider issued a token valid for only {secs}s, less than the {}s asked for",
                            min_valid_ms / 1000
                        ),
                    })
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// One refresh: record the attempt, call the provider, commit the outcome.
struct RefreshJob {
    store: Store,
    client: ProviderClient,
    provider: Arc<ProviderConfig>,
    cred: Credential,
    permits: Arc<Semaphore>,
}

impl RefreshJob {
    async fn run(mut self) -> Report {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Report::Superseded;
        };
        let Some(refresh_token) = self.cred.refresh_token.clone() else {
            return self
                .fail(Failure {
                    kind: FailureKind::Reauth,
                    status: None,
                    error_code: None,
                    message:
                        "the provider never issued a refresh token and the access token has expired"
                            .into(),
                    retry_after: None,
                    outcome_unknown: false,
                })
                .await;
        };
        let sent_at = now_ms();
        match self
            .store
            .mark_refresh_started(&self.cred.name, self.cred.generation, sent_at)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Report::Superseded,
            Err(e) => {
                // Without the durable intent we do not send: the refresh token
                // on record stays the one the provider knows.
                return self.fail(store_failure(&e)).await;
            }
        }
        self.cred.refresh_started_at = Some(sent_at);
        match self
            .client
            .request(&self.provider, &Grant::Refresh { refresh_token })
            .await
        {
            Ok(set) => {
                let (expires_at, source) =
                    expires_at_ms(&set, sent_at, self.provider.default_lifetime);
                self.cred.apply(set, sent_at, expires_at, source);
                let saved = match self.store.save_outcome(&self.cred).await {
                    Ok(true) => true,
                    Ok(false) => return Report::Superseded,
                    Err(e) => {
                        tracing::error!(credential = %self.cred.name, error = %e, "commit of refreshed tokens failed");
                        false
                    }
                };
                Report::Refreshed {
                    cred: self.cred,
                    saved,
                }
            }
            Err(failure) => self.fail(failure).await,
        }
    }

    async fn fail(mut self, failure: Failure) -> Report {
        self.cred.last_error = Some(failure.message.clone());
        self.cred.refresh_started_at = None;
        self.cred.updated_at = now_ms();
        if failure.kind == FailureKind::Reauth {
            self.cred.state = State::NeedsReauth;
        }
        match self.store.save_outcome(&self.cred).await {
            Ok(false) => return Report::Superseded,
            Ok(true) => {}
            Err(e) => {
                tracing::error!(credential = %self.cred.name, error = %e, "could not record the refresh failure")
            }
        }
        Report::Failed {
            cred: self.cred,
            failure,
        }
    }
}

fn store_failure(e: &StoreError) -> Failure {
    Failure {
        kind: FailureKind::Transient,
        status: None,
        error_code: None,
        message: format!("not refreshing: {e}"),
        retry_after: None,
        outcome_unknown: false,
    }
}

/// Retries committing tokens that are only in memory until it works.
async fn persist_until_saved(
    store: Store,
    cred: Credential,
    reports: mpsc::UnboundedSender<(String, i64, Report)>,
    (base, cap): (Duration, Duration),
) {
    let mut attempt = 0;
    loop {
        tokio::time::sleep(backoff(attempt, base, cap, rand::random::<f64>())).await;
        attempt += 1;
        match store.save_outcome(&cred).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(credential = %cred.name, error = %e, attempt, "commit still failing")
            }
        }
    }
    let _ = reports.send((
        cred.name.clone(),
        cred.generation,
        Report::Persisted {
            name: cred.name,
            generation: cred.generation,
        },
    ));
}
