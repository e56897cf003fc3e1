//! The scale scenario, shared by the benchmark (`benches/scale.rs`,
//! release daemon, full sizes) and its reduced CI run (`tests/it/scale.rs`,
//! debug daemon, N = 10k), which include this file by `#[path]`. The module
//! that includes it must have the strict fake provider in scope as
//! `fake_provider` (`super::fake_provider`).
//!
//! [`run_scale`] builds a database of N credentials straight through SQL
//! (the schema comes from [`tokend::store::Store::open`], the rows from
//! multi-row INSERTs in one transaction), then starts the real `tokend
//! daemon` twice on it, with `NOTIFY_SOCKET` pointing at a datagram socket
//! bound here:
//!
//! 1. **scale**: spawn to `READY=1`, memory at ready (`/proc/<pid>/status`),
//!    CPU and voluntary context switches over an idle window, then SIGTERM;
//! 2. **burst**: K of the N credentials (holding refresh tokens the fake
//!    issued) are rewritten to fall due at one planned instant T a little
//!    after the daemon will be ready again; the daemon is restarted and the
//!    fake's wall-clock time of each refresh gives its lateness against T.
//!    After SIGTERM the database must hold, for each of the K, the refresh
//!    token the fake currently considers valid (rotation is on).
//!
//! Nothing here asserts a timing; callers decide what to check.
//!
//! The due time is exact because the daemon runs with `refresh_jitter = 0`
//! and `max_refresh_margin = "6h"`: a burst credential issued 48 h before T
//! and expiring 6 h after it has a lifetime of 54 h, so its margin is
//! min(0.2 × 54 h, 6 h) = 6 h exactly, and `refresh_due_at` gives
//! expires − 6 h = T to the millisecond (see `src/refresh/job.rs`).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _, Row as _};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fake_provider::FakeProvider;

/// Errors of the scenario: a broken set-up, not a missed target.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The provider every credential uses.
pub const PROVIDER: &str = "p";

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The daemon's margin cap; with the 54 h burst lifetime it is the margin.
const MARGIN_MS: i64 = 6 * HOUR_MS;

/// Rows per INSERT statement: 6 bound values each, well under SQLite's
/// 32,766 variables, and large enough that statement overhead vanishes.
const INSERT_CHUNK: usize = 1_000;

/// Seed of the generated tokens: the same rows every run.
pub const SEED: u64 = 0x5ca1_e0f7_0ce7;

/// Wall-clock now, Unix milliseconds (the daemon's clock).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn system_time_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------------------
// Generated tokens.

/// splitmix64: a fast, well-mixed stream, so a million rows of tokens take
/// well under a second and any row's tokens can be regenerated from its index.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `len` characters of `[A-Za-z0-9]`, deterministic in (`seed`, `salt`).
fn alnum(seed: u64, salt: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut state = mix(seed ^ salt.wrapping_mul(0x2545_f491_4f6c_dd1d));
    while out.len() < len {
        state = mix(state);
        // Ten characters per 64-bit draw (6 bits each; the modulo bias is
        // irrelevant for tokens nobody validates).
        for k in 0..10 {
            if out.len() == len {
                break;
            }
            let six = ((state >> (k * 6)) & 63) as usize;
            out.push(ALPHABET[six % ALPHABET.len()] as char);
        }
    }
    out
}

/// Refresh token of generated row `i`: 40 characters, like the fake's own.
pub fn scale_refresh_token(seed: u64, i: usize) -> String {
    alnum(seed, 2 * i as u64, 40)
}

/// Access token of row `i`: 64 to 448 characters (mean 256), varied as
/// opaque tokens and small JWTs are.
pub fn scale_access_token(seed: u64, i: usize) -> String {
    let len = 64 + (mix(seed ^ !(i as u64)) % 385) as usize;
    alnum(seed, 2 * i as u64 + 1, len)
}

/// Name of generated (never refreshed) row `i`.
pub fn scale_name(i: usize) -> String {
    format!("cred-{i:07}")
}

/// Name of burst credential `i`.
pub fn burst_name(i: usize) -> String {
    format!("burst-{i:06}")
}

