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
        let expiry = claims["exp"].as_u64().expect("exp");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let second = loop {
            let served = daemon
                .cli(&["get", "svc"])
                .await
                .ok()
                .stdout
                .trim()
                .to_string();
            if served != token {
                break served;
            }
            assert!(std::time::Instant::now() < deadline, "no re-acquisition");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(now <= expiry, "re-acquired only after expiry");
        server.wait_grants(&client, "client_credentials", 2).await;
        let st = daemon.status("svc").await;
        assert_eq!(st["state"], "active", "{st}");
        assert!(
            server.errors_of(&client).is_empty(),
            "{:?}",
            server.errors()
        );
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
            server.wait_grants(&client, "authorization_code", 1).await,
            1
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
        assert_eq!(server.wait_grants(&client, "refresh_token", 1).await, 1);
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

// The harness itself: the clients and pages that other tests build on work
// as the server documents them, driven here by hand.

/// `input` signed by `openssl dgst -sha256 -binary` with `args` (a key).
fn openssl_sign(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(out.status.success(), "openssl dgst failed");
    out.stdout
}

/// A client authentication JWT (RFC 7523 §3) for `client` at `server`'s
/// token endpoint, signed with `alg` by `openssl` with `key_args`.
fn client_assertion(
    server: &OidcServer,
    client: &OidcClient,
    alg: &str,
    key_args: &[&str],
) -> String {
    use base64::Engine as _;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = serde_json::json!({ "alg": alg, "typ": "JWT" });
    let claims = serde_json::json!({
        "iss": client.id,
        "sub": client.id,
        "aud": server.token_url(),
        "jti": format!("{:x}", rand::random::<u128>()),
        "iat": now,
        "exp": now + 60,
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = openssl_sign(key_args, input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_clients_authenticate_as_registered() {
    use crate::support::oidc::{jwt_key_rsa, DPOP, HS, JWT};
    let server = OidcServer::start().await;
    let assertion_type = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
    let hs_key = format!("key:{}", HS.secret.expect("secret"));
    let rsa_key = jwt_key_rsa().to_str().expect("path").to_string();
    for (client, alg, key_args) in [
        (
            HS,
            "HS256",
            vec!["-mac", "HMAC", "-macopt", hs_key.as_str()],
        ),
        (JWT, "RS256", vec!["-sign", rsa_key.as_str()]),
    ] {
        let assertion = client_assertion(&server, &client, alg, &key_args);
        let (status, body) = server
            .token_request(
                &client,
                &[
                    ("grant_type", "client_credentials"),
                    ("scope", "read"),
                    ("client_assertion_type", assertion_type),
                    ("client_assertion", &assertion),
                ],
            )
            .await;
        assert_eq!(status, 200, "{}: {body}", client.id);
        assert_eq!(
            server.wait_grants(&client, "client_credentials", 1).await,
            1
        );
        // The same assertion twice is a replay (RFC 7523 §3, `jti`).
        let (status, body) = server
            .token_request(
                &client,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", assertion_type),
                    ("client_assertion", &assertion),
                ],
            )
            .await;
        assert_eq!(
            (status, &body["error"]),
            (401, &"invalid_client".into()),
            "{body}"
        );
    }
    // A DPoP-bound client gets nothing without a proof (RFC 9449 §5).
    let (status, body) = server
        .token_request(&DPOP, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &"invalid_grant".into()),
        "{body}"
    );
    wait_until(
        Duration::from_secs(10),
        "the DPoP refusal event",
        || async {
            server
                .errors_of(&DPOP)
                .iter()
                .any(|e| e["error_detail"] == "DPoP proof JWT not provided")
        },
    )
    .await;
    // A public client must use PKCE.
    let browser = Browser::new();
    let mut start = url::Url::parse(&server.authorization_url()).expect("url");
    start
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", PUBLIC.id)
        .append_pair("redirect_uri", "http://127.0.0.1:9/callback")
        .append_pair("scope", "openid");
    let page = browser.get(start.as_str()).await;
    let to = page.location.clone().expect("an error redirect");
    assert!(
        to.query_pairs()
            .any(|(k, v)| k == "error" && v == "invalid_request"),
        "{to}"
    );
    // With PKCE, both loopback redirects are accepted on any port (RFC 8252
    // §7.3): the server moves on to its login page.
    for redirect in ["http://127.0.0.1:9/callback", "http://[::1]:9/callback"] {
        let url = authorize_url(&server, &PUBLIC, redirect, "openid", "s", &Pkce::new());
        let page = browser.get(&url).await;
        let to = page.location.clone().expect("a redirect");
        assert!(
            to.as_str().starts_with(&server.url("/interaction/")),
            "{redirect}: {to}"
        );
    }
    // Opaque tokens (no resource) can be introspected, and revoked.
    let (status, body) = server
        .token_request(&BASIC, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().expect("access token");
    assert_eq!(server.introspect(&BASIC, token).await["active"], true);
    let revoked = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(server.revocation_url())
        .basic_auth(BASIC.id, BASIC.secret)
        .form(&[("token", token)])
        .send()
        .await
        .expect("revocation");
    assert_eq!(revoked.status().as_u16(), 200);
    assert_eq!(server.introspect(&BASIC, token).await["active"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_code_is_approved_through_the_device_pages() {
    use crate::support::oidc::approve_device;
    let server = OidcServer::start().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let auth: serde_json::Value = http
        .post(server.device_authorization_url())
        .form(&[("client_id", PUBLIC.id), ("scope", "openid read")])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("device JSON");
    assert_eq!(
        auth["verification_uri"],
        server.device_verification_url().as_str(),
        "{auth}"
    );
    let device_code = auth["device_code"].as_str().expect("device_code");
    let user_code = auth["user_code"].as_str().expect("user_code");
    let poll = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code),
    ];
    let (status, body) = server.token_request(&PUBLIC, &poll).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &"authorization_pending".into()),
        "{body}"
    );
    approve_device(&Browser::new(), &server, user_code).await;
    let (status, body) = server.token_request(&PUBLIC, &poll).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string(), "{body}");
    let (status, me) = server
        .userinfo(body["access_token"].as_str().expect("access token"))
        .await;
    assert_eq!((status, &me["sub"]), (200, &USER.into()), "{me}");
}
