//! Every seed endpoint, spoken exactly: proactive refresh with strict
//! rotation, and the authorization-code exchange of seed 001.

use std::time::{Duration, Instant, SystemTime};

use crate::support::fake_provider::{ExpiresIn, FakeConfig, FakeProvider, Flavor};
use crate::support::{provider_toml, wait_until, Daemon, FAST_DAEMON};

/// With a 3-second TTL, the credential is refreshed proactively at least 3
/// times; `tokend get`, sampled throughout, never returns an expired token;
/// the fake never sees a reused refresh token or a malformed request.
async fn proactive_rotation(fake_cfg: FakeConfig) {
    let fake = FakeProvider::start(fake_cfg.with_ttl(Duration::from_secs(3))).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("seed", &fake)).await;
    let rt = fake.issue_refresh_token();
    let added = daemon.add("cred", "seed", &rt).await;
    added.ok();
    assert!(added.stdout.contains("cred: added"), "{added:?}");
    let first_refresh = fake.refresh_count();
    assert_eq!(first_refresh, 1, "add refreshes once to get a token");

    let started = Instant::now();
    let mut samples = 0;
    let mut distinct = std::collections::HashSet::new();
    while fake.refresh_count() < first_refresh + 3 || started.elapsed() < Duration::from_secs(8) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "too few refreshes: {}",
            fake.refresh_count()
        );
        let run = daemon.cli(&["get", "cred"]).await;
        run.ok();
        let token = run.stdout.trim().to_string();
        let expiry = fake
            .access_token_expiry(&token)
            .unwrap_or_else(|| panic!("the daemon served a token the provider never issued"));
        assert!(expiry > SystemTime::now(), "an expired token was served");
        distinct.insert(token);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(fake.refresh_count() >= first_refresh + 3);
    assert!(distinct.len() >= 3, "tokens did not change: {distinct:?}");
    assert!(samples >= 20, "only {samples} samples");
    assert_eq!(
        fake.reused_refresh_tokens(),
        0,
        "a used refresh token was sent again"
    );
    assert_eq!(
        fake.rejections(),
        Vec::<String>::new(),
        "the fake rejected the wire format"
    );
    let status = daemon.status("cred").await;
    assert_eq!(status["state"], "active");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_000_basic_auth_form() {
    proactive_rotation(FakeConfig::new(Flavor::Didit)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_json_body_custom_headers() {
    proactive_rotation(FakeConfig::new(Flavor::Partner)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_client_secret_in_form_body() {
    proactive_rotation(FakeConfig::new(Flavor::Bakrypt)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_digirunner_confidential_client() {
    proactive_rotation(FakeConfig::new(Flavor::DigiRunner)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_digirunner_public_pkce_client() {
    proactive_rotation(FakeConfig::new(Flavor::DigiRunnerPublic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_as_string_and_jwt_exp_fallback() {
    for mode in [ExpiresIn::String, ExpiresIn::OmittedJwt] {
        let fake = FakeProvider::start(
            FakeConfig::new(Flavor::Didit)
                .with_ttl(Duration::from_secs(2))
                .with_expires_in(mode),
        )
        .await;
        let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
        daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
        let status = daemon.status("c").await;
        let expected = if mode == ExpiresIn::String {
            "expires_in"
        } else {
            "jwt_exp"
        };
        assert_eq!(status["lifetime_source"], expected);
        assert!(status["expires_in"].as_i64().unwrap() <= 2);
        wait_until(
            Duration::from_secs(10),
            "two proactive refreshes",
            || async { fake.refresh_count() >= 3 },
        )
        .await;
        assert_eq!(fake.reused_refresh_tokens(), 0);
        daemon.finish(&[&fake]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_exchange_creates_a_credential_and_keeps_the_id_token() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(3))).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("didit", &fake)).await;
    let redirect = "https://your-app.com/callback";
    let code = fake.issue_code(redirect, None, true);
    let run = daemon
        .cli(&[
            "exchange",
            "user",
            "--provider",
            "didit",
            "--code",
            &code,
            "--redirect-uri",
            redirect,
        ])
        .await;
    run.ok();
    assert!(run.stdout.contains("user: created"), "{run:?}");
    assert_eq!(fake.exchange_count(), 1);

    let get = daemon.cli(&["get", "user", "--json"]).await;
    get.ok();
    let token: serde_json::Value = serde_json::from_str(&get.stdout).unwrap();
    let id_token = token["id_token"]
        .as_str()
        .expect("id_token kept")
        .to_string();
    assert_eq!(id_token.split('.').count(), 3);

    // The credential refreshes on its own; refresh responses carry no
    // id_token, and the one from the exchange is kept.
    wait_until(Duration::from_secs(10), "a proactive refresh", || async {
        fake.refresh_count() >= 2
    })
    .await;
    let get = daemon.cli(&["get", "user", "--json"]).await;
    let token: serde_json::Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(token["id_token"], id_token.as_str());

    // A code is single-use: exchanging it again fails and changes nothing.
    let again = daemon
        .cli(&[
            "exchange",
            "user",
            "--provider",
            "didit",
            "--code",
            &code,
            "--redirect-uri",
            redirect,
        ])
        .await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("invalid_grant"), "{again:?}");
    assert_eq!(daemon.status("user").await["state"], "active");
    assert_eq!(fake.rejections(), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_exchange_with_pkce_and_without_offline_access() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("didit", &fake)).await;
    let redirect = "http://127.0.0.1:9/cb";
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = crate::support::fake_provider::pkce_s256(verifier);
    let code = fake.issue_code(redirect, Some(&challenge), false);
    let run = daemon
        .cli(&[
            "exchange",
            "pkce",
            "--provider",
            "didit",
            "--code",
            &code,
            "--redirect-uri",
            redirect,
            "--code-verifier",
            verifier,
        ])
        .await;
    run.ok();
    let status = daemon.status("pkce").await;
    assert_eq!(status["has_refresh_token"], false);
    assert_eq!(status["state"], "active");
    daemon.cli(&["get", "pkce"]).await.ok();
    assert!(daemon.logs().contains("no_refresh_token"));
    assert_eq!(fake.rejections(), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}
