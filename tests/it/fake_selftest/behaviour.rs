//! What does not depend on the flavour: rotation and its reuse grace,
//! token families, lifetimes, faults, latency, the admin endpoints, leak
//! scanning and shutdown.

use super::*;

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
