//! The token-endpoint client. Turns a provider's declarative description into
//! HTTP requests (refresh and authorization-code exchange), sends them, and
//! classifies every outcome as success, needs re-authorization, provider
//! misconfigured, or transient. Knows nothing of storage or scheduling.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use crate::config::{render, ClientAuth, Encoding, ProviderConfig, RequestTemplate};
use crate::token::{fingerprint, parse_token_response, scrub, Secret, TokenSet};

/// What is being asked of the token endpoint.
#[derive(Debug, Clone)]
pub enum Grant {
    /// `grant_type=refresh_token` (RFC 6749 §6).
    Refresh {
        /// The refresh token on record.
        refresh_token: Secret,
    },
    /// `grant_type=authorization_code` (RFC 6749 §4.1.3, RFC 7636 §4.5).
    Exchange {
        /// The authorization code.
        code: Secret,
        /// The redirect URI used in the authorization request.
        redirect_uri: String,
        /// The PKCE verifier, if the authorization used PKCE.
        code_verifier: Option<Secret>,
    },
}

impl Grant {
    fn template<'a>(&self, p: &'a ProviderConfig) -> &'a RequestTemplate {
        match self {
            Grant::Refresh { .. } => &p.refresh,
            Grant::Exchange { .. } => &p.exchange,
        }
    }

    fn secrets(&self) -> Vec<&str> {
        match self {
            Grant::Refresh { refresh_token } => vec![refresh_token.expose()],
            Grant::Exchange {
                code,
                code_verifier,
                ..
            } => {
                let mut v = vec![code.expose()];
                v.extend(code_verifier.as_ref().map(Secret::expose));
                v
            }
        }
    }
}

/// How a failed token request should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The grant is dead (`invalid_grant`, digiRunner's `invalid_token`): a
    /// human must authorize again. Stop refreshing.
    Reauth,
    /// The client itself is rejected (`invalid_client`, `unauthorized_client`,
    /// `unsupported_grant_type`, `invalid_scope`): fix the provider's
    /// configuration. Pause, keeping the tokens.
    Misconfigured,
    /// Anything else: retry with backoff.
    Transient,
}

/// A failed token request, already scrubbed of secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// What to do about it.
    pub kind: FailureKind,
    /// HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// OAuth `error` code, if the body had one.
    pub error_code: Option<String>,
    /// One line for operators: what happened, scrubbed of secrets.
    pub message: String,
    /// `Retry-After` from a 429/503, if any.
    pub retry_after: Option<Duration>,
    /// The request may have reached the provider and been processed (a
    /// timeout or reset after sending): a rotating provider may already have
    /// spent the refresh token.
    pub outcome_unknown: bool,
}

/// Classifies an error response by its OAuth `error` code first, then by status.
pub fn classify(status: u16, error_code: Option<&str>, reauth_errors: &[String]) -> FailureKind {
    match error_code {
        Some(code) if reauth_errors.iter().any(|e| e == code) => FailureKind::Reauth,
        Some(
            "invalid_client" | "unauthorized_client" | "unsupported_grant_type" | "invalid_scope",
        ) => FailureKind::Misconfigured,
        _ if status == 429 || status >= 500 => FailureKind::Transient,
        _ => FailureKind::Transient,
    }
}

/// A request ready to send: useful on its own for tests and `--dry-run`s.
/// Its `Debug` prints fingerprints of the header values and the body, which
/// hold the refresh token, code or client secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedRequest {
    /// Headers in order (Authorization included).
    pub headers: Vec<(String, String)>,
    /// Content-Type of the body.
    pub content_type: &'static str,
    /// The encoded body.
    pub body: String,
}

impl fmt::Debug for PreparedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), fingerprint(value)))
            .collect();
        f.debug_struct("PreparedRequest")
            .field("headers", &headers)
            .field("content_type", &self.content_type)
            .field(
                "body",
                &format_args!("{} bytes, {}", self.body.len(), fingerprint(&self.body)),
            )
            .finish()
    }
}

