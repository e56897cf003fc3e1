//! A strict fake OAuth2 token endpoint, for tokend's integration tests and for
//! the runnable `fake_provider` example.
//!
//! It copies five real token endpoints (the seed documents) and is **strict on
//! purpose**: a request that differs in any detail from what the real provider
//! documents (path, method, content type, client authentication, headers,
//! the exact set of body fields, duplicate fields, a stray query string) is
//! refused the way the real provider would refuse it. Each such wire-format
//! problem is also written as a readable line to [`FakeProvider::rejections`],
//! so a test can assert the list is empty, meaning the client spoke the format
//! exactly. Refresh tokens that are only unknown, used or revoked are answered
//! as invalid but are *not* counted as rejections: a correct client can send
//! them.
//!
//! | [`Flavor`]          | endpoint                | client authentication                              |
//! |---------------------|-------------------------|----------------------------------------------------|
//! | `Didit`             | `POST /auth/v2/token`   | `Basic base64(id:secret)`, form body (seeds 000/001) |
//! | `Partner`           | `POST /v1/auth/token`   | `partnerId` + `grantType` headers, JSON body (002) |
//! | `Bakrypt`           | `POST /auth/token/`     | `client_id`/`client_secret` in the form body (003) |
//! | `DigiRunner`        | `POST /oauth/token`     | `Basic base64(id:base64(password))` (004, I)       |
//! | `DigiRunnerPublic`  | `POST /oauth/token`     | `Basic base64(id:)` (004, II)                      |
//!
//! Rotation is strict by default: a refresh token is accepted once, and a used
//! one sent again is refused and counted in
//! [`FakeProvider::reused_refresh_tokens`]. [`FakeConfig::with_reuse_grace`]
//! adds a rotation leeway (as Auth0's reuse interval or Okta's grace period):
//! a used token presented within the grace of its first use is accepted once
//! more and counted in [`FakeProvider::reused_within_grace`] instead;
//! [`FakeConfig::with_family_on_reuse`] makes a reuse after it revoke the
//! whole family, as reuse detection does. Every
//! grant (a minted refresh token, a code exchange) starts a *family*; tokens
//! rotated from it stay in that family, and
//! [`FakeProvider::family_refresh_count`] counts its successful refreshes. Faults
//! ([`Fault`]) can be queued or made sticky to imitate outages, rate limits,
//! broken bodies, hung or reset connections; a faulted request does not
//! consume its refresh token unless the fault is [`Fault::ProcessThenReset`].
//!
//! `POST /admin/grant`, `POST /admin/code` and `POST /admin/revoke` let a
//! person drive the example with curl; they are not token requests.
//!
//! Connections are served with hyper directly (not through a router) so a
//! fault can drop a socket with a TCP reset instead of answering.
//!
//! The module is self-contained: it is included by path both from the
//! integration tests and from `examples/fake_provider.rs`, and depends on no
//! code of the `tokend` crate.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::distr::Alphanumeric;
use rand::Rng as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request body read; anything longer is refused as malformed.
const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Which real token endpoint to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Didit (seeds 000 and 001): `POST /auth/v2/token`, form body,
    /// `Authorization: Basic base64(client_id:client_secret)`; also serves the
    /// authorization-code exchange, with optional PKCE.
    Didit,
    /// The partner API (seed 002): `POST /v1/auth/token`, headers `partnerId`
    /// and `grantType: refresh_token`, JSON body `{"refreshToken": ...}`.
    Partner,
    /// Bakrypt (seed 003): `POST /auth/token/`, form body carrying
    /// `client_id` and `client_secret`.
    Bakrypt,
    /// digiRunner, confidential client (seed 004, scenario I):
    /// `POST /oauth/token`, `Authorization: Basic base64(id ":" base64(password))`.
    DigiRunner,
    /// digiRunner, public PKCE client (seed 004, scenario II):
    /// `Authorization: Basic base64(id ":")`.
    DigiRunnerPublic,
}

impl Flavor {
    /// Every flavour, in declaration order.
    pub const ALL: [Flavor; 5] = [
        Flavor::Didit,
        Flavor::Partner,
        Flavor::Bakrypt,
        Flavor::DigiRunner,
        Flavor::DigiRunnerPublic,
    ];

