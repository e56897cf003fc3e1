//! What a fake is started with: [`FakeConfig`] (flavour, client, lifetimes,
//! rotation and reuse rules, latency) and the [`Fault`]s a test can inject.

use super::*;

/// How a successful response states the access token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiresIn {
    /// `"expires_in": 3600`, the configured ttl in whole seconds.
    #[default]
    Number,
    /// `"expires_in": "3600"`: the same number as a JSON string.
    String,
    /// No `expires_in`; the access token is a JWT whose `exp` is now + ttl.
    OmittedJwt,
    /// No `expires_in` and an opaque access token (a JWT for the digiRunner
    /// flavours, which always issue JWTs).
    Omitted,
}

/// The fake provider's settings. Fields are public; [`FakeConfig::new`] fills
/// defaults and the `with_*` methods change one at a time.
#[derive(Clone)]
pub struct FakeConfig {
    /// Which endpoint to imitate.
    pub flavor: Flavor,
    /// The client id expected in Basic credentials or in the body.
    pub client_id: String,
    /// The client secret (the client *password* for [`Flavor::DigiRunner`]);
    /// `None` for [`Flavor::Partner`] and [`Flavor::DigiRunnerPublic`], which
    /// ignore it. `None` elsewhere means the empty string.
    pub client_secret: Option<String>,
    /// The `partnerId` header value expected by [`Flavor::Partner`].
    pub partner_id: String,
    /// Access-token lifetime (whole seconds are advertised).
    pub ttl: Duration,
    /// `true`: every refresh returns a new refresh token and the presented one
    /// becomes invalid. `false`: the response has no `refresh_token` field and
    /// the presented token stays valid.
    pub rotate: bool,
    /// How the lifetime is stated in responses.
    pub expires_in: ExpiresIn,
    /// Rotation leeway: a used refresh token presented again within this long
    /// of its first use is still accepted (a fresh token pair is issued).
    /// Zero, the default, is strict rotation.
    pub reuse_grace: Duration,
    /// How long an unfaulted token request takes to be answered. The grant
    /// is carried out as soon as the request arrives, so a client that gives
    /// up or dies meanwhile has spent its refresh token without learning the
    /// new one. Zero by default.
    pub latency: Duration,
    /// What a used refresh token presented after its grace does to the rest
    /// of its family (see [`FamilyOnReuse`]).
    pub on_reuse: FamilyOnReuse,
    /// The `scope` a client_credentials request must send, if any (then
    /// exactly this; otherwise none may be sent).
    pub cc_scope: Option<String>,
    /// The `audience` a client_credentials request must send, if any (then
    /// exactly this; otherwise none may be sent).
    pub cc_audience: Option<String>,
    /// Client assertions instead of Basic credentials (see
    /// [`FakeConfig::with_client_assertion`]).
    pub assertion: Option<AssertionCheck>,
    /// DPoP mode (RFC 9449): every token request needs a proof (see the
    /// `dpop` module).
    pub dpop: bool,
    /// `"refresh_token_expires_in"` (whole seconds) beside every refresh
    /// token issued, as GitHub Apps send it; `None` (the default) leaves it
    /// out. It is advertised only: the fake does not expire refresh tokens.
    pub refresh_ttl: Option<Duration>,
}

/// What reuse of a spent refresh token outside its grace does to the tokens
/// rotated from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyOnReuse {
    /// Only the reuse is refused (the default).
    Kept,
    /// Every token of the family is revoked, as reuse detection in
    /// django-oauth-toolkit or OAuth 2.1 (RFC 9700 §4.14.2) does: the
    /// grant is dead.
    Revoked,
}

