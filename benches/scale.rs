//! Scale and refresh-burst benchmark: the real release `tokend`
//! daemon on databases of 10k, 100k and 1M credentials, against baselines
//! measured in the same run on the same machine.
//!
//! ```text
//! cargo bench --bench scale                          # full run: N = 10k, 100k, 1M
//! TOKEND_BENCH_QUICK=1 cargo bench --bench scale     # quick run: N = 10k, 100k
//! cargo bench --bench scale -- --quick               # same
//! cargo bench --bench scale -- --sizes 10k,250000    # other sizes (k and M suffixes)
//! cargo bench --bench scale -- --burst 500 --refresh-burst 5000 --idle 10 --concurrency 32
//! ```
//!
//! The strict fake provider of the integration tests (Didit flavour: Basic
//! client authentication, form body, rotating refresh tokens) runs in this
//! process on 127.0.0.1. For each N, the scenario of `scale/scenario.rs`
//! (shared with `tests/it/scale.rs`) generates the database with SQL, starts
//! the daemon with `NOTIFY_SOCKET` pointing at a socket of ours, and measures:
//!
//! 1. spawn to `READY=1`, against the same daemon on an empty database;
//! 2. RSS (`VmRSS`, and `RssAnon`) at ready and after the burst, against the
//!    memory budget: access-token bytes + 400 B × N + 30 MiB;
//! 3. CPU (utime + stime) and wake-ups (voluntary context switches over all
//!    threads) over an idle window, against the empty daemon;
//! 4. the lateness of K refreshes planned for one instant T (restart with K
//!    of the N rows due at T; the fake records when each arrives).
//!
//! Then M credentials fall due at once, and the refreshes per second tokend
//! achieves (at the fake, and to the last commit in the database) are
//! compared with the ceiling: a `reqwest::Client` built as tokend builds its
//! own, sending the very request tokend would (made by
//! `tokend::provider::prepare` from the same configuration) to the same fake
//! with the same concurrency. The ceiling is measured before and after
//! tokend; the better run counts.
//!
//! It prints a Markdown table and writes JSON to `<target dir>/bench-scale.json`.
//! It asserts no timing: a missed target shows as `NO`. It fails only when a
//! correctness check fails (a burst credential not refreshed, or its rotated
//! refresh token not in the database after the daemon stopped).

#[path = "../tests/it/support/fake_provider/mod.rs"]
mod fake_provider;
#[path = "scale/scenario.rs"]
mod scenario;

#[path = "common/report.rs"]
mod report;

use report::Row;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_provider::{FakeConfig, FakeProvider, Flavor};
use scenario::{pct, Error, RefreshBurstOutcome, ScaleOutcome, ScaleParams};
use serde_json::{json, Value};

/// Lifetime of the tokens the fake issues: refreshed credentials are not
/// due again during the run.
const FAKE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The memory budget per credential, on top of its access token.
const BUDGET_PER_CREDENTIAL: u64 = 400;

/// The memory budget's fixed part.
const BUDGET_FIXED: u64 = 30 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("TOKEND_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let plan = match Plan::from_args(quick, &args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("scale bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&plan) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("scale bench: a correctness check failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("scale bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    /// Credential counts, one scenario each.
    sizes: Vec<usize>,
    /// K: credentials due at the same instant, within each N.
    burst: usize,
    /// M: credentials due at once for the throughput measurement.
    refresh_burst: usize,
    idle: Duration,
    /// `max_concurrent_refreshes`, tokend's and the ceiling client's.
    concurrency: usize,
}

