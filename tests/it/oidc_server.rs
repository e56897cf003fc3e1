//! tokend against a real authorization server (oidc-provider, see
//! `support::oidc`): the client_credentials grant with each client-secret
//! method, and an authorization code got by driving the server's login and
//! consent pages as a browser, exchanged, then refreshed with rotation and
//! the server's reuse detection.

use std::path::Path;
use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::oidc::{
    authorize_url, log_in, Callback, OidcClient, OidcOptions, OidcServer, Pkce, API_RESOURCE,
    BASIC, POST, PUBLIC, USER,
};
use crate::support::{wait_until, Daemon, FAST_DAEMON};

/// The refresh token tokend stored for `name` (unencrypted database).
async fn stored_refresh_token(database: &Path, name: &str) -> Option<String> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(database)
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open the database");
    let rt: Option<String> =
        sqlx::query_scalar("SELECT refresh_token FROM credentials WHERE name = ?")
            .bind(name)
            .fetch_one(&pool)
            .await
            .expect("read the refresh token");
    pool.close().await;
    rt
}

/// The JSON payload of a JWT, unverified (the server's own signature).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_each_client_secret_method() {
    let server = OidcServer::start_with(OidcOptions {
        access_token_ttl: Duration::from_secs(3),
        ..OidcOptions::default()
    })
    .await;
    for client in [BASIC, POST] {
        let config = format!(
            "{}[credentials.svc]\nprovider = \"p\"\ngrant = \"client_credentials\"\n\
             scope = \"read write\"\nparams = {{ resource = \"{API_RESOURCE}\" }}\n",
            server.provider_toml("p", &client)
        );
        let daemon = Daemon::start(FAST_DAEMON, &config).await;
        wait_until(Duration::from_secs(10), "the first token", || async {
            server.grants(&client, "client_credentials") >= 1
        })
        .await;
        let first = daemon.cli(&["get", "svc"]).await;
        let token = first.ok().stdout.trim().to_string();
        // A JWT for the resource, as RFC 8707 and RFC 9068 shape it.
        let claims = jwt_claims(&token);
        assert_eq!(claims["aud"], API_RESOURCE, "{claims}");
        assert_eq!(claims["client_id"], client.id, "{claims}");
        assert_eq!(claims["scope"], "read write", "{claims}");
        assert_eq!(claims["iss"], server.issuer(), "{claims}");
        // 3 s tokens are acquired again before they expire.
        wait_until(Duration::from_secs(10), "re-acquisition", || async {
            server.grants(&client, "client_credentials") >= 2
        })
        .await;
        let second = daemon.cli(&["get", "svc"]).await;
        assert_ne!(second.ok().stdout.trim(), token);
        let st = daemon.status("svc").await;
        assert_eq!(st["state"], "active", "{st}");
        assert!(
            server.errors_of(&client).is_empty(),
            "{:?}",
            server.errors()
        );
        let second = second.stdout.trim().to_string();
        finish(daemon, &[&token, &second, client.secret.expect("a secret")]).await;
    }
}

/// Logs in through the server's pages with `client` and PKCE, the
/// redirect going to a loopback listener as it would to `tokend login`'s;
/// returns the code, the verifier and the redirect URI.
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
    // The last hop, as the browser makes it.
    let page = browser.get(to.as_str()).await;
    assert_eq!(page.status, 200, "{page:?}");
    let got = callback.received().await;
    let param = |k: &str| {
        got.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(got.path(), "/callback", "{got}");
    assert_eq!(param("state").as_deref(), Some(state.as_str()), "{got}");
    // RFC 9207: the issuer comes with the code.
    assert_eq!(param("iss").as_deref(), Some(server.issuer()), "{got}");
    let code = param("code").unwrap_or_else(|| panic!("no code in {got}"));
    (code, pkce, redirect_uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_is_exchanged_then_refreshed_with_rotation() {
    let server = OidcServer::start().await;
    for client in [BASIC, POST, PUBLIC] {
        let (code, pkce, redirect_uri) = browser_code(&server, &client).await;
        let daemon = Daemon::start(FAST_DAEMON, &server.provider_toml("p", &client)).await;
        let run = daemon
            .cli_stdin(
                &["exchange", "me", "-p", "p", "--redirect-uri", &redirect_uri],
                Some(&format!("{code}\n{}\n", pkce.verifier)),
            )
            .await;
        run.ok();
        assert_eq!(
            server.grants(&client, "authorization_code"),
            1,
            "{:?}",
            server.errors_of(&client)
        );
        let first = daemon
            .cli(&["get", "me"])
            .await
            .ok()
            .stdout
            .trim()
            .to_string();
        let (status, me) = server.userinfo(&first).await;
        assert_eq!((status, &me["sub"]), (200, &USER.into()), "{me}");
        let st = daemon.status("me").await;
        assert_eq!(st["has_refresh_token"], true, "{st}");
        let old_rt = stored_refresh_token(&daemon.database, "me")
            .await
            .expect("a refresh token");

        // A forced refresh rotates the refresh token.
        daemon.cli(&["refresh", "me"]).await.ok();
        assert_eq!(server.grants(&client, "refresh_token"), 1);
        let new_rt = stored_refresh_token(&daemon.database, "me")
            .await
            .expect("a refresh token");
        assert_ne!(
            new_rt, old_rt,
            "{}: the refresh token did not rotate",
            client.id
        );
        let second = daemon
            .cli(&["get", "me"])
            .await
            .ok()
            .stdout
            .trim()
            .to_string();
        assert_ne!(second, first);
        assert_eq!(server.userinfo(&second).await.0, 200);
        assert!(
            server.errors_of(&client).is_empty(),
            "{:?}",
            server.errors()
        );

        // The rotated-out token is refused, and its reuse revokes the grant
        // (RFC 9700 §4.14.2): tokend's next refresh asks for a new login.
        let (status, body) = server
            .token_request(
                &client,
                &[("grant_type", "refresh_token"), ("refresh_token", &old_rt)],
            )
            .await;
        assert_eq!(
            (status, &body["error"]),
            (400, &"invalid_grant".into()),
            "{body}"
        );
        let run = daemon.cli(&["refresh", "me"]).await;
        assert_ne!(run.code, 0, "{run:?}");
        let st = daemon.status("me").await;
        assert_eq!(st["state"], "needs_reauth", "{st}");

        let mut secrets = vec![
            code.as_str(),
            pkce.verifier.as_str(),
            &first,
            &second,
            &old_rt,
            &new_rt,
        ];
        secrets.extend(client.secret);
        finish(daemon, &secrets).await;
    }
}
