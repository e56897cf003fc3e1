//! When to refresh and how long to back off: pure arithmetic over plain
//! values (issue time, expiry, jitter drawn by the caller).

use std::time::Duration;

use super::duration_ms;

/// When to refresh, as a policy independent of any one credential.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RefreshTiming {
    /// Refresh when this fraction of the lifetime remains (0.25 = at 75%).
    pub remaining_fraction: f64,
    /// Up to this further fraction of the lifetime is added to the margin at
    /// random, so credentials loaded together spread out.
    pub jitter_fraction: f64,
    /// Never schedule a refresh sooner than this after the last one, so a
    /// provider handing out 6-second tokens cannot cause a tight loop.
    pub min_interval: Duration,
    /// Never keep a margin larger than this before expiry.
    pub max_margin: Duration,
}

impl Default for RefreshTiming {
    fn default() -> Self {
        RefreshTiming {
            remaining_fraction: 0.20,
            jitter_fraction: 0.05,
            min_interval: Duration::from_secs(1),
            max_margin: Duration::from_secs(6 * 3600),
        }
    }
}

impl RefreshTiming {
    /// The wall-clock time (ms) at which to refresh a token issued at
    /// `issued_ms` that expires at `expires_ms`. `jitter` is a sample in [0, 1).
    pub(crate) fn refresh_at_ms(&self, issued_ms: i64, expires_ms: i64, jitter: f64) -> i64 {
        let lifetime = expires_ms.saturating_sub(issued_ms).max(0) as f64;
        let fraction = self.remaining_fraction + self.jitter_fraction * jitter.clamp(0.0, 1.0);
        let margin = (lifetime * fraction).min(duration_ms(self.max_margin) as f64);
        // `as` saturates (and turns NaN into 0).
        let at = expires_ms.saturating_sub(margin as i64);
        at.max(issued_ms.saturating_add(duration_ms(self.min_interval)))
    }
}

/// Exponential backoff with full jitter: a uniform sample in
/// `[0, min(cap, base * 2^attempt))`, at least `base / 2` so retries never spin.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cap);
    // `mul_f64` panics when rounding takes a huge ceiling past `Duration::MAX`.
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * jitter.clamp(0.0, 1.0))
        .unwrap_or(ceiling)
        .min(ceiling)
        .max(base / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_point_scales_with_lifetime_and_is_clamped() {
        let t = RefreshTiming::default();
        // One hour: refresh with 20-25% remaining.
        let at = t.refresh_at_ms(0, 3_600_000, 0.0);
        assert_eq!(at, 2_880_000);
        let at = t.refresh_at_ms(0, 3_600_000, 1.0);
        assert_eq!(at, 2_700_000);
        // Six seconds: around 4.5 s, never a tight loop.
        let at = t.refresh_at_ms(0, 6_000, 0.5);
        assert!((4_000..=5_000).contains(&at), "{at}");
        // Already-expired or 100 ms token: not before min_interval.
        assert_eq!(t.refresh_at_ms(0, 100, 0.0), 1_000);
        assert_eq!(t.refresh_at_ms(5_000, 0, 0.0), 6_000);
        // Thirty days: the margin is capped.
        let month = 30 * 86_400_000i64;
        assert_eq!(t.refresh_at_ms(0, month, 1.0), month - 6 * 3_600_000);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(0, base, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(40, base, cap, 1.0), cap);
        assert_eq!(backoff(40, base, cap, 0.0), Duration::from_millis(500));
        assert_eq!(
            backoff(u32::MAX, Duration::MAX, Duration::MAX, 1.0),
            Duration::MAX
        );
    }

    #[test]
    fn refresh_point_of_extreme_times_does_not_overflow() {
        let t = RefreshTiming {
            max_margin: Duration::MAX,
            min_interval: Duration::MAX,
            ..RefreshTiming::default()
        };
        // A quarter of the saturated lifetime before the end.
        assert_eq!(
            t.refresh_at_ms(i64::MIN, i64::MAX, 1.0),
            i64::MAX - i64::MAX / 4 - 1
        );
        assert_eq!(t.refresh_at_ms(i64::MAX, i64::MIN, 0.0), i64::MAX);
        let t = RefreshTiming::default();
        let at = t.refresh_at_ms(0, i64::MAX, 0.5);
        assert_eq!(at, i64::MAX - 6 * 3_600_000);
    }

    #[test]
    fn backoff_with_huge_attempts_and_limits_does_not_panic() {
        let base = Duration::from_secs(1);
        // The exponent stops at 2^30.
        assert_eq!(
            backoff(u32::MAX, base, Duration::MAX, 1.0),
            Duration::from_secs(1 << 30)
        );
        assert_eq!(backoff(7, Duration::MAX, Duration::MAX, 1.0), Duration::MAX);
        assert_eq!(
            backoff(u32::MAX, base, Duration::from_secs(300), 1.0),
            Duration::from_secs(300)
        );
        assert_eq!(duration_ms(Duration::MAX), i64::MAX);
    }
}
