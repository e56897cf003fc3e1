//! DPoP against a real authorization server (oidc-provider, see
//! `support::oidc`): client_credentials tokens bound to the credential's
//! key (`cnf.jkt`), and a public client's login exchanged, refreshed across
//! a restart (its refresh token is bound to the key, RFC 9449 §5) and used
//! at the server's userinfo endpoint with a proof from `tokend get --dpop`.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::Digest as _;

use crate::support::browser::Browser;
use crate::support::oidc::{
    authorize_url, log_in, Callback, OidcClient, OidcServer, Pkce, API_RESOURCE, DPOP, DPOP_PUBLIC,
};
use crate::support::{wait_until, Daemon, Run, FAST_DAEMON};

/// The JSON of a JWT's part `i` (0 header, 1 claims), unverified.
fn jwt_part(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

/// The RFC 7638 thumbprint of the P-256 key in a proof's header.
fn proof_jkt(proof: &str) -> String {
    let jwk = &jwt_part(proof, 0)["jwk"];
    assert!(jwk.get("d").is_none(), "a private key in the proof: {jwk}");
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// The token and proof of `tokend get NAME --dpop METHOD URL`.
async fn dpop_get(daemon: &Daemon, name: &str, method: &str, url: &str) -> (String, String) {
    let run: Run = daemon.cli(&["get", name, "--dpop", method, url]).await;
    let mut lines = run.ok().stdout.lines();
    let token = lines
        .next()
        .and_then(|l| l.strip_prefix("Authorization: DPoP "));
    let proof = lines.next().and_then(|l| l.strip_prefix("DPoP: "));
    match (token, proof) {
        (Some(t), Some(p)) => (t.to_string(), p.to_string()),
        _ => panic!("not two DPoP header lines: {run:?}"),
    }
}

/// GET `url` with a DPoP token and proof; the status.
async fn get_with_proof(url: &str, token: &str, proof: &str) -> u16 {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = http
        .get(url)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
        .expect("resource request");
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_are_bound_to_the_credentials_key() {
    let server = OidcServer::start().await;
    let config = format!(
        "{}dpop = true\n[credentials.svc]\nprovider = \"p\"\ngrant = \"client_credentials\"\n\
         scope = \"read write\"\nparams = {{ resource = \"{API_RESOURCE}\" }}\n",
        server.provider_toml("p", &DPOP)
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    wait_until(Duration::from_secs(10), "the first token", || async {
        server.grants(&DPOP, "client_credentials") >= 1
    })
    .await;
    let (token, proof) = dpop_get(&daemon, "svc", "GET", &format!("{API_RESOURCE}/x")).await;
    let claims = jwt_part(&token, 1);
    assert_eq!(claims["aud"], API_RESOURCE, "{claims}");
    assert_eq!(claims["cnf"]["jkt"], proof_jkt(&proof).as_str(), "{claims}");
    let st = daemon.status("svc").await;
    assert_eq!(st["token_type"], "DPoP", "{st}");
    let events = server.events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "grant.success" && e["dpop"] == true),
        "{events:?}"
    );
    assert!(server.errors_of(&DPOP).is_empty(), "{:?}", server.errors());
    let mut daemon = daemon;
    daemon.stop().await;
    let logs = daemon.logs();
    for secret in [token.as_str(), &proof, DPOP.secret.unwrap()] {
        assert!(!logs.contains(secret), "a secret in the log");
    }
    daemon.finish(&[]).await;
}

/// A login of `client` through the server's pages, with PKCE; the code,
/// the verifier and the redirect URI.
async fn browser_code(server: &OidcServer, client: &OidcClient) -> (String, Pkce, String) {
    let callback = Callback::listen().await;
    let redirect_uri = callback.redirect_uri();
    let pkce = Pkce::new();
    let state = format!("state-{}", rand::random::<u64>());
    let start = authorize_url(
        server,
        client,
        &redirect_uri,
        "openid read write",
        &state,
        &pkce,
    );
    let browser = Browser::new();
    let to = log_in(&browser, &start, &callback.host_port()).await;
    let page = browser.get(to.as_str()).await;
    assert_eq!(page.status, 200, "{page:?}");
    let got = callback.received().await;
    let code = got
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {got}"));
    (code, pkce, redirect_uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_clients_login_stays_bound_to_its_key_across_restarts() {
    let server = OidcServer::start().await;
    let (code, pkce, redirect_uri) = browser_code(&server, &DPOP_PUBLIC).await;
    let config = format!("{}dpop = true\n", server.provider_toml("p", &DPOP_PUBLIC));
    let mut daemon = Daemon::start(FAST_DAEMON, &config).await;
    daemon
        .cli_stdin(
            &["exchange", "me", "-p", "p", "--redirect-uri", &redirect_uri],
            Some(&format!("{code}\n{}\n", pkce.verifier)),
        )
        .await
        .ok();
    let me = server.url("/me");
    let (first, proof) = dpop_get(&daemon, "me", "GET", &me).await;
    let jkt = proof_jkt(&proof);
    // The server's own resource check: a DPoP token with a proof for it.
    assert_eq!(get_with_proof(&me, &first, &proof).await, 200);
    // A proof for another URL does not pass.
    let (_, elsewhere) = dpop_get(&daemon, "me", "GET", &server.url("/other")).await;
    assert_eq!(get_with_proof(&me, &first, &elsewhere).await, 401);

    // The refresh token is bound to the key: refreshing after a restart
    // works only because the same key is used.
    daemon.stop().await;
    daemon.spawn().await;
    daemon.cli(&["refresh", "me"]).await.ok();
    assert_eq!(
        server.wait_grants(&DPOP_PUBLIC, "refresh_token", 1).await,
        1
    );
    let (second, proof2) = dpop_get(&daemon, "me", "GET", &me).await;
    assert_ne!(second, first);
    assert_eq!(proof_jkt(&proof2), jkt);
    assert_eq!(get_with_proof(&me, &second, &proof2).await, 200);
    let (status, body) = server.userinfo(&second).await;
    assert_ne!(status, 200, "a DPoP token used as a bearer token: {body}");
    assert!(
        server.errors_of(&DPOP_PUBLIC).is_empty(),
        "{:?}",
        server.errors()
    );
    daemon.stop().await;
    let logs = daemon.logs();
    for secret in [&code, &pkce.verifier, &first, &second, &proof, &proof2] {
        assert!(!logs.contains(secret.as_str()), "a secret in the log");
    }
    daemon.finish(&[]).await;
}
