use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;

use super::*;
use crate::provider::request::tests::{endpoint, refresh};

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
    let p = endpoint(&format!(
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

/// A DPoP token endpoint on loopback: the first request without its
/// nonce gets `use_dpop_nonce`; then it answers `token_type`.
async fn dpop_server(token_type: &'static str) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/t",
        post(move |headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                let proof = headers
                    .get("dpop")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let claims = proof
                    .split('.')
                    .nth(1)
                    .and_then(|c| B64URL.decode(c).ok())
                    .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
                    .unwrap_or_default();
                log.lock().unwrap().push(claims.to_string());
                if claims["nonce"] != "n-1" {
                    let body = serde_json::json!({"error": "use_dpop_nonce"});
                    return (
                        StatusCode::BAD_REQUEST,
                        [("dpop-nonce", "n-1")],
                        axum::Json(body),
                    )
                        .into_response();
                }
                let body = serde_json::json!({
                    "access_token": "at-1", "token_type": token_type, "expires_in": 60
                });
                ([("dpop-nonce", "n-1")], axum::Json(body)).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn a_dpop_request_learns_the_nonce_once_and_needs_a_dpop_token() {
    let (addr, seen) = dpop_server("dpop").await;
    let p = endpoint(&format!(
        "[providers.d]\ntoken_url = \"http://{addr}/t?x=1\"\nclient_id = \"i\"\nclient_auth = \"none\"\ndpop = true\n"
    ));
    let key = DpopKey::generate().unwrap();
    let client = ProviderClient::new().unwrap();
    let set = client
        .request_bound(&p, &refresh("rt"), Some(&key))
        .await
        .unwrap();
    assert_eq!(set.token_type, "DPoP");
    // The nonce is kept: the next request carries it at once.
    client
        .request_bound(&p, &refresh("rt"), Some(&key))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let claims: Vec<Value> = seen
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert!(claims[0].get("nonce").is_none());
    assert_eq!(claims[1]["nonce"], "n-1");
    assert_eq!(claims[2]["nonce"], "n-1");
    assert_eq!(claims[1]["htm"], "POST");
    assert_eq!(claims[1]["htu"], format!("http://{addr}/t"));
    assert_ne!(claims[1]["jti"], claims[2]["jti"]);

    let (addr, _) = dpop_server("Bearer").await;
    let p = endpoint(&format!(
        "[providers.d]\ntoken_url = \"http://{addr}/t\"\nclient_id = \"i\"\nclient_auth = \"none\"\ndpop = true\n"
    ));
    let failure = client
        .request_bound(&p, &refresh("rt"), Some(&key))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Misconfigured);
    assert!(
        failure.message.contains("ignored DPoP"),
        "{}",
        failure.message
    );
    assert!(!failure.message.contains("at-1"), "{}", failure.message);
}

#[test]
fn retry_after_seconds_and_http_date() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    let future = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
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
    let far =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(400 * 86_400));
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
    let p = endpoint(&format!(
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

/// A token endpoint on loopback that answers 200 with `body` and
/// `content_type`.
async fn answering_200(body: &'static str, content_type: &'static str) -> Endpoint {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/t",
        post(move || async move { ([("content-type", content_type)], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    endpoint(&format!(
        "[providers.d]\ntoken_url = \"http://{addr}/t\"\nclient_id = \"i\"\nclient_auth = \"none\"\n"
    ))
}

#[tokio::test]
async fn a_200_answer_is_tokens_unless_it_holds_an_error_or_is_not_json() {
    let client = ProviderClient::new().unwrap();
    let tokens = answering_200(
        r#"{"access_token":"at-1","refresh_token":"rt-2","expires_in":60,"id_token":"idt"}"#,
        "application/json",
    )
    .await;
    let set = client.request(&tokens, &refresh("rt-1")).await.unwrap();
    assert_eq!(set.access_token.expose(), "at-1");
    assert_eq!(set.refresh_token.as_ref().map(Secret::expose), Some("rt-2"));
    assert_eq!(set.expires_in, Some(60));
    assert_eq!(set.extra["id_token"], "idt");

    // An `error` member makes a 200 a refusal, classified by its code.
    let refused = answering_200(
        r#"{"error":"invalid_grant","error_description":"spent"}"#,
        "application/json",
    )
    .await;
    let f = client
        .request(&refused, &refresh("rt-1"))
        .await
        .unwrap_err();
    assert_eq!(f.kind, FailureKind::Reauth);
    assert_eq!(f.error_code.as_deref(), Some("invalid_grant"));
    assert_eq!(f.status, Some(200));

    // Not JSON: transient, the provider may have rotated the token.
    let html = answering_200("<html>maintenance</html>", "text/html").await;
    let f = client.request(&html, &refresh("rt-1")).await.unwrap_err();
    assert_eq!(f.kind, FailureKind::Transient);
    assert!(f.outcome_unknown);
    assert!(f.message.contains("text/html"), "{}", f.message);
}