impl Plan {
    fn from_args(quick: bool, args: &[String]) -> Result<Plan, Error> {
        let mut plan = if quick {
            Plan {
                quick,
                sizes: vec![10_000, 100_000],
                burst: 1_000,
                refresh_burst: 2_000,
                idle: Duration::from_secs(5),
                concurrency: 64,
            }
        } else {
            Plan {
                quick,
                sizes: vec![10_000, 100_000, 1_000_000],
                burst: 1_000,
                refresh_burst: 20_000,
                idle: Duration::from_secs(60),
                concurrency: 64,
            }
        };
        // `cargo bench` adds `--bench`; other unknown arguments are ignored.
        let mut it = args.iter().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--sizes" => {
                    plan.sizes = value()?
                        .split(',')
                        .map(parse_count)
                        .collect::<Result<_, _>>()?
                }
                "--burst" => plan.burst = parse_count(value()?)?,
                "--refresh-burst" => plan.refresh_burst = parse_count(value()?)?,
                "--idle" => plan.idle = Duration::from_secs_f64(value()?.parse()?),
                "--concurrency" => plan.concurrency = parse_count(value()?)?.max(1),
                _ => {}
            }
        }
        Ok(plan)
    }

    fn params(&self, tokend: &Path, n: usize) -> ScaleParams {
        ScaleParams {
            tokend: tokend.to_path_buf(),
            n,
            burst: self.burst,
            idle: self.idle,
            settle: Duration::from_secs(2),
            lead: Duration::from_secs(if self.quick { 2 } else { 3 }),
            concurrency: self.concurrency,
            rust_log: None,
            list_all: false,
            start_timeout: Duration::from_secs(900),
        }
    }
}

/// `10000`, `10k`, `1M`.
fn parse_count(s: &str) -> Result<usize, Error> {
    let s = s.trim();
    let (digits, times) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1_000),
        Some((i, 'm' | 'M')) => (&s[..i], 1_000_000),
        _ => (s, 1),
    };
    Ok(digits.replace('_', "").parse::<usize>()? * times)
}

/// `10k`, `1M`, `2500`.
fn label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Prints a progress line with the time since the bench started.
fn progress(start: Instant) -> impl Fn(&str) {
    move |line: &str| eprintln!("scale [{:>6.1}s] {line}", start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------
// The ceiling: reqwest alone.

/// One run of the ceiling client.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    /// M / (first request sent to last response read).
    client_rps: f64,
    /// M / (first to last refresh at the fake).
    fake_rps: f64,
    /// Answers that were not a rotated token pair.
    errors: usize,
}

/// Refreshes `m` fresh credentials with a bare `reqwest::Client` (built
/// like tokend's `ProviderClient`) from `concurrency` tasks. Each request is
/// made by `tokend::provider::prepare` from tokend's own configuration of
/// the provider, so headers and body are byte for byte what the daemon
/// sends; the answer is read whole and parsed, as the daemon must.
async fn ceiling(
    fake: &FakeProvider,
    toml: &str,
    m: usize,
    concurrency: usize,
) -> Result<Ceiling, Error> {
    let config =
        tokend::config::parse_config(toml).map_err(|e| format!("ceiling config: {e:?}"))?;
    let provider = Arc::clone(
        config
            .providers
            .get(scenario::PROVIDER)
            .ok_or("no provider in the configuration")?,
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("tokend/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let issued = fake.issue_refresh_tokens(m);
    let families = issued
        .iter()
        .enumerate()
        .map(|(i, (_, f))| (scenario::burst_name(i), *f))
        .collect();
    let tokens: Arc<Vec<String>> = Arc::new(issued.into_iter().map(|(t, _)| t).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, provider) = (client.clone(), Arc::clone(&provider));
        let (tokens, next) = (Arc::clone(&tokens), Arc::clone(&next));
        tasks.spawn(async move {
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else {
                    return errors;
                };
                if !refresh_once(&client, &provider, token).await {
                    errors += 1;
                }
            }
        });
    }
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r?;
    }
    let elapsed = start.elapsed();
    let (span, _) = scenario::fake_span(fake, &families);
    let fake_ms = span.map_or(0, |(a, b)| b - a).max(1);
    Ok(Ceiling {
        client_rps: m as f64 / elapsed.as_secs_f64(),
        fake_rps: m as f64 * 1000.0 / fake_ms as f64,
        errors,
    })
}

