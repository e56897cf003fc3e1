//! A credential's life: restart on the same database, providers that do not
//! rotate, re-authorization, transient failures, on-demand refresh.

use std::time::Duration;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Fault, Flavor};
use crate::support::{provider_toml, wait_until, Daemon, FAST_DAEMON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_database_keeps_rotated_tokens_and_keeps_refreshing() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(3))).await;
    let mut daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    wait_until(Duration::from_secs(10), "two rotations", || async {
        fake.refresh_count() >= 3
    })
    .await;
    daemon.stop().await;

    // Exactly one refresh token is alive at the provider: the one on disk.
    let alive = fake.current_refresh_tokens();
    assert_eq!(alive.len(), 1, "{alive:?}");
    let before = fake.refresh_count();

    daemon.spawn().await;
    let run = daemon.cli(&["get", "c"]).await;
    run.ok();
    assert!(fake.access_token_expiry(run.stdout.trim()).is_some());
    wait_until(
        Duration::from_secs(10),
        "refreshing to continue",
        || async { fake.refresh_count() >= before + 2 },
    )
    .await;
    assert_eq!(fake.reused_refresh_tokens(), 0);
    assert_eq!(daemon.status("c").await["state"], "active");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_refresh_token_keeps_the_old_one() {
    let fake = FakeProvider::start(
        FakeConfig::new(Flavor::Didit)
            .with_ttl(Duration::from_secs(2))
            .with_rotate(false),
    )
    .await;
    let mut daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    let rt = fake.issue_refresh_token();
    daemon.add("c", "p", &rt).await.ok();
    wait_until(Duration::from_secs(10), "three refreshes", || async {
        fake.refresh_count() >= 3
    })
    .await;
    daemon.stop().await;
    assert_eq!(fake.current_refresh_tokens(), vec![rt.clone()]);
    // The database still holds the original refresh token: after a restart,
    // refreshing with it still works.
    daemon.spawn().await;
    daemon.cli(&["refresh", "c"]).await.ok();
    let status = daemon.status("c").await;
    assert_eq!(status["state"], "active");
    assert_eq!(status["has_refresh_token"], true);
    assert_eq!(fake.rejections(), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}

async fn needs_reauth_after_revocation(flavor: Flavor, expected_code: &str) {
    let fake = FakeProvider::start(FakeConfig::new(flavor).with_ttl(Duration::from_secs(4))).await;
    let daemon = Daemon::start(
        FAST_DAEMON,
        &format!(
            "{}on_invalid_grant = \"serve_until_expiry\"\n",
            provider_toml("p", &fake)
        ),
    )
    .await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    fake.revoke_all();
    let run = daemon.cli(&["refresh", "c"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("needs re-authorization"), "{run:?}");
    assert!(run.stderr.contains(expected_code), "{run:?}");

    let status = daemon.status("c").await;
    assert_eq!(status["state"], "needs_reauth");
    let table = daemon.cli(&["status"]).await;
    table.ok();
    assert!(table.stdout.contains("needs_reauth"), "{table:?}");

    // With `serve_until_expiry`, `get` still serves the access token until
    // it expires, with a warning that says what to do.
    let get = daemon.cli(&["get", "c"]).await;
    get.ok();
    assert!(fake.access_token_expiry(get.stdout.trim()).is_some());
    assert!(
        get.stderr
            .contains("warning: credential `c` needs re-authorization"),
        "{get:?}"
    );
    assert!(get.stderr.contains("tokend add c --provider p"), "{get:?}");
    assert!(daemon.logs().contains("needs_reauth"));

    // It is not refreshed again on its own; once the token has expired,
    // `get` fails with the reason.
    let count = fake.request_count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let expired = loop {
        let get = daemon.cli(&["get", "c"]).await;
        if get.code != 0 {
            break get;
        }
        assert!(std::time::Instant::now() < deadline, "token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Exit 3: the credential needs re-authorization.
    assert_eq!(expired.code, 3);
    assert!(expired.stdout.is_empty());
    assert!(
        expired.stderr.contains("needs re-authorization"),
        "{expired:?}"
    );
    assert_eq!(expired.stderr.lines().count(), 1, "{expired:?}");
    assert_eq!(fake.request_count(), count, "no refresh of a dead grant");

    // A new refresh token brings it back.
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    assert_eq!(daemon.status("c").await["state"], "active");
    // The digiRunner error echoes the refresh token; it must not leak into
    // any output either.
    let shown = format!(
        "{}{}{}{}",
        table.stdout, run.stderr, get.stderr, expired.stderr
    );
    assert_eq!(fake.find_leaks(&shown), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_means_needs_reauth() {
    needs_reauth_after_revocation(Flavor::Didit, "invalid_grant").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digirunner_401_invalid_token_means_needs_reauth() {
    needs_reauth_after_revocation(Flavor::DigiRunner, "invalid_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_while_the_valid_token_is_served() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(8))).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let token = daemon.cli(&["get", "c"]).await.stdout;
    fake.set_sticky_fault(Some(Fault::server_error(503)));
    // A forced refresh fails as unavailable; the old token is still served.
    let run = daemon.cli(&["refresh", "c"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("503"), "{run:?}");
    for fault in [
        Fault::Html(502),
        Fault::MalformedJson,
        Fault::Hang(Duration::from_secs(4)),
    ] {
        fake.set_sticky_fault(Some(fault));
        let before = fake.request_count();
        wait_until(Duration::from_secs(10), "a retry", || async {
            fake.request_count() > before
        })
        .await;
        let get = daemon.cli(&["get", "c"]).await;
        get.ok();
        assert_eq!(get.stdout, token, "the still-valid token is served");
        let status = daemon.status("c").await;
        assert_eq!(status["state"], "active");
        assert!(status["last_error"].is_string(), "{status}");
    }
    fake.set_sticky_fault(None);
    wait_until(Duration::from_secs(15), "recovery", || async {
        daemon.status("c").await["last_error"].is_null()
    })
    .await;
    assert_ne!(daemon.cli(&["get", "c"]).await.stdout, token);
    assert_eq!(fake.reused_refresh_tokens(), 0);
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_valid_refreshes_first_and_concurrent_callers_share_one_refresh() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(100)))
            .await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    assert_eq!(fake.refresh_count(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Eight callers at once want 99 s of validity; the token has about 98 s
    // left: exactly one refresh happens and every caller gets its token.
    let calls: Vec<_> = (0..8)
        .map(|_| daemon.cli(&["get", "c", "--min-valid", "99"]))
        .collect();
    let runs = futures::future::join_all(calls).await;
    let tokens: std::collections::HashSet<_> = runs.iter().map(|r| r.ok().stdout.clone()).collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(fake.refresh_count(), 2);

    // Validity the provider never grants is a clear error, not a loop.
    let run = daemon.cli(&["get", "c", "--min-valid", "500"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("valid for only"), "{run:?}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_and_unknown_names() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Bakrypt)).await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("b", &fake)).await;
    daemon.add("c", "b", &fake.issue_refresh_token()).await.ok();
    daemon.cli(&["remove", "c"]).await.ok();
    let get = daemon.cli(&["get", "c"]).await;
    assert_eq!(get.code, 1);
    assert!(get.stderr.contains("no credential named `c`"), "{get:?}");
    let add = daemon.add("d", "nosuch", "rt").await;
    assert_eq!(add.code, 1);
    assert!(
        add.stderr.contains("provider `nosuch` is not configured"),
        "{add:?}"
    );
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_pauses_removed_providers_rejects_bad_files_and_keeps_tokens() {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit)).await;
    let providers = provider_toml("p", &fake);
    let daemon = Daemon::start(FAST_DAEMON, &providers).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let token = daemon.cli(&["get", "c"]).await.stdout;

    // The provider is removed: the credential pauses, its token is kept.
    daemon.write_config(FAST_DAEMON, "");
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "the credential to pause",
        || async { daemon.status("c").await["state"] == "paused" },
    )
    .await;
    let status = daemon.status("c").await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("not in the configuration"),
        "{status}"
    );
    let get = daemon.cli(&["get", "c"]).await;
    get.ok();
    assert_eq!(get.stdout, token);
    assert!(get.stderr.contains("paused"), "{get:?}");

    // An invalid file is refused whole; the running configuration stays.
    std::fs::write(&daemon.config, "[daemon]\nretry_max = \"soon\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "the rejection to be logged",
        || async { daemon.logs().contains("new configuration rejected") },
    )
    .await;
    assert!(daemon.logs().contains("daemon.retry_max"));
    assert_eq!(daemon.status("c").await["state"], "paused");

    // The provider comes back: the credential resumes and refreshes.
    daemon.write_config(FAST_DAEMON, &providers);
    daemon.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "the credential to resume",
        || async { daemon.status("c").await["state"] == "active" },
    )
    .await;
    assert_eq!(
        daemon.cli(&["get", "c"]).await.stdout,
        token,
        "tokens survive reloads"
    );
    daemon.cli(&["refresh", "c"]).await.ok();
    assert_ne!(daemon.cli(&["get", "c"]).await.stdout, token);
    assert_eq!(fake.reused_refresh_tokens(), 0);
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_removed_during_a_refresh_leaves_the_daemon_responsive() {
    let fake = FakeProvider::start(
        FakeConfig::new(Flavor::Didit)
            .with_ttl(Duration::from_secs(3))
            .with_latency(Duration::from_millis(1500)),
    )
    .await;
    let daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    // A refresh is in flight (the provider is slow) when the reload lands.
    let in_flight = daemon.cli(&["refresh", "c"]);
    let reload = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        daemon.write_config(FAST_DAEMON, "");
        daemon.signal(libc::SIGHUP);
    };
    let (refreshed, ()) = tokio::join!(in_flight, reload);
    refreshed.ok();
    // Well past the new token's refresh point: the daemon must still answer
    // its owner's queue at once, and the credential stays paused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    let run = daemon.cli(&["refresh", "c"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refresher is stuck"
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("paused"), "{run:?}");
    assert_eq!(daemon.status("c").await["state"], "paused");
    daemon.finish(&[&fake]).await;
}
