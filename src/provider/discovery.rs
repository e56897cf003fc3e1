//! The authorization server's metadata (RFC 8414; OpenID Connect Discovery
//! 1.0): where the document of an issuer is ([`well_known_urls`]), fetching
//! it (a GET with the provider's timeout and body cap, never following a
//! redirect), and what tokend trusts in it ([`Metadata::parse`]): the
//! document must name exactly the configured issuer (RFC 8414 §3.3), or it
//! is refused as a provider that lies; every endpoint in it must pass the
//! same transport check as a configured one.

use reqwest::header::{ACCEPT, LOCATION};
use serde_json::Value;
use url::Url;

use super::client::{read_capped, ProviderClient};
use super::request::Endpoint;

/// What tokend takes from a provider's metadata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Metadata {
    /// The issuer, equal to the configured one.
    pub(crate) issuer: String,
    /// `token_endpoint`.
    pub(crate) token_endpoint: Option<Url>,
    /// `authorization_endpoint`.
    pub(crate) authorization_endpoint: Option<Url>,
    /// `device_authorization_endpoint` (RFC 8628 §4).
    pub(crate) device_authorization_endpoint: Option<Url>,
    /// `revocation_endpoint` (RFC 7009, RFC 8414 §2).
    pub(crate) revocation_endpoint: Option<Url>,
    /// `token_endpoint_auth_methods_supported`; empty when not stated.
    pub(crate) token_endpoint_auth_methods_supported: Vec<String>,
    /// `dpop_signing_alg_values_supported` (RFC 9449 §5.1); empty when not
    /// stated.
    pub(crate) dpop_signing_alg_values_supported: Vec<String>,
    /// `code_challenge_methods_supported` (RFC 7636 via RFC 8414 §2); empty
    /// when not stated.
    pub(crate) code_challenge_methods_supported: Vec<String>,
}

