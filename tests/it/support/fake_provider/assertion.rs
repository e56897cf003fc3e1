//! Client assertions (RFC 7523 §2.2 and §3, OIDC Core §9): a mode of the
//! Didit flavour in which the token endpoint authenticates the client by a
//! signed JWT in the body instead of Basic credentials. The fake checks it as
//! a strict server must: `client_assertion_type`, the signature with the
//! configured public key or shared secret, the algorithm, `iss` = `sub` =
//! the client id, `aud` (the token endpoint's URL unless told otherwise),
//! `exp` in the future and not far off, and a `jti` never seen before. A
//! replayed assertion is refused `invalid_client` and recorded.

use super::*;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The `client_assertion_type` of a JWT (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the fake checks client assertions. Clones share what they have seen.
#[derive(Clone)]
pub struct AssertionCheck {
    alg: Algorithm,
    key: DecodingKey,
    /// `aud` required; `None`: the URL the request was sent to.
    pub audience: Option<String>,
    /// Longest `exp - iat` accepted, in seconds.
    pub max_lifetime: u64,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    jtis: HashSet<String>,
    assertions: Vec<String>,
}

impl AssertionCheck {
    /// Assertions signed with the private key whose public half is `pem`
    /// (SubjectPublicKeyInfo), with `alg` (`RS256`, `PS256`, `ES256`, `EdDSA`).
    pub fn public_key(alg: &str, pem: &str) -> AssertionCheck {
        let alg = Algorithm::from_str(alg).expect("a JOSE algorithm name");
        let key = match alg {
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("a public key PEM");
        AssertionCheck::new(alg, key)
    }

    /// Assertions signed with HS256 under `secret` (`client_secret_jwt`).
    pub fn shared_secret(secret: &str) -> AssertionCheck {
        AssertionCheck::new(
            Algorithm::HS256,
            DecodingKey::from_secret(secret.as_bytes()),
        )
    }

    fn new(alg: Algorithm, key: DecodingKey) -> AssertionCheck {
        AssertionCheck {
            alg,
            key,
            audience: None,
            max_lifetime: 300,
            seen: Arc::default(),
        }
    }

    /// Every assertion accepted or refused so far, to look for in logs.
    pub fn assertions(&self) -> Vec<String> {
        lock(&self.seen).assertions.clone()
    }

    /// How many distinct `jti`s were accepted.
    pub fn accepted(&self) -> usize {
        lock(&self.seen).jtis.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeConfig {
    /// Authenticates the client by a signed assertion instead of Basic
    /// credentials ([`Flavor::Didit`] only).
    pub fn with_client_assertion(mut self, check: AssertionCheck) -> FakeConfig {
        assert_eq!(self.flavor, Flavor::Didit, "assertions are a Didit mode");
        self.assertion = Some(check);
        self
    }
}

/// The claims a client assertion must carry.
#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    iat: Option<u64>,
    exp: u64,
}

impl Inner {
    /// Checks the client's assertion; the body fields it used, which the
    /// grant's own field check must then allow.
    pub(super) fn check_assertion(
        &self,
        check: &AssertionCheck,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<Vec<&'static str>, Reject> {
        // RFC 6749 §2.3: one authentication method per request.
        forbid_authorization(headers, "the client authenticates with client_assertion")?;
        let fail = |problem: String| Reject::invalid_client(problem, false);
        let one = |name: &str| -> Result<Option<&str>, Reject> {
            let mut values = form
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            let first = values.next();
            if values.next().is_some() {
                return Err(Reject::invalid_request(format!("duplicate field {name:?}")));
            }
            Ok(first)
        };
        match one("client_assertion_type")? {
            Some(JWT_BEARER) => {}
            Some(other) => {
                return Err(Reject::invalid_request(format!(
                    "client_assertion_type is {other:?}; expected {JWT_BEARER}"
                )))
            }
            None => {
                return Err(Reject::invalid_request(
                    "missing field client_assertion_type",
                ))
            }
        }
        let jwt = one("client_assertion")?
            .ok_or_else(|| Reject::invalid_request("missing field client_assertion"))?;
        lock(&check.seen).assertions.push(jwt.to_string());
        let mut used = vec!["client_assertion_type", "client_assertion"];
        if let Some(id) = one("client_id")? {
            if id != self.cfg.client_id {
                return Err(fail("client_id beside the assertion is not its sub".into()));
            }
            used.push("client_id");
        }
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|e| fail(format!("client_assertion is not a JWT: {e}")))?;
        if header.alg != check.alg {
            return Err(fail(format!(
                "client_assertion is signed {:?}; this client registered {:?}",
                header.alg, check.alg
            )));
        }
        let host = single_header(headers, "host")?.unwrap_or("");
        let audience = check
            .audience
            .clone()
            .unwrap_or_else(|| format!("http://{host}{}", self.cfg.flavor.token_path()));
        let mut v = Validation::new(check.alg);
        v.set_audience(&[audience.as_str()]);
        v.set_issuer(&[self.cfg.client_id.as_str()]);
        v.sub = Some(self.cfg.client_id.clone());
        v.leeway = 5;
        v.required_spec_claims = ["exp", "iss", "sub", "aud"].map(String::from).into();
        let claims = jsonwebtoken::decode::<Claims>(jwt, &check.key, &v)
            .map_err(|e| fail(format!("client_assertion refused: {e}")))?
            .claims;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let issued = claims.iat.unwrap_or(now);
        if claims.exp.saturating_sub(issued) > check.max_lifetime {
            return Err(fail(format!(
                "client_assertion lives {} s; at most {} s accepted",
                claims.exp.saturating_sub(issued),
                check.max_lifetime
            )));
        }
        let Some(jti) = claims.jti.filter(|j| !j.is_empty()) else {
            return Err(fail("client_assertion has no jti".into()));
        };
        if !lock(&check.seen).jtis.insert(jti) {
            return Err(fail(
                "client_assertion replayed: its jti was seen before".into(),
            ));
        }
        Ok(used)
    }
}
