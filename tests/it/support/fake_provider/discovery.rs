//! The fake's authorization server metadata: both well-known documents
//! (OpenID Connect Discovery's `{issuer}/.well-known/openid-configuration`
//! and RFC 8414's `/.well-known/oauth-authorization-server{path}`), with
//! switches for what a broken or lying server does: 404, 500, a wrong
//! issuer, plain-http endpoints. A metadata request must be a GET without a
//! query string or body; anything else is refused and recorded.

use super::*;

/// What the metadata documents answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryMode {
    /// The document, truthfully.
    #[default]
    Normal,
    /// 404 at both paths.
    NotFound,
    /// 500 at both paths.
    ServerError,
    /// A document naming another issuer.
    WrongIssuer,
    /// A document whose endpoints are plain http to a non-loopback host.
    InsecureUrls,
}

/// The metadata the fake serves.
#[derive(Debug, Default)]
pub(super) struct DiscoveryState {
    pub(super) mode: DiscoveryMode,
    /// Serve only RFC 8414's document (the OpenID path answers 404).
    pub(super) oauth_only: bool,
    /// The issuer's path (`""` or `/tenant`).
    pub(super) issuer_path: String,
    /// `token_endpoint` to state instead of the fake's own.
    pub(super) token_endpoint: Option<String>,
    /// Paths of the metadata requests seen, in order.
    pub(super) requests: Vec<String>,
}

impl Inner {
    /// The issuer: `http://127.0.0.1:PORT` and the configured path.
    pub(super) fn issuer(&self) -> String {
        format!("http://{}{}", self.addr, self.lock().discovery.issuer_path)
    }

    /// Answers a metadata request, or `None` if `parts` is not one.
    pub(super) fn discovery_document(&self, parts: &Parts) -> Option<Response<RespBody>> {
        let path = parts.uri.path();
        let (issuer_path, mode, oauth_only, token_endpoint) = {
            let st = self.lock();
            let d = &st.discovery;
            (
                d.issuer_path.clone(),
                d.mode,
                d.oauth_only,
                d.token_endpoint.clone(),
            )
        };
        let openid = format!("{issuer_path}/.well-known/openid-configuration");
        let oauth = format!("/.well-known/oauth-authorization-server{issuer_path}");
        if path != openid && path != oauth {
            return None;
        }
        self.lock().discovery.requests.push(path.to_string());
        let refuse = |problem: &str| {
            self.lock()
                .rejections
                .push(format!("[discovery] {} {path}: {problem}", parts.method));
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request"}),
            )
        };
        if parts.method != Method::GET {
            return Some(refuse("metadata is fetched with GET"));
        }
        if parts.uri.query().is_some() {
            return Some(refuse("a metadata request has no query string"));
        }
        if parts.headers.contains_key(header::AUTHORIZATION) {
            return Some(refuse("a metadata request carries no credentials"));
        }
        let not_found = || json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
        if path == openid && oauth_only {
            return Some(not_found());
        }
        let base = format!("http://{}", self.addr);
        let issuer = format!("{base}{issuer_path}");
        let token =
            token_endpoint.unwrap_or_else(|| format!("{base}{}", self.cfg.flavor.token_path()));
        let doc = |issuer: &str, host: &str, token: &str| {
            json!({
                "issuer": issuer,
                "token_endpoint": token,
                "revocation_endpoint": format!("{host}{REVOKE_PATH}"),
                "authorization_endpoint": format!("{host}/authorize"),
                "token_endpoint_auth_methods_supported": [self.auth_method_name()],
                "revocation_endpoint_auth_methods_supported": [self.auth_method_name()],
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
                "code_challenge_methods_supported": ["S256"],
                "response_types_supported": ["code"],
            })
        };
        Some(match mode {
            DiscoveryMode::Normal => json_response(StatusCode::OK, &doc(&issuer, &base, &token)),
            DiscoveryMode::NotFound => not_found(),
            DiscoveryMode::ServerError => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "server_error"}),
            ),
            DiscoveryMode::WrongIssuer => {
                json_response(StatusCode::OK, &doc("https://evil.example", &base, &token))
            }
            DiscoveryMode::InsecureUrls => json_response(
                StatusCode::OK,
                &doc(&issuer, "http://as.example", "http://as.example/token"),
            ),
        })
    }

    fn auth_method_name(&self) -> &'static str {
        match self.cfg.flavor {
            Flavor::Bakrypt => "client_secret_post",
            Flavor::Partner | Flavor::DigiRunnerPublic => "none",
            Flavor::Didit | Flavor::DigiRunner => "client_secret_basic",
        }
    }
}

impl FakeProvider {
    /// The issuer the metadata names: `http://127.0.0.1:PORT[/path]`.
    pub fn issuer(&self) -> String {
        self.inner.issuer()
    }

    /// What the metadata documents answer from now on.
    pub fn set_discovery_mode(&self, mode: DiscoveryMode) {
        self.inner.lock().discovery.mode = mode;
    }

    /// Serve only RFC 8414's document; the OpenID one answers 404.
    pub fn serve_oauth_metadata_only(&self, only: bool) {
        self.inner.lock().discovery.oauth_only = only;
    }

    /// Gives the issuer a path (`/tenant`), moving both documents.
    pub fn set_issuer_path(&self, path: &str) {
        self.inner.lock().discovery.issuer_path = path.to_string();
    }

    /// States `url` as the token endpoint instead of the fake's own.
    pub fn set_discovered_token_endpoint(&self, url: Option<String>) {
        self.inner.lock().discovery.token_endpoint = url;
    }

    /// The paths of the metadata requests seen so far.
    pub fn discovery_requests(&self) -> Vec<String> {
        self.inner.lock().discovery.requests.clone()
    }
}