/// A few of the generated rows' tokens (every `every`-th row), for leak
/// scans of the daemon's log: the whole set would make the scan slow.
pub fn sample_scale_tokens(seed: u64, n: usize, every: usize) -> Vec<String> {
    (0..n)
        .step_by(every.max(1))
        .flat_map(|i| [scale_refresh_token(seed, i), scale_access_token(seed, i)])
        .collect()
}

// ---------------------------------------------------------------------------
// The database.

/// One row to insert.
pub struct RowSpec {
    pub name: String,
    pub refresh_token: String,
    pub access_token: String,
    pub expires_at: i64,
    pub last_refresh_at: i64,
}

impl RowSpec {
    /// A row that does not fall due for about 19 hours (expiry one day plus
    /// up to an hour, spread so the schedule holds distinct instants).
    pub fn idle(seed: u64, i: usize, name: String, refresh_token: String, now: i64) -> RowSpec {
        RowSpec {
            name,
            refresh_token,
            access_token: scale_access_token(seed, i),
            expires_at: now + DAY_MS + (i as i64 % 3_600) * 1_000,
            last_refresh_at: now,
        }
    }

    /// A row due at exactly `due` (see the module documentation).
    pub fn due_at(seed: u64, i: usize, name: String, refresh_token: String, due: i64) -> RowSpec {
        RowSpec {
            name,
            refresh_token,
            access_token: scale_access_token(seed, i),
            expires_at: due + MARGIN_MS,
            last_refresh_at: due - 2 * DAY_MS,
        }
    }
}

/// Creates the database with tokend's schema (opening it once through the
/// library, so the migrations are the daemon's own) and inserts `rows` in
/// one transaction. Returns the total access-token bytes and the row count.
pub async fn create_database(
    db: &Path,
    rows: impl Iterator<Item = RowSpec>,
) -> Result<(u64, usize), Error> {
    let store = tokend::store::Store::open(db).await?;
    store.close().await;
    // No fsync while generating: this is set-up, not the daemon's work.
    let mut conn = open_db(db)?
        .synchronous(SqliteSynchronous::Off)
        .connect()
        .await?;
    sqlx::query("PRAGMA cache_size = -262144")
        .execute(&mut conn)
        .await?;
    let created = now_ms();
    let mut tx = conn.begin().await?;
    let (mut bytes, mut count) = (0u64, 0usize);
    let mut chunk = Vec::with_capacity(INSERT_CHUNK);
    for row in rows {
        bytes += row.access_token.len() as u64;
        count += 1;
        chunk.push(row);
        if chunk.len() == INSERT_CHUNK {
            insert_chunk(&mut tx, std::mem::take(&mut chunk), created).await?;
        }
    }
    if !chunk.is_empty() {
        insert_chunk(&mut tx, chunk, created).await?;
    }
    tx.commit().await?;
    // Leave no WAL behind: the daemon should start on a plain file.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok((bytes, count))
}

fn open_db(db: &Path) -> Result<SqliteConnectOptions, Error> {
    Ok(SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5)))
}

