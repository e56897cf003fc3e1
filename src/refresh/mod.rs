//! The refresher: the one owner of live credential state.
//!
//! A single task ([`Refresher::run`]) holds every credential's published
//! [`View`], decides when each is refreshed, and publishes a new view into a
//! concurrent map that the socket API reads without waiting on anyone. Other
//! tasks talk to it through a [`RefresherHandle`] (bounded channel, `oneshot`
//! replies).
//!
//! The run loop here is small; the parts each have one job: the slot table
//! ([`slots`]), the schedule of wake-ups ([`schedule`]), admission under the
//! concurrency caps and `Retry-After` blocks ([`admission`]), starting jobs
//! ([`start`]), the requests of the handle ([`commands`]), what a finished
//! job changes ([`outcome`]) and reloads ([`reload`]). The timing is pure
//! arithmetic in [`timing`] and [`read_plan`].
//!
//! The owner never awaits a token endpoint: each refresh runs as a [`job`]
//! (at most one per credential, bounded per provider and overall) which
//! records the attempt durably, calls the provider, commits the outcome,
//! writes the credential's sink files and only then reports back. Writes
//! go through the [`GroupCommit`] queue, so refreshes that finish together
//! share one fsync. New tokens are published only after that report, so a
//! rotated refresh token is on disk, and the access token in the sink
//! files, before the access token is served. If the commit fails, the tokens
//! are kept in memory, served, and the commit is retried; no refresh ever
//! sends a refresh token older than the newest one held.

mod admission;
mod commands;
mod device;
mod error;
mod handle;
mod job;
mod outcome;
mod read_plan;
mod reload;
mod request;
mod revoke;
mod schedule;
mod sink_writes;
mod slots;
mod start;
mod tally;
mod timing;
mod updates;
mod view;
mod waiter;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use device::{DeviceLoginRequest, LoginState, LoginView, Logins};
pub(crate) use error::RefreshError;
pub(crate) use handle::{is_fresh, RefresherHandle};
pub(crate) use request::{ExchangeRequest, NewCredential};
pub(crate) use revoke::RemoveOptions;
pub(crate) use updates::{change, Update, UpdateKind};
pub(crate) use view::View;

use crate::access::Grant;
use crate::config::{Config, ProviderConfig};
use crate::credential::{Credential, Loaded, State};
use crate::event;
use crate::events::Kind;
use crate::provider::{Failure, ProviderClient};
use crate::sinks;
use crate::store::{GroupCommit, Store, StoreError};
use crate::token::now_ms;
use admission::{Admission, Caps, Ticket, Waiting};
use handle::LiveSettings;
use job::Outcome;
use request::{Command, Reply};
use schedule::Schedule;
use slots::Slots;
use view::Interner;
use waiter::Waiter;

/// Reports the owner handles in one turn of its loop at most, so that a
/// command waits behind a bounded number of them.
const REPORTS_PER_WAKE: usize = 64;

/// Results reported to the owner by the tasks it started.
enum Report {
    /// A job for a slot ended.
    Job {
        slot: u32,
        generation: i64,
        /// The room the job held, if it could call its provider.
        ticket: Option<Ticket>,
        outcome: Outcome,
        /// The sink write of a refresh's new token, done before this report.
        sinks: Option<start::SinkWrite>,
    },
    /// A code exchange ended; the owner stores what it produced.
    Exchanged {
        name: String,
        result: Result<Credential, Failure>,
        reply: Reply<Arc<View>>,
        ticket: Ticket,
    },
    /// A device login was approved; the owner stores its credential.
    DeviceGranted {
        name: String,
        login: u64,
        cred: Credential,
    },
}

/// A code exchange waiting for room to call its provider.
struct ExchangeStart {
    req: ExchangeRequest,
    provider: Arc<ProviderConfig>,
    reply: Reply<Arc<View>>,
}

/// Where the owner reads the time (Unix ms).
#[derive(Debug, Clone, Copy)]
enum Clock {
    /// The system's wall clock.
    Wall,
    /// A clock that stands still, for tests.
    #[cfg(test)]
    Fixed(i64),
    /// Tokio's clock, paused in tests, reading `at_origin` at `origin`.
    #[cfg(test)]
    Tokio {
        origin: tokio::time::Instant,
        at_origin: i64,
    },
}

