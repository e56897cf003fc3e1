//! Tests of the owner itself: the real run loop under tokio's paused clock
//! with jobs that are only recorded (the test plays their part and sends
//! their reports), and a real job that panics.

use std::time::Duration;

use tokio::sync::mpsc;

use super::admission::Ticket;
use super::job::{Durability, Outcome, Work};
use super::*;
use crate::provider::FailureKind;
use crate::token::{LifetimeSource, Secret};

/// A fixed wall-clock time the paused clock starts at.
const T0: i64 = 1_700_000_000_000;

/// A job the run loop started.
pub(super) struct Started {
    pub(super) slot: u32,
    pub(super) generation: i64,
    pub(super) ticket: Option<Ticket>,
    pub(super) work: Work,
    /// When it started, on the refresher's clock.
    pub(super) at: i64,
}

/// A running refresher whose jobs are recorded, not run.
struct Harness {
    handle: RefresherHandle,
    started: mpsc::UnboundedReceiver<Started>,
    reports: mpsc::UnboundedSender<Report>,
    cancel: CancellationToken,
    names: Vec<String>,
    /// The owner's sink writer, for tests that play a job's writes.
    sinks: crate::sinks::Writer,
    _dir: tempfile::TempDir,
}

fn config(daemon: &str, providers: &[(&str, usize)]) -> Arc<Config> {
    let retry = if daemon.contains("retry_") {
        ""
    } else {
        "retry_initial = \"1s\"\nretry_max = \"10s\"\n"
    };
    let mut toml = format!("[daemon]\n{retry}{daemon}\n");
    for (name, cap) in providers {
        toml.push_str(&format!(
            "[providers.{name}]\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_auth = \"none\"\nmax_concurrent_refreshes = {cap}\n"
        ));
    }
    Arc::new(crate::config::parse_config(&toml).unwrap())
}

/// A credential of `provider` with no access token yet: due at once.
fn fresh(name: &str, provider: &str) -> Credential {
    Credential::new(name, provider, Some(Secret::new("rt")), T0)
}

/// A credential holding a token issued at `issued`, valid for `lifetime_ms`.
fn issued(name: &str, provider: &str, issued: i64, lifetime_ms: i64) -> Credential {
    let mut c = fresh(name, provider);
    c.access_token = Some(Secret::new("at"));
    c.expires_at = Some(issued + lifetime_ms);
    c.lifetime_source = Some(LifetimeSource::ExpiresIn);
    c.last_refresh_at = Some(issued);
    c
}

/// Stores `creds` (slots are handed out in load order), loads them at `T0`
/// and runs the refresher on tokio's clock, reading `T0` now. The clock is
/// paused once the database is loaded: the pool's timeouts would fire at
/// once on a clock that jumps ahead while it waits for SQLite's thread.
async fn harness(config: Arc<Config>, creds: &[Credential]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).await.unwrap();
    for c in creds {
        store.replace(c).await.unwrap();
    }
    let commits = GroupCommit::start(store.clone(), 8);
    let cancel = CancellationToken::new();
    let (tx, started) = mpsc::unbounded_channel();
    let parts = (
        store,
        commits,
        ProviderClient::new().unwrap(),
        cancel.clone(),
    );
    let launch = start::Launch::Record(tx);
    let (mut r, handle) = Refresher::load_with(config, parts, Clock::Fixed(T0), launch)
        .await
        .unwrap();
    tokio::time::pause();
    r.clock = Clock::Tokio {
        origin: tokio::time::Instant::now(),
        at_origin: T0,
    };
    let mut names = vec![String::new(); r.slots.len() as usize];
    for c in creds {
        let id = r.slots.id_of(&c.name).unwrap();
        names[id as usize] = c.name.clone();
    }
    let reports = r.reports_tx.clone();
    let sinks = r.sinks.clone();
    tokio::spawn(r.run());
    Harness {
        handle,
        started,
        reports,
        cancel,
        names,
        sinks,
        _dir: dir,
    }
}

