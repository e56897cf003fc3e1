//! Hooks: commands run when something happens to a credential (a new
//! token, a failed refresh, a grant that needs a human, a refresh token
//! about to expire, a credential working again), for "tell me when I must
//! log in again".
//!
//! One task listens to the refresher's updates and turns them into
//! [`Event`]s; each credential has its own small queue and worker, so one
//! credential's hooks run one at a time and in order, while a global
//! semaphore caps how many hooks run at once. The hooks themselves sit
//! behind a `watch` channel that a reload replaces ([`Hooks::set`]): an
//! event runs the hooks configured when its turn comes, and a hook already
//! running finishes. A hook gets a clean environment (only `PATH` and the
//! `TOKEND_*` variables), never the token unless it asked for it on stdin,
//! and is killed with its whole process group at its timeout. Its output is discarded: it may echo what it was
//! given, and the journal must not hold a token.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Hook;
use crate::credential::State;
use crate::event;
use crate::events::Kind;
use crate::refresh::{RefresherHandle, Update, UpdateKind, View};

/// Events one credential may have waiting; later ones are dropped (and
/// logged), so a flapping credential cannot pile up processes.
pub(crate) const QUEUE: usize = 8;
/// Hooks running at once across every credential.
pub(crate) const MAX_RUNNING: usize = 4;
/// The only `PATH` a hook sees.
const PATH: &str = "/usr/bin:/bin";

/// What a hook can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Event {
    /// A new access token was obtained.
    Refreshed,
    /// A refresh attempt failed transiently and is retried with backoff:
    /// the first, second, fourth, eighth... consecutive failure
    /// ([`reported_attempt`]).
    RefreshFailed,
    /// The grant was rejected; a human must authorize again.
    NeedsReauth,
    /// The refresh token's own lifetime is near its end (its warning
    /// appeared).
    RefreshTokenExpiring,
    /// Working again after needing reauthorization, being paused, or
    /// failing to refresh.
    Recovered,
}

impl Event {
    /// Every event, for messages and documentation.
    pub(crate) const ALL: [Event; 5] = [
        Event::Refreshed,
        Event::RefreshFailed,
        Event::NeedsReauth,
        Event::RefreshTokenExpiring,
        Event::Recovered,
    ];

