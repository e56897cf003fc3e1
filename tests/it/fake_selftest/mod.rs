//! Self-tests of the strict fake token endpoint in `support/fake_provider`:
//! every flavour accepts exactly the documented request and refuses (and
//! records) near misses (`flavors`), and every fault, rotation rule and
//! helper does what it says (`behaviour`). Requests are made with reqwest,
//! independently of tokend.

mod behaviour;
mod device;
mod flavors;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::fake_provider::{
    pkce_s256, ExpiresIn, FakeConfig, FakeProvider, FamilyOnReuse, Fault, Flavor,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
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
