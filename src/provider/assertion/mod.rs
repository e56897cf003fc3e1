//! Signed client authentication: a JWT the client signs to prove who it is
//! (RFC 7523 §2.2 and §3, OIDC Core §9 `private_key_jwt` and
//! `client_secret_jwt`). The private key ([`SigningKey`], parsed and checked
//! here from PEM), the settings of the assertion ([`AssertionSettings`]:
//! algorithm, `kid`, audience, lifetime) and the signing ([`sign`]) live here.
//! What varies from one request to the next (the time and the `jti`) comes in
//! an [`AssertionStamp`] the caller makes, so that `prepare` stays pure.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::request::Endpoint;
use crate::token::fingerprint;

/// `client_assertion_type` of a JWT assertion (RFC 7523 §2.2).
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Shortest client secret `client_secret_jwt` accepts: an HS256 key must be
/// at least as long as the hash (RFC 7518 §3.2).
pub(crate) const MIN_HMAC_SECRET_BYTES: usize = 32;

/// What is unique to one signing: its time and its `jti`. The caller makes
/// it ([`AssertionStamp::new`]); tests give fixed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionStamp {
    /// Unix time in seconds (`iat`).
    pub(crate) now: u64,
    /// The assertion's unique id (`jti`).
    pub(crate) jti: String,
}

impl AssertionStamp {
    /// Now, and 16 random bytes as a base64url `jti`: a server refuses an
    /// assertion whose `jti` it has seen (RFC 7523 §3, item 7).
    pub fn new() -> AssertionStamp {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut bytes = [0u8; 16];
        rand::fill(&mut bytes);
        AssertionStamp {
            now,
            jti: URL_SAFE_NO_PAD.encode(bytes),
        }
    }

    /// A fixed stamp, for tests and benchmarks that compare requests byte
    /// for byte.
    pub fn at(now: u64, jti: impl Into<String>) -> AssertionStamp {
        AssertionStamp {
            now,
            jti: jti.into(),
        }
    }
}

impl Default for AssertionStamp {
    fn default() -> Self {
        AssertionStamp::new()
    }
}

/// The algorithms tokend signs assertions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
    /// HMAC with SHA-256, keyed with the client secret (`client_secret_jwt`).
    Hs256,
}

impl Alg {
    const ALL: [Alg; 5] = [Alg::Rs256, Alg::Ps256, Alg::Es256, Alg::EdDsa, Alg::Hs256];

    /// Its name in `client_assertion_alg` and in the JWT header.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
            Alg::Hs256 => "HS256",
        }
    }

    /// The algorithm called `name` (as JOSE spells it).
    pub(crate) fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    fn jose(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Ps256 => Algorithm::PS256,
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
            Alg::Hs256 => Algorithm::HS256,
        }
    }
}

/// The kind of a private key, which decides the algorithms it signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    Ed25519,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::P256 => "EC P-256",
            KeyKind::Ed25519 => "Ed25519",
        }
    }

    /// The algorithm used when `client_assertion_alg` is not given.
    pub(crate) fn default_alg(self) -> Alg {
        match self {
            KeyKind::Rsa => Alg::Rs256,
            KeyKind::P256 => Alg::Es256,
            KeyKind::Ed25519 => Alg::EdDsa,
        }
    }

    /// The algorithms a key of this kind can sign with, as a message names them.
    pub(crate) fn algs(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RS256 or PS256",
            KeyKind::P256 => "ES256",
            KeyKind::Ed25519 => "EdDSA",
        }
    }

    pub(crate) fn signs(self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (KeyKind::Rsa, Alg::Rs256 | Alg::Ps256)
                | (KeyKind::P256, Alg::Es256)
                | (KeyKind::Ed25519, Alg::EdDsa)
        )
    }
}

/// A private key for `private_key_jwt`. Its `Debug` names its kind and a
/// fingerprint of its public half, never the key.
#[derive(Clone)]
pub(crate) struct SigningKey {
    key: EncodingKey,
    kind: KeyKind,
    public: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({} public {})", self.kind.name(), self.public)
    }
}

