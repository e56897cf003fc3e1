//! The fake's shared state (refresh-token families, codes, counters) and
//! the grants themselves: minting tokens, rotation, reuse grace and
//! revocation, as the real providers do them.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RtState {
    Valid,
    Used,
    Revoked,
}

#[derive(Debug)]
pub(super) struct RtEntry {
    pub(super) state: RtState,
    pub(super) seq: u64,
    /// The grant family this token belongs to.
    pub(super) family: u64,
    /// Until when a used token is still accepted (first use + grace); `None`
    /// while valid, or once the grace was closed by a revocation.
    pub(super) grace_until: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct CodeGrant {
    pub(super) redirect_uri: String,
    pub(super) challenge: Option<String>,
    pub(super) offline: bool,
    pub(super) used: bool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) refresh_tokens: HashMap<String, RtEntry>,
    pub(super) next_seq: u64,
    pub(super) codes: HashMap<String, CodeGrant>,
    pub(super) access_tokens: HashMap<String, SystemTime>,
    pub(super) secrets: Vec<String>,
    /// The same strings as `secrets`, for an O(1) duplicate check: a linear
    /// scan made every mint O(tokens issued), which throttled the fake in
    /// the scale benchmark's bursts of tens of thousands of refreshes.
    pub(super) secret_set: HashSet<String>,
    /// Wall-clock time and grant family of every successful refresh, in
    /// order (see [`FakeProvider::refresh_wall_times`]).
    pub(super) refresh_log: Vec<(u64, SystemTime)>,
    pub(super) refresh_count: usize,
    /// Access tokens issued to client_credentials requests.
    pub(super) client_credentials_count: usize,
    pub(super) exchange_count: usize,
    pub(super) request_times: Vec<Instant>,
    pub(super) reused_refresh_tokens: usize,
    pub(super) reused_within_grace: usize,
    pub(super) next_family: u64,
    pub(super) family_refreshes: HashMap<u64, usize>,
    pub(super) rejections: Vec<String>,
    pub(super) faults: VecDeque<Fault>,
    pub(super) sticky_fault: Option<Fault>,
    pub(super) authorize: AuthorizeState,
    pub(super) device: DeviceState,
    pub(super) discovery: DiscoveryState,
    pub(super) revocation: RevocationState,
    pub(super) dpop: DpopState,
}

impl State {
    /// A new grant family id (ids start at 1).
    pub(super) fn new_family(&mut self) -> u64 {
        self.next_family += 1;
        self.next_family
    }

    pub(super) fn add_secret(&mut self, s: String) {
        if !s.is_empty() && self.secret_set.insert(s.clone()) {
            self.secrets.push(s);
        }
    }
}

pub(super) struct Inner {
    pub(super) cfg: FakeConfig,
    pub(super) addr: SocketAddr,
    pub(super) state: Mutex<State>,
}

/// What a grant request asks for, once its wire format has been checked.
pub(super) enum Grant {
    Refresh(String),
    /// `grant_type=client_credentials`, client already authenticated.
    ClientCredentials,
    Exchange {
        code: String,
        redirect_uri: String,
        verifier: Option<String>,
    },
    /// A poll of the device grant (RFC 8628 §3.4).
    DeviceCode(String),
}

/// A refusal: the HTTP answer plus, for wire-format problems, the line for
/// [`FakeProvider::rejections`].
pub(super) struct Reject {
    pub(super) status: StatusCode,
    pub(super) error: &'static str,
    pub(super) description: Option<String>,
    pub(super) www_authenticate_basic: bool,
    pub(super) record: Option<String>,
}

impl Reject {
    /// A wire-format problem: answered with `error` and recorded.
    pub(super) fn wire(
        status: StatusCode,
        error: &'static str,
        problem: impl Into<String>,
    ) -> Reject {
        let problem = problem.into();
        Reject {
            status,
            error,
            description: Some(problem.clone()),
            www_authenticate_basic: false,
            record: Some(problem),
        }
    }

    pub(super) fn invalid_request(problem: impl Into<String>) -> Reject {
        Reject::wire(StatusCode::BAD_REQUEST, "invalid_request", problem)
    }

