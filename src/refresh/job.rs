//! Refresh jobs: the tasks that talk to token endpoints and the database on
//! the owner's behalf, and the pure arithmetic of when to start one.
//!
//! A job is handed a copy of the credential and the owner's promise that no
//! other job for it runs meanwhile. It records the attempt durably, calls the
//! provider, commits the outcome (guarded by generation) and only then
//! reports back.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::Semaphore;

use super::{RefreshError, View};
use crate::config::ProviderConfig;
use crate::credential::{Credential, State};
use crate::event;
use crate::events::Kind;
use crate::provider::{Failure, FailureKind, ProviderClient, TokenGrant};
use crate::store::{GroupCommit, Store};
use crate::token::{duration_ms, expires_at_ms, now_ms, RefreshTiming};

/// What a token read that the published token does not satisfy may do.
/// Reads join the refresh schedule: they never start a refresh during a
/// backoff or a `Retry-After`, nor sooner than `min_refresh_interval` after
/// the last one, and wait for a scheduled attempt only within the read bound.
#[derive(Debug)]
pub(super) enum ReadPlan {
    /// Start the refresh now and wait for it.
    Refresh,
    /// Wait for the refresh in flight.
    Join,
    /// Wait for the attempt the schedule holds at this time (Unix ms).
    WaitFor(i64),
    /// Answer with this at once; nothing is sent to the provider.
    Refuse(RefreshError),
}

/// What [`read_plan`] decides on, as plain values.
pub(super) struct ReadCase<'a> {
    pub now: i64,
    pub min_valid_ms: i64,
    pub view: &'a View,
    /// The scheduled retry, if the last attempt failed and it is pending.
    pub backoff_until: Option<i64>,
    /// The end of the provider's `Retry-After`, if any.
    pub blocked_until: Option<i64>,
    pub min_interval_ms: i64,
    pub read_timeout_ms: i64,
}

/// Seconds, rounded up, for messages.
fn secs_up(ms: i64) -> i64 {
    ms.max(0).saturating_add(999) / 1000
}

/// Decides what a token read may do (see [`ReadPlan`]).
pub(super) fn read_plan(c: &ReadCase<'_>) -> ReadPlan {
    let v = c.view;
    let name = || v.name.to_string();
    if let Some(lifetime) = v.issued_lifetime_ms() {
        if c.min_valid_ms >= lifetime {
            return ReadPlan::Refuse(RefreshError::MinValidUnsatisfiable {
                name: name(),
                min_valid_secs: u64::try_from(c.min_valid_ms / 1000).unwrap_or(0),
                lifetime_secs: lifetime / 1000,
            });
        }
    }
    if v.refreshing {
        return ReadPlan::Join;
    }
    let retry = |reason: String, at: i64| {
        ReadPlan::Refuse(RefreshError::RetryLater {
            name: name(),
            reason,
            retry_after: Duration::from_millis(
                u64::try_from(at.saturating_sub(c.now)).unwrap_or(0),
            ),
        })
    };
    if let Some(until) = c.blocked_until.filter(|u| *u > c.now) {
        return retry(
            format!(
                "the provider asked tokend (Retry-After) not to call it for another {}s",
                secs_up(until.saturating_sub(c.now))
            ),
            until,
        );
    }
    let short = match (v.access_token.as_ref(), v.expires_at) {
        (Some(_), Some(exp)) if exp > c.now => format!(
            "; the current token is still valid for {:.1}s, less than the {:.1}s asked for",
            exp.saturating_sub(c.now) as f64 / 1000.0,
            c.min_valid_ms as f64 / 1000.0
        ),
        _ => String::new(),
    };
    if let Some(at) = c.backoff_until.filter(|at| *at > c.now) {
        if at.saturating_sub(c.now) <= c.read_timeout_ms {
            return ReadPlan::WaitFor(at);
        }
        let why = v
            .notes()
            .last_error
            .as_deref()
            .unwrap_or("the last refresh failed");
        return retry(
            format!(
                "retrying after a failure ({why}); the next attempt is in {}s{short}",
                secs_up(at.saturating_sub(c.now))
            ),
            at,
        );
    }
    if let Some(last) = v.last_refresh_at {
        let allowed = last.saturating_add(c.min_interval_ms);
        if c.now < allowed {
            return retry(
                format!(
                    "refreshed {:.1}s ago; retry in {:.1}s (min_refresh_interval){short}",
                    c.now.saturating_sub(last) as f64 / 1000.0,
                    allowed.saturating_sub(c.now) as f64 / 1000.0
                ),
                allowed,
            );
        }
    }
    ReadPlan::Refresh
}

