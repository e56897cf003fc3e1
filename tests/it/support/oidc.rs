//! A real authorization server for the tests: panva's `oidc-provider` (npm),
//! run by `tests/oidc/server.mjs` on 127.0.0.1 with a fresh port, its own
//! keys and an in-memory store. [`OidcServer`] starts it (installing its
//! packages with `npm ci` on first use in this process), reads its ready
//! line and then its event lines (one per token, device, revocation or
//! introspection request, with no secret in them), and kills it on drop.
//!
//! The clients it knows are the constants below, one per client-auth method
//! it supports; [`OidcServer::provider_toml`] writes the tokend provider
//! table for one of them. [`log_in`] and [`approve_device`] drive its login,
//! consent and device pages with the test [`Browser`].

// Each test file uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use url::Url;

use super::browser::{host_port, Browser, Page};

/// A client registered in the server, and how tokend authenticates as it.
#[derive(Debug, Clone, Copy)]
pub struct OidcClient {
    pub id: &'static str,
    pub secret: Option<&'static str>,
    /// The RFC 7591 name of its `token_endpoint_auth_method`, which is also
    /// the `client_auth` value tokend's configuration takes for it.
    pub auth: &'static str,
    /// Whether its access tokens are bound to a DPoP key (RFC 9449).
    pub dpop: bool,
}

/// `client_secret_basic`; every grant but none.
pub const BASIC: OidcClient = OidcClient {
    id: "tokend-basic",
    secret: Some("tokend-basic-secret-5Hq2"),
    auth: "client_secret_basic",
    dpop: false,
};
/// `client_secret_post`.
pub const POST: OidcClient = OidcClient {
    id: "tokend-post",
    secret: Some("tokend-post-secret-9Xw7"),
    auth: "client_secret_post",
    dpop: false,
};
/// A public client (`none`): PKCE required; no client_credentials.
pub const PUBLIC: OidcClient = OidcClient {
    id: "tokend-public",
    secret: None,
    auth: "none",
    dpop: false,
};
/// `client_secret_jwt` (HS256 over its secret).
pub const HS: OidcClient = OidcClient {
    id: "tokend-hs",
    secret: Some("tokend-hs-secret-0123456789abcdef0123456789abcdef"),
    auth: "client_secret_jwt",
    dpop: false,
};
/// `private_key_jwt`: its keys are [`jwt_keys`] (P-256 and RSA 2048).
pub const JWT: OidcClient = OidcClient {
    id: "tokend-jwt",
    secret: None,
    auth: "private_key_jwt",
    dpop: false,
};
/// `client_secret_basic` with DPoP-bound access tokens.
pub const DPOP: OidcClient = OidcClient {
    id: "tokend-dpop",
    secret: Some("tokend-dpop-secret-3Lm8"),
    auth: "client_secret_basic",
    dpop: true,
};
/// A public client (`none`, PKCE) with DPoP-bound tokens.
pub const DPOP_PUBLIC: OidcClient = OidcClient {
    id: "tokend-dpop-public",
    secret: None,
    auth: "none",
    dpop: true,
};
/// Every client, for tests that go through them all.
pub const CLIENTS: [OidcClient; 7] = [BASIC, POST, PUBLIC, HS, JWT, DPOP, DPOP_PUBLIC];

/// The resource indicator (RFC 8707) the server knows: tokens asked for it
/// are JWTs with this audience and at most the scopes `read write`.
pub const API_RESOURCE: &str = "https://api.tokend.test";
/// The scopes a client may ask for.
pub const SCOPES: &str = "openid offline_access read write";
/// The redirect URI every client has registered; any port is accepted on it
/// (RFC 8252 §7.3). Also `http://[::1]/callback`.
pub const REDIRECT_PATH: &str = "/callback";

/// The endpoints a provider table may name besides `token_url`, each
/// written by [`OidcServer::provider_toml_with`] under its config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKey {
    /// `authorization_url` (`/auth`).
    Authorization,
    /// `device_authorization_url` (`/device/auth`).
    DeviceAuthorization,
    /// `revocation_url` (`/token/revocation`).
    Revocation,
    /// `issuer` (the server's issuer, for discovery).
    Issuer,
}

/// Settings of one server.
#[derive(Debug, Clone, Copy)]
pub struct OidcOptions {
    /// Lifetime of access tokens (and client_credentials tokens).
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens and grants.
    pub refresh_token_ttl: Duration,
}