    pub(super) fn unsupported_grant_type(problem: impl Into<String>) -> Reject {
        Reject::wire(StatusCode::BAD_REQUEST, "unsupported_grant_type", problem)
    }

    /// Failed client authentication: 401 `invalid_client`, no description (so
    /// nothing about the credentials is echoed), the reason only recorded.
    pub(super) fn invalid_client(problem: impl Into<String>, basic_expected: bool) -> Reject {
        Reject {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: None,
            www_authenticate_basic: basic_expected,
            record: Some(problem.into()),
        }
    }

    /// A grant that is merely invalid (unknown, used, revoked): not recorded.
    pub(super) fn invalid_grant(description: &str) -> Reject {
        Reject {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_grant",
            description: Some(description.to_string()),
            www_authenticate_basic: false,
            record: None,
        }
    }
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn register_config_secrets(&self) {
        let cfg = &self.cfg;
        let mut st = self.lock();
        let secret = match (cfg.flavor, cfg.client_secret.as_deref()) {
            (Flavor::Partner | Flavor::DigiRunnerPublic, _) | (_, None) => None,
            (_, Some(s)) => Some(s),
        };
        let Some(secret) = secret else { return };
        st.add_secret(secret.to_string());
        if cfg.flavor == Flavor::DigiRunner {
            st.add_secret(STANDARD.encode(secret));
        }
        let encoded = form_encode(secret);
        if encoded != secret {
            st.add_secret(encoded);
        }
        if let Some(auth) = cfg.expected_authorization() {
            if let Some(b64) = auth.strip_prefix("Basic ") {
                st.add_secret(b64.to_string());
            }
        }
    }

    pub(super) fn issue_code(
        &self,
        prefix: &str,
        redirect_uri: &str,
        challenge: Option<&str>,
        offline: bool,
    ) -> String {
        let code = format!("{prefix}{}", random_alnum(32));
        let mut st = self.lock();
        st.codes.insert(
            code.clone(),
            CodeGrant {
                redirect_uri: redirect_uri.to_string(),
                challenge: challenge.map(str::to_string),
                offline,
                used: false,
            },
        );
        st.add_secret(code.clone());
        code
    }

    pub(super) fn revoke_all(&self) -> usize {
        let mut st = self.lock();
        let mut n = 0;
        for e in st.refresh_tokens.values_mut() {
            if e.state == RtState::Valid {
                e.state = RtState::Revoked;
                n += 1;
            }
            e.grace_until = None;
        }
        n
    }

