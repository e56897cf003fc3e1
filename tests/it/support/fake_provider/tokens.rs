//! Token shapes (random strings, UUIDs, unsigned JWTs), time helpers, and
//! the leak scan that looks for fragments of every issued secret in a text.

use super::*;

/// Fragment length [`FakeProvider::find_leaks`] looks for.
pub(super) const LEAK_WINDOW: usize = 20;

/// See [`FakeProvider::find_leaks`].
pub fn find_leaks(secrets: &[String], text: &str) -> Vec<String> {
    let text = text.as_bytes();
    let mut windows: HashMap<&[u8], usize> = HashMap::new();
    let mut leaked = vec![false; secrets.len()];
    for (i, s) in secrets.iter().enumerate() {
        let b = s.as_bytes();
        if b.len() < LEAK_WINDOW {
            leaked[i] = !b.is_empty() && text.windows(b.len()).any(|w| w == b);
            continue;
        }
        // Skip a JWT's header segment: it is the same for every token.
        let start = match s.split_once('.') {
            Some((head, rest)) if rest.contains('.') => head.len() + 1,
            _ => 0,
        };
        let b = &b[start.min(b.len())..];
        for w in b.windows(LEAK_WINDOW) {
            windows.entry(w).or_insert(i);
        }
    }
    if text.len() >= LEAK_WINDOW {
        for w in text.windows(LEAK_WINDOW) {
            if let Some(&i) = windows.get(w) {
                leaked[i] = true;
            }
        }
    }
    secrets
        .iter()
        .zip(leaked)
        .filter(|(_, l)| *l)
        .map(|(s, _)| {
            let digest = Sha256::digest(s.as_bytes());
            let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "secret sha256:{hex} ({} chars) appears in the text, whole or in part",
                s.len()
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Token shapes
// ---------------------------------------------------------------------------

pub(super) fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A random version-4-style UUID string.
pub(super) fn uuid_like() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A JWT-shaped string: Base64url header and claims, random "signature".
pub(super) fn jwt(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let sig: [u8; 32] = rand::rng().random();
    let sig2: [u8; 32] = rand::rng().random();
    let mut s = sig.to_vec();
    s.extend_from_slice(&sig2);
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(s))
}

pub(super) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
