//! Crash safety: SIGKILL the daemon at random moments while 200 credentials
//! with short-lived tokens are being refreshed, restart it on the same files
//! each time, and check that nothing was lost: every credential keeps
//! refreshing, no refresh token is ever sent outside the provider's reuse
//! grace, and the database is intact.

use std::time::Duration;

use serde_json::Value;

use crate::support::fake_provider::{FakeConfig, FakeProvider, Flavor};
use crate::support::{add_families, provider_toml, Daemon, FAST_DAEMON};

const CREDENTIALS: usize = 200;
const KILLS: usize = 50;
const TTL: Duration = Duration::from_secs(4);
const LATENCY: Duration = Duration::from_millis(50);

fn name(i: usize) -> String {
    format!("c{i:03}")
}

/// The refresh count of every family, in credential order.
fn family_counts(fake: &FakeProvider, families: &[u64]) -> Vec<usize> {
    families
        .iter()
        .map(|f| fake.family_refresh_count(*f))
        .collect()
}

async fn integrity_check(database: &std::path::Path) -> String {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(database)
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open the database");
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&pool)
        .await
        .expect("integrity_check");
    pool.close().await;
    rows.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    let started = std::time::Instant::now();
    // Like Auth0's reuse interval or Okta's grace period: a refresh token
    // the daemon sent just before being killed (so it never learned of the
    // rotation) is still accepted when sent again after the restart.
    let fake = FakeProvider::start(
        FakeConfig::new(Flavor::Didit)
            .with_ttl(TTL)
            .with_reuse_grace(Duration::from_secs(30))
            // Refreshes take a while, so kills often land mid-refresh, after
            // the provider rotated the token and before the daemon heard.
            .with_latency(LATENCY),
    )
    .await;
    // 32 refreshes at once, overall and for the provider: 200 credentials
    // rotating every few seconds need it with that latency.
    let mut daemon = Daemon::start(
        &format!("{FAST_DAEMON}max_concurrent_refreshes = 32\n"),
        &format!(
            "{}max_concurrent_refreshes = 32\n",
            provider_toml("p", &fake)
        ),
    )
    .await;

    // 200 credentials, each its own grant family.
    let families = add_families(&daemon, &fake, CREDENTIALS, name, 16).await;
    assert!(
        family_counts(&fake, &families).iter().all(|c| *c >= 1),
        "every credential was refreshed once when added"
    );
    let after_add = started.elapsed();

    for _ in 0..KILLS {
        let pause = rand::random_range(50..=700);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill().await;
        assert!(daemon.socket.exists(), "SIGKILL leaves the socket file");
        // The daemon replaces the stale socket.
        daemon.spawn().await;
    }
    let after_kills = started.elapsed();

    // Every credential still refreshes on its own.
    let counts = family_counts(&fake, &families);
    tokio::time::sleep(3 * TTL).await;
    let later = family_counts(&fake, &families);
    let interrupted = daemon.logs().matches("refresh_interrupted").count();
    eprintln!(
        "crash test: {KILLS} kills, {} refreshes in total, {} reused within grace, \
         {} reused outside grace, {interrupted} interrupted refreshes logged \
         (adding took {after_add:?}, kills done at {after_kills:?}, checks at {:?})",
        fake.refresh_count(),
        fake.reused_within_grace(),
        fake.reused_refresh_tokens(),
        started.elapsed()
    );
    let stuck: Vec<String> = counts
        .iter()
        .zip(&later)
        .enumerate()
        .filter(|(_, (a, b))| b <= a)
        .map(|(i, _)| name(i))
        .collect();
    assert!(
        stuck.is_empty(),
        "{} credential(s) stopped refreshing after the kills: {stuck:?}",
        stuck.len()
    );

    let run = daemon.cli(&["status", "--json"]).await;
    run.ok();
    let list: Vec<Value> = serde_json::from_str(&run.stdout).expect("status JSON");
    assert_eq!(list.len(), CREDENTIALS);
    let not_active: Vec<&Value> = list.iter().filter(|s| s["state"] != "active").collect();
    assert!(not_active.is_empty(), "not active: {not_active:?}");
    for i in [0, CREDENTIALS / 2, CREDENTIALS - 1] {
        let get = daemon.cli(&["get", &name(i)]).await;
        get.ok();
        assert!(fake.access_token_expiry(get.stdout.trim()).is_some());
    }
    assert_eq!(
        fake.reused_refresh_tokens(),
        0,
        "a refresh token was sent again outside the provider's grace"
    );
    assert_eq!(fake.rejections(), Vec::<String>::new());

    daemon.stop().await;
    assert_eq!(integrity_check(&daemon.database).await, "ok");
    daemon.finish(&[&fake]).await;
}
