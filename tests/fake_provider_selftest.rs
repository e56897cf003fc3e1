//! Self-tests of the strict fake token endpoint in
//! `tests/it/support/fake_provider.rs`: every flavour accepts exactly the
//! documented request and refuses (and records) near misses, and every fault
//! does what it says. Requests are made with reqwest, independently of tokend.

#[path = "it/support/fake_provider.rs"]
mod fake_provider;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use fake_provider::{pkce_s256, ExpiresIn, FakeConfig, FakeProvider, FamilyOnReuse, Fault, Flavor};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

async fn body_json(r: Response) -> Value {
    let text = r.text().await.expect("response body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A correct Didit refresh request.
fn didit_refresh(c: &Client, p: &FakeProvider, rt: &str) -> reqwest::RequestBuilder {
    let cfg = p.config();
    c.post(p.token_url())
        .basic_auth(&cfg.client_id, cfg.client_secret.as_ref())
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
}

/// Decodes the claims of a JWT-shaped string.
fn jwt_claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not JWT-shaped: {token}");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("header b64")).unwrap();
    assert_eq!(header["typ"], "JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("payload b64")).unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn didit_refresh_rotates_and_refuses_reuse() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    assert!(p.token_url().ends_with("/auth/v2/token"));
    let c = client();
    let rt = p.issue_refresh_token();

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scope"], "openid profile email");
    assert_eq!(v["expires_in"], 3600);
    let at = v["access_token"].as_str().unwrap();
    assert!(at.starts_with("at-") && at.len() == 35, "{at}");
    let new_rt = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(new_rt, rt);
    assert!(v.get("id_token").is_none());
    let expiry = p.access_token_expiry(at).expect("tracked");
    let left = expiry.duration_since(SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
    assert_eq!(p.current_refresh_tokens(), vec![new_rt.clone()]);
    assert_eq!(p.refresh_count(), 1);

    // The old token is used now: refused, counted, not a wire-format problem.
    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    assert_eq!(p.reused_refresh_tokens(), 1);

    // An unknown token is invalid but not "reused".
    let r = didit_refresh(&c, &p, "rt-never-issued")
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    assert_eq!(p.reused_refresh_tokens(), 1);

    // The new one works; charset parameter and mixed-case media type are fine.
    let body = format!("grant_type=refresh_token&refresh_token={new_rt}");
    let r = c
        .post(p.token_url())
        .basic_auth(&p.config().client_id, p.config().client_secret.as_ref())
        .header(
            CONTENT_TYPE,
            "Application/X-WWW-Form-URLEncoded; charset=UTF-8",
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(p.refresh_count(), 2);
    assert_eq!(p.request_count(), 4);
    assert_eq!(p.request_times().len(), 4);
    assert!(p.access_token_expiry("at-unknown").is_none());
    assert_eq!(p.rejections(), Vec::<String>::new());
    p.shutdown().await;
}

#[tokio::test]
async fn didit_rejects_and_records_wire_format_problems() {
    // A secret with characters that form-urlencoding would change.
    let cfg = FakeConfig::new(Flavor::Didit).with_client("tokend test", Some("p@ss/w+rd=".into()));
    let p = FakeProvider::start(cfg).await;
    let c = client();
    let rt = p.issue_refresh_token();
    let url = p.token_url();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.as_str()),
    ];
    let mut expected_rejections = 0;

    // Wrong secret: 401 invalid_client with a Basic challenge, no echo.
    let r = c
        .post(&url)
        .basic_auth("tokend test", Some("nope"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_string();
    assert!(challenge.starts_with("Basic"), "{challenge}");
    let text = r.text().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["error"],
        "invalid_client"
    );
    assert!(!text.contains("p@ss"));
    expected_rejections += 1;

    // Missing Authorization.
    let r = c.post(&url).form(&form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    expected_rejections += 1;

    // RFC 6749-style form-urlencoded credentials: this provider wants them raw.
    let r = c
        .post(&url)
        .basic_auth("tokend+test", Some("p%40ss%2Fw%2Brd%3D"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    expected_rejections += 1;
    assert!(p.rejections().last().unwrap().contains("form-urlencoded"));

    let good = |b: reqwest::RequestBuilder| b.basic_auth("tokend test", Some("p@ss/w+rd="));

    // Extra field.
    let r = good(c.post(&url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("scope", "openid"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(r).await["error"], "invalid_request");
    expected_rejections += 1;

    // Duplicate field.
    let r = good(c.post(&url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    expected_rejections += 1;

    // Missing field.
    let r = good(c.post(&url))
        .form(&[("grant_type", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_request");
    expected_rejections += 1;

    // JSON instead of a form.
    let r = good(c.post(&url))
        .json(&json!({"grant_type": "refresh_token", "refresh_token": rt}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(r).await["error"], "invalid_request");
    expected_rejections += 1;

    // Wrong grant type.
    let r = good(c.post(&url))
        .form(&[("grant_type", "password"), ("refresh_token", rt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(r).await["error"], "unsupported_grant_type");
    expected_rejections += 1;

    // Parameters in the query string.
    let r = good(c.post(format!("{url}?grant_type=refresh_token")))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    expected_rejections += 1;

    // Malformed body.
    let r = good(c.post(&url))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("grant_type=refresh_token&&refresh_token={rt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    expected_rejections += 1;

    // Wrong method and wrong path.
    let r = good(c.get(&url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    expected_rejections += 1;
    let r = good(c.post(format!("{}/auth/token", p.base_url())))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    expected_rejections += 1;

    let rejections = p.rejections();
    assert_eq!(rejections.len(), expected_rejections, "{rejections:#?}");
    for line in &rejections {
        assert!(!line.contains(&rt) && !line.contains("p@ss"), "{line}");
    }
    // None of that consumed the token.
    assert_eq!(p.refresh_count(), 0);
    assert_eq!(p.current_refresh_tokens(), vec![rt.clone()]);
    let r = good(c.post(&url)).form(&form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The wrong path is not a token request; the rest are.
    assert_eq!(p.request_count(), expected_rejections);
}

#[tokio::test]
async fn didit_code_exchange_with_and_without_pkce() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let c = client();
    let cfg = p.config().clone();
    let redirect = "http://127.0.0.1:9999/callback";
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = pkce_s256(verifier);
    assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    let code = p.issue_code(redirect, Some(&challenge), true);
    let exchange = |fields: Vec<(&'static str, String)>| {
        c.post(p.token_url())
            .basic_auth(&cfg.client_id, cfg.client_secret.as_ref())
            .form(&fields)
            .send()
    };
    let base = |code: &str| {
        vec![
            ("code", code.to_string()),
            ("grant_type", "authorization_code".to_string()),
            ("redirect_uri", redirect.to_string()),
        ]
    };

    // Verifier missing: required because the code has a challenge.
    let r = exchange(base(&code)).await.unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_request");
    // Wrong verifier.
    let mut f = base(&code);
    f.push(("code_verifier", "x".repeat(43)));
    let r = exchange(f).await.unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    // Wrong redirect_uri.
    let mut f = base(&code);
    f[2].1 = "http://127.0.0.1:9999/other".into();
    f.push(("code_verifier", verifier.into()));
    let r = exchange(f).await.unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    assert_eq!(p.rejections().len(), 3, "{:#?}", p.rejections());

    // Correct.
    let mut f = base(&code);
    f.push(("code_verifier", verifier.into()));
    let r = exchange(f.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["scope"], "openid profile email");
    let id = jwt_claims(v["id_token"].as_str().unwrap());
    assert_eq!(id["aud"], cfg.client_id.as_str());
    let rt = v["refresh_token"].as_str().unwrap();
    assert_eq!(p.current_refresh_tokens(), vec![rt.to_string()]);
    assert_eq!(p.exchange_count(), 1);

    // Codes are single-use; a used code is invalid, not a format problem.
    let r = exchange(f).await.unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    assert_eq!(p.rejections().len(), 3);

    // Without offline access there is no refresh token.
    let code = p.issue_code(redirect, None, false);
    let r = exchange(base(&code)).await.unwrap();
    let v = body_json(r).await;
    assert!(v["id_token"].is_string());
    assert!(v.get("refresh_token").is_none(), "{v}");

    // A verifier for a code issued without PKCE is refused.
    let code = p.issue_code(redirect, None, true);
    let mut f = base(&code);
    f.push(("code_verifier", verifier.into()));
    let r = exchange(f).await.unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_request");
    assert_eq!(p.rejections().len(), 4);
    assert_eq!(p.exchange_count(), 2);
}

#[tokio::test]
async fn partner_flavor() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Partner).with_partner_id("7")).await;
    assert!(p.token_url().ends_with("/v1/auth/token"));
    let c = client();
    let rt = p.issue_refresh_token();
    let req = |body: Value| {
        c.post(p.token_url())
            .header("partnerId", "7")
            .header("grantType", "refresh_token")
            .json(&body)
    };

    let r = req(json!({"refreshToken": rt})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["expires_in"].is_u64());
    let new_rt = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(v.as_object().unwrap().len(), 4, "{v}");

    // Reuse: 400 invalid_grant with the seed's wording.
    let r = req(json!({"refreshToken": rt})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v = body_json(r).await;
    assert_eq!(v["error"], "invalid_grant");
    assert_eq!(
        v["error_description"],
        "Refresh token has expired or is invalid."
    );
    assert_eq!(p.reused_refresh_tokens(), 1);
    assert!(p.rejections().is_empty());

    // Missing refresh token: the seed's invalid_request.
    let r = req(json!({})).send().await.unwrap();
    let v = body_json(r).await;
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(v["error_description"], "Missing refresh token.");
    // Extra key, form encoding, Authorization header, missing/wrong headers.
    let r = req(json!({"refreshToken": new_rt, "grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .post(p.token_url())
        .header("partnerId", "7")
        .header("grantType", "refresh_token")
        .form(&[("refreshToken", new_rt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = req(json!({"refreshToken": new_rt}))
        .basic_auth("tokend-test", Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .post(p.token_url())
        .header("partnerId", "7")
        .json(&json!({"refreshToken": new_rt}))
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_request");
    let r = c
        .post(p.token_url())
        .header("partnerid", "8")
        .header("granttype", "refresh_token")
        .json(&json!({"refreshToken": new_rt}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(r).await["error"], "invalid_client");
    // Duplicate JSON key (serde would silently keep the last one).
    let r = c
        .post(p.token_url())
        .header("partnerId", "7")
        .header("grantType", "refresh_token")
        .header(CONTENT_TYPE, "application/json")
        .body(format!(
            r#"{{"refreshToken":"{new_rt}","refreshToken":"{new_rt}"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(p.rejections().len(), 7, "{:#?}", p.rejections());

    // Header names are case-insensitive; the token is still valid.
    let r = c
        .post(p.token_url())
        .header("PARTNERID", "7")
        .header("granttype", "refresh_token")
        .json(&json!({"refreshToken": new_rt}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn bakrypt_flavor() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Bakrypt)).await;
    assert!(p.token_url().ends_with("/auth/token/"));
    let c = client();
    let cfg = p.config().clone();
    let secret = cfg.client_secret.clone().unwrap();
    let rt = p.issue_refresh_token();
    let form = |rt: &str, secret: &str| {
        vec![
            ("client_id", cfg.client_id.clone()),
            ("client_secret", secret.to_string()),
            ("refresh_token", rt.to_string()),
            ("grant_type", "refresh_token".to_string()),
        ]
    };

    let r = c
        .post(p.token_url())
        .form(&form(&rt, &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["scope"].is_string());
    let new_rt = v["refresh_token"].as_str().unwrap().to_string();

    let r = c
        .post(p.token_url())
        .form(&form(&rt, &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    assert_eq!(p.reused_refresh_tokens(), 1);
    assert!(p.rejections().is_empty());

    // Wrong secret, Basic auth on top, missing trailing slash.
    let r = c
        .post(p.token_url())
        .form(&form(&new_rt, "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(r).await["error"], "invalid_client");
    let r = c
        .post(p.token_url())
        .basic_auth(&cfg.client_id, Some(&secret))
        .form(&form(&new_rt, &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let url = p.token_url();
    let r = c
        .post(url.trim_end_matches('/'))
        .form(&form(&new_rt, &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(p.rejections().len(), 3, "{:#?}", p.rejections());

    let r = c
        .post(p.token_url())
        .form(&form(&new_rt, &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(p.issued_secrets().contains(&secret));
}

#[tokio::test]
async fn digirunner_flavor() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::DigiRunner)).await;
    assert!(p.token_url().ends_with("/oauth/token"));
    // The seed's vector.
    let auth = "Basic dHNwY2xpZW50OmRITndNVEl6WVdKalpBPT0=";
    assert_eq!(p.config().expected_authorization().unwrap(), auth);
    let c = client();
    let rt = p.issue_refresh_token();
    jwt_claims(&rt);
    let refresh = |rt: &str, auth: &str| {
        c.post(p.token_url())
            .header(AUTHORIZATION, auth)
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)])
            .send()
    };

    let r = refresh(&rt, auth).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v = body_json(r).await;
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["node"], "executor1");
    assert_eq!(v["org_id"], "100000");
    assert_eq!(v["scope"], "2000000006");
    assert_eq!(v["jti"].as_str().unwrap().len(), 36);
    assert!(v["stime"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(v["expires_in"], 3600);
    let at = v["access_token"].as_str().unwrap();
    let claims = jwt_claims(at);
    let exp = claims["exp"].as_u64().unwrap();
    let now = unix_now();
    assert!((now + 3598..=now + 3600).contains(&exp), "{exp} vs {now}");
    assert_eq!(
        p.access_token_expiry(at),
        Some(UNIX_EPOCH + Duration::from_secs(exp))
    );
    let new_rt = v["refresh_token"].as_str().unwrap().to_string();
    jwt_claims(&new_rt);

    // A used token: 401 invalid_token echoing the token, as the real server does.
    let r = refresh(&rt, auth).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v = body_json(r).await;
    assert_eq!(v["error"], "invalid_token");
    assert_eq!(
        v["error_description"],
        format!("Invalid refresh token (expired): {rt}")
    );
    assert_eq!(p.reused_refresh_tokens(), 1);
    assert!(p.rejections().is_empty());

    // Plain Basic id:password is the classic mistake.
    let plain = format!("Basic {}", STANDARD.encode("tspclient:tsp123abcd"));
    let r = refresh(&new_rt, &plain).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(body_json(r).await["error"], "invalid_client");
    assert!(p.rejections()[0].contains("Base64(password)"));

    // Secrets for leak scans include the password and its encodings.
    let secrets = p.issued_secrets();
    for s in [
        "tsp123abcd",
        "dHNwMTIzYWJjZA==",
        "dHNwY2xpZW50OmRITndNVEl6WVdKalpBPT0=",
    ] {
        assert!(secrets.iter().any(|x| x == s), "{s} missing");
    }
    assert!(secrets.contains(&rt) && secrets.contains(&new_rt));
}

#[tokio::test]
async fn digirunner_public_flavor() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::DigiRunnerPublic)).await;
    let auth = "Basic dHNwY2xpZW50Og==";
    assert_eq!(p.config().expected_authorization().unwrap(), auth);
    let c = client();
    let rt = p.issue_refresh_token();
    let r = c
        .post(p.token_url())
        .header(AUTHORIZATION, auth)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let new_rt = body_json(r).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();

    // The confidential encoding with some password is refused.
    let r = c
        .post(p.token_url())
        .header(AUTHORIZATION, "Basic dHNwY2xpZW50OmRITndNVEl6WVdKalpBPT0=")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", new_rt.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(p.rejections().len(), 1);
}

#[tokio::test]
async fn no_rotation_keeps_the_token_and_omits_the_field() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit).with_rotate(false)).await;
    let c = client();
    let rt = p.issue_refresh_token();
    for _ in 0..3 {
        let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let v = body_json(r).await;
        assert!(v.get("refresh_token").is_none(), "{v}");
    }
    assert_eq!(p.refresh_count(), 3);
    assert_eq!(p.current_refresh_tokens(), vec![rt]);
    assert_eq!(p.reused_refresh_tokens(), 0);
}

#[tokio::test]
async fn expires_in_variants() {
    let c = client();
    for (mode, check) in [
        (ExpiresIn::Number, Some(json!(3))),
        (ExpiresIn::String, Some(json!("3"))),
        (ExpiresIn::Omitted, None),
        (ExpiresIn::OmittedJwt, None),
    ] {
        let cfg = FakeConfig::new(Flavor::Bakrypt)
            .with_ttl(Duration::from_secs(3))
            .with_expires_in(mode);
        let p = FakeProvider::start(cfg).await;
        let cfg = p.config().clone();
        let rt = p.issue_refresh_token();
        let r = c
            .post(p.token_url())
            .form(&[
                ("client_id", cfg.client_id.as_str()),
                ("client_secret", cfg.client_secret.as_deref().unwrap()),
                ("refresh_token", rt.as_str()),
                ("grant_type", "refresh_token"),
            ])
            .send()
            .await
            .unwrap();
        let v = body_json(r).await;
        assert_eq!(v.get("expires_in").cloned(), check, "{mode:?}: {v}");
        let at = v["access_token"].as_str().unwrap();
        if mode == ExpiresIn::OmittedJwt {
            let exp = jwt_claims(at)["exp"].as_u64().unwrap();
            let now = unix_now();
            assert!((now + 1..=now + 3).contains(&exp), "{exp} vs {now}");
        } else {
            assert!(at.starts_with("at-"));
        }
        assert!(p.access_token_expiry(at).is_some());
    }
}

#[tokio::test]
async fn answering_faults_leave_the_token_alone() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let c = client();
    let rt = p.issue_refresh_token();

    p.push_fault(Fault::server_error(503));
    p.push_fault(Fault::rate_limited(7));
    p.push_fault(Fault::Html(502));
    p.push_fault(Fault::MalformedJson);
    p.push_fault(Fault::Empty200);
    p.push_fault(Fault::HugeBody(1_000_000));
    p.push_fault(Fault::HugeBody(5));
    p.push_fault(Fault::oauth_error(400, "temporarily_unavailable"));

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_json(r).await["error"], "server_error");

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[RETRY_AFTER], "7");
    assert!(body_json(r).await["error"].is_string());

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("<html>"));

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.starts_with(r#"{"access_token": "at-"#), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err());

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.content_length().is_none(), "should be streamed");
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 1_000_000);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["padding"].is_string());
    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 5);

    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(r).await["error"], "temporarily_unavailable");

    // The queue is drained; the token was never consumed.
    assert_eq!(p.refresh_count(), 0);
    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(p.refresh_count(), 1);
    assert_eq!(p.request_count(), 9);
    assert!(p.rejections().is_empty());
}

#[tokio::test]
async fn connection_faults() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let c = client();
    let rt = p.issue_refresh_token();

    // Reset: no response at all, token untouched.
    p.push_fault(Fault::Reset);
    let err = didit_refresh(&c, &p, &rt).send().await.unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(p.current_refresh_tokens(), vec![rt.clone()]);

    // Hang: held, then dropped without an answer.
    p.push_fault(Fault::Hang(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let err = didit_refresh(&c, &p, &rt).send().await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300), "{err:?}");
    // A hang longer than the client's patience is a timeout.
    p.push_fault(Fault::Hang(Duration::from_secs(30)));
    let err = didit_refresh(&c, &p, &rt)
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(p.current_refresh_tokens(), vec![rt.clone()]);
    assert_eq!(p.refresh_count(), 0);

    // ProcessThenReset: the refresh happened, but the client never hears of it.
    p.push_fault(Fault::ProcessThenReset);
    didit_refresh(&c, &p, &rt).send().await.unwrap_err();
    assert_eq!(p.refresh_count(), 1);
    let current = p.current_refresh_tokens();
    assert_eq!(current.len(), 1);
    assert_ne!(current[0], rt);
    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    assert_eq!(p.reused_refresh_tokens(), 1);
    assert_eq!(p.request_count(), 5);
    assert!(p.rejections().is_empty());
}

#[tokio::test]
async fn sticky_fault_with_queue_precedence() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let c = client();
    let rt = p.issue_refresh_token();
    p.set_sticky_fault(Some(Fault::server_error(500)));
    p.push_fault(Fault::rate_limited(1));
    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..2 {
        let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    // Admin endpoints are never faulted nor counted.
    let r = c
        .post(format!("{}/admin/grant", p.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    p.set_sticky_fault(None);
    let r = didit_refresh(&c, &p, &rt).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(p.request_count(), 4);
    let times = p.request_times();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn admin_endpoints_mint_grants_and_codes() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let c = client();
    let base = p.base_url();
    let v = body_json(c.post(format!("{base}/admin/grant")).send().await.unwrap()).await;
    let rt = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(p.current_refresh_tokens(), vec![rt.clone()]);

    let r = c
        .post(format!("{base}/admin/code"))
        .json(&json!({"redirect_uri": "http://localhost/cb", "offline": false}))
        .send()
        .await
        .unwrap();
    let code = body_json(r).await["code"].as_str().unwrap().to_string();
    let cfg = p.config();
    let r = c
        .post(p.token_url())
        .basic_auth(&cfg.client_id, cfg.client_secret.as_ref())
        .form(&[
            ("code", code.as_str()),
            ("grant_type", "authorization_code"),
            ("redirect_uri", "http://localhost/cb"),
        ])
        .send()
        .await
        .unwrap();
    let v = body_json(r).await;
    assert!(v.get("refresh_token").is_none(), "{v}");
    assert!(p.issued_secrets().contains(&code));

    let r = c
        .post(format!("{base}/admin/code"))
        .json(&json!({"nope": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let v = body_json(c.post(format!("{base}/admin/revoke")).send().await.unwrap()).await;
    assert_eq!(v["revoked"], 1);
    assert_eq!(p.request_count(), 1);
    assert!(p.rejections().is_empty());
}

#[tokio::test]
async fn revoke_all_and_secrets() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let c = client();
    let a = p.issue_refresh_token();
    let b = p.issue_refresh_token();
    assert_eq!(p.current_refresh_tokens(), vec![a.clone(), b.clone()]);
    p.revoke_all();
    assert!(p.current_refresh_tokens().is_empty());
    let r = didit_refresh(&c, &p, &a).send().await.unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_grant");
    assert_eq!(p.reused_refresh_tokens(), 0);

    let secrets = p.issued_secrets();
    let cfg = p.config();
    let secret = cfg.client_secret.clone().unwrap();
    assert!(secret.starts_with("s3cret-"));
    assert!(secrets.contains(&secret));
    let basic = STANDARD.encode(format!("{}:{secret}", cfg.client_id));
    assert!(secrets.contains(&basic));
    assert!(secrets.contains(&a) && secrets.contains(&b));
    // The secret never shows in Debug output.
    assert!(!format!("{cfg:?}").contains(&secret));
}

#[tokio::test]
async fn shutdown_and_drop_close_the_port() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let addr = p.addr();
    p.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let p = FakeProvider::start(FakeConfig::new(Flavor::Partner)).await;
    let addr = p.addr();
    drop(p);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn flavor_names_round_trip() {
    for f in Flavor::ALL {
        assert_eq!(f.name().parse::<Flavor>().unwrap(), f);
    }
    assert!("nope".parse::<Flavor>().is_err());
}

#[tokio::test]
async fn reset_is_a_tcp_reset_and_raw_requests_are_checked() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let p = FakeProvider::start(FakeConfig::new(Flavor::DigiRunner)).await;
    let rt = p.issue_refresh_token();
    let body = format!("grant_type=refresh_token&refresh_token={rt}");
    let raw = |auth_lines: &str| {
        format!(
            "POST /oauth/token HTTP/1.1\r\nHost: {}\r\n{auth_lines}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            p.addr(),
            body.len()
        )
    };
    let addr = p.addr();
    let send = |req: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map(|_| out)
    };
    let auth = "Authorization: Basic dHNwY2xpZW50OmRITndNVEl6WVdKalpBPT0=\r\n";

    p.push_fault(Fault::Reset);
    let err = send(raw(auth)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");

    // Two Authorization headers are malformed, even if both are right.
    let out = send(raw(&format!("{auth}{auth}"))).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(p.rejections().len(), 1);

    // The scheme is case-insensitive; a correct raw request succeeds.
    let lower = auth.replace("Basic", "basic");
    let out = send(raw(&lower)).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(p.refresh_count(), 1);
}

#[tokio::test]
async fn find_leaks_catches_whole_and_truncated_secrets() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::DigiRunner)).await;
    let rt = p.issue_refresh_token();
    let clean = "refresh failed: 401 invalid_token (token sha256:0011aabb) client tspclient";
    assert!(p.find_leaks(clean).is_empty());
    // Every JWT shares its header segment; that alone is not a leak.
    let header = rt.split('.').next().unwrap();
    assert!(p.find_leaks(&format!("saw {header}.")).is_empty());
    // Echoed whole, or echoed and cut short (as a 200-character truncation
    // of the digiRunner error description would).
    assert_eq!(p.find_leaks(&format!("x {rt} y")).len(), 1);
    let truncated = format!("Invalid refresh token (expired): {}…", &rt[..120]);
    assert_eq!(p.find_leaks(&truncated).len(), 1);
    // Short secrets count when whole.
    assert_eq!(p.find_leaks("password=tsp123abcd").len(), 1);
    let leaks = p.find_leaks(&format!("{rt} tsp123abcd"));
    assert_eq!(leaks.len(), 2);
    assert!(leaks.iter().all(|l| !l.contains(&rt)));
}

/// Refreshes `rt` with a correct Didit request; returns the new refresh token,
/// or the OAuth error code.
async fn didit_rotate(c: &Client, p: &FakeProvider, rt: &str) -> Result<String, String> {
    let r = didit_refresh(c, p, rt).send().await.unwrap();
    let ok = r.status() == StatusCode::OK;
    let v = body_json(r).await;
    if ok {
        Ok(v["refresh_token"].as_str().expect("rotated").to_string())
    } else {
        Err(v["error"].as_str().unwrap_or("?").to_string())
    }
}

#[tokio::test]
async fn reuse_grace_accepts_a_used_token_only_within_the_window() {
    let grace = Duration::from_millis(600);
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit).with_reuse_grace(grace)).await;
    assert_eq!(p.config().reuse_grace, grace);
    let c = client();
    let rt = p.issue_refresh_token();

    let rt2 = didit_rotate(&c, &p, &rt).await.unwrap();
    // Used, but within the grace of its first use: a fresh pair again.
    let rt3 = didit_rotate(&c, &p, &rt).await.unwrap();
    assert_ne!(rt3, rt2);
    assert_ne!(rt3, rt);
    assert_eq!(p.reused_within_grace(), 1);
    assert_eq!(p.reused_refresh_tokens(), 0);
    assert_eq!(p.refresh_count(), 2);
    // Both successors are valid; the grace is counted from the first use,
    // not refreshed by the second.
    assert_eq!(p.current_refresh_tokens(), vec![rt2.clone(), rt3.clone()]);
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    assert_eq!(
        didit_rotate(&c, &p, &rt).await.unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(p.reused_within_grace(), 1);
    assert_eq!(p.reused_refresh_tokens(), 1);
    // A successor used right now has its own window.
    let rt4 = didit_rotate(&c, &p, &rt2).await.unwrap();
    didit_rotate(&c, &p, &rt2).await.unwrap();
    assert_eq!(p.reused_within_grace(), 2);
    assert_eq!(p.refresh_count(), 4);

    // A revocation closes the grace: the reuse is refused and counted.
    p.revoke_all();
    assert_eq!(
        didit_rotate(&c, &p, &rt2).await.unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(
        didit_rotate(&c, &p, &rt4).await.unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(p.reused_refresh_tokens(), 2);
    assert_eq!(p.reused_within_grace(), 2);
    assert!(p.rejections().is_empty());
}

#[tokio::test]
async fn reuse_after_the_grace_can_revoke_the_family() {
    let p = FakeProvider::start(
        FakeConfig::new(Flavor::Didit).with_family_on_reuse(FamilyOnReuse::Revoked),
    )
    .await;
    let c = client();
    let (rt, family) = p.issue_refresh_token_family();
    let (other, other_family) = p.issue_refresh_token_family();
    let rt2 = didit_rotate(&c, &p, &rt).await.unwrap();
    assert_eq!(
        didit_rotate(&c, &p, &rt).await.unwrap_err(),
        "invalid_grant"
    );
    // The successor dies with the family; other families live on.
    assert_eq!(
        didit_rotate(&c, &p, &rt2).await.unwrap_err(),
        "invalid_grant"
    );
    let alive = p.current_refresh_tokens_by_family();
    assert!(!alive.contains_key(&family));
    assert_eq!(alive.get(&other_family), Some(&other));
}

#[tokio::test]
async fn default_rotation_has_no_grace() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    assert_eq!(p.config().reuse_grace, Duration::ZERO);
    let c = client();
    let rt = p.issue_refresh_token();
    didit_rotate(&c, &p, &rt).await.unwrap();
    assert_eq!(
        didit_rotate(&c, &p, &rt).await.unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(p.reused_refresh_tokens(), 1);
    assert_eq!(p.reused_within_grace(), 0);
    assert_eq!(p.refresh_count(), 1);
}

#[tokio::test]
async fn refresh_token_families_count_their_own_refreshes() {
    let p = FakeProvider::start(
        FakeConfig::new(Flavor::Didit).with_reuse_grace(Duration::from_secs(30)),
    )
    .await;
    let c = client();
    let (a, fa) = p.issue_refresh_token_family();
    let (b, fb) = p.issue_refresh_token_family();
    assert_ne!(fa, fb);
    assert_eq!(p.family_refresh_count(fa), 0);

    // Three rotations along family A; every successor stays in the family.
    let mut rt = a.clone();
    for _ in 0..3 {
        rt = didit_rotate(&c, &p, &rt).await.unwrap();
    }
    assert_eq!(p.family_refresh_count(fa), 3);
    assert_eq!(p.family_refresh_count(fb), 0);
    // A reuse within the grace is a refresh of the same family.
    didit_rotate(&c, &p, &a).await.unwrap();
    assert_eq!(p.family_refresh_count(fa), 4);

    // Family B: one plain refresh, one processed-then-reset.
    let b2 = didit_rotate(&c, &p, &b).await.unwrap();
    p.push_fault(Fault::ProcessThenReset);
    didit_refresh(&c, &p, &b2).send().await.unwrap_err();
    assert_eq!(p.family_refresh_count(fb), 2);

    // Faulted and refused requests are not refreshes.
    p.push_fault(Fault::server_error(503));
    assert!(didit_rotate(&c, &p, &rt).await.is_err());
    assert!(didit_rotate(&c, &p, "rt-unknown").await.is_err());
    assert_eq!(p.family_refresh_count(fa), 4);

    // `issue_refresh_token` and admin grants start families of their own.
    let other = p.issue_refresh_token();
    didit_rotate(&c, &p, &other).await.unwrap();
    let v = body_json(
        c.post(format!("{}/admin/grant", p.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    didit_rotate(&c, &p, v["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(p.family_refresh_count(fa), 4);
    assert_eq!(p.family_refresh_count(fb), 2);
    let (_, fc) = p.issue_refresh_token_family();
    assert!(fc > fb + 1, "{fc} after {fb}");
    assert_eq!(p.family_refresh_count(fc), 0);
    assert_eq!(p.family_refresh_count(9_999), 0);
    assert_eq!(p.refresh_count(), 4 + 2 + 2);
    assert!(p.rejections().is_empty());
}

#[tokio::test]
async fn code_exchange_starts_a_family() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let c = client();
    let (_, before) = p.issue_refresh_token_family();
    let code = p.issue_code("https://app.example/cb", None, true);
    let cfg = p.config();
    let r = c
        .post(p.token_url())
        .basic_auth(&cfg.client_id, cfg.client_secret.as_ref())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "https://app.example/cb"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let rt = body_json(r).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    didit_rotate(&c, &p, &rt).await.unwrap();
    // The exchanged grant is family `before + 1`; `before` is untouched.
    assert_eq!(p.family_refresh_count(before), 0);
    assert_eq!(p.family_refresh_count(before + 1), 1);
    let (_, after) = p.issue_refresh_token_family();
    assert_eq!(after, before + 2);
}

#[tokio::test]
async fn latency_delays_the_answer_but_not_the_rotation() {
    let p = FakeProvider::start(
        FakeConfig::new(Flavor::Didit).with_latency(Duration::from_millis(400)),
    )
    .await;
    let c = client();
    let rt = p.issue_refresh_token();
    let started = std::time::Instant::now();
    let rt2 = didit_rotate(&c, &p, &rt).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));

    // A client that gives up before the answer has still spent its token.
    let err = didit_refresh(&c, &p, &rt2)
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(p.refresh_count(), 2);
    assert!(!p.current_refresh_tokens().contains(&rt2));
    // Faulted requests are answered at once.
    p.push_fault(Fault::server_error(503));
    let started = std::time::Instant::now();
    let r = didit_refresh(&c, &p, &rt2).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(
        didit_rotate(&c, &p, &rt2).await.unwrap_err(),
        "invalid_grant"
    );
    assert_eq!(p.reused_refresh_tokens(), 1);
}
