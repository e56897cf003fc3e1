//! DPoP (RFC 9449): a credential's own proof-of-possession key
//! ([`DpopKey`]), the proofs it signs ([`proof`], pure given a [`Stamp`],
//! so tests check them byte for byte), the checks on what callers ask a
//! proof for ([`Htm`], [`htu`], [`check_nonce`]) and the servers' nonces
//! ([`Nonces`]).
//!
//! The private key never leaves this module except sealed for the
//! database ([`DpopKey::stored`]); `Debug` prints its JWK thumbprint.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::token::Secret;

/// The `token_type` of a DPoP-bound token (RFC 9449 §5), compared without case.
pub(crate) const TOKEN_TYPE: &str = "DPoP";

/// The longest nonce tokend sends or keeps: a server's nonce is opaque,
/// but one that size is a broken (or hostile) server.
const MAX_NONCE: usize = 1024;

/// Why a key or a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DpopError {
    /// The stored key does not parse: the database row is damaged.
    #[error("the stored DPoP key is not a P-256 PKCS#8 key; replace the credential (tokend add or tokend login) to give it a new key")]
    BadStoredKey,
    /// The system could not generate or sign (no entropy source).
    #[error("cannot use the system's random source to make a DPoP key or proof")]
    Crypto,
    /// `htm` is not an HTTP method.
    #[error("htm must be an HTTP method name such as GET or POST (RFC 9110 token characters, at most 32)")]
    BadMethod,
    /// `htu` is not an absolute http(s) URL.
    #[error("htu must be an absolute http:// or https:// URL without user info: {0}")]
    BadUri(String),
    /// The nonce has characters RFC 9449 §8 does not allow, or is too long.
    #[error(
        "nonce must be 1 to 1024 visible ASCII characters other than '\"' and '\\' (RFC 9449 §8)"
    )]
    BadNonce,
}

impl DpopError {
    /// The caller's request was bad (rather than the daemon failing).
    pub(crate) fn is_request(&self) -> bool {
        matches!(
            self,
            DpopError::BadMethod | DpopError::BadUri(_) | DpopError::BadNonce
        )
    }
}

/// A credential's DPoP key: ECDSA P-256 (ES256). Cloning shares it.
#[derive(Clone)]
pub struct DpopKey {
    pair: Arc<EcdsaKeyPair>,
    /// base64url of the PKCS#8 document, as the store seals it.
    pkcs8: Arc<Secret>,
    /// The public key as a JWK, computed once.
    jwk: Arc<Jwk>,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DpopKey(jkt {})", self.thumbprint())
    }
}

/// The public half of a P-256 key as a JWK (RFC 7518 §6.2.1), members in
/// the order RFC 7638 hashes them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Jwk {
    crv: &'static str,
    kty: &'static str,
    x: String,
    y: String,
}

impl DpopKey {
    /// A new random key.
    pub(crate) fn generate() -> Result<DpopKey, DpopError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| DpopError::Crypto)?;
        let doc = pair.to_pkcs8v1().map_err(|_| DpopError::Crypto)?;
        let pkcs8 = Secret::new(B64URL.encode(doc.as_ref()));
        Ok(DpopKey::of(pair, pkcs8))
    }

    /// The key as [`DpopKey::stored`] gave it.
    pub(crate) fn from_stored(stored: &str) -> Result<DpopKey, DpopError> {
        let der = B64URL
            .decode(stored.trim())
            .map_err(|_| DpopError::BadStoredKey)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| DpopError::BadStoredKey)?;
        Ok(DpopKey::of(pair, Secret::new(stored.trim())))
    }

    fn of(pair: EcdsaKeyPair, pkcs8: Secret) -> DpopKey {
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        let point = pair.public_key().as_ref();
        let (x, y) = point
            .get(1..)
            .unwrap_or_default()
            .split_at(point.len().saturating_sub(1) / 2);
        let jwk = Jwk {
            crv: "P-256",
            kty: "EC",
            x: B64URL.encode(x),
            y: B64URL.encode(y),
        };
        DpopKey {
            pair: Arc::new(pair),
            pkcs8: Arc::new(pkcs8),
            jwk: Arc::new(jwk),
        }
    }

    /// The private key as the store seals it. Nothing else may see it.
    pub(crate) fn stored(&self) -> &Secret {
        &self.pkcs8
    }

    /// The public key (kty, crv, x, y: no private member).
    pub(crate) fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Its JWK SHA-256 thumbprint (RFC 7638), the `jkt` servers bind to.
    pub fn thumbprint(&self) -> String {
        thumbprint(&[
            ("crv", self.jwk.crv),
            ("kty", self.jwk.kty),
            ("x", &self.jwk.x),
            ("y", &self.jwk.y),
        ])
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DpopError> {
        let sig = self
            .pair
            .sign(&SystemRandom::new(), message)
            .map_err(|_| DpopError::Crypto)?;
        Ok(sig.as_ref().to_vec())
    }
}