impl Default for OidcOptions {
    fn default() -> Self {
        OidcOptions {
            access_token_ttl: Duration::from_secs(60),
            refresh_token_ttl: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A running oidc-provider.
pub struct OidcServer {
    issuer: String,
    port: u16,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    // Dropping stdin tells the server to exit, should the kill not reach it.
    _stdin: ChildStdin,
    _child: Child,
}

impl OidcServer {
    /// Starts a server with 60 s access tokens.
    pub async fn start() -> OidcServer {
        Self::start_with(OidcOptions::default()).await
    }

    /// Starts a server with `options`, and waits until it listens.
    pub async fn start_with(options: OidcOptions) -> OidcServer {
        install();
        let keys = jwt_keys();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("oidc-provider.log");
        let stderr = std::fs::File::create(&log).expect("server log");
        let keys: Vec<&str> = keys
            .iter()
            .map(|k| k.to_str().expect("utf-8 key path"))
            .collect();
        let mut child = Command::new("node")
            .arg(oidc_dir().join("server.mjs"))
            .current_dir(oidc_dir())
            .env("OIDC_PORT", "0")
            .env(
                "OIDC_ACCESS_TOKEN_TTL",
                options.access_token_ttl.as_secs().max(1).to_string(),
            )
            .env(
                "OIDC_REFRESH_TOKEN_TTL",
                options.refresh_token_ttl.as_secs().max(1).to_string(),
            )
            .env("OIDC_JWT_CLIENT_KEYS", keys.join(","))
            .env("NODE_ENV", "test")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (install Node.js 20 or later): {e}"));
        let stdin = child.stdin.take().expect("server stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("server stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let ready = match ready {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "oidc-provider did not start ({other:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        let ready: serde_json::Value =
            serde_json::from_str(&ready).unwrap_or_else(|e| panic!("ready line {ready:?}: {e}"));
        let issuer = ready["issuer"].as_str().expect("issuer").to_string();
        let port = u16::try_from(ready["port"].as_u64().expect("port")).expect("port");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str(&line) {
                    sink.lock().expect("events").push(event);
                }
            }
        });
        OidcServer {
            issuer,
            port,
            events,
            log,
            _dir: dir,
            _stdin: stdin,
            _child: child,
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The issuer's URL with `path` appended.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub fn token_url(&self) -> String {
        self.url("/token")
    }

    pub fn authorization_url(&self) -> String {
        self.url("/auth")
    }

    pub fn device_authorization_url(&self) -> String {
        self.url("/device/auth")
    }

    /// Where a user enters a device's user code (`verification_uri`).
    pub fn device_verification_url(&self) -> String {
        self.url("/device")
    }

    pub fn revocation_url(&self) -> String {
        self.url("/token/revocation")
    }

    pub fn introspection_url(&self) -> String {
        self.url("/token/introspection")
    }

    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    /// What the server wrote to stderr (warnings, crashes).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every event line so far: `{"event", "client_id", "grant_type",
    /// "dpop", "has_resource"}`, and `"error"`, `"error_description"` on
    /// the `*.error` events.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().expect("events").clone()
    }

    /// How many `grant_type` requests of `client` succeeded.
    pub fn grants(&self, client: &OidcClient, grant_type: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| {
                e["event"] == "grant.success"
                    && e["client_id"] == client.id
                    && e["grant_type"] == grant_type
            })
            .count()
    }

    /// The failed requests so far (`*.error` and `server_error` events).
    pub fn errors(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"].as_str().is_some_and(|n| n.ends_with("error")))
            .collect()
    }

    /// The failed requests of `client` so far.
    pub fn errors_of(&self, client: &OidcClient) -> Vec<serde_json::Value> {
        self.errors()
            .into_iter()
            .filter(|e| e["client_id"] == client.id)
            .collect()
    }

    /// The tokend provider table for `client`, with `token_url` and
    /// `allow_insecure_http` (plain HTTP on loopback).
    pub fn provider_toml(&self, name: &str, client: &OidcClient) -> String {
        self.provider_toml_with(name, client, &[])
    }

    /// [`OidcServer::provider_toml`] with the endpoints `extra` as well.
    pub fn provider_toml_with(
        &self,
        name: &str,
        client: &OidcClient,
        extra: &[EndpointKey],
    ) -> String {
        let mut out = format!(
            "[providers.{name}]\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_auth = \"{}\"\nallow_insecure_http = true\n",
            self.token_url(),
            client.id,
            client.auth,
        );
        if let Some(secret) = client.secret {
            out.push_str(&format!("client_secret = \"{secret}\"\n"));
        }
        for key in extra {
            let line = match key {
                EndpointKey::Authorization => {
                    format!("authorization_url = \"{}\"\n", self.authorization_url())
                }
                EndpointKey::DeviceAuthorization => format!(
                    "device_authorization_url = \"{}\"\n",
                    self.device_authorization_url()
                ),
                EndpointKey::Revocation => {
                    format!("revocation_url = \"{}\"\n", self.revocation_url())
                }
                EndpointKey::Issuer => format!("issuer = \"{}\"\n", self.issuer),
            };
            out.push_str(&line);
        }
        out
    }

    /// A token request as a client would send it, for tests that need the
    /// server's own answer (e.g. whether it still accepts a refresh token).
    /// `client` authenticates with its secret (basic or post); other methods
    /// are the caller's to add to `form`.
    pub async fn token_request(
        &self,
        client: &OidcClient,
        form: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        let mut req = http.post(self.token_url());
        match (client.auth, client.secret) {
            ("client_secret_basic", Some(secret)) => req = req.basic_auth(client.id, Some(secret)),
            ("client_secret_post", Some(secret)) => {
                fields.push(("client_id", client.id));
                fields.push(("client_secret", secret));
            }
            ("none", _) => fields.push(("client_id", client.id)),
            _ => {}
        }
        let resp = req.form(&fields).send().await.expect("token request");
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// The userinfo endpoint's answer to `access_token` (a Bearer token
    /// with the `openid` scope): its status and JSON body.
    pub async fn userinfo(&self, access_token: &str) -> (u16, serde_json::Value) {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        let resp = http
            .get(self.url("/me"))
            .bearer_auth(access_token)
            .send()
            .await
            .expect("userinfo request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// RFC 7662 introspection of `token`, asked as `client` (which must be
    /// the client the token was issued to, and confidential). Opaque tokens
    /// only: the server keeps no record of the JWTs it issues for
    /// [`API_RESOURCE`].
    pub async fn introspect(&self, client: &OidcClient, token: &str) -> serde_json::Value {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client");
        let mut fields = vec![("token", token)];
        let mut req = http.post(self.introspection_url());
        match client.auth {
            "client_secret_post" => {
                fields.push(("client_id", client.id));
                fields.push(("client_secret", client.secret.unwrap_or_default()));
            }
            _ => req = req.basic_auth(client.id, client.secret),
        }
        let resp = req.form(&fields).send().await.expect("introspection");
        assert_eq!(resp.status().as_u16(), 200, "introspection refused");
        resp.json().await.expect("introspection JSON")
    }
}

/// The tests/oidc directory of this checkout.
pub fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Runs `npm ci` in tests/oidc once per test process if its packages are
/// missing, so that `cargo test` alone works on a fresh checkout.
fn install() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let done = INSTALLED.get_or_init(|| {
        let dir = oidc_dir();
        if dir.join("node_modules/oidc-provider/package.json").exists() {
            return Ok(());
        }
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!(
                    "cannot run `npm` to install tests/oidc (install Node.js 20 or later and npm, \
                     e.g. `apt-get install nodejs npm`): {e}"
                )
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`npm ci` in tests/oidc failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = done {
        panic!("{e}");
    }
}

/// The private keys of tokend-jwt, PKCS#8 PEM files mode 0600, made once per
/// test process with `openssl genpkey`: `[P-256, RSA 2048]`.
pub fn jwt_keys() -> &'static [PathBuf; 2] {
    static KEYS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("oidc-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let make = |file: &str, args: &[&str]| {
            let path = dir.join(file);
            let out = std::process::Command::new("openssl")
                .arg("genpkey")
                .args(args)
                .arg("-out")
                .arg(&path)
                .output()
                .expect("cannot run `openssl` to make tokend-jwt's keys");
            assert!(
                out.status.success(),
                "openssl genpkey: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
            path
        };
        [
            make(
                "ec-p256.pem",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
            make(
                "rsa-2048.pem",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ),
        ]
    })
}

/// The private key of tokend-jwt on P-256 (ES256).
pub fn jwt_key_ec() -> &'static Path {
    &jwt_keys()[0]
}

/// The private key of tokend-jwt, RSA 2048 (RS256, PS256).
pub fn jwt_key_rsa() -> &'static Path {
    &jwt_keys()[1]
}

/// A PKCE pair (RFC 7636): a fresh verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let bytes: [u8; 32] = rand::random();
        let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// The authorization request URL (RFC 6749 §4.1.1 with PKCE) for `client`.
pub fn authorize_url(
    server: &OidcServer,
    client: &OidcClient,
    redirect_uri: &str,
    scope: &str,
    state: &str,
    pkce: &Pkce,
) -> String {
    let mut url = Url::parse(&server.authorization_url()).expect("authorization url");
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client.id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", state)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    url.into()
}

/// The user the login form is given (devInteractions takes any).
pub const USER: &str = "alice";

/// Drives the server's login and consent pages from `start` (an
/// authorization URL, or any page that leads to the login) as a browser
/// would: follows the redirects, submits the login form as [`USER`], then
/// the consent form, and follows on until the redirect to `stop_at`
/// (`host:port`, e.g. the CLI's loopback listener), which it returns
/// without fetching.
pub async fn log_in(browser: &Browser, start: &str, stop_at: &str) -> Url {
    let page = browser
        .follow(browser.get(start).await, 10, Some(stop_at))
        .await;
    let page = through_interactions(browser, page, Some(stop_at)).await;
    match page.location.clone() {
        Some(to) if page.is_redirect() && host_port(&to) == stop_at => to,
        _ => panic!(
            "the login did not end in a redirect to {stop_at}: {} {} {:?}\n{}",
            page.status, page.url, page.location, page.body
        ),
    }
}

/// Submits the login and consent pages until neither is shown, following
/// redirects (stopping at `stop_at`), and returns the page after them.
async fn through_interactions(browser: &Browser, mut page: Page, stop_at: Option<&str>) -> Page {
    for _ in 0..4 {
        if page.is_redirect() {
            return page;
        }
        let Some(form) = page.forms().into_iter().next() else {
            return page;
        };
        let prompt = form
            .inputs
            .iter()
            .find(|(n, _)| n == "prompt")
            .map(|(_, v)| v.clone());
        let submitted = match prompt.as_deref() {
            Some("login") => {
                browser
                    .submit(&form, &[("login", USER), ("password", "any")])
                    .await
            }
            Some("consent") => browser.submit(&form, &[]).await,
            _ => return page,
        };
        assert!(
            submitted.is_redirect(),
            "{:?} form refused: {} {}",
            prompt,
            submitted.status,
            submitted.body
        );
        page = browser.follow(submitted, 10, stop_at).await;
    }
    page
}

/// Approves a device authorization (RFC 8628 §3.3) as the user would on
/// another device: opens `verification_uri`, enters `user_code`, confirms,
/// logs in as [`USER`] and consents. Panics unless the server says the
/// sign-in succeeded.
pub async fn approve_device(browser: &Browser, server: &OidcServer, user_code: &str) {
    let page = browser.get(&server.device_verification_url()).await;
    let entered = browser
        .submit_form(&page, &[("user_code", user_code)])
        .await;
    let confirm = browser.follow(entered, 10, None).await;
    let confirmed = browser.submit_form(&confirm, &[]).await;
    let page = browser.follow(confirmed, 10, None).await;
    let page = through_interactions(browser, page, None).await;
    let page = browser.follow(page, 10, None).await;
    assert!(
        page.body.contains("Sign-in Success"),
        "the device was not approved: {} {}\n{}",
        page.status,
        page.url,
        page.body
    );
}

/// A loopback listener standing in for a CLI's redirect URI: answers one
/// request with 200 and hands back the URL it was sent.
pub struct Callback {
    port: u16,
    received: tokio::sync::oneshot::Receiver<Url>,
}

impl Callback {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn listen() -> Callback {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind callback");
        let port = listener.local_addr().expect("addr").port();
        let (tx, received) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match conn.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]).into_owned();
            let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let body = "signed in; you may close this page";
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            if let Ok(url) = Url::parse(&format!("http://127.0.0.1:{port}{target}")) {
                let _ = tx.send(url);
            }
        });
        Callback { port, received }
    }

    /// `http://127.0.0.1:PORT/callback`.
    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}{REDIRECT_PATH}", self.port)
    }

    /// `127.0.0.1:PORT`, for [`log_in`]'s `stop_at`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL the browser was sent to, once it came.
    pub async fn received(self) -> Url {
        tokio::time::timeout(Duration::from_secs(10), self.received)
            .await
            .expect("no request reached the callback")
            .expect("callback listener")
    }
}