    pub(super) fn mint_refresh_token(
        &self,
        st: &mut State,
        now: SystemTime,
        family: u64,
    ) -> String {
        let token = if self.cfg.flavor.is_digirunner() {
            let now_s = unix_secs(now);
            jwt(&json!({
                "node": "executor1",
                "aud": ["YWRtaW5BUEk"],
                "user_name": "tspuser",
                "org_id": "100000",
                "scope": ["2000000006"],
                "ati": uuid_like(),
                "exp": now_s + 30 * 24 * 3600,
                "jti": uuid_like(),
                "client_id": self.cfg.client_id,
            }))
        } else {
            format!("rt-{}", random_alnum(40))
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        st.refresh_tokens.insert(
            token.clone(),
            RtEntry {
                state: RtState::Valid,
                seq,
                family,
                grace_until: None,
            },
        );
        st.add_secret(token.clone());
        token
    }

    /// Mints an access token; returns it with its digiRunner `jti`.
    pub(super) fn mint_access_token(&self, st: &mut State, now: SystemTime) -> (String, String) {
        let ttl = self.cfg.ttl_secs();
        let now_s = unix_secs(now);
        let jti = uuid_like();
        let (token, expiry) = if self.cfg.flavor.is_digirunner() {
            let exp = now_s + ttl;
            let t = jwt(&json!({
                "node": "executor1",
                "aud": ["YWRtaW5BUEk"],
                "user_name": "tspuser",
                "org_id": "100000",
                "scope": ["2000000006"],
                "stime": unix_millis(now),
                "exp": exp,
                "jti": jti,
                "client_id": self.cfg.client_id,
            }));
            (t, UNIX_EPOCH + Duration::from_secs(exp))
        } else if self.cfg.expires_in == ExpiresIn::OmittedJwt {
            let exp = now_s + ttl;
            let t = jwt(&json!({
                "iss": format!("http://{}", self.addr),
                "sub": "user-1",
                "aud": self.cfg.client_id,
                "iat": now_s,
                "exp": exp,
                "jti": jti,
            }));
            (t, UNIX_EPOCH + Duration::from_secs(exp))
        } else {
            (
                format!("at-{}", random_alnum(32)),
                now + Duration::from_secs(ttl),
            )
        };
        st.access_tokens.insert(token.clone(), expiry);
        st.add_secret(token.clone());
        (token, jti)
    }

    pub(super) fn mint_id_token(&self, st: &mut State, now: SystemTime) -> String {
        let now_s = unix_secs(now);
        let t = jwt(&json!({
            "iss": format!("http://{}", self.addr),
            "sub": "user-1",
            "aud": self.cfg.client_id,
            "iat": now_s,
            "exp": now_s + self.cfg.ttl_secs(),
            "email": "user-1@example.test",
        }));
        st.add_secret(t.clone());
        t
    }

    /// The success body for this flavour.
    pub(super) fn token_response(
        &self,
        st: &mut State,
        refresh_token: Option<String>,
        id_token: bool,
    ) -> Value {
        let now = SystemTime::now();
        let (access_token, jti) = self.mint_access_token(st, now);
        let mut m = Map::new();
        m.insert("access_token".into(), json!(access_token));
        let ttl = self.cfg.ttl_secs();
        match self.cfg.expires_in {
            ExpiresIn::Number => {
                m.insert("expires_in".into(), json!(ttl));
            }
            ExpiresIn::String => {
                m.insert("expires_in".into(), json!(ttl.to_string()));
            }
            ExpiresIn::OmittedJwt | ExpiresIn::Omitted => {}
        }
        if let Some(rt) = refresh_token {
            m.insert("refresh_token".into(), json!(rt));
            if let Some(rt_ttl) = self.cfg.refresh_ttl {
                m.insert("refresh_token_expires_in".into(), json!(rt_ttl.as_secs()));
            }
        }
        match self.cfg.flavor {
            Flavor::Didit => {
                m.insert("token_type".into(), json!("Bearer"));
                m.insert("scope".into(), json!("openid profile email"));
                if id_token {
                    let id = self.mint_id_token(st, now);
                    m.insert("id_token".into(), json!(id));
                }
            }
            Flavor::Partner => {
                m.insert("token_type".into(), json!("Bearer"));
            }
            Flavor::Bakrypt => {
                m.insert("token_type".into(), json!("Bearer"));
                m.insert("scope".into(), json!("read write"));
            }
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => {
                m.insert("jti".into(), json!(jti));
                m.insert("node".into(), json!("executor1"));
                m.insert("org_id".into(), json!("100000"));
                m.insert("scope".into(), json!("2000000006"));
                m.insert("stime".into(), json!(unix_millis(now)));
                m.insert("token_type".into(), json!("bearer"));
            }
        }
        Value::Object(m)
    }

    pub(super) fn invalid_refresh_token(&self, presented: &str) -> Reject {
        match self.cfg.flavor {
            Flavor::Didit => Reject::invalid_grant("The refresh token was invalid or has expired."),
            Flavor::Partner => Reject::invalid_grant("Refresh token has expired or is invalid."),
            Flavor::Bakrypt => Reject::invalid_grant("Invalid refresh token."),
            // The real server echoes the token; the daemon must scrub it.
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => Reject {
                status: StatusCode::UNAUTHORIZED,
                error: "invalid_token",
                description: Some(format!("Invalid refresh token (expired): {presented}")),
                www_authenticate_basic: false,
                record: None,
            },
        }
    }

    /// Carries out a well-formed grant request.
    pub(super) fn perform(&self, grant: Grant) -> Result<Value, Reject> {
        match grant {
            Grant::Refresh(token) => self.refresh(&token),
            Grant::ClientCredentials => {
                let mut st = self.lock();
                st.client_credentials_count += 1;
                // RFC 6749 §4.4.3: no refresh token for this grant.
                Ok(self.token_response(&mut st, None, false))
            }
            Grant::Exchange {
                code,
                redirect_uri,
                verifier,
            } => self.exchange(&code, &redirect_uri, verifier.as_deref()),
            Grant::DeviceCode(code) => self.device_token(&code),
        }
    }

    /// A refresh: rotation, the reuse grace and family revocation.
    fn refresh(&self, token: &str) -> Result<Value, Reject> {
        let mut st = self.lock();
        let now = Instant::now();
        let entry = st
            .refresh_tokens
            .get(token)
            .map(|e| (e.state, e.family, e.grace_until));
        let family = match entry {
            Some((RtState::Valid, family, _)) => {
                if self.cfg.rotate {
                    if let Some(e) = st.refresh_tokens.get_mut(token) {
                        e.state = RtState::Used;
                        e.grace_until = Some(now + self.cfg.reuse_grace);
                    }
                }
                family
            }
            Some((RtState::Used, family, Some(until))) if now < until => {
                st.reused_within_grace += 1;
                family
            }
            Some((RtState::Used, family, _)) => {
                st.reused_refresh_tokens += 1;
                if self.cfg.on_reuse == FamilyOnReuse::Revoked {
                    for e in st.refresh_tokens.values_mut() {
                        if e.family == family {
                            e.grace_until = None;
                            if e.state == RtState::Valid {
                                e.state = RtState::Revoked;
                            }
                        }
                    }
                }
                return Err(self.invalid_refresh_token(token));
            }
            Some((RtState::Revoked, _, _)) | None => return Err(self.invalid_refresh_token(token)),
        };
        let new_rt = self
            .cfg
            .rotate
            .then(|| self.mint_refresh_token(&mut st, SystemTime::now(), family));
        st.refresh_count += 1;
        *st.family_refreshes.entry(family).or_default() += 1;
        st.refresh_log.push((family, SystemTime::now()));
        Ok(self.token_response(&mut st, new_rt, false))
    }

    /// A code exchange: the code once, its redirect URI and PKCE verifier.
    fn exchange(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<Value, Reject> {
        let mut st = self.lock();
        let invalid_code =
            || Reject::invalid_grant("The authorization code was invalid or has expired.");
        let Some(grant) = st.codes.get(code) else {
            return Err(invalid_code());
        };
        if grant.used {
            return Err(invalid_code());
        }
        if grant.redirect_uri != redirect_uri {
            return Err(Reject::wire(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "redirect_uri does not match the one the code was issued for",
            ));
        }
        match (&grant.challenge, &verifier) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(Reject::invalid_request(
                    "code_verifier sent, but the code was issued without a PKCE challenge",
                ))
            }
            (Some(_), None) => {
                return Err(Reject::invalid_request(
                    "code_verifier missing; the code was issued with a PKCE challenge",
                ))
            }
            (Some(challenge), Some(v)) => {
                if !valid_verifier(v) {
                    return Err(Reject::invalid_request(
                        "code_verifier is not 43-128 characters of [A-Za-z0-9-._~] (RFC 7636)",
                    ));
                }
                if pkce_s256(v) != *challenge {
                    return Err(Reject::wire(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "code_verifier does not match the S256 code_challenge",
                    ));
                }
            }
        }
        let offline = grant.offline;
        // The verifier is as secret as the code: no log may show it.
        st.add_secret(verifier.unwrap_or_default().to_string());
        if let Some(g) = st.codes.get_mut(code) {
            g.used = true;
        }
        let rt = offline.then(|| {
            let family = st.new_family();
            self.mint_refresh_token(&mut st, SystemTime::now(), family)
        });
        st.exchange_count += 1;
        Ok(self.token_response(&mut st, rt, true))
    }
}
