//! The device authorization grant (RFC 8628) against a real authorization
//! server (oidc-provider, see `support::oidc`): `tokend login --device` for a
//! public and a confidential client, the user approving on the server's own
//! device pages as a browser, the daemon's polls honouring the server's
//! interval, and the stored credential refreshed afterwards.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use tokend::client::Client;
use tokio::process::Command;

use crate::support::browser::Browser;
use crate::support::oidc::{approve_device, EndpointKey, OidcClient, OidcServer, BASIC, PUBLIC};
use crate::support::{Daemon, FAST_DAEMON};

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The provider table for `client`, with the device endpoint and a scope
/// that asks for a refresh token.
fn provider(server: &OidcServer, client: &OidcClient) -> String {
    format!(
        "{}scope = \"openid offline_access\"\n",
        server.provider_toml_with("p", client, &[EndpointKey::DeviceAuthorization])
    )
}

/// The pending login of `name`, once the daemon lists it.
async fn pending(daemon: &Daemon, name: &str) -> Value {
    let client = Client::new(&daemon.socket);
    let path = format!("/v1/logins/{name}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(login) = client.call::<Value>(Method::GET, &path, None::<&()>).await {
            return login;
        }
        assert!(Instant::now() < deadline, "no login listed for {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_approved_in_the_browser_is_stored_and_refreshed() {
    let server = OidcServer::start().await;
    for client in [PUBLIC, BASIC] {
        let daemon = Daemon::start(FAST_DAEMON, &provider(&server, &client)).await;
        let cli = Command::new(env!("CARGO_BIN_EXE_tokend"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args([
                "login",
                "--device",
                "tv",
                "--provider",
                "p",
                "--timeout",
                "60s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the cli");
        let login = pending(&daemon, "tv").await;
        assert_eq!(login["state"], "pending", "{login}");
        assert_eq!(
            login["verification_uri"],
            server.device_verification_url().as_str(),
            "{login}"
        );
        let user_code = login["user_code"]
            .as_str()
            .expect("a user code")
            .to_string();
        approve_device(&Browser::new(), &server, &user_code).await;
        let out = tokio::time::timeout(Duration::from_secs(60), cli.wait_with_output())
            .await
            .expect("the cli returned")
            .expect("cli output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stdout} {stderr}", client.id);
        assert!(stderr.contains(&user_code), "{stderr}");
        assert!(stdout.contains("tv: logged in (provider p)"), "{stdout}");
        assert_eq!(
            server.grants(&client, DEVICE_GRANT),
            1,
            "{:?}",
            server.errors()
        );
        // Only "not yet" answers: no poll too soon (slow_down), nothing malformed.
        let refused: Vec<Value> = server
            .errors_of(&client)
            .into_iter()
            .filter(|e| e["error"] != "authorization_pending")
            .collect();
        assert!(refused.is_empty(), "{}: {refused:?}", client.id);
        let st = daemon.status("tv").await;
        assert_eq!(st["has_refresh_token"], true, "{st}");
        let token = daemon
            .cli(&["get", "tv"])
            .await
            .ok()
            .stdout
            .trim()
            .to_string();
        assert_eq!(server.userinfo(&token).await.0, 200);
        daemon.cli(&["refresh", "tv"]).await.ok();
        assert_eq!(server.wait_grants(&client, "refresh_token", 1).await, 1);
        let mut daemon = daemon;
        daemon.stop().await;
        let logs = daemon.logs();
        assert!(!logs.contains(&token), "the access token in the log");
        daemon.finish(&[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_device_login_stores_nothing() {
    let server = OidcServer::start().await;
    let daemon = Daemon::start(FAST_DAEMON, &provider(&server, &PUBLIC)).await;
    daemon
        .cli(&["login", "--device", "tv", "--provider", "p", "--no-wait"])
        .await
        .ok();
    let login = pending(&daemon, "tv").await;
    let client = Client::new(&daemon.socket);
    client
        .call::<Value>(Method::DELETE, "/v1/logins/tv", None::<&()>)
        .await
        .ok();
    approve_device(
        &Browser::new(),
        &server,
        login["user_code"].as_str().unwrap(),
    )
    .await;
    // The server's interval is 5 s: a poll would have come by now.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(server.grants(&PUBLIC, DEVICE_GRANT), 0);
    assert_eq!(daemon.cli(&["get", "tv"]).await.code, 1);
    daemon.finish(&[]).await;
}
