//! Absurd values from a provider: a `Retry-After` of 2^64−1 seconds keeps
//! the provider away for an hour at most, and the daemon carries on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::fake_provider::{FakeConfig, FakeProvider, Fault, Flavor};
use crate::support::{provider_toml, Daemon, FAST_DAEMON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_is_capped_at_an_hour() {
    let fake =
        FakeProvider::start(FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(3600)))
            .await;
    let mut daemon = Daemon::start(FAST_DAEMON, &provider_toml("p", &fake)).await;
    daemon.add("c", "p", &fake.issue_refresh_token()).await.ok();

    fake.push_fault(Fault::rate_limited(u64::MAX));
    let run = daemon.cli(&["refresh", "c"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(daemon.is_running(), "tokend died: {}", daemon.logs());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let status = daemon.status("c").await;
    assert_eq!(status["state"], "active", "{status}");
    let next = status["next_refresh_at"].as_i64().expect("scheduled");
    assert!(
        (now + 3590..=now + 3605).contains(&next),
        "next refresh in {}s: {status}",
        next - now
    );
    let logs = daemon.logs();
    assert!(
        logs.contains(&u64::MAX.to_string()) && logs.contains("3600s at most"),
        "the cap is logged with the value asked for"
    );
    daemon.finish(&[&fake]).await;
}
