//! Pure domain types for tokens: the redacting [`Secret`] wrapper, fingerprints
//! for logs and saturating time arithmetic here; the parsed token-endpoint
//! response and its expiry in `response`; the refresh-time and backoff
//! arithmetic in `timing`. Nothing here does I/O, so all of it is unit-tested
//! in place.

mod response;
mod timing;

pub(crate) use response::{expires_at_ms, parse_token_response, token_set_of, ResponseFields};
pub use response::{jwt_exp, LifetimeSource, TokenSet};
pub use timing::backoff;
pub(crate) use timing::RefreshTiming;

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// A string that must never reach a log: its `Debug` and `Display` print a
/// fingerprint instead of the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into().into_boxed_str())
    }

    /// The secret itself, for the few places that must send or store it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable, non-reversible identifier safe to log.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// First 8 hex digits of SHA-256: enough to tell tokens apart in a log, far too
/// little to recover or guess one.
pub fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Replaces every occurrence of any of `secrets` in `text` with its fingerprint.
/// Providers echo tokens back in error descriptions (digiRunner does), so any
/// provider-supplied text passes through here before it is logged or stored.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(*secret) {
            out = out.replace(*secret, &format!("<redacted {}>", fingerprint(secret)));
        }
    }
    out
}

/// Wall-clock time as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// `d` in whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The longest lifetime tokend takes from a provider (about a century).
/// Longer ones (a stated `u64::MAX` seconds, a JWT `exp` far in the future)
/// are cut to it, so expiry arithmetic cannot overflow and every expiry is
/// still a date that formats.
pub(crate) const MAX_LIFETIME_MS: i64 = 100 * 365 * 86_400_000;

/// The Unix ms `secs` seconds after `from_ms`, the lifetime cut to
/// [`MAX_LIFETIME_MS`].
pub(crate) fn after_secs(from_ms: i64, secs: u64) -> i64 {
    let ms = i64::try_from(secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000)
        .min(MAX_LIFETIME_MS);
    from_ms.saturating_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_and_display_never_show_the_value() {
        let s = Secret::new("super-secret-value");
        assert!(!format!("{s:?}").contains("super-secret-value"));
        assert!(!format!("{s}").contains("super-secret-value"));
        assert_eq!(s.fingerprint(), fingerprint("super-secret-value"));
        assert_eq!(s.fingerprint().len(), "sha256:".len() + 8);
    }

    #[test]
    fn scrub_replaces_echoed_tokens() {
        let out = scrub(
            "Invalid refresh token (expired): eyJabc.def.ghi",
            &["eyJabc.def.ghi", "unrelated"],
        );
        assert!(!out.contains("eyJabc.def.ghi"));
        assert!(out.contains("<redacted sha256:"));
    }
}