/// Builds the request for `grant` from the provider's description.
pub fn prepare(p: &ProviderConfig, grant: &Grant) -> PreparedRequest {
    let template = grant.template(p);
    let lookup = |key: &str| -> Option<String> {
        match (key, grant) {
            ("refresh_token", Grant::Refresh { refresh_token }) => {
                Some(refresh_token.expose().to_string())
            }
            ("code", Grant::Exchange { code, .. }) => Some(code.expose().to_string()),
            ("redirect_uri", Grant::Exchange { redirect_uri, .. }) => Some(redirect_uri.clone()),
            ("code_verifier", Grant::Exchange { code_verifier, .. }) => {
                code_verifier.as_ref().map(|v| v.expose().to_string())
            }
            ("client_id", _) => p.client_id.clone(),
            ("client_secret", _) => p.client_secret.as_ref().map(|s| s.expose().to_string()),
            ("scope", _) => p.scope.clone(),
            _ => None,
        }
    };
    let mut fields: Vec<(String, String)> = template
        .fields
        .iter()
        .filter_map(|(k, v)| render(v, lookup).map(|v| (k.clone(), v)))
        .collect();
    let mut headers: Vec<(String, String)> = template
        .headers
        .iter()
        .filter_map(|(k, v)| render(v, lookup).map(|v| (k.clone(), v)))
        .collect();
    let id = p.client_id.as_deref();
    let secret = p.client_secret.as_ref().map(Secret::expose);
    match p.client_auth {
        ClientAuth::Basic => {
            let creds = format!("{}:{}", id.unwrap_or(""), secret.unwrap_or(""));
            headers.push((
                "Authorization".into(),
                format!("Basic {}", B64.encode(creds)),
            ));
        }
        ClientAuth::BasicUrlencoded => {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let creds = format!("{}:{}", enc(id.unwrap_or("")), enc(secret.unwrap_or("")));
            headers.push((
                "Authorization".into(),
                format!("Basic {}", B64.encode(creds)),
            ));
        }
        ClientAuth::DigiRunner => {
            headers.push((
                "Authorization".into(),
                digirunner_authorization(id.unwrap_or(""), secret),
            ));
        }
        ClientAuth::Body => {
            if !template.mentions("client_id") {
                fields.extend(id.map(|id| ("client_id".to_string(), id.to_string())));
            }
            if !template.mentions("client_secret") {
                fields.extend(secret.map(|s| ("client_secret".to_string(), s.to_string())));
            }
        }
        ClientAuth::None => {
            if !template.mentions("client_id") {
                fields.extend(id.map(|id| ("client_id".to_string(), id.to_string())));
            }
        }
    }
    let (content_type, body) = match template.encoding {
        Encoding::Form => (
            "application/x-www-form-urlencoded",
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&fields)
                .finish(),
        ),
        Encoding::Json => {
            let obj: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            ("application/json", Value::Object(obj).to_string())
        }
    };
    PreparedRequest {
        headers,
        content_type,
        body,
    }
}

/// digiRunner's client credential: `Basic Base64(id ":" Base64(password))`, or
/// `Basic Base64(id ":")` for a public PKCE client.
pub fn digirunner_authorization(client_id: &str, password: Option<&str>) -> String {
    let inner = password.map(|p| B64.encode(p)).unwrap_or_default();
    format!("Basic {}", B64.encode(format!("{client_id}:{inner}")))
}

/// A shared HTTP client for every provider.
#[derive(Clone, Debug)]
pub struct ProviderClient {
    http: reqwest::Client,
}