/// Why an issuer's metadata could not be had or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DiscoveryError {
    /// The issuer cannot be turned into a metadata URL.
    #[error("issuer `{0}` is not a URL a metadata document can be found under; give it as https://host[/path]")]
    BadIssuer(String),
    /// No answer (connection, TLS, timeout).
    #[error("cannot fetch {url}: {reason}; tokend tries again later")]
    Unreachable {
        /// The document's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A redirect, which tokend does not follow.
    #[error("{url} answered {status} redirecting to {location}; metadata is never fetched through a redirect: set issuer to the provider's exact issuer")]
    Redirect {
        /// The document's URL.
        url: String,
        /// The status.
        status: u16,
        /// Where it pointed.
        location: String,
    },
    /// Neither document exists or the server failed.
    #[error("{url} answered {status}; check issuer (tokend tries again later)")]
    Status {
        /// The document's URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// Larger than the provider's `max_response_bytes`.
    #[error("{url}: {reason}")]
    Body {
        /// The document's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Not a JSON object.
    #[error("{url} is not a JSON metadata document: {reason}")]
    NotJson {
        /// The document's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The document names another issuer: it is not this provider's.
    #[error("the metadata at {url} names issuer `{found}`, not the configured `{expected}`; it is refused (RFC 8414 §3.3 requires them to be identical): check issuer, or the server is not the provider it claims to be")]
    WrongIssuer {
        /// The document's URL.
        url: String,
        /// What it names.
        found: String,
        /// What is configured.
        expected: String,
    },
    /// A field has the wrong type, or an endpoint fails the transport check.
    #[error("the metadata at {url} is refused: {field}: {reason}")]
    BadField {
        /// The document's URL.
        url: String,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Where the metadata of `issuer` is, in the order tried: OpenID Connect
/// Discovery's `{issuer}/.well-known/openid-configuration`, then RFC 8414
/// §3.1's `/.well-known/oauth-authorization-server` inserted between the
/// host and the issuer's path (its terminating `/` removed).
pub(crate) fn well_known_urls(issuer: &str) -> Result<[Url; 2], DiscoveryError> {
    let bad = || DiscoveryError::BadIssuer(issuer.to_string());
    let url = Url::parse(issuer).map_err(|_| bad())?;
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(bad());
    }
    let path = url.path().trim_end_matches('/').to_string();
    let mut openid = url.clone();
    openid.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut oauth = url;
    oauth.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    Ok([openid, oauth])
}

impl Metadata {
    /// Reads the document fetched from `url`, refusing one that names
    /// another issuer than `issuer` or that lists an endpoint tokens may
    /// not be sent to.
    pub(crate) fn parse(
        body: &[u8],
        url: &str,
        issuer: &str,
        allow_insecure_http: bool,
    ) -> Result<Metadata, DiscoveryError> {
        let not_json = |reason: String| DiscoveryError::NotJson {
            url: url.to_string(),
            reason,
        };
        let doc: Value = serde_json::from_slice(body).map_err(|e| not_json(e.to_string()))?;
        let Some(doc) = doc.as_object() else {
            return Err(not_json("not an object".into()));
        };
        let bad = |field: &'static str, reason: String| DiscoveryError::BadField {
            url: url.to_string(),
            field,
            reason,
        };
        match doc.get("issuer") {
            Some(Value::String(found)) if found == issuer => {}
            Some(Value::String(found)) => {
                return Err(DiscoveryError::WrongIssuer {
                    url: url.to_string(),
                    found: found.clone(),
                    expected: issuer.to_string(),
                })
            }
            _ => return Err(bad("issuer", "missing or not a string".into())),
        }
        let endpoint = |field: &'static str| -> Result<Option<Url>, DiscoveryError> {
            let Some(value) = doc.get(field) else {
                return Ok(None);
            };
            let text = value
                .as_str()
                .ok_or_else(|| bad(field, "not a string".into()))?;
            let parsed = Url::parse(text).map_err(|e| bad(field, format!("not a URL ({e})")))?;
            super::check_transport(&parsed, allow_insecure_http).map_err(|m| bad(field, m))?;
            Ok(Some(parsed))
        };
        let list = |field: &'static str| -> Result<Vec<String>, DiscoveryError> {
            match doc.get(field) {
                None => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad(field, "not an array of strings".into()))
                    })
                    .collect(),
                Some(_) => Err(bad(field, "not an array of strings".into())),
            }
        };
        Ok(Metadata {
            issuer: issuer.to_string(),
            token_endpoint: endpoint("token_endpoint")?,
            authorization_endpoint: endpoint("authorization_endpoint")?,
            device_authorization_endpoint: endpoint("device_authorization_endpoint")?,
            revocation_endpoint: endpoint("revocation_endpoint")?,
            token_endpoint_auth_methods_supported: list("token_endpoint_auth_methods_supported")?,
            dpop_signing_alg_values_supported: list("dpop_signing_alg_values_supported")?,
            code_challenge_methods_supported: list("code_challenge_methods_supported")?,
        })
    }
}

/// A metadata document as fetched: what tokend takes from it, and its text
/// (kept in the database for a restart while the issuer is down).
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    /// What tokend takes from it.
    pub(crate) metadata: Metadata,
    /// The document as served.
    pub(crate) document: String,
    /// Where it was found.
    pub(crate) url: Url,
}

impl ProviderClient {
    /// Fetches and checks the metadata of `e`'s issuer: the OpenID
    /// document, or the RFC 8414 one if that is 404.
    pub(crate) async fn discover(&self, e: &Endpoint) -> Result<Fetched, DiscoveryError> {
        let issuer = e
            .issuer
            .as_deref()
            .ok_or_else(|| DiscoveryError::BadIssuer(String::new()))?;
        let [openid, oauth] = well_known_urls(issuer)?;
        match self.fetch_document(e, issuer, openid).await {
            Err(DiscoveryError::Status { status: 404, .. }) => {
                self.fetch_document(e, issuer, oauth).await
            }
            other => other,
        }
    }

