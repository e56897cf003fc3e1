//! Token revocation (RFC 7009): [`prepare_revocation`] builds the request
//! as purely as `prepare` builds a token request (tested byte for byte),
//! and [`ProviderClient::revoke`] sends it to the provider's revocation
//! endpoint with the provider's client authentication.

use reqwest::header::HeaderValue;
use serde_json::Value;

use super::assertion::{AssertionError, AssertionStamp};
use super::auth::Parts;
use super::client::{header_map, read_capped, truncate, ProviderClient};
use super::request::{authenticate, Endpoint, PreparedRequest};
use super::template::{Encoding, RequestTemplate};
use crate::token::{scrub, Secret};

/// The token to revoke, with its `token_type_hint` (RFC 7009 §2.1).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Revocable<'a> {
    /// A refresh token: revoking it ends the grant (RFC 7009 §2.1).
    RefreshToken(&'a Secret),
    /// An access token, for a credential that has no refresh token
    /// (client_credentials).
    AccessToken(&'a Secret),
}

impl Revocable<'_> {
    fn parts(&self) -> (&Secret, &'static str) {
        match self {
            Revocable::RefreshToken(t) => (t, "refresh_token"),
            Revocable::AccessToken(t) => (t, "access_token"),
        }
    }
}

/// Why a revocation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RevocationError {
    /// No revocation endpoint is configured or discovered.
    #[error("provider `{0}` has no revocation endpoint; set revocation_url under [providers.{0}] (or issuer, if its metadata lists a revocation_endpoint)")]
    NoEndpoint(String),
    /// The endpoint refused or could not be reached.
    #[error("revocation at {url} failed: {message}")]
    Failed {
        /// The revocation endpoint.
        url: String,
        /// What happened, scrubbed of the token and the client secret.
        message: String,
    },
}

/// The revocation request for `token`: `token` and `token_type_hint` in a
/// form body, and the client's authentication as at the token endpoint
/// (RFC 7009 §2.1; a public client sends its `client_id`), with client
/// secret `secret` or an assertion signed at `stamp`.
pub(crate) fn prepare_revocation(
    e: &Endpoint,
    token: Revocable<'_>,
    stamp: &AssertionStamp,
    secret: Option<&Secret>,
) -> Result<PreparedRequest, AssertionError> {
    let (token, hint) = token.parts();
    let template = RequestTemplate {
        encoding: Encoding::Form,
        fields: Vec::new(),
        headers: Vec::new(),
    };
    let parts = Parts {
        headers: Vec::new(),
        fields: vec![
            ("token".into(), token.expose().to_string()),
            ("token_type_hint".into(), hint.into()),
        ],
    };
    authenticate(e, &template, parts, stamp, secret)
}

impl ProviderClient {
    /// Revokes `token` at `e`'s revocation endpoint. A 200 is success, as
    /// RFC 7009 §2.2 answers it even for a token already invalid.
    pub(crate) async fn revoke(
        &self,
        e: &Endpoint,
        token: Revocable<'_>,
    ) -> Result<(), RevocationError> {
        let url = e
            .revocation_url
            .clone()
            .ok_or_else(|| RevocationError::NoEndpoint(e.name.clone()))?;
        let (secret, _) = token.parts();
        let mut secrets = vec![secret.expose()];
        secrets.extend(e.client_secret_values());
        let client_secret = e.current_secret();
        let fail = |message: String| RevocationError::Failed {
            url: url.to_string(),
            message: scrub(&message, &secrets),
        };
        let prepared = prepare_revocation(e, token, &AssertionStamp::new(), client_secret)
            .map_err(|err| fail(err.to_string()))?;
        let mut headers = header_map(&prepared).map_err(fail)?;
        headers.insert(
            reqwest::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        let sent = self
            .http
            .post(url.clone())
            .headers(headers)
            .body(prepared.body)
            .timeout(e.request_timeout)
            .send()
            .await;
        let mut response = sent.map_err(|err| {
            fail(if err.is_timeout() {
                format!("no answer within {:?}", e.request_timeout)
            } else {
                "cannot connect or send".into()
            })
        })?;
        let status = response.status().as_u16();
        let body = read_capped(&mut response, e.max_response_bytes)
            .await
            .unwrap_or_default();
        if status == 200 {
            return Ok(());
        }
        let error = serde_json::from_slice::<Value>(&body).ok();
        let field = |name: &str| {
            error
                .as_ref()
                .and_then(|v| v.get(name))
                .and_then(Value::as_str)
                .map(|s| truncate(&scrub(s, &secrets), 200))
        };
        Err(fail(match (field("error"), field("error_description")) {
            (Some(c), Some(d)) => format!("answered {status} {c}: {d}"),
            (Some(c), None) => format!("answered {status} {c}"),
            _ => format!("answered {status}"),
        }))
    }
}

#[cfg(test)]
mod tests {
    fn rev(e: &Endpoint, token: Revocable<'_>) -> PreparedRequest {
        let stamp = AssertionStamp::at(1_700_000_000, "jti-1");
        prepare_revocation(e, token, &stamp, e.client_secret.as_ref()).unwrap()
    }

    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    use super::*;
    use crate::provider::request::tests::endpoint;

    fn provider(auth: &str) -> Endpoint {
        endpoint(&format!(
            "[providers.r]\ntoken_url = \"https://r.example/t\"\nrevocation_url = \"https://r.example/revoke\"\nclient_id = \"a b\"\nclient_secret = \"x:y\"\nclient_auth = \"{auth}\"\n"
        ))
    }

    #[test]
    fn revocation_request_is_rfc_7009_byte_for_byte() {
        let rt = Secret::new("rt/1+");
        let r = rev(&provider("basic"), Revocable::RefreshToken(&rt));
        assert_eq!(r.content_type, "application/x-www-form-urlencoded");
        assert_eq!(r.body, "token=rt%2F1%2B&token_type_hint=refresh_token");
        assert_eq!(
            r.headers,
            vec![(
                "Authorization".to_string(),
                format!("Basic {}", B64.encode("a b:x:y"))
            )]
        );
        let at = Secret::new("at");
        let r = rev(&provider("body"), Revocable::AccessToken(&at));
        assert_eq!(
            r.body,
            "token=at&token_type_hint=access_token&client_id=a+b&client_secret=x%3Ay"
        );
        assert!(r.headers.is_empty());
        let public = endpoint(
            "[providers.p]\ntoken_url = \"https://p.example/t\"\nclient_id = \"pub\"\nclient_auth = \"none\"\n",
        );
        let r = rev(&public, Revocable::RefreshToken(&rt));
        assert_eq!(
            r.body,
            "token=rt%2F1%2B&token_type_hint=refresh_token&client_id=pub"
        );
    }

    #[tokio::test]
    async fn no_endpoint_says_which_key_to_set() {
        let e = endpoint(
            "[providers.p]\ntoken_url = \"https://p.example/t\"\nclient_id = \"pub\"\nclient_auth = \"none\"\n",
        );
        let rt = Secret::new("rt");
        let err = ProviderClient::new()
            .unwrap()
            .revoke(&e, Revocable::RefreshToken(&rt))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("revocation_url"), "{err}");
    }
}
