//! What a token read may do when the published token does not satisfy it,
//! decided as a pure function of plain values ([`read_plan`]).
//!
//! Reads join the refresh schedule: they never start a refresh during a
//! backoff or a `Retry-After`, nor sooner than `min_refresh_interval` after
//! the last one, and wait for a scheduled attempt only within the read bound.

use std::time::Duration;

use super::timing::secs_up;
use super::{RefreshError, View};

/// What [`read_plan`] decides.
#[derive(Debug)]
pub(crate) enum ReadPlan {
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
pub(crate) struct ReadCase<'a> {
    pub(crate) now: i64,
    pub(crate) min_valid_ms: i64,
    pub(crate) view: &'a View,
    /// The scheduled retry, if the last attempt failed and it is pending.
    pub(crate) backoff_until: Option<i64>,
    /// The end of the provider's `Retry-After`, if any.
    pub(crate) blocked_until: Option<i64>,
    pub(crate) min_interval_ms: i64,
    pub(crate) read_timeout_ms: i64,
}

/// Decides what a token read may do (see [`ReadPlan`]).
pub(crate) fn read_plan(c: &ReadCase<'_>) -> ReadPlan {
    if let Some(refused) = unsatisfiable(c) {
        return ReadPlan::Refuse(refused);
    }
    if c.view.refreshing {
        return ReadPlan::Join;
    }
    if let Some(until) = c.blocked_until.filter(|u| *u > c.now) {
        let reason = format!(
            "the provider asked tokend (Retry-After) not to call it for another {}s",
            secs_up(until.saturating_sub(c.now))
        );
        return c.retry_later(reason, until);
    }
    if let Some(at) = c.backoff_until.filter(|at| *at > c.now) {
        if at.saturating_sub(c.now) <= c.read_timeout_ms {
            return ReadPlan::WaitFor(at);
        }
        let why = c
            .view
            .extras()
            .last_error
            .as_deref()
            .unwrap_or("the last refresh failed");
        let reason = format!(
            "retrying after a failure ({why}); the next attempt is in {}s{}",
            secs_up(at.saturating_sub(c.now)),
            c.still_valid()
        );
        return c.retry_later(reason, at);
    }
    if let Some(last) = c.view.last_refresh_at {
        let allowed = last.saturating_add(c.min_interval_ms);
        if c.now < allowed {
            let reason = format!(
                "refreshed {:.1}s ago; retry in {:.1}s (min_refresh_interval){}",
                c.now.saturating_sub(last) as f64 / 1000.0,
                allowed.saturating_sub(c.now) as f64 / 1000.0,
                c.still_valid()
            );
            return c.retry_later(reason, allowed);
        }
    }
    ReadPlan::Refresh
}

/// A read asking for a token valid longer than the provider issues one.
fn unsatisfiable(c: &ReadCase<'_>) -> Option<RefreshError> {
    let lifetime = c.view.issued_lifetime_ms()?;
    (c.min_valid_ms >= lifetime).then(|| RefreshError::MinValidUnsatisfiable {
        name: c.view.name.to_string(),
        min_valid_secs: u64::try_from(c.min_valid_ms / 1000).unwrap_or(0),
        lifetime_secs: lifetime / 1000,
    })
}

impl ReadCase<'_> {
    /// A refusal that tells the caller to come back at `at`.
    fn retry_later(&self, reason: String, at: i64) -> ReadPlan {
        ReadPlan::Refuse(RefreshError::RetryLater {
            name: self.view.name.to_string(),
            reason,
            retry_after: Duration::from_millis(
                u64::try_from(at.saturating_sub(self.now)).unwrap_or(0),
            ),
        })
    }

    /// The note for a refusal while the current token is valid, only not
    /// for as long as asked.
    fn still_valid(&self) -> String {
        match (self.view.access_token.as_ref(), self.view.expires_at) {
            (Some(_), Some(exp)) if exp > self.now => format!(
                "; the current token is still valid for {:.1}s, less than the {:.1}s asked for",
                exp.saturating_sub(self.now) as f64 / 1000.0,
                self.min_valid_ms as f64 / 1000.0
            ),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::credential::Credential;
    use crate::token::{LifetimeSource, Secret};

    fn cred(issued: i64, expires: i64) -> View {
        let mut c = Credential::new("c", "p", Some(Secret::new("rt")), issued);
        c.access_token = Some(Secret::new("at"));
        c.expires_at = Some(expires);
        c.lifetime_source = Some(LifetimeSource::ExpiresIn);
        c.last_refresh_at = Some(issued);
        View::of_alone(&c)
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
        c.edit_extras(|n| n.last_error = Some("token endpoint answered 500".into()));
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
}