    /// The name in the configuration and in `TOKEND_EVENT`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Event::Refreshed => "refreshed",
            Event::RefreshFailed => "refresh_failed",
            Event::NeedsReauth => "needs_reauth",
            Event::RefreshTokenExpiring => "refresh_token_expiring",
            Event::Recovered => "recovered",
        }
    }

    /// The event named `name`, if there is one.
    pub(crate) fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Whether a view is in trouble (needs reauthorization, is paused, or its
/// last refresh failed), which a later healthy view is a recovery from.
fn troubled(v: &View) -> bool {
    v.state == State::NeedsReauth || v.paused().is_some() || v.extras().failed_attempts > 0
}

/// Whether the `attempt`th consecutive failure runs `refresh_failed` hooks:
/// the 1st, 2nd, 4th, 8th... A provider down for an hour under a short
/// backoff fails a credential's refresh hundreds of times; its hooks run
/// about ten times, the first at once, and `recovered` ends the streak.
fn reported_attempt(attempt: u32) -> bool {
    attempt.is_power_of_two()
}

/// The events one update means, given whether the credential was troubled
/// before it (as far as this listener saw).
pub(crate) fn events(update: &Update, was_troubled: bool) -> Vec<Event> {
    let Some(view) = &update.view else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let now_troubled = troubled(view);
    match update.kind {
        UpdateKind::Token => {
            if was_troubled && !now_troubled {
                out.push(Event::Recovered);
            }
            out.push(Event::Refreshed);
        }
        UpdateKind::State => {
            if view.state == State::NeedsReauth {
                out.push(Event::NeedsReauth);
            } else if !now_troubled {
                // A state update changed the state or the pause: healthy now
                // means it was not before.
                out.push(Event::Recovered);
            }
        }
        UpdateKind::Problem | UpdateKind::Removed => {}
    }
    // A failure comes alone (no new token; a rejection is a state update
    // and no failure), a warning may come with any of them.
    if update.problems.refresh_failed && reported_attempt(view.extras().failed_attempts) {
        out.push(Event::RefreshFailed);
    }
    if update.problems.warning_appeared {
        out.push(Event::RefreshTokenExpiring);
    }
    out
}

/// One event to run hooks for.
struct Job {
    event: Event,
    view: Arc<View>,
}

/// The hook runner as the daemon holds it: the hooks in force, and the
/// listener, started with the first hook (at start-up or on a reload).
pub(crate) struct Hooks {
    handle: RefresherHandle,
    cancel: CancellationToken,
    current: watch::Sender<Arc<[Hook]>>,
    /// Once started, the listener runs until shutdown, even with no hooks
    /// left: it keeps which credentials are in trouble, so a `recovered`
    /// after a reload is not missed, and costs little idle.
    listening: bool,
}

impl Hooks {
    /// Starts the runner with `hooks`. The listener subscribes at once (if
    /// there is a hook), so nothing the refresher publishes after this call
    /// is missed.
    pub(crate) fn start(
        handle: &RefresherHandle,
        hooks: Arc<[Hook]>,
        cancel: CancellationToken,
    ) -> Hooks {
        let mut runner = Hooks {
            handle: handle.clone(),
            cancel,
            current: watch::Sender::new(Arc::from(Vec::new())),
            listening: false,
        };
        runner.set(hooks);
        runner
    }

    /// The hooks in force.
    pub(crate) fn current(&self) -> Arc<[Hook]> {
        Arc::clone(&self.current.borrow())
    }

    /// Runs `hooks` from now on: for the next event, and for the events
    /// already queued whose turn has not come. Hooks running now finish.
    pub(crate) fn set(&mut self, hooks: Arc<[Hook]>) {
        let any = !hooks.is_empty();
        self.current.send_replace(hooks);
        if any && !self.listening {
            let Some(rx) = self.handle.subscribe() else {
                return;
            };
            self.listening = true;
            tokio::spawn(run(
                rx,
                self.current.subscribe(),
                self.handle.clone(),
                self.cancel.clone(),
            ));
        }
    }
}

/// The listener's state: each credential's queue, and which credentials
/// are in trouble (what a later healthy view is a recovery from).
struct Listener {
    current: watch::Receiver<Arc<[Hook]>>,
    running: Arc<Semaphore>,
    queues: HashMap<Arc<str>, mpsc::Sender<Job>>,
    troubled: HashSet<Arc<str>>,
}

async fn run(
    mut rx: broadcast::Receiver<Update>,
    current: watch::Receiver<Arc<[Hook]>>,
    handle: RefresherHandle,
    cancel: CancellationToken,
) {
    let mut listener = Listener {
        current,
        running: Arc::new(Semaphore::new(MAX_RUNNING)),
        queues: HashMap::new(),
        troubled: HashSet::new(),
    };
    // What stands already (loaded at start-up, or before the reload that
    // brought the first hook): a credential in trouble may recover, and a
    // refresh token in its warning window is told, as no update will tell
    // it. Subscribed before this read: an update in between is told twice
    // at worst, never missed.
    for view in handle.list() {
        if troubled(&view) {
            listener.troubled.insert(Arc::clone(&view.name));
        }
        if view.extras().warning.is_some() {
            listener.dispatch(&[Event::RefreshTokenExpiring], &view);
        }
    }
    loop {
        let update = tokio::select! {
            () = cancel.cancelled() => return,
            u = rx.recv() => u,
        };
        let update = match update {
            Ok(u) => u,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                event!(
                    warn,
                    Kind::HookDropped,
                    tokend_dropped = n,
                    "hooks fell behind; events were missed"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let was = listener.troubled.contains(&update.name);
        let found = events(&update, was);
        match &update.view {
            Some(v) if troubled(v) => {
                listener.troubled.insert(Arc::clone(&update.name));
            }
            _ => {
                listener.troubled.remove(&update.name);
            }
        }
        match &update.view {
            Some(view) => listener.dispatch(&found, view),
            None => {
                listener.queues.remove(&update.name);
            }
        }
    }
}

impl Listener {
    /// Queues `found` for the credential of `view`, each event only if a
    /// hook in force wants it.
    fn dispatch(&mut self, found: &[Event], view: &Arc<View>) {
        let hooks = Arc::clone(&self.current.borrow());
        for &ev in found {
            if !hooks.iter().any(|h| h.wants(ev, &view.name)) {
                continue;
            }
            let tx = self
                .queues
                .entry(Arc::clone(&view.name))
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(worker(rx, self.current.clone(), Arc::clone(&self.running)));
                    tx
                });
            let job = Job {
                event: ev,
                view: Arc::clone(view),
            };
            if tx.try_send(job).is_err() {
                event!(
                    warn,
                    Kind::HookDropped,
                    tokend_credential = %view.name,
                    tokend_hook_event = ev.as_str(),
                    "hook event dropped: this credential's hooks are {QUEUE} events behind"
                );
            }
        }
    }
}

/// Runs one credential's jobs in order, one hook at a time, each job with
/// the hooks in force when its turn comes.
async fn worker(
    mut rx: mpsc::Receiver<Job>,
    current: watch::Receiver<Arc<[Hook]>>,
    running: Arc<Semaphore>,
) {
    while let Some(job) = rx.recv().await {
        let hooks = Arc::clone(&current.borrow());
        for hook in hooks.iter().filter(|h| h.wants(job.event, &job.view.name)) {
            let Ok(_permit) = running.acquire().await else {
                return;
            };
            run_one(hook, &job).await;
        }
    }
}

/// The environment a hook gets for `event` of `view`: nothing of the
/// daemon's, and never a token.
pub(crate) fn environment(event: Event, view: &View) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("PATH", PATH.to_string()),
        ("TOKEND_EVENT", event.as_str().to_string()),
        ("TOKEND_CREDENTIAL", view.name.to_string()),
        ("TOKEND_PROVIDER", view.provider.to_string()),
        ("TOKEND_STATE", view.state.as_str().to_string()),
    ];
    let extras = view.extras();
    let secs = |ms: i64| (ms / 1000).to_string();
    if let Some(at) = view.expires_at {
        env.push(("TOKEND_EXPIRES_AT", secs(at)));
    }
    if let Some(at) = view.next_refresh_at {
        env.push(("TOKEND_NEXT_REFRESH_AT", secs(at)));
    }
    if let Some(at) = extras.refresh_expires_at {
        env.push(("TOKEND_REFRESH_TOKEN_EXPIRES_AT", secs(at)));
    }
    if let Some(e) = &extras.last_error {
        env.push(("TOKEND_ERROR", one_line(e)));
    }
    if extras.failed_attempts > 0 {
        env.push(("TOKEND_ATTEMPT", extras.failed_attempts.to_string()));
    }
    if let Some(w) = &extras.warning {
        env.push(("TOKEND_WARNING", one_line(w)));
    }
    env
}