impl FakeConfig {
    /// Defaults for `flavor`: client id `tokend-test` with secret
    /// `s3cret-<random>` (Didit, Bakrypt), the seed's `tspclient` /
    /// `tsp123abcd` for digiRunner (no secret for the public client), partner
    /// id `42`, ttl one hour, rotation on, numeric `expires_in`.
    pub fn new(flavor: Flavor) -> FakeConfig {
        let (client_id, client_secret) = match flavor {
            Flavor::Didit | Flavor::Bakrypt => (
                "tokend-test".to_string(),
                Some(format!("s3cret-{}", random_alnum(24))),
            ),
            Flavor::Partner => ("tokend-test".to_string(), None),
            Flavor::DigiRunner => ("tspclient".to_string(), Some("tsp123abcd".to_string())),
            Flavor::DigiRunnerPublic => ("tspclient".to_string(), None),
        };
        FakeConfig {
            flavor,
            client_id,
            client_secret,
            partner_id: "42".to_string(),
            ttl: Duration::from_secs(3600),
            rotate: true,
            expires_in: ExpiresIn::Number,
            reuse_grace: Duration::ZERO,
            latency: Duration::ZERO,
            on_reuse: FamilyOnReuse::Kept,
            cc_scope: None,
            cc_audience: None,
            assertion: None,
            dpop: false,
            refresh_ttl: None,
        }
    }

    /// Advertises this lifetime beside every refresh token issued (see
    /// [`FakeConfig::refresh_ttl`]).
    pub fn with_refresh_ttl(mut self, ttl: Duration) -> FakeConfig {
        self.refresh_ttl = Some(ttl);
        self
    }

    /// Requires DPoP proofs and issues DPoP-bound tokens (see [`FakeConfig::dpop`]).
    pub fn with_dpop(mut self) -> FakeConfig {
        self.dpop = true;
        self
    }

    /// Sets the scope and audience a client_credentials request must send
    /// (see [`FakeConfig::cc_scope`]).
    pub fn with_client_credentials(
        mut self,
        scope: Option<&str>,
        audience: Option<&str>,
    ) -> FakeConfig {
        self.cc_scope = scope.map(str::to_string);
        self.cc_audience = audience.map(str::to_string);
        self
    }

    /// Sets what reuse outside the grace does to the family (see
    /// [`FakeConfig::on_reuse`]).
    pub fn with_family_on_reuse(mut self, on_reuse: FamilyOnReuse) -> FakeConfig {
        self.on_reuse = on_reuse;
        self
    }

    /// Sets the access-token lifetime.
    pub fn with_ttl(mut self, ttl: Duration) -> FakeConfig {
        self.ttl = ttl;
        self
    }

    /// Turns refresh-token rotation on or off.
    pub fn with_rotate(mut self, rotate: bool) -> FakeConfig {
        self.rotate = rotate;
        self
    }

    /// Sets the rotation leeway (see [`FakeConfig::reuse_grace`]): a used
    /// refresh token is accepted again if presented within `grace` of its first
    /// use, and counted in [`FakeProvider::reused_within_grace`]; after that it
    /// is refused and counted in [`FakeProvider::reused_refresh_tokens`].
    pub fn with_reuse_grace(mut self, grace: Duration) -> FakeConfig {
        self.reuse_grace = grace;
        self
    }

    /// Sets the answer latency of unfaulted token requests (see
    /// [`FakeConfig::latency`]).
    pub fn with_latency(mut self, latency: Duration) -> FakeConfig {
        self.latency = latency;
        self
    }

    /// Sets how responses state the lifetime.
    pub fn with_expires_in(mut self, expires_in: ExpiresIn) -> FakeConfig {
        self.expires_in = expires_in;
        self
    }

    /// Sets the client id and secret (password).
    pub fn with_client(mut self, id: impl Into<String>, secret: Option<String>) -> FakeConfig {
        self.client_id = id.into();
        self.client_secret = secret;
        self
    }

    /// Sets the partner id.
    pub fn with_partner_id(mut self, partner_id: impl Into<String>) -> FakeConfig {
        self.partner_id = partner_id.into();
        self
    }

