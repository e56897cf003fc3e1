//! The scale benchmark's scenario (`benches/scale/scenario.rs`) at a reduced
//! size, on the debug daemon: 10,000 credentials generated in the database,
//! a 2 s idle window, then a restart with 200 of them due at one instant.
//! It asserts correctness only, never a timing: the daemon gets ready and
//! serves every credential, each burst credential is refreshed once and its
//! rotated refresh token is in the database after the daemon stops, and no
//! token reaches the daemon's log.

use std::path::PathBuf;
use std::time::Duration;

// The scenario reaches the fake as `super::fake_provider`.
use crate::support::fake_provider;

#[path = "../../benches/scale/scenario.rs"]
mod scenario;

use fake_provider::{FakeConfig, FakeProvider, Flavor};

const N: usize = 10_000;
const BURST: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_credentials_load_idle_and_refresh_a_burst_on_time_and_durably() {
    let fake = FakeProvider::start(
        FakeConfig::new(Flavor::Didit).with_ttl(Duration::from_secs(24 * 3600)),
    )
    .await;
    let params = scenario::ScaleParams {
        tokend: PathBuf::from(env!("CARGO_BIN_EXE_tokend")),
        n: N,
        burst: BURST,
        idle: Duration::from_secs(2),
        settle: Duration::from_millis(300),
        lead: Duration::from_millis(1500),
        concurrency: 16,
        // As the other integration tests run it: every event, so the leak
        // scan below covers the most log lines.
        rust_log: Some("trace,hyper=info,h2=info,sqlx=info,reqwest=info,rustls=info".into()),
        list_all: true,
        start_timeout: Duration::from_secs(60),
    };
    let (out, layout) = scenario::run_scale(&params, &fake, &|line| eprintln!("scale: {line}"))
        .await
        .unwrap_or_else(|e| panic!("scale scenario failed: {e}"));
    eprintln!(
        "scale: ready {:?}, RSS {} kB, idle {} ticks and {} wake-ups in {:?}, lateness p50 {} ms, max {} ms",
        out.ready,
        out.mem_ready.rss_kb,
        out.idle.cpu_ticks,
        out.idle.wakeups,
        out.idle.window,
        scenario::pct(&out.lateness_ms, 0.5),
        scenario::pct(&out.lateness_ms, 1.0),
    );
    let logs = layout.logs();

    assert_eq!(out.visible, N, "credentials served (GET /v1/health)");
    assert_eq!(out.listed, Some(N), "active credentials listed by name");
    assert_eq!(
        (out.refreshed, out.refreshed_twice),
        (BURST, 0),
        "each burst credential refreshed exactly once"
    );
    assert!(
        out.committed_after_t.is_some(),
        "the burst was never committed"
    );
    assert_eq!(
        out.db_current, BURST,
        "rotated refresh tokens in the database after stop"
    );
    assert_eq!(
        out.unexpected_requests, 0,
        "token requests other than the burst"
    );
    assert!(
        fake.rejections().is_empty(),
        "wire-format problems: {:?}",
        fake.rejections()
    );

    assert!(logs.contains("tokend started"), "no log captured: {logs}");
    let leaks = fake.find_leaks(&logs);
    assert!(
        leaks.is_empty(),
        "fake-issued secrets in the log: {leaks:?}"
    );
    // The generated rows' tokens were loaded, never refreshed: a sample of
    // them must not be logged either (all of them would make the scan slow).
    let sample = scenario::sample_scale_tokens(scenario::SEED, N, 50);
    let leaks = fake_provider::find_leaks(&sample, &logs);
    assert!(leaks.is_empty(), "loaded tokens in the log: {leaks:?}");
    fake.shutdown().await;
}