/// Why a key file is not a key tokend can sign with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("is not a PEM file (-----BEGIN PRIVATE KEY----- ...)")]
    NotPem,
    #[error("holds an encrypted key; decrypt it first (openssl pkey -in KEY -out PLAIN), and keep the result mode 0600")]
    Encrypted,
    #[error("holds a `{0}`, not a private key; give a PKCS#8 (PRIVATE KEY), SEC1 (EC PRIVATE KEY) or PKCS#1 (RSA PRIVATE KEY) private key")]
    NotPrivateKey(String),
    #[error("holds no RSA (2048 to 8192 bits), EC P-256 or Ed25519 private key that can be used ({0}); other curves are not supported")]
    Unsupported(String),
}

impl SigningKey {
    /// Parses a PEM private key: PKCS#8 (RSA, P-256, Ed25519), SEC1 (P-256)
    /// or PKCS#1 (RSA).
    pub(crate) fn from_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
        let (label, der) = pem_block(pem)?;
        let unsupported = |e: &dyn fmt::Display| KeyError::Unsupported(e.to_string());
        match label.as_str() {
            "PRIVATE KEY" => {
                if let Ok(pair) = Ed25519KeyPair::from_pkcs8(&der) {
                    return Ok(SigningKey::new(
                        EncodingKey::from_ed_der(&der),
                        KeyKind::Ed25519,
                        pair.public_key().as_ref(),
                    ));
                }
                if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der) {
                    return Ok(SigningKey::new(
                        EncodingKey::from_ec_der(&der),
                        KeyKind::P256,
                        pair.public_key().as_ref(),
                    ));
                }
                let pair = RsaKeyPair::from_pkcs8(&der).map_err(|e| unsupported(&e))?;
                // The JOSE crate signs RSA from the PKCS#1 key inside.
                let key = EncodingKey::from_rsa_pem(pem).map_err(|e| unsupported(&e))?;
                Ok(SigningKey::new(
                    key,
                    KeyKind::Rsa,
                    pair.public_key().as_ref(),
                ))
            }
            "EC PRIVATE KEY" => {
                let pair =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                        .map_err(|e| unsupported(&e))?;
                let pkcs8 = pair.to_pkcs8v1().map_err(|e| unsupported(&e))?;
                Ok(SigningKey::new(
                    EncodingKey::from_ec_der(pkcs8.as_ref()),
                    KeyKind::P256,
                    pair.public_key().as_ref(),
                ))
            }
            "RSA PRIVATE KEY" => {
                let pair = RsaKeyPair::from_der(&der).map_err(|e| unsupported(&e))?;
                Ok(SigningKey::new(
                    EncodingKey::from_rsa_der(&der),
                    KeyKind::Rsa,
                    pair.public_key().as_ref(),
                ))
            }
            "ENCRYPTED PRIVATE KEY" => Err(KeyError::Encrypted),
            other => Err(KeyError::NotPrivateKey(other.to_string())),
        }
    }

    fn new(key: EncodingKey, kind: KeyKind, public: &[u8]) -> SigningKey {
        SigningKey {
            key,
            kind,
            public: fingerprint(&STANDARD.encode(public)),
        }
    }

    /// What kind of key this is.
    pub(crate) fn kind(&self) -> KeyKind {
        self.kind
    }
}

/// The label and the DER bytes of the first PEM block in `pem`.
fn pem_block(pem: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPem)?;
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .ok_or(KeyError::NotPem)?
        .to_string();
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = STANDARD.decode(&body).map_err(|_| KeyError::NotPem)?;
            return Ok((label, der));
        }
        if line.contains(':') {
            // RFC 1421 headers (Proc-Type, DEK-Info) mean an encrypted key.
            return Err(KeyError::Encrypted);
        }
        body.push_str(line);
    }
    Err(KeyError::NotPem)
}