async fn insert_chunk(
    conn: &mut SqliteConnection,
    rows: Vec<RowSpec>,
    created: i64,
) -> Result<(), Error> {
    let one =
        format!("(?, '{PROVIDER}', ?, ?, 'Bearer', ?, 'expires_in', 'active', ?, {created}, ?)");
    let sql = format!(
        "INSERT INTO credentials (name, provider, refresh_token, access_token, token_type,
            expires_at, lifetime_source, state, last_refresh_at, created_at, updated_at)
         VALUES {}",
        vec![one; rows.len()].join(",")
    );
    let mut q = sqlx::query(&sql);
    for r in rows {
        q = q
            .bind(r.name)
            .bind(r.refresh_token)
            .bind(r.access_token)
            .bind(r.expires_at)
            .bind(r.last_refresh_at)
            .bind(r.last_refresh_at);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// Makes the named credentials fall due at exactly `due` (daemon stopped).
pub async fn set_due(db: &Path, names: &[String], due: i64) -> Result<(), Error> {
    let mut conn = open_db(db)?.connect().await?;
    let mut tx = conn.begin().await?;
    for name in names {
        sqlx::query(
            "UPDATE credentials SET expires_at = ?2, last_refresh_at = ?3, updated_at = ?3
             WHERE name = ?1",
        )
        .bind(name)
        .bind(due + MARGIN_MS)
        .bind(due - 2 * DAY_MS)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

/// How many of the rows named `prefix*` hold a refresh committed after
/// `since` (Unix ms) with no refresh left marked in flight. Safe while the
/// daemon runs: WAL lets a reader in beside its writer.
pub async fn committed_since(db: &Path, prefix: &str, since: i64) -> Result<usize, Error> {
    let mut conn = open_db(db)?.connect().await?;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credentials WHERE name >= ?1 AND name < ?2
            AND last_refresh_at > ?3 AND refresh_started_at IS NULL",
    )
    .bind(prefix)
    .bind(prefix_end(prefix))
    .bind(since)
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    Ok(n as usize)
}

/// The first string after every string starting with `prefix` (an ASCII
/// prefix not ending in 0x7f): a range on the primary key finds the rows
/// through its index, where `LIKE 'prefix%'` (case-insensitive) would scan
/// a million rows on every poll.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&end).into_owned()
}

/// The refresh token on record for every credential named `prefix*`.
pub async fn stored_refresh_tokens(
    db: &Path,
    prefix: &str,
) -> Result<HashMap<String, String>, Error> {
    let mut conn = open_db(db)?.connect().await?;
    let rows = sqlx::query(
        "SELECT name, refresh_token FROM credentials WHERE name >= ?1 AND name < ?2 ORDER BY name",
    )
    .bind(prefix)
    .bind(prefix_end(prefix))
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("refresh_token")?)))
        .collect()
}

/// How many credentials hold exactly the refresh token the fake considers
/// valid now for their family (so: rotated, and the rotation committed).
pub fn count_current(
    stored: &HashMap<String, String>,
    families: &HashMap<String, u64>,
    current: &HashMap<u64, String>,
) -> usize {
    families
        .iter()
        .filter(|(name, family)| {
            matches!((stored.get(*name), current.get(family)), (Some(s), Some(c)) if s == c)
        })
        .count()
}

// ---------------------------------------------------------------------------
// Files and the daemon process.

/// A temporary directory with the daemon's files.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub database: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    pub fn new() -> Result<Layout, Error> {
        let dir = tempfile::Builder::new().prefix("tokend-scale-").tempdir()?;
        Ok(Layout {
            socket: dir.path().join("run/tokend.sock"),
            database: dir.path().join("state/tokend.db"),
            config: dir.path().join("config.toml"),
            log: dir.path().join("daemon.log"),
            dir,
        })
    }

    /// The configuration: deterministic due times (no jitter, a fixed
    /// margin cap) and `concurrency` refreshes in flight, overall and to the
    /// provider, which speaks `fake`'s flavour with its client credentials.
    pub fn config_toml(&self, fake: &FakeProvider, concurrency: usize) -> String {
        let cfg = fake.config();
        format!(
            "[daemon]\nsocket = {socket:?}\ndatabase = {database:?}\n\
             refresh_remaining = 0.2\nrefresh_jitter = 0.0\nmin_refresh_interval = \"1s\"\n\
             max_refresh_margin = \"6h\"\nmax_concurrent_refreshes = {concurrency}\n\n\
             [providers.{PROVIDER}]\ntoken_url = {url:?}\nclient_id = {id:?}\n\
             client_secret = {secret:?}\nclient_auth = {auth:?}\n\
             max_concurrent_refreshes = {concurrency}\n",
            socket = self.socket,
            database = self.database,
            url = fake.token_url(),
            id = cfg.client_id,
            secret = cfg.client_secret.clone().unwrap_or_default(),
            auth = cfg.flavor.client_auth(),
        )
    }

    /// Writes [`Layout::config_toml`] as a 0600 file (the daemon refuses a
    /// readable one holding a client secret).
    pub fn write_config(&self, fake: &FakeProvider, concurrency: usize) -> Result<(), Error> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.config)?
            .write_all(self.config_toml(fake, concurrency).as_bytes())?;
        Ok(())
    }

    /// The daemon's log so far (every run appends to it).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How long a daemon may take to stop: its own `shutdown_timeout` (10 s)
