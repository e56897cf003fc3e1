//! Discovery (RFC 8414, OpenID Connect Discovery) and revocation (RFC 7009)
//! against the strict fake: a provider given by its issuer alone, both
//! document paths, a lying or broken issuer refused, the stored copy used
//! across a restart while the issuer is down, a changed token endpoint
//! picked up by the periodic refetch, `check-config`'s report, and
//! `tokend remove --revoke` with its failure rules. Every test ends by
//! checking the daemon's log for the fake's secrets.

use std::time::Duration;

use crate::support::fake_provider::{DiscoveryMode, FakeConfig, FakeProvider, Flavor};
use crate::support::{wait_until, Daemon, FAST_DAEMON};

/// A Didit-style fake (Basic client auth, a form body).
async fn fake() -> FakeProvider {
    FakeProvider::start(FakeConfig::new(Flavor::Didit)).await
}

/// `[providers.NAME]` with the fake's issuer and client, no endpoint URL.
fn issuer_toml(name: &str, fake: &FakeProvider, extra: &str) -> String {
    let cfg = fake.config();
    format!(
        "[providers.{name}]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n{extra}\n",
        fake.issuer(),
        cfg.client_id,
        cfg.client_secret.clone().unwrap_or_default()
    )
}

async fn refreshes_through(daemon: &Daemon, fake: &FakeProvider, name: &str) {
    let before = fake.refresh_count();
    daemon.cli(&["refresh", name]).await.ok();
    assert!(fake.refresh_count() > before, "no refresh reached the fake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_alone_finds_the_token_endpoint() {
    let fake = fake().await;
    let daemon = Daemon::start(FAST_DAEMON, &issuer_toml("p", &fake, "")).await;
    daemon
        .add("mail", "p", &fake.issue_refresh_token())
        .await
        .ok();
    let token = daemon.cli(&["get", "mail"]).await;
    assert!(fake.access_token_expiry(token.ok().stdout.trim()).is_some());
    assert_eq!(
        fake.discovery_requests(),
        ["/.well-known/openid-configuration"]
    );
    assert!(
        daemon.logs().contains("metadata of issuer"),
        "{}",
        daemon.logs()
    );
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rfc_8414_document_is_tried_when_the_openid_one_is_404() {
    let fake = fake().await;
    fake.set_issuer_path("/tenant");
    fake.serve_oauth_metadata_only(true);
    let daemon = Daemon::start(FAST_DAEMON, &issuer_toml("p", &fake, "")).await;
    daemon
        .add("mail", "p", &fake.issue_refresh_token())
        .await
        .ok();
    refreshes_through(&daemon, &fake, "mail").await;
    // RFC 8414 §3.1: the well-known part goes between host and path.
    assert_eq!(
        fake.discovery_requests(),
        [
            "/tenant/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant"
        ]
    );
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_issuer_is_refused_and_its_credentials_wait_until_it_is_fixed() {
    let fake = fake().await;
    fake.set_discovery_mode(DiscoveryMode::WrongIssuer);
    let daemon = Daemon::start(FAST_DAEMON, &issuer_toml("p", &fake, "")).await;
    // The credential is stored, and waits.
    let added = daemon.add("mail", "p", &fake.issue_refresh_token()).await;
    assert!(
        added.stderr.contains("stored, but no token yet"),
        "{added:?}"
    );
    let st = daemon.status("mail").await;
    assert_eq!(st["state"], "paused", "{st}");
    let reason = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("names issuer `https://evil.example`"),
        "{reason}"
    );
    let get = daemon.cli(&["get", "mail"]).await;
    assert_ne!(get.code, 0, "{get:?}");
    // Plain-http endpoints are refused too.
    fake.set_discovery_mode(DiscoveryMode::InsecureUrls);
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the http refusal", || async {
        let st = daemon.status("mail").await;
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("plain http"))
    })
    .await;
    assert_eq!(fake.refresh_count(), 0);
    // Fixed: the next fetch resumes the credential.
    fake.set_discovery_mode(DiscoveryMode::Normal);
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        "the credential to resume",
        || async { daemon.status("mail").await["state"] == "active" },
    )
    .await;
    daemon.cli(&["get", "mail"]).await.ok();
    assert!(fake.refresh_count() >= 1);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_issuer_is_down_uses_the_stored_copy() {
    let fake = fake().await;
    let mut daemon = Daemon::start(FAST_DAEMON, &issuer_toml("p", &fake, "")).await;
    daemon
        .add("mail", "p", &fake.issue_refresh_token())
        .await
        .ok();
    daemon.stop().await;
    fake.set_discovery_mode(DiscoveryMode::ServerError);
    daemon.spawn().await;
    refreshes_through(&daemon, &fake, "mail").await;
    let logs = daemon.logs();
    assert!(
        logs.contains("using its metadata stored in the database"),
        "{logs}"
    );
    // A provider with neither the issuer nor a stored copy: its
    // credentials are taken, and wait.
    daemon.stop().await;
    let both = format!(
        "{}{}",
        issuer_toml("p", &fake, ""),
        issuer_toml("q", &fake, "")
    );
    daemon.write_config(FAST_DAEMON, &both);
    daemon.spawn().await;
    refreshes_through(&daemon, &fake, "mail").await;
    let added = daemon.add("other", "q", &fake.issue_refresh_token()).await;
    assert_ne!(added.code, 0, "{added:?}");
    let st = daemon.status("other").await;
    assert_eq!(st["state"], "paused", "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("waiting for the metadata of issuer")),
        "{st}"
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_refetch_picks_up_a_changed_token_endpoint() {
    let a = fake().await;
    // The same client at another token endpoint.
    let b = FakeProvider::start(a.config().clone()).await;
    let config = format!(
        "{}[credentials.svc]\nprovider = \"p\"\ngrant = \"client_credentials\"\n",
        issuer_toml("p", &a, "discovery_refresh = \"1s\"")
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    wait_until(Duration::from_secs(10), "the first token", || async {
        a.client_credentials_count() >= 1
    })
    .await;
    a.set_discovered_token_endpoint(Some(b.token_url()));
    wait_until(Duration::from_secs(10), "the new endpoint", || async {
        daemon.cli(&["refresh", "svc"]).await;
        b.client_credentials_count() >= 1
    })
    .await;
    assert!(a.rejections().is_empty(), "{:?}", a.rejections());
    assert!(b.rejections().is_empty(), "{:?}", b.rejections());
    daemon.finish(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_shows_the_metadata_live_or_stored() {
    let fake = fake().await;
    let mut daemon = Daemon::start(FAST_DAEMON, &issuer_toml("p", &fake, "")).await;
    let config = daemon.config.to_str().unwrap().to_string();
    let live = daemon.cli(&["check-config", &config]).await;
    let out = &live.ok().stdout;
    assert!(out.contains(&format!("issuer {}", fake.issuer())), "{out}");
    assert!(
        out.contains(&format!(
            "metadata: fetched now from {}/.well-known/openid-configuration",
            fake.base_url()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("token endpoint: {}", fake.token_url())),
        "{out}"
    );
    assert!(
        out.contains(&format!("revocation endpoint: {}", fake.revocation_url())),
        "{out}"
    );
    fake.set_discovery_mode(DiscoveryMode::NotFound);
    // Beside the running daemon, then without it.
    for _ in 0..2 {
        let stored = daemon.cli(&["check-config", &config]).await;
        let out = &stored.ok().stdout;
        assert!(out.contains("the copy stored in"), "{out}");
        assert!(
            out.contains(&format!("token endpoint: {}", fake.token_url())),
            "{out}"
        );
        if daemon.is_running() {
            daemon.stop().await;
        }
    }
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_revoke_revokes_the_refresh_token_at_the_provider() {
    let fake = fake().await;
    let daemon = Daemon::start(FAST_DAEMON, &issuer_toml("p", &fake, "")).await;
    let rt = fake.issue_refresh_token();
    daemon.add("mail", "p", &rt).await.ok();
    let removed = daemon.cli(&["remove", "mail", "--revoke"]).await;
    assert!(removed.ok().stdout.contains("revoked"), "{removed:?}");
    assert_eq!(
        fake.revocations(),
        [(Some("refresh_token".to_string()), true)]
    );
    // The grant is dead at the provider, and gone here.
    assert!(fake.current_refresh_tokens().is_empty());
    assert_ne!(daemon.cli(&["status", "mail"]).await.code, 0);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_revocation_keeps_the_credential_unless_forced() {
    let fake = fake().await;
    let daemon = Daemon::start(FAST_DAEMON, &issuer_toml("p", &fake, "")).await;
    daemon
        .add("mail", "p", &fake.issue_refresh_token())
        .await
        .ok();
    fake.fail_revocations(Some(503));
    let kept = daemon.cli(&["remove", "mail", "--revoke"]).await;
    assert_ne!(kept.code, 0, "{kept:?}");
    assert!(kept.stderr.contains("was kept"), "{kept:?}");
    assert!(kept.stderr.contains("--force"), "{kept:?}");
    daemon.cli(&["status", "mail"]).await.ok();
    // Forced: removed, and the exit code still says the grant may be live.
    let forced = daemon.cli(&["remove", "mail", "--revoke", "--force"]).await;
    assert_eq!(forced.code, 1, "{forced:?}");
    assert!(forced.stdout.contains("removed"), "{forced:?}");
    assert!(forced.stderr.contains("may still be live"), "{forced:?}");
    assert_ne!(daemon.cli(&["status", "mail"]).await.code, 0);
    assert!(fake.revocations().is_empty());
    assert_eq!(fake.current_refresh_tokens().len(), 1);
    let logs = daemon.logs();
    assert!(logs.contains("revocation failed"), "{logs}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_on_remove_revokes_and_deletes_even_when_revocation_fails() {
    let fake = fake().await;
    let cfg = fake.config();
    // Configured URLs, no issuer; a client_credentials credential too.
    let config = format!(
        "[providers.p]\ntoken_url = \"{}\"\nrevocation_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nrevoke_on_remove = true\n\
         [credentials.svc]\nprovider = \"p\"\ngrant = \"client_credentials\"\n",
        fake.token_url(),
        fake.revocation_url(),
        cfg.client_id,
        cfg.client_secret.clone().unwrap_or_default()
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    wait_until(Duration::from_secs(10), "the first token", || async {
        fake.client_credentials_count() >= 1
    })
    .await;
    daemon.cli(&["get", "svc"]).await.ok();
    daemon.cli(&["remove", "svc"]).await.ok();
    // A client_credentials credential revokes its access token.
    assert_eq!(
        fake.revocations(),
        [(Some("access_token".to_string()), true)]
    );
    daemon
        .add("mail", "p", &fake.issue_refresh_token())
        .await
        .ok();
    fake.fail_revocations(Some(500));
    let removed = daemon.cli(&["remove", "mail"]).await;
    assert_eq!(removed.code, 0, "{removed:?}");
    assert!(removed.stderr.contains("may still be live"), "{removed:?}");
    assert_ne!(daemon.cli(&["status", "mail"]).await.code, 0);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_credential_resumes_when_a_retried_fetch_succeeds() {
    let fake = fake().await;
    fake.set_discovery_mode(DiscoveryMode::ServerError);
    let toml = issuer_toml("p", &fake, "discovery_refresh = \"1s\"");
    let daemon = Daemon::start(FAST_DAEMON, &toml).await;
    let added = daemon.add("mail", "p", &fake.issue_refresh_token()).await;
    assert_ne!(added.code, 0, "{added:?}");
    let st = daemon.status("mail").await;
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("answered 500")),
        "{st}"
    );
    let asked = fake.discovery_requests().len();
    // No SIGHUP: the retry alone brings the endpoints.
    fake.set_discovery_mode(DiscoveryMode::Normal);
    wait_until(
        Duration::from_secs(10),
        "the credential to resume",
        || async { daemon.status("mail").await["state"] == "active" },
    )
    .await;
    assert!(fake.discovery_requests().len() > asked);
    daemon.cli(&["get", "mail"]).await.ok();
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    daemon.finish(&[&fake]).await;
}
