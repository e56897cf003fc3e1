//! The fake's device grant refuses what RFC 8628 forbids: a poll sooner than
//! the interval (recorded, answered `slow_down`, five seconds more for good),
//! missing client authentication, stray fields; and it plays its script.

use super::*;
use crate::support::fake_provider::{DevicePoll, DeviceSettings};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn codes(c: &Client, p: &FakeProvider) -> Value {
    let cfg = p.config();
    let r = c
        .post(p.device_authorization_url())
        .basic_auth(&cfg.client_id, cfg.client_secret.as_ref())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    body_json(r).await
}

async fn poll(c: &Client, p: &FakeProvider, device_code: &str) -> (StatusCode, Value) {
    let cfg = p.config();
    let r = c
        .post(p.token_url())
        .basic_auth(&cfg.client_id, cfg.client_secret.as_ref())
        .form(&[("grant_type", GRANT), ("device_code", device_code)])
        .send()
        .await
        .unwrap();
    (r.status(), body_json(r).await)
}

#[tokio::test]
async fn early_polls_are_refused_and_the_script_is_played() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    p.enable_device(DeviceSettings {
        script: vec![DevicePoll::Pending],
        ..DeviceSettings::default()
    });
    let c = client();
    let v = codes(&c, &p).await;
    assert_eq!(v["interval"], 1, "{v}");
    assert!(v["verification_uri_complete"]
        .as_str()
        .unwrap()
        .ends_with(v["user_code"].as_str().unwrap()));
    let dc = v["device_code"].as_str().unwrap().to_string();
    // At once: too soon after the codes were issued.
    let (status, body) = poll(&c, &p, &dc).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("slow_down"))
    );
    assert_eq!(p.rejections().len(), 1, "{:?}", p.rejections());
    // The interval is now 6 s: a poll 1.2 s later is still too soon.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, body) = poll(&c, &p, &dc).await;
    assert_eq!(body["error"], "slow_down");
    assert_eq!(p.rejections().len(), 2);
    // Without client authentication, or with a stray field: refused.
    let r = c
        .post(p.token_url())
        .form(&[("grant_type", GRANT), ("device_code", dc.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let cfg = p.config();
    let r = c
        .post(p.token_url())
        .basic_auth(&cfg.client_id, cfg.client_secret.as_ref())
        .form(&[
            ("grant_type", GRANT),
            ("device_code", dc.as_str()),
            ("scope", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(body_json(r).await["error"], "invalid_request");
    assert_eq!(p.rejections().len(), 4, "{:?}", p.rejections());
    assert_eq!(p.device_poll_times().len(), 2);
}

#[tokio::test]
async fn pending_until_approved_then_the_code_is_spent() {
    let p = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    p.enable_device(DeviceSettings::default());
    let c = client();
    let dc = codes(&c, &p).await["device_code"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(poll(&c, &p, &dc).await.1["error"], "authorization_pending");
    p.approve_device();
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let (status, body) = poll(&c, &p, &dc).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["refresh_token"].is_string());
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(poll(&c, &p, &dc).await.1["error"], "invalid_grant");
    assert!(p.rejections().is_empty(), "{:?}", p.rejections());
    // Without the device grant enabled, the endpoint is not there.
    let q = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let r = c.post(q.device_authorization_url()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