/// plus closing the database, with room to spare.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// A running `tokend daemon`, killed if dropped while still running (so an
/// error anywhere never leaves one behind).
pub struct Daemon {
    child: Child,
    pid: i32,
    /// When `READY=1` arrived, set by the task reading the notify socket.
    ready: watch::Receiver<Option<Instant>>,
    reader: JoinHandle<()>,
    spawned: Instant,
    log: PathBuf,
}

impl Daemon {
    /// Starts `tokend daemon --config C --database D --log stderr` with
    /// `NOTIFY_SOCKET` pointing at a fresh datagram socket of ours, read for
    /// the daemon's whole life. `rust_log` `None` keeps the default level
    /// (info).
    pub async fn spawn(
        bin: &Path,
        layout: &Layout,
        run: &str,
        rust_log: Option<&str>,
    ) -> Result<Daemon, Error> {
        let notify_path = layout.dir.path().join(format!("notify-{run}.sock"));
        let notify = UnixDatagram::bind(&notify_path)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&layout.log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["daemon", "--log", "stderr", "--config"])
            .arg(&layout.config)
            .arg("--database")
            .arg(&layout.database)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("TOKEND_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl(2) is async-signal-safe and touches nothing of ours.
        // The daemon gets SIGKILL if this thread dies, so even a bench killed
        // by a signal (no destructors run) leaves no daemon behind. The
        // thread that spawns is the one running `block_on` (the bench's main
        // thread, the test's thread), which outlives every daemon.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        let (ready_tx, ready) = watch::channel(None);
        let spawned = Instant::now();
        let child = cmd.spawn()?;
        let pid = child.id().ok_or("tokend exited at once")? as i32;
        Ok(Daemon {
            child,
            pid,
            ready,
            reader: tokio::spawn(read_notifications(notify, ready_tx)),
            spawned,
            log: layout.log.clone(),
        })
    }

    /// The process id, for `/proc`.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for `READY=1` and returns the time from spawn to its arrival.
    /// Fails if the daemon exits first or `within` passes.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<Duration, Error> {
        let deadline = self.spawned + within;
        loop {
            if let Some(at) = *self.ready.borrow() {
                return Ok(at - self.spawned);
            }
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                return Err(format!(
                    "tokend exited before READY=1 ({status}); log tail, newest first:\n{}",
                    tail.join("\n")
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("tokend sent no READY=1 within {within:?}").into());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.ready.changed()).await;
        }
    }

    /// SIGTERM, then waits for a clean exit; returns how long stopping took.
    pub async fn stop(mut self) -> Result<Duration, Error> {
        let start = Instant::now();
        // SAFETY: kill(2) on our own child, which is not reaped yet (we hold
        // its `Child` and have not waited on it).
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let status = tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .map_err(|_| format!("tokend did not stop within {STOP_TIMEOUT:?} of SIGTERM"))??;
        if !status.success() {
            return Err(format!("tokend exited with {status}").into());
        }
        Ok(start.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads every notification, as the service manager would, noting when
/// `READY=1` arrives. It must keep reading: the daemon's `sd_notify` is a
/// blocking send, so a full queue (10 datagrams by default,
/// `net.unix.max_dgram_qlen`) would block the daemon's threads.
async fn read_notifications(sock: UnixDatagram, ready: watch::Sender<Option<Instant>>) {
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf).await {
        let now = Instant::now();
        if ready.borrow().is_none()
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
        {
            ready.send_replace(Some(now));
        }
    }
}

// ---------------------------------------------------------------------------
// /proc.

/// Memory of a process, in kB as `/proc/<pid>/status` gives it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// `VmRSS`: resident set.
    pub rss_kb: u64,
    /// `RssAnon`: its anonymous part (heap, stacks), without file pages.
    pub anon_kb: u64,
    /// `VmHWM`: peak resident set so far.
    pub hwm_kb: u64,
}

/// Reads [`Mem`] of `pid`.
pub fn mem(pid: i32) -> Result<Mem, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss_kb: kb("VmRSS"),
        anon_kb: kb("RssAnon"),
        hwm_kb: kb("VmHWM"),
    })
}