impl Clock {
    fn now(self) -> i64 {
        match self {
            Clock::Wall => now_ms(),
            #[cfg(test)]
            Clock::Fixed(at) => at,
            #[cfg(test)]
            Clock::Tokio { origin, at_origin } => {
                at_origin.saturating_add(crate::token::duration_ms(origin.elapsed()))
            }
        }
    }
}

/// The owner task's state.
pub(crate) struct Refresher {
    config: Arc<Config>,
    store: Store,
    commits: GroupCommit,
    client: ProviderClient,
    slots: Slots,
    schedule: Schedule,
    admission: Admission<ExchangeStart>,
    /// Device logins, shared with the handle and the logins' tasks.
    logins: Arc<Logins>,
    interner: Interner,
    /// Shared by every credential nobody but administrators may read.
    no_readers: Arc<[Grant]>,
    commands: mpsc::Receiver<Command>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// Shared with the handles: what they read of the configuration.
    settings: Arc<LiveSettings>,
    clock: Clock,
    /// Where jobs go: spawned, or (in tests) only recorded.
    launch: start::Launch,
    /// The credentials' sink files, written before a new token is published.
    sinks: sinks::Writer,
}

impl Refresher {
    /// Builds the owner from the stored credentials (streamed from `store`),
    /// stores the declared ones the database lacks, and returns it with its
    /// handle. Call [`Refresher::run`] on a task of
    /// its own.
    pub(crate) async fn load(
        config: Arc<Config>,
        store: Store,
        commits: GroupCommit,
        client: ProviderClient,
        cancel: CancellationToken,
    ) -> Result<(Refresher, RefresherHandle), StoreError> {
        let parts = (store, commits, client, cancel);
        Refresher::load_with(config, parts, Clock::Wall, start::Launch::Spawn).await
    }

    /// [`Refresher::load`] with its clock and its way of starting jobs.
    async fn load_with(
        config: Arc<Config>,
        (store, commits, client, cancel): (Store, GroupCommit, ProviderClient, CancellationToken),
        clock: Clock,
        launch: start::Launch,
    ) -> Result<(Refresher, RefresherHandle), StoreError> {
        let (tx, commands) = mpsc::channel(1024);
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let published = Arc::new(DashMap::new());
        let settings = Arc::new(LiveSettings::new(&config));
        let logins = Arc::new(Logins::default());
        let mut r = Refresher {
            logins: Arc::clone(&logins),
            settings: Arc::clone(&settings),
            admission: Admission::new(Caps::of(&config)),
            store: store.clone(),
            commits,
            client,
            slots: Slots::new(Arc::clone(&published)),
            schedule: Schedule::default(),
            interner: Interner::default(),
            no_readers: Arc::from(Vec::new()),
            commands,
            reports_tx,
            reports,
            tasks: TaskTracker::new(),
            cancel,
            sinks: sinks::Writer::new(config.sinks.clone()),
            config,
            clock,
            launch,
        };
        let now = r.now();
        store
            .load_each(|loaded| r.insert_loaded(loaded, now))
            .await?;
        r.slots.shrink_to_fit();
        r.schedule.shrink_to_fit();
        // Before the socket serves, so a declared credential is never
        // answered as missing just after a start.
        r.create_declared().await;
        // Before the socket serves, too: a file exists once its token does.
        r.write_all_sinks().await;
        let handle = RefresherHandle::new(handle::Shared {
            updates: r.slots.updates().downgrade(),
            cancel: r.cancel.clone(),
            client: r.client.clone(),
            tx,
            published,
            settings,
            logins,
            store: store.clone(),
        });
        Ok((r, handle))
    }

    fn now(&self) -> i64 {
        self.clock.now()
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
        view.next_refresh_at = timing::first_due(
            view.next_refresh_at,
            interrupted.then_some(cred.refresh_started_at).flatten(),
            now,
        );
        if let Some(w) = &view.extras().warning {
            event!(warn, Kind::RefreshTokenExpiring, tokend_credential = %view.name, tokend_provider = %view.provider, "{w}");
        }
        let id = self.insert(view, cred.generation);
        if let Some(slot) = self.slots.get_mut(id) {
            slot.earlier_unknown = interrupted;
        }
    }

    /// Adds a credential in a free slot, schedules and publishes it.
    fn insert(&mut self, view: View, generation: i64) -> u32 {
        let id = self.slots.insert(view, generation);
        self.reschedule(id);
        self.slots.publish(id);
        id
    }

