//! The events an operator may want to find again: each kind has a stable
//! journald `MESSAGE_ID` and a short name, and is logged through `event!`
//! with the same structured fields everywhere.
//!
//! Field names are written as journald will show them, lowercased:
//! `tokend_credential` becomes `TOKEND_CREDENTIAL` in the journal, while the
//! stderr format drops the `tokend_` prefix. `message_id` becomes
//! `MESSAGE_ID`, so `journalctl MESSAGE_ID=<id>` finds every event of a kind.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// A kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The daemon is ready and serving.
    Started,
    /// The daemon is stopping.
    Stopping,
    /// A new configuration was loaded on SIGHUP.
    Reloaded,
    /// A reload was refused; the old configuration stays.
    ReloadFailed,
    /// A credential was added or replaced from a refresh token.
    CredentialAdded,
    /// A credential was created from an authorization code.
    CredentialExchanged,
    /// A credential was removed.
    CredentialRemoved,
    /// An access token was refreshed.
    Refreshed,
    /// A refresh failed transiently; it will be retried.
    RefreshFailed,
    /// The grant is dead; a human must re-authorize.
    NeedsReauth,
    /// The provider rejected the client; refreshing is paused.
    ProviderMisconfigured,
    /// A refresh was in flight when the daemon last stopped.
    RefreshInterrupted,
    /// New tokens could not be committed; they are held in memory.
    CommitFailed,
    /// Tokens held in memory were committed.
    CommitRecovered,
    /// The provider issued no refresh token.
    NoRefreshToken,
    /// A refresh token is close to its stated expiry.
    RefreshTokenExpiring,
    /// A client was refused a token or an operation.
    AccessDenied,
    /// A provider's metadata was fetched (or read from the stored copy).
    Discovered,
    /// A provider's metadata could not be fetched or was refused.
    DiscoveryFailed,
    /// A credential's token was revoked at the provider.
    Revoked,
    /// A revocation failed.
    RevocationFailed,
    /// A hook ran and exited 0.
    HookRan,
    /// A hook could not start, or exited non-zero or on a signal.
    HookFailed,
    /// A hook ran past its timeout and was killed with its process group.
    HookTimedOut,
    /// Hook events were dropped: a credential's queue was full.
    HookDropped,
    /// A sink file could not be written or removed, or its write ran long.
    SinkFailed,
}

impl Kind {
    /// Every kind, for documentation and tests.
    pub const ALL: [Kind; 26] = [
        Kind::Started,
        Kind::Stopping,
        Kind::Reloaded,
        Kind::ReloadFailed,
        Kind::CredentialAdded,
        Kind::CredentialExchanged,
        Kind::CredentialRemoved,
        Kind::Refreshed,
        Kind::RefreshFailed,
        Kind::NeedsReauth,
        Kind::ProviderMisconfigured,
        Kind::RefreshInterrupted,
        Kind::CommitFailed,
        Kind::CommitRecovered,
        Kind::NoRefreshToken,
        Kind::RefreshTokenExpiring,
        Kind::AccessDenied,
        Kind::Discovered,
        Kind::DiscoveryFailed,
        Kind::Revoked,
        Kind::RevocationFailed,
        Kind::HookRan,
        Kind::HookFailed,
        Kind::HookTimedOut,
        Kind::HookDropped,
        Kind::SinkFailed,
    ];