/// What a job tells the owner.
pub(super) enum Outcome {
    /// New tokens; `committed` is false if the database refused them (they
    /// are then only in memory).
    Refreshed { cred: Credential, committed: bool },
    /// The refresh failed. `cred` carries the recorded error and state, or
    /// is `None` if the credential could not even be read.
    Failed {
        cred: Option<Credential>,
        failure: Failure,
    },
    /// A commit-only job (retrying tokens held in memory) finished.
    Committed { ok: bool },
    /// The credential was replaced or removed while the job ran.
    Superseded,
}

/// One job: a refresh (`refresh == true`), or only the retry of a commit
/// that failed earlier (`pending` with `refresh == false`).
pub(super) struct Job {
    pub commits: GroupCommit,
    pub store: Store,
    pub client: ProviderClient,
    /// `None` only for a commit retry of a credential whose provider was
    /// removed from the configuration.
    pub provider: Option<Arc<ProviderConfig>>,
    pub name: Arc<str>,
    pub generation: i64,
    /// Tokens newer than the database's, held in memory since their commit
    /// failed. They are the only copy of the newest refresh token.
    pub pending: Option<Credential>,
    /// An earlier refresh ended without a known outcome.
    pub earlier_unknown: bool,
    pub refresh: bool,
    pub global: Arc<Semaphore>,
    pub per_provider: Arc<Semaphore>,
}

