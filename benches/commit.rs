//! Durable-commit benchmark: refresh outcomes committed per second
//! with one fsync per write, against grouped commits ([`GroupCommit`]).
//!
//! ```text
//! cargo bench --bench commit                        # full run (~1 min)
//! TOKEND_BENCH_QUICK=1 cargo bench --bench commit   # quick run (a few seconds)
//! cargo bench --bench commit -- --quick             # same
//! ```
//!
//! A real SQLite file in a temporary directory, opened with `Store::open`
//! (WAL, `synchronous=FULL`: every commit is fsynced), holds 10,000
//! credentials (quick: 2,000) with an 800-byte access token each. The run
//! goes in rounds (quick: one), each running every scenario in turn for a
//! slice of 0.3 s warm-up and 1 s counted, so that the disk's drifting
//! latency hits all scenarios alike; each slice starts from a checkpointed,
//! empty WAL. The scenarios:
//!
//! - (a) `Store::save_outcomes` of one outcome at a time: one statement,
//!   one commit, one fsync per refresh;
//! - (b) the same from 64 concurrent tasks (what concurrency alone gives
//!   through the store's 4 connections);
//! - (c) `GroupCommit::save` from 64 concurrent tasks;
//! - (e) `GroupCommit::save` from 1 task (light load: no batching, and the
//!   queue must cost no more than (a));
//! - (d1) a whole refresh's writes, `Store::begin_refreshes` (the mark,
//!   which also reads the refresh token back) then `Store::save_outcomes`,
//!   each of one credential, one refresh at a time;
//! - (d2) the same from 64 concurrent tasks;
//! - (d3) `GroupCommit::begin` (which also reads the refresh token back)
//!   then `GroupCommit::save`, from 64 concurrent tasks.
//!
//! Each task works on its own credentials, so no two writes of one
//! credential are in flight together, as in the daemon. It prints a
//! Markdown table (with each ratio's spread over the rounds) and writes JSON
//! to `<target dir>/bench-commit.json`. It asserts no timing: a missed
//! target is reported, not failed.