    /// The token endpoint's path.
    pub fn token_path(self) -> &'static str {
        match self {
            Flavor::Didit => "/auth/v2/token",
            Flavor::Partner => "/v1/auth/token",
            Flavor::Bakrypt => "/auth/token/",
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => "/oauth/token",
        }
    }

    /// The command-line name (`didit`, `partner`, `bakrypt`, `digirunner`,
    /// `digirunner-public`); [`FromStr`] accepts the same.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Didit => "didit",
            Flavor::Partner => "partner",
            Flavor::Bakrypt => "bakrypt",
            Flavor::DigiRunner => "digirunner",
            Flavor::DigiRunnerPublic => "digirunner-public",
        }
    }

    /// The `client_auth` value of a tokend provider configured for this flavour.
    pub fn client_auth(self) -> &'static str {
        match self {
            Flavor::Didit => "basic",
            Flavor::Partner => "none",
            Flavor::Bakrypt => "body",
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => "digirunner",
        }
    }

    fn is_digirunner(self) -> bool {
        matches!(self, Flavor::DigiRunner | Flavor::DigiRunnerPublic)
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flavor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flavor::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Flavor::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown flavour {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

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
        }
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

    fn secret(&self) -> &str {
        self.client_secret.as_deref().unwrap_or("")
    }

    fn ttl_secs(&self) -> u64 {
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

/// A running fake token endpoint. Every accessor reads shared state, so tests
/// may inspect it while requests are in flight. Dropping it stops the server
/// (open connections are aborted); [`FakeProvider::shutdown`] does the same
/// and waits.
pub struct FakeProvider {
    inner: Arc<Inner>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeProvider {
    /// Starts a fake on `127.0.0.1` with an ephemeral port.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound (a broken test environment).
    pub async fn start(cfg: FakeConfig) -> FakeProvider {
        match FakeProvider::start_on(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await {
            Ok(p) => p,
            Err(e) => panic!("fake provider: cannot bind 127.0.0.1:0: {e}"),
        }
    }

    /// Starts a fake listening on `addr`.
    pub async fn start_on(cfg: FakeConfig, addr: SocketAddr) -> io::Result<FakeProvider> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            cfg,
            addr,
            state: Mutex::new(State::default()),
        });
        inner.register_config_secrets();
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, inner.clone(), stop_rx));
        Ok(FakeProvider {
            inner,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT/<the flavour's token path>`.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.base_url(), self.inner.cfg.flavor.token_path())
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The configuration the fake runs with.
    pub fn config(&self) -> &FakeConfig {
        &self.inner.cfg
    }

    /// Mints a fresh valid refresh token, as if a user had just logged in.
    /// It starts a new family (see [`FakeProvider::issue_refresh_token_family`]).
    pub fn issue_refresh_token(&self) -> String {
        self.issue_refresh_token_family().0
    }

    /// Mints a fresh valid refresh token starting a new grant family, and
    /// returns it with the family's id. Every token rotated from it belongs to
    /// the same family; see [`FakeProvider::family_refresh_count`].
    pub fn issue_refresh_token_family(&self) -> (String, u64) {
        let mut st = self.inner.lock();
        let family = st.new_family();
        let token = self
            .inner
            .mint_refresh_token(&mut st, SystemTime::now(), family);
        (token, family)
    }

    /// Successful refreshes of family `family` (including ones accepted within
    /// the reuse grace and ones answered by [`Fault::ProcessThenReset`]); zero
    /// for an unknown family.
    pub fn family_refresh_count(&self, family: u64) -> usize {
        self.inner
            .lock()
            .family_refreshes
            .get(&family)
            .copied()
            .unwrap_or(0)
    }

    /// Mints `n` fresh valid refresh tokens, each starting its own family, in
    /// one go (one lock, one pass): the scale benchmark needs tens of
    /// thousands. Returns `(token, family)` pairs, as
    /// [`FakeProvider::issue_refresh_token_family`] does one at a time.
    pub fn issue_refresh_tokens(&self, n: usize) -> Vec<(String, u64)> {
        let mut st = self.inner.lock();
        let now = SystemTime::now();
        (0..n)
            .map(|_| {
                let family = st.new_family();
                (self.inner.mint_refresh_token(&mut st, now, family), family)
            })
            .collect()
    }

    /// The wall-clock time at which each successful refresh was carried out,
    /// with the family of the token it spent, in the order they happened
    /// (the same refreshes [`FakeProvider::refresh_count`] counts). Lets a
    /// benchmark compare them with the instant a refresh was planned for.
    pub fn refresh_wall_times(&self) -> Vec<(u64, SystemTime)> {
        self.inner.lock().refresh_log.clone()
    }

    /// The refresh token each family holds right now: the valid one (with
    /// strict rotation, at most one per family). Families whose tokens are
    /// all used or revoked are absent.
    pub fn current_refresh_tokens_by_family(&self) -> HashMap<u64, String> {
        self.inner
            .lock()
            .refresh_tokens
            .iter()
            .filter(|(_, e)| e.state == RtState::Valid)
            .map(|(t, e)| (e.family, t.clone()))
            .collect()
    }

    /// Mints a single-use authorization code bound to `redirect_uri`, with an
    /// optional S256 PKCE challenge; the exchange returns a refresh token only
    /// if `offline`.
    pub fn issue_code(
        &self,
        redirect_uri: &str,
        pkce_challenge: Option<&str>,
        offline: bool,
    ) -> String {
        self.inner
            .issue_code("code-", redirect_uri, pkce_challenge, offline)
    }

    /// As [`FakeProvider::issue_code`], for a code that begins with `prefix`
    /// (`-t`: one base64url code in 64 begins with `-`).
    pub fn issue_code_with_prefix(
        &self,
        prefix: &str,
        redirect_uri: &str,
        pkce_challenge: Option<&str>,
    ) -> String {
        self.inner
            .issue_code(prefix, redirect_uri, pkce_challenge, true)
    }

    /// Makes every currently valid refresh token invalid (as a revoked grant),
    /// and closes the reuse grace of used ones (still counted if reused).
    pub fn revoke_all(&self) {
        self.inner.revoke_all();
    }

    /// Successful refreshes (including ones answered by
    /// [`Fault::ProcessThenReset`]).
    pub fn refresh_count(&self) -> usize {
        self.inner.lock().refresh_count
    }

    /// Successful authorization-code exchanges.
    pub fn exchange_count(&self) -> usize {
        self.inner.lock().exchange_count
    }

    /// Every request that reached the token path, faulted or not.
    pub fn request_count(&self) -> usize {
        self.inner.lock().request_times.len()
    }

    /// When each request counted by [`FakeProvider::request_count`] arrived.
    pub fn request_times(&self) -> Vec<Instant> {
        self.inner.lock().request_times.clone()
    }

    /// How many times an already used refresh token was presented outside its
    /// reuse grace (always, with the default strict rotation) and refused.
    pub fn reused_refresh_tokens(&self) -> usize {
        self.inner.lock().reused_refresh_tokens
    }

    /// How many times an already used refresh token was presented within its
    /// reuse grace ([`FakeConfig::with_reuse_grace`]) and accepted.
    pub fn reused_within_grace(&self) -> usize {
        self.inner.lock().reused_within_grace
    }

    /// Every wire-format problem seen so far, one readable line each (no
    /// secret values).
    pub fn rejections(&self) -> Vec<String> {
        self.inner.lock().rejections.clone()
    }

    /// When an issued access token expires; `None` if it was never issued.
    pub fn access_token_expiry(&self, token: &str) -> Option<SystemTime> {
        self.inner.lock().access_tokens.get(token).copied()
    }

    /// The refresh tokens valid right now, oldest first.
    pub fn current_refresh_tokens(&self) -> Vec<String> {
        let st = self.inner.lock();
        let mut valid: Vec<(&String, u64)> = st
            .refresh_tokens
            .iter()
            .filter(|(_, e)| e.state == RtState::Valid)
            .map(|(t, e)| (t, e.seq))
            .collect();
        valid.sort_by_key(|(_, seq)| *seq);
        valid.into_iter().map(|(t, _)| t.clone()).collect()
    }

    /// Every access, refresh and ID token and code ever issued, plus the client
    /// secret and the encodings a client sends it in: strings that must never
    /// appear in the daemon's logs.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.inner.lock().secrets.clone()
    }

    /// Scans `text` (a log, say) for [`FakeProvider::issued_secrets`], whole
    /// or in part: short secrets must not appear whole, and no
    /// [`LEAK_WINDOW`]-character fragment of a longer one may appear, which
    /// catches a token echoed and then truncated. The constant header segment
    /// of JWT-shaped tokens is not secret and is ignored. Returns one line per
    /// leaked secret, naming it by SHA-256 fingerprint, never by value.
    pub fn find_leaks(&self, text: &str) -> Vec<String> {
        find_leaks(&self.issued_secrets(), text)
    }

    /// Queues a one-shot fault; queued faults are used first in, first out,
    /// one per token request, before normal processing.
    pub fn push_fault(&self, f: Fault) {
        self.inner.lock().faults.push_back(f);
    }

    /// Applies `f` to every token request until cleared with `None`; queued
    /// one-shot faults take precedence.
    pub fn set_sticky_fault(&self, f: Option<Fault>) {
        self.inner.lock().sticky_fault = f;
    }

    /// Stops accepting, aborts open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its `JoinSet`, which aborts every
            // connection task, and closes the listener.
            task.abort();
        }
    }
}