impl ProviderClient {
    /// Builds the client: no redirects (a token POST must not be replayed
    /// elsewhere), bounded connect time.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(ProviderClient { http })
    }

    /// Sends `grant` to the provider's token endpoint and parses the answer.
    pub async fn request(&self, p: &ProviderConfig, grant: &Grant) -> Result<TokenSet, Failure> {
        let prepared = prepare(p, grant);
        let mut secrets = grant.secrets();
        secrets.extend(p.client_secret.as_ref().map(Secret::expose));
        let transient = |message: String, outcome_unknown: bool| Failure {
            kind: FailureKind::Transient,
            status: None,
            error_code: None,
            message: scrub(&message, &secrets),
            retry_after: None,
            outcome_unknown,
        };
        let headers = header_map(&prepared).map_err(|m| Failure {
            kind: FailureKind::Misconfigured,
            ..transient(m, false)
        })?;
        let sent = self
            .http
            .post(p.token_url.clone())
            .headers(headers)
            .body(prepared.body)
            .timeout(p.request_timeout)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                let unknown = !e.is_connect();
                return Err(transient(describe_reqwest(&e, p), unknown));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
            .map(|asked| {
                let (capped, over) = cap_retry_after(asked);
                if over {
                    tracing::warn!(
                        tokend_provider = %p.name,
                        tokend_retry_after_s = asked.as_secs(),
                        "the provider asked (Retry-After) not to be called for {}s; waiting {}s at most",
                        asked.as_secs(),
                        capped.as_secs()
                    );
                }
                capped
            });
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match read_capped(&mut response, p.max_response_bytes).await {
            Ok(b) => b,
            Err(m) => {
                return Err(Failure {
                    status: Some(status),
                    retry_after,
                    ..transient(m, true)
                })
            }
        };
        let error_body = serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(|v| v.get("error").is_some());
        if (200..300).contains(&status) && error_body.is_none() {
            return parse_token_response(&body, content_type.as_deref(), &p.response).map_err(
                |e| Failure {
                    status: Some(status),
                    ..transient(e.to_string(), true)
                },
            );
        }
        let code = error_body
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let description = error_body
            .as_ref()
            .and_then(|v| v.get("error_description"))
            .and_then(Value::as_str);
        let kind = classify(status, code.as_deref(), &p.reauth_errors);
        let message = match (&code, description) {
            // Scrub before truncating: a cut-off token would no longer match.
            (Some(c), Some(d)) => format!(
                "token endpoint answered {status} {c}: {}",
                truncate(&scrub(d, &secrets), 200)
            ),
            (Some(c), None) => format!("token endpoint answered {status} {c}"),
            (None, _) => format!(
                "token endpoint answered {status} without an OAuth error ({}, {} bytes)",
                content_type.as_deref().unwrap_or("no content type"),
                body.len()
            ),
        };
        Err(Failure {
            kind,
            status: Some(status),
            error_code: code,
            message: scrub(&message, &secrets),
            retry_after,
            outcome_unknown: false,
        })
    }
}

fn header_map(prepared: &PreparedRequest) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    map.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prepared.content_type),
    );
    map.insert(ACCEPT, HeaderValue::from_static("application/json"));
    for (k, v) in &prepared.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header name `{k}` is not valid in HTTP"))?;
        let mut value = HeaderValue::from_str(v)
            .map_err(|_| format!("value of header `{k}` is not valid in HTTP"))?;
        if name == AUTHORIZATION {
            value.set_sensitive(true);
        }
        map.insert(name, value);
    }
    Ok(map)
}

fn describe_reqwest(e: &reqwest::Error, p: &ProviderConfig) -> String {
    let what = if e.is_timeout() {
        format!("no answer within {:?}", p.request_timeout)
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    // The source chain says why (refused, DNS, TLS) without any secret in it.
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        format!("{what} to {}", p.token_url)
    } else {
        format!("{what} to {}: {cause}", p.token_url)
    }
}

async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|len| len as usize > cap)
    {
        return Err(format!(
            "token endpoint response is larger than {cap} bytes"
        ));
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(format!(
                        "token endpoint response is larger than {cap} bytes"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => {
                return Err("token endpoint stopped sending its response (timeout)".into())
            }
            Err(_) => {
                return Err("token endpoint connection broke while reading the response".into())
            }
        }
    }
}

