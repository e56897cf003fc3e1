//! The refresher: the one owner of live credential state.
//!
//! A single task ([`Refresher::run`]) holds every credential's published
//! [`View`], decides when each is refreshed, and publishes a new view into a
//! concurrent map that the socket API reads without waiting on anyone. Other
//! tasks talk to it through a [`RefresherHandle`] (bounded channel, `oneshot`
//! replies).
//!
//! Memory is what lets it hold a million credentials: per credential it keeps
//! the view (access token, expiry, state; no refresh token) and a small
//! [`Slot`] in a slab, and one entry in the schedule. Refresh tokens stay in
//! the database; a refresh reads its credential back as it marks the attempt.
//!
//! The owner never awaits a token endpoint: each refresh runs as a [`job`]
//! (at most one per credential, bounded per provider and overall) which
//! records the attempt durably, calls the provider, commits the outcome and
//! only then reports back. Writes go through the [`GroupCommit`] queue, so
//! refreshes that finish together share one fsync. New tokens are published
//! only after that report, so a rotated refresh token is on disk before the
//! access token that came with it is served. If the commit fails, the tokens
//! are kept in memory, served, and the commit is retried; no refresh ever
//! sends a refresh token older than the newest one held.

mod handle;
mod job;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use handle::{
    summary, ExchangeRequest, Interner, NewCredential, Notes, RefreshError, RefresherHandle, Tally,
    View,
};

use crate::access::Grant;
use crate::config::{Config, ProviderConfig};
use crate::credential::{Credential, Loaded, State};
use crate::event;
use crate::events::Kind;
use crate::provider::{Failure, FailureKind, ProviderClient};
use crate::store::{GroupCommit, Store, StoreError};
use crate::token::{after_secs, backoff, duration_ms, now_ms, LifetimeSource, Secret};
use handle::{Command, Reply};
use job::{Job, Outcome, ReadCase, ReadPlan};

/// The longest single sleep: wall time is re-read at least this often, so
/// suspend/resume or a clock jump cannot make a refresh late.
const MAX_SLEEP_MS: i64 = 60_000;