#[path = "common/report.rs"]
mod report;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tokend::credential::Credential;
use tokend::store::{GroupCommit, GroupStats, Store};
use tokend::token::Secret;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; other flags are ignored. Other
    // arguments pick scenarios by id (`-- c d3`); a ratio needs its baseline.
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("TOKEND_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only: Vec<String> = args[1..]
        .iter()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("commit bench failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sizes = if quick { Sizes::QUICK } else { Sizes::FULL };
    match rt.block_on(run(sizes, &only)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("commit bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How much to measure.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    quick: bool,
    /// Credentials in the database.
    credentials: usize,
    /// Rounds: each runs every scenario once, in turn, so that drift (the
    /// disk's latency moves with other load) hits all scenarios alike.
    rounds: usize,
    /// Before each counted slice, not counted.
    warmup: Duration,
    /// The counted slice of each scenario in each round.
    window: Duration,
}

impl Sizes {
    const FULL: Sizes = Sizes {
        quick: false,
        credentials: 10_000,
        rounds: 5,
        warmup: Duration::from_millis(300),
        window: Duration::from_secs(1),
    };
    const QUICK: Sizes = Sizes {
        quick: true,
        credentials: 2_000,
        rounds: 1,
        warmup: Duration::from_millis(200),
        window: Duration::from_millis(700),
    };
}

/// Concurrent submitters in the concurrent scenarios: a daemon's
/// `max_concurrent_refreshes`-worth of refresh jobs.
const TASKS: usize = 64;

/// Requests per grouped transaction at most.
const MAX_BATCH: usize = 256;

/// Size of the stored access tokens (a JWT's order of magnitude).
const ACCESS_TOKEN_BYTES: usize = 800;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What one scenario does per refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// `save_outcomes` of one credential on the store.
    Save,
    /// `begin_refreshes` then `save_outcomes`, each of one credential, on
    /// the store.
    Pair,
    /// `GroupCommit::save`.
    GroupSave,
    /// `GroupCommit::begin` then `GroupCommit::save`.
    GroupPair,
}

impl Work {
    fn grouped(self) -> bool {
        matches!(self, Work::GroupSave | Work::GroupPair)
    }

    fn writes(self) -> usize {
        match self {
            Work::Save | Work::GroupSave => 1,
            Work::Pair | Work::GroupPair => 2,
        }
    }
}

/// One scenario.
struct Scenario {
    id: &'static str,
    what: &'static str,
    work: Work,
    tasks: usize,
    /// The scenario its ratio is taken against, and the target if any.
    baseline: &'static str,
    target: Option<f64>,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario {
        id: "a",
        what: "Store save, one at a time",
        work: Work::Save,
        tasks: 1,
        baseline: "a",
        target: None,
    },
    Scenario {
        id: "b",
        what: "Store save, concurrent",
        work: Work::Save,
        tasks: TASKS,
        baseline: "a",
        target: None,
    },
    Scenario {
        id: "c",
        what: "GroupCommit save, concurrent",
        work: Work::GroupSave,
        tasks: TASKS,
        baseline: "a",
        target: Some(5.0),
    },
    Scenario {
        id: "e",
        what: "GroupCommit save, one at a time",
        work: Work::GroupSave,
        tasks: 1,
        baseline: "a",
        target: None,
    },
    Scenario {
        id: "d1",
        what: "Store begin + save, one at a time",
        work: Work::Pair,
        tasks: 1,
        baseline: "d1",
        target: None,
    },
    Scenario {
        id: "d2",
        what: "Store begin + save, concurrent",
        work: Work::Pair,
        tasks: TASKS,
        baseline: "d1",
        target: None,
    },
    Scenario {
        id: "d3",
        what: "GroupCommit begin + save, concurrent",
        work: Work::GroupPair,
        tasks: TASKS,
        baseline: "d1",
        target: Some(5.0),
    },
];

/// What one slice of one scenario measured.
struct Slice {
    /// Latency (ns) of each refresh whose writes all committed in the slice.
    latencies: Vec<u64>,
    /// Writes that failed (the run goes on; a daemon would retry).
    errors: u64,
    /// Grouped scenarios: the queue's counts, warm-up included.
    group: Option<GroupStats>,
}

/// What one scenario measured over all rounds.
#[derive(Default)]
struct Measured {
    latencies: Vec<u64>,
    /// Refreshes per second in each round.
    per_round: Vec<f64>,
    errors: u64,
    group: Option<GroupStats>,
}

impl Measured {
    fn add(&mut self, slice: Slice, window: Duration) {
        self.per_round
            .push(slice.latencies.len() as f64 / window.as_secs_f64());
        self.latencies.extend(slice.latencies);
        self.errors += slice.errors;
        if let Some(g) = slice.group {
            let sum = self.group.get_or_insert_with(GroupStats::default);
            sum.transactions += g.transactions;
            sum.requests += g.requests;
            sum.failed += g.failed;
        }
    }

    /// Refreshes whose writes all committed, per counted second.
    fn refreshes_per_sec(&self) -> f64 {
        let n = self.per_round.len().max(1) as f64;
        self.per_round.iter().sum::<f64>() / n
    }
}

/// Per task: the latencies of refreshes completed in the window, and errors.
type TaskResult = (Vec<u64>, u64);

async fn run(sizes: Sizes, only: &[String]) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state/tokend.db");
    eprintln!(
        "commit: {} run; {} credentials in {}",
        if sizes.quick { "quick" } else { "full" },
        sizes.credentials,
        path.display()
    );
    Store::open(&path).await?.close().await;
    insert_credentials(&path, sizes.credentials).await?;

    let chosen: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.id))
        .collect();
    let mut results: Vec<(&Scenario, Measured)> =
        chosen.iter().map(|s| (*s, Measured::default())).collect();
    for round in 1..=sizes.rounds {
        for (s, m) in &mut results {
            eprintln!(
                "commit: round {round}/{}: ({}) {}, {} task(s)",
                sizes.rounds, s.id, s.what, s.tasks
            );
            // A fresh store per slice: the last one's close checkpointed
            // the WAL, so each starts from an empty one.
            let store = Store::open(&path).await?;
            let slice = measure(&store, s, sizes).await?;
            store.close().await;
            m.add(slice, sizes.window);
        }
    }
    let store = Store::open(&path).await?;
    let stored = store.load_all().await?;
    store.close().await;
    if stored.len() != sizes.credentials {
        return Err(format!(
            "{} credentials after the run, expected {}",
            stored.len(),
            sizes.credentials
        )
        .into());
    }
    report(sizes, results)
}

