//! Device logins (RFC 8628): the table of logins an operator started
//! ([`Logins`]), the task that asks the provider for a device and a user code
//! and then polls its token endpoint ([`DeviceTask`]), and the pure rule for
//! what each poll's answer means ([`step`]).
//!
//! A login is not token state: the table is shared by the owner (which
//! starts logins and stores what one produced), the login's own task (which
//! publishes its codes, its interval and how it ended) and the handle (which
//! lists and cancels them), each holding its lock only to copy or change an
//! entry. The device code lives only in the task; no view of a login holds
//! it. A login's tokens come back to the owner as a [`Report`] and are stored
//! like an exchange's, and only if the login is still the current one for
//! its name (not replaced or cancelled meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::job;
use super::request::Reply;
use super::{RefreshError, Report};
use crate::config::ProviderConfig;
use crate::credential::Credential;
use crate::provider::{Failure, FailureKind, ProviderClient, TokenGrant};
use crate::token::{after_secs, duration_ms, now_ms};

/// How many logins the table holds, pending or finished: a flood of
/// `POST /v1/credentials/{name}/device` cannot grow memory past it.
pub(crate) const MAX_LOGINS: usize = 64;

/// How long a finished login stays visible (for `tokend login --device`
/// waiting on it, and for `tokend status`), unless room is needed sooner.
const KEEP_FINISHED_MS: i64 = 3_600_000;

/// RFC 8628 §3.5: `slow_down` adds five seconds to the interval, for this
/// and every later poll.
const SLOW_DOWN: Duration = Duration::from_secs(5);

/// The longest interval a connection failure backs off to (RFC 8628 §3.5
/// asks for a lower polling frequency; never lower than the provider asked).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Never poll more often than this, whatever the provider says.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest single sleep: the wall clock is read again after it.
const MAX_SLEEP_MS: i64 = 60_000;

/// `POST /v1/credentials/{name}/device`.
#[derive(Debug, Clone)]
pub(crate) struct DeviceLoginRequest {
    /// Credential name.
    pub(crate) name: String,
    /// Provider name.
    pub(crate) provider: String,
}

/// How a login stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoginState {
    /// Waiting for the user to approve; the daemon polls.
    Pending,
    /// Approved; the credential is stored.
    Succeeded,
    /// Ended without a credential, for this reason.
    Failed(String),
}

/// What is shown of a login: never its device code.
#[derive(Debug, Clone)]
pub(crate) struct LoginView {
    /// Credential name.
    pub(crate) name: String,
    /// Provider name.
    pub(crate) provider: String,
    /// How it stands.
    pub(crate) state: LoginState,
    /// What the user enters at the verification URI.
    pub(crate) user_code: String,
    /// Where the user goes.
    pub(crate) verification_uri: String,
    /// The URI with the code in it, if the provider gives one.
    pub(crate) verification_uri_complete: Option<String>,
    /// When the codes expire, Unix ms.
    pub(crate) expires_at: i64,
    /// The current polling interval.
    pub(crate) interval: Duration,
    /// When the login started, Unix ms.
    pub(crate) started_at: i64,
    /// When it ended, Unix ms.
    pub(crate) finished_at: Option<i64>,
}

/// One name's login: its view once the provider answered (`None` while the
/// device authorization request is in flight), and how to stop its task.
struct Entry {
    id: u64,
    cancel: CancellationToken,
    view: Option<LoginView>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<String, Entry>,
}

/// Every login the daemon knows of, by credential name; at most
/// [`MAX_LOGINS`].
#[derive(Default)]
pub(crate) struct Logins {
    table: Mutex<Table>,
}

impl Logins {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for a new login of `name`, replacing (and stopping) an
    /// older one of that name; returns its id. Finished logins past their
    /// time, then the oldest finished, give way; pending ones never do.
    fn reserve(
        &self,
        name: &str,
        cancel: CancellationToken,
        now: i64,
    ) -> Result<u64, RefreshError> {
        let mut t = self.lock();
        t.entries.retain(|_, e| {
            e.view
                .as_ref()
                .and_then(|v| v.finished_at)
                .is_none_or(|at| now.saturating_sub(at) < KEEP_FINISHED_MS)
        });
        if !t.entries.contains_key(name) && t.entries.len() >= MAX_LOGINS {
            let oldest = t
                .entries
                .iter()
                .filter_map(|(n, e)| Some((e.view.as_ref()?.finished_at?, n)))
                .min()
                .map(|(_, n)| n.clone());
            match oldest {
                Some(n) => {
                    t.entries.remove(&n);
                }
                None => return Err(RefreshError::TooManyLogins),
            }
        }
        t.next_id = t.next_id.wrapping_add(1);
        let id = t.next_id;
        let old = t.entries.insert(
            name.to_string(),
            Entry {
                id,
                cancel,
                view: None,
            },
        );
        if let Some(old) = old {
            old.cancel.cancel();
        }
        Ok(id)
    }