/// Results reported to the owner by the tasks it started.
enum Report {
    Job {
        slot: u32,
        generation: i64,
        /// The provider whose in-flight count the job held.
        provider: Arc<str>,
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

/// The owner's private state for one credential, beside its published view
/// (which carries the schedule, the flags and the notes users see).
struct Slot {
    /// The view as last published.
    view: Arc<View>,
    /// The stored generation; a job's report for another one is stale.
    generation: i64,
    /// The wake-up registered in the schedule: the earlier of the refresh
    /// (`view.next_refresh_at`) and a commit retry.
    next_at: Option<i64>,
    /// Consecutive transient refresh failures.
    attempt: u32,
    /// The last refresh ended without a known outcome (a crash, or a
    /// timeout after sending): a rejection now probably means the provider
    /// rotated the token then.
    earlier_unknown: bool,
    /// Due, and waiting in its provider's ready queue for a free slot.
    queued: bool,
    /// What few credentials need at any moment.
    rare: Option<Box<Rare>>,
}

/// The part of a [`Slot`] most credentials never use.
#[derive(Default)]
struct Rare {
    /// Callers waiting for the next refresh attempt.
    waiters: Vec<Waiter>,
    /// Tokens newer than the database's, held since their commit failed.
    pending: Option<Credential>,
    /// When to retry that commit.
    commit_retry_at: Option<i64>,
    /// Consecutive failed commits.
    commit_attempt: u32,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.waiters.is_empty()
            && self.pending.is_none()
            && self.commit_retry_at.is_none()
            && self.commit_attempt == 0
    }
}

/// The owner task's state.
pub struct Refresher {
    config: Arc<Config>,
    store: Store,
    commits: GroupCommit,
    client: ProviderClient,
    /// Credentials by slot number (`View::slot`); `None` is a free slot.
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Wake-ups, earliest first. An entry is current only while its slot's
    /// `next_at` still says that time: moving a wake-up pushes a new entry
    /// and leaves the old one to be skipped (16 bytes per credential, where
    /// a B-tree set took about 26).
    schedule: BinaryHeap<Reverse<(i64, u32)>>,
    /// Providers that asked us (Retry-After) to stay away until then.
    blocked_until: HashMap<String, i64>,
    /// Due refreshes waiting for their provider (or the daemon) to have a
    /// refresh slot free, oldest first. Jobs are started only when they
    /// can run, so a million credentials falling due at once (after a long
    /// downtime) cost a queue entry each, not a task each.
    ready: HashMap<Arc<str>, std::collections::VecDeque<u32>>,
    /// Jobs running, in all and per provider.
    running: usize,
    running_by_provider: HashMap<Arc<str>, usize>,
    published: Arc<DashMap<Arc<str>, Arc<View>>>,
    interner: Interner,
    /// Shared by every credential nobody but administrators may read.
    no_readers: Arc<[Grant]>,
    tally: Tally,
    commands: mpsc::Receiver<Command>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    global_permits: Arc<Semaphore>,
    provider_permits: HashMap<String, Arc<Semaphore>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Something changed since the service manager's status line was sent.
    status_dirty: bool,
    /// Shared with the handle: who administers.
    policy: Arc<std::sync::RwLock<crate::access::Policy>>,
    /// Shared with the handle: `daemon.read_timeout` in ms.
    read_timeout_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Refresher {
    /// Builds the owner from the stored credentials (streamed from `store`)
    /// and returns it with its handle. Call [`Refresher::run`] on a task of
    /// its own.
    pub async fn load(
        config: Arc<Config>,
        store: Store,
        commits: GroupCommit,
        client: ProviderClient,
        cancel: CancellationToken,
    ) -> Result<(Refresher, RefresherHandle), StoreError> {
        let (tx, commands) = mpsc::channel(1024);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let published = Arc::new(DashMap::new());
        let policy = Arc::new(std::sync::RwLock::new(
            crate::access::Policy::for_this_process(config.daemon.admin_gid),
        ));
        let read_timeout_ms = Arc::new(std::sync::atomic::AtomicU64::new(duration_ms(
            config.daemon.read_timeout,
        ) as u64));
        let mut r = Refresher {
            read_timeout_ms: Arc::clone(&read_timeout_ms),
            policy: Arc::clone(&policy),
            global_permits: Arc::new(Semaphore::new(config.daemon.max_concurrent_refreshes)),
            provider_permits: provider_permits(&config),
            config,
            store: store.clone(),
            commits,
            client,
            slots: Vec::new(),
            free: Vec::new(),
            schedule: BinaryHeap::new(),
            blocked_until: HashMap::new(),
            ready: HashMap::new(),
            running: 0,
            running_by_provider: HashMap::new(),
            published: Arc::clone(&published),
            interner: Interner::default(),
            no_readers: Arc::from(Vec::new()),
            tally: Tally::default(),
            commands,
            reports_tx,
            reports,
            tasks: TaskTracker::new(),
            cancel,
            status_dirty: true,
        };
        let now = now_ms();
        store
            .load_each(|loaded| r.insert_loaded(loaded, now))
            .await?;
        r.slots.shrink_to_fit();
        let handle = RefresherHandle {
            tx,
            published,
            policy,
            read_timeout_ms,
        };
        Ok((r, handle))
    }

    fn insert_loaded(&mut self, loaded: Loaded, now: i64) {
        let Loaded {
            cred,
            has_refresh_token,
        } = loaded;
        let interrupted = cred.refresh_started_at.is_some() && cred.state == State::Active;
        let mut view = self.view_of(Arc::from(cred.name.as_str()), &cred, now);
        view.has_refresh_token = has_refresh_token;
        self.schedule_view(&mut view, now);
        if interrupted {
            event!(
                warn,
                Kind::RefreshInterrupted,
                tokend_credential = %view.name,
                tokend_provider = %view.provider,
                "a refresh was in flight when tokend last stopped (or timed out after sending); retrying with the refresh token on record"
            );
        }
        view.next_refresh_at = first_due(
            view.next_refresh_at,
            interrupted.then_some(cred.refresh_started_at).flatten(),
            now,
        );
        if let Some(w) = &view.notes().warning {
            event!(warn, Kind::RefreshTokenExpiring, tokend_credential = %view.name, tokend_provider = %view.provider, "{w}");
        }
        let id = self.insert(view, cred.generation);
        if let Some(slot) = self.slot_mut(id) {
            slot.earlier_unknown = interrupted;
        }
    }

    /// The view of `cred` as the configuration sees it: readers, and paused
    /// if its provider is gone. No schedule yet ([`Refresher::schedule_view`]).
    fn view_of(&mut self, name: Arc<str>, cred: &Credential, now: i64) -> View {
        // `configure_view` sets the real readers.
        let no_readers = Arc::clone(&self.no_readers);
        let mut view = View::of(name, cred, &mut self.interner, no_readers);
        self.configure_view(&mut view, now);
        view
    }

    /// Re-derives what the configuration decides: readers, pause for a
    /// missing provider, the refresh-token warning.
    fn configure_view(&self, view: &mut View, now: i64) {
        let provider = self.provider(view);
        view.readers = self
            .config
            .readers(&view.name, &view.provider)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&self.no_readers));
        view.on_invalid_grant = provider
            .as_deref()
            .map_or_else(Default::default, |p| p.on_invalid_grant);
        let warning = job::refresh_token_warning(provider.as_deref(), view, now);
        let paused = provider.is_none().then(|| missing_provider(&view.provider));
        view.edit_notes(|n| {
            n.warning = warning;
            if paused.is_some() {
                n.paused = paused;
            }
        });
    }

    /// Sets `next_refresh_at` for an active, unpaused credential.
    fn schedule_view(&self, view: &mut View, now: i64) {
        view.next_refresh_at = (view.paused().is_none() && view.state == State::Active)
            .then(|| self.due_at(view, now));
    }

    fn provider(&self, view: &View) -> Option<Arc<ProviderConfig>> {
        self.config.providers.get(&*view.provider).cloned()
    }

    fn due_at(&self, view: &View, now: i64) -> i64 {
        job::refresh_due_at(
            &self.config.daemon.timing,
            self.config.providers.get(&*view.provider).map(|p| &**p),
            view,
            now,
            rand::random::<f64>(),
        )
    }