/// utime + stime of `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: i32) -> Result<u64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let rest = stat.rsplit_once(')').ok_or("malformed /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| -> Result<u64, Error> {
        Ok(fields.get(n - 3).ok_or("short /proc/<pid>/stat")?.parse()?)
    };
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of every thread alive now, in nanoseconds (the first field of
/// `/proc/<pid>/task/<tid>/schedstat`): finer than the 10 ms clock ticks of
/// `stat`, which a 5 s window cannot resolve below 0.2 %.
pub fn cpu_ns(pid: i32) -> Result<u64, Error> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may exit between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Context switches summed over the threads alive now, and their count.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switches {
    /// `voluntary_ctxt_switches`: the thread blocked (a wake-up each).
    pub voluntary: u64,
    /// `nonvoluntary_ctxt_switches`: the thread was preempted.
    pub involuntary: u64,
    /// Threads counted.
    pub threads: usize,
}

/// Reads [`Switches`] of every thread of `pid`.
pub fn switches(pid: i32) -> Result<Switches, Error> {
    let mut s = Switches::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may exit between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        let count = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        s.voluntary += count("voluntary_ctxt_switches:");
        s.involuntary += count("nonvoluntary_ctxt_switches:");
        s.threads += 1;
    }
    Ok(s)
}

/// What an idle window cost the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    pub window: Duration,
    /// CPU time used, in clock ticks.
    pub cpu_ticks: u64,
    /// As a percentage of one CPU over the window.
    pub cpu_percent: f64,
    /// The same from the threads' schedstat (ns resolution), as a percentage.
    pub sched_percent: f64,
    /// Voluntary context switches (wake-ups) over the window.
    pub wakeups: u64,
    /// Involuntary ones.
    pub preemptions: u64,
    /// Threads at the end of the window.
    pub threads: usize,
}