impl Harness {
    /// The next job started within `within`, if any: its credential and
    /// time since `T0`.
    async fn next(&mut self, within: Duration) -> Option<(String, i64, Started)> {
        let s = tokio::time::timeout(within, self.started.recv())
            .await
            .ok()??;
        Some((self.names[s.slot as usize].clone(), s.at - T0, s))
    }

    /// The names of the jobs started at once, without time passing.
    async fn started_now(&mut self) -> Vec<(String, Started)> {
        let mut all = Vec::new();
        while let Some((name, _, s)) = self.next(Duration::from_millis(1)).await {
            all.push((name, s));
        }
        all
    }

    /// Ends a started job with `outcome`.
    fn finish(&self, s: Started, outcome: Outcome) {
        let report = Report::Job {
            slot: s.slot,
            generation: s.generation,
            ticket: s.ticket,
            outcome,
            sinks: None,
        };
        assert!(self.reports.send(report).is_ok());
    }

    /// Ends a started job with a token valid for an hour.
    fn refreshed(&self, name: &str, s: Started, now: i64) {
        let mut cred = issued(name, "p", now, 3_600_000);
        cred.generation = s.generation;
        self.finish(
            s,
            Outcome::Refreshed {
                cred,
                durability: Durability::Committed,
            },
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn transient(retry_after: Option<Duration>) -> Outcome {
    Outcome::Failed {
        cred: None,
        failure: Failure {
            kind: FailureKind::Transient,
            status: Some(503),
            error_code: None,
            message: "token endpoint answered 503".into(),
            retry_after,
            outcome_unknown: false,
        },
    }
}

/// A start the run loop slept for happened at `expected` (ms after `T0`):
/// tokio's timer counts whole milliseconds and rounds a deadline up, so it
/// may wake one millisecond late, never early.
fn assert_woken_at(at: i64, expected: i64) {
    assert!(
        (expected..=expected + 1).contains(&at),
        "woken at {at}, not {expected}"
    );
}

fn names(started: &[(String, Started)]) -> Vec<&str> {
    started.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn a_scheduled_refresh_starts_at_its_due_time_within_the_jitter() {
    // Issued at T0 for 100 s: due with 20% to 25% of it left.
    let config = config("", &[("p", 4)]);
    let mut h = harness(config, &[issued("c", "p", T0, 100_000)]).await;
    let (name, at, s) = h.next(Duration::from_secs(600)).await.unwrap();
    assert_eq!(name, "c");
    assert!((75_000..=80_000).contains(&at), "started {at} ms after T0");
    assert!(matches!(s.work, Work::Refresh { .. }));
    // Nothing else starts while the job runs.
    assert!(h.next(Duration::from_secs(3_600)).await.is_none());
}

#[tokio::test]
async fn the_provider_cap_bounds_starts_and_the_rest_start_in_queue_order() {
    let creds: Vec<_> = (0..5).map(|i| fresh(&format!("c{i}"), "p")).collect();
    let mut h = harness(config("", &[("p", 2)]), &creds).await;
    let order = h.names.clone();
    let first = h.started_now().await;
    assert_eq!(names(&first), [&order[0], &order[1]]);
    assert!(h.next(Duration::from_secs(3_600)).await.is_none());
    // Each finished job lets the oldest waiting one start, at once.
    let mut done = first.into_iter();
    let (n, s) = done.next().unwrap();
    h.refreshed(&n, s, T0);
    let second = h.started_now().await;
    assert_eq!(names(&second), [&order[2]]);
    let (n, s) = done.next().unwrap();
    h.refreshed(&n, s, T0);
    assert_eq!(names(&h.started_now().await), [&order[3]]);
}

#[tokio::test]
async fn the_global_cap_bounds_starts_across_providers() {
    let mut creds: Vec<_> = (0..3).map(|i| fresh(&format!("p{i}"), "p")).collect();
    creds.extend((0..3).map(|i| fresh(&format!("q{i}"), "q")));
    let config = config("max_concurrent_refreshes = 4", &[("p", 3), ("q", 3)]);
    let mut h = harness(config, &creds).await;
    let first = h.started_now().await;
    assert_eq!(first.len(), 4, "{:?}", names(&first));
    let (n, s) = first.into_iter().next().unwrap();
    h.refreshed(&n, s, T0);
    assert_eq!(h.started_now().await.len(), 1);
    assert!(h.next(Duration::from_secs(3_600)).await.is_none());
}

#[tokio::test]
async fn a_reload_lets_new_starts_obey_new_caps_while_old_jobs_run_on() {
    let creds: Vec<_> = (0..4).map(|i| fresh(&format!("c{i}"), "p")).collect();
    let mut h = harness(config("", &[("p", 1)]), &creds).await;
    let first = h.started_now().await;
    assert_eq!(first.len(), 1);
    h.handle.reload(config("", &[("p", 3)])).await.unwrap();
    // Two more start with the first still running: three in all.
    assert_eq!(h.started_now().await.len(), 2);
    h.handle.reload(config("", &[("p", 1)])).await.unwrap();
    let (n, s) = first.into_iter().next().unwrap();
    h.refreshed(&n, s, T0);
    // Two still run under the new cap of one: nothing starts.
    assert!(h.next(Duration::from_secs(60)).await.is_none());
}

#[tokio::test]
async fn a_retry_after_blocks_the_provider_until_it_ends() {
    let creds = [fresh("a", "p"), fresh("b", "p")];
    let mut h = harness(config("", &[("p", 1)]), &creds).await;
    let (first, at, s) = h.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(at, 0);
    h.finish(s, transient(Some(Duration::from_secs(30))));
    // Neither the failed one nor the other starts before the block ends.
    let (next, at, s) = h.next(Duration::from_secs(600)).await.unwrap();
    assert_woken_at(at, 30_000);
    assert_eq!(next, first, "ties go to the lower slot");
    h.refreshed(&next, s, T0 + at);
    let (other, at, _) = h.next(Duration::from_secs(600)).await.unwrap();
    assert_ne!(other, first);
    assert_woken_at(at, 30_000);
}

#[tokio::test]
async fn the_retry_backoff_is_capped_at_the_token_expiry() {
    // Due long ago, expiring 5 s from T0; retries back off 30 s to 60 s.
    let daemon = "retry_initial = \"60s\"\nretry_max = \"60s\"";
    let config = config(daemon, &[("p", 1)]);
    let mut h = harness(config, &[issued("c", "p", T0 - 95_000, 100_000)]).await;
    let (_, at, s) = h.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(at, 0);
    h.finish(s, transient(None));
    let (_, at, s) = h.next(Duration::from_secs(600)).await.unwrap();
    assert_woken_at(at, 5_000);
    // Once it has expired, the backoff alone counts.
    h.finish(s, transient(None));
    let (_, at, _) = h.next(Duration::from_secs(600)).await.unwrap();
    assert!((35_000..=65_000).contains(&at), "{at}");
}

#[tokio::test]
async fn a_read_that_needs_a_refresh_goes_before_the_scheduled_queue() {
    // `d` holds a token with 3590 s left, too little for the read.
    let creds = [
        fresh("a", "p"),
        fresh("b", "p"),
        issued("d", "p", T0 - 10_000, 3_600_000),
    ];
    let mut h = harness(config("", &[("p", 1)]), &creds).await;
    let (first, _, s) = h.next(Duration::from_secs(1)).await.unwrap();
    let handle = h.handle.clone();
    let read = tokio::spawn(async move { handle.token("d", Duration::from_secs(3_595)).await });
    assert!(
        h.next(Duration::from_secs(1)).await.is_none(),
        "no room yet"
    );
    h.refreshed(&first, s, T0);
    let (name, _, s) = h.next(Duration::from_secs(1)).await.unwrap();
    assert_eq!(name, "d");
    // Its refresh answers the read.
    h.refreshed("d", s, T0 + 10);
    let view = read.await.unwrap().unwrap();
    assert_eq!(view.expires_at, Some(T0 + 10 + 3_600_000));
    let (name, _, _) = h.next(Duration::from_secs(1)).await.unwrap();
    assert_ne!(name, first);
    assert_ne!(name, "d");
}

#[tokio::test]
async fn a_panicking_job_releases_its_credential_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db")).await.unwrap();
    store.replace(&fresh("c", "p")).await.unwrap();
    let commits = GroupCommit::start(store.clone(), 8);
    let client = ProviderClient::new().unwrap();
    let parts = (store, commits, client, CancellationToken::new());
    let (mut r, _handle) = Refresher::load_with(
        config("", &[("p", 1)]),
        parts,
        Clock::Wall,
        start::Launch::Spawn,
    )
    .await
    .unwrap();
    let id = r.slots.id_of("c").unwrap();
    job::PANIC_NEXT_JOB.store(true, std::sync::atomic::Ordering::SeqCst);
    r.start_job(id, job::JobKind::Refresh, r.now());
    assert!(r.slots.get(id).unwrap().view.refreshing);
    assert_eq!(r.admission.running(), 1);
    let report = tokio::time::timeout(Duration::from_secs(10), r.reports.recv())
        .await
        .expect("a panicking job must still report")
        .unwrap();
    r.on_report(report).await;
    let view = r.slots.view(id).unwrap();
    assert!(!view.refreshing);
    assert_eq!(r.admission.running(), 0);
    assert_eq!(r.admission.running_for("p"), 0);
    assert!(
        view.extras()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("unexpectedly")),
        "{view:?}"
    );
    assert!(view.next_refresh_at.is_some(), "retried with backoff");
}

#[tokio::test]
async fn a_refresh_that_wrote_before_a_reload_added_sinks_is_in_them_before_it_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let base = "[daemon]\nretry_initial = \"1s\"\nretry_max = \"10s\"\n\
        [providers.p]\ntoken_url = \"http://127.0.0.1:9/t\"\nclient_auth = \"none\"\n";
    let parse = |toml: &str| Arc::new(crate::config::parse_config(toml).unwrap());
    let mut h = harness(parse(base), &[fresh("c", "p")]).await;
    let (_, _, s) = h.next(Duration::from_secs(1)).await.unwrap();
    // The job commits its token and writes the sinks of its time: none.
    let mut cred = issued("c", "p", T0, 3_600_000);
    cred.access_token = Some(Secret::new("new"));
    cred.generation = s.generation;
    let ticket = h.sinks.ticket();
    let version = h
        .sinks
        .write("c", ticket, crate::sinks::Current::of_credential(&cred))
        .await;
    assert!(version.is_none());
    // A reload gives the credential a sink before the job reports; nothing
    // is served yet, so nothing is written.
    let with_sink = format!(
        "{base}[credentials.c]\nreaders = [\"uid:0\"]\n[[credentials.c.sinks]]\npath = {path:?}\n"
    );
    h.handle.reload(parse(&with_sink)).await.unwrap();
    assert!(!path.exists());
    let report = Report::Job {
        slot: s.slot,
        generation: s.generation,
        ticket: s.ticket,
        outcome: Outcome::Refreshed {
            cred,
            durability: Durability::Committed,
        },
        sinks: Some(start::SinkWrite { ticket, version }),
    };
    assert!(h.reports.send(report).is_ok());
    // The moment the new token is served, the new sink holds it.
    loop {
        let served = h.handle.view("c").and_then(|v| v.access_token.clone());
        if served.as_ref().map(Secret::expose) == Some("new") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(std::fs::read_to_string(&path).ok().as_deref(), Some("new"));
}
