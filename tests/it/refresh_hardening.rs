//! The refresh schedule holds against its callers and its provider: reads
//! cannot force refreshes (`min_valid` is capped and rate-limited, backoff is
//! obeyed), a read waits a bounded time, and a rejected grant's token is withheld
//! unless the provider is configured to serve it.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;
use tokend::api::ErrorKind;
use tokend::client::{Client, ClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Fault, Flavor};
use crate::support::{cli_as, provider_toml, wait_until, write_private, Daemon, Run, FAST_DAEMON};

const SOCKET_GID: u32 = 4252;
const READER_UID: u32 = 1000;

/// `FAST_DAEMON` with another `min_refresh_interval`.
fn daemon_with_interval(interval: &str) -> String {
    FAST_DAEMON.replace(
        "min_refresh_interval = \"500ms\"",
        &format!("min_refresh_interval = \"{interval}\""),
    )
}

/// Runs the CLI as the reader uid (not an administrator).
async fn as_reader(daemon: &Daemon, args: &[&str]) -> Run {
    cli_as(&daemon.socket, READER_UID, SOCKET_GID, &[], args).await
}

/// The raw HTTP answer (head and body) to `GET path`.
async fn raw_get(daemon: &Daemon, path: &str) -> String {
    let mut s = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cannot_force_refreshes_with_min_valid() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(100)))
            .await;
    let daemon = Daemon::start(
        &format!("{FAST_DAEMON}socket_group = \"{SOCKET_GID}\"\n"),
        &format!(
            "{}readers = [\"uid:{READER_UID}\"]\n",
            provider_toml("p", &fake)
        ),
    )
    .await;
    daemon.open_to_other_users();
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let token = as_reader(&daemon, &["get", "c"]).await;
    token.ok();
    let before = fake.refresh_count();

    for _ in 0..50 {
        let run = as_reader(&daemon, &["get", "c", "--min-valid", "99999999"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        assert!(
            run.stderr.contains("valid for only 100s") && run.stderr.contains("min_valid"),
            "{run:?}"
        );
    }
    // Root just above the lifetime: refused the same way.
    let run = daemon.cli(&["get", "c", "--min-valid", "101"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        fake.refresh_count(),
        before,
        "a min_valid read reached the provider"
    );

    // On the wire: 422 with its own kind.
    let err = Client::new(&daemon.socket)
        .call::<Value>(
            Method::GET,
            "/v1/tokens/c?min_valid=18446744073709551615",
            None::<&()>,
        )
        .await
        .unwrap_err();
    match err {
        ClientError::Api { status, body } => {
            assert_eq!(status.as_u16(), 422, "{body:?}");
            assert_eq!(body.error, ErrorKind::MinValidUnsatisfiable);
        }
        other => panic!("{other:?}"),
    }
    // And a forced refresh stays an administrator's.
    let run = as_reader(&daemon, &["refresh", "c"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(fake.refresh_count(), before);
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_valid_refreshes_at_most_once_per_min_refresh_interval() {
    const INTERVAL: Duration = Duration::from_secs(3);
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(10))).await;
    let daemon = Daemon::start(&daemon_with_interval("3s"), &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let before = fake.refresh_count();
    let started = Instant::now();
    // Nine of ten seconds: met for about a second after each refresh.
    let (mut served, mut refused) = (0, 0);
    while started.elapsed() < Duration::from_millis(6500) {
        let run = daemon.cli(&["get", "c", "--min-valid", "9"]).await;
        if run.code == 0 {
            served += 1;
        } else {
            refused += 1;
            assert!(
                run.stderr.contains("refreshed") && run.stderr.contains("retry in"),
                "{run:?}"
            );
        }
    }
    let refreshes = fake.refresh_count() - before;
    let allowed = (started.elapsed().as_millis() / INTERVAL.as_millis()) as usize + 1;
    assert!(
        refreshes <= allowed,
        "{refreshes} refreshes in {:?} with min_refresh_interval {INTERVAL:?} ({served} served, {refused} refused)",
        started.elapsed()
    );
    assert!(
        refused > 0 && served > 0,
        "{served} served, {refused} refused"
    );

    // The refusal is a 503 with Retry-After.
    let answer = loop {
        let a = raw_get(&daemon, "/v1/tokens/c?min_valid=9").await;
        if a.starts_with("HTTP/1.1 503") {
            break a;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{a}");
    };
    assert!(
        answer.to_lowercase().contains("\r\nretry-after: "),
        "{answer}"
    );
    assert!(answer.contains("\"unavailable\""), "{answer}");
    daemon.finish(&[&fake]).await;
}

async fn revoked(on_invalid_grant: Option<&str>) -> (FakeProvider, Daemon) {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(300)))
            .await;
    let mode = on_invalid_grant.map_or(String::new(), |m| format!("on_invalid_grant = \"{m}\"\n"));
    let daemon = Daemon::start(FAST_DAEMON, &format!("{}{mode}", provider_toml("p", &fake))).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    daemon.cli(&["get", "c"]).await.ok();
    fake.revoke_all();
    let run = daemon.cli(&["refresh", "c"]).await;
    assert!(run.stderr.contains("needs re-authorization"), "{run:?}");
    assert_eq!(daemon.status("c").await["state"], "needs_reauth");
    (fake, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_withholds_its_token_by_default() {
    let (fake, daemon) = revoked(None).await;
    let run = daemon.cli(&["get", "c"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert!(run.stderr.contains("needs re-authorization"), "{run:?}");
    let err = Client::new(&daemon.socket)
        .call::<Value>(Method::GET, "/v1/tokens/c", None::<&()>)
        .await
        .unwrap_err();
    match err {
        ClientError::Api { status, body } => {
            assert_eq!((status.as_u16(), body.error), (409, ErrorKind::NeedsReauth))
        }
        other => panic!("{other:?}"),
    }
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_until_expiry_serves_a_revoked_grants_token_marked_as_such() {
    let (fake, daemon) = revoked(Some("serve_until_expiry")).await;
    let run = daemon.cli(&["get", "c", "--json"]).await;
    run.ok();
    let token: Value = serde_json::from_str(&run.stdout).expect("token JSON");
    assert_eq!(token["state"], "needs_reauth", "{token}");
    assert!(
        token["warning"]
            .as_str()
            .unwrap_or_default()
            .contains("needs re-authorization"),
        "{token}"
    );
    assert!(fake
        .access_token_expiry(token["access_token"].as_str().unwrap())
        .is_some());
    assert!(run.stderr.contains("warning:"), "{run:?}");
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_knows_on_invalid_grant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let check = |value: &'static str| {
        let file = file.clone();
        async move {
            write_private(
                &file,
                &format!(
                    "[providers.p]\ntoken_url = \"https://p.example/t\"\nclient_auth = \"none\"\non_invalid_grant = \"{value}\"\n"
                ),
            );
            crate::support::cli_at(
                std::path::Path::new("/nonexistent"),
                &["check-config", file.to_str().unwrap()],
                None,
            )
            .await
        }
    };
    check("withhold").await.ok();
    check("serve_until_expiry").await.ok();
    let run = check("sometimes").await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("providers.p.on_invalid_grant"),
        "{run:?}"
    );
}

/// Waits until `c`'s access token has expired.
async fn until_expired(daemon: &Daemon) {
    wait_until(Duration::from_secs(20), "the token to expire", || async {
        daemon.status("c").await["expires_in"]
            .as_i64()
            .is_some_and(|s| s < 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_an_outage_follow_the_backoff_schedule() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(2))).await;
    // Every retry 0.5-1 s after the last failure.
    let extra = FAST_DAEMON
        .replace("retry_initial = \"200ms\"", "retry_initial = \"1s\"")
        .replace("retry_max = \"2s\"", "retry_max = \"1s\"");
    let daemon = Daemon::start(&extra, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    fake.set_sticky_fault(Some(Fault::server_error(500)));
    until_expired(&daemon).await;

    let before = fake.request_count();
    let started = Instant::now();
    let mut gets = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let run = daemon.cli(&["get", "c"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains("500"), "{run:?}");
        gets += 1;
    }
    let calls = fake.request_count() - before;
    let allowed = (started.elapsed().as_millis() / 500) as usize + 1;
    assert!(
        calls <= allowed,
        "{calls} provider calls for {gets} reads in {:?}; the backoff allows {allowed}",
        started.elapsed()
    );
    // Once the provider is back, the schedule recovers on its own.
    fake.set_sticky_fault(None);
    wait_until(Duration::from_secs(10), "recovery", || async {
        daemon.cli(&["get", "c"]).await.code == 0
    })
    .await;
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waits_at_most_read_timeout_for_a_hanging_provider() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(2))).await;
    let extra = format!(
        "{}read_timeout = \"1s\"\n",
        FAST_DAEMON.replace("request_timeout = \"2s\"", "request_timeout = \"20s\"")
    );
    let daemon = Daemon::start(&extra, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    fake.set_sticky_fault(Some(Fault::Hang(Duration::from_secs(30))));
    until_expired(&daemon).await;

    let started = Instant::now();
    let run = daemon.cli(&["get", "c"]).await;
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("read timeout of 1s"), "{run:?}");
    assert!(took < Duration::from_secs(4), "`get` took {took:?}");
    let err = Client::new(&daemon.socket)
        .call::<Value>(Method::GET, "/v1/tokens/c", None::<&()>)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status, body } if status.as_u16() == 503 && body.error == ErrorKind::Unavailable),
        "{err:?}"
    );
    fake.set_sticky_fault(None);
    daemon.finish(&[&fake]).await;
}