/// Makes the next job panic, for the refresher's tests.
#[cfg(test)]
pub(super) static PANIC_NEXT_JOB: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl Job {
    pub async fn run(mut self) -> Outcome {
        #[cfg(test)]
        if PANIC_NEXT_JOB.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a job panicked on purpose");
        }
        let mut uncommitted = false;
        if let Some(pending) = &self.pending {
            match self.commits.save(pending.clone()).await {
                Ok(true) => {}
                Ok(false) => return Outcome::Superseded,
                Err(e) => {
                    uncommitted = true;
                    tracing::warn!(tokend_credential = %self.name, tokend_error = %e, "commit of tokens held in memory still failing");
                }
            }
            if !self.refresh {
                return Outcome::Committed { ok: !uncommitted };
            }
        }
        // Provider slot first, so a rate-limited provider cannot hold global slots.
        let Ok(_provider_permit) = Arc::clone(&self.per_provider).acquire_owned().await else {
            return Outcome::Superseded;
        };
        let Ok(_permit) = Arc::clone(&self.global).acquire_owned().await else {
            return Outcome::Superseded;
        };
        let sent_at = now_ms();
        let cred = match self.pending.take() {
            // Committed just now: the database and memory agree, but the
            // attempt still has to be marked.
            Some(_) if !uncommitted => self.begin(sent_at).await,
            // The database is failing and holds an older refresh token than
            // memory: refreshing with the newest one (the only one the
            // provider still accepts) beats letting the access token die.
            Some(cred) => Ok(cred),
            None => self.begin(sent_at).await,
        };
        match cred {
            Ok(cred) => self.refresh(cred, sent_at, uncommitted).await,
            Err(outcome) => outcome,
        }
    }

    /// Records durably that a refresh is about to be sent and reads the
    /// credential back, refresh token included. If the mark cannot be
    /// written, reads the credential anyway: the mark only helps a later
    /// diagnosis, and a lapsed access token helps no one.
    async fn begin(&self, at: i64) -> Result<Credential, Outcome> {
        let marked = self
            .commits
            .begin(self.name.to_string(), self.generation, at)
            .await;
        let cred = match marked {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(
                    tokend_credential = %self.name, tokend_error = %e,
                    "cannot record the refresh attempt in the database; refreshing anyway"
                );
                match self.store.load(&self.name).await {
                    Ok(cred) => cred.filter(|c| c.generation == self.generation),
                    Err(e) => {
                        return Err(Outcome::Failed {
                            cred: None,
                            failure: failure(
                                FailureKind::Transient,
                                &format!("cannot read the credential from the database: {e}"),
                            ),
                        })
                    }
                }
            }
        };
        cred.ok_or(Outcome::Superseded)
    }

    async fn refresh(self, mut cred: Credential, sent_at: i64, uncommitted: bool) -> Outcome {
        let Some(provider) = self.provider.clone() else {
            return Outcome::Superseded;
        };
        let Some(refresh_token) = cred.refresh_token.clone() else {
            let f = failure(
                FailureKind::Reauth,
                "the provider never issued a refresh token and the access token has expired",
            );
            return self.fail(cred, f, uncommitted).await;
        };
        // `begin` keeps the mark of an earlier attempt whose outcome is
        // unknown; so does this copy, which the failure path saves.
        cred.refresh_started_at = Some(cred.refresh_started_at.unwrap_or(sent_at));
        let result = self
            .client
            .request(&provider.endpoint, &TokenGrant::Refresh { refresh_token })
            .await;
        match result {
            Ok(set) => {
                let (expires_at, source) = expires_at_ms(&set, sent_at, provider.default_lifetime);
                cred.apply(set, sent_at, expires_at, source);
                let committed = match self.commits.save(cred.clone()).await {
                    Ok(true) => true,
                    Ok(false) => return Outcome::Superseded,
                    Err(e) => {
                        tracing::error!(tokend_credential = %self.name, tokend_error = %e, "commit of refreshed tokens failed");
                        false
                    }
                };
                Outcome::Refreshed { cred, committed }
            }
            Err(mut f) => {
                if f.kind == FailureKind::Reauth && self.earlier_unknown {
                    f.message.push_str(
                        "; an earlier refresh of this credential ended without a known outcome (tokend stopped, or the request timed out after it was sent), so the provider has probably rotated the refresh token then",
                    );
                }
                // Keep the mark when the provider may have processed the
                // request: the next attempt (or the next start) knows then.
                if !f.outcome_unknown {
                    cred.refresh_started_at = None;
                }
                self.fail(cred, f, uncommitted).await
            }
        }
    }

    async fn fail(self, mut cred: Credential, failure: Failure, uncommitted: bool) -> Outcome {
        cred.last_error = Some(failure.message.clone());
        cred.updated_at = now_ms();
        if failure.kind == FailureKind::Reauth {
            cred.state = State::NeedsReauth;
            cred.refresh_started_at = None;
        }
        if !uncommitted {
            match self.commits.save(cred.clone()).await {
                Ok(false) => return Outcome::Superseded,
                Ok(true) => {}
                Err(e) => {
                    tracing::error!(tokend_credential = %self.name, tokend_error = %e, "could not record the refresh failure")
                }
            }
        }
        Outcome::Failed {
            cred: Some(cred),
            failure,
        }
    }
}