/// `text` with control characters as spaces: an error comes from the
/// provider, and a NUL in it would stop the hook from starting at all.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// How a hook ended.
enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
}

async fn run_one(hook: &Hook, job: &Job) {
    let name = &job.view.name;
    let program = hook.command.first().map(String::as_str).unwrap_or_default();
    let stdin = hook.token_on_stdin && job.view.access_token.is_some();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(hook.command.iter().skip(1))
        .env_clear()
        .envs(environment(job.event, &job.view))
        .current_dir("/")
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            event!(
                warn,
                Kind::HookFailed,
                tokend_credential = %name,
                tokend_hook_event = job.event.as_str(),
                tokend_hook = program,
                "hook could not be started ({e}); check the command's path and permissions"
            );
            return;
        }
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let token = job.view.access_token.clone();
    let mut input = child.stdin.take();
    let ended = tokio::time::timeout(hook.timeout, async {
        if let (Some(mut w), Some(t)) = (input.take(), token) {
            // A hook that does not read its stdin must not fail the run.
            let _ = w.write_all(t.expose().as_bytes()).await;
            let _ = w.write_all(b"\n").await;
            drop(w);
        }
        child.wait().await
    })
    .await;
    let ended = match ended {
        Ok(Ok(status)) => Ended::Exited(status),
        Ok(Err(e)) => {
            event!(warn, Kind::HookFailed, tokend_credential = %name, tokend_hook = program, "cannot wait for the hook: {e}");
            return;
        }
        Err(_) => {
            if let Some(pid) = pid {
                // The whole group, so that what the hook started dies too.
                // SAFETY: kill(2) with a negative pid signals a process group.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            Ended::TimedOut
        }
    };
    match ended {
        Ended::Exited(status) if status.success() => event!(
            info,
            Kind::HookRan,
            tokend_credential = %name,
            tokend_hook_event = job.event.as_str(),
            tokend_hook = program,
            "hook ran"
        ),
        Ended::Exited(status) => event!(
            warn,
            Kind::HookFailed,
            tokend_credential = %name,
            tokend_hook_event = job.event.as_str(),
            tokend_hook = program,
            tokend_exit_status = status.code(),
            tokend_signal = status.signal(),
            "hook failed"
        ),
        Ended::TimedOut => event!(
            warn,
            Kind::HookTimedOut,
            tokend_credential = %name,
            tokend_hook_event = job.event.as_str(),
            tokend_hook = program,
            tokend_timeout = %humantime::format_duration(hook.timeout),
            "hook killed at its timeout (with its process group)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Credential;
    use crate::token::Secret;

    fn update(kind: UpdateKind, state: State) -> Update {
        let mut cred = Credential::new("c", "p", None, 0);
        cred.access_token = Some(Secret::new("tok"));
        cred.expires_at = Some(5_000);
        cred.state = state;
        let view = Arc::new(View::of_alone(&cred));
        Update {
            name: Arc::clone(&view.name),
            kind,
            view: Some(view),
            problems: Default::default(),
        }
    }

    /// A transient failure, the `attempt`th in a row.
    fn failed(attempt: u32) -> Update {
        let mut u = update(UpdateKind::Problem, State::Active);
        let mut view = (**u.view.as_ref().unwrap()).clone();
        view.edit_extras(|e| {
            e.failed_attempts = attempt;
            e.last_error = Some("token endpoint answered 503\0\nat once".into());
        });
        view.next_refresh_at = Some(9_000);
        u.view = Some(Arc::new(view));
        u.problems.refresh_failed = true;
        u
    }

    #[test]
    fn updates_map_to_events() {
        let t = update(UpdateKind::Token, State::Active);
        assert_eq!(events(&t, false), vec![Event::Refreshed]);
        assert_eq!(events(&t, true), vec![Event::Recovered, Event::Refreshed]);
        let r = update(UpdateKind::State, State::NeedsReauth);
        assert_eq!(events(&r, false), vec![Event::NeedsReauth]);
        let a = update(UpdateKind::State, State::Active);
        assert_eq!(events(&a, true), vec![Event::Recovered]);
        let gone = Update {
            name: "c".into(),
            kind: UpdateKind::Removed,
            view: None,
            problems: Default::default(),
        };
        assert!(events(&gone, true).is_empty());
    }

    #[test]
    fn failures_are_told_at_growing_intervals_and_a_warning_once() {
        let told: Vec<u32> = (1..=40)
            .filter(|&n| events(&failed(n), n > 1) == vec![Event::RefreshFailed])
            .collect();
        assert_eq!(told, vec![1, 2, 4, 8, 16, 32]);
        // A failed credential that refreshes again has recovered.
        assert!(troubled(failed(3).view.as_deref().unwrap()));
        let t = update(UpdateKind::Token, State::Active);
        assert_eq!(events(&t, true), vec![Event::Recovered, Event::Refreshed]);
        // A rejection is needs_reauth and nothing else.
        let r = update(UpdateKind::State, State::NeedsReauth);
        assert_eq!(events(&r, true), vec![Event::NeedsReauth]);

        let mut warned = update(UpdateKind::Token, State::Active);
        warned.problems.warning_appeared = true;
        assert_eq!(
            events(&warned, false),
            vec![Event::Refreshed, Event::RefreshTokenExpiring]
        );
        warned.kind = UpdateKind::Problem;
        assert_eq!(events(&warned, false), vec![Event::RefreshTokenExpiring]);
        // A problem update without a warning that appeared is told nothing
        // more (a failure that is not a reported attempt).
        assert!(events(&failed(3), true).is_empty());
    }

    #[test]
    fn a_failure_tells_the_error_the_attempt_and_the_retry() {
        let u = failed(2);
        let mut view = (**u.view.as_ref().unwrap()).clone();
        view.edit_extras(|e| {
            e.refresh_expires_at = Some(7_000);
            e.warning = Some("the refresh token expires in 2h".into());
        });
        let env = environment(Event::RefreshFailed, &view);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TOKEND_EVENT"), Some("refresh_failed"));
        assert_eq!(get("TOKEND_STATE"), Some("active"));
        // Control characters (a NUL would stop the hook from starting) are
        // spaces.
        assert_eq!(
            get("TOKEND_ERROR"),
            Some("token endpoint answered 503  at once")
        );
        assert_eq!(get("TOKEND_ATTEMPT"), Some("2"));
        assert_eq!(get("TOKEND_NEXT_REFRESH_AT"), Some("9"));
        assert_eq!(get("TOKEND_REFRESH_TOKEN_EXPIRES_AT"), Some("7"));
        assert_eq!(
            get("TOKEND_WARNING"),
            Some("the refresh token expires in 2h")
        );
        let healthy = update(UpdateKind::Token, State::Active);
        let env = environment(Event::Refreshed, healthy.view.as_deref().unwrap());
        for absent in ["TOKEND_ERROR", "TOKEND_ATTEMPT", "TOKEND_WARNING"] {
            assert!(env.iter().all(|(k, _)| *k != absent), "{absent}: {env:?}");
        }
    }

    #[test]
    fn the_environment_is_clean_and_holds_no_token() {
        let u = update(UpdateKind::Token, State::Active);
        let env = environment(Event::Refreshed, u.view.as_deref().unwrap());
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some(PATH));
        assert_eq!(get("TOKEND_EVENT"), Some("refreshed"));
        assert_eq!(get("TOKEND_CREDENTIAL"), Some("c"));
        assert_eq!(get("TOKEND_PROVIDER"), Some("p"));
        assert_eq!(get("TOKEND_STATE"), Some("active"));
        assert_eq!(get("TOKEND_EXPIRES_AT"), Some("5"));
        assert!(env.iter().all(|(_, v)| !v.contains("tok") || v == "tokend"));
        assert_eq!(Event::parse("recovered"), Some(Event::Recovered));
        assert_eq!(Event::parse("refresh_failed"), Some(Event::RefreshFailed));
        assert_eq!(
            Event::parse("refresh_token_expiring"),
            Some(Event::RefreshTokenExpiring)
        );
        assert_eq!(Event::parse("nope"), None);
    }
}
