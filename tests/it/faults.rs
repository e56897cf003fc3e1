//! The fault matrix: one test per way a token endpoint can fail. Transient
//! faults are retried by the daemon on its own while the still-valid token
//! keeps being served, and it recovers by itself once the fault clears;
//! terminal answers (`invalid_grant`, `invalid_client`) stop refreshing but
//! keep serving the unexpired token with a warning; a 429 with Retry-After
//! keeps every credential of that provider away from it for that long.

use std::time::{Duration, Instant};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Fault, Flavor};
use crate::support::{provider_toml, wait_until, Daemon, Run, FAST_DAEMON};

/// Long enough that the first token stays valid for the whole test.
const TTL: Duration = Duration::from_secs(60);

async fn start(names: &[&str]) -> (FakeProvider, Daemon) {
    start_with(names, "").await
}

/// As [`start`], with `extra` keys in the provider's table.
async fn start_with(names: &[&str], extra: &str) -> (FakeProvider, Daemon) {
    let fake = FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(TTL)).await;
    let daemon = Daemon::start(
        FAST_DAEMON,
        &format!("{}{extra}", provider_toml("p", &fake)),
    )
    .await;
    for name in names {
        daemon
            .add(name, "p", &fake.issue_refresh_token())
            .await
            .ok();
    }
    (fake, daemon)
}

/// `tokend get NAME`, which must succeed with a token the fake issued and
/// that is still valid; returns the run (stdout trimmed to the token).
async fn get(daemon: &Daemon, fake: &FakeProvider, name: &str) -> Run {
    let mut run = daemon.cli(&["get", name]).await;
    run.ok();
    run.stdout = run.stdout.trim().to_string();
    let expiry = fake
        .access_token_expiry(&run.stdout)
        .unwrap_or_else(|| panic!("`get {name}` served a token the provider never issued"));
    assert!(
        expiry > std::time::SystemTime::now(),
        "`get {name}` served an expired token"
    );
    run
}

/// `get` still serves exactly `token`, and the daemon is still up.
async fn still_serves(daemon: &mut Daemon, fake: &FakeProvider, name: &str, token: &str) -> Run {
    assert!(daemon.is_running(), "tokend died: {}", daemon.logs());
    let run = get(daemon, fake, name).await;
    assert_eq!(run.stdout, token, "the still-valid token must be served");
    run
}

/// A failed command: exit 1, nothing on stdout, one line on stderr.
fn assert_one_line_failure(run: &Run) {
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");
}

fn assert_contains_all(text: &str, expected: &[&str], what: &str) {
    for e in expected {
        assert!(text.contains(e), "{what} {text:?} does not mention {e:?}");
    }
}