    /// Runs `f` on login `id` of `name` if it is still the current one.
    fn with_current<T>(&self, name: &str, id: u64, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        self.lock()
            .entries
            .get_mut(name)
            .filter(|e| e.id == id)
            .map(f)
    }

    /// Whether login `id` is still the current (and a pending) one of `name`.
    pub(super) fn is_pending(&self, name: &str, id: u64) -> bool {
        self.with_current(name, id, |e| {
            e.view
                .as_ref()
                .is_some_and(|v| v.state == LoginState::Pending)
        })
        .unwrap_or(false)
    }

    /// Ends login `id` of `name` in `state`, if it is still current.
    pub(super) fn finish(&self, name: &str, id: u64, state: LoginState) {
        self.with_current(name, id, |e| {
            if let Some(v) = &mut e.view {
                v.state = state;
                v.finished_at = Some(now_ms());
            }
        });
    }

    /// Removes login `id` of `name`, which never got its codes.
    fn forget(&self, name: &str, id: u64) {
        let mut t = self.lock();
        if t.entries.get(name).is_some_and(|e| e.id == id) {
            t.entries.remove(name);
        }
    }

    /// The login of `name`, once it has its codes.
    pub(crate) fn get(&self, name: &str) -> Option<LoginView> {
        self.lock().entries.get(name).and_then(|e| e.view.clone())
    }

    /// Every login that has its codes, by name.
    pub(crate) fn list(&self) -> Vec<LoginView> {
        let mut all: Vec<LoginView> = self
            .lock()
            .entries
            .values()
            .filter_map(|e| e.view.clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Stops and forgets the login of `name`; whether there was one.
    pub(crate) fn cancel(&self, name: &str) -> bool {
        let removed = self.lock().entries.remove(name);
        removed.map(|e| e.cancel.cancel()).is_some()
    }

    /// Stops every login (the daemon is stopping).
    pub(super) fn cancel_all(&self) {
        for (_, e) in self.lock().entries.drain() {
            e.cancel.cancel();
        }
    }
}

/// What a poll's answer means for the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Tokens: store them.
    Granted,
    /// Poll again after this interval.
    Continue(Duration),
    /// Stop: the login failed for this reason.
    Stop(String),
}

/// RFC 8628 §3.5: `authorization_pending` goes on, `slow_down` goes on five
/// seconds slower for good, `access_denied` and `expired_token` (and any
/// other OAuth error) end the login, and a failure without an answer
/// (timeout, reset, a 5xx page) goes on at a lower frequency.
pub(super) fn step(result: &Result<Credential, Failure>, interval: Duration) -> Step {
    let f = match result {
        Ok(_) => return Step::Granted,
        Err(f) => f,
    };
    match f.error_code.as_deref() {
        Some("authorization_pending") => Step::Continue(interval),
        Some("slow_down") => Step::Continue(interval.saturating_add(SLOW_DOWN)),
        Some("access_denied") => Step::Stop("the user denied the authorization request".into()),
        Some("expired_token") => Step::Stop(
            "the device code expired before the user approved it; start the login again".into(),
        ),
        Some(_) => Step::Stop(f.message.clone()),
        None if f.kind == FailureKind::Transient => {
            Step::Continue(interval.saturating_mul(2).min(interval.max(MAX_BACKOFF)))
        }
        None => Step::Stop(f.message.clone()),
    }
}

/// How a login's polling ended.
enum Polled {
    Granted(Box<Credential>),
    Failed(String),
    Cancelled,
}

/// One login's task: the device authorization request, then the polls.
pub(super) struct DeviceTask {
    pub(super) client: ProviderClient,
    pub(super) provider: Arc<ProviderConfig>,
    pub(super) name: String,
    pub(super) logins: Arc<Logins>,
    pub(super) cancel: CancellationToken,
    pub(super) reports: mpsc::UnboundedSender<Report>,
}

impl DeviceTask {
    /// Reserves the login's place in `logins` (refusing when the table is
    /// full), for a task then given to [`DeviceTask::run`].
    pub(super) fn reserve(&self) -> Result<u64, RefreshError> {
        self.logins
            .reserve(&self.name, self.cancel.clone(), now_ms())
    }

