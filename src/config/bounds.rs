//! The range every numeric setting must lie in: below it the setting means
//! nothing or stops tokend working (a zero timeout, a body cap no response
//! fits in), above it no deployment has a use for it and the millisecond
//! arithmetic would have to be trusted with it.

use std::ops::RangeInclusive;
use std::time::Duration;

const DAY: u64 = 86_400;
/// Both `max_concurrent_refreshes`.
pub(super) const CONCURRENCY: RangeInclusive<usize> = 1..=4096;
/// Credentials with an expiry series of their own on the metrics page: 0
/// leaves only the aggregates; the top keeps one scrape a bounded size.
pub(super) const METRICS_CREDENTIAL_LIMIT: RangeInclusive<usize> = 0..=10_000;
/// Both `max_response_bytes`.
pub(super) const RESPONSE_BYTES: RangeInclusive<usize> = 1024..=64 << 20;
/// `min_refresh_interval`.
pub(super) const MIN_REFRESH_INTERVAL: RangeInclusive<Duration> = ms(100)..=secs(3600);
/// `max_refresh_margin`.
pub(super) const MAX_REFRESH_MARGIN: RangeInclusive<Duration> = secs(1)..=secs(30 * DAY);
/// `retry_initial`.
pub(super) const RETRY_INITIAL: RangeInclusive<Duration> = ms(10)..=secs(3600);
/// `retry_max`.
pub(super) const RETRY_MAX: RangeInclusive<Duration> = ms(10)..=secs(DAY);
/// `shutdown_timeout`.
pub(super) const SHUTDOWN_TIMEOUT: RangeInclusive<Duration> = ms(100)..=secs(3600);
/// Both `default_lifetime`.
pub(super) const LIFETIME: RangeInclusive<Duration> = secs(1)..=secs(366 * DAY);
/// Both `request_timeout`.
pub(super) const REQUEST_TIMEOUT: RangeInclusive<Duration> = ms(100)..=secs(600);
/// `read_timeout`: below the socket's own 75 s request limit, so the 503
/// gets through.
pub(super) const READ_TIMEOUT: RangeInclusive<Duration> = ms(100)..=secs(60);
/// `discovery_refresh`.
pub(super) const DISCOVERY_REFRESH: RangeInclusive<Duration> = secs(1)..=secs(30 * DAY);
/// `keepalive`.
pub(super) const KEEPALIVE: RangeInclusive<Duration> = secs(60)..=secs(366 * DAY);
/// `refresh_token_warning`; zero means never warn.
pub(super) const REFRESH_TOKEN_WARNING: RangeInclusive<Duration> = secs(0)..=secs(366 * DAY);
/// `assertion_lifetime`: long enough for a clock a little behind, short
/// enough that a stolen assertion is soon useless.
pub(super) const ASSERTION_LIFETIME: RangeInclusive<Duration> = secs(5)..=secs(600);
/// `refresh_remaining`: the fraction of a token's lifetime left when it is
/// refreshed.
pub(super) const REFRESH_REMAINING: RangeInclusive<f64> = 0.05..=0.9;
/// `refresh_jitter`.
pub(super) const REFRESH_JITTER: RangeInclusive<f64> = 0.0..=0.5;
/// Most `refresh_remaining + refresh_jitter` may add up to.
pub(super) const REMAINING_PLUS_JITTER: f64 = 0.95;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
