//! Each flavour: the documented request is accepted, near misses are refused
//! as the real provider refuses them and recorded as rejections.

use super::*;

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