/// Whom the assertion is for (`aud`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Audience {
    /// The token endpoint's URL (RFC 7523 §3, item 3; OIDC Core §9).
    TokenEndpoint,
    /// The provider's issuer identifier.
    Issuer,
    /// A value the provider documents.
    Literal(String),
}

impl Audience {
    /// The audience `assertion_audience = value` names.
    pub(crate) fn from_setting(value: &str) -> Audience {
        match value {
            "token_endpoint" => Audience::TokenEndpoint,
            "issuer" => Audience::Issuer,
            other => Audience::Literal(other.to_string()),
        }
    }

    /// How `check-config` describes it.
    pub(crate) fn describe(&self) -> &str {
        match self {
            Audience::TokenEndpoint => "the token endpoint",
            Audience::Issuer => "the issuer",
            Audience::Literal(s) => s,
        }
    }
}

/// How a provider's client assertions are made.
#[derive(Debug, Clone)]
pub(crate) struct AssertionSettings {
    /// The signing algorithm, checked against the key.
    pub(crate) alg: Alg,
    /// The private key (`private_key_jwt`); `None` for `client_secret_jwt`,
    /// which signs with the client secret.
    pub(crate) key: Option<SigningKey>,
    /// `kid` of the JWT header, if the provider wants one.
    pub(crate) kid: Option<String>,
    /// `aud`.
    pub(crate) audience: Audience,
    /// `exp - iat`.
    pub(crate) lifetime: Duration,
    /// Whether the body carries `client_id` beside the assertion (RFC 7523
    /// §3.1 makes it optional; most servers accept it, a few refuse it).
    pub(crate) send_client_id: bool,
}

/// Why no assertion could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    /// `assertion_audience = "issuer"` and the provider's issuer is unknown.
    #[error("assertion_audience = \"issuer\" but the provider's issuer is not known; set issuer = \"...\" for the provider, or assertion_audience = \"token_endpoint\" or the value the provider documents")]
    NoIssuer,
    /// `client_secret_jwt` without a client secret.
    #[error("client_secret_jwt needs a client secret to sign with; give client_secret, client_secret_file, client_secret_env or client_secret_credential")]
    NoSecret,
    /// `private_key_jwt` without a key.
    #[error("private_key_jwt needs a private key; give client_assertion_key_file or client_assertion_key_credential")]
    NoKey,
    /// The JOSE library refused to sign.
    #[error("cannot sign the client assertion: {0}")]
    Sign(String),
}

/// The claims of a client assertion (RFC 7523 §3), in the order they are
/// serialized.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: u64,
    exp: u64,
}

/// The provider's issuer identifier, for `assertion_audience = "issuer"`.
fn issuer(e: &Endpoint) -> Option<&str> {
    e.issuer.as_deref()
}

/// Signs `e`'s client assertion at `stamp`; `secret` is the client secret
/// this attempt uses (`client_secret_jwt`).
pub(crate) fn sign(
    e: &Endpoint,
    settings: &AssertionSettings,
    secret: Option<&str>,
    stamp: &AssertionStamp,
) -> Result<String, AssertionError> {
    let client_id = e.client_id.as_deref().unwrap_or("");
    let aud = match &settings.audience {
        Audience::TokenEndpoint => e.token_url.as_str(),
        Audience::Issuer => issuer(e).ok_or(AssertionError::NoIssuer)?,
        Audience::Literal(s) => s.as_str(),
    };
    let claims = Claims {
        iss: client_id,
        sub: client_id,
        aud,
        jti: &stamp.jti,
        iat: stamp.now,
        exp: stamp.now.saturating_add(settings.lifetime.as_secs()),
    };
    let mut header = Header::new(settings.alg.jose());
    header.kid.clone_from(&settings.kid);
    let hmac;
    let key = match (&settings.key, settings.alg) {
        (_, Alg::Hs256) => {
            hmac = EncodingKey::from_secret(secret.ok_or(AssertionError::NoSecret)?.as_bytes());
            &hmac
        }
        (Some(k), _) => &k.key,
        (None, _) => return Err(AssertionError::NoKey),
    };
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| AssertionError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests;
