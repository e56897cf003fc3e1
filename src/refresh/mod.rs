//! The refresher: the one owner of live credential state.
//!
//! A single task ([`Refresher::run`]) holds every credential, decides when
//! each is refreshed, and publishes an immutable [`View`] of each into a
//! concurrent map that the socket API reads without waiting on anyone. Other
//! tasks talk to it through a [`RefresherHandle`] (bounded channel, `oneshot`
//! replies).
//!
//! The owner never awaits a token endpoint: each refresh runs as a [`job`]
//! (at most one per credential, bounded per provider and overall) which
//! records the attempt durably, calls the provider, commits the outcome and
//! only then reports back. New tokens are published only after that report,
//! so a rotated refresh token is on disk before the access token that came
//! with it is served. If the commit fails, the tokens are kept in memory,
//! served, and the commit is retried; no refresh ever sends a refresh token
//! older than the newest one held.

mod handle;
mod job;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use handle::{summary, ExchangeRequest, NewCredential, RefreshError, RefresherHandle, View};

use crate::config::{Config, ProviderConfig};
use crate::credential::{Credential, State};
use crate::event;
use crate::events::Kind;
use crate::provider::{Failure, FailureKind, Grant, ProviderClient};
use crate::store::Store;
use crate::token::{backoff, now_ms, LifetimeSource, Secret};
use handle::{Command, Reply};
use job::{Job, Outcome};

/// The longest single sleep: wall time is re-read at least this often, so
/// suspend/resume or a clock jump cannot make a refresh late.
const MAX_SLEEP_MS: i64 = 60_000;

/// Results reported to the owner by the tasks it started.
enum Report {
    Job {
        name: String,
        generation: i64,
        outcome: Outcome,
    },
    Exchanged {
        name: String,
        result: Result<Credential, Failure>,
        reply: Reply<Arc<View>>,
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
    /// Tokens newer than the database's are held here; commit retried.
    uncommitted: bool,
    /// When a refresh is due; `None` while none will happen on its own.
    refresh_at: Option<i64>,
    /// When to retry a failed commit.
    commit_retry_at: Option<i64>,
    /// The wake-up registered in the schedule: the earlier of the two above.
    next_at: Option<i64>,
    /// Consecutive transient refresh failures.
    attempt: u32,
    /// Consecutive failed commits.
    commit_attempt: u32,
    warning: Option<String>,
    readers: Vec<crate::access::Grant>,
    waiters: Vec<Waiter>,
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
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    global_permits: Arc<Semaphore>,
    provider_permits: HashMap<String, Arc<Semaphore>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Something changed since the service manager's status line was sent.
    status_dirty: std::cell::Cell<bool>,
    /// Shared with the handle: who administers.
    policy: Arc<std::sync::RwLock<crate::access::Policy>>,
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
        let provider_permits = provider_permits(&config);
        let policy = Arc::new(std::sync::RwLock::new(
            crate::access::Policy::for_this_process(config.daemon.admin_gid),
        ));
        let mut r = Refresher {
            policy: Arc::clone(&policy),
            global_permits: Arc::new(Semaphore::new(config.daemon.max_concurrent_refreshes)),
            provider_permits,
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
            status_dirty: std::cell::Cell::new(true),
        };
        let now = now_ms();
        for cred in creds {
            r.load(cred, now);
        }
        (
            r,
            RefresherHandle {
                tx,
                published,
                policy,
            },
        )
    }

    fn load(&mut self, cred: Credential, now: i64) {
        let name = cred.name.clone();
        let mut entry = self.entry_for(cred, now);
        if entry.cred.refresh_started_at.is_some() && entry.cred.state == State::Active {
            event!(
                warn,
                Kind::RefreshInterrupted,
                tokend_credential = %name,
                tokend_provider = %entry.cred.provider,
                "a refresh was in flight when tokend last stopped (or timed out after sending); retrying with the refresh token on record"
            );
            if entry.refresh_at.is_some() {
                entry.refresh_at = Some(now);
            }
        }
        if let Some(w) = &entry.warning {
            event!(warn, Kind::RefreshTokenExpiring, tokend_credential = %name, tokend_provider = %entry.cred.provider, "{w}");
        }
        self.entries.insert(name.clone(), entry);
        self.reschedule(&name);
        self.publish(&name);
    }