    /// Runs until cancelled, then waits (bounded) for in-flight refreshes.
    ///
    /// This loop also pets the systemd watchdog: if it hangs, the pings stop
    /// and systemd restarts the daemon. When nothing changes it wakes only
    /// for the next refresh, the watchdog, or the 60 s clock check.
    pub(crate) async fn run(mut self) {
        let mut watchdog = crate::systemd::watchdog_interval().map(tokio::time::interval);
        let mut status = tokio::time::interval(Duration::from_secs(1));
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = self.now();
            self.start_waiting(now);
            self.start_due(now);
            let next = self.schedule.next().map(|(at, _)| at);
            let sleep_ms = timing::sleep_ms(next, now);
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                Some(report) = self.reports.recv() => self.on_reports(report).await,
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c).await,
                    None => break,
                },
                _ = tick(&mut watchdog) => crate::systemd::watchdog(),
                // At most once a second, and only after a change.
                _ = status.tick(), if self.slots.changed() => self.send_status(),
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            }
        }
        self.shutdown().await;
    }

    fn send_status(&mut self) {
        self.slots.mark_reported();
        let next = self
            .schedule
            .next()
            .and_then(|(_, id)| self.slots.get(id))
            .and_then(|s| s.view.next_refresh_at);
        crate::systemd::status(&self.slots.tally().line(next, self.now()));
    }

    async fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Ensure {
                name,
                min_valid_ms,
                reply,
            } => {
                let waiter = Waiter::Token {
                    min_valid_ms,
                    reply,
                };
                self.ensure(&name, now, waiter, commands::Freshness::IfStale)
            }
            Command::RefreshNow { name, reply } => {
                let waiter = Waiter::Attempt { reply };
                self.ensure(&name, now, waiter, commands::Freshness::Force)
            }
            Command::Put { new, reply } => match self.put(new, now).await {
                Ok(name) => {
                    let waiter = Waiter::Settled { reply };
                    self.ensure(&name, now, waiter, commands::Freshness::IfStale)
                }
                Err(e) => reply.send(Err(e)).unwrap_or(()),
            },
            Command::Exchange { req, reply } => self.exchange(req, reply),
            Command::DeviceLogin { req, reply } => self.device_login(req, reply),
            Command::Remove { name, reply } => {
                let _ = reply.send(self.remove(&name).await);
            }
            Command::ForRevocation { name, reply } => {
                let _ = reply.send(self.for_revocation(&name).await);
            }
            Command::Reload { config, reply } => {
                self.reload(config);
                self.reload_sinks().await;
                self.create_declared().await;
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Handles `first` and the reports already queued behind it (at most
    /// [`REPORTS_PER_WAKE`]) before the loop starts jobs again: in a burst,
    /// one round of starts, schedule look-up and timer per report was much
    /// of the owner's work, and the freed room is the same either way.
    async fn on_reports(&mut self, first: Report) {
        self.on_report(first).await;
        for _ in 1..REPORTS_PER_WAKE {
            let Ok(report) = self.reports.try_recv() else {
                break;
            };
            self.on_report(report).await;
        }
    }

    async fn on_report(&mut self, report: Report) {
        match report {
            Report::Exchanged {
                name,
                result,
                reply,
                ticket,
            } => {
                self.admission.release(ticket);
                let outcome = match result {
                    Ok(cred) => self.store_exchanged(&name, cred).await,
                    Err(failure) => Err(RefreshError::ExchangeFailed(failure)),
                };
                let _ = reply.send(outcome);
            }
            Report::DeviceGranted { name, login, cred } => {
                self.store_device_login(&name, login, cred).await
            }
            Report::Job {
                slot,
                generation,
                ticket,
                outcome,
                sinks,
            } => {
                if let Some(ticket) = ticket {
                    self.admission.release(ticket);
                }
                self.catch_up_sinks(slot, generation, &outcome, sinks).await;
                self.on_job_done(slot, generation, outcome);
            }
        }
    }

    async fn shutdown(mut self) {
        self.logins.cancel_all();
        for waiting in self.admission.drain_on_demand() {
            if let Waiting::Exchange(x) = waiting {
                let _ = x.reply.send(Err(RefreshError::ShuttingDown));
            }
        }
        for slot in self.slots.iter_mut() {
            let Some(outstanding) = slot.outstanding.as_mut() else {
                continue;
            };
            for w in outstanding.waiters.drain(..) {
                w.answer(Err(RefreshError::ShuttingDown));
            }
            if outstanding.held.is_some() {
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