    async fn fetch_document(
        &self,
        e: &Endpoint,
        issuer: &str,
        url: Url,
    ) -> Result<Fetched, DiscoveryError> {
        let shown = url.to_string();
        let sent = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .timeout(e.request_timeout)
            .send()
            .await;
        let mut response = sent.map_err(|err| DiscoveryError::Unreachable {
            url: shown.clone(),
            reason: if err.is_timeout() {
                format!("no answer within {:?}", e.request_timeout)
            } else {
                innermost(&err)
            },
        })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(DiscoveryError::Redirect {
                url: shown,
                status: status.as_u16(),
                location: response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(no Location)")
                    .chars()
                    .take(200)
                    .collect(),
            });
        }
        if !status.is_success() {
            return Err(DiscoveryError::Status {
                url: shown,
                status: status.as_u16(),
            });
        }
        let body = read_capped(&mut response, e.max_response_bytes)
            .await
            .map_err(|reason| DiscoveryError::Body {
                url: shown.clone(),
                reason: reason.replace("token endpoint", "metadata"),
            })?;
        let metadata = Metadata::parse(&body, &shown, issuer, e.allow_insecure_http)?;
        let document = String::from_utf8(body).map_err(|_| DiscoveryError::NotJson {
            url: shown,
            reason: "not UTF-8".into(),
        })?;
        Ok(Fetched {
            metadata,
            document,
            url,
        })
    }
}