    /// The exact `Authorization` header value a correct client sends, for the
    /// flavours that use Basic authentication; `None` for the others.
    ///
    /// digiRunner's seed vectors: `tspclient`/`tsp123abcd` gives
    /// `Basic dHNwY2xpZW50OmRITndNVEl6WVdKalpBPT0=`, the public `tspclient`
    /// gives `Basic dHNwY2xpZW50Og==`.
    pub fn expected_authorization(&self) -> Option<String> {
        let password = match self.flavor {
            Flavor::Didit => self.secret().to_string(),
            Flavor::DigiRunner => STANDARD.encode(self.secret()),
            Flavor::DigiRunnerPublic => String::new(),
            Flavor::Partner | Flavor::Bakrypt => return None,
        };
        let creds = format!("{}:{password}", self.client_id);
        Some(format!("Basic {}", STANDARD.encode(creds)))
    }

    pub(super) fn secret(&self) -> &str {
        self.client_secret.as_deref().unwrap_or("")
    }

    pub(super) fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs()
    }
}

impl fmt::Debug for FakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeConfig")
            .field("flavor", &self.flavor)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("partner_id", &self.partner_id)
            .field("ttl", &self.ttl)
            .field("rotate", &self.rotate)
            .field("expires_in", &self.expires_in)
            .field("reuse_grace", &self.reuse_grace)
            .field("latency", &self.latency)
            .field("on_reuse", &self.on_reuse)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish()
    }
}

/// A misbehaviour injected in place of normal processing of one token request
/// (see [`FakeProvider::push_fault`] and [`FakeProvider::set_sticky_fault`]).
/// Apart from [`Fault::ProcessThenReset`], a faulted request leaves the
/// refresh token or code it carried untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status, body and content type (and `Retry-After`).
    Status {
        /// HTTP status code.
        status: u16,
        /// Response body.
        body: String,
        /// `Content-Type` of the body.
        content_type: String,
        /// `Retry-After` header value, if any.
        retry_after: Option<String>,
    },
    /// Hold the request this long, then drop the connection without answering.
    Hang(Duration),
    /// `200 application/json` with a truncated JSON body.
    MalformedJson,
    /// This status with a `text/html` error page, as a proxy would send.
    Html(u16),
    /// `200` with `Content-Type: application/json` and an empty body.
    Empty200,
    /// Reset the TCP connection without any response.
    Reset,
    /// `200 application/json` whose chunked body is exactly this many bytes of
    /// JSON-ish padding (`{"padding":"xxx…"}`), streamed.
    HugeBody(usize),
    /// Process the request normally (a valid refresh token is rotated and
    /// counted), then reset the connection instead of answering: the client
    /// cannot know whether its refresh took effect.
    ProcessThenReset,
}

impl Fault {
    /// `status` with a JSON `server_error` body.
    pub fn server_error(status: u16) -> Fault {
        Fault::Status {
            status,
            body: r#"{"error":"server_error","error_description":"The server encountered an unexpected condition."}"#.to_string(),
            content_type: "application/json".to_string(),
            retry_after: None,
        }
    }

    /// `429 Too Many Requests` with `Retry-After: <retry_after_secs>` and a
    /// JSON error body.
    pub fn rate_limited(retry_after_secs: u64) -> Fault {
        Fault::Status {
            status: 429,
            body: r#"{"error":"rate_limited","error_description":"Too many requests."}"#
                .to_string(),
            content_type: "application/json".to_string(),
            retry_after: Some(retry_after_secs.to_string()),
        }
    }

    /// `status` with the OAuth error body `{"error": error}`, e.g. a
    /// `temporarily_unavailable` or an `invalid_grant` the provider chose to
    /// send regardless of the request.
    pub fn oauth_error(status: u16, error: &str) -> Fault {
        Fault::Status {
            status,
            body: json!({ "error": error }).to_string(),
            content_type: "application/json".to_string(),
            retry_after: None,
        }
    }
}