/// Inserts `n` credentials in one transaction, bypassing the store (the
/// bench measures updates; inserting through it would take a commit each).
async fn insert_credentials(path: &Path, n: usize) -> Result<(), Error> {
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await?;
    sqlx::query(
        "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?1)
         INSERT INTO credentials (name, provider, refresh_token, access_token, expires_at,
            created_at, updated_at)
         SELECT 'cred-' || n, 'bench', 'rt-' || hex(randomblob(24)),
            substr(hex(randomblob(?2)), 1, ?2), 1, 1, 1 FROM i",
    )
    .bind(n as i64)
    .bind(ACCESS_TOKEN_BYTES as i64)
    .execute(&pool)
    .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// Runs one slice of a scenario: `s.tasks` tasks, each refreshing its own
/// share of the credentials, round and round, until the slice ends.
async fn measure(store: &Store, s: &Scenario, sizes: Sizes) -> Result<Slice, Error> {
    let creds = store.load_all().await?;
    let group = s
        .work
        .grouped()
        .then(|| GroupCommit::start(store.clone(), MAX_BATCH));
    let start = Instant::now();
    let counted_from = start + sizes.warmup;
    let until = counted_from + sizes.window;
    let access = Arc::new("a".repeat(ACCESS_TOKEN_BYTES - 12));
    let mut shares: Vec<Vec<Credential>> = vec![Vec::new(); s.tasks];
    for (i, c) in creds.into_iter().enumerate() {
        shares[i % s.tasks].push(c);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (t, share) in shares.into_iter().enumerate() {
        let writer = Writer {
            store: store.clone(),
            group: group.clone(),
            work: s.work,
            access: Arc::clone(&access),
        };
        tasks.spawn(writer.run(t, share, counted_from, until));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (ns, e) = done??;
        latencies.extend(ns);
        errors += e;
    }
    Ok(Slice {
        latencies,
        errors,
        group: group.map(|g| g.stats()),
    })
}

/// One submitting task.
struct Writer {
    store: Store,
    group: Option<GroupCommit>,
    work: Work,
    access: Arc<String>,
}

impl Writer {
    async fn run(
        self,
        task: usize,
        mut share: Vec<Credential>,
        counted_from: Instant,
        until: Instant,
    ) -> Result<TaskResult, Error> {
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut round = 0u64;
        while Instant::now() < until {
            for c in share.iter_mut() {
                let begun = Instant::now();
                if begun >= until {
                    break;
                }
                match self.refresh(c, task, round).await {
                    Ok(()) if begun >= counted_from && Instant::now() < until => {
                        latencies.push(begun.elapsed().as_nanos() as u64)
                    }
                    Ok(()) => {}
                    Err(e) if errors == 0 => {
                        eprintln!("commit: task {task}: {e} (further errors are only counted)");
                        errors += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            round += 1;
        }
        Ok((latencies, errors))
    }

    /// The durable writes of one refresh of `c`.
    async fn refresh(&self, c: &mut Credential, task: usize, round: u64) -> Result<(), Error> {
        let now = unix_ms();
        let matched = match (self.work, &self.group) {
            (Work::Save, _) => self.save(self.outcome(c, task, round, now)).await?,
            (Work::Pair, _) => {
                let begun = self
                    .store
                    .begin_refreshes(&[(c.name.clone(), c.generation)], now)
                    .await?;
                let stored = begun.into_iter().next().flatten();
                let stored = stored.ok_or_else(|| format!("{}: begin matched nothing", c.name))?;
                self.save(self.outcome(&stored, task, round, now)).await?
            }
            (Work::GroupSave, Some(g)) => g.save(self.outcome(c, task, round, now)).await?,
            (Work::GroupPair, Some(g)) => {
                let stored = g.begin(c.name.clone(), c.generation, now).await?;
                let stored = stored.ok_or_else(|| format!("{}: begin matched nothing", c.name))?;
                if stored.refresh_token.is_none() {
                    return Err(format!("{}: no refresh token read back", c.name).into());
                }
                g.save(self.outcome(&stored, task, round, now)).await?
            }
            (Work::GroupSave | Work::GroupPair, None) => {
                return Err("grouped scenario without a queue".into())
            }
        };
        if !matched {
            return Err(format!("{}: write matched nothing", c.name).into());
        }
        c.updated_at = now;
        Ok(())
    }

    /// Writes one outcome straight to the store (its own statement and
    /// commit); whether it matched its row.
    async fn save(&self, outcome: Credential) -> Result<bool, Error> {
        let saved = self.store.save_outcomes(&[outcome]).await?;
        Ok(saved == [true])
    }

    /// `c` after a successful refresh: new tokens, mark cleared.
    fn outcome(&self, c: &Credential, task: usize, round: u64, now: i64) -> Credential {
        let mut next = c.clone();
        next.refresh_token = Some(Secret::new(format!("rt-{task}-{round}-{}", c.name)));
        next.access_token = Some(Secret::new(format!("{round:012}{}", self.access)));
        next.expires_at = Some(now + 3_600_000);
        next.refresh_started_at = None;
        next.last_refresh_at = Some(now);
        next.updated_at = now;
        next
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// p50 and p99 (nearest rank) of `ns`; zeros when empty.
fn percentiles(ns: &mut [u64]) -> (f64, f64) {
    if ns.is_empty() {
        return (0.0, 0.0);
    }
    ns.sort_unstable();
    let n = ns.len();
    let at = |p: f64| ns[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
    (at(0.50), at(0.99))
}

// ---------------------------------------------------------------------------
// The report.

fn report(sizes: Sizes, mut results: Vec<(&Scenario, Measured)>) -> Result<(), Error> {
    let find = |id: &str| results.iter().find(|(s, _)| s.id == id).map(|(_, m)| m);
    let rate = |id: &str| find(id).map_or(f64::NAN, Measured::refreshes_per_sec);
    // Each round's ratio, against the same round of the baseline.
    let round_ratios = |m: &Measured, id: &str| -> Vec<f64> {
        find(id).map_or_else(Vec::new, |b| {
            m.per_round
                .iter()
                .zip(&b.per_round)
                .map(|(x, y)| x / y)
                .collect()
        })
    };
    let single = rate("a");
    let mut rows = Vec::new();
    for (s, m) in &results {
        let base = rate(s.baseline);
        let ratio = m.refreshes_per_sec() / base;
        let per_round = round_ratios(m, s.baseline);
        let (txns, per_txn) = m.group.map_or((None, None), |g| {
            (
                Some(g.transactions),
                Some(g.requests as f64 / g.transactions.max(1) as f64),
            )
        });
        rows.push(json!({
            "scenario": s.id,
            "what": s.what,
            "writes_per_refresh": s.work.writes(),
            "tasks": s.tasks,
            "refreshes_per_sec": m.refreshes_per_sec(),
            "refreshes_per_sec_per_round": m.per_round,
            "rows_per_sec": m.refreshes_per_sec() * s.work.writes() as f64,
            "ratio_to_a": m.refreshes_per_sec() / single,
            "baseline": s.baseline,
            "ratio_to_baseline": ratio,
            "ratio_to_baseline_per_round": per_round,
            "errors": m.errors,
            "transactions": txns,
            "requests_per_transaction": per_txn,
            "failed_transactions": m.group.map(|g| g.failed),
            "target": s.target.map(|t| format!("≥ {t}× ({})", s.baseline)),
            "met": s.target.filter(|_| ratio.is_finite()).map(|t| ratio >= t),
        }));
    }
    // Latency percentiles last: they sort the samples in place.
    for ((_, m), row) in results.iter_mut().zip(&mut rows) {
        let (p50, p99) = percentiles(&mut m.latencies);
        row["p50_ms"] = json!(p50 / 1e6);
        row["p99_ms"] = json!(p99 / 1e6);
    }

    let machine = report::machine();
    println!();
    println!(
        "{}",
        report::headline("durable commits", sizes.quick, &machine)
    );
    println!(
        "{} credentials, {}-byte access tokens, WAL + synchronous=FULL; {} round(s), each running every scenario in turn for {:?} warm-up + {:?} counted; group commit at most {MAX_BATCH} requests per transaction",
        sizes.credentials, ACCESS_TOKEN_BYTES, sizes.rounds, sizes.warmup, sizes.window
    );
    println!();
    print!("{}", table(&rows));
    println!();
    println!("A refresh is one durable write in (a), (b), (c), (e) and two (mark, then outcome) in (d1)–(d3). Each ratio is against the scenario named as baseline.");

    let json = json!({
        "bench": "commit",
        "quick": sizes.quick,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": machine,
        "sizes": {
            "credentials": sizes.credentials,
            "rounds": sizes.rounds,
            "warmup_secs": sizes.warmup.as_secs_f64(),
            "window_secs": sizes.window.as_secs_f64(),
            "tasks": TASKS,
            "max_batch": MAX_BATCH,
            "access_token_bytes": ACCESS_TOKEN_BYTES,
        },
        "rows": rows,
    });
    let out = report::target_dir().join("bench-commit.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("JSON written to {}", out.display());
    Ok(())
}

/// A Markdown table of the JSON rows (pastes into BENCHMARKS.md as it is).
fn table(rows: &[Value]) -> String {
    let num = |v: f64| {
        if v >= 1000.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    };
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let spread = |v: &Value| {
        let all: Vec<f64> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let min = all.iter().copied().fold(f64::INFINITY, f64::min);
        let max = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if all.is_empty() {
            "—".to_string()
        } else {
            format!("{min:.2}–{max:.2}×")
        }
    };
    // A ratio whose baseline was not run is null in the JSON.
    let times = |r: &Value, k: &str| r[k].as_f64().map_or("—".into(), |v| format!("{v:.2}×"));
    let mut lines = vec![[
        "scenario",
        "tasks",
        "refreshes/s",
        "rows/s",
        "× (a)",
        "baseline",
        "× baseline",
        "rounds min–max",
        "p50 ms",
        "p99 ms",
        "requests/txn",
        "errors",
        "target",
        "met",
    ]
    .map(String::from)
    .to_vec()];
    for r in rows {
        lines.push(vec![
            format!(
                "({}) {}",
                r["scenario"].as_str().unwrap_or("?"),
                r["what"].as_str().unwrap_or("?")
            ),
            r["tasks"].to_string(),
            num(f(r, "refreshes_per_sec")),
            num(f(r, "rows_per_sec")),
            times(r, "ratio_to_a"),
            format!("({})", r["baseline"].as_str().unwrap_or("?")),
            times(r, "ratio_to_baseline"),
            spread(&r["ratio_to_baseline_per_round"]),
            num(f(r, "p50_ms")),
            num(f(r, "p99_ms")),
            r["requests_per_transaction"]
                .as_f64()
                .map_or("—".into(), num),
            r["errors"].to_string(),
            r["target"].as_str().unwrap_or("—").to_string(),
            r["met"]
                .as_bool()
                .map_or("—", |m| if m { "yes" } else { "NO" })
                .to_string(),
        ]);
    }
    report::markdown(&lines)
}