/// The innermost cause of a request error (refused, DNS, TLS).
fn innermost(err: &reqwest::Error) -> String {
    let mut cause = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_follow_oidc_and_rfc_8414_3_1() {
        let urls = |issuer: &str| well_known_urls(issuer).unwrap().map(|u| u.to_string());
        assert_eq!(
            urls("https://example.com"),
            [
                "https://example.com/.well-known/openid-configuration",
                "https://example.com/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            urls("https://example.com/issuer1"),
            [
                "https://example.com/issuer1/.well-known/openid-configuration",
                "https://example.com/.well-known/oauth-authorization-server/issuer1"
            ]
        );
        // The terminating slash goes before the well-known part is added.
        assert_eq!(
            urls("https://login.example/tenant/v2.0/"),
            [
                "https://login.example/tenant/v2.0/.well-known/openid-configuration",
                "https://login.example/.well-known/oauth-authorization-server/tenant/v2.0"
            ]
        );
        assert!(well_known_urls("mailto:x@example.com").is_err());
    }

    /// Serves `app` on loopback; the endpoint of a provider whose issuer is
    /// the server's root.
    async fn serve(app: axum::Router) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        crate::provider::request::tests::endpoint(&format!(
            "[providers.d]\nissuer = \"http://{addr}\"\nclient_id = \"i\"\nclient_auth = \"none\"\nmax_response_bytes = 2048\n"
        ))
    }

    #[tokio::test]
    async fn the_rfc_8414_document_after_a_404_and_no_redirect_or_huge_body() {
        use axum::http::StatusCode;
        use axum::routing::get;
        let issuer = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let doc = std::sync::Arc::clone(&issuer);
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(move || {
                    let issuer = doc.lock().unwrap().clone();
                    async move {
                        axum::Json(serde_json::json!({
                            "issuer": issuer,
                            "token_endpoint": format!("{issuer}/token"),
                        }))
                    }
                }),
            )
            .fallback(|| async { StatusCode::NOT_FOUND });
        let e = serve(app).await;
        *issuer.lock().unwrap() = e.issuer.clone().unwrap();
        let client = ProviderClient::new().unwrap();
        let fetched = client.discover(&e).await.unwrap();
        assert!(fetched
            .url
            .path()
            .ends_with("/.well-known/oauth-authorization-server"));
        assert_eq!(
            fetched.metadata.token_endpoint.unwrap().as_str(),
            format!("{}/token", e.issuer.as_deref().unwrap())
        );

        let redirect = axum::Router::new().fallback(|| async {
            (
                StatusCode::FOUND,
                [(
                    "location",
                    "https://elsewhere.example/.well-known/openid-configuration",
                )],
            )
        });
        let e = serve(redirect).await;
        let err = client.discover(&e).await.unwrap_err();
        assert!(
            matches!(err, DiscoveryError::Redirect { status: 302, .. }),
            "{err}"
        );

        let huge = axum::Router::new().fallback(|| async { "x".repeat(4096) });
        let e = serve(huge).await;
        let err = client.discover(&e).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::Body { .. }), "{err}");
        assert!(err.to_string().contains("larger than 2048"), "{err}");
    }

    const ISSUER: &str = "https://as.example";

    fn parse(doc: &str) -> Result<Metadata, DiscoveryError> {
        Metadata::parse(doc.as_bytes(), "https://as.example/m", ISSUER, false)
    }

    #[test]
    fn a_full_document_is_read() {
        let m = parse(
            r#"{"issuer":"https://as.example","token_endpoint":"https://as.example/token",
            "authorization_endpoint":"https://as.example/authorize",
            "device_authorization_endpoint":"https://as.example/device",
            "revocation_endpoint":"https://as.example/revoke",
            "token_endpoint_auth_methods_supported":["client_secret_basic","private_key_jwt"],
            "dpop_signing_alg_values_supported":["ES256"],
            "code_challenge_methods_supported":["S256"],
            "jwks_uri":"https://as.example/jwks","unknown":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(
            m.token_endpoint.unwrap().as_str(),
            "https://as.example/token"
        );
        assert_eq!(
            m.revocation_endpoint.unwrap().as_str(),
            "https://as.example/revoke"
        );
        assert_eq!(
            m.device_authorization_endpoint.unwrap().as_str(),
            "https://as.example/device"
        );
        assert_eq!(m.code_challenge_methods_supported, ["S256"]);
        assert_eq!(m.dpop_signing_alg_values_supported, ["ES256"]);
        assert_eq!(m.token_endpoint_auth_methods_supported.len(), 2);
    }

    #[test]
    fn the_issuer_must_be_identical() {
        for other in [
            "https://as.example/",
            "https://AS.example",
            "https://evil.example",
        ] {
            let doc = format!(r#"{{"issuer":"{other}","token_endpoint":"https://as.example/t"}}"#);
            assert!(
                matches!(parse(&doc), Err(DiscoveryError::WrongIssuer { .. })),
                "{other}"
            );
        }
        assert!(matches!(
            parse(r#"{"token_endpoint":"https://as.example/t"}"#),
            Err(DiscoveryError::BadField {
                field: "issuer",
                ..
            })
        ));
    }

    #[test]
    fn endpoints_must_be_https_and_fields_well_typed() {
        let e = parse(r#"{"issuer":"https://as.example","token_endpoint":"http://as.example/t"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("token_endpoint"), "{e}");
        // Loopback http passes, as for a configured token_url.
        assert!(parse(
            r#"{"issuer":"https://as.example","token_endpoint":"http://127.0.0.1:9/t"}"#
        )
        .is_ok());
        assert!(Metadata::parse(
            br#"{"issuer":"https://as.example","revocation_endpoint":"http://as.example/r"}"#,
            "u",
            ISSUER,
            true
        )
        .is_ok());
        for doc in [
            r#"{"issuer":"https://as.example","token_endpoint":5}"#,
            r#"{"issuer":"https://as.example","code_challenge_methods_supported":"S256"}"#,
            r#"{"issuer":"https://as.example","dpop_signing_alg_values_supported":[1]}"#,
            r#"{"issuer":"https://as.example","revocation_endpoint":"ftp://as.example/r"}"#,
        ] {
            assert!(
                matches!(parse(doc), Err(DiscoveryError::BadField { .. })),
                "{doc}"
            );
        }
        assert!(matches!(parse("[1]"), Err(DiscoveryError::NotJson { .. })));
        assert!(matches!(
            parse("<html>"),
            Err(DiscoveryError::NotJson { .. })
        ));
    }
}
