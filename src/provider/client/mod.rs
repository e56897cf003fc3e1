//! The HTTP side: sends a prepared request to the token endpoint, reads the
//! answer with a size cap, and turns it into a [`TokenSet`] or a classified,
//! scrubbed [`Failure`].

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use super::assertion::AssertionStamp;
use super::device::{parse_device_authorization, DeviceAuthorization};
use super::dpop::{self, DpopKey, Htm, Nonces, ProofFor, Stamp};
use super::request::{
    prepare_device_authorization, prepare_with_secret, Endpoint, PreparedRequest, TokenGrant,
};
use super::{classify, Failure, FailureKind};
use crate::token::{parse_token_response, scrub, token_set_of, Secret, TokenSet};

/// A shared HTTP client for every provider.
#[derive(Clone, Debug)]
pub struct ProviderClient {
    pub(super) http: reqwest::Client,
    /// Each provider's latest `DPoP-Nonce`.
    nonces: Nonces,
}

/// The secrets of one request, scrubbed from every message it produces.
struct Secrets<'a>(Vec<&'a str>);

impl Secrets<'_> {
    /// A transient failure with no response status.
    fn transient(&self, message: String, outcome_unknown: bool) -> Failure {
        Failure {
            kind: FailureKind::Transient,
            status: None,
            error_code: None,
            message: scrub(&message, &self.0),
            retry_after: None,
            outcome_unknown,
        }
    }
}