    /// Adds a credential in a free slot, schedules and publishes it.
    fn insert(&mut self, mut view: View, generation: i64) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        view.slot = id;
        self.slots[id as usize] = Some(Slot {
            view: Arc::new(view),
            generation,
            next_at: None,
            attempt: 0,
            earlier_unknown: false,
            queued: false,
            rare: None,
        });
        self.reschedule(id);
        self.publish(id);
        id
    }

    fn slot(&self, id: u32) -> Option<&Slot> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, id: u32) -> Option<&mut Slot> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    fn id_of(&self, name: &str) -> Option<u32> {
        self.published.get(name).map(|v| v.slot)
    }

    /// Runs until cancelled, then waits (bounded) for in-flight refreshes.
    ///
    /// This loop also pets the systemd watchdog: if it hangs, the pings stop
    /// and systemd restarts the daemon. When nothing changes it wakes only
    /// for the next refresh, the watchdog, or the 60 s clock check.
    pub async fn run(mut self) {
        let mut watchdog = crate::systemd::watchdog_interval().map(tokio::time::interval);
        let mut status = tokio::time::interval(Duration::from_secs(1));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = now_ms();
            self.start_ready(now);
            self.start_due(now);
            let sleep_ms = self.next_wakeup().map_or(MAX_SLEEP_MS, |(at, _)| {
                at.saturating_sub(now).clamp(0, MAX_SLEEP_MS)
            });
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(report) = self.reports.recv() => self.on_report(report).await,
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c).await,
                    None => break,
                },
                _ = tick(&mut watchdog) => crate::systemd::watchdog(),
                // At most once a second, and only after a change.
                _ = status.tick(), if self.status_dirty => self.send_status(),
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            }
        }
        self.shutdown().await;
    }

    fn send_status(&mut self) {
        self.status_dirty = false;
        let next = self
            .next_wakeup()
            .and_then(|(_, id)| self.slot(id))
            .and_then(|s| s.view.next_refresh_at);
        crate::systemd::status(&self.tally.line(next, now_ms()));
    }

    /// Applies a new configuration (see [`RefresherHandle::reload`]).
    fn reload(&mut self, config: Arc<Config>) {
        let now = now_ms();
        self.provider_permits = provider_permits(&config);
        if let Ok(mut policy) = self.policy.write() {
            *policy = crate::access::Policy::for_this_process(config.daemon.admin_gid);
        }
        self.read_timeout_ms.store(
            duration_ms(config.daemon.read_timeout) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if config.daemon.max_concurrent_refreshes != self.config.daemon.max_concurrent_refreshes {
            self.global_permits = Arc::new(Semaphore::new(config.daemon.max_concurrent_refreshes));
        }
        self.config = config;
        for id in 0..self.slots.len() as u32 {
            let Some(old) = self.slot(id).map(|s| Arc::clone(&s.view)) else {
                continue;
            };
            let mut view = (*old).clone();
            // A pause is re-derived from the new configuration: a provider
            // that is back (or was fixed) resumes.
            view.edit_notes(|n| n.paused = None);
            self.configure_view(&mut view, now);
            let unchanged =
                old.paused().is_none() && view.paused().is_none() && old.next_refresh_at.is_some();
            if !unchanged {
                self.schedule_view(&mut view, now);
                if let Some(slot) = self.slot_mut(id) {
                    slot.attempt = 0;
                }
            }
            // Unchanged standing: the schedule (and any backoff) is kept.
            self.set_view(id, view);
        }
    }

    async fn shutdown(mut self) {
        for slot in self.slots.iter_mut().flatten() {
            let Some(rare) = slot.rare.as_mut() else {
                continue;
            };
            for w in rare.waiters.drain(..) {
                w.answer(Err(RefreshError::ShuttingDown));
            }
            if rare.pending.is_some() {
                event!(error, Kind::CommitFailed, tokend_credential = %slot.view.name, tokend_provider = %slot.view.provider,
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
        while let Some((at, id)) = self.next_wakeup() {
            if at > now {
                break;
            }
            self.schedule.pop();
            let Some(slot) = self.slot_mut(id) else {
                continue;
            };
            slot.next_at = None;
            let refresh = slot.view.next_refresh_at.is_some_and(|r| r <= now);
            let pending = slot.rare.as_ref().is_some_and(|r| r.pending.is_some());
            let provider = Arc::clone(&slot.view.provider);
            if refresh && !pending && self.saturated(&provider) {
                if let Some(slot) = self.slot_mut(id) {
                    slot.queued = true;
                }
                self.ready.entry(provider).or_default().push_back(id);
                continue;
            }
            if refresh || pending {
                self.start_job(id, refresh, now);
            }
            self.reschedule(id);
        }
    }

    /// Whether a scheduled refresh for `provider` must wait for a job to end.
    fn saturated(&self, provider: &str) -> bool {
        let cap = self
            .config
            .providers
            .get(provider)
            .map_or(1, |p| p.max_concurrent_refreshes);
        self.running >= self.config.daemon.max_concurrent_refreshes
            || self.running_by_provider.get(provider).copied().unwrap_or(0) >= cap
    }

    /// Starts queued refreshes while their providers have room.
    fn start_ready(&mut self, now: i64) {
        if self.ready.is_empty() {
            return;
        }
        let providers: Vec<Arc<str>> = self.ready.keys().cloned().collect();
        for provider in providers {
            while !self.saturated(&provider) {
                let Some(id) = self.ready.get_mut(&provider).and_then(|q| q.pop_front()) else {
                    break;
                };
                let Some(slot) = self.slot_mut(id).filter(|s| s.queued) else {
                    // Started on demand meanwhile, or removed.
                    continue;
                };
                slot.queued = false;
                // A replacement or reload may have moved it meanwhile.
                if slot.view.next_refresh_at.is_some_and(|at| at <= now) {
                    self.start_job(id, true, now);
                }
                self.reschedule(id);
            }
            if self.ready.get(&provider).is_some_and(|q| q.is_empty()) {
                self.ready.remove(&provider);
            }
        }
    }

    /// Registers the slot's next wake-up: its refresh or commit retry.
    fn reschedule(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        slot.next_at = None;
        if slot.view.refreshing || slot.queued {
            return;
        }
        let retry = slot
            .rare
            .as_ref()
            .filter(|r| r.pending.is_some())
            .and_then(|r| r.commit_retry_at);
        let next = match (slot.view.next_refresh_at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            slot.next_at = Some(at);
            self.schedule.push(Reverse((at, id)));
            if self.schedule.len() > 2 * self.slots.len() + 1024 {
                self.compact_schedule();
            }
        }
    }

    /// The earliest current wake-up, dropping stale entries on the way.
    fn next_wakeup(&mut self) -> Option<(i64, u32)> {
        while let Some(&Reverse((at, id))) = self.schedule.peek() {
            if self.slot(id).is_some_and(|s| s.next_at == Some(at)) {
                return Some((at, id));
            }
            self.schedule.pop();
        }
        None
    }

    /// Drops every stale entry, so moved wake-ups cannot pile up.
    fn compact_schedule(&mut self) {
        let slots = &self.slots;
        self.schedule.retain(|Reverse((at, id))| {
            slots
                .get(*id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.next_at == Some(*at))
        });
    }

    /// Replaces the slot's view, reschedules and publishes it.
    fn set_view(&mut self, id: u32, view: View) {
        if let Some(slot) = self.slot_mut(id) {
            slot.view = Arc::new(view);
        }
        self.reschedule(id);
        self.publish(id);
    }

    /// Changes the slot's view in place (a copy, if readers hold the old
    /// one), then reschedules and publishes it.
    fn edit_view(&mut self, id: u32, edit: impl FnOnce(&mut View)) {
        let Some(slot) = self.slot_mut(id) else {
            return;
        };
        edit(Arc::make_mut(&mut slot.view));
        self.reschedule(id);
        self.publish(id);
    }

    fn publish(&mut self, id: u32) {
        let Some(slot) = self.slot(id) else {
            return;
        };
        let view = Arc::clone(&slot.view);
        self.tally.add(&view);
        if let Some(old) = self.published.insert(Arc::clone(&view.name), view) {
            self.tally.remove(&old);
        }
        self.status_dirty = true;
    }

    fn rare(&mut self, id: u32) -> Option<&mut Rare> {
        let slot = self.slot_mut(id)?;
        Some(slot.rare.get_or_insert_with(Box::default))
    }

    /// Drops the slot's rare part once it holds nothing.
    fn tidy(&mut self, id: u32) {
        if let Some(slot) = self.slot_mut(id) {
            if slot.rare.as_ref().is_some_and(|r| r.is_empty()) {
                slot.rare = None;
            }
        }
    }

    fn take_waiters(&mut self, id: u32) -> Vec<Waiter> {
        let waiters = self
            .slot_mut(id)
            .and_then(|s| s.rare.as_mut())
            .map(|r| std::mem::take(&mut r.waiters))
            .unwrap_or_default();
        self.tidy(id);
        waiters
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
    fn start_job(&mut self, id: u32, refresh: bool, now: i64) {
        let Some(slot) = self.slot(id) else {
            return;
        };
        if slot.view.refreshing {
            return;
        }
        let view = Arc::clone(&slot.view);
        let provider = self.provider(&view);
        if let Some(slot) = self.slot_mut(id) {
            slot.queued = false;
        }
        if provider.is_none() {
            // Nothing can refresh it until a reload brings the provider back:
            // it must not stay scheduled (that would wake us in a loop).
            let reason = view
                .paused()
                .map_or_else(|| missing_provider(&view.provider), str::to_string);
            self.edit_view(id, |v| {
                v.next_refresh_at = None;
                v.edit_notes(|n| n.paused = Some(reason.clone()));
            });
            self.answer_all(id, |n| RefreshError::Paused {
                name: n.to_string(),
                reason: reason.clone(),
            });
        }
        let refresh = refresh && provider.is_some();
        if let (true, Some(p)) = (refresh, &provider) {
            if let Some(until) = self.provider_block(&p.name, now) {
                self.edit_view(id, |v| v.next_refresh_at = Some(until));
                return;
            }
        }
        let per_provider = provider.as_ref().map_or_else(
            || Arc::new(Semaphore::new(1)),
            |p| self.permits_for(&p.name),
        );
        let Some(slot) = self.slot(id) else {
            return;
        };
        let pending = slot.rare.as_ref().and_then(|r| r.pending.clone());
        if !refresh && pending.is_none() {
            self.reschedule(id);
            return;
        }
        let job = Job {
            commits: self.commits.clone(),
            store: self.store.clone(),
            client: self.client.clone(),
            name: Arc::clone(&view.name),
            generation: slot.generation,
            pending,
            earlier_unknown: slot.earlier_unknown,
            refresh,
            global: Arc::clone(&self.global_permits),
            per_provider,
            provider,
        };
        let generation = slot.generation;
        let reports = self.reports_tx.clone();
        self.edit_view(id, |v| v.refreshing = true);
        let provider = Arc::clone(&view.provider);
        self.running += 1;
        *self
            .running_by_provider
            .entry(Arc::clone(&provider))
            .or_default() += 1;
        let name = Arc::clone(&view.name);
        self.tasks.spawn(async move {
            let outcome = job::run_caught(&name, job.run()).await;
            let _ = reports.send(Report::Job {
                slot: id,
                generation,
                provider,
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

    fn answer_all(&mut self, id: u32, err: impl Fn(&str) -> RefreshError) {
        let Some(name) = self.slot(id).map(|s| Arc::clone(&s.view.name)) else {
            return;
        };
        for w in self.take_waiters(id) {
            w.answer(Err(err(&name)));
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
        let Some((id, view)) = self
            .id_of(name)
            .and_then(|id| Some((id, Arc::clone(&self.slot(id)?.view))))
        else {
            waiter.answer(Err(RefreshError::NotFound(name.to_string())));
            return;
        };
        let good_enough = match &waiter {
            Waiter::Token { min_valid_ms, .. } => view.valid_token(now, *min_valid_ms).is_some(),
            Waiter::Settled { .. } => view.valid_token(now, 0).is_some(),
            Waiter::Attempt { .. } => false,
        };
        if good_enough {
            waiter.answer(Ok(view));
            return;
        }
        let has_provider = self.config.providers.contains_key(&*view.provider);
        if !force {
            if let Err(err) = blocked_reason(&view) {
                waiter.answer(Err(err));
                return;
            }
        } else if has_provider && view.paused().is_some() {
            self.edit_view(id, |v| v.edit_notes(|n| n.paused = None));
        }
        let blocked_until = has_provider
            .then(|| self.provider_block(&view.provider, now))
            .flatten();
        if let Waiter::Token { min_valid_ms, .. } = &waiter {
            let backoff_until = self
                .slot(id)
                .filter(|s| s.attempt > 0)
                .and(view.next_refresh_at);
            let plan = job::read_plan(&ReadCase {
                now,
                min_valid_ms: *min_valid_ms,
                view: &view,
                backoff_until,
                blocked_until,
                min_interval_ms: duration_ms(self.config.daemon.timing.min_interval),
                read_timeout_ms: duration_ms(self.config.daemon.read_timeout),
            });
            match plan {
                ReadPlan::Refuse(err) => waiter.answer(Err(err)),
                // The scheduled attempt (or the one in flight) answers it.
                ReadPlan::Join | ReadPlan::WaitFor(_) => {
                    if let ReadPlan::WaitFor(at) = plan {
                        tracing::debug!(tokend_credential = %name, tokend_retry_in_ms = at.saturating_sub(now), "a read waits for the scheduled retry");
                    }
                    if let Some(rare) = self.rare(id) {
                        rare.waiters.push(waiter);
                    }
                }
                ReadPlan::Refresh => {
                    if let Some(rare) = self.rare(id) {
                        rare.waiters.push(waiter);
                    }
                    self.start_job(id, true, now);
                }
            }
            return;
        }
        let blocked = blocked_until.filter(|_| !view.refreshing);
        if let Some(until) = blocked {
            let reason = format!(
                "the provider asked tokend (Retry-After) not to call it for another {}s",
                until.saturating_sub(now).saturating_add(999) / 1000
            );
            let view = self.slot(id).map_or(view, |s| Arc::clone(&s.view));
            match waiter {
                Waiter::Settled { reply } => reply.send(Ok(view)).unwrap_or(()),
                other => other.answer(Err(RefreshError::Unavailable {
                    name: name.to_string(),
                    reason,
                })),
            }
            return;
        }
        if let Some(rare) = self.rare(id) {
            rare.waiters.push(waiter);
        }
        self.start_job(id, true, now);
    }

    async fn put(&mut self, new: NewCredential, now: i64) -> Result<String, RefreshError> {
        if !self.config.providers.contains_key(&new.provider) {
            return Err(RefreshError::UnknownProvider(new.provider));
        }
        let mut cred = Credential::new(&new.name, &new.provider, Some(new.refresh_token), now);
        cred.scope = new.scope;
        if let Some((token, secs)) = new.access_token {
            cred.access_token = Some(token);
            cred.expires_at = Some(after_secs(now, secs));
            cred.lifetime_source = Some(LifetimeSource::ExpiresIn);
            cred.last_refresh_at = Some(now);
        }
        self.replace(cred).await?;
        event!(info, Kind::CredentialAdded, tokend_credential = %new.name, tokend_provider = %new.provider, "credential stored");
        Ok(new.name)
    }

    /// Stores `cred` as a new generation, carrying waiters over from the
    /// credential it replaces, and schedules it.
    async fn replace(&mut self, mut cred: Credential) -> Result<u32, RefreshError> {
        let now = now_ms();
        let old = self.id_of(&cred.name);
        if let Some(slot) = old.and_then(|id| self.slot(id)) {
            cred.created_at = slot.view.created_at;
        }
        cred.generation = self.store.replace(&cred).await?;
        let name = old.and_then(|id| self.slot(id)).map_or_else(
            || Arc::from(cred.name.as_str()),
            |s| Arc::clone(&s.view.name),
        );
        let mut view = self.view_of(name, &cred, now);
        self.schedule_view(&mut view, now);
        match old {
            Some(id) => {
                view.slot = id;
                if let Some(slot) = self.slot_mut(id) {
                    // A job for the old generation may still run; its report
                    // is dropped, and the new generation starts afresh.
                    slot.generation = cred.generation;
                    slot.attempt = 0;
                    slot.earlier_unknown = false;
                    if let Some(rare) = slot.rare.as_mut() {
                        rare.pending = None;
                        rare.commit_retry_at = None;
                        rare.commit_attempt = 0;
                    }
                }
                self.tidy(id);
                self.set_view(id, view);
                Ok(id)
            }
            None => Ok(self.insert(view, cred.generation)),
        }
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
            let grant = crate::provider::TokenGrant::Exchange {
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
        let Some(id) = self.id_of(name) else {
            return Err(RefreshError::NotFound(name.to_string()));
        };
        self.store.delete(name).await?;
        if let Some(slot) = self.slots.get_mut(id as usize).and_then(Option::take) {
            for w in slot.rare.map(|r| r.waiters).unwrap_or_default() {
                w.answer(Err(RefreshError::NotFound(name.to_string())));
            }
            self.free.push(id);
        }
        if let Some((_, old)) = self.published.remove(name) {
            self.tally.remove(&old);
        }
        self.status_dirty = true;
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
                slot: id,
                generation,
                provider,
                outcome,
            } => {
                self.running = self.running.saturating_sub(1);
                if let Some(n) = self.running_by_provider.get_mut(&provider) {
                    *n = n.saturating_sub(1);
                }
                if self.slot(id).is_none_or(|s| s.generation != generation) {
                    return;
                }
                match outcome {
                    Outcome::Superseded => self.edit_view(id, |v| v.refreshing = false),
                    Outcome::Committed { ok } => self.on_committed(id, ok, now),
                    Outcome::Refreshed { cred, committed } => {
                        self.on_refreshed(id, cred, committed, now)
                    }
                    Outcome::Failed { cred, failure } => self.on_failed(id, cred, failure, now),
                }
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
        let id = self.replace(cred).await?;
        event!(info, Kind::CredentialExchanged, tokend_credential = %name, "authorization code exchanged");
        self.slot(id)
            .map(|s| Arc::clone(&s.view))
            .ok_or_else(|| RefreshError::NotFound(name.to_string()))
    }

    fn retry_limits(&self) -> (Duration, Duration) {
        (
            self.config.daemon.retry_initial,
            self.config.daemon.retry_max,
        )
    }

    fn on_committed(&mut self, id: u32, ok: bool, now: i64) {
        let (base, cap) = self.retry_limits();
        let Some(rare) = self.rare(id) else {
            return;
        };
        if ok {
            rare.pending = None;
            rare.commit_attempt = 0;
            rare.commit_retry_at = None;
        } else {
            rare.commit_retry_at = Some(now.saturating_add(commit_backoff(rare, base, cap)));
        }
        self.tidy(id);
        self.edit_view(id, |v| {
            v.refreshing = false;
            v.uncommitted = !ok;
        });
        if ok {
            let name = self.slot(id).map(|s| Arc::clone(&s.view.name));
            event!(info, Kind::CommitRecovered, tokend_credential = %name.unwrap_or_default(), "tokens held in memory are now committed");
        }
    }

    fn on_refreshed(&mut self, id: u32, cred: Credential, committed: bool, now: i64) {
        let (base, cap) = self.retry_limits();
        let Some(old) = self.slot(id).map(|s| Arc::clone(&s.view)) else {
            return;
        };
        let name = Arc::clone(&old.name);
        let expires_in = cred.expires_at.unwrap_or(now).saturating_sub(now) / 1000;
        event!(
            info,
            Kind::Refreshed,
            tokend_credential = %name,
            tokend_provider = %cred.provider,
            tokend_access_token = %cred.access_token.as_ref().map(Secret::fingerprint).unwrap_or_default(),
            tokend_expires_in = expires_in,
            "access token refreshed"
        );
        let mut view = self.view_of(Arc::clone(&name), &cred, now);
        view.slot = id;
        let warning = view.notes().warning.clone();
        if warning.is_some() && warning != old.notes().warning {
            event!(warn, Kind::RefreshTokenExpiring, tokend_credential = %name, tokend_provider = %cred.provider, "{}", warning.as_deref().unwrap_or_default());
        }
        // A provider removed by a reload while this refresh ran stays removed
        // (`view_of` pauses it); otherwise the refresh lifts any pause.
        self.schedule_view(&mut view, now);
        let was_uncommitted = old.uncommitted;
        view.uncommitted = !committed;
        if let Some(slot) = self.slot_mut(id) {
            slot.attempt = 0;
            slot.earlier_unknown = false;
        }
        if committed {
            if let Some(rare) = self.slot_mut(id).and_then(|s| s.rare.as_mut()) {
                rare.pending = None;
                rare.commit_attempt = 0;
                rare.commit_retry_at = None;
            }
            if was_uncommitted {
                event!(info, Kind::CommitRecovered, tokend_credential = %name, "tokens held in memory are now committed");
            }
        } else {
            event!(error, Kind::CommitFailed, tokend_credential = %name,
                "could not commit the new tokens to the database; serving them from memory and retrying the commit (check disk space, permissions and locks)");
            if let Some(rare) = self.rare(id) {
                rare.pending = Some(cred);
                rare.commit_retry_at = Some(now.saturating_add(commit_backoff(rare, base, cap)));
            }
        }
        self.tidy(id);
        self.set_view(id, view);
        self.answer_waiters(id, now, None);
    }

    fn answer_waiters(&mut self, id: u32, now: i64, failure: Option<&Failure>) {
        let Some(view) = self.slot(id).map(|s| Arc::clone(&s.view)) else {
            return;
        };
        for w in self.take_waiters(id) {
            w.answer_after(&view, now, failure.map(|f| (f, &*view.provider)));
        }
    }

    fn on_failed(&mut self, id: u32, cred: Option<Credential>, failure: Failure, now: i64) {
        let (base, cap) = self.retry_limits();
        let Some(old) = self.slot(id).map(|s| Arc::clone(&s.view)) else {
            return;
        };
        if let (Some(ra), FailureKind::Transient) = (failure.retry_after, failure.kind) {
            let until = now.saturating_add(duration_ms(ra));
            let entry = self
                .blocked_until
                .entry(old.provider.to_string())
                .or_insert(until);
            *entry = (*entry).max(until);
        }
        let mut view = (*old).clone();
        view.refreshing = false;
        if let Some(c) = &cred {
            view.state = c.state;
            view.updated_at = c.updated_at;
        }
        let earlier_unknown = cred.as_ref().map_or_else(
            || failure.outcome_unknown || self.slot(id).is_some_and(|s| s.earlier_unknown),
            |c| c.refresh_started_at.is_some(),
        );
        view.edit_notes(|n| n.last_error = Some(failure.message.clone()));
        let name = Arc::clone(&view.name);
        let provider = Arc::clone(&view.provider);
        let mut attempt = self.slot(id).map_or(0, |s| s.attempt);
        match failure.kind {
            FailureKind::Reauth => {
                view.next_refresh_at = None;
                event!(
                    error, Kind::NeedsReauth,
                    tokend_credential = %name, tokend_provider = %provider,
                    tokend_error = %failure.message,
                    "the provider rejected the refresh token; credential needs re-authorization: run `tokend add {name} --provider {provider}` with a new refresh token, or `tokend exchange`"
                );
            }
            FailureKind::Misconfigured => {
                view.next_refresh_at = None;
                view.edit_notes(|n| {
                    n.paused = Some(format!(
                        "{}; fix providers.{provider} in the configuration and restart, or run `tokend refresh {name}`",
                        failure.message
                    ))
                });
                event!(
                    error, Kind::ProviderMisconfigured,
                    tokend_credential = %name, tokend_provider = %provider,
                    tokend_error = %failure.message,
                    "the provider rejected the client itself; refreshing is paused until the provider configuration is fixed"
                );
            }
            FailureKind::Transient => {
                let delay = backoff(attempt, base, cap, rand::random::<f64>());
                attempt = attempt.saturating_add(1);
                let mut at = now.saturating_add(duration_ms(delay));
                // Never let the current token die without having tried again.
                if let Some(exp) = view.expires_at.filter(|exp| *exp > now) {
                    at = at.min(exp);
                }
                if let Some(ra) = failure.retry_after {
                    at = at.max(now.saturating_add(duration_ms(ra)));
                }
                view.next_refresh_at = Some(at);
                event!(
                    warn, Kind::RefreshFailed,
                    tokend_credential = %name, tokend_provider = %provider,
                    tokend_error = %failure.message, tokend_attempt = attempt, tokend_retry_in_ms = at.saturating_sub(now),
                    tokend_outcome_unknown = failure.outcome_unknown,
                    "refresh failed; will retry"
                );
            }
        }
        if let Some(slot) = self.slot_mut(id) {
            slot.attempt = attempt;
            slot.earlier_unknown = earlier_unknown;
        }
        if let Some(rare) = self.slot_mut(id).and_then(|s| s.rare.as_mut()) {
            if rare.pending.is_some() {
                // The job refreshed from the tokens held in memory: keep the
                // recorded error with them.
                if let (Some(p), Some(c)) = (rare.pending.as_mut(), cred) {
                    *p = c;
                }
                if rare.commit_retry_at.is_none() {
                    rare.commit_retry_at =
                        Some(now.saturating_add(commit_backoff(rare, base, cap)));
                }
            }
        }
        self.set_view(id, view);
        self.answer_waiters(id, now, Some(&failure));
    }
}

/// Why a credential will not be refreshed on its own, if it will not.
fn blocked_reason(view: &View) -> Result<(), RefreshError> {
    if view.state == State::NeedsReauth {
        return Err(RefreshError::NeedsReauth {
            name: view.name.to_string(),
            provider: view.provider.to_string(),
            reason: view.notes().last_error.clone().unwrap_or_default(),
        });
    }
    if let Some(reason) = view.paused() {
        return Err(RefreshError::Paused {
            name: view.name.to_string(),
            reason: reason.to_string(),
        });
    }
    Ok(())
}

/// When a credential loaded at start-up is first due, from its ordinary
/// due time and, for a refresh that was in flight when tokend stopped, the
/// time of its first attempt with an unknown outcome.
///
/// Interrupted refreshes go at that time, clamped below `now`, and
/// everything else no earlier than `now`: so they start ahead of every
/// ordinary due refresh, oldest attempt first. A provider with a reuse
/// grace accepts the spent refresh token again only for a while after that
/// attempt, and after a crash loop the oldest ones run out first. The
/// schedule breaks ties by slot and the ready queues keep the order in which
/// the schedule hands them out, so this order holds behind a saturated
/// provider too.
fn first_due(due: Option<i64>, interrupted_at: Option<i64>, now: i64) -> Option<i64> {
    let due = due?;
    Some(match interrupted_at {
        Some(at) => at.min(now.saturating_sub(1)),
        None => due.max(now),
    })
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

fn commit_backoff(rare: &mut Rare, base: Duration, cap: Duration) -> i64 {
    let delay = backoff(rare.commit_attempt, base, cap, rand::random::<f64>());
    rare.commit_attempt = rare.commit_attempt.saturating_add(1);
    duration_ms(delay)
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
        let name = view.name.to_string();
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
            FailureKind::Transient => match view.next_refresh_at {
                Some(at) => RefreshError::RetryLater {
                    name: name.clone(),
                    reason: format!(
                        "{}; the next attempt is in {}s",
                        f.message,
                        at.saturating_sub(now).max(0).saturating_add(999) / 1000
                    ),
                    retry_after: Duration::from_millis(
                        u64::try_from(at.saturating_sub(now)).unwrap_or(0),
                    ),
                },
                None => RefreshError::Unavailable {
                    name: name.clone(),
                    reason: f.message.clone(),
                },
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
                let result = if view.valid_token(now, min_valid_ms).is_some() {
                    Ok(Arc::clone(view))
                } else if let Some((f, p)) = failure {
                    Err(error(f, p))
                } else {
                    let secs = view.expires_at.unwrap_or(now).saturating_sub(now) / 1000;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A refresher over a fresh database holding one credential of provider
    /// `p`, whose token endpoint refuses connections.
    async fn refresher(dir: &std::path::Path) -> Refresher {
        let config = crate::config::parse_config(
            "[providers.p]\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_auth = \"none\"\n",
        )
        .unwrap();
        let store = Store::open(&dir.join("t.db")).await.unwrap();
        let cred = Credential::new("c", "p", Some(Secret::new("rt")), now_ms());
        store.replace(&cred).await.unwrap();
        let commits = GroupCommit::start(store.clone(), 8);
        let (r, _handle) = Refresher::load(
            Arc::new(config),
            store,
            commits,
            ProviderClient::new().unwrap(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        r
    }

    #[tokio::test]
    async fn a_panicking_job_releases_its_credential_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = refresher(dir.path()).await;
        let id = r.id_of("c").unwrap();
        job::PANIC_NEXT_JOB.store(true, std::sync::atomic::Ordering::SeqCst);
        r.start_job(id, true, now_ms());
        assert!(r.slot(id).unwrap().view.refreshing);
        assert_eq!(r.running, 1);
        let report = tokio::time::timeout(Duration::from_secs(10), r.reports.recv())
            .await
            .expect("a panicking job must still report")
            .unwrap();
        r.on_report(report).await;
        let view = Arc::clone(&r.slot(id).unwrap().view);
        assert!(!view.refreshing);
        assert_eq!(r.running, 0);
        assert_eq!(r.running_by_provider.get("p").copied(), Some(0));
        assert!(
            view.notes()
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("unexpectedly")),
            "{view:?}"
        );
        assert!(view.next_refresh_at.is_some(), "retried with backoff");
    }

    /// The order in which the schedule hands out the loaded credentials.
    fn start_order(loaded: &[(Option<i64>, Option<i64>)], now: i64) -> Vec<u32> {
        let mut heap: BinaryHeap<Reverse<(i64, u32)>> = loaded
            .iter()
            .enumerate()
            .filter_map(|(id, (due, interrupted))| {
                Some(Reverse((first_due(*due, *interrupted, now)?, id as u32)))
            })
            .collect();
        std::iter::from_fn(|| heap.pop().map(|Reverse((_, id))| id)).collect()
    }

    #[test]
    fn interrupted_refreshes_start_first_oldest_attempt_first() {
        let now = 10_000;
        let loaded = [
            // Overdue since long before any interrupted attempt.
            (Some(50), None),
            // Interrupted, attempts at 9 s, 7 s and 8 s (due before them).
            (Some(100), Some(9_000)),
            (Some(100), Some(7_000)),
            (Some(100), Some(8_000)),
            // Due now, and later.
            (Some(now), None),
            (Some(20_000), None),
            // Not scheduled at all (needs re-authorization, paused).
            (None, Some(1_000)),
            // An attempt stamped in the future (the clock went back).
            (Some(100), Some(50_000)),
        ];
        assert_eq!(start_order(&loaded, now), vec![2, 3, 1, 7, 0, 4, 5]);
    }

    #[test]
    fn first_due_keeps_future_due_times_and_clamps_overdue_ones() {
        assert_eq!(first_due(Some(20_000), None, 10_000), Some(20_000));
        assert_eq!(first_due(Some(5), None, 10_000), Some(10_000));
        assert_eq!(first_due(None, None, 10_000), None);
        assert_eq!(first_due(Some(20_000), Some(3), 10_000), Some(3));
        assert_eq!(first_due(Some(0), Some(i64::MAX), i64::MIN), Some(i64::MIN));
    }
}