/// One refresh as tokend sends it; true if a new refresh token came back.
async fn refresh_once(
    client: &reqwest::Client,
    provider: &tokend::config::ProviderConfig,
    token: &str,
) -> bool {
    use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
    let grant = tokend::provider::TokenGrant::Refresh {
        refresh_token: tokend::token::Secret::new(token),
    };
    let stamp = tokend::provider::AssertionStamp::new();
    let Ok(prepared) = tokend::provider::prepare(&provider.endpoint, &grant, &stamp) else {
        return false;
    };
    let mut req = client
        .post(provider.endpoint.token_url.clone())
        .header(CONTENT_TYPE, prepared.content_type)
        .header(ACCEPT, "application/json")
        .timeout(provider.endpoint.request_timeout);
    for (k, v) in &prepared.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            req = req.header(k, v);
        }
    }
    let Ok(resp) = req.body(prepared.body).send().await else {
        return false;
    };
    let ok = resp.status().is_success();
    match resp.bytes().await {
        Ok(body) if ok => serde_json::from_slice::<Value>(&body)
            .is_ok_and(|v| v["refresh_token"].is_string() && v["access_token"].is_string()),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// The run.

/// A private copy of the daemon binary. The target directory may be shared
/// (other worktrees, other builds): a rebuild replacing
/// `target/release/tokend` during a run of several minutes must not swap
/// the daemon between two of its measurements.
fn private_copy(bin: &Path) -> Result<(tempfile::TempDir, PathBuf), Error> {
    let dir = tempfile::Builder::new().prefix("tokend-bin-").tempdir()?;
    let copy = dir.path().join("tokend");
    std::fs::copy(bin, &copy)?;
    Ok((dir, copy))
}

fn run(plan: &Plan) -> Result<bool, Error> {
    let built = Path::new(env!("CARGO_BIN_EXE_tokend"));
    let (_bin_dir, tokend_bin) = private_copy(built)?;
    let tokend_bin = tokend_bin.as_path();
    let start = Instant::now();
    let say = progress(start);
    say(&format!(
        "{} run; sizes {:?}, burst K = {}, refresh burst M = {}, idle {:?}, concurrency {}; daemon {}",
        if plan.quick { "quick" } else { "full" },
        plan.sizes.iter().map(|&n| label(n)).collect::<Vec<_>>(),
        plan.burst,
        plan.refresh_burst,
        plan.idle,
        plan.concurrency,
        built.display()
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fake = rt.block_on(FakeProvider::start(
        FakeConfig::new(Flavor::Didit).with_ttl(FAKE_TTL),
    ));

    // Baseline: the same daemon on an empty database, same idle window.
    say("baseline: empty database");
    let mut empty_params = plan.params(tokend_bin, 0);
    empty_params.burst = 0;
    let (empty, _) = rt.block_on(scenario::run_scale(&empty_params, &fake, &say))?;

    let mut scales = Vec::new();
    for &n in &plan.sizes {
        let (out, layout) = rt.block_on(scenario::run_scale(
            &plan.params(tokend_bin, n),
            &fake,
            &say,
        ))?;
        report_scale_line(&out);
        drop(layout);
        scales.push(out);
    }

    // Throughput: ceiling, tokend, ceiling again.
    let m = plan.refresh_burst;
    let params = plan.params(tokend_bin, m);
    let toml = scenario::Layout::new()?.config_toml(&fake, plan.concurrency);
    say(&format!(
        "refresh burst: ceiling (reqwest), {m} refreshes, {} at a time",
        plan.concurrency
    ));
    let c1 = rt.block_on(ceiling(&fake, &toml, m, plan.concurrency))?;
    say(&format!(
        "refresh burst: tokend, {m} credentials due at start"
    ));
    let (burst, _) = rt.block_on(scenario::run_refresh_burst(&params, m, &fake))?;
    say("refresh burst: ceiling again");
    let c2 = rt.block_on(ceiling(&fake, &toml, m, plan.concurrency))?;
    let ceil = Ceiling {
        client_rps: c1.client_rps.max(c2.client_rps),
        fake_rps: c1.fake_rps.max(c2.fake_rps),
        errors: c1.errors + c2.errors,
    };
    let rejections = fake.rejections();
    rt.block_on(fake.shutdown());

    let rows = table_rows(plan, &empty, &scales, &burst, &ceil);
    let (checks, all_ok) = checks(&scales, &burst, &ceil, &rejections);
    let machine = report::machine();
    println!();
    println!("{}", report::headline("scale", plan.quick, &machine));
    println!(
        "burst K = {} per N; refresh burst M = {m}; max_concurrent_refreshes = {} (daemon, provider and ceiling client); idle window {:?}; memory budget = access-token bytes + {BUDGET_PER_CREDENTIAL} B × N + 30 MiB",
        plan.burst, plan.concurrency, plan.idle
    );
    println!();
    print!("{}", report::table(&rows));
    println!();
    for s in std::iter::once(&empty).chain(&scales) {
        println!("{}", detail_line(s));
    }
    println!(
        "refresh burst: tokend ready in {:.2}s, {} refreshed in {:.2}s at the fake, all committed {} after the first; daemon CPU {:.1}s; RSS after {:.0} MiB",
        burst.ready.as_secs_f64(),
        burst.refreshed,
        burst.fake_span.as_secs_f64(),
        burst
            .commit_span
            .map_or("never (timed out)".into(), |d| format!("{:.2}s", d.as_secs_f64())),
        burst.cpu_secs,
        mib(burst.mem_after.rss_kb),
    );
    println!(
        "ceiling runs: {:.0} and {:.0} refreshes/s (client), {:.0} and {:.0} (at the fake)",
        c1.client_rps, c2.client_rps, c1.fake_rps, c2.fake_rps
    );
    println!();
    for line in &checks {
        println!("{line}");
    }

    let json = json!({
        "bench": "scale",
        "quick": plan.quick,
        "unix_time": scenario::now_ms() / 1000,
        "machine": machine,
        "plan": {
            "sizes": plan.sizes,
            "burst": plan.burst,
            "refresh_burst": plan.refresh_burst,
            "idle_secs": plan.idle.as_secs_f64(),
            "concurrency": plan.concurrency,
        },
        "empty": scale_json(&empty),
        "scale": scales.iter().map(scale_json).collect::<Vec<_>>(),
        "refresh_burst": {
            "m": burst.m,
            "ready_secs": burst.ready.as_secs_f64(),
            "fake_span_secs": burst.fake_span.as_secs_f64(),
            "commit_span_secs": burst.commit_span.map(|d| d.as_secs_f64()),
            "tokend_fake_rps": rate(burst.m, Some(burst.fake_span)),
            "tokend_commit_rps": rate(burst.m, burst.commit_span),
            "refreshed": burst.refreshed,
            "refreshed_twice": burst.refreshed_twice,
            "db_current": burst.db_current,
            "unexpected_requests": burst.unexpected_requests,
            "cpu_secs": burst.cpu_secs,
            "rss_after_kb": burst.mem_after.rss_kb,
            "ceiling": [ceiling_json(&c1), ceiling_json(&c2)],
        },
        "checks_ok": all_ok,
        "checks": checks,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    let out = report::target_dir().join("bench-scale.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("JSON written to {}", out.display());
    Ok(all_ok)
}

/// Refreshes per second over `span`; 0 if there is none.
fn rate(n: usize, span: Option<Duration>) -> f64 {
    span.filter(|d| !d.is_zero())
        .map_or(0.0, |d| n as f64 / d.as_secs_f64())
}

/// The memory budget for `s`, in kB.
fn budget_kb(s: &ScaleOutcome) -> u64 {
    (s.access_bytes + BUDGET_PER_CREDENTIAL * s.n as u64 + BUDGET_FIXED) / 1024
}

fn report_scale_line(s: &ScaleOutcome) {
    eprintln!(
        "scale          N={}: ready {:.2}s, RSS {:.0} MiB (budget {:.0}), idle {:.3}% CPU, {:.2} wake-ups/s, lateness p99 {:.0} ms",
        label(s.n),
        s.ready.as_secs_f64(),
        mib(s.mem_ready.rss_kb),
        mib(budget_kb(s)),
        s.idle.cpu_percent,
        s.idle.wakeups_per_sec(),
        pct(&s.lateness_ms, 0.99)
    );
}

/// One line of context per N: what the table does not show.
fn detail_line(s: &ScaleOutcome) -> String {
    format!(
        "{}: generated in {:.1}s ({:.0} MiB file, {:.0} MiB of access tokens); load CPU {:.2}s; VmHWM at ready {:.0} MiB; RSS after idle {:.0} MiB; {} threads; idle {} wake-ups, {} preemptions, {} ticks ({:.3} % CPU by schedstat); stop {:.2}s; second start ready {:.2}s{}; burst committed {} using {:.2}s CPU",
        if s.n == 0 {
            "empty database".to_string()
        } else {
            format!("N={}", label(s.n))
        },
        s.generate.as_secs_f64(),
        s.db_bytes as f64 / 1048576.0,
        s.access_bytes as f64 / 1048576.0,
        s.load_cpu_secs,
        mib(s.mem_ready.hwm_kb),
        mib(s.mem_after_idle.rss_kb),
        s.idle.threads,
        s.idle.wakeups,
        s.idle.preemptions,
        s.idle.cpu_ticks,
        s.idle.sched_percent,
        s.stop.as_secs_f64(),
        s.ready2.as_secs_f64(),
        if s.ready2_after_t {
            " (AFTER T: lateness includes start-up)".to_string()
        } else {
            format!(", {:.2}s before T", s.ready2_before_t.as_secs_f64())
        },
        s.committed_after_t.map_or("never (timed out)".into(), |d| format!(
            "{:.2}s after T",
            d.as_secs_f64()
        )),
        s.burst_cpu_secs,
    )
}

/// Correctness, not timing: every line, and whether all passed.
fn checks(
    scales: &[ScaleOutcome],
    burst: &RefreshBurstOutcome,
    ceil: &Ceiling,
    rejections: &[String],
) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut ok = true;
    let mut check = |pass: bool, text: String| {
        ok &= pass;
        lines.push(format!("{} {text}", if pass { "ok  " } else { "FAIL" }));
    };
    for s in scales {
        let n = label(s.n);
        check(
            s.visible == s.n,
            format!("N={n}: {} of {} credentials served", s.visible, s.n),
        );
        check(
            s.refreshed == s.burst && s.refreshed_twice == 0,
            format!(
                "N={n}: {} of {} burst credentials refreshed ({} more than once)",
                s.refreshed, s.burst, s.refreshed_twice
            ),
        );
        check(
            s.db_current == s.burst,
            format!(
                "N={n}: {} of {} hold the fake's current refresh token in the database after stop",
                s.db_current, s.burst
            ),
        );
        check(
            s.unexpected_requests == 0,
            format!("N={n}: {} unexpected token requests", s.unexpected_requests),
        );
    }
    check(
        burst.refreshed == burst.m && burst.refreshed_twice == 0,
        format!(
            "refresh burst: {} of {} refreshed ({} more than once), {} unexpected requests",
            burst.refreshed, burst.m, burst.refreshed_twice, burst.unexpected_requests
        ),
    );
    check(
        burst.db_current == burst.m,
        format!(
            "refresh burst: {} of {} hold the fake's current refresh token in the database after stop",
            burst.db_current, burst.m
        ),
    );
    check(
        ceil.errors == 0,
        format!("ceiling client: {} failed refreshes", ceil.errors),
    );
    check(
        rejections.is_empty(),
        format!(
            "fake provider: {} wire-format rejections {rejections:?}",
            rejections.len()
        ),
    );
    (lines, ok)
}

// ---------------------------------------------------------------------------
// The table.

fn table_rows(
    plan: &Plan,
    empty: &ScaleOutcome,
    scales: &[ScaleOutcome],
    burst: &RefreshBurstOutcome,
    ceil: &Ceiling,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in scales {
        let n = label(s.n);
        let budget = mib(budget_kb(s));
        let rss = mib(s.mem_ready.rss_kb);
        let after = mib(s.mem_after_burst.rss_kb);
        let cpu = s.idle.cpu_percent;
        let wakeups = s.idle.wakeups_per_sec();
        let late = |p: f64| pct(&s.lateness_ms, p);
        rows.extend([
            Row {
                metric: format!("time to READY=1, N={n}"),
                unit: "s",
                tokend: s.ready.as_secs_f64(),
                baseline: Some(("empty database", empty.ready.as_secs_f64())),
                target: None,
            },
            Row {
                metric: format!("RSS at ready, N={n}"),
                unit: "MiB",
                tokend: rss,
                baseline: Some(("budget", budget)),
                target: Some(("≤ 1×", rss <= budget)),
            },
            Row {
                metric: format!("RssAnon at ready, N={n}"),
                unit: "MiB",
                tokend: mib(s.mem_ready.anon_kb),
                baseline: Some(("empty database", mib(empty.mem_ready.anon_kb))),
                target: None,
            },
            Row {
                metric: format!("RSS after burst, N={n}"),
                unit: "MiB",
                tokend: after,
                baseline: Some(("budget", budget)),
                target: Some(("≤ 1×", after <= budget)),
            },
            Row {
                metric: format!("idle CPU, N={n}"),
                unit: "% CPU",
                tokend: cpu,
                baseline: Some(("empty database", empty.idle.cpu_percent)),
                target: Some(("≈ 0 (≤ 0.1 %)", cpu <= 0.1)),
            },
            Row {
                metric: format!("idle wake-ups, N={n}"),
                unit: "/s",
                tokend: wakeups,
                baseline: Some(("empty database", empty.idle.wakeups_per_sec())),
                target: Some(("≈ 0 (≤ 0.1/s)", wakeups <= 0.1)),
            },
            Row {
                metric: format!("burst lateness p50, N={n}, K={}", s.burst),
                unit: "ms",
                tokend: late(0.50),
                baseline: None,
                target: None,
            },
            Row {
                metric: format!("burst lateness p99, N={n}, K={}", s.burst),
                unit: "ms",
                tokend: late(0.99),
                baseline: None,
                target: Some(("≤ 1000 ms", late(0.99) <= 1000.0)),
            },
            Row {
                metric: format!("burst lateness max, N={n}, K={}", s.burst),
                unit: "ms",
                tokend: late(1.0),
                baseline: None,
                target: None,
            },
        ]);
    }
    let m = label(plan.refresh_burst);
    let at_fake = rate(burst.m, Some(burst.fake_span));
    let committed = rate(burst.m, burst.commit_span);
    rows.push(Row {
        metric: format!("refresh burst at the fake, M={m}"),
        unit: "refresh/s",
        tokend: at_fake,
        baseline: Some(("reqwest ceiling", ceil.fake_rps)),
        target: Some(("≥ 0.50×", at_fake >= 0.5 * ceil.fake_rps)),
    });
    rows.push(Row {
        metric: format!("refresh burst to commit, M={m}"),
        unit: "refresh/s",
        tokend: committed,
        baseline: Some(("reqwest ceiling", ceil.client_rps)),
        target: Some(("≥ 0.50×", committed >= 0.5 * ceil.client_rps)),
    });
    rows
}

// ---------------------------------------------------------------------------
// JSON and the machine.

fn mem_json(m: &scenario::Mem) -> Value {
    json!({ "rss_kb": m.rss_kb, "rss_anon_kb": m.anon_kb, "hwm_kb": m.hwm_kb })
}

fn scale_json(s: &ScaleOutcome) -> Value {
    json!({
        "n": s.n,
        "burst": s.burst,
        "generate_secs": s.generate.as_secs_f64(),
        "db_bytes": s.db_bytes,
        "access_token_bytes": s.access_bytes,
        "budget_kb": budget_kb(s),
        "ready_secs": s.ready.as_secs_f64(),
        "load_cpu_secs": s.load_cpu_secs,
        "mem_ready": mem_json(&s.mem_ready),
        "mem_after_idle": mem_json(&s.mem_after_idle),
        "mem_after_burst": mem_json(&s.mem_after_burst),
        "idle": {
            "window_secs": s.idle.window.as_secs_f64(),
            "cpu_ticks": s.idle.cpu_ticks,
            "cpu_percent": s.idle.cpu_percent,
            "sched_cpu_percent": s.idle.sched_percent,
            "wakeups": s.idle.wakeups,
            "wakeups_per_sec": s.idle.wakeups_per_sec(),
            "preemptions": s.idle.preemptions,
            "threads": s.idle.threads,
        },
        "visible": s.visible,
        "stop_secs": s.stop.as_secs_f64(),
        "ready2_secs": s.ready2.as_secs_f64(),
        "ready2_after_t": s.ready2_after_t,
        "lateness_ms": {
            "p50": report::finite(pct(&s.lateness_ms, 0.50)),
            "p99": report::finite(pct(&s.lateness_ms, 0.99)),
            "max": report::finite(pct(&s.lateness_ms, 1.0)),
            "min": report::finite(s.lateness_ms.first().copied().unwrap_or(f64::NAN)),
            "n": s.lateness_ms.len(),
        },
        "committed_after_t_secs": s.committed_after_t.map(|d| d.as_secs_f64()),
        "refreshed": s.refreshed,
        "refreshed_twice": s.refreshed_twice,
        "db_current": s.db_current,
        "unexpected_requests": s.unexpected_requests,
        "burst_cpu_secs": s.burst_cpu_secs,
        "stop2_secs": s.stop2.as_secs_f64(),
    })
}

fn ceiling_json(c: &Ceiling) -> Value {
    json!({ "client_rps": c.client_rps, "fake_rps": c.fake_rps, "errors": c.errors })
}