impl fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeProvider")
            .field("addr", &self.inner.addr)
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RtState {
    Valid,
    Used,
    Revoked,
}

#[derive(Debug)]
struct RtEntry {
    state: RtState,
    seq: u64,
    /// The grant family this token belongs to.
    family: u64,
    /// Until when a used token is still accepted (first use + grace); `None`
    /// while valid, or once the grace was closed by a revocation.
    grace_until: Option<Instant>,
}

#[derive(Debug)]
struct CodeGrant {
    redirect_uri: String,
    challenge: Option<String>,
    offline: bool,
    used: bool,
}

#[derive(Debug, Default)]
struct State {
    refresh_tokens: HashMap<String, RtEntry>,
    next_seq: u64,
    codes: HashMap<String, CodeGrant>,
    access_tokens: HashMap<String, SystemTime>,
    secrets: Vec<String>,
    /// The same strings as `secrets`, for an O(1) duplicate check: a linear
    /// scan made every mint O(tokens issued), which throttled the fake in
    /// the scale benchmark's bursts of tens of thousands of refreshes.
    secret_set: HashSet<String>,
    /// Wall-clock time and grant family of every successful refresh, in
    /// order (see [`FakeProvider::refresh_wall_times`]).
    refresh_log: Vec<(u64, SystemTime)>,
    refresh_count: usize,
    exchange_count: usize,
    request_times: Vec<Instant>,
    reused_refresh_tokens: usize,
    reused_within_grace: usize,
    next_family: u64,
    family_refreshes: HashMap<u64, usize>,
    rejections: Vec<String>,
    faults: VecDeque<Fault>,
    sticky_fault: Option<Fault>,
}