/// What came back from the token endpoint, read whole.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    content_type: Option<String>,
    /// The `DPoP-Nonce` header, if any (already kept in the client's nonces).
    dpop_nonce: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    /// A 400 `use_dpop_nonce` with a nonce to retry with (RFC 9449 §8).
    fn asks_for_nonce(&self) -> bool {
        self.status == 400
            && self.dpop_nonce.is_some()
            && serde_json::from_slice::<Value>(&self.body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(|c| c == "use_dpop_nonce"))
                .unwrap_or(false)
    }
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
        Ok(ProviderClient {
            http,
            nonces: Nonces::default(),
        })
    }

    /// Sends `grant` to the token endpoint and parses the answer.
    pub async fn request(&self, e: &Endpoint, grant: &TokenGrant) -> Result<TokenSet, Failure> {
        self.request_bound(e, grant, None).await
    }

    /// As [`ProviderClient::request`]; with a DPoP key, the request carries
    /// a proof of it (RFC 9449 §5), is sent once more with the server's
    /// nonce if it asks for one (§8), and the answer must be a DPoP token.
    /// With several client secrets, an `invalid_client` answer makes it try
    /// the next one (see [`rejects_client`]).
    pub(crate) async fn request_bound(
        &self,
        e: &Endpoint,
        grant: &TokenGrant,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenSet, Failure> {
        let Some(rotation) = &e.secret_rotation else {
            return self.attempt(e, grant, e.client_secret.as_ref(), dpop).await;
        };
        let mut last = None;
        for (index, secret) in rotation.order() {
            // Trying the same refresh token again is safe: a server checks
            // the client before the grant (RFC 6749 §5.2), so an
            // `invalid_client` answer has not spent or rotated it.
            match self.attempt(e, grant, Some(secret), dpop).await {
                Err(f) if rejects_client(&f) => last = Some(f),
                Ok(set) => {
                    if rotation.worked(index) {
                        tracing::info!(
                            tokend_provider = %e.name,
                            tokend_secret_index = index + 1,
                            tokend_secret = %secret.fingerprint(),
                            "the provider accepts client secret number {} of {} ({}); it is used from now on",
                            index + 1,
                            rotation.len(),
                            secret.fingerprint()
                        );
                    }
                    return Ok(set);
                }
                Err(f) => return Err(f),
            }
        }
        Err(last.unwrap_or_else(|| {
            Secrets(Vec::new()).transient("no client secret to try".into(), false)
        }))
    }

    /// Sends `grant` with client secret `secret` (and a proof of `dpop`):
    /// once, or twice when a DPoP server asks for its nonce. Each send is
    /// prepared anew, so a client assertion's `jti` is never sent twice.
    async fn attempt(
        &self,
        e: &Endpoint,
        grant: &TokenGrant,
        secret: Option<&Secret>,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenSet, Failure> {
        let mut nonce_retried = false;
        loop {
            let base = known_secrets(e, grant);
            let misconfigured = |message: String| Failure {
                kind: FailureKind::Misconfigured,
                ..Secrets(base.clone()).transient(message, false)
            };
            let mut prepared = prepare_with_secret(e, grant, &AssertionStamp::new(), secret)
                .map_err(|err| misconfigured(err.to_string()))?;
            let proof = match dpop {
                Some(key) => Some(self.token_proof(e, key).map_err(|err| Failure {
                    kind: FailureKind::Transient,
                    ..misconfigured(err.to_string())
                })?),
                None => None,
            };
            let assertion = prepared.client_assertion.clone();
            let mut secrets = base.clone();
            secrets.extend(assertion.as_ref().map(Secret::expose));
            secrets.extend(proof.as_deref());
            let secrets = Secrets(secrets);
            if let Some(p) = &proof {
                prepared.headers.push(("DPoP".into(), p.clone()));
            }
            let answer = self.send(e, &e.token_url, prepared, &secrets).await?;
            if dpop.is_some() && !nonce_retried && answer.asks_for_nonce() {
                // Refused before the grant was looked at: safe to resend.
                nonce_retried = true;
                continue;
            }
            let set = tokens(e, &answer, &secrets)?;
            return match dpop {
                Some(_) => dpop_bound(e, set),
                None => Ok(set),
            };
        }
    }

    /// Asks the device authorization endpoint for a device and a user code
    /// (RFC 8628 §3.1). A provider without one is a configuration problem.
    pub(crate) async fn device_authorization(
        &self,
        e: &Endpoint,
    ) -> Result<DeviceAuthorization, Failure> {
        let secrets = Secrets(e.client_secret_values());
        let Some(url) = &e.device_authorization_url else {
            return Err(Failure {
                kind: FailureKind::Misconfigured,
                ..secrets.transient(
                    format!(
                        "provider `{}` has no device_authorization_url; set it in [providers.{}]",
                        e.name, e.name
                    ),
                    false,
                )
            });
        };
        let secret = e.current_secret();
        let prepared =
            prepare_device_authorization(e, &AssertionStamp::new(), secret).map_err(|err| {
                Failure {
                    kind: FailureKind::Misconfigured,
                    ..secrets.transient(err.to_string(), false)
                }
            })?;
        let answer = self.send(e, url, prepared, &secrets).await?;
        let error_body = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .filter(|v| v.get("error").is_some());
        match error_body {
            None if answer.status == 200 => {
                parse_device_authorization(&answer.body).map_err(|m| Failure {
                    status: Some(answer.status),
                    ..secrets.transient(m, false)
                })
            }
            _ => {
                let mut f = refusal(e, &answer, error_body.as_ref(), &secrets);
                f.message =
                    f.message
                        .replacen("token endpoint", "device authorization endpoint", 1);
                Err(f)
            }
        }
    }

    /// A proof for a token request to `e`, with its latest nonce.
    fn token_proof(&self, e: &Endpoint, key: &DpopKey) -> Result<String, dpop::DpopError> {
        let htu = dpop::htu_of(&mut e.token_url.clone())?;
        let nonce = self.nonces.get(&e.name);
        let what = ProofFor {
            htm: &Htm::post(),
            htu: &htu,
            nonce: nonce.as_deref(),
            access_token: None,
        };
        dpop::proof(key, what, &Stamp::now())
    }
}

/// The tokens of a 2xx answer, or the failure any other answer means.
fn tokens(e: &Endpoint, answer: &Answer, secrets: &Secrets<'_>) -> Result<TokenSet, Failure> {
    // Parsed once: for an `error` member (a refusal even with a 2xx), then
    // for the tokens.
    let parsed = serde_json::from_slice::<Value>(&answer.body).ok();
    let refused = parsed.as_ref().is_some_and(|v| v.get("error").is_some());
    if refused || !(200..300).contains(&answer.status) {
        let error_body = parsed.as_ref().filter(|_| refused);
        return Err(refusal(e, answer, error_body, secrets));
    }
    let set = match parsed {
        Some(value) => token_set_of(value, &e.response),
        // Not JSON: the parser says so, with the content type and length.
        None => parse_token_response(&answer.body, answer.content_type.as_deref(), &e.response),
    };
    set.map_err(|err| Failure {
        status: Some(answer.status),
        ..secrets.transient(err.to_string(), true)
    })
}

/// `set` if it is a DPoP token; a provider that answers a DPoP request
/// with a bearer token ignored the proof, and its token would be usable by
/// whoever copies it, which is what `dpop = true` is there to prevent.
fn dpop_bound(e: &Endpoint, mut set: TokenSet) -> Result<TokenSet, Failure> {
    if set.token_type.eq_ignore_ascii_case(dpop::TOKEN_TYPE) {
        set.token_type = dpop::TOKEN_TYPE.to_string();
        return Ok(set);
    }
    let message = format!(
        "the provider ignored DPoP: it answered token_type `{}` to a request with a DPoP proof; the token was not stored. Enable DPoP for this client at the provider, or set dpop = false for provider {}",
        truncate(&scrub(&set.token_type, &[set.access_token.expose()]), 40),
        e.name
    );
    tracing::warn!(tokend_provider = %e.name, "{message}");
    Err(Failure {
        kind: FailureKind::Misconfigured,
        status: None,
        error_code: None,
        message,
        retry_after: None,
        outcome_unknown: false,
    })
}

impl ProviderClient {
    /// Sends the request to `url` and reads the answer whole, up to the
    /// endpoint's size cap.
    async fn send(
        &self,
        e: &Endpoint,
        url: &url::Url,
        prepared: PreparedRequest,
        secrets: &Secrets<'_>,
    ) -> Result<Answer, Failure> {
        let headers = header_map(&prepared).map_err(|m| Failure {
            kind: FailureKind::Misconfigured,
            ..secrets.transient(m, false)
        })?;
        let sent = self
            .http
            .post(url.clone())
            .headers(headers)
            .body(prepared.body)
            .timeout(e.request_timeout)
            .send()
            .await;
        let mut response = sent.map_err(|err| {
            let unknown = !err.is_connect();
            secrets.transient(describe_reqwest(&err, e, url), unknown)
        })?;
        let status = response.status().as_u16();
        let retry_after = retry_after(&response, e);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Servers rotate their nonce on any answer (RFC 9449 §8.2).
        let dpop_nonce = response
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .filter(|n| dpop::check_nonce(n).is_ok())
            .map(str::to_string);
        if let Some(n) = &dpop_nonce {
            self.nonces.set(&e.name, n);
        }
        let body = read_capped(&mut response, e.max_response_bytes)
            .await
            .map_err(|m| Failure {
                status: Some(status),
                retry_after,
                ..secrets.transient(m, true)
            })?;
        Ok(Answer {
            status,
            retry_after,
            content_type,
            dpop_nonce,
            body,
        })
    }
}

/// Every secret a request of `grant` to `e` may hold before it is signed:
/// the grant's own and all the client secrets, scrubbed from messages.
fn known_secrets<'a>(e: &'a Endpoint, grant: &'a TokenGrant) -> Vec<&'a str> {
    let mut secrets = grant.secrets();
    secrets.extend(e.client_secret_values());
    secrets
}

/// Whether `f` rejects the client itself, so that another client secret may
/// do: `invalid_client`, which RFC 6749 §5.2 answers with 400 or 401.
fn rejects_client(f: &Failure) -> bool {
    f.error_code.as_deref() == Some("invalid_client") && matches!(f.status, Some(400 | 401))
}

/// The failure an error answer (or a non-2xx one without an OAuth error) means.
fn refusal(
    e: &Endpoint,
    answer: &Answer,
    error_body: Option<&Value>,
    secrets: &Secrets<'_>,
) -> Failure {
    let status = answer.status;
    let field = |name: &str| error_body.and_then(|v| v.get(name)).and_then(Value::as_str);
    let code = field("error").map(str::to_string);
    let description = field("error_description");
    let kind = classify(code.as_deref(), &e.reauth_errors);
    let message = match (&code, description) {
        // Scrub before truncating: a cut-off token would no longer match.
        (Some(c), Some(d)) => format!(
            "token endpoint answered {status} {c}: {}",
            truncate(&scrub(d, &secrets.0), 200)
        ),
        (Some(c), None) => format!("token endpoint answered {status} {c}"),
        (None, _) => format!(
            "token endpoint answered {status} without an OAuth error ({}, {} bytes)",
            answer.content_type.as_deref().unwrap_or("no content type"),
            answer.body.len()
        ),
    };
    Failure {
        kind,
        status: Some(status),
        error_code: code,
        message: scrub(&message, &secrets.0),
        retry_after: answer.retry_after,
        outcome_unknown: false,
    }
}

/// The response's `Retry-After`, capped, with a warning when it was cut.
fn retry_after(response: &reqwest::Response, e: &Endpoint) -> Option<Duration> {
    let asked = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)?;
    let (capped, over) = cap_retry_after(asked);
    if over {
        tracing::warn!(
            tokend_provider = %e.name,
            tokend_retry_after_s = asked.as_secs(),
            "the provider asked (Retry-After) not to be called for {}s; waiting {}s at most",
            asked.as_secs(),
            capped.as_secs()
        );
    }
    Some(capped)
}

pub(super) fn header_map(prepared: &PreparedRequest) -> Result<HeaderMap, String> {
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
        if name == AUTHORIZATION || name.as_str() == "dpop" {
            value.set_sensitive(true);
        }
        map.insert(name, value);
    }
    Ok(map)
}

fn describe_reqwest(err: &reqwest::Error, e: &Endpoint, url: &url::Url) -> String {
    let what = if err.is_timeout() {
        format!("no answer within {:?}", e.request_timeout)
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    // The source chain says why (refused, DNS, TLS) without any secret in it.
    let mut cause = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        format!("{what} to {url}")
    } else {
        format!("{what} to {url}: {cause}")
    }
}

pub(super) async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, String> {
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
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `asked` cut to [`MAX_RETRY_AFTER`], and whether it was cut.
pub(crate) fn cap_retry_after(asked: Duration) -> (Duration, bool) {
    (asked.min(MAX_RETRY_AFTER), asked > MAX_RETRY_AFTER)
}

/// `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
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

pub(super) fn truncate(s: &str, max: usize) -> String {
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
mod tests;
