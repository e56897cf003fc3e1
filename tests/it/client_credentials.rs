//! The client_credentials grant (RFC 6749 §4.4): credentials with no refresh
//! token, declared in the configuration or added with `tokend add
//! --client-credentials`, acquired at once and again before each expiry,
//! with every client-auth method the fake provider's flavours check.

use std::time::{Duration, SystemTime};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{cli_as, provider_toml, wait_until, Daemon, FAST_DAEMON};

const SOCKET_GID: u32 = 4252;

/// A fake that issues `ttl`-second tokens to client_credentials requests
/// carrying exactly `scope = "read write"` and `audience = "https://api"`.
async fn fake(flavor: Flavor, ttl: u64) -> FakeProvider {
    let cfg = FakeConfig::new(flavor)
        .with_ttl(Duration::from_secs(ttl))
        .with_client_credentials(Some("read write"), Some("https://api"));
    FakeProvider::start(cfg).await
}

/// A `[credentials.NAME]` table declaring a client_credentials credential.
fn declared(name: &str, provider: &str) -> String {
    format!(
        "[credentials.{name}]\nprovider = \"{provider}\"\ngrant = \"client_credentials\"\n\
         scope = \"read write\"\nparams = {{ audience = \"https://api\" }}\nreaders = [\"uid:1000\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_credential_is_acquired_at_start_and_again_before_expiry() {
    let fake = fake(Flavor::Didit, 3).await;
    let config = format!("{}{}", provider_toml("p", &fake), declared("svc", "p"));
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    wait_until(Duration::from_secs(10), "first token", || async {
        fake.client_credentials_count() >= 1
    })
    .await;
    let first = daemon.cli(&["get", "svc"]).await;
    let expiry = fake
        .access_token_expiry(first.ok().stdout.trim())
        .expect("the served token is the issued one");
    let st = daemon.status("svc").await;
    assert_eq!(st["grant"], "client_credentials", "{st}");
    assert_eq!(st["has_refresh_token"], false, "{st}");
    assert_eq!(st["state"], "active", "{st}");
    // A 3 s token is re-acquired before it expires, with no read asking.
    wait_until(Duration::from_secs(10), "re-acquisition", || async {
        fake.client_credentials_count() >= 2
    })
    .await;
    assert!(SystemTime::now() < expiry, "re-acquired only after expiry");
    let second = daemon.cli(&["get", "svc"]).await;
    assert_ne!(second.ok().stdout, first.stdout);
    assert_eq!(fake.refresh_count(), 0);
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    // A restart keeps the stored credential instead of creating another.
    let mut daemon = daemon;
    daemon.stop().await;
    daemon.spawn().await;
    daemon.cli(&["get", "svc"]).await.ok();
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_auth_method_over_the_cli() {
    for (flavor, auth) in [
        (Flavor::Didit, None),
        (Flavor::Didit, Some("basic_urlencoded")),
        (Flavor::Bakrypt, None),
        (Flavor::DigiRunner, None),
    ] {
        let fake = fake(flavor, 3600).await;
        let mut config = provider_toml("p", &fake);
        if let Some(auth) = auth {
            config = config.replace(
                "client_auth = \"basic\"",
                &format!("client_auth = \"{auth}\""),
            );
        }
        let daemon = Daemon::start(FAST_DAEMON, &config).await;
        let args = [
            "add",
            "svc",
            "--provider",
            "p",
            "--client-credentials",
            "--scope",
            "read write",
            "--param",
            "audience=https://api",
        ];
        let run = daemon.cli(&args).await;
        assert!(
            run.stdout.contains("svc: added"),
            "{flavor:?} {auth:?}: {run:?}"
        );
        daemon.cli(&["get", "svc"]).await.ok();
        assert_eq!(fake.client_credentials_count(), 1, "{flavor:?} {auth:?}");
        assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
        // A refresh token makes no sense for this grant.
        let run = daemon
            .cli_stdin(
                &[
                    "add",
                    "x",
                    "--provider",
                    "p",
                    "--client-credentials",
                    "--refresh-token-file",
                    "/dev/null",
                ],
                None,
            )
            .await;
        assert_eq!(run.code, 2, "{run:?}");
        daemon.finish(&[&fake]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_without_a_reader_rule_gets_404() {
    let fake = fake(Flavor::Didit, 3600).await;
    let config = format!("{}{}", provider_toml("p", &fake), declared("svc", "p"));
    let extra = format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n");
    let daemon = Daemon::start(&extra, &config).await;
    daemon.open_to_other_users();
    let token = daemon.cli(&["get", "svc"]).await.ok().stdout.clone();
    let run = cli_as(&daemon.socket, 1000, SOCKET_GID, &[], &["get", "svc"]).await;
    assert_eq!(run.stdout, token, "{run:?}");
    let run = cli_as(&daemon.socket, 1002, SOCKET_GID, &[], &["get", "svc"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("no credential named `svc` that you may read"),
        "{run:?}"
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_pauses_with_a_clear_status() {
    let fake = fake(Flavor::Didit, 3600).await;
    let secret = fake.config().client_secret.clone().unwrap();
    let config = format!("{}{}", provider_toml("p", &fake), declared("svc", "p"))
        .replace(&secret, "the-wrong-secret");
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    wait_until(Duration::from_secs(10), "the paused status", || async {
        daemon.status("svc").await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("fix providers.p"))
    })
    .await;
    let st = daemon.status("svc").await;
    assert_eq!(st["next_refresh_at"], serde_json::Value::Null, "{st}");
    assert_eq!(st["state"], "paused", "{st}");
    let run = daemon.cli(&["get", "svc"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("paused"), "{run:?}");
    assert_eq!(fake.client_credentials_count(), 0);
    let logs = daemon.logs();
    assert!(!logs.contains("the-wrong-secret"), "{logs}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_a_public_client() {
    let fake = fake(Flavor::Partner, 3600).await;
    let config = format!("{}{}", provider_toml("p", &fake), declared("svc", "p"));
    let daemon = Daemon::prepare(FAST_DAEMON, &config);
    let path = daemon.config.to_str().unwrap().to_string();
    let run = daemon.cli(&["check-config", &path]).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("credentials.svc.grant")
            && run.stderr.contains("client_auth = \"none\""),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_creates_new_declarations_and_keeps_removed_ones() {
    let fake = fake(Flavor::Bakrypt, 3600).await;
    let provider = provider_toml("p", &fake);
    let daemon = Daemon::start(FAST_DAEMON, &provider).await;
    daemon.write_config(FAST_DAEMON, &format!("{provider}{}", declared("svc", "p")));
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the declared token", || async {
        fake.client_credentials_count() >= 1
    })
    .await;
    let token = daemon.cli(&["get", "svc"]).await.ok().stdout.clone();

    // Declared no more: kept, still served, and said so in the log.
    daemon.write_config(FAST_DAEMON, &provider);
    daemon.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reload warning", || async {
        daemon.logs().contains("no longer declared")
    })
    .await;
    assert_eq!(daemon.cli(&["get", "svc"]).await.ok().stdout, token);
    assert_eq!(daemon.status("svc").await["grant"], "client_credentials");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_the_grant_cannot_use() {
    let fake = fake(Flavor::Didit, 3600).await;
    let public = FakeProvider::start(FakeConfig::new(Flavor::Partner)).await;
    let config = format!(
        "{}{}",
        provider_toml("p", &fake),
        provider_toml("pub", &public)
    );
    let daemon = Daemon::start(FAST_DAEMON, &config).await;
    let cc = ["add", "x", "--provider", "p", "--client-credentials"];
    let run = daemon
        .cli(&[&cc[..], &["--param", "grant_type=password"]].concat())
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("params.grant_type"), "{run:?}");
    let run = daemon
        .cli(&[&cc[..], &["--param", "audience"]].concat())
        .await;
    assert!(run.stderr.contains("KEY=VALUE"), "{run:?}");
    let run = daemon
        .cli(&["add", "x", "--provider", "pub", "--client-credentials"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("client_auth = \"none\""), "{run:?}");
    assert_eq!(fake.request_count() + public.request_count(), 0);
    daemon.finish(&[&fake, &public]).await;
}