/// Runs a job's future, turning a panic into a transient failure: the
/// owner then clears `refreshing`, releases the job's running counts and
/// retries with backoff, where a lost task would leave the credential
/// refreshing forever. The mark in the database stays, as for any attempt
/// whose outcome is unknown.
pub(super) async fn run_caught(name: &str, job: impl Future<Output = Outcome>) -> Outcome {
    let panic = match AssertUnwindSafe(job).catch_unwind().await {
        Ok(outcome) => return outcome,
        Err(panic) => panic,
    };
    // Only a literal message: a formatted one could carry anything.
    let what = panic
        .downcast_ref::<&'static str>()
        .map_or_else(String::new, |m| format!(": {m}"));
    event!(
        error, Kind::RefreshFailed,
        tokend_credential = %name,
        "the refresh job panicked{what}; this is a bug in tokend, please report it; retrying with backoff"
    );
    let mut f = failure(
        FailureKind::Transient,
        "the refresh job failed unexpectedly (a bug in tokend; see the log)",
    );
    f.outcome_unknown = true;
    Outcome::Failed {
        cred: None,
        failure: f,
    }
}

/// Exchanges an authorization code; the owner stores the result.
pub(super) async fn exchange(
    client: ProviderClient,
    provider: Arc<ProviderConfig>,
    name: String,
    grant: TokenGrant,
    permit: (Arc<Semaphore>, Arc<Semaphore>),
) -> Result<Credential, Failure> {
    let _provider_permit = permit.1.acquire_owned().await;
    let _permit = permit.0.acquire_owned().await;
    let sent_at = now_ms();
    let set = client.request(&provider.endpoint, &grant).await?;
    let (expires_at, source) = expires_at_ms(&set, sent_at, provider.default_lifetime);
    let mut cred = Credential::new(&name, &provider.name, None, sent_at);
    cred.apply(set, sent_at, expires_at, source);
    Ok(cred)
}

fn failure(kind: FailureKind, message: &str) -> Failure {
    Failure {
        kind,
        status: None,
        error_code: None,
        message: message.to_string(),
        retry_after: None,
        outcome_unknown: false,
    }
}

/// When a credential should next be refreshed (Unix ms), or `now` if it
/// holds no usable token. Combines the lifetime-based point, the provider's
/// keepalive, and the refresh token's own expiry (refreshing before it dies
/// gives sliding-expiry providers the chance to extend it).
pub(super) fn refresh_due_at(
    timing: &RefreshTiming,
    provider: Option<&ProviderConfig>,
    cred: &View,
    now: i64,
    jitter: f64,
) -> i64 {
    let Some(expires_at) = cred.expires_at.filter(|_| cred.access_token.is_some()) else {
        return now;
    };
    if !cred.has_refresh_token {
        // Nothing to refresh with: look again when the token dies, to mark
        // the credential as needing re-authorization.
        return expires_at;
    }
    let issued = cred.last_refresh_at.unwrap_or(cred.updated_at);
    let floor = issued.saturating_add(duration_ms(timing.min_interval));
    let mut at = timing.refresh_at_ms(issued, expires_at, jitter);
    if let Some(keepalive) = provider.and_then(|p| p.keepalive) {
        at = at.min(issued.saturating_add(duration_ms(keepalive)).max(floor));
    }
    if let Some(rt_expires) = cred.notes().refresh_expires_at {
        let margin = (rt_expires.saturating_sub(issued) / 10).max(60_000);
        let before = rt_expires.saturating_sub(margin);
        // Only if that point is still ahead: a provider that does not extend
        // the refresh token must not make us refresh in a loop.
        if before > floor {
            at = at.min(before);
        }
    }
    at
}

