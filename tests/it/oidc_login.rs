//! `tokend login` against a real authorization server (oidc-provider, see
//! `support::oidc`): the CLI's URL, driven through the server's login and
//! consent pages by the test browser, back to the CLI's loopback listener;
//! the credential then serves a token the server accepts, and refreshes.

use crate::login::Login;
use crate::support::browser::Browser;
use crate::support::oidc::{log_in, EndpointKey, OidcServer, BASIC, PUBLIC};
use crate::support::{Daemon, FAST_DAEMON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_a_confidential_and_a_public_client() {
    let server = OidcServer::start().await;
    for client in [BASIC, PUBLIC] {
        let config = format!(
            "{}scope = \"openid offline_access read\"\n[providers.p.authorize]\nprompt = \"consent\"\n",
            server.provider_toml_with("p", &client, &[EndpointKey::Authorization])
        );
        let daemon = Daemon::start(FAST_DAEMON, &config).await;
        let login = Login::start(&daemon, &["--no-browser"]).await;
        let redirect = url::Url::parse(&login.url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| url::Url::parse(&v).unwrap())
            .expect("redirect_uri");
        let stop_at = format!("127.0.0.1:{}", redirect.port().unwrap());
        let browser = Browser::new();
        let back = log_in(&browser, &login.url, &stop_at).await;
        let code = back
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("a code");
        let page = browser.get(back.as_str()).await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.body.contains("Logged in"), "{}", page.body);
        let run = login.finish().await;
        assert_eq!(run.code, 0, "{}: {run:?}\n{}", client.id, server.logs());
        assert_eq!(
            server.wait_grants(&client, "authorization_code", 1).await,
            1
        );

        let token = daemon
            .cli(&["get", "c"])
            .await
            .ok()
            .stdout
            .trim()
            .to_string();
        let (status, info) = server.userinfo(&token).await;
        assert_eq!(status, 200, "{info}");
        daemon.cli(&["refresh", "c"]).await.ok();
        assert_eq!(server.wait_grants(&client, "refresh_token", 1).await, 1);
        assert!(
            server.errors_of(&client).is_empty(),
            "{:?}",
            server.errors_of(&client)
        );

        let mut daemon = daemon;
        daemon.stop().await;
        let logs = daemon.logs();
        for secret in [code.as_str(), token.as_str()] {
            assert!(!logs.contains(secret), "a secret in the daemon log: {logs}");
            assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
        }
        daemon.finish(&[]).await;
    }
}