    /// The short name, logged as `tokend_event`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::Stopping => "stopping",
            Kind::Reloaded => "reloaded",
            Kind::ReloadFailed => "reload_failed",
            Kind::CredentialAdded => "credential_added",
            Kind::CredentialExchanged => "credential_exchanged",
            Kind::CredentialRemoved => "credential_removed",
            Kind::Refreshed => "refreshed",
            Kind::RefreshFailed => "refresh_failed",
            Kind::NeedsReauth => "needs_reauth",
            Kind::ProviderMisconfigured => "provider_misconfigured",
            Kind::RefreshInterrupted => "refresh_interrupted",
            Kind::CommitFailed => "commit_failed",
            Kind::CommitRecovered => "commit_recovered",
            Kind::NoRefreshToken => "no_refresh_token",
            Kind::RefreshTokenExpiring => "refresh_token_expiring",
            Kind::AccessDenied => "access_denied",
            Kind::Discovered => "discovered",
            Kind::DiscoveryFailed => "discovery_failed",
            Kind::Revoked => "revoked",
            Kind::RevocationFailed => "revocation_failed",
            Kind::HookRan => "hook_ran",
            Kind::HookFailed => "hook_failed",
            Kind::HookTimedOut => "hook_timed_out",
            Kind::HookDropped => "hook_dropped",
            Kind::SinkFailed => "sink_failed",
        }
    }

    /// The journald `MESSAGE_ID` (128 bits, hex). Never change one: operators
    /// filter and alert on them.
    pub fn message_id(self) -> &'static str {
        match self {
            Kind::Started => "2f1cd580ae2a4372b14110e1fe93860b",
            Kind::Stopping => "ff866de9d1ee4904ba531b525a7765b6",
            Kind::Reloaded => "9371b48b8e76490a9f81627a9699997a",
            Kind::ReloadFailed => "5f9e55a0f7e54e35a867fc2a1636960f",
            Kind::CredentialAdded => "dd31339c93314236b938b2abf9bf6b3e",
            Kind::CredentialExchanged => "1028794e32ec459ca3b614d7312be1d9",
            Kind::CredentialRemoved => "bed7957987c6475ebe5275f9092cd79d",
            Kind::Refreshed => "382a9e3ba987493ea418b4c8a39abfa9",
            Kind::RefreshFailed => "c5c082b67558423488dc384def55081d",
            Kind::NeedsReauth => "4e9842ceb8284b74bd4fff1324735464",
            Kind::ProviderMisconfigured => "bfbbab55d9ee4d888df7ce9851c172b8",
            Kind::RefreshInterrupted => "ff93c1fbf2334751a8e48ff642bdfddb",
            Kind::CommitFailed => "018bdd3a6f604d36bc946c7a51eec608",
            Kind::CommitRecovered => "c32244a1b09649678f4bd0576872c6a1",
            Kind::NoRefreshToken => "5472e4bf01b14d79909d6341550feee0",
            Kind::RefreshTokenExpiring => "09fc360a6ace4febba500d5434074ffd",
            Kind::AccessDenied => "8c1f7d3e52a94b0e9d6a41c2b7e0f358",
            Kind::Discovered => "00d1913430a14eefbb93b358c32362e8",
            Kind::DiscoveryFailed => "f40fecedf91c4c5ca26eb2d772c57adc",
            Kind::Revoked => "6226210686974472b86da21792bc70c3",
            Kind::RevocationFailed => "7bad4ada585f4b7ca7054edcc84b4df7",
            Kind::HookRan => "b3d1f0a64c2e4e2f9a7c51d08e6b3f21",
            Kind::HookFailed => "e0c94f7a1d8b4b6c8f2e37a95d41c6b8",
            Kind::HookTimedOut => "5a7e2c19f3b04d8e9c6a12f47b80d3e5",
            Kind::HookDropped => "9f41b6d2a8c34e7b8d05e9f1c3a27b64",
            Kind::SinkFailed => "3c5e0b7a9d2f4e61b8a4c7d90e1f2a53",
        }
    }
}

/// Logs an event of a [`Kind`] at a level, with its MESSAGE_ID and name, then
/// any further fields and the message:
///
/// ```text
/// event!(info, Kind::Refreshed, tokend_credential = %name, tokend_expires_in = 3600, "refreshed");
/// ```
#[macro_export]
macro_rules! event {
    ($level:ident, $kind:expr, $($rest:tt)+) => {
        tracing::$level!(
            message_id = $kind.message_id(),
            tokend_event = $kind.name(),
            $($rest)+
        )
    };
}

/// Events any socket user can cause at will (a refusal, a connection over a
/// cap), or that repeat at the machine's pace (a failing `accept`). Each is
/// logged at a bounded rate per key, so a flood cannot fill the journal nor
/// push other lines out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Noisy {
    /// `access_denied`, keyed by the caller's uid.
    AccessDenied,
    /// A connection closed because the daemon is at its connection cap.
    ConnectionCap,
    /// A connection closed because its uid is at the per-uid cap; by uid.
    UidCap,
    /// `accept` on the socket failed.
    AcceptFailed,
}

/// Lines logged per (kind, key) in one [`WINDOW`]; later ones are counted.
pub(crate) const BURST: u32 = 5;
/// How long a burst lasts.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// Above this many keys, keys with nothing to report are forgotten.
const MAX_KEYS: usize = 4096;

/// What happened to one (kind, key) in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Whether to log one more occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log it; `suppressed` is how many went unlogged in the key's previous
    /// window, for a `tokend_suppressed` field (None when there were none).
    Log { suppressed: Option<u64> },
    /// Count it, do not log it.
    Suppress,
}