/// The shared scenario for a transient fault: set it (sticky), force a
/// refresh, let the daemon retry on its own while `get` keeps serving the
/// valid token, check the status names the problem, clear the fault and
/// wait for the daemon to recover by itself with a new token.
async fn transient(fault: Fault, expected: &[&str]) {
    let (fake, mut daemon) = start(&["c"]).await;
    let token = get(&daemon, &fake, "c").await.stdout;

    fake.set_sticky_fault(Some(fault.clone()));
    let before = fake.request_count();
    let run = daemon.cli(&["refresh", "c"]).await;
    assert_one_line_failure(&run);
    assert_contains_all(&run.stderr, expected, "`tokend refresh c` said");
    assert!(
        fake.request_count() > before,
        "the forced refresh was not sent"
    );

    // The daemon retries on its own (at least twice more) meanwhile.
    let deadline = Instant::now() + Duration::from_secs(12);
    while fake.request_count() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "{fault:?}: the daemon did not retry on its own ({} requests since the fault)",
            fake.request_count() - before
        );
        still_serves(&mut daemon, &fake, "c", &token).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = still_serves(&mut daemon, &fake, "c", &token).await;
    assert!(
        run.stderr.is_empty(),
        "no warning while merely retrying: {run:?}"
    );
    let status = daemon.status("c").await;
    assert_eq!(status["state"], "active", "{status}");
    let last_error = status["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{fault:?}: no last_error: {status}"));
    eprintln!("{fault:?}: last_error = {last_error}");
    assert_contains_all(last_error, expected, "last_error");

    fake.set_sticky_fault(None);
    wait_until(Duration::from_secs(10), "recovery on its own", || async {
        let s = daemon.status("c").await;
        s["last_error"].is_null() && s["state"] == "active"
    })
    .await;
    let fresh = get(&daemon, &fake, "c").await.stdout;
    assert_ne!(fresh, token, "a new token after recovery");
    assert!(daemon.is_running());
    assert_eq!(fake.reused_refresh_tokens(), 0);
    assert_eq!(fake.rejections(), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_500() {
    transient(Fault::server_error(500), &["answered 500"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_502() {
    transient(Fault::server_error(502), &["answered 502"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_503() {
    transient(Fault::server_error(503), &["answered 503"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_504() {
    transient(Fault::server_error(504), &["answered 504"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_hang_longer_than_the_request_timeout() {
    transient(Fault::Hang(Duration::from_secs(5)), &["no answer within"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_connection_reset() {
    // reqwest's own words; the daemon names the token URL.
    transient(Fault::Reset, &["request failed", "127.0.0.1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_truncated_json() {
    transient(Fault::MalformedJson, &["not JSON"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_html_error_page() {
    transient(Fault::Html(502), &["502", "text/html"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_empty_200() {
    transient(Fault::Empty200, &["not JSON", "0 bytes"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_64_mb_body() {
    transient(Fault::HugeBody(64 << 20), &["larger than"]).await;
}

/// Asserts that no token request reaches the fake for `period`.
async fn no_requests_for(fake: &FakeProvider, period: Duration, why: &str) {
    let count = fake.request_count();
    tokio::time::sleep(period).await;
    assert_eq!(fake.request_count(), count, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_needs_reauth_and_keeps_serving_the_valid_token() {
    let (fake, mut daemon) =
        start_with(&["c"], "on_invalid_grant = \"serve_until_expiry\"\n").await;
    let token = get(&daemon, &fake, "c").await.stdout;

    fake.push_fault(Fault::oauth_error(400, "invalid_grant"));
    let run = daemon.cli(&["refresh", "c"]).await;
    assert_one_line_failure(&run);
    assert_contains_all(
        &run.stderr,
        &["needs re-authorization", "invalid_grant"],
        "`tokend refresh c` said",
    );
    let status = daemon.status("c").await;
    assert_eq!(status["state"], "needs_reauth", "{status}");
    assert_contains_all(
        status["last_error"].as_str().unwrap_or_default(),
        &["invalid_grant"],
        "last_error",
    );

    // Terminal: nothing more is sent on its own.
    no_requests_for(&fake, Duration::from_secs(2), "a dead grant was retried").await;

    // The unexpired token is still served, with a warning saying what to do.
    let get_run = still_serves(&mut daemon, &fake, "c", &token).await;
    assert_contains_all(
        &get_run.stderr,
        &["needs re-authorization", "tokend add c --provider p"],
        "`tokend get c` warned",
    );

    // The operator brings it back with a new refresh token.
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();
    let status = daemon.status("c").await;
    assert_eq!(status["state"], "active", "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    let run = get(&daemon, &fake, "c").await;
    assert_ne!(run.stdout, token);
    assert!(run.stderr.is_empty(), "{run:?}");
    assert_eq!(fake.reused_refresh_tokens(), 0);
    assert_eq!(fake.rejections(), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_pauses_and_keeps_serving_the_valid_token() {
    let (fake, mut daemon) = start(&["c"]).await;
    let token = get(&daemon, &fake, "c").await.stdout;

    fake.set_sticky_fault(Some(Fault::oauth_error(401, "invalid_client")));
    let run = daemon.cli(&["refresh", "c"]).await;
    assert_one_line_failure(&run);
    assert_contains_all(&run.stderr, &["invalid_client"], "`tokend refresh c` said");
    let status = daemon.status("c").await;
    assert_eq!(status["state"], "paused", "{status}");
    assert_contains_all(
        status["last_error"].as_str().unwrap_or_default(),
        &["invalid_client"],
        "last_error",
    );

    no_requests_for(
        &fake,
        Duration::from_secs(2),
        "a paused credential was retried",
    )
    .await;

    let get_run = still_serves(&mut daemon, &fake, "c", &token).await;
    assert_contains_all(&get_run.stderr, &["paused"], "`tokend get c` warned");

    // Fixed at the provider: an operator's refresh resumes it.
    fake.set_sticky_fault(None);
    daemon.cli(&["refresh", "c"]).await.ok();
    let status = daemon.status("c").await;
    assert_eq!(status["state"], "active", "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    let run = get(&daemon, &fake, "c").await;
    assert_ne!(run.stdout, token);
    assert!(run.stderr.is_empty(), "{run:?}");
    assert_eq!(fake.reused_refresh_tokens(), 0);
    assert_eq!(fake.rejections(), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_keeps_every_credential_of_the_provider_away() {
    const RETRY_AFTER: Duration = Duration::from_secs(3);
    let names = ["c1", "c2", "c3", "c4", "c5"];
    let (fake, mut daemon) = start(&names).await;
    let mut tokens = Vec::new();
    for name in names {
        tokens.push(get(&daemon, &fake, name).await.stdout);
    }

    fake.set_sticky_fault(Some(Fault::rate_limited(RETRY_AFTER.as_secs())));
    let before = fake.request_count();
    let run = daemon.cli(&["refresh", "c1"]).await;
    assert_one_line_failure(&run);
    let times = fake.request_times();
    assert_eq!(times.len(), before + 1, "one request for c1");
    let first_429 = times[before];

    // The other credentials of the provider fail fast without calling it.
    for name in &names[1..] {
        let started = Instant::now();
        let run = daemon.cli(&["refresh", name]).await;
        let took = started.elapsed();
        assert_one_line_failure(&run);
        assert!(
            run.stderr.contains("Retry-After") || run.stderr.contains("asked"),
            "{run:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "`refresh {name}` took {took:?}"
        );
    }
    // Tokens are served throughout.
    for (name, token) in names.iter().zip(&tokens) {
        still_serves(&mut daemon, &fake, name, token).await;
    }
    let status = daemon.status("c1").await;
    assert_eq!(status["state"], "active", "{status}");
    assert_contains_all(
        status["last_error"].as_str().unwrap_or_default(),
        &["429"],
        "last_error",
    );

    // Nothing reaches the provider for (almost) the whole Retry-After.
    let quiet_until = first_429 + RETRY_AFTER - Duration::from_millis(200);
    while Instant::now() < quiet_until {
        for (name, token) in names.iter().zip(&tokens) {
            still_serves(&mut daemon, &fake, name, token).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Requests sent before the 429 was answered may still arrive just after it.
    let in_flight = Duration::from_millis(100);
    let early: Vec<Duration> = fake
        .request_times()
        .iter()
        .filter(|t| **t > first_429 + in_flight)
        .map(|t| t.duration_since(first_429))
        .filter(|d| *d < RETRY_AFTER - Duration::from_millis(200))
        .collect();
    assert!(
        early.is_empty(),
        "requests reached the provider {early:?} after its 429 with Retry-After: {}s",
        RETRY_AFTER.as_secs()
    );

    fake.set_sticky_fault(None);
    wait_until(
        Duration::from_secs(10),
        "every credential to recover",
        || async {
            for name in names {
                let s = daemon.status(name).await;
                if !(s["last_error"].is_null() && s["state"] == "active") {
                    return false;
                }
            }
            true
        },
    )
    .await;
    for (name, token) in names.iter().zip(&tokens) {
        let run = get(&daemon, &fake, name).await;
        if *name == "c1" {
            assert_ne!(&run.stdout, token, "c1 was refreshed after the window");
        }
    }
    assert!(daemon.is_running());
    assert_eq!(fake.reused_refresh_tokens(), 0);
    assert_eq!(fake.rejections(), Vec::<String>::new());
    daemon.finish(&[&fake]).await;
}