    /// Asks for the codes, answers `reply` with them, then polls until the
    /// login ends, is cancelled or the daemon stops.
    pub(super) async fn run(self, id: u64, reply: Reply<LoginView>) {
        let started_at = now_ms();
        let asked = tokio::select! {
            _ = self.cancel.cancelled() => {
                let _ = reply.send(Err(RefreshError::LoginReplaced(self.name.clone())));
                return;
            }
            asked = self.client.device_authorization(&self.provider.endpoint) => asked,
        };
        let auth = match asked {
            Ok(auth) => auth,
            Err(f) => {
                self.logins.forget(&self.name, id);
                tracing::warn!(tokend_credential = %self.name, tokend_provider = %self.provider.name, tokend_error = %f, "device login could not start");
                let _ = reply.send(Err(RefreshError::DeviceFailed(f)));
                return;
            }
        };
        let view = LoginView {
            name: self.name.clone(),
            provider: self.provider.name.clone(),
            state: LoginState::Pending,
            user_code: auth.user_code.clone(),
            verification_uri: auth.verification_uri.clone(),
            verification_uri_complete: auth.verification_uri_complete.clone(),
            expires_at: after_secs(started_at, auth.expires_in),
            interval: Duration::from_secs(auth.interval).max(MIN_INTERVAL),
            started_at,
            finished_at: None,
        };
        let published = self
            .logins
            .with_current(&self.name, id, |e| e.view = Some(view.clone()));
        if published.is_none() {
            let _ = reply.send(Err(RefreshError::LoginReplaced(self.name.clone())));
            return;
        }
        tracing::info!(tokend_credential = %self.name, tokend_provider = %self.provider.name, tokend_expires_in_s = auth.expires_in, "device login pending: waiting for the user to approve");
        let _ = reply.send(Ok(view.clone()));
        let grant = TokenGrant::DeviceCode {
            device_code: auth.device_code,
        };
        match self.poll(id, &view, &grant).await {
            Polled::Granted(cred) => {
                let _ = self.reports.send(Report::DeviceGranted {
                    name: self.name,
                    login: id,
                    cred: *cred,
                });
            }
            Polled::Failed(reason) => {
                tracing::warn!(tokend_credential = %self.name, tokend_provider = %self.provider.name, tokend_reason = %reason, "device login failed");
                self.logins
                    .finish(&self.name, id, LoginState::Failed(reason));
            }
            Polled::Cancelled => {
                tracing::info!(tokend_credential = %self.name, "device login cancelled or replaced");
            }
        }
    }

    /// Polls the token endpoint every interval until an answer ends the
    /// login or the codes expire.
    async fn poll(&self, id: u64, view: &LoginView, grant: &TokenGrant) -> Polled {
        let mut interval = view.interval;
        // One DPoP key for all the login's polls: the tokens are bound to
        // the key stored with them, and a poll makes no key of its own.
        let dpop_key = match job::new_dpop_key(&self.provider, &self.name) {
            Ok(key) => key,
            Err(f) => return Polled::Failed(format!("cannot make a DPoP key: {}", f.message)),
        };
        loop {
            let wake = now_ms().saturating_add(duration_ms(interval));
            if wake >= view.expires_at {
                if !self.sleep_until(view.expires_at).await {
                    return Polled::Cancelled;
                }
                return Polled::Failed(
                    "the codes expired before the user approved the login; start the login again"
                        .into(),
                );
            }
            if !self.sleep_until(wake).await {
                return Polled::Cancelled;
            }
            let sent = job::exchange(
                self.client.clone(),
                Arc::clone(&self.provider),
                self.name.clone(),
                grant.clone(),
                dpop_key.clone(),
            );
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return Polled::Cancelled,
                result = sent => result,
            };
            match step(&result, interval) {
                Step::Granted => match result {
                    Ok(cred) => return Polled::Granted(Box::new(cred)),
                    Err(f) => return Polled::Failed(f.message),
                },
                Step::Stop(reason) => return Polled::Failed(reason),
                Step::Continue(next) => {
                    if next != interval {
                        tracing::info!(tokend_credential = %self.name, tokend_interval_s = next.as_secs(), "device login: polling more slowly, as the provider asked");
                        self.logins.with_current(&self.name, id, |e| {
                            if let Some(v) = &mut e.view {
                                v.interval = next;
                            }
                        });
                    }
                    interval = next;
                }
            }
        }
    }