    fn entry_for(&self, cred: Credential, now: i64) -> Entry {
        let provider = self.config.providers.get(&cred.provider).cloned();
        let paused = provider.is_none().then(|| missing_provider(&cred.provider));
        let refresh_at = (paused.is_none() && cred.state == State::Active)
            .then(|| self.due_at(provider.as_deref(), &cred, now));
        Entry {
            warning: job::refresh_token_warning(provider.as_deref(), &cred, now),
            readers: self.config.readers(&cred.name, &cred.provider).to_vec(),
            cred,
            provider,
            paused,
            in_flight: false,
            uncommitted: false,
            refresh_at,
            commit_retry_at: None,
            next_at: None,
            attempt: 0,
            commit_attempt: 0,
            waiters: Vec::new(),
        }
    }

    fn due_at(&self, provider: Option<&ProviderConfig>, cred: &Credential, now: i64) -> i64 {
        job::refresh_due_at(
            &self.config.daemon.timing,
            provider,
            cred,
            now,
            rand::random::<f64>(),
        )
    }

    /// Runs until cancelled, then waits (bounded) for in-flight refreshes.
    ///
    /// This loop also pets the systemd watchdog: if it hangs, the pings stop
    /// and systemd restarts the daemon.
    pub async fn run(mut self) {
        let mut watchdog = crate::systemd::watchdog_interval().map(tokio::time::interval);
        let mut status = tokio::time::interval(Duration::from_secs(1));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                Some(report) = self.reports.recv() => self.on_report(report).await,
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c).await,
                    None => break,
                },
                _ = tick(&mut watchdog) => crate::systemd::watchdog(),
                _ = status.tick() => self.send_status(),
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            }
        }
        self.shutdown().await;
    }

    fn send_status(&self) {
        if self.status_dirty.replace(false) {
            let now = now_ms();
            let views: Vec<View> = self.entries.values().map(Entry::view).collect();
            crate::systemd::status(&summary(views.iter(), now));
        }
    }

    /// Applies a new configuration (see [`RefresherHandle::reload`]).
    fn reload(&mut self, config: Arc<Config>) {
        let now = now_ms();
        self.provider_permits = provider_permits(&config);
        if let Ok(mut policy) = self.policy.write() {
            *policy = crate::access::Policy::for_this_process(config.daemon.admin_gid);
        }
        if config.daemon.max_concurrent_refreshes != self.config.daemon.max_concurrent_refreshes {
            self.global_permits = Arc::new(Semaphore::new(config.daemon.max_concurrent_refreshes));
        }
        self.config = config;
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            let Some(old) = self.entries.remove(&name) else {
                continue;
            };
            let mut entry = self.entry_for(old.cred, now);
            // Keep what the reload does not change.
            entry.in_flight = old.in_flight;
            entry.uncommitted = old.uncommitted;
            entry.commit_retry_at = old.commit_retry_at;
            entry.commit_attempt = old.commit_attempt;
            entry.waiters = old.waiters;
            if old.paused.is_none() && entry.paused.is_none() && old.refresh_at.is_some() {
                // Unchanged standing: keep the schedule (and any backoff).
                entry.refresh_at = old.refresh_at;
                entry.attempt = old.attempt;
            }
            if let Some(at) = old.next_at {
                self.schedule.remove(&(at, name.clone()));
            }
            self.entries.insert(name.clone(), entry);
            self.reschedule(&name);
            self.publish(&name);
        }
    }

    async fn shutdown(mut self) {
        for entry in self.entries.values_mut() {
            for w in entry.waiters.drain(..) {
                w.answer(Err(RefreshError::ShuttingDown));
            }
            if entry.uncommitted {
                event!(error, Kind::CommitFailed, tokend_credential = %entry.cred.name, tokend_provider = %entry.cred.provider,
                    "stopping with tokens that could not be committed; the database holds an older refresh token");
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
            let Some(e) = self.entries.get_mut(&name) else {
                continue;
            };
            e.next_at = None;
            let refresh = e.refresh_at.is_some_and(|r| r <= now);
            if refresh || e.uncommitted {
                self.start_job(&name, refresh, now);
            }
            self.reschedule(&name);
        }
    }

    /// Registers the entry's next wake-up: its refresh or commit retry.
    fn reschedule(&mut self, name: &str) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if let Some(old) = e.next_at.take() {
            self.schedule.remove(&(old, name.to_string()));
        }
        if e.in_flight {
            return;
        }
        let retry = e.commit_retry_at.filter(|_| e.uncommitted);
        let next = match (e.refresh_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            e.next_at = Some(at);
            self.schedule.insert((at, name.to_string()));
        }
    }

    fn publish(&self, name: &str) {
        if let Some(e) = self.entries.get(name) {
            self.published.insert(name.to_string(), Arc::new(e.view()));
            self.status_dirty.set(true);
        }
    }

    fn provider_block(&self, provider: &str, now: i64) -> Option<i64> {
        self.blocked_until
            .get(provider)
            .copied()
            .filter(|until| *until > now)
    }

    /// Starts a job unless one is in flight: a refresh (which first retries
    /// any failed commit), or only the commit retry. A refresh for a provider
    /// in a Retry-After window is postponed to its end instead.
    fn start_job(&mut self, name: &str, refresh: bool, now: i64) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if e.in_flight {
            return;
        }
        let provider = e.provider.clone();
        if provider.is_none() {
            // Nothing can refresh it until a reload brings the provider back:
            // it must not stay scheduled (that would wake us in a loop).
            e.refresh_at = None;
            let reason = e
                .paused
                .get_or_insert_with(|| missing_provider(&e.cred.provider))
                .clone();
            self.answer_all(name, |n| RefreshError::Paused {
                name: n.to_string(),
                reason: reason.clone(),
            });
        }
        let refresh = refresh && provider.is_some();
        if let (true, Some(p)) = (refresh, &provider) {
            if let Some(until) = self.provider_block(&p.name, now) {
                if let Some(e) = self.entries.get_mut(name) {
                    e.refresh_at = Some(until);
                }
                self.reschedule(name);
                return;
            }
        }
        let per_provider = provider.as_ref().map_or_else(
            || Arc::new(Semaphore::new(1)),
            |p| self.permits_for(&p.name),
        );
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if !refresh && !e.uncommitted {
            self.reschedule(name);
            return;
        }
        e.in_flight = true;
        let job = Job {
            store: self.store.clone(),
            client: self.client.clone(),
            cred: e.cred.clone(),
            refresh,
            uncommitted: e.uncommitted,
            global: Arc::clone(&self.global_permits),
            per_provider,
            provider,
        };
        let generation = e.cred.generation;
        let reports = self.reports_tx.clone();
        let name = name.to_string();
        self.reschedule(&name);
        self.publish(&name);
        self.tasks.spawn(async move {
            let outcome = job.run().await;
            let _ = reports.send(Report::Job {
                name,
                generation,
                outcome,
            });
        });
    }

    fn permits_for(&self, provider: &str) -> Arc<Semaphore> {
        self.provider_permits
            .get(provider)
            .cloned()
            .unwrap_or_else(|| Arc::new(Semaphore::new(1)))
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
            Command::Put { new, reply } => match self.put(new, now).await {
                Ok(name) => self.ensure(&name, now, Waiter::Settled { reply }, false),
                Err(e) => reply.send(Err(e)).unwrap_or(()),
            },
            Command::Exchange { req, reply } => self.exchange(req, reply),
            Command::Remove { name, reply } => {
                let _ = reply.send(self.remove(&name).await);
            }
            Command::Reload { config, reply } => {
                self.reload(config);
                let _ = reply.send(Ok(()));
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
        let good_enough = match &waiter {
            Waiter::Token { min_valid_ms, .. } => e.cred.valid_token(now, *min_valid_ms).is_some(),
            Waiter::Settled { .. } => e.cred.valid_token(now, 0).is_some(),
            Waiter::Attempt { .. } => false,
        };
        if good_enough {
            waiter.answer(Ok(Arc::new(e.view())));
            return;
        }
        if !force {
            if let Err(err) = e.blocked_reason() {
                waiter.answer(Err(err));
                return;
            }
        } else if e.provider.is_some() {
            e.paused = None;
        }
        let blocked = e
            .provider
            .as_ref()
            .and_then(|p| self.blocked_until.get(&p.name))
            .copied()
            .filter(|until| *until > now && !e.in_flight);
        if let Some(until) = blocked {
            let view = Arc::new(e.view());
            let reason = format!(
                "the provider asked tokend (Retry-After) not to call it for another {}s",
                (until - now + 999) / 1000
            );
            match waiter {
                Waiter::Settled { reply } => reply.send(Ok(view)).unwrap_or(()),
                other => other.answer(Err(RefreshError::Unavailable {
                    name: name.to_string(),
                    reason,
                })),
            }
            return;
        }
        e.waiters.push(waiter);
        self.start_job(name, true, now);
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
            cred.lifetime_source = Some(LifetimeSource::ExpiresIn);
            cred.last_refresh_at = Some(now);
        }
        self.replace(cred).await?;
        event!(info, Kind::CredentialAdded, tokend_credential = %new.name, tokend_provider = %new.provider, "credential stored");
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
        let mut entry = self.entry_for(cred, now);
        if let Some(old) = self.entries.remove(&name) {
            if let Some(at) = old.next_at {
                self.schedule.remove(&(at, name.clone()));
            }
            entry.waiters = old.waiters;
        }
        self.entries.insert(name.clone(), entry);
        self.reschedule(&name);
        self.publish(&name);
        Ok(())
    }

    fn exchange(&mut self, req: ExchangeRequest, reply: Reply<Arc<View>>) {
        let Some(provider) = self.config.providers.get(&req.provider).cloned() else {
            let _ = reply.send(Err(RefreshError::UnknownProvider(req.provider)));
            return;
        };
        let permits = (
            Arc::clone(&self.global_permits),
            self.permits_for(&provider.name),
        );
        let client = self.client.clone();
        let reports = self.reports_tx.clone();
        self.tasks.spawn(async move {
            let grant = Grant::Exchange {
                code: req.code,
                redirect_uri: req.redirect_uri,
                code_verifier: req.code_verifier,
            };
            let result = job::exchange(client, provider, req.name.clone(), grant, permits).await;
            let _ = reports.send(Report::Exchanged {
                name: req.name,
                result,
                reply,
            });
        });
    }

    async fn remove(&mut self, name: &str) -> Result<(), RefreshError> {
        if !self.entries.contains_key(name) {
            return Err(RefreshError::NotFound(name.to_string()));
        }
        self.store.delete(name).await?;
        if let Some(e) = self.entries.remove(name) {
            if let Some(at) = e.next_at {
                self.schedule.remove(&(at, name.to_string()));
            }
            for w in e.waiters {
                w.answer(Err(RefreshError::NotFound(name.to_string())));
            }
        }
        self.published.remove(name);
        self.status_dirty.set(true);
        event!(info, Kind::CredentialRemoved, tokend_credential = %name, "credential removed");
        Ok(())
    }

    async fn on_report(&mut self, report: Report) {
        let now = now_ms();
        match report {
            Report::Exchanged {
                name,
                result,
                reply,
            } => {
                let outcome = match result {
                    Ok(cred) => self.store_exchanged(&name, cred).await,
                    Err(failure) => Err(RefreshError::ExchangeFailed(failure)),
                };
                let _ = reply.send(outcome);
            }
            Report::Job {
                name,
                generation,
                outcome,
            } => {
                let Some(e) = self
                    .entries
                    .get_mut(&name)
                    .filter(|e| e.cred.generation == generation)
                else {
                    return;
                };
                e.in_flight = false;
                match outcome {
                    Outcome::Superseded => {}
                    Outcome::Committed { ok } => self.on_committed(&name, ok, now),
                    Outcome::Refreshed { cred, committed } => {
                        self.on_refreshed(&name, cred, committed, now)
                    }
                    Outcome::Failed { cred, failure } => self.on_failed(&name, cred, failure, now),
                }
                self.reschedule(&name);
                self.publish(&name);
            }
        }
    }

    async fn store_exchanged(
        &mut self,
        name: &str,
        cred: Credential,
    ) -> Result<Arc<View>, RefreshError> {
        if cred.refresh_token.is_none() {
            event!(warn, Kind::NoRefreshToken, tokend_credential = %name, tokend_provider = %cred.provider,
                "the provider issued no refresh token (was offline access requested?); the access token is served until it expires, then the credential needs re-authorization");
        }
        self.replace(cred).await?;
        event!(info, Kind::CredentialExchanged, tokend_credential = %name, "authorization code exchanged");
        self.entries
            .get(name)
            .map(|e| Arc::new(e.view()))
            .ok_or_else(|| RefreshError::NotFound(name.to_string()))
    }

    fn on_committed(&mut self, name: &str, ok: bool, now: i64) {
        let (base, cap) = (
            self.config.daemon.retry_initial,
            self.config.daemon.retry_max,
        );
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if ok {
            e.uncommitted = false;
            e.commit_attempt = 0;
            e.commit_retry_at = None;
            event!(info, Kind::CommitRecovered, tokend_credential = %name, "tokens held in memory are now committed");
        } else {
            e.commit_retry_at = Some(now + commit_backoff(e, base, cap));
        }
    }

    fn on_refreshed(&mut self, name: &str, cred: Credential, committed: bool, now: i64) {
        let (base, cap) = (
            self.config.daemon.retry_initial,
            self.config.daemon.retry_max,
        );
        let provider = self.entries.get(name).and_then(|e| e.provider.clone());
        let due = self.due_at(provider.as_deref(), &cred, now);
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        let expires_in = (cred.expires_at.unwrap_or(now) - now) / 1000;
        event!(
            info,
            Kind::Refreshed,
            tokend_credential = %name,
            tokend_provider = %cred.provider,
            tokend_access_token = %cred.access_token.as_ref().map(Secret::fingerprint).unwrap_or_default(),
            tokend_expires_in = expires_in,
            "access token refreshed"
        );
        let warning = job::refresh_token_warning(provider.as_deref(), &cred, now);
        if warning.is_some() && warning != e.warning {
            event!(warn, Kind::RefreshTokenExpiring, tokend_credential = %name, tokend_provider = %cred.provider, "{}", warning.as_deref().unwrap_or_default());
        }
        e.warning = warning;
        e.cred = cred;
        e.attempt = 0;
        // A provider removed by a reload while this refresh ran stays removed.
        if e.provider.is_some() {
            e.paused = None;
            e.refresh_at = Some(due);
        }
        if committed {
            if e.uncommitted {
                event!(info, Kind::CommitRecovered, tokend_credential = %name, "tokens held in memory are now committed");
            }
            e.uncommitted = false;
            e.commit_attempt = 0;
            e.commit_retry_at = None;
        } else {
            event!(error, Kind::CommitFailed, tokend_credential = %name,
                "could not commit the new tokens to the database; serving them from memory and retrying the commit (check disk space, permissions and locks)");
            e.uncommitted = true;
            e.commit_retry_at = Some(now + commit_backoff(e, base, cap));
        }
        let view = Arc::new(e.view());
        for w in std::mem::take(&mut e.waiters) {
            w.answer_after(&view, now, None);
        }
    }

    fn on_failed(&mut self, name: &str, cred: Credential, failure: Failure, now: i64) {
        let (base, cap) = (
            self.config.daemon.retry_initial,
            self.config.daemon.retry_max,
        );
        if let (Some(ra), FailureKind::Transient) = (failure.retry_after, failure.kind) {
            let until = now + ra.as_millis() as i64;
            let entry = self
                .blocked_until
                .entry(cred.provider.clone())
                .or_insert(until);
            *entry = (*entry).max(until);
        }
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        e.cred = cred;
        match failure.kind {
            FailureKind::Reauth => {
                e.refresh_at = None;
                event!(
                    error, Kind::NeedsReauth,
                    tokend_credential = %name, tokend_provider = %e.cred.provider,
                    tokend_error = %failure.message,
                    "the provider rejected the refresh token; credential needs re-authorization: run `tokend add {name} --provider {}` with a new refresh token, or `tokend exchange`",
                    e.cred.provider
                );
            }
            FailureKind::Misconfigured => {
                e.refresh_at = None;
                e.paused = Some(format!(
                    "{}; fix providers.{} in the configuration and restart, or run `tokend refresh {name}`",
                    failure.message, e.cred.provider
                ));
                event!(
                    error, Kind::ProviderMisconfigured,
                    tokend_credential = %name, tokend_provider = %e.cred.provider,
                    tokend_error = %failure.message,
                    "the provider rejected the client itself; refreshing is paused until the provider configuration is fixed"
                );
            }
            FailureKind::Transient => {
                let delay = backoff(e.attempt, base, cap, rand::random::<f64>());
                e.attempt = e.attempt.saturating_add(1);
                let mut at = now + delay.as_millis() as i64;
                // Never let the current token die without having tried again.
                if let Some(exp) = e.cred.expires_at.filter(|exp| *exp > now) {
                    at = at.min(exp);
                }
                if let Some(ra) = failure.retry_after {
                    at = at.max(now + ra.as_millis() as i64);
                }
                e.refresh_at = Some(at);
                event!(
                    warn, Kind::RefreshFailed,
                    tokend_credential = %name, tokend_provider = %e.cred.provider,
                    tokend_error = %failure.message, tokend_attempt = e.attempt, tokend_retry_in_ms = at - now,
                    tokend_outcome_unknown = failure.outcome_unknown,
                    "refresh failed; will retry"
                );
            }
        }
        if e.uncommitted && e.commit_retry_at.is_none() {
            e.commit_retry_at = Some(now + commit_backoff(e, base, cap));
        }
        let view = Arc::new(e.view());
        let provider = e.cred.provider.clone();
        for w in std::mem::take(&mut e.waiters) {
            w.answer_after(&view, now, Some((&failure, &provider)));
        }
    }
}

/// One semaphore per provider, bounding its refreshes in flight.
fn provider_permits(config: &Config) -> HashMap<String, Arc<Semaphore>> {
    config
        .providers
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                Arc::new(Semaphore::new(p.max_concurrent_refreshes)),
            )
        })
        .collect()
}

fn missing_provider(provider: &str) -> String {
    format!(
        "provider `{provider}` is not in the configuration; add it back and reload (systemctl reload tokend, or SIGHUP)"
    )
}

/// The next tick of an optional interval; never, without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn commit_backoff(e: &mut Entry, base: Duration, cap: Duration) -> i64 {
    let delay = backoff(e.commit_attempt, base, cap, rand::random::<f64>());
    e.commit_attempt = e.commit_attempt.saturating_add(1);
    delay.as_millis() as i64
}

impl Entry {
    fn view(&self) -> View {
        View {
            cred: self.cred.clone(),
            paused: self.paused.clone(),
            next_refresh_at: self.refresh_at,
            refreshing: self.in_flight,
            uncommitted: self.uncommitted,
            warning: self.warning.clone(),
            readers: self.readers.clone(),
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