/// The RFC 7638 thumbprint of a JWK's required members, given in
/// lexicographic order of their names, all string-valued.
pub(crate) fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut json = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&serde_json::Value::from(*k).to_string());
        json.push(':');
        json.push_str(&serde_json::Value::from(*v).to_string());
    }
    json.push('}');
    B64URL.encode(Sha256::digest(json.as_bytes()))
}

/// What makes each proof unique: when it is made and its `jti`. Given
/// from outside so that building a proof is a pure function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// `iat`, Unix seconds.
    pub(crate) iat: i64,
    /// `jti`: 128 random bits, base64url.
    pub(crate) jti: String,
}

impl Stamp {
    /// Now, with a fresh random `jti`.
    pub(crate) fn now() -> Stamp {
        let bytes: [u8; 16] = rand::random();
        Stamp {
            iat: crate::token::now_ms() / 1000,
            jti: B64URL.encode(bytes),
        }
    }
}

/// An HTTP method as a proof's `htm`: an RFC 9110 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Htm(String);

impl Htm {
    /// The token request's method.
    pub(crate) fn post() -> Htm {
        Htm("POST".into())
    }

    /// `method` if it is a token (RFC 9110 §5.6.2) of at most 32 characters.
    /// Methods are case-sensitive, so it is kept as given.
    pub(crate) fn parse(method: &str) -> Result<Htm, DpopError> {
        let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if method.is_empty() || method.len() > 32 || !method.chars().all(tchar) {
            return Err(DpopError::BadMethod);
        }
        Ok(Htm(method.to_string()))
    }
}

/// A proof's `htu` for a request to `uri`: the URI without its query and
/// fragment (RFC 9449 §4.2), which servers ignore when they compare it
/// (§4.3), so a caller may pass the full request URL.
pub(crate) fn htu(uri: &str) -> Result<String, DpopError> {
    let mut url = Url::parse(uri).map_err(|e| DpopError::BadUri(e.to_string()))?;
    htu_of(&mut url)
}

/// [`htu`] of a parsed URL.
pub(crate) fn htu_of(url: &mut Url) -> Result<String, DpopError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DpopError::BadUri(format!("scheme `{}`", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DpopError::BadUri("it has user info".into()));
    }
    if url.host().is_none() {
        return Err(DpopError::BadUri("no host".into()));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.as_str().to_string())
}

/// `nonce` if RFC 9449 §8 allows it: `1*NQCHAR`, at most 1024 characters.
pub(crate) fn check_nonce(nonce: &str) -> Result<(), DpopError> {
    let nqchar = |b: u8| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b);
    if nonce.is_empty() || nonce.len() > MAX_NONCE || !nonce.bytes().all(nqchar) {
        return Err(DpopError::BadNonce);
    }
    Ok(())
}

/// `ath`: base64url of the SHA-256 of the access token (RFC 9449 §4.2).
pub(crate) fn ath(access_token: &str) -> String {
    B64URL.encode(Sha256::digest(access_token.as_bytes()))
}

#[derive(Serialize)]
struct Header<'a> {
    typ: &'static str,
    alg: &'static str,
    jwk: &'a Jwk,
}

#[derive(Serialize)]
struct Claims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

