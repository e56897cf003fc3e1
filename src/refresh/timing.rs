//! The refresher's timing, as pure functions of plain values (times in Unix
//! ms): when a credential is due, when a failed refresh or commit is
//! retried, and how long the run loop may sleep. No clock is read here; the
//! callers pass `now` and the jitter sample.

use std::time::Duration;

use super::View;
use crate::config::ProviderConfig;
use crate::credential::GrantKind;
use crate::token::{backoff, duration_ms, RefreshTiming};

/// The longest single sleep: wall time is re-read at least this often, so
/// suspend/resume or a clock jump cannot make a refresh late.
pub(crate) const MAX_SLEEP_MS: i64 = 60_000;

/// How long the run loop may sleep at `now` before the wake-up at `next`.
pub(crate) fn sleep_ms(next: Option<i64>, now: i64) -> i64 {
    next.map_or(MAX_SLEEP_MS, |at| {
        at.saturating_sub(now).clamp(0, MAX_SLEEP_MS)
    })
}

/// When a credential should next be refreshed, or `now` if it holds no
/// usable token. Combines the lifetime-based point, the provider's
/// keepalive, and the refresh token's own expiry (refreshing before it dies
/// gives sliding-expiry providers the chance to extend it).
pub(crate) fn refresh_due_at(
    timing: &RefreshTiming,
    provider: Option<&ProviderConfig>,
    cred: &View,
    now: i64,
    jitter: f64,
) -> i64 {
    let Some(expires_at) = cred.expires_at.filter(|_| cred.access_token.is_some()) else {
        return now;
    };
    if !cred.has_refresh_token && cred.grant == GrantKind::RefreshToken {
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
    if let Some(rt_expires) = cred.extras().refresh_expires_at {
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
pub(crate) fn first_due(due: Option<i64>, interrupted_at: Option<i64>, now: i64) -> Option<i64> {
    let due = due?;
    Some(match interrupted_at {
        Some(at) => at.min(now.saturating_sub(1)),
        None => due.max(now),
    })
}

/// The backoff limits of `[daemon]`: the first delay and the longest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// `retry_initial`.
    pub(crate) base: Duration,
    /// `retry_max`.
    pub(crate) cap: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first), in ms.
    pub(crate) fn delay_ms(self, attempt: u32, jitter: f64) -> i64 {
        duration_ms(backoff(attempt, self.base, self.cap, jitter))
    }
}

/// When to retry a refresh that failed transiently: after the backoff for
/// `attempt`, but never after the current token expires (it must not die
/// without another try), and never inside the provider's `Retry-After`.
pub(crate) fn failure_retry_at(
    now: i64,
    attempt: u32,
    limits: Backoff,
    jitter: f64,
    expires_at: Option<i64>,
    retry_after: Option<Duration>,
) -> i64 {
    let mut at = now.saturating_add(limits.delay_ms(attempt, jitter));
    if let Some(exp) = expires_at.filter(|exp| *exp > now) {
        at = at.min(exp);
    }
    if let Some(ra) = retry_after {
        at = at.max(now.saturating_add(duration_ms(ra)));
    }
    at
}

/// The end of a provider's `Retry-After` given at `now`.
pub(crate) fn blocked_until(now: i64, retry_after: Duration) -> i64 {
    now.saturating_add(duration_ms(retry_after))
}

/// Seconds, rounded up, for messages.
pub(crate) fn secs_up(ms: i64) -> i64 {
    ms.max(0).saturating_add(999) / 1000
}

/// The caveat to show while the refresh token has less than the provider's
/// warning window left.
pub(crate) fn refresh_token_warning(
    provider: Option<&ProviderConfig>,
    cred: &View,
    now: i64,
) -> Option<String> {
    let window = provider.map_or(crate::config::defaults::REFRESH_TOKEN_WARNING, |p| {
        p.refresh_token_warning
    });
    let rt_expires = cred.extras().refresh_expires_at?;
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
    use std::sync::Arc;

    use super::*;
    use crate::config::parse_config;
    use crate::credential::Credential;
    use crate::refresh::view::Interner;
    use crate::token::{LifetimeSource, Secret};

    fn view(c: &Credential) -> View {
        View::of(
            Arc::from(c.name.as_str()),
            c,
            &mut Interner::default(),
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
        v.edit_extras(|n| n.refresh_expires_at = Some(at));
        v
    }

    fn provider(extra: &str) -> ProviderConfig {
        let cfg = parse_config(&format!(
            "[providers.p]\ntoken_url = \"https://p.example/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\n{extra}"
        ))
        .unwrap();
        (*cfg.providers["p"]).clone()
    }

    const LIMITS: Backoff = Backoff {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    };

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
    fn due_time_jitter_stays_within_its_fraction_of_the_lifetime() {
        let t = RefreshTiming::default();
        // Issued at 1000 s for an hour: refresh with 20% to 25% left.
        let (issued, hour) = (1_000_000, 3_600_000);
        let c = cred(issued, issued + hour);
        let earliest = issued + hour - hour / 4;
        let latest = issued + hour - hour / 5;
        assert_eq!(refresh_due_at(&t, None, &c, issued, 0.0), latest);
        assert_eq!(refresh_due_at(&t, None, &c, issued, 1.0), earliest);
        for i in 0..=100 {
            let at = refresh_due_at(&t, None, &c, issued, f64::from(i) / 100.0);
            assert!((earliest..=latest).contains(&at), "{i}: {at}");
        }
        // Samples outside [0, 1] are clamped, never outside the bounds.
        assert_eq!(refresh_due_at(&t, None, &c, issued, -3.0), latest);
        assert_eq!(refresh_due_at(&t, None, &c, issued, 7.0), earliest);
    }

    #[test]
    fn due_now_without_token_and_at_expiry_without_refresh_token() {
        let t = RefreshTiming::default();
        let c = view(&Credential::new("c", "p", Some(Secret::new("rt")), 0));
        assert_eq!(refresh_due_at(&t, None, &c, 77, 0.5), 77);
        let mut c = cred(0, 10_000);
        c.has_refresh_token = false;
        assert_eq!(refresh_due_at(&t, None, &c, 0, 0.5), 10_000);
        // A client_credentials credential has none either, but is
        // re-acquired at the ordinary refresh point, before expiry.
        c.grant = GrantKind::ClientCredentials;
        let normal = refresh_due_at(&t, None, &cred(0, 10_000), 0, 0.5);
        assert_eq!(refresh_due_at(&t, None, &c, 0, 0.5), normal);
        assert!(normal < 10_000);
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

    #[test]
    fn failure_backoff_grows_then_is_capped_by_the_limit_and_the_expiry() {
        let now = 50_000;
        // Full jitter at 1.0: 1 s, 2 s, 4 s ... up to retry_max.
        let delays: Vec<i64> = (0..12)
            .map(|n| failure_retry_at(now, n, LIMITS, 1.0, None, None) - now)
            .collect();
        assert_eq!(&delays[..4], &[1_000, 2_000, 4_000, 8_000]);
        assert_eq!(delays[11], 300_000);
        // Never less than half the first delay, whatever the sample.
        assert_eq!(failure_retry_at(now, 0, LIMITS, 0.0, None, None), now + 500);
        // A token expiring in 3 s is retried at its expiry, not after it.
        let exp = Some(now + 3_000);
        assert_eq!(
            failure_retry_at(now, 5, LIMITS, 1.0, exp, None),
            now + 3_000
        );
        // An expired token does not pull the retry into the past.
        let gone = Some(now - 1);
        assert_eq!(
            failure_retry_at(now, 5, LIMITS, 1.0, gone, None),
            now + 32_000
        );
        // Retry-After wins over both.
        let ra = Some(Duration::from_secs(90));
        assert_eq!(failure_retry_at(now, 0, LIMITS, 1.0, exp, ra), now + 90_000);
        assert_eq!(blocked_until(now, Duration::from_secs(90)), now + 90_000);
        assert_eq!(
            failure_retry_at(i64::MAX, 40, LIMITS, 1.0, None, ra),
            i64::MAX
        );
    }

    #[test]
    fn sleeps_end_at_the_next_wake_up_but_never_exceed_a_minute() {
        assert_eq!(sleep_ms(None, 1_000), MAX_SLEEP_MS);
        assert_eq!(sleep_ms(Some(1_500), 1_000), 500);
        assert_eq!(sleep_ms(Some(500), 1_000), 0);
        assert_eq!(sleep_ms(Some(i64::MAX), i64::MIN), MAX_SLEEP_MS);
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