impl Idle {
    /// Wake-ups per second.
    pub fn wakeups_per_sec(&self) -> f64 {
        self.wakeups as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Watches `pid` for `window` while nothing is asked of it.
pub async fn measure_idle(pid: i32, window: Duration) -> Result<Idle, Error> {
    let (t0, n0, s0) = (cpu_ticks(pid)?, cpu_ns(pid)?, switches(pid)?);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (t1, n1, s1) = (cpu_ticks(pid)?, cpu_ns(pid)?, switches(pid)?);
    let window = start.elapsed();
    let cpu_ticks = t1.saturating_sub(t0);
    Ok(Idle {
        window,
        cpu_ticks,
        cpu_percent: cpu_ticks as f64 / clock_ticks_per_sec() / window.as_secs_f64() * 100.0,
        sched_percent: n1.saturating_sub(n0) as f64 / 1e9 / window.as_secs_f64() * 100.0,
        wakeups: s1.voluntary.saturating_sub(s0.voluntary),
        preemptions: s1.involuntary.saturating_sub(s0.involuntary),
        threads: s1.threads,
    })
}

// ---------------------------------------------------------------------------
// The scenario.

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleParams {
    /// The `tokend` binary (release for the bench, debug for the test).
    pub tokend: PathBuf,
    /// Credentials in the database (the burst ones included).
    pub n: usize,
    /// Of those, how many fall due together at T.
    pub burst: usize,
    /// Idle window after ready.
    pub idle: Duration,
    /// Pause between ready and the idle window, so start-up's tail (the
    /// first status line to the service manager...) is not counted as idle.
    pub settle: Duration,
    /// Slack between the expected second ready and T.
    pub lead: Duration,
    /// `max_concurrent_refreshes`, overall and for the provider.
    pub concurrency: usize,
    /// `RUST_LOG` for the daemon; `None` keeps its default (info).
    pub rust_log: Option<String>,
    /// Also fetch `GET /v1/credentials` and check every name is listed
    /// (fine at 10k, a 400 MB answer at 1M).
    pub list_all: bool,
    /// Upper bound on any start (spawn to `READY=1`).
    pub start_timeout: Duration,
}

/// Everything measured and checked by [`run_scale`].
#[derive(Debug, Clone, Default)]
pub struct ScaleOutcome {
    pub n: usize,
    pub burst: usize,
    pub generate: Duration,
    pub db_bytes: u64,
    /// Sum of the access tokens' lengths over all N rows.
    pub access_bytes: u64,
    /// Spawn to `READY=1`, first start.
    pub ready: Duration,
    /// CPU seconds the daemon used to get there.
    pub load_cpu_secs: f64,
    pub mem_ready: Mem,
    pub idle: Idle,
    pub mem_after_idle: Mem,
    /// Credentials the running daemon reports (`GET /v1/health`).
    pub visible: usize,
    /// With `list_all`: names in `GET /v1/credentials` that match the rows.
    pub listed: Option<usize>,
    pub stop: Duration,
    /// Spawn to `READY=1`, second start (the burst run).
    pub ready2: Duration,
    /// How long before T the second start was ready (negative: after T, so
    /// the lateness includes start-up).
    pub ready2_before_t: Duration,
    pub ready2_after_t: bool,
    /// Lateness of each burst refresh at the fake, ms, sorted.
    pub lateness_ms: Vec<f64>,
    /// Burst credentials refreshed at least once, and more than once.
    pub refreshed: usize,
    pub refreshed_twice: usize,
    /// T to every burst refresh committed in the database (`None`: not all
    /// within the wait).
    pub committed_after_t: Option<Duration>,
    pub mem_after_burst: Mem,
    /// CPU seconds the daemon used from its second ready to the last commit.
    pub burst_cpu_secs: f64,
    pub stop2: Duration,
    /// Burst credentials whose stored refresh token is the fake's current one.
    pub db_current: usize,
    /// Token requests beyond one per burst credential (retries, refreshes of
    /// credentials that were not due); expected 0.
    pub unexpected_requests: usize,
}

/// A percentile (nearest rank) of sorted values; NaN if empty.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len();
    sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
}

/// Runs the scale scenario against `fake` (Didit flavour or any other
/// strict one with rotation on). `progress` gets one line per step.
pub async fn run_scale(
    p: &ScaleParams,
    fake: &FakeProvider,
    progress: &dyn Fn(&str),
) -> Result<(ScaleOutcome, Layout), Error> {
    let k = p.burst.min(p.n);
    let mut out = ScaleOutcome {
        n: p.n,
        burst: k,
        ..ScaleOutcome::default()
    };
    let layout = Layout::new()?;
    layout.write_config(fake, p.concurrency)?;

    // The burst credentials hold refresh tokens the fake accepts; the rest
    // hold generated ones it has never seen (refreshing those would fail).
    progress(&format!("N={}: generating the database", p.n));
    let issued = fake.issue_refresh_tokens(k);
    let families: HashMap<String, u64> = issued
        .iter()
        .enumerate()
        .map(|(i, (_, f))| (burst_name(i), *f))
        .collect();
    let burst_names: Vec<String> = (0..k).map(burst_name).collect();
    let now = now_ms();
    let rows = issued
        .into_iter()
        .enumerate()
        .map(move |(i, (rt, _))| RowSpec::idle(SEED, i, burst_name(i), rt, now))
        .chain((k..p.n).map(move |i| {
            RowSpec::idle(SEED, i, scale_name(i), scale_refresh_token(SEED, i), now)
        }));
    let started = Instant::now();
    let (bytes, count) = create_database(&layout.database, rows).await?;
    out.generate = started.elapsed();
    out.access_bytes = bytes;
    out.db_bytes = std::fs::metadata(&layout.database)?.len();
    if count != p.n {
        return Err(format!("inserted {count} rows, expected {}", p.n).into());
    }
    let requests_before = fake.request_count();
    let refreshes_before = fake.refresh_count();

    // 1. Scale: ready, memory, idle.
    progress(&format!("N={}: starting the daemon", p.n));
    let rust_log = p.rust_log.as_deref();
    let mut d = Daemon::spawn(&p.tokend, &layout, "scale", rust_log).await?;
    out.ready = d.wait_ready(p.start_timeout).await?;
    out.load_cpu_secs = cpu_ticks(d.pid())? as f64 / clock_ticks_per_sec();
    out.mem_ready = mem(d.pid())?;
    progress(&format!(
        "N={}: ready in {:.2}s; idle for {:?}",
        p.n,
        out.ready.as_secs_f64(),
        p.idle
    ));
    tokio::time::sleep(p.settle).await;
    out.idle = measure_idle(d.pid(), p.idle).await?;
    out.mem_after_idle = mem(d.pid())?;
    out.visible = health_count(&layout.socket).await?;
    if p.list_all {
        out.listed = Some(listed_names(&layout.socket, p.n, k).await?);
    }
    out.stop = d.stop().await?;

    // 2. Burst: K due at T, a little after the second start should be ready.
    let t = now_ms() + (out.ready.as_millis() as i64) * 3 / 2 + p.lead.as_millis() as i64;
    set_due(&layout.database, &burst_names, t).await?;
    progress(&format!(
        "N={}: restarting with {k} credentials due in {:.1}s",
        p.n,
        (t - now_ms()) as f64 / 1000.0
    ));
    let mut d = Daemon::spawn(&p.tokend, &layout, "burst", rust_log).await?;
    out.ready2 = d.wait_ready(p.start_timeout).await?;
    let left = t - now_ms();
    out.ready2_after_t = left < 0;
    out.ready2_before_t = Duration::from_millis(left.max(0) as u64);
    let ticks_ready = cpu_ticks(d.pid())?;
    let deadline = Duration::from_secs(30) + Duration::from_millis(20 * k as u64);
    out.committed_after_t = wait_burst(
        fake,
        &layout.database,
        (refreshes_before + k, k),
        t,
        deadline,
    )
    .await?;
    out.mem_after_burst = mem(d.pid())?;
    out.burst_cpu_secs =
        cpu_ticks(d.pid())?.saturating_sub(ticks_ready) as f64 / clock_ticks_per_sec();
    out.stop2 = d.stop().await?;

    // Correctness: each burst credential refreshed once, its rotated token
    // on disk; nothing else asked of the provider.
    let times = fake.refresh_wall_times();
    let mut first: HashMap<u64, i64> = HashMap::new();
    let mut per_family: HashMap<u64, usize> = HashMap::new();
    let wanted: std::collections::HashSet<u64> = families.values().copied().collect();
    for (family, at) in times.iter().filter(|(f, _)| wanted.contains(f)) {
        *per_family.entry(*family).or_default() += 1;
        first.entry(*family).or_insert(system_time_ms(*at));
    }
    out.refreshed = per_family.len();
    out.refreshed_twice = per_family.values().filter(|&&c| c > 1).count();
    out.lateness_ms = first.values().map(|&at| (at - t) as f64).collect();
    out.lateness_ms.sort_by(f64::total_cmp);
    let stored = stored_refresh_tokens(&layout.database, "burst-").await?;
    out.db_current = count_current(&stored, &families, &fake.current_refresh_tokens_by_family());
    out.unexpected_requests = (fake.request_count() - requests_before).saturating_sub(k);
    Ok((out, layout))
}

/// Waits until the fake has `target_refreshes` in total and the database
/// holds all `k` burst refreshes; returns T to the moment the last one was
/// seen committed (`None` if that did not happen within `within` of T).
async fn wait_burst(
    fake: &FakeProvider,
    db: &Path,
    (target_refreshes, k): (usize, usize),
    t: i64,
    within: Duration,
) -> Result<Option<Duration>, Error> {
    let deadline = t + within.as_millis() as i64;
    // Burst rows were last refreshed 48 h before T; a refresh commits a newer time.
    let since = t - DAY_MS;
    while now_ms() < deadline {
        // The fake's count is cheap; the database is read only once it is due.
        if fake.refresh_count() >= target_refreshes
            && committed_since(db, "burst-", since).await? >= k
        {
            return Ok(Some(Duration::from_millis((now_ms() - t).max(0) as u64)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

/// `GET /v1/health`: how many credentials the daemon serves.
pub async fn health_count(socket: &Path) -> Result<usize, Error> {
    let health: tokend::api::Health = tokend::client::Client::new(socket)
        .call(hyper::Method::GET, "/v1/health", None::<&()>)
        .await?;
    Ok(health.credentials)
}

/// `GET /v1/credentials`: how many of the expected names are listed (each
/// once, active, nothing else).
async fn listed_names(socket: &Path, n: usize, k: usize) -> Result<usize, Error> {
    let list: Vec<tokend::api::CredentialStatus> = tokend::client::Client::new(socket)
        .call(hyper::Method::GET, "/v1/credentials", None::<&()>)
        .await?;
    let expected: std::collections::HashSet<String> = (0..k)
        .map(burst_name)
        .chain((k..n).map(scale_name))
        .collect();
    Ok(list
        .iter()
        .filter(|c| {
            c.state == tokend::api::CredentialState::Active
                && c.provider == PROVIDER
                && expected.contains(&c.name)
        })
        .map(|c| c.name.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len())
}

// ---------------------------------------------------------------------------
// The refresh burst (throughput).

/// What [`run_refresh_burst`] measured and checked.
#[derive(Debug, Clone, Default)]
pub struct RefreshBurstOutcome {
    pub m: usize,
    pub ready: Duration,
    /// First to last of the M refreshes, as the fake saw them.
    pub fake_span: Duration,
    /// First refresh at the fake to all M committed in the database
    /// (`None`: not within the wait).
    pub commit_span: Option<Duration>,
    /// Credentials refreshed at least once, and more than once.
    pub refreshed: usize,
    pub refreshed_twice: usize,
    /// Credentials whose stored refresh token is the fake's current one.
    pub db_current: usize,
    /// Token requests beyond one per credential; expected 0.
    pub unexpected_requests: usize,
    /// CPU seconds the daemon used from spawn to the last commit.
    pub cpu_secs: f64,
    pub mem_after: Mem,
}

/// Starts the daemon on `m` credentials that are all due already, so every
/// one is refreshed at start-up, and times the burst at the fake and to the
/// database.
pub async fn run_refresh_burst(
    p: &ScaleParams,
    m: usize,
    fake: &FakeProvider,
) -> Result<(RefreshBurstOutcome, Layout), Error> {
    let mut out = RefreshBurstOutcome {
        m,
        ..RefreshBurstOutcome::default()
    };
    let layout = Layout::new()?;
    layout.write_config(fake, p.concurrency)?;
    let issued = fake.issue_refresh_tokens(m);
    let families: HashMap<String, u64> = issued
        .iter()
        .enumerate()
        .map(|(i, (_, f))| (burst_name(i), *f))
        .collect();
    let due = now_ms();
    let rows = issued
        .into_iter()
        .enumerate()
        .map(move |(i, (rt, _))| RowSpec::due_at(SEED, i, burst_name(i), rt, due));
    create_database(&layout.database, rows).await?;
    let requests_before = fake.request_count();
    let target = fake.refresh_count() + m;

    let mut d = Daemon::spawn(&p.tokend, &layout, "refresh-burst", p.rust_log.as_deref()).await?;
    out.ready = d.wait_ready(p.start_timeout).await?;
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(10 * m as u64);
    let mut committed_at = None;
    while Instant::now() < deadline {
        if fake.refresh_count() >= target
            && committed_since(&layout.database, "burst-", due - DAY_MS).await? >= m
        {
            committed_at = Some(now_ms());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.cpu_secs = cpu_ticks(d.pid())? as f64 / clock_ticks_per_sec();
    out.mem_after = mem(d.pid())?;
    d.stop().await?;

    let (span, per_family) = fake_span(fake, &families);
    out.refreshed = per_family.len();
    out.refreshed_twice = per_family.values().filter(|&&c| c > 1).count();
    if let Some((first, last)) = span {
        out.fake_span = Duration::from_millis((last - first).max(0) as u64);
        out.commit_span = committed_at.map(|at| Duration::from_millis((at - first).max(0) as u64));
    }
    let stored = stored_refresh_tokens(&layout.database, "burst-").await?;
    out.db_current = count_current(&stored, &families, &fake.current_refresh_tokens_by_family());
    out.unexpected_requests = (fake.request_count() - requests_before).saturating_sub(m);
    Ok((out, layout))
}

/// The first and last refresh (Unix ms) the fake carried out for any of
/// `families`' values, and the number of refreshes per family.
pub fn fake_span(
    fake: &FakeProvider,
    families: &HashMap<String, u64>,
) -> (Option<(i64, i64)>, HashMap<u64, usize>) {
    let wanted: std::collections::HashSet<u64> = families.values().copied().collect();
    let mut per_family: HashMap<u64, usize> = HashMap::new();
    let mut span: Option<(i64, i64)> = None;
    for (family, at) in fake.refresh_wall_times() {
        if !wanted.contains(&family) {
            continue;
        }
        *per_family.entry(family).or_default() += 1;
        let at = system_time_ms(at);
        span = Some(span.map_or((at, at), |(a, b)| (a.min(at), b.max(at))));
    }
    (span, per_family)
}