/// What one proof is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProofFor<'a> {
    pub(crate) htm: &'a Htm,
    /// Already stripped by [`htu`].
    pub(crate) htu: &'a str,
    /// The server's latest nonce, if it gave one.
    pub(crate) nonce: Option<&'a str>,
    /// The access token the proof goes with (resource requests only).
    pub(crate) access_token: Option<&'a str>,
}

/// The signing input (`header.claims`, base64url) of a proof: pure.
fn signing_input(key: &DpopKey, what: ProofFor<'_>, stamp: &Stamp) -> String {
    let ath = what.access_token.map(ath);
    let header = Header {
        typ: "dpop+jwt",
        alg: "ES256",
        jwk: key.jwk(),
    };
    let claims = Claims {
        jti: &stamp.jti,
        htm: &what.htm.0,
        htu: what.htu,
        iat: stamp.iat,
        ath: ath.as_deref(),
        nonce: what.nonce,
    };
    // Plain structs of strings and integers: serializing cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(&claims).unwrap_or_default();
    format!("{}.{}", B64URL.encode(header), B64URL.encode(claims))
}

/// The `DPoP` header value: a JWS signed with `key` (RFC 9449 §4.2).
/// It is as secret as the token it goes with: never log it.
pub(crate) fn proof(key: &DpopKey, what: ProofFor<'_>, stamp: &Stamp) -> Result<String, DpopError> {
    let input = signing_input(key, what, stamp);
    let sig = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", B64URL.encode(sig)))
}

/// The latest `DPoP-Nonce` of each provider's token endpoint. Servers
/// rotate them; any response's header replaces the one held.
#[derive(Debug, Clone, Default)]
pub(crate) struct Nonces(Arc<Mutex<HashMap<String, String>>>);