/// The caveat to show while the refresh token has less than the provider's
/// warning window left.
pub(super) fn refresh_token_warning(
    provider: Option<&ProviderConfig>,
    cred: &View,
    now: i64,
) -> Option<String> {
    let window = provider.map_or(Duration::from_secs(3 * 86_400), |p| p.refresh_token_warning);
    let rt_expires = cred.notes().refresh_expires_at?;
    let left = rt_expires.saturating_sub(now);
    (left < duration_ms(window)).then(|| {
        if left <= 0 {
            "the refresh token has expired according to the provider; expect to re-authorize".to_string()
        } else {
            format!(
                "the refresh token expires in {}; if refreshing does not extend it, re-authorize before then",
                humantime::format_duration(Duration::from_secs((left / 1000) as u64))
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::token::{LifetimeSource, Secret};

    fn view(c: &Credential) -> View {
        View::of(
            Arc::from(c.name.as_str()),
            c,
            &mut super::super::handle::Interner::default(),
            Arc::from(Vec::new()),
        )
    }

    fn cred(issued: i64, expires: i64) -> View {
        let mut c = Credential::new("c", "p", Some(Secret::new("rt")), issued);
        c.access_token = Some(Secret::new("at"));
        c.expires_at = Some(expires);
        c.lifetime_source = Some(LifetimeSource::ExpiresIn);
        c.last_refresh_at = Some(issued);
        view(&c)
    }

    fn rt_expiring(mut v: View, at: i64) -> View {
        v.edit_notes(|n| n.refresh_expires_at = Some(at));
        v
    }

    fn provider(extra: &str) -> ProviderConfig {
        let cfg = parse_config(&format!(
            "[providers.p]\ntoken_url = \"https://p.example/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\n{extra}"
        ))
        .unwrap();
        (*cfg.providers["p"]).clone()
    }

    #[test]
    fn due_time_from_lifetime_keepalive_and_refresh_token_expiry() {
        let t = RefreshTiming::default();
        let hour = 3_600_000;
        let c = cred(0, hour);
        assert_eq!(refresh_due_at(&t, None, &c, 0, 0.0), 2_880_000);
        // Keepalive shorter than the access-token lifetime wins.
        let p = provider("keepalive = \"10m\"");
        assert_eq!(refresh_due_at(&t, Some(&p), &c, 0, 0.0), 600_000);
        // A refresh token dying in 30 min is refreshed 10% of its life early.
        let c2 = rt_expiring(c.clone(), 1_800_000);
        assert_eq!(refresh_due_at(&t, None, &c2, 0, 0.0), 1_620_000);
        // ...but one already about to die does not cause a loop.
        let c2 = rt_expiring(c2, 30_000);
        assert_eq!(refresh_due_at(&t, None, &c2, 0, 0.0), 2_880_000);
    }

    #[test]
    fn due_now_without_token_and_at_expiry_without_refresh_token() {
        let t = RefreshTiming::default();
        let c = view(&Credential::new("c", "p", Some(Secret::new("rt")), 0));
        assert_eq!(refresh_due_at(&t, None, &c, 77, 0.5), 77);
        let mut c = cred(0, 10_000);
        c.has_refresh_token = false;
        assert_eq!(refresh_due_at(&t, None, &c, 0, 0.5), 10_000);
    }

    fn case(view: &View, now: i64, min_valid_ms: i64) -> ReadCase<'_> {
        ReadCase {
            now,
            min_valid_ms,
            view,
            backoff_until: None,
            blocked_until: None,
            min_interval_ms: 1_000,
            read_timeout_ms: 5_000,
        }
    }

    #[test]
    fn a_read_never_asks_for_more_than_the_provider_issues() {
        // Issued at 0, valid for 100 s.
        let c = cred(0, 100_000);
        for min_valid in [100_000, 99_999_999_000, i64::MAX] {
            match read_plan(&case(&c, 50_000, min_valid)) {
                ReadPlan::Refuse(e @ RefreshError::MinValidUnsatisfiable { .. }) => {
                    assert!(e.to_string().contains("valid for only 100s"), "{e}")
                }
                other => panic!("{min_valid}: {other:?}"),
            }
        }
        assert!(matches!(
            read_plan(&case(&c, 50_000, 99_000)),
            ReadPlan::Refresh
        ));
    }

    #[test]
    fn a_read_waits_out_the_minimum_interval_and_says_so() {
        let c = cred(10_000, 110_000);
        match read_plan(&case(&c, 10_400, 99_900)) {
            ReadPlan::Refuse(e @ RefreshError::RetryLater { .. }) => {
                let RefreshError::RetryLater { retry_after, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(*retry_after, Duration::from_millis(600));
                let text = e.to_string();
                assert!(text.contains("refreshed 0.4s ago; retry in 0.6s"), "{text}");
                assert!(
                    text.contains("still valid for 99.6s, less than the 99.9s"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_plan(&case(&c, 11_000, 99_000)),
            ReadPlan::Refresh
        ));
    }

    #[test]
    fn a_read_joins_the_backoff_schedule() {
        let mut c = cred(0, 10_000);
        c.edit_notes(|n| n.last_error = Some("token endpoint answered 500".into()));
        let mut k = case(&c, 20_000, 0);
        // The retry is within the read bound: wait for it.
        k.backoff_until = Some(23_000);
        assert!(matches!(read_plan(&k), ReadPlan::WaitFor(23_000)));
        // Too far: refused with the reason and when.
        k.backoff_until = Some(60_000);
        match read_plan(&k) {
            ReadPlan::Refuse(e @ RefreshError::RetryLater { .. }) => {
                let text = e.to_string();
                assert!(text.contains("answered 500"), "{text}");
                assert!(text.contains("next attempt is in 40s"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        // A Retry-After is obeyed as well.
        k.backoff_until = None;
        k.blocked_until = Some(21_500);
        assert!(matches!(
            read_plan(&k),
            ReadPlan::Refuse(RefreshError::RetryLater { .. })
        ));
        // A refresh in flight is joined.
        let mut busy = c.clone();
        busy.refreshing = true;
        assert!(matches!(read_plan(&case(&busy, 20_000, 0)), ReadPlan::Join));
    }

    #[tokio::test]
    async fn a_panicking_job_is_a_transient_failure_with_unknown_outcome() {
        let outcome = run_caught("c", async { panic!("job blew up") }).await;
        let Outcome::Failed { cred, failure } = outcome else {
            panic!("not a failure");
        };
        assert!(cred.is_none());
        assert_eq!(failure.kind, FailureKind::Transient);
        assert!(failure.outcome_unknown);
        assert!(
            failure.message.contains("unexpectedly"),
            "{}",
            failure.message
        );
        // A job that does not panic is passed through.
        let outcome = run_caught("c", async { Outcome::Committed { ok: true } }).await;
        assert!(matches!(outcome, Outcome::Committed { ok: true }));
    }

    #[test]
    fn due_time_of_extreme_times_does_not_overflow() {
        let t = RefreshTiming::default();
        let p = provider("keepalive = \"10m\"");
        let c = rt_expiring(cred(i64::MAX - 1, i64::MAX), i64::MIN);
        assert_eq!(refresh_due_at(&t, Some(&p), &c, 0, 1.0), i64::MAX);
        let c = rt_expiring(cred(i64::MIN, i64::MAX), i64::MAX);
        let at = refresh_due_at(&t, Some(&p), &c, 0, 1.0);
        assert_eq!(at, i64::MIN + 600_000);
        assert!(refresh_token_warning(Some(&p), &c, i64::MIN).is_none());
        let c = rt_expiring(c, i64::MIN);
        assert!(refresh_token_warning(Some(&p), &c, i64::MAX).is_some());
    }

    #[test]
    fn warning_when_the_refresh_token_is_close_to_expiry() {
        let p = provider("refresh_token_warning = \"1h\"");
        let c = cred(0, 1000);
        assert_eq!(refresh_token_warning(Some(&p), &c, 0), None);
        let c = rt_expiring(c, 7_200_000);
        assert_eq!(refresh_token_warning(Some(&p), &c, 0), None);
        let w = refresh_token_warning(Some(&p), &c, 5_400_000).unwrap();
        assert!(w.contains("expires in 30m"), "{w}");
        let w = refresh_token_warning(Some(&p), &c, 8_000_000).unwrap();
        assert!(w.contains("has expired"), "{w}");
    }
}
