//! DPoP (RFC 9449) mode ([`FakeConfig::with_dpop`]): the token endpoint
//! requires a valid proof on every request (signature by the embedded
//! public JWK, `typ`, `alg`, `htm`, `htu`, `iat` within a minute, a `jti`
//! never seen before, and the server's current nonce: a request without it
//! gets `400 use_dpop_nonce` and a `DPoP-Nonce`), binds what it issues to
//! the key's RFC 7638 thumbprint, answers `token_type: DPoP`, and rotates
//! its nonce on every success. For a public client
//! ([`Flavor::DigiRunnerPublic`]) refresh tokens are bound too (§5): a
//! refresh with another key is refused. [`FakeProvider::check_resource_proof`]
//! checks a caller's proof as a resource server would (§7.1).
//!
//! A bad proof is a wire problem (recorded in the rejections); a missing
//! or stale nonce is the protocol working and is only counted.

use super::*;

/// How far `iat` may be from the fake's clock.
const IAT_WINDOW_SECS: i64 = 60;

/// What the DPoP mode remembers.
#[derive(Debug, Default)]
pub(super) struct DpopState {
    /// The nonce a proof must carry now; `None` until the first request.
    pub(super) nonce: Option<String>,
    /// Every `jti` seen by the token endpoint, and by resource checks.
    pub(super) seen_jti: HashSet<String>,
    /// Thumbprint each issued access token is bound to.
    pub(super) access_jkt: HashMap<String, String>,
    /// Thumbprint each refresh token issued to a public client is bound to.
    pub(super) refresh_jkt: HashMap<String, String>,
    /// `use_dpop_nonce` answers sent.
    pub(super) nonce_challenges: usize,
    /// Token requests whose proof was accepted, with their thumbprint.
    pub(super) accepted: Vec<String>,
}

/// A verified proof.
struct Proof {
    jkt: String,
    claims: Map<String, Value>,
}

impl Inner {
    /// The thumbprint a token request proves, or a refusal. Checks the
    /// binding of a public client's refresh token before it is spent.
    pub(super) fn dpop_check(&self, parts: &Parts, grant: &Grant) -> Result<String, Reject> {
        let proof = single_header(&parts.headers, "dpop")
            .ok()
            .flatten()
            .ok_or_else(|| dpop_reject("exactly one DPoP header is required (RFC 9449 §4.3)"))?;
        let htu = format!("http://{}{}", self.addr, self.cfg.flavor.token_path());
        let proof = verify(proof, "POST", &htu).map_err(|m| dpop_reject(&m))?;
        let mut st = self.lock();
        let nonce_ok = match (&st.dpop.nonce, proof.claims.get("nonce")) {
            (Some(want), Some(Value::String(got))) => want == got,
            _ => false,
        };
        if !nonce_ok {
            st.dpop.nonce_challenges += 1;
            if st.dpop.nonce.is_none() {
                st.dpop.nonce = Some(random_alnum(22));
            }
            return Err(Reject {
                status: StatusCode::BAD_REQUEST,
                error: "use_dpop_nonce",
                description: Some("Authorization server requires nonce in DPoP proof".into()),
                www_authenticate_basic: false,
                record: None,
            });
        }
        let Some(Value::String(jti)) = proof.claims.get("jti") else {
            return Err(dpop_reject("the proof has no jti"));
        };
        if !st.dpop.seen_jti.insert(jti.clone()) {
            return Err(dpop_reject("the proof's jti was used before (replay)"));
        }
        if let Grant::Refresh(rt) = grant {
            if let Some(bound) = st.dpop.refresh_jkt.get(rt) {
                if *bound != proof.jkt {
                    return Err(Reject::wire(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "the refresh token is bound to another DPoP key (RFC 9449 §5)",
                    ));
                }
            }
        }
        st.dpop.accepted.push(proof.jkt.clone());
        Ok(proof.jkt)
    }

    /// Binds a success answer to `jkt`, makes it a DPoP token and rotates
    /// the nonce.
    pub(super) fn dpop_bind(&self, mut v: Value, jkt: &str) -> Value {
        let mut st = self.lock();
        if let Some(at) = v.get("access_token").and_then(Value::as_str) {
            st.dpop.access_jkt.insert(at.to_string(), jkt.to_string());
        }
        if self.cfg.flavor == Flavor::DigiRunnerPublic {
            if let Some(rt) = v.get("refresh_token").and_then(Value::as_str) {
                st.dpop.refresh_jkt.insert(rt.to_string(), jkt.to_string());
            }
        }
        st.dpop.nonce = Some(random_alnum(22));
        if let Some(m) = v.as_object_mut() {
            m.insert("token_type".into(), json!("DPoP"));
        }
        v
    }