impl Nonces {
    /// The nonce to send to `provider`, if it gave one.
    pub(crate) fn get(&self, provider: &str) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(provider).cloned()
    }

    /// Keeps `nonce` for `provider`, if it is a valid one (else ignores it).
    pub(crate) fn set(&self, provider: &str, nonce: &str) {
        if check_nonce(nonce).is_err() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(provider).map(String::as_str) != Some(nonce) {
            map.insert(provider.to_string(), nonce.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed P-256 key (made with openssl for these tests).
    const KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIW5RYfgv5kv1fTWxLHKu6KYidFtjU3QUiPXI1nXdyTWhRANCAASU1pfWyf72eY9WeG151Z5QIr_FItT3IPKJuHQ15Gv9rYXK-S-ctXoTXLyH4fUrQ6ryI_IF9elYOCw40vevtDoA";

    fn key() -> DpopKey {
        DpopKey::from_stored(KEY).unwrap()
    }

    fn stamp() -> Stamp {
        Stamp {
            iat: 1_700_000_000,
            jti: "jti-1".into(),
        }
    }

    #[test]
    fn thumbprint_follows_rfc_7638_example() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        assert_eq!(
            thumbprint(&[("e", "AQAB"), ("kty", "RSA"), ("n", n)]),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn the_public_jwk_and_its_thumbprint() {
        let k = key();
        let jwk = serde_json::to_string(k.jwk()).unwrap();
        assert_eq!(
            jwk,
            r#"{"crv":"P-256","kty":"EC","x":"lNaX1sn-9nmPVnhtedWeUCK_xSLU9yDyibh0NeRr_a0","y":"hcr5L5y1ehNcvIfh9StDqvIj8gX16Vg4LDjS96-0OgA"}"#
        );
        assert_eq!(
            k.thumbprint(),
            thumbprint(&[
                ("crv", "P-256"),
                ("kty", "EC"),
                ("x", "lNaX1sn-9nmPVnhtedWeUCK_xSLU9yDyibh0NeRr_a0"),
                ("y", "hcr5L5y1ehNcvIfh9StDqvIj8gX16Vg4LDjS96-0OgA"),
            ])
        );
        // Debug shows the thumbprint, never the private key.
        let debug = format!("{k:?}");
        assert!(
            debug.contains(&k.thumbprint()) && !debug.contains(KEY),
            "{debug}"
        );
        assert!(!jwk.contains("\"d\""));
    }

    #[test]
    fn a_generated_key_round_trips_through_its_stored_form() {
        let k = DpopKey::generate().unwrap();
        let again = DpopKey::from_stored(k.stored().expose()).unwrap();
        assert_eq!(k.jwk(), again.jwk());
        assert_ne!(k.thumbprint(), key().thumbprint());
        assert!(matches!(
            DpopKey::from_stored("not a key"),
            Err(DpopError::BadStoredKey)
        ));
    }

    #[test]
    fn token_request_proof_byte_for_byte() {
        let k = key();
        let htm = Htm::post();
        let htu = htu("https://as.example/token?x=1#f").unwrap();
        let what = ProofFor {
            htm: &htm,
            htu: &htu,
            nonce: Some("n-1"),
            access_token: None,
        };
        let input = signing_input(&k, what, &stamp());
        let (h, c) = input.split_once('.').unwrap();
        assert_eq!(
            String::from_utf8(B64URL.decode(h).unwrap()).unwrap(),
            format!(
                r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{}}}"#,
                serde_json::to_string(k.jwk()).unwrap()
            )
        );
        assert_eq!(
            String::from_utf8(B64URL.decode(c).unwrap()).unwrap(),
            r#"{"jti":"jti-1","htm":"POST","htu":"https://as.example/token","iat":1700000000,"nonce":"n-1"}"#
        );
        let jwt = proof(&k, what, &stamp()).unwrap();
        assert!(jwt.starts_with(&format!("{input}.")));
        verify(&jwt, &k);
    }

    #[test]
    fn resource_proof_carries_ath_and_verifies_with_its_jwk() {
        let k = key();
        let htm = Htm::parse("GET").unwrap();
        let what = ProofFor {
            htm: &htm,
            htu: "https://api.example/x",
            nonce: None,
            access_token: Some("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        };
        let jwt = proof(&k, what, &stamp()).unwrap();
        let claims = verify(&jwt, &k);
        // RFC 9449 §7.1's example token and its ath.
        assert_eq!(claims["ath"], "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
        assert_eq!(claims["htm"], "GET");
        assert!(claims.get("nonce").is_none());
    }

    /// Checks `jwt`'s signature with the jwk in its own header, as a server
    /// does, and that the jwk is `k`'s; returns the claims.
    fn verify(jwt: &str, k: &DpopKey) -> serde_json::Value {
        use jsonwebtoken::{decode, decode_header, jwk::Jwk, Algorithm, DecodingKey, Validation};
        let header = decode_header(jwt).unwrap();
        assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk: Jwk = header.jwk.unwrap();
        let as_json = serde_json::to_value(&jwk).unwrap();
        assert!(as_json.get("d").is_none());
        assert_eq!(as_json["x"], k.jwk().x.as_str());
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        decode::<serde_json::Value>(jwt, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
            .unwrap()
            .claims
    }

    #[test]
    fn what_callers_may_ask_a_proof_for() {
        assert!(Htm::parse("GET").is_ok() && Htm::parse("PROPFIND").is_ok());
        for bad in ["", "GE T", "GET\r\n", "G\"", &"A".repeat(33)] {
            assert!(Htm::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            htu("https://API.example:443/a/b?q=1#frag").unwrap(),
            "https://api.example/a/b"
        );
        assert_eq!(
            htu("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/"
        );
        for bad in [
            "/relative",
            "ftp://x/y",
            "https://u:p@x/",
            "mailto:a@b",
            "not a url",
        ] {
            assert!(htu(bad).is_err(), "{bad}");
        }
        assert!(check_nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v").is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "é", &"n".repeat(1025)] {
            assert!(check_nonce(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nonces_keep_the_latest_valid_one_per_provider() {
        let n = Nonces::default();
        assert_eq!(n.get("p"), None);
        n.set("p", "one");
        n.set("p", "two");
        n.set("p", "bad nonce");
        n.set("q", "other");
        assert_eq!(n.get("p").as_deref(), Some("two"));
        assert_eq!(n.get("q").as_deref(), Some("other"));
    }
}