/// The rate decision for one occurrence at `now`, given the key's window so
/// far; returns the window to keep. A pure function so the policy can be
/// tested without a clock.
pub(crate) fn decide(
    prev: Option<Window>,
    now: Instant,
    burst: u32,
    window: Duration,
) -> (Window, Verdict) {
    match prev {
        Some(w) if now.saturating_duration_since(w.start) < window => {
            if w.logged < burst {
                let w = Window {
                    logged: w.logged.saturating_add(1),
                    ..w
                };
                (w, Verdict::Log { suppressed: None })
            } else {
                let w = Window {
                    suppressed: w.suppressed.saturating_add(1),
                    ..w
                };
                (w, Verdict::Suppress)
            }
        }
        prev => (
            Window {
                start: now,
                logged: 1,
                suppressed: 0,
            },
            Verdict::Log {
                suppressed: prev.map(|w| w.suppressed).filter(|&k| k > 0),
            },
        ),
    }
}

/// The windows of every (kind, key) seen.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    windows: Mutex<HashMap<(Noisy, u32), Window>>,
}

impl RateLimiter {
    /// Records one occurrence of `what` for `key` at `now`.
    pub(crate) fn check(&self, what: Noisy, key: u32, now: Instant) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_KEYS {
            windows
                .retain(|_, w| w.suppressed > 0 || now.saturating_duration_since(w.start) < WINDOW);
        }
        let (w, verdict) = decide(windows.get(&(what, key)).copied(), now, BURST, WINDOW);
        windows.insert((what, key), w);
        verdict
    }
}

static LIMITER: LazyLock<RateLimiter> = LazyLock::new(RateLimiter::default);

/// Records one occurrence of `what` for `key` now, in the daemon's limiter.
pub(crate) fn limit(what: Noisy, key: u32) -> Verdict {
    LIMITER.check(what, key, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_counted_and_the_count_reported() {
        let t0 = Instant::now();
        let mut w = None;
        let mut verdicts = Vec::new();
        for i in 0..20u64 {
            let (next, v) = decide(w, t0 + Duration::from_millis(i), 5, WINDOW);
            w = Some(next);
            verdicts.push(v);
        }
        let logged = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Log { .. }))
            .count();
        assert_eq!(logged, 5);
        assert!(verdicts[..5]
            .iter()
            .all(|v| *v == Verdict::Log { suppressed: None }));
        // Still inside the window: counted.
        let (next, v) = decide(w, t0 + WINDOW - Duration::from_millis(1), 5, WINDOW);
        assert_eq!(v, Verdict::Suppress);
        // The first after the window reports the 16 it did not log.
        let (next, v) = decide(Some(next), t0 + WINDOW, 5, WINDOW);
        assert_eq!(
            v,
            Verdict::Log {
                suppressed: Some(16)
            }
        );
        // And starts a fresh window.
        let (_, v) = decide(Some(next), t0 + WINDOW + Duration::from_secs(1), 5, WINDOW);
        assert_eq!(v, Verdict::Log { suppressed: None });
        // A quiet key's next line has nothing to report.
        let quiet = Window {
            start: t0,
            logged: 2,
            suppressed: 0,
        };
        let (_, v) = decide(Some(quiet), t0 + WINDOW * 3, 5, WINDOW);
        assert_eq!(v, Verdict::Log { suppressed: None });
        // A clock that steps back does not wedge the key.
        let (_, v) = decide(Some(quiet), t0 - Duration::from_secs(1), 5, WINDOW);
        assert_eq!(v, Verdict::Log { suppressed: None });
    }

    #[test]
    fn keys_and_kinds_are_limited_apart() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert!(matches!(
                limiter.check(Noisy::AccessDenied, 1000, t0),
                Verdict::Log { .. }
            ));
        }
        assert_eq!(
            limiter.check(Noisy::AccessDenied, 1000, t0),
            Verdict::Suppress
        );
        assert!(matches!(
            limiter.check(Noisy::AccessDenied, 1001, t0),
            Verdict::Log { .. }
        ));
        assert!(matches!(
            limiter.check(Noisy::UidCap, 1000, t0),
            Verdict::Log { .. }
        ));
        assert_eq!(
            limiter.check(Noisy::AccessDenied, 1000, t0 + WINDOW),
            Verdict::Log {
                suppressed: Some(1)
            }
        );
    }

    #[test]
    fn names_and_message_ids_are_unique_and_well_formed() {
        let mut names = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for k in Kind::ALL {
            assert!(names.insert(k.name()));
            assert!(ids.insert(k.message_id()));
            assert_eq!(k.message_id().len(), 32);
            assert!(k
                .message_id()
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
    }
}