/// The longest `Retry-After` tokend honours: a provider asking for more
/// (or a broken one sending an absurd value) would otherwise stop every
/// refresh of its credentials for that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `asked` cut to [`MAX_RETRY_AFTER`], and whether it was cut.
pub fn cap_retry_after(asked: Duration) -> (Duration, bool) {
    (asked.min(MAX_RETRY_AFTER), asked > MAX_RETRY_AFTER)
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    fn provider(toml: &str) -> ProviderConfig {
        let cfg = parse_config(toml).unwrap();
        let p = cfg.providers.values().next().unwrap();
        (**p).clone()
    }

    fn refresh(rt: &str) -> Grant {
        Grant::Refresh {
            refresh_token: Secret::new(rt),
        }
    }

    fn header<'a>(r: &'a PreparedRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn prepared_request_debug_shows_no_secret() {
        let p = provider(
            "[providers.d]\ntoken_url = \"https://d.example/t\"\nclient_id = \"id\"\nclient_secret = \"the-client-secret\"\nclient_auth = \"body\"\n",
        );
        let r = prepare(&p, &refresh("the-refresh-token"));
        assert!(r.body.contains("the-refresh-token") && r.body.contains("the-client-secret"));
        let basic = prepare(
            &provider("[providers.d]\ntoken_url = \"https://d.example/t\"\nclient_id = \"id\"\nclient_secret = \"s\"\n"),
            &refresh("rt"),
        );
        let authorization = header(&basic, "authorization").unwrap().to_string();
        for (debug, secrets) in [
            (
                format!("{r:?}"),
                vec!["the-refresh-token", "the-client-secret"],
            ),
            (
                format!("{basic:?}"),
                vec![authorization.as_str(), "aWQ6cw=="],
            ),
        ] {
            for secret in secrets {
                assert!(!debug.contains(secret), "{secret} in {debug}");
            }
            assert!(debug.contains("sha256:"), "{debug}");
        }
    }

    #[test]
    fn digirunner_test_vectors_from_seed_004() {
        assert_eq!(
            digirunner_authorization("tspclient", Some("tsp123abcd")),
            "Basic dHNwY2xpZW50OmRITndNVEl6WVdKalpBPT0="
        );
        assert_eq!(
            digirunner_authorization("tspclient", None),
            "Basic dHNwY2xpZW50Og=="
        );
    }

    #[test]
    fn seed_000_basic_auth_and_exact_form_body() {
        let p = provider(
            "[providers.d]\ntoken_url = \"https://apx.didit.me/auth/v2/token\"\nclient_id = \"id\"\nclient_secret = \"se:cret\"\n",
        );
        let r = prepare(&p, &refresh("rt/1+"));
        assert_eq!(r.content_type, "application/x-www-form-urlencoded");
        assert_eq!(r.body, "grant_type=refresh_token&refresh_token=rt%2F1%2B");
        assert_eq!(header(&r, "authorization"), Some("Basic aWQ6c2U6Y3JldA=="));
    }

    #[test]
    fn basic_urlencoded_follows_rfc_6749_2_3_1() {
        let p = provider(
            "[providers.d]\ntoken_url = \"https://a.example/t\"\nclient_id = \"a b\"\nclient_secret = \"x:y\"\nclient_auth = \"basic_urlencoded\"\n",
        );
        let r = prepare(&p, &refresh("rt"));
        let expected = format!("Basic {}", B64.encode("a+b:x%3Ay"));
        assert_eq!(header(&r, "authorization"), Some(expected.as_str()));
    }

    #[test]
    fn seed_001_exchange_with_and_without_pkce() {
        let p = provider(
            "[providers.d]\ntoken_url = \"https://apx.didit.me/auth/v2/token\"\nclient_id = \"id\"\nclient_secret = \"s\"\n",
        );
        let mut grant = Grant::Exchange {
            code: Secret::new("the-code"),
            redirect_uri: "https://your-app.com/callback".into(),
            code_verifier: None,
        };
        let r = prepare(&p, &grant);
        assert_eq!(
            r.body,
            "code=the-code&grant_type=authorization_code&redirect_uri=https%3A%2F%2Fyour-app.com%2Fcallback"
        );
        if let Grant::Exchange { code_verifier, .. } = &mut grant {
            *code_verifier = Some(Secret::new("verifier"));
        }
        assert!(prepare(&p, &grant)
            .body
            .ends_with("&code_verifier=verifier"));
    }

    #[test]
    fn seed_002_json_body_with_headers_and_nothing_else() {
        let p = provider(
            r#"
            [providers.partner]
            token_url = "https://partner.example/v1/auth/token"
            client_auth = "none"
            [providers.partner.refresh]
            encoding = "json"
            fields = { refreshToken = "{refresh_token}" }
            headers = { partnerId = "42", grantType = "refresh_token" }
            "#,
        );
        let r = prepare(&p, &refresh("rt-1"));
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body, r#"{"refreshToken":"rt-1"}"#);
        assert_eq!(header(&r, "partnerId"), Some("42"));
        assert_eq!(header(&r, "grantType"), Some("refresh_token"));
        assert_eq!(header(&r, "authorization"), None);
    }

    #[test]
    fn seed_003_credentials_in_form_body() {
        let p = provider(
            "[providers.b]\ntoken_url = \"https://bakrypt.io/auth/token/\"\nclient_id = \"cid\"\nclient_secret = \"csec\"\nclient_auth = \"body\"\n",
        );
        let r = prepare(&p, &refresh("rt"));
        assert_eq!(
            r.body,
            "grant_type=refresh_token&refresh_token=rt&client_id=cid&client_secret=csec"
        );
        assert_eq!(header(&r, "authorization"), None);
    }

    #[test]
    fn public_client_sends_client_id_only_and_scope_when_configured() {
        let p = provider(
            "[providers.p]\ntoken_url = \"https://a.example/t\"\nclient_id = \"pub\"\nclient_auth = \"none\"\nscope = \"a b\"\n",
        );
        let r = prepare(&p, &refresh("rt"));
        assert_eq!(
            r.body,
            "grant_type=refresh_token&refresh_token=rt&scope=a+b&client_id=pub"
        );
    }

    #[test]
    fn classification_by_error_code_then_status() {
        let reauth = vec!["invalid_grant".to_string(), "invalid_token".to_string()];
        assert_eq!(
            classify(400, Some("invalid_grant"), &reauth),
            FailureKind::Reauth
        );
        assert_eq!(
            classify(401, Some("invalid_token"), &reauth),
            FailureKind::Reauth
        );
        for code in [
            "invalid_client",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
        ] {
            assert_eq!(
                classify(400, Some(code), &reauth),
                FailureKind::Misconfigured,
                "{code}"
            );
        }
        assert_eq!(
            classify(400, Some("invalid_request"), &reauth),
            FailureKind::Transient
        );
        assert_eq!(classify(500, None, &reauth), FailureKind::Transient);
        assert_eq!(
            classify(503, Some("temporarily_unavailable"), &reauth),
            FailureKind::Transient
        );
        assert_eq!(classify(429, None, &reauth), FailureKind::Transient);
        assert_eq!(classify(401, None, &reauth), FailureKind::Transient);
    }

    #[tokio::test]
    async fn long_echoed_refresh_token_is_scrubbed_before_truncation() {
        use axum::routing::post;
        let token = format!("eyJ{}", "a".repeat(400));
        let echoed = token.clone();
        let app = axum::Router::new().route(
            "/oauth/token",
            post(move || {
                let body = serde_json::json!({
                    "error": "invalid_token",
                    "error_description": format!("Invalid refresh token (expired): {echoed}"),
                });
                async move { (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let p = provider(&format!(
            "[providers.d]\ntoken_url = \"http://{addr}/oauth/token\"\nclient_id = \"tspclient\"\nclient_auth = \"digirunner\"\n"
        ));
        let failure = ProviderClient::new()
            .unwrap()
            .request(&p, &refresh(&token))
            .await
            .unwrap_err();
        assert_eq!(failure.kind, FailureKind::Reauth);
        assert_eq!(failure.status, Some(401));
        assert!(
            !failure.message.contains(&token[..40]),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("<redacted sha256:"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after(&u64::MAX.to_string()),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_is_capped_at_an_hour() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            cap_retry_after(Duration::from_secs(7)),
            (Duration::from_secs(7), false)
        );
        assert_eq!(cap_retry_after(hour), (hour, false));
        assert_eq!(
            cap_retry_after(hour + Duration::from_millis(1)),
            (hour, true)
        );
        assert_eq!(cap_retry_after(Duration::MAX), (hour, true));
        let far = httpdate::fmt_http_date(
            std::time::SystemTime::now() + Duration::from_secs(10 * 365 * 86_400),
        );
        assert_eq!(
            cap_retry_after(parse_retry_after(&far).unwrap()),
            (hour, true)
        );
    }

    #[test]
    fn huge_retry_after_is_capped_at_an_hour() {
        let huge = parse_retry_after("18446744073709551615").unwrap();
        assert_eq!(cap_retry_after(huge), (MAX_RETRY_AFTER, true));
        let far = httpdate::fmt_http_date(
            std::time::SystemTime::now() + Duration::from_secs(400 * 86_400),
        );
        let d = parse_retry_after(&far).unwrap();
        assert_eq!(cap_retry_after(d), (MAX_RETRY_AFTER, true));
        assert_eq!(
            cap_retry_after(Duration::from_secs(7)),
            (Duration::from_secs(7), false)
        );
    }

    #[tokio::test]
    async fn a_huge_retry_after_from_the_wire_is_capped() {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/t",
            post(|| async {
                (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "99999999999999999")],
                    "slow down",
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let p = provider(&format!(
            "[providers.d]\ntoken_url = \"http://{addr}/t\"\nclient_id = \"i\"\nclient_auth = \"none\"\n"
        ));
        let failure = ProviderClient::new()
            .unwrap()
            .request(&p, &refresh("rt"))
            .await
            .unwrap_err();
        assert_eq!(failure.kind, FailureKind::Transient);
        assert_eq!(failure.retry_after, Some(MAX_RETRY_AFTER));
    }
}