impl State {
    /// A new grant family id (ids start at 1).
    fn new_family(&mut self) -> u64 {
        self.next_family += 1;
        self.next_family
    }

    fn add_secret(&mut self, s: String) {
        if !s.is_empty() && self.secret_set.insert(s.clone()) {
            self.secrets.push(s);
        }
    }
}

struct Inner {
    cfg: FakeConfig,
    addr: SocketAddr,
    state: Mutex<State>,
}

/// What a grant request asks for, once its wire format has been checked.
enum Grant {
    Refresh(String),
    Exchange {
        code: String,
        redirect_uri: String,
        verifier: Option<String>,
    },
}

/// A refusal: the HTTP answer plus, for wire-format problems, the line for
/// [`FakeProvider::rejections`].
struct Reject {
    status: StatusCode,
    error: &'static str,
    description: Option<String>,
    www_authenticate_basic: bool,
    record: Option<String>,
}

impl Reject {
    /// A wire-format problem: answered with `error` and recorded.
    fn wire(status: StatusCode, error: &'static str, problem: impl Into<String>) -> Reject {
        let problem = problem.into();
        Reject {
            status,
            error,
            description: Some(problem.clone()),
            www_authenticate_basic: false,
            record: Some(problem),
        }
    }

    fn invalid_request(problem: impl Into<String>) -> Reject {
        Reject::wire(StatusCode::BAD_REQUEST, "invalid_request", problem)
    }

    fn unsupported_grant_type(problem: impl Into<String>) -> Reject {
        Reject::wire(StatusCode::BAD_REQUEST, "unsupported_grant_type", problem)
    }

    /// Failed client authentication: 401 `invalid_client`, no description (so
    /// nothing about the credentials is echoed), the reason only recorded.
    fn invalid_client(problem: impl Into<String>, basic_expected: bool) -> Reject {
        Reject {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: None,
            www_authenticate_basic: basic_expected,
            record: Some(problem.into()),
        }
    }

