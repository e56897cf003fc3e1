//! Signed client authentication against a real authorization server
//! (oidc-provider, see `support::oidc`): `client_secret_jwt` and
//! `private_key_jwt` with P-256 and RSA keys for client_credentials, a
//! browser login exchanged and refreshed with `private_key_jwt`, and a
//! client secret found by rotation.

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::oidc::{
    authorize_url, jwt_key_ec, jwt_key_rsa, log_in, Callback, OidcClient, OidcServer, Pkce,
    API_RESOURCE, BASIC, HS, JWT,
};
use crate::support::{wait_until, Daemon, FAST_DAEMON};

/// `server`'s provider table for `client`, with `extra` keys.
fn provider(server: &OidcServer, client: &OidcClient, extra: &str) -> String {
    format!("{}{extra}", server.provider_toml("p", client))
}

fn declared() -> String {
    format!(
        "[credentials.svc]\nprovider = \"p\"\ngrant = \"client_credentials\"\n\
         scope = \"read\"\nparams = {{ resource = \"{API_RESOURCE}\" }}\n"
    )
}

/// Stops the daemon and asserts that none of `secrets` reached its log.
async fn finish(mut daemon: Daemon, secrets: &[&str]) {
    daemon.stop().await;
    let logs = daemon.logs();
    daemon.finish(&[]).await;
    for secret in secrets {
        assert!(secret.len() >= 8, "too short to search for: {secret:?}");
        assert!(!logs.contains(secret), "a secret in the daemon log: {logs}");
    }
}

/// The base64 lines of a PEM key file, each a secret to look for.
fn key_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_each_signed_assertion() {
    let server = OidcServer::start().await;
    let ec = format!("client_assertion_key_file = {:?}\n", jwt_key_ec());
    let rsa = format!(
        "client_assertion_key_file = {:?}\nclient_assertion_alg = \"PS256\"\n",
        jwt_key_rsa()
    );
    for (client, extra, what) in [
        (HS, String::new(), "HS256"),
        (JWT, ec, "ES256"),
        (JWT, rsa, "PS256"),
    ] {
        let before = server.grants(&client, "client_credentials");
        let config = format!("{}{}", provider(&server, &client, &extra), declared());
        let daemon = Daemon::start(FAST_DAEMON, &config).await;
        wait_until(Duration::from_secs(10), what, || async {
            server.grants(&client, "client_credentials") > before
        })
        .await;
        let token = daemon
            .cli(&["get", "svc"])
            .await
            .ok()
            .stdout
            .trim()
            .to_string();
        assert!(!token.is_empty());
        assert!(
            server.errors_of(&client).is_empty(),
            "{what}: {:?}",
            server.errors()
        );
        let mut secrets = vec![token.clone()];
        secrets.extend(client.secret.map(String::from));
        secrets.extend(key_lines(jwt_key_ec()));
        secrets.extend(key_lines(jwt_key_rsa()));
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        finish(daemon, &refs).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_is_exchanged_and_refreshed_with_private_key_jwt() {
    let server = OidcServer::start().await;
    let callback = Callback::listen().await;
    let redirect_uri = callback.redirect_uri();
    let pkce = Pkce::new();
    let start = authorize_url(&server, &JWT, &redirect_uri, "openid read", "st-1", &pkce);
    let browser = Browser::new();
    let to = log_in(&browser, &start, &callback.host_port()).await;
    assert_eq!(browser.get(to.as_str()).await.status, 200);
    let got = callback.received().await;
    let code = got
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {got}"));
    let extra = format!("client_assertion_key_file = {:?}\n", jwt_key_rsa());
    let daemon = Daemon::start(FAST_DAEMON, &provider(&server, &JWT, &extra)).await;
    daemon
        .cli_stdin(
            &["exchange", "me", "-p", "p", "--redirect-uri", &redirect_uri],
            Some(&format!("{code}\n{}\n", pkce.verifier)),
        )
        .await
        .ok();
    daemon.cli(&["refresh", "me"]).await.ok();
    daemon.cli(&["refresh", "me"]).await.ok();
    assert_eq!(server.wait_grants(&JWT, "authorization_code", 1).await, 1);
    assert_eq!(server.wait_grants(&JWT, "refresh_token", 2).await, 2);
    assert!(server.errors_of(&JWT).is_empty(), "{:?}", server.errors());
    let token = daemon
        .cli(&["get", "me"])
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(server.userinfo(&token).await.0, 200);
    let mut secrets = vec![token, code];
    secrets.extend(key_lines(jwt_key_rsa()));
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    finish(daemon, &refs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_client_secret_is_found_among_several() {
    let server = OidcServer::start().await;
    let secret = BASIC.secret.expect("a secret");
    let config = format!("{}{}", server.provider_toml("p", &BASIC), declared()).replace(
        &format!("client_secret = \"{secret}\""),
        &format!("client_secret = [\"tokend-basic-retired-secret\", \"{secret}\"]"),
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    wait_until(Duration::from_secs(10), "the token", || async {
        server.grants(&BASIC, "client_credentials") >= 1
    })
    .await;
    daemon.cli(&["refresh", "svc"]).await.ok();
    assert_eq!(server.wait_grants(&BASIC, "client_credentials", 2).await, 2);
    // One refusal of the retired secret, then the current one for good.
    let errors = server.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error"], "invalid_client", "{errors:?}");
    assert!(daemon
        .logs()
        .contains("accepts client secret number 2 of 2"));
    finish(daemon, &[secret, "tokend-basic-retired-secret"]).await;
}
