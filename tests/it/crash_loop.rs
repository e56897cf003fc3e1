//! A crash loop against a provider with a short reuse grace: kill the daemon
//! again and again while its refreshes are slow and every credential is due,
//! and check that each refresh interrupted by a kill is retried while the
//! provider still accepts the spent refresh token, so none is lost.

use std::time::Duration;

use serde_json::Value;

use crate::support::fake_provider::{FakeConfig, FakeProvider, FamilyOnReuse, Flavor};
use crate::support::{add_families, provider_toml, wait_until, Daemon, FAST_DAEMON};

const CREDENTIALS: usize = 20;
const KILLS: usize = 15;
const GRACE: Duration = Duration::from_secs(5);
const LATENCY: Duration = Duration::from_millis(650);
/// Short enough that the provider's four slots cannot keep up: every
/// credential is due at every restart.
const TTL: Duration = Duration::from_secs(2);

fn name(i: usize) -> String {
    format!("c{i:02}")
}

async fn states(daemon: &Daemon) -> Vec<String> {
    let run = daemon.cli(&["status", "--json"]).await;
    run.ok();
    let list: Vec<Value> = serde_json::from_str(&run.stdout).expect("status JSON");
    let mut named: Vec<(String, String)> = list
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    named.sort();
    named.into_iter().map(|(_, state)| state).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_retries_interrupted_refreshes_within_the_reuse_grace() {
    let fake = FakeProvider::start(
        FakeConfig::new(Flavor::Didit)
            .with_ttl(TTL)
            .with_reuse_grace(GRACE)
            .with_family_on_reuse(FamilyOnReuse::Revoked)
            .with_latency(LATENCY),
    )
    .await;
    let mut daemon = Daemon::start(
        FAST_DAEMON,
        &format!(
            "{}max_concurrent_refreshes = 4\n",
            provider_toml("p", &fake)
        ),
    )
    .await;
    let families = add_families(&daemon, &fake, CREDENTIALS, name, CREDENTIALS).await;

    for _ in 0..KILLS {
        let pause = rand::random_range(0..=1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill().await;
        daemon.spawn().await;
    }

    // Settled: every credential refreshed since the last kill, or lost.
    let after: Vec<usize> = families
        .iter()
        .map(|f| fake.family_refresh_count(*f))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "every credential to settle",
        || {
            let (daemon, fake, families, after) = (&daemon, &fake, &families, &after);
            async move {
                let states = states(daemon).await;
                states.len() == CREDENTIALS
                    && states
                        .iter()
                        .zip(families.iter().zip(after))
                        .all(|(s, (f, a))| {
                            s == "needs_reauth" || fake.family_refresh_count(*f) > *a
                        })
            }
        },
    )
    .await;
    let lost: Vec<String> = states(&daemon)
        .await
        .iter()
        .enumerate()
        .filter(|(_, s)| *s != "active")
        .map(|(i, s)| format!("{} {s}", name(i)))
        .collect();
    eprintln!(
        "crash loop: {KILLS} kills, {} refreshes, {} reused within grace, {} outside, {} interrupted refreshes logged",
        fake.refresh_count(),
        fake.reused_within_grace(),
        fake.reused_refresh_tokens(),
        daemon.logs().matches("refresh_interrupted").count()
    );
    assert!(
        lost.is_empty(),
        "{} credential(s) lost in the crash loop: {lost:?}",
        lost.len()
    );
    let alive = fake.current_refresh_tokens_by_family();
    assert!(families.iter().all(|f| alive.contains_key(f)));
    assert_eq!(
        fake.reused_refresh_tokens(),
        0,
        "a refresh token was sent again after the provider's grace"
    );
    daemon.finish(&[&fake]).await;
}