    /// Sleeps until the wall clock reads `at` (ms), re-reading it at least
    /// every minute; `false` if the login was cancelled meanwhile.
    async fn sleep_until(&self, at: i64) -> bool {
        loop {
            let left = at.saturating_sub(now_ms());
            if left <= 0 {
                return true;
            }
            let nap = Duration::from_millis(left.min(MAX_SLEEP_MS).unsigned_abs());
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: Option<&str>, kind: FailureKind) -> Result<Credential, Failure> {
        Err(Failure {
            kind,
            status: Some(400),
            error_code: code.map(str::to_string),
            message: format!("token endpoint answered 400 {}", code.unwrap_or("-")),
            retry_after: None,
            outcome_unknown: false,
        })
    }

    #[test]
    fn each_answer_of_rfc_8628_3_5() {
        let five = Duration::from_secs(5);
        let t = FailureKind::Transient;
        assert_eq!(
            step(&failed(Some("authorization_pending"), t), five),
            Step::Continue(five)
        );
        assert_eq!(
            step(&failed(Some("slow_down"), t), five),
            Step::Continue(Duration::from_secs(10))
        );
        assert!(matches!(
            step(&failed(Some("access_denied"), t), five),
            Step::Stop(r) if r.contains("denied")
        ));
        assert!(matches!(
            step(&failed(Some("expired_token"), t), five),
            Step::Stop(r) if r.contains("expired")
        ));
        assert!(matches!(
            step(&failed(Some("invalid_client"), FailureKind::Misconfigured), five),
            Step::Stop(r) if r.contains("invalid_client")
        ));
        // No answer: slower, never faster than asked, bounded.
        assert_eq!(
            step(&failed(None, t), five),
            Step::Continue(Duration::from_secs(10))
        );
        assert_eq!(
            step(&failed(None, t), Duration::from_secs(200)),
            Step::Continue(MAX_BACKOFF)
        );
        assert_eq!(
            step(&failed(None, t), Duration::from_secs(400)),
            Step::Continue(Duration::from_secs(400))
        );
        assert!(matches!(
            step(&failed(None, FailureKind::Misconfigured), five),
            Step::Stop(_)
        ));
        let huge = Duration::MAX;
        assert_eq!(
            step(&failed(Some("slow_down"), t), huge),
            Step::Continue(huge)
        );
    }

    fn view(name: &str) -> LoginView {
        LoginView {
            name: name.into(),
            provider: "p".into(),
            state: LoginState::Pending,
            user_code: "U".into(),
            verification_uri: "https://e.example/d".into(),
            verification_uri_complete: None,
            expires_at: 0,
            interval: MIN_INTERVAL,
            started_at: 0,
            finished_at: None,
        }
    }

    fn start(
        logins: &Logins,
        name: &str,
        now: i64,
    ) -> Result<(u64, CancellationToken), RefreshError> {
        let cancel = CancellationToken::new();
        let id = logins.reserve(name, cancel.clone(), now)?;
        logins.with_current(name, id, |e| e.view = Some(view(name)));
        Ok((id, cancel))
    }

    #[test]
    fn a_new_login_replaces_the_old_and_the_table_is_bounded() {
        let logins = Logins::default();
        let (first, first_cancel) = start(&logins, "a", 0).unwrap();
        let (second, _) = start(&logins, "a", 0).unwrap();
        assert!(first_cancel.is_cancelled());
        assert!(!logins.is_pending("a", first) && logins.is_pending("a", second));
        for i in 1..MAX_LOGINS {
            start(&logins, &format!("n{i}"), 0).unwrap();
        }
        assert!(matches!(
            start(&logins, "one-too-many", 0),
            Err(RefreshError::TooManyLogins)
        ));
        // Replacing one that exists still works when full.
        let (again, _) = start(&logins, "a", 0).unwrap();
        // A finished login gives way to a new one.
        logins.finish("a", again, LoginState::Succeeded);
        start(&logins, "new", 0).unwrap();
        assert!(logins.get("a").is_none());
        assert_eq!(logins.list().len(), MAX_LOGINS);
        assert!(logins.cancel("new") && !logins.cancel("new"));
    }

    #[test]
    fn finished_logins_expire_and_never_hold_a_device_code() {
        let logins = Logins::default();
        let (id, _) = start(&logins, "a", 0).unwrap();
        logins.finish("a", id, LoginState::Failed("denied".into()));
        assert_eq!(
            logins.get("a").unwrap().state,
            LoginState::Failed("denied".into())
        );
        start(&logins, "b", now_ms().saturating_add(KEEP_FINISHED_MS)).unwrap();
        assert!(logins.get("a").is_none());
        assert!(logins.get("b").is_some());
    }
}
