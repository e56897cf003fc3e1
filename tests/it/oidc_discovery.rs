//! Discovery and revocation against a real authorization server
//! (oidc-provider, see `support::oidc`): a provider given by its issuer
//! alone finds the server's endpoints, exchanges and refreshes through the
//! discovered token endpoint, and `tokend remove --revoke` ends the grant
//! at the server (its refresh token no longer works); a client_credentials
//! credential with `revoke_on_remove` revokes its access token.

use std::path::Path;
use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::oidc::{
    authorize_url, log_in, Callback, OidcClient, OidcServer, Pkce, BASIC, PUBLIC,
};
use crate::support::{wait_until, Daemon, FAST_DAEMON};

/// The provider table naming only the server's issuer.
fn issuer_toml(server: &OidcServer, client: &OidcClient, extra: &str) -> String {
    let mut out = format!(
        "[providers.p]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_auth = \"{}\"\n{extra}\n",
        server.issuer(),
        client.id,
        client.auth
    );
    if let Some(secret) = client.secret {
        out.push_str(&format!("client_secret = \"{secret}\"\n"));
    }
    out
}

/// A code from the server's login pages, with its verifier and redirect.
async fn browser_code(server: &OidcServer, client: &OidcClient) -> (String, Pkce, String) {
    let callback = Callback::listen().await;
    let redirect_uri = callback.redirect_uri();
    let pkce = Pkce::new();
    let start = authorize_url(server, client, &redirect_uri, "openid read", "st-1", &pkce);
    let browser = Browser::new();
    let to = log_in(&browser, &start, &callback.host_port()).await;
    assert_eq!(browser.get(to.as_str()).await.status, 200);
    let got = callback.received().await;
    let code = got
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {got}"));
    (code, pkce, redirect_uri)
}

/// The refresh token tokend stored for `name` (unencrypted database).
async fn stored_refresh_token(database: &Path, name: &str) -> String {
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
    rt.expect("a refresh token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_alone_then_remove_revoke_ends_the_grant() {
    let server = OidcServer::start().await;
    for client in [BASIC, PUBLIC] {
        let daemon = Daemon::start(FAST_DAEMON, &issuer_toml(&server, &client, "")).await;
        let config = daemon.config.to_str().expect("utf-8 path").to_string();
        let check = daemon.cli(&["check-config", &config]).await;
        let out = &check.ok().stdout;
        for line in [
            format!("token endpoint: {}", server.token_url()),
            format!("revocation endpoint: {}", server.revocation_url()),
            format!(
                "device authorization endpoint: {}",
                server.device_authorization_url()
            ),
            format!("metadata: fetched now from {}", server.discovery_url()),
        ] {
            assert!(out.contains(&line), "{line} not in {out}");
        }
        let (code, pkce, redirect_uri) = browser_code(&server, &client).await;
        daemon
            .cli_stdin(
                &["exchange", "me", "-p", "p", "--redirect-uri", &redirect_uri],
                Some(&format!("{code}\n{}\n", pkce.verifier)),
            )
            .await
            .ok();
        daemon.cli(&["refresh", "me"]).await.ok();
        assert_eq!(server.wait_grants(&client, "refresh_token", 1).await, 1);
        let rt = stored_refresh_token(&daemon.database, "me").await;
        let access = daemon
            .cli(&["get", "me"])
            .await
            .ok()
            .stdout
            .trim()
            .to_string();
        let removed = daemon.cli(&["remove", "me", "--revoke"]).await;
        assert!(removed.ok().stdout.contains("revoked"), "{removed:?}");
        // The grant is over: the server refuses the refresh token.
        let (status, body) = server
            .token_request(
                &client,
                &[("grant_type", "refresh_token"), ("refresh_token", &rt)],
            )
            .await;
        assert_eq!(
            (status, &body["error"]),
            (400, &"invalid_grant".into()),
            "{body}"
        );
        assert!(
            server
                .errors_of(&client)
                .iter()
                .all(|e| e["event"] == "grant.error"),
            "{:?}",
            server.errors()
        );
        let mut daemon = daemon;
        daemon.stop().await;
        let logs = daemon.logs();
        for secret in [code.as_str(), pkce.verifier.as_str(), &rt, &access]
            .into_iter()
            .chain(client.secret)
        {
            assert!(!logs.contains(secret), "a secret in the daemon log: {logs}");
        }
        daemon.finish(&[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_on_remove_revokes_a_client_credentials_token() {
    let server = OidcServer::start().await;
    let config = format!(
        "{}[credentials.svc]\nprovider = \"p\"\ngrant = \"client_credentials\"\nscope = \"read\"\n",
        issuer_toml(&server, &BASIC, "revoke_on_remove = true")
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    wait_until(Duration::from_secs(10), "the first token", || async {
        server.grants(&BASIC, "client_credentials") >= 1
    })
    .await;
    let token = daemon
        .cli(&["get", "svc"])
        .await
        .ok()
        .stdout
        .trim()
        .to_string();
    assert_eq!(server.introspect(&BASIC, &token).await["active"], true);
    daemon.cli(&["remove", "svc"]).await.ok();
    // Revoked at the server (which logs no event for it).
    assert_eq!(server.introspect(&BASIC, &token).await["active"], false);
    assert!(server.errors_of(&BASIC).is_empty(), "{:?}", server.errors());
    let mut daemon = daemon;
    daemon.stop().await;
    assert!(!daemon.logs().contains(&token));
    daemon.finish(&[]).await;
}