    /// A grant that is merely invalid (unknown, used, revoked): not recorded.
    fn invalid_grant(description: &str) -> Reject {
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
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register_config_secrets(&self) {
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

    fn issue_code(
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

    fn revoke_all(&self) -> usize {
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

    fn mint_refresh_token(&self, st: &mut State, now: SystemTime, family: u64) -> String {
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
    fn mint_access_token(&self, st: &mut State, now: SystemTime) -> (String, String) {
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

    fn mint_id_token(&self, st: &mut State, now: SystemTime) -> String {
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
    fn token_response(
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

    fn invalid_refresh_token(&self, presented: &str) -> Reject {
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
    fn perform(&self, grant: Grant) -> Result<Value, Reject> {
        let mut st = self.lock();
        match grant {
            Grant::Refresh(token) => {
                let now = Instant::now();
                let entry = st
                    .refresh_tokens
                    .get(&token)
                    .map(|e| (e.state, e.family, e.grace_until));
                let family = match entry {
                    Some((RtState::Valid, family, _)) => {
                        if self.cfg.rotate {
                            if let Some(e) = st.refresh_tokens.get_mut(&token) {
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
                        return Err(self.invalid_refresh_token(&token));
                    }
                    Some((RtState::Revoked, _, _)) | None => {
                        return Err(self.invalid_refresh_token(&token))
                    }
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
            Grant::Exchange {
                code,
                redirect_uri,
                verifier,
            } => {
                let invalid_code =
                    || Reject::invalid_grant("The authorization code was invalid or has expired.");
                let Some(grant) = st.codes.get(&code) else {
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
                if let Some(g) = st.codes.get_mut(&code) {
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
    }

    /// Handles a token-path request with no fault: check the wire format,
    /// perform the grant, render the answer, record any rejection.
    fn process(&self, parts: &Parts, body: Result<Bytes, String>) -> Response<RespBody> {
        let result = self
            .check_wire(parts, body)
            .and_then(|grant| self.perform(grant));
        match result {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(r) => {
                if let Some(problem) = &r.record {
                    let line = format!(
                        "[{}] {} {}: {problem}",
                        self.cfg.flavor,
                        parts.method,
                        parts.uri.path()
                    );
                    self.lock().rejections.push(line);
                }
                error_response(r)
            }
        }
    }

    /// Checks everything about the request except whether its token or code
    /// is valid.
    fn check_wire(&self, parts: &Parts, body: Result<Bytes, String>) -> Result<Grant, Reject> {
        if parts.method != Method::POST {
            return Err(Reject::wire(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                format!(
                    "method {} not allowed; the token endpoint takes POST",
                    parts.method
                ),
            ));
        }
        if parts.uri.query().is_some() {
            return Err(Reject::invalid_request(
                "query string on the token endpoint; parameters belong in the body",
            ));
        }
        let body = body.map_err(Reject::invalid_request)?;
        let headers = &parts.headers;
        match self.cfg.flavor {
            Flavor::Partner => self.check_partner(headers, &body),
            Flavor::Didit => {
                require_media_type(headers, "application/x-www-form-urlencoded")?;
                self.check_basic(headers)?;
                let form = parse_form(&body).map_err(Reject::invalid_request)?;
                match grant_type(&form)? {
                    "refresh_token" => {
                        let f = exact_fields(&form, &["grant_type", "refresh_token"], &[])?;
                        Ok(Grant::Refresh(non_empty(&f, "refresh_token")?))
                    }
                    "authorization_code" => {
                        let f = exact_fields(
                            &form,
                            &["code", "grant_type", "redirect_uri"],
                            &["code_verifier"],
                        )?;
                        Ok(Grant::Exchange {
                            code: non_empty(&f, "code")?,
                            redirect_uri: non_empty(&f, "redirect_uri")?,
                            verifier: f.get("code_verifier").map(|v| v.to_string()),
                        })
                    }
                    _ => Err(Reject::unsupported_grant_type(
                        "grant_type must be refresh_token or authorization_code",
                    )),
                }
            }
            Flavor::Bakrypt => {
                require_media_type(headers, "application/x-www-form-urlencoded")?;
                forbid_authorization(headers, "client credentials go in the body")?;
                let form = parse_form(&body).map_err(Reject::invalid_request)?;
                if grant_type(&form)? != "refresh_token" {
                    return Err(Reject::unsupported_grant_type(
                        "grant_type must be refresh_token",
                    ));
                }
                let f = exact_fields(
                    &form,
                    &["client_id", "client_secret", "refresh_token", "grant_type"],
                    &[],
                )?;
                if f.get("client_id").copied() != Some(self.cfg.client_id.as_str()) {
                    return Err(Reject::invalid_client(
                        "client_id in the body is wrong",
                        false,
                    ));
                }
                if f.get("client_secret").copied() != Some(self.cfg.secret()) {
                    return Err(Reject::invalid_client(
                        "client_secret in the body is wrong",
                        false,
                    ));
                }
                Ok(Grant::Refresh(non_empty(&f, "refresh_token")?))
            }
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => {
                require_media_type(headers, "application/x-www-form-urlencoded")?;
                self.check_basic(headers)?;
                let form = parse_form(&body).map_err(Reject::invalid_request)?;
                if grant_type(&form)? != "refresh_token" {
                    return Err(Reject::unsupported_grant_type(
                        "grant_type must be refresh_token",
                    ));
                }
                let f = exact_fields(&form, &["grant_type", "refresh_token"], &[])?;
                Ok(Grant::Refresh(non_empty(&f, "refresh_token")?))
            }
        }
    }

    fn check_partner(&self, headers: &HeaderMap, body: &[u8]) -> Result<Grant, Reject> {
        forbid_authorization(headers, "this API takes no client authentication")?;
        let partner = single_header(headers, "partnerid")?
            .ok_or_else(|| Reject::invalid_request("missing partnerId header"))?;
        if partner != self.cfg.partner_id {
            return Err(Reject::invalid_client("partnerId header is wrong", false));
        }
        let grant = single_header(headers, "granttype")?
            .ok_or_else(|| Reject::invalid_request("missing grantType header"))?;
        if grant != "refresh_token" {
            return Err(Reject::unsupported_grant_type(
                "grantType header must be refresh_token",
            ));
        }
        require_media_type(headers, "application/json")?;
        let entries: JsonEntries = serde_json::from_slice(body).map_err(|e| {
            Reject::invalid_request(format!("body is not a single JSON object: {e}"))
        })?;
        let mut seen = HashSet::new();
        let mut refresh = None;
        for (key, value) in entries.0 {
            if !seen.insert(key.clone()) {
                return Err(Reject::invalid_request(format!(
                    "duplicate JSON key {key:?}"
                )));
            }
            if key != "refreshToken" {
                return Err(Reject::invalid_request(format!(
                    "unexpected JSON key {key:?}; the body takes only refreshToken"
                )));
            }
            refresh = Some(value);
        }
        match refresh {
            None => Err(Reject::invalid_request("Missing refresh token.")),
            Some(Value::String(s)) if s.is_empty() => {
                Err(Reject::invalid_request("Missing refresh token."))
            }
            Some(Value::String(s)) => Ok(Grant::Refresh(s)),
            Some(_) => Err(Reject::invalid_request(
                "refreshToken must be a JSON string",
            )),
        }
    }

    /// Checks `Authorization: Basic …` against the flavour's expected value,
    /// explaining near misses in the rejection line (never echoing values).
    fn check_basic(&self, headers: &HeaderMap) -> Result<(), Reject> {
        let fail = |problem: &str| Reject::invalid_client(problem, true);
        let Some(value) = single_header(headers, "authorization")? else {
            return Err(fail(
                "missing Authorization header (Basic client authentication expected)",
            ));
        };
        let Some((scheme, b64)) = value.split_once(' ') else {
            return Err(fail("Authorization header is not `Basic <credentials>`"));
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(fail("Authorization scheme is not Basic"));
        }
        let Ok(raw) = STANDARD.decode(b64) else {
            return Err(fail(
                "Basic credentials are not standard padded Base64 (or have extra spaces)",
            ));
        };
        let Ok(creds) = String::from_utf8(raw) else {
            return Err(fail("Basic credentials are not UTF-8"));
        };
        let Some((user, pass)) = creds.split_once(':') else {
            return Err(fail("Basic credentials have no ':'"));
        };
        let cfg = &self.cfg;
        if user != cfg.client_id {
            if user == form_encode(&cfg.client_id) {
                return Err(fail(
                    "client id was form-urlencoded before Basic encoding; this provider expects it raw",
                ));
            }
            return Err(fail("wrong client id in Basic credentials"));
        }
        let secret = cfg.secret();
        match cfg.flavor {
            Flavor::DigiRunnerPublic => {
                if !pass.is_empty() {
                    return Err(fail(
                        "public digiRunner client must send Base64(client_id \":\") with nothing after the colon",
                    ));
                }
            }
            Flavor::DigiRunner => {
                if pass != STANDARD.encode(secret) {
                    if pass == secret {
                        return Err(fail(
                            "plain Basic id:password sent; digiRunner expects Base64(id \":\" Base64(password))",
                        ));
                    }
                    return Err(fail(
                        "wrong password part; digiRunner expects Base64(id \":\" Base64(password))",
                    ));
                }
            }
            _ => {
                if pass != secret {
                    if pass == form_encode(secret) {
                        return Err(fail(
                            "client secret was form-urlencoded before Basic encoding; this provider expects it raw",
                        ));
                    }
                    return Err(fail("wrong client secret in Basic credentials"));
                }
            }
        }
        Ok(())
    }

    /// Serves `/admin/*` (not token requests: not counted, never faulted).
    fn admin(&self, parts: &Parts, body: Result<Bytes, String>) -> Response<RespBody> {
        let bad = |msg: String| {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": msg}),
            )
        };
        if parts.method != Method::POST {
            return bad("admin endpoints take POST".to_string());
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => return bad(e),
        };
        match parts.uri.path() {
            "/admin/grant" => {
                let mut st = self.lock();
                let family = st.new_family();
                let rt = self.mint_refresh_token(&mut st, SystemTime::now(), family);
                json_response(StatusCode::OK, &json!({ "refresh_token": rt }))
            }
            "/admin/code" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct CodeRequest {
                    redirect_uri: String,
                    #[serde(default)]
                    code_challenge: Option<String>,
                    #[serde(default)]
                    offline: Option<bool>,
                }
                match serde_json::from_slice::<CodeRequest>(&body) {
                    Ok(r) => {
                        let code = self.issue_code(
                            "code-",
                            &r.redirect_uri,
                            r.code_challenge.as_deref(),
                            r.offline.unwrap_or(true),
                        );
                        json_response(StatusCode::OK, &json!({ "code": code }))
                    }
                    Err(e) => bad(format!(
                        "expected {{\"redirect_uri\": ..., \"code_challenge\"?: ..., \"offline\"?: bool}}: {e}"
                    )),
                }
            }
            "/admin/revoke" => {
                let n = self.revoke_all();
                json_response(StatusCode::OK, &json!({ "revoked": n }))
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    /// Answers a request for a path that is neither the token path nor admin.
    fn unknown_path(&self, parts: &Parts) -> Response<RespBody> {
        let line = format!(
            "[{}] {} {}: unknown path; the token endpoint is POST {}",
            self.cfg.flavor,
            parts.method,
            parts.uri.path(),
            self.cfg.flavor.token_path()
        );
        self.lock().rejections.push(line);
        json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}))
    }
}

// ---------------------------------------------------------------------------
// Request parsing helpers (every failure becomes a 400, never a panic)
// ---------------------------------------------------------------------------

/// The one value of header `name`, as visible ASCII; `Ok(None)` if absent.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, Reject> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Reject::invalid_request(format!(
            "header {name} sent more than once"
        )));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| Reject::invalid_request(format!("header {name} is not visible ASCII")))
}

fn forbid_authorization(headers: &HeaderMap, why: &str) -> Result<(), Reject> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(Reject::invalid_request(format!(
            "unexpected Authorization header; {why}"
        )));
    }
    Ok(())
}

/// Requires `Content-Type: <expected>`, media type compared without regard to
/// case, parameters (`; charset=utf-8`) tolerated.
fn require_media_type(headers: &HeaderMap, expected: &str) -> Result<(), Reject> {
    let Some(value) = single_header(headers, "content-type")? else {
        return Err(Reject::invalid_request(format!(
            "missing Content-Type; expected {expected}"
        )));
    };
    let media = value.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(expected) {
        return Err(Reject::invalid_request(format!(
            "Content-Type is {media:?}; expected {expected}"
        )));
    }
    Ok(())
}

/// Parses an `application/x-www-form-urlencoded` body strictly: ASCII only, no
/// empty segments, every segment `key=value`, well-formed percent escapes
/// decoding to UTF-8.
fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    if body.is_empty() {
        return Err("empty body".to_string());
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err("form body is not ASCII".to_string());
    };
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "form body contains {c:?} (whitespace, control or non-ASCII characters must be percent-encoded)"
        ));
    }
    for segment in text.split('&') {
        if segment.is_empty() {
            return Err("empty form segment (stray '&')".to_string());
        }
        if !segment.contains('=') {
            return Err("form segment without '='".to_string());
        }
        let bytes = segment.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'%' {
                let ok = bytes.len() > i + 2
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit();
                if !ok {
                    return Err("malformed percent escape in form body".to_string());
                }
            }
        }
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    if pairs
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err("percent-encoded bytes in form body are not UTF-8".to_string());
    }
    Ok(pairs)
}

/// The single `grant_type` value.
fn grant_type(form: &[(String, String)]) -> Result<&str, Reject> {
    let mut values = form.iter().filter(|(k, _)| k == "grant_type");
    let Some((_, v)) = values.next() else {
        return Err(Reject::invalid_request("missing field grant_type"));
    };
    if values.next().is_some() {
        return Err(Reject::invalid_request("duplicate field grant_type"));
    }
    Ok(v)
}

/// Requires exactly the `required` fields plus any of `optional`, each once.
fn exact_fields<'f>(
    form: &'f [(String, String)],
    required: &[&str],
    optional: &[&str],
) -> Result<HashMap<&'f str, &'f str>, Reject> {
    let mut map = HashMap::new();
    for (k, v) in form {
        if !required.contains(&k.as_str()) && !optional.contains(&k.as_str()) {
            return Err(Reject::invalid_request(format!(
                "unexpected field {k:?}; expected exactly {}",
                describe_fields(required, optional)
            )));
        }
        if map.insert(k.as_str(), v.as_str()).is_some() {
            return Err(Reject::invalid_request(format!("duplicate field {k:?}")));
        }
    }
    for r in required {
        if !map.contains_key(r) {
            return Err(Reject::invalid_request(format!(
                "missing field {r:?}; expected exactly {}",
                describe_fields(required, optional)
            )));
        }
    }
    Ok(map)
}

fn describe_fields(required: &[&str], optional: &[&str]) -> String {
    let mut s = required.join(", ");
    if !optional.is_empty() {
        s.push_str(&format!(" (optionally {})", optional.join(", ")));
    }
    s
}

fn non_empty(fields: &HashMap<&str, &str>, name: &str) -> Result<String, Reject> {
    match fields.get(name) {
        Some(v) if !v.is_empty() => Ok((*v).to_string()),
        _ => Err(Reject::invalid_request(format!("field {name} is empty"))),
    }
}

/// A JSON object's entries in order, duplicates kept (serde_json's `Map`
/// would silently keep only the last).
struct JsonEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for JsonEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonEntries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    entries.push((k, v));
                }
                Ok(JsonEntries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL-NOPAD(SHA256(verifier))`, the S256 challenge of a verifier.
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

// ---------------------------------------------------------------------------
// Leak scanning
// ---------------------------------------------------------------------------

/// Fragment length [`FakeProvider::find_leaks`] looks for.
pub const LEAK_WINDOW: usize = 20;

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

fn random_alnum(n: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A random version-4-style UUID string.
fn uuid_like() -> String {
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
fn jwt(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let sig: [u8; 32] = rand::rng().random();
    let sig2: [u8; 32] = rand::rng().random();
    let mut s = sig.to_vec();
    s.extend_from_slice(&sig2);
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(s))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// A response body: in one piece, or streamed padding.
enum RespBody {
    Full(Option<Bytes>),
    Padding {
        prefix: Option<Bytes>,
        remaining: usize,
        suffix: Option<Bytes>,
    },
}

static PAD: [u8; 16 * 1024] = [b'x'; 16 * 1024];

impl RespBody {
    fn full(b: impl Into<Bytes>) -> RespBody {
        let b = b.into();
        RespBody::Full((!b.is_empty()).then_some(b))
    }

    /// Exactly `n` bytes: `{"padding":"xxx…"}` when there is room for it.
    fn padding(n: usize) -> RespBody {
        const PREFIX: &[u8] = br#"{"padding":""#;
        const SUFFIX: &[u8] = br#""}"#;
        if n >= PREFIX.len() + SUFFIX.len() {
            RespBody::Padding {
                prefix: Some(Bytes::from_static(PREFIX)),
                remaining: n - PREFIX.len() - SUFFIX.len(),
                suffix: Some(Bytes::from_static(SUFFIX)),
            }
        } else {
            RespBody::Padding {
                prefix: None,
                remaining: n,
                suffix: None,
            }
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = match self.get_mut() {
            RespBody::Full(b) => b.take(),
            RespBody::Padding {
                prefix,
                remaining,
                suffix,
            } => {
                if let Some(p) = prefix.take() {
                    Some(p)
                } else if *remaining > 0 {
                    let n = (*remaining).min(PAD.len());
                    *remaining -= n;
                    Some(Bytes::from_static(&PAD[..n]))
                } else {
                    suffix.take()
                }
            }
        };
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Padding {
                prefix,
                remaining,
                suffix,
            } => prefix.is_none() && *remaining == 0 && suffix.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            // Unknown length: sent chunked, so a client cannot pre-check it.
            RespBody::Padding { .. } => SizeHint::default(),
        }
    }
}

fn response(status: StatusCode, content_type: &str, body: RespBody) -> Response<RespBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<RespBody> {
    response(
        status,
        "application/json",
        RespBody::full(v.to_string().into_bytes()),
    )
}

fn error_response(r: Reject) -> Response<RespBody> {
    let mut body = Map::new();
    body.insert("error".into(), json!(r.error));
    if let Some(d) = r.description {
        body.insert("error_description".into(), json!(d));
    }
    let mut resp = json_response(r.status, &Value::Object(body));
    if r.www_authenticate_basic {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fake-provider\""),
        );
    }
    if r.status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    resp
}

fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The canned answer for a fault that answers; `None` for faults that drop
/// the connection.
fn fault_response(f: &Fault, inner: &Inner) -> Option<Response<RespBody>> {
    match f {
        Fault::Status {
            status,
            body,
            content_type,
            retry_after,
        } => {
            let mut r = response(
                status_code(*status),
                content_type,
                RespBody::full(body.clone().into_bytes()),
            );
            if let Some(ra) = retry_after
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                r.headers_mut().insert(header::RETRY_AFTER, ra);
            }
            Some(r)
        }
        Fault::MalformedJson => {
            let at = format!("at-{}", random_alnum(32));
            inner.lock().add_secret(at.clone());
            let body = format!(r#"{{"access_token": "{at}", "expires_in"#);
            Some(response(
                StatusCode::OK,
                "application/json",
                RespBody::full(body.into_bytes()),
            ))
        }
        Fault::Html(code) => {
            let status = status_code(*code);
            let title = format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error")
            );
            let page = format!(
                "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            Some(response(
                status,
                "text/html; charset=utf-8",
                RespBody::full(page.into_bytes()),
            ))
        }
        Fault::Empty200 => Some(response(
            StatusCode::OK,
            "application/json",
            RespBody::full(Bytes::new()),
        )),
        Fault::HugeBody(n) => Some(response(
            StatusCode::OK,
            "application/json",
            RespBody::padding(*n),
        )),
        Fault::Hang(_) | Fault::Reset | Fault::ProcessThenReset => None,
    }
}

// ---------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------

/// What to do with one request.
enum Outcome {
    Respond(Response<RespBody>),
    /// Reset the connection without answering.
    Kill,
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Outcome {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let is_token = path == inner.cfg.flavor.token_path();
    if !is_token && !path.starts_with("/admin/") {
        return Outcome::Respond(inner.unknown_path(&parts));
    }
    let fault = if is_token {
        let mut st = inner.lock();
        st.request_times.push(Instant::now());
        let f = st.faults.pop_front();
        f.or_else(|| st.sticky_fault.clone())
    } else {
        None
    };
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(format!(
            "request body unreadable or larger than {MAX_REQUEST_BODY} bytes: {e}"
        )),
    };
    if !is_token {
        return Outcome::Respond(inner.admin(&parts, body));
    }
    match fault {
        None => {
            let response = inner.process(&parts, body);
            if !inner.cfg.latency.is_zero() {
                tokio::time::sleep(inner.cfg.latency).await;
            }
            Outcome::Respond(response)
        }
        Some(Fault::ProcessThenReset) => {
            let _ = inner.process(&parts, body);
            Outcome::Kill
        }
        Some(Fault::Reset) => Outcome::Kill,
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            Outcome::Kill
        }
        Some(f) => match fault_response(&f, &inner) {
            Some(r) => Outcome::Respond(r),
            None => Outcome::Kill,
        },
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, inner.clone()));
                }
                // Out of file descriptors or similar: back off briefly.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
        }
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

/// Per-connection switch a request uses to have its connection reset.
#[derive(Default)]
struct ConnCtl {
    kill: AtomicBool,
    notify: Notify,
}

/// The TCP stream as hyper sees it; when dropped after a kill it sets
/// `SO_LINGER` to zero so closing sends a reset rather than a clean FIN.
struct ConnIo {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.ctl.kill.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

async fn serve_connection(stream: TcpStream, inner: Arc<Inner>) {
    let _ = stream.set_nodelay(true);
    let ctl = Arc::new(ConnCtl::default());
    let io = TokioIo::new(ConnIo {
        stream,
        ctl: ctl.clone(),
    });
    let svc_ctl = ctl.clone();
    let svc = service_fn(move |req| {
        let inner = inner.clone();
        let ctl = svc_ctl.clone();
        async move {
            match handle(inner, req).await {
                Outcome::Respond(r) => Ok::<_, Infallible>(r),
                Outcome::Kill => {
                    ctl.kill.store(true, Ordering::SeqCst);
                    ctl.notify.notify_one();
                    std::future::pending().await
                }
            }
        }
    });
    let conn = http1::Builder::new().serve_connection(io, svc);
    tokio::select! {
        _ = conn => {}
        // Dropping `conn` drops the socket; `ConnIo` makes that a reset.
        _ = ctl.notify.notified() => {}
    }
}