    /// The `DPoP-Nonce` header every answer of the DPoP mode carries.
    pub(super) fn dpop_nonce_header(&self, resp: &mut Response<RespBody>) {
        let mut st = self.lock();
        let nonce = st
            .dpop
            .nonce
            .get_or_insert_with(|| random_alnum(22))
            .clone();
        if let Ok(v) = HeaderValue::from_str(&nonce) {
            resp.headers_mut().insert("dpop-nonce", v);
        }
    }
}

fn dpop_reject(problem: &str) -> Reject {
    Reject::wire(StatusCode::BAD_REQUEST, "invalid_dpop_proof", problem)
}

/// RFC 7638 thumbprint of a P-256 JWK.
fn ec_thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Checks `jwt` as a DPoP proof for `htm` `htu` (§4.3, nonce and jti
/// aside): header, signature by its own JWK, claims.
fn verify(jwt: &str, htm: &str, htu: &str) -> Result<Proof, String> {
    let header_b64 = jwt.split('.').next().unwrap_or_default();
    let header: Value = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the proof's header is not base64url JSON")?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err("the proof's typ is not dpop+jwt".into());
    }
    if header.get("alg").and_then(Value::as_str) != Some("ES256") {
        return Err("the proof's alg is not ES256 (the fake accepts only ES256)".into());
    }
    let jwk = header.get("jwk").ok_or("the proof's header has no jwk")?;
    if jwk.get("d").is_some() {
        return Err("the proof's jwk holds a private key".into());
    }
    let field = |k: &str| jwk.get(k).and_then(Value::as_str);
    if field("kty") != Some("EC") || field("crv") != Some("P-256") {
        return Err("the proof's jwk is not an EC P-256 key".into());
    }
    let (Some(x), Some(y)) = (field("x"), field("y")) else {
        return Err("the proof's jwk has no x or y".into());
    };
    let key = jsonwebtoken::DecodingKey::from_ec_components(x, y)
        .map_err(|e| format!("the proof's jwk is not usable: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(jwt, &key, &validation)
        .map_err(|e| format!("the proof's signature does not verify with its jwk: {e}"))?
        .claims;
    if claims.get("htm").and_then(Value::as_str) != Some(htm) {
        return Err(format!("the proof's htm is not {htm}"));
    }
    if claims.get("htu").and_then(Value::as_str) != Some(htu) {
        return Err(format!(
            "the proof's htu {:?} is not {htu}",
            claims.get("htu")
        ));
    }
    let now = unix_millis(SystemTime::now()) as i64 / 1000;
    match claims.get("iat").and_then(Value::as_i64) {
        Some(iat) if (iat - now).abs() <= IAT_WINDOW_SECS => {}
        _ => return Err("the proof's iat is missing or not within a minute of now".into()),
    }
    Ok(Proof {
        jkt: ec_thumbprint(x, y),
        claims,
    })
}

impl FakeProvider {
    /// `use_dpop_nonce` answers sent so far.
    pub fn dpop_nonce_challenges(&self) -> usize {
        self.inner.lock().dpop.nonce_challenges
    }

    /// The thumbprint of each token request's accepted proof, in order.
    pub fn dpop_accepted_keys(&self) -> Vec<String> {
        self.inner.lock().dpop.accepted.clone()
    }

    /// Checks a proof sent to a resource server with `access_token` for a
    /// request `htm` `htu` (RFC 9449 §7.1): valid proof, `ath` of the token,
    /// the key the token is bound to, a new `jti`, and `nonce` if the
    /// resource server gave one.
    pub fn check_resource_proof(
        &self,
        proof: &str,
        access_token: &str,
        htm: &str,
        htu: &str,
        nonce: Option<&str>,
    ) -> Result<(), String> {
        let p = verify(proof, htm, htu)?;
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()));
        if p.claims.get("ath").and_then(Value::as_str) != Some(ath.as_str()) {
            return Err("the proof's ath is not the hash of the access token".into());
        }
        if p.claims.get("nonce").and_then(Value::as_str) != nonce {
            return Err(format!("the proof's nonce is not {nonce:?}"));
        }
        let mut st = self.inner.lock();
        match st.dpop.access_jkt.get(access_token) {
            Some(jkt) if *jkt == p.jkt => {}
            Some(_) => return Err("the access token is bound to another key".into()),
            None => return Err("the access token was not issued as a DPoP token".into()),
        }
        let jti = p
            .claims
            .get("jti")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if jti.is_empty() || !st.dpop.seen_jti.insert(jti.to_string()) {
            return Err("the proof's jti is missing or was used before".into());
        }
        Ok(())
    }

    /// The thumbprint `access_token` is bound to, if it was issued bound.
    pub fn dpop_bound_key(&self, access_token: &str) -> Option<String> {
        self.inner.lock().dpop.access_jkt.get(access_token).cloned()
    }
}
