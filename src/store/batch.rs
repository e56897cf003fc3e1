//! Grouped commits: the durable writes of many refreshes in one transaction,
//! so that they share one fsync.
//!
//! A refresh writes twice: the mark that it is about to be sent
//! ([`Store::begin_refreshes`]) and its outcome ([`Store::save_outcomes`]).
//! Each single-row write is its own fsynced commit, and the disk's fsync rate
//! caps the refresh rate. Here many rows go in one `BEGIN IMMEDIATE` ...
//! `COMMIT`, written by one multi-row statement per chunk
//! (`WITH v(...) AS (VALUES ...) UPDATE credentials ... FROM v`), because
//! sqlx hands every statement to its worker thread and per-row statements
//! would cost more than the fsync they save.
//!
//! [`GroupCommit`] is the queue in front of that: one task that takes
//! whatever requests are waiting, commits them together and answers each.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::{bind_state, from_row, Store, StoreError};
use crate::credential::Credential;
use crate::seal::Key;

/// Bound parameters per statement at most. SQLite's limit is 32766; staying
/// below it leaves room and keeps each statement's memory bounded.
const MAX_PARAMS: usize = 30_000;

/// Columns of one row of the begin statement: name, generation, time.
const BEGIN_PARAMS: usize = 3;

/// What a save writes, in [`bind_state`]'s order, then `updated_at`.
const SAVE_COLUMNS: [&str; 13] = [
    "refresh_token",
    "access_token",
    "token_type",
    "scope",
    "expires_at",
    "lifetime_source",
    "refresh_expires_at",
    "extra",
    "state",
    "last_error",
    "refresh_started_at",
    "last_refresh_at",
    "updated_at",
];

/// Columns of one row of the save statement: name, generation, then the
/// written columns.
const SAVE_PARAMS: usize = 2 + SAVE_COLUMNS.len();

/// Rows per begin statement (8192).
const BEGIN_ROWS: usize = rows_per_statement(BEGIN_PARAMS);

/// Rows per save statement (1024).
const SAVE_ROWS: usize = rows_per_statement(SAVE_PARAMS);

const _: () = assert!(BEGIN_ROWS * BEGIN_PARAMS <= MAX_PARAMS);
const _: () = assert!(SAVE_ROWS * SAVE_PARAMS <= MAX_PARAMS);

/// Statements of up to this many rows are kept prepared by sqlx (per
/// connection); larger ones are rare (bulk work) and would each pin
/// hundreds of kilobytes of compiled statement.
const CACHED_ROWS: usize = 256;

/// The largest power of two of rows whose parameters fit in [`MAX_PARAMS`].
/// Statements are padded to a power of two of rows, so only a handful of
/// distinct statements ever exist.
const fn rows_per_statement(params_per_row: usize) -> usize {
    let mut rows = 1;
    while rows * 2 * params_per_row <= MAX_PARAMS {
        rows *= 2;
    }
    rows
}

/// One write of a batch.
#[derive(Debug, Clone, Copy)]
enum Op<'a> {
    /// Mark the refresh of this generation as started at `at`.
    Begin {
        name: &'a str,
        generation: i64,
        at: i64,
    },
    /// Write the outcome of a refresh.
    Save(&'a Credential),
}

impl Op<'_> {
    fn name(&self) -> &str {
        match self {
            Op::Begin { name, .. } => name,
            Op::Save(c) => &c.name,
        }
    }

    /// The result of an op that matched nothing.
    fn unmatched(&self) -> Found {
        match self {
            Op::Begin { .. } => Found::Begun(None),
            Op::Save(_) => Found::Saved(false),
        }
    }
}

/// What one [`Op`] did.
enum Found {
    /// The marked row, not yet decoded; `None` if the name and generation
    /// matched no row.
    Begun(Option<SqliteRow>),
    /// Whether the save matched its row.
    Saved(bool),
}

impl Found {
    fn into_row(self) -> Option<SqliteRow> {
        match self {
            Found::Begun(row) => row,
            Found::Saved(_) => None,
        }
    }

    fn matched(&self) -> bool {
        match self {
            Found::Begun(row) => row.is_some(),
            Found::Saved(saved) => *saved,
        }
    }
}

impl Store {
    /// Records durably, in one transaction, that a refresh of each
    /// `(name, generation)` is about to be sent at `at`, and returns each
    /// credential as stored (tokens opened with this store's key), in input
    /// order. `None` for a credential that was replaced or removed: its row
    /// is left alone. If any stored token does not open, nothing is written.
    pub async fn begin_refreshes(
        &self,
        items: &[(String, i64)],
        at: i64,
    ) -> Result<Vec<Option<Credential>>, StoreError> {
        let ops: Vec<Op<'_>> = items
            .iter()
            .map(|(name, generation)| Op::Begin {
                name,
                generation: *generation,
                at,
            })
            .collect();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let found = apply(&mut tx, &ops, self.key.as_deref()).await?;
        // Decoded before the commit, so a row that does not open rolls
        // every mark back instead of leaving marks for refreshes never sent.
        let creds = found
            .into_iter()
            .map(|f| self.decode(f.into_row()))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        Ok(creds)
    }

    /// Writes the outcomes of many refreshes (the columns
    /// [`Store::save_outcome`] writes, sealed the same way) in one durable
    /// transaction. Returns, per input, whether its row matched; a
    /// credential replaced or removed since its refresh began is not
    /// written. A name given twice is written in input order.
    pub async fn save_outcomes(&self, creds: &[Credential]) -> Result<Vec<bool>, StoreError> {
        let ops: Vec<Op<'_>> = creds.iter().map(Op::Save).collect();
        let found = self.apply_committed(&ops).await?;
        Ok(found.iter().map(Found::matched).collect())
    }

    /// Runs `ops` in one transaction, committed (one fsync) before it
    /// returns.
    async fn apply_committed(&self, ops: &[Op<'_>]) -> Result<Vec<Found>, StoreError> {
        // One statement is its own transaction (SQLite's autocommit: all or
        // nothing, committed when it completes). Leaving out BEGIN and
        // COMMIT spares two trips through sqlx's worker thread, which is
        // most of what a lone request would otherwise pay over a plain
        // `save_outcome`.
        if single_statement(ops) {
            let mut conn = self.pool.acquire().await?;
            return Ok(apply(&mut conn, ops, self.key.as_deref()).await?);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let found = apply(&mut tx, ops, self.key.as_deref()).await?;
        tx.commit().await?;
        Ok(found)
    }

    /// A row returned by a begin, as a credential.
    fn decode(&self, row: Option<SqliteRow>) -> Result<Option<Credential>, StoreError> {
        row.map(|row| from_row(&row, self.key.as_deref()))
            .transpose()
    }
}

/// Runs `ops` on `conn` (inside the caller's transaction) and returns what
/// each did, in order. A name that comes again starts a new run of
/// statements, so two writes of one credential apply in the order given.
async fn apply(
    conn: &mut SqliteConnection,
    ops: &[Op<'_>],
    key: Option<&Key>,
) -> Result<Vec<Found>, sqlx::Error> {
    let mut found: Vec<Found> = ops.iter().map(Op::unmatched).collect();
    let mut start = 0;
    while start < ops.len() {
        let end = segment_end(ops, start);
        apply_segment(conn, &ops[start..end], &mut found[start..end], key).await?;
        start = end;
    }
    Ok(found)
}

/// Whether [`apply`] runs `ops` as one statement: distinct names, one kind
/// of op, one chunk.
fn single_statement(ops: &[Op<'_>]) -> bool {
    let begins = ops
        .iter()
        .filter(|op| matches!(op, Op::Begin { .. }))
        .count();
    let fits = match (begins, ops.len() - begins) {
        (0, saves) => saves <= SAVE_ROWS,
        (begins, 0) => begins <= BEGIN_ROWS,
        _ => false,
    };
    fits && segment_end(ops, 0) == ops.len()
}

/// The end of the longest run of `ops` from `start` in which no name
/// repeats (at least one op, so the caller always advances).
fn segment_end(ops: &[Op<'_>], start: usize) -> usize {
    let mut seen = HashSet::new();
    ops[start..]
        .iter()
        .position(|op| !seen.insert(op.name()))
        .map_or(ops.len(), |i| start + i)
}

/// Runs ops whose names are all different: their order does not matter, so
/// all begins go in one statement per chunk, and all saves in another.
async fn apply_segment(
    conn: &mut SqliteConnection,
    ops: &[Op<'_>],
    found: &mut [Found],
    key: Option<&Key>,
) -> Result<(), sqlx::Error> {
    let mut begins = Vec::new();
    let mut saves = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Begin {
                name,
                generation,
                at,
            } => begins.push((i, name, generation, at)),
            Op::Save(c) => saves.push((i, c)),
        }
    }
    for chunk in begins.chunks(BEGIN_ROWS) {
        let mut rows = begin_chunk(conn, chunk).await?;
        for &(i, name, _, _) in chunk {
            found[i] = Found::Begun(rows.remove(name));
        }
    }
    for chunk in saves.chunks(SAVE_ROWS) {
        let matched = save_chunk(conn, chunk, key).await?;
        for &(i, c) in chunk {
            found[i] = Found::Saved(matched.contains(&c.name));
        }
    }
    Ok(())
}

/// `(VALUES (?, ?), (?, ?) ...)` text: `rows` rows of `columns` parameters.
fn values_sql(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// Rows a statement for `n` rows is padded to (see [`rows_per_statement`]).
fn padded(n: usize) -> usize {
    n.next_power_of_two()
}

/// Marks the refreshes of one chunk (distinct names) and returns the rows
/// that matched, by name (RETURNING gives them in no particular order).
async fn begin_chunk(
    conn: &mut SqliteConnection,
    chunk: &[(usize, &str, i64, i64)],
) -> Result<HashMap<String, SqliteRow>, sqlx::Error> {
    let rows = padded(chunk.len());
    // RETURNING can name only the updated table, so `*` is its columns.
    // A mark already there is an earlier attempt whose outcome is unknown:
    // it is kept, because a provider's reuse grace runs from that attempt,
    // and start-up retries interrupted refreshes oldest first by it.
    let sql = format!(
        "WITH v(k, g, t) AS (VALUES {})
         UPDATE credentials
         SET refresh_started_at = coalesce(credentials.refresh_started_at, v.t), updated_at = v.t
         FROM v WHERE credentials.name = v.k AND credentials.generation = v.g
         RETURNING *",
        values_sql(rows, BEGIN_PARAMS)
    );
    let mut query = sqlx::query(&sql).persistent(rows <= CACHED_ROWS);
    for &(_, name, generation, at) in chunk {
        query = query.bind(name).bind(generation).bind(at);
    }
    // Padding rows are NULL, which equals no name.
    for _ in chunk.len()..rows {
        query = query
            .bind(None::<String>)
            .bind(None::<i64>)
            .bind(None::<i64>);
    }
    let returned = query.fetch_all(&mut *conn).await?;
    returned
        .into_iter()
        .map(|row| Ok((row.try_get("name")?, row)))
        .collect()
}

/// Writes the outcomes of one chunk (distinct names) and returns the names
/// whose row matched.
async fn save_chunk(
    conn: &mut SqliteConnection,
    chunk: &[(usize, &Credential)],
    key: Option<&Key>,
) -> Result<HashSet<String>, sqlx::Error> {
    let rows = padded(chunk.len());
    let set = SAVE_COLUMNS
        .iter()
        .map(|c| format!("{c} = v.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH v(k, g, {}) AS (VALUES {})
         UPDATE credentials SET {set}
         FROM v WHERE credentials.name = v.k AND credentials.generation = v.g
         RETURNING name",
        SAVE_COLUMNS.join(", "),
        values_sql(rows, SAVE_PARAMS),
    );
    let mut query = sqlx::query(&sql).persistent(rows <= CACHED_ROWS);
    for &(_, c) in chunk {
        query = bind_state(query.bind(&c.name).bind(c.generation), c, key).bind(c.updated_at);
    }
    for _ in 0..(rows - chunk.len()) * SAVE_PARAMS {
        query = query.bind(None::<String>);
    }
    let returned = query.fetch_all(&mut *conn).await?;
    returned
        .iter()
        .map(|r| r.try_get::<String, _>("name"))
        .collect()
}

// ---------------------------------------------------------------------------
// The queue.

/// A request waiting in the queue, with where to send its answer.
enum Request {
    Begin {
        name: String,
        generation: i64,
        at: i64,
        /// The raw row: the waiter decodes it, off the queue's task.
        reply: oneshot::Sender<Result<Option<SqliteRow>, StoreError>>,
    },
    Save {
        // Boxed: a credential is several times the size of a begin.
        cred: Box<Credential>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

impl Request {
    fn op(&self) -> Op<'_> {
        match self {
            Request::Begin {
                name,
                generation,
                at,
                ..
            } => Op::Begin {
                name,
                generation: *generation,
                at: *at,
            },
            Request::Save { cred, .. } => Op::Save(cred),
        }
    }

    /// Answers the waiter; one that gave up is not an error.
    fn answer(self, found: Result<Found, StoreError>) {
        match self {
            Request::Begin { reply, .. } => {
                let _ = reply.send(found.map(Found::into_row));
            }
            Request::Save { reply, .. } => {
                let _ = reply.send(found.map(|f| f.matched()));
            }
        }
    }
}

/// What a [`GroupCommit`] has done so far, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Transactions attempted (each one fsync when it commits).
    pub transactions: u64,
    /// Requests they carried.
    pub requests: u64,
    /// Transactions that failed (every request in them got the error).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    requests: AtomicU64,
    failed: AtomicU64,
}

/// A queue that commits the begins and saves of many refreshes together:
/// one task takes the first waiting request and every other one already
/// queued (up to a maximum, after one `yield_now` so that runnable tasks
/// can add theirs), runs them in one transaction, and answers each.
/// Nothing waits on a timer, so a lone request costs one commit, as it
/// would without the queue; batches form from the requests that arrive
/// while the previous transaction is being fsynced.
///
/// Requests are applied in arrival order: a save and then a begin of the
/// same credential in one batch sees the save. If a transaction fails,
/// nothing of it is written and every request in it gets the error, as
/// [`StoreError::Shared`] (which displays as the error itself).
///
/// Cheap to clone; the task ends when the last handle is dropped. A request
/// whose caller stops waiting is still carried out.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    queue: mpsc::Sender<Request>,
    store: Store,
    counters: Arc<Counters>,
}

impl GroupCommit {
    /// Starts the queue's task on the current tokio runtime (panics outside
    /// one, like `tokio::spawn`). A transaction carries at most `max_batch`
    /// requests (at least 1).
    pub fn start(store: Store, max_batch: usize) -> GroupCommit {
        let max_batch = max_batch.max(1);
        let (queue, requests) = mpsc::channel(max_batch);
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(
            store.clone(),
            requests,
            max_batch,
            Arc::clone(&counters),
        ));
        GroupCommit {
            queue,
            store,
            counters,
        }
    }

    /// As [`Store::begin_refreshes`] for one credential, committed with
    /// whatever else is queued: marks the refresh of `generation` as started
    /// at `at` and returns the stored credential, or `None` if it was
    /// replaced or removed.
    pub async fn begin(
        &self,
        name: String,
        generation: i64,
        at: i64,
    ) -> Result<Option<Credential>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Begin {
            name,
            generation,
            at,
            reply,
        };
        let row = self.submit(request, answer).await?;
        self.store.decode(row)
    }

    /// As [`Store::save_outcome`], committed with whatever else is queued.
    /// Returns false, writing nothing, if the credential was replaced or
    /// removed since its refresh began.
    pub async fn save(&self, cred: Credential) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let cred = Box::new(cred);
        self.submit(Request::Save { cred, reply }, answer).await
    }

    /// The store the queue writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Transactions and requests so far.
    pub fn stats(&self) -> GroupStats {
        GroupStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    async fn submit<T>(
        &self,
        request: Request,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.queue.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The queue's task is gone (it panicked, or the runtime is shutting down).
fn stopped() -> StoreError {
    StoreError::Sqlx(sqlx::Error::WorkerCrashed)
}

/// The queue's task: one batch at a time, until every handle is dropped.
async fn run(
    store: Store,
    mut requests: mpsc::Receiver<Request>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::new();
    // Waits for one request, then takes those already queued, never more.
    // (recv_many returns 0 only once every handle is gone.)
    while requests.recv_many(&mut batch, max_batch).await > 0 {
        // One yield lets tasks that are already runnable (typically the
        // waiters the last commit just answered) queue their next request
        // first, so that the commit after a big one does not leave with
        // only the first request to arrive. It is not a timer: a lone
        // request waits microseconds, not for a deadline.
        if batch.len() < max_batch {
            tokio::task::yield_now().await;
            while batch.len() < max_batch {
                let Ok(request) = requests.try_recv() else {
                    break;
                };
                batch.push(request);
            }
        }
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if !commit(&store, &mut batch).await {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Commits `batch` in one transaction and answers (and removes) every
/// request in it. Returns whether the transaction committed.
async fn commit(store: &Store, batch: &mut Vec<Request>) -> bool {
    let ops: Vec<Op<'_>> = batch.iter().map(Request::op).collect();
    let result = store.apply_committed(&ops).await;
    drop(ops);
    match result {
        Ok(found) => {
            for (request, found) in batch.drain(..).zip(found) {
                request.answer(Ok(found));
            }
            true
        }
        Err(e) => {
            // Not logged here: each waiter reports the error in its own
            // context (which credential, which step).
            let e = Arc::new(e);
            for request in batch.drain(..) {
                request.answer(Err(StoreError::Shared(Arc::clone(&e))));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::seal::{self, SealError};
    use crate::token::Secret;

    /// Inserts `n` credentials `c0`..`c{n-1}` (generation 1, refresh token
    /// `rt-<name>`, stored as plaintext) in one statement.
    async fn insert_many(store: &Store, n: usize) {
        sqlx::query(
            "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < ?1)
             INSERT INTO credentials (name, provider, refresh_token, created_at, updated_at)
             SELECT 'c' || n, 'p', 'rt-c' || n, 100, 100 FROM i",
        )
        .bind(n as i64)
        .execute(&store.pool)
        .await
        .unwrap();
    }

    async fn open(path: &Path, key: Option<[u8; 32]>) -> Store {
        Store::open_with(path, key.map(Key::from_bytes))
            .await
            .unwrap()
    }

    /// A stored credential with refresh token `rt` and generation set.
    async fn stored(store: &Store, name: &str, rt: &str) -> Credential {
        let mut c = Credential::new(name, "p", Some(Secret::new(rt)), 100);
        c.access_token = Some(Secret::new(format!("at-{name}")));
        c.extra
            .insert("id_token".into(), format!("idt-{name}").into());
        c.generation = store.replace(&c).await.unwrap();
        c
    }

    /// The outcome of a refresh of `c`: new tokens, mark cleared.
    fn refreshed(c: &Credential, rt: &str, at: i64) -> Credential {
        let mut c = c.clone();
        c.refresh_token = Some(Secret::new(rt));
        c.access_token = Some(Secret::new(format!("at-{rt}")));
        c.refresh_started_at = None;
        c.last_refresh_at = Some(at);
        c.expires_at = Some(at + 3_600_000);
        c.updated_at = at;
        c
    }

    fn rt(c: &Credential) -> &str {
        c.refresh_token.as_ref().map_or("", Secret::expose)
    }

    async fn by_name(store: &Store, name: &str) -> Option<Credential> {
        let all = store.load_all().await.unwrap();
        all.into_iter().find(|c| c.name == name)
    }

    #[tokio::test]
    async fn begin_and_save_many_round_trip_with_generation_guard() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("b.db"), None).await;
        let a = stored(&store, "a", "rt-a").await;
        stored(&store, "b", "rt-b1").await;
        let b = stored(&store, "b", "rt-b2").await; // replaced: generation 2
        stored(&store, "c", "rt-c").await;
        assert!(store.delete("c").await.unwrap());

        let items =
            [("a", 1), ("b", 1), ("c", 1), ("b", 2), ("zz", 1)].map(|(n, g)| (n.to_string(), g));
        let begun = store.begin_refreshes(&items, 500).await.unwrap();
        let names: Vec<Option<(&str, i64, &str)>> = begun
            .iter()
            .map(|c| c.as_ref().map(|c| (c.name.as_str(), c.generation, rt(c))))
            .collect();
        assert_eq!(
            names,
            [
                Some(("a", 1, "rt-a")),
                None,
                None,
                Some(("b", 2, "rt-b2")),
                None
            ]
        );
        let got = begun[0].as_ref().unwrap();
        assert_eq!((got.refresh_started_at, got.updated_at), (Some(500), 500));
        assert_eq!(got.extra["id_token"], "idt-a");
        assert_eq!(got.access_token.as_ref().map(Secret::expose), Some("at-a"));
        assert_eq!(
            by_name(&store, "b").await.unwrap().refresh_started_at,
            Some(500)
        );

        let mut stale = refreshed(&b, "rt-stale", 600);
        stale.generation = 1;
        let saved = store
            .save_outcomes(&[
                refreshed(&a, "rt-a2", 600),
                stale,
                refreshed(&b, "rt-b3", 600),
            ])
            .await
            .unwrap();
        assert_eq!(saved, [true, false, true]);
        let a2 = by_name(&store, "a").await.unwrap();
        assert_eq!((rt(&a2), a2.refresh_started_at), ("rt-a2", None));
        assert_eq!(a2.access_token.as_ref().unwrap().expose(), "at-rt-a2");
        assert_eq!((a2.last_refresh_at, a2.updated_at), (Some(600), 600));
        assert_eq!(rt(&by_name(&store, "b").await.unwrap()), "rt-b3");

        // One name twice: written in input order, both match.
        let saved = store
            .save_outcomes(&[refreshed(&a, "rt-a3", 700), refreshed(&a, "rt-a4", 800)])
            .await
            .unwrap();
        assert_eq!(saved, [true, true]);
        assert_eq!(rt(&by_name(&store, "a").await.unwrap()), "rt-a4");
        assert!(store.begin_refreshes(&[], 1).await.unwrap().is_empty());
        assert!(store.save_outcomes(&[]).await.unwrap().is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn with_a_key_writes_are_sealed_and_begins_open_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = open(&path, Some([9; 32])).await;
        let c = stored(&store, "mail", "rt-secret-1").await;
        let begun = store
            .begin_refreshes(&[("mail".into(), c.generation)], 500)
            .await
            .unwrap();
        let begun = begun[0].as_ref().unwrap();
        assert_eq!(rt(begun), "rt-secret-1");
        assert_eq!(begun.extra["id_token"], "idt-mail");

        let next = refreshed(begun, "rt-secret-2", 600);
        assert_eq!(store.save_outcomes(&[next]).await.unwrap(), [true]);
        let (rt_raw, at_raw, extra): (String, String, String) = sqlx::query_as(
            "SELECT refresh_token, access_token, extra FROM credentials WHERE name = 'mail'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        let key = Key::from_bytes([9; 32]);
        assert!(seal::is_sealed(&rt_raw), "{rt_raw}");
        assert!(seal::is_sealed(&at_raw), "{at_raw}");
        assert!(extra.contains("\"id_token\":\"tk1:"), "{extra}");
        assert_eq!(
            key.open(&rt_raw, "refresh_token", "mail").unwrap(),
            "rt-secret-2"
        );
        let loaded = by_name(&store, "mail").await.unwrap();
        assert_eq!(rt(&loaded), "rt-secret-2");
        assert_eq!(loaded.extra["id_token"], "idt-mail");
        store.close().await;
    }

    #[tokio::test]
    async fn a_token_that_does_not_open_fails_the_begin_and_marks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let store = open(&path, Some([1; 32])).await;
        stored(&store, "other-key", "rt-x").await;
        store.close().await;
        let store = open(&path, Some([2; 32])).await;
        stored(&store, "fine", "rt-f").await;
        let items = [("fine".to_string(), 1), ("other-key".to_string(), 1)];
        let err = store.begin_refreshes(&items, 500).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Sealed {
                    reason: SealError::WrongKey { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("credential other-key: "),
            "{err}"
        );
        let marks: Vec<Option<i64>> =
            sqlx::query_scalar("SELECT refresh_started_at FROM credentials ORDER BY name")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert_eq!(marks, [None, None], "rolled back");
        store.close().await;
    }

    #[tokio::test]
    async fn large_batches_are_chunked_under_the_parameter_limit() {
        // 11000 begins (3 parameters each) and 11000 saves (15 each) both
        // exceed SQLite's 32766 parameters in one statement.
        const N: usize = 11_000;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("n.db"), None).await;
        insert_many(&store, N).await;
        // Reversed, with unknown names between, so results must follow the
        // input order rather than the table's.
        let items: Vec<(String, i64)> = (0..N)
            .rev()
            .flat_map(|i| {
                let missing = (i % 1000 == 0).then(|| (format!("missing{i}"), 1));
                std::iter::once((format!("c{i}"), 1)).chain(missing)
            })
            .collect();
        let begun = store.begin_refreshes(&items, 500).await.unwrap();
        assert_eq!(begun.len(), items.len());
        for ((name, _), got) in items.iter().zip(&begun) {
            match got {
                Some(c) => {
                    assert_eq!(&c.name, name);
                    assert_eq!(rt(c), format!("rt-{name}"));
                    assert_eq!(c.refresh_started_at, Some(500));
                }
                None => assert!(name.starts_with("missing"), "{name}"),
            }
        }
        let outcomes: Vec<Credential> = begun
            .iter()
            .flatten()
            .map(|c| refreshed(c, &format!("new-{}", c.name), 600))
            .collect();
        let saved = store.save_outcomes(&outcomes).await.unwrap();
        assert_eq!(saved.len(), N);
        assert!(saved.iter().all(|s| *s));
        let updated: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM credentials
             WHERE refresh_token = 'new-' || name AND refresh_started_at IS NULL
                AND updated_at = 600",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(updated, N as i64);
        store.close().await;
    }

    #[test]
    fn statements_stay_under_the_parameter_limit() {
        assert_eq!((BEGIN_ROWS, SAVE_ROWS), (8192, 1024));
    }

    #[test]
    fn a_repeated_name_starts_a_new_segment() {
        let c = Credential::new("a", "p", None, 0);
        let begin = |name| Op::Begin {
            name,
            generation: 1,
            at: 0,
        };
        let ops = [begin("a"), begin("b"), Op::Save(&c), begin("b"), begin("b")];
        assert_eq!(segment_end(&ops, 0), 2);
        assert_eq!(segment_end(&ops, 2), 4);
        assert_eq!(segment_end(&ops, 4), 5);
        assert!(!single_statement(&ops));
        assert!(single_statement(&ops[..2]));
        assert!(!single_statement(&ops[1..3]), "two kinds");
        assert!(!single_statement(&ops[3..5]), "a name twice");
        let saves = vec![Op::Save(&c); SAVE_ROWS + 1];
        assert!(!single_statement(&saves), "two chunks");
    }

    #[tokio::test]
    async fn writes_of_one_credential_apply_in_order_within_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("o.db"), None).await;
        let a = stored(&store, "a", "rt-1").await;
        let (s2, s3) = (refreshed(&a, "rt-2", 600), refreshed(&a, "rt-3", 700));
        let begin = |at| Op::Begin {
            name: "a",
            generation: 1,
            at,
        };
        let ops = [
            begin(500),
            Op::Save(&s2),
            begin(650),
            Op::Save(&s3),
            begin(750),
        ];
        let found = store.apply_committed(&ops).await.unwrap();
        let seen: Vec<(bool, Option<String>)> = found
            .into_iter()
            .map(|f| {
                let matched = f.matched();
                let c = store.decode(f.into_row()).unwrap();
                (
                    matched,
                    c.map(|c| format!("{}@{:?}", rt(&c), c.refresh_started_at)),
                )
            })
            .collect();
        let some = |s: &str| (true, Some(s.to_string()));
        assert_eq!(
            seen,
            [
                some("rt-1@Some(500)"),
                (true, None),
                some("rt-2@Some(650)"),
                (true, None),
                some("rt-3@Some(750)"),
            ]
        );
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_batches_concurrent_refreshes() {
        const N: usize = 400;
        const TASKS: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("g.db"), Some([3; 32])).await;
        insert_many(&store, N).await;
        let group = GroupCommit::start(store.clone(), 256);

        // A lone request is committed at once, alone.
        let lone = group.begin("c0".into(), 1, 400).await.unwrap().unwrap();
        assert_eq!(rt(&lone), "rt-c0");
        assert_eq!(group.stats().transactions, 1);

        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..TASKS {
            let group = group.clone();
            tasks.spawn(async move {
                for i in (t..N).step_by(TASKS) {
                    let name = format!("c{i}");
                    let c = group.begin(name.clone(), 1, 500).await?;
                    let c = c.ok_or("begin matched nothing")?;
                    assert_eq!(rt(&c), format!("rt-{name}"));
                    // c0's attempt at 400 has no outcome yet: its mark stays.
                    let first = if i == 0 { 400 } else { 500 };
                    assert_eq!(c.refresh_started_at, Some(first));
                    let next = refreshed(&c, &format!("new-{name}"), 600);
                    assert!(group.save(next).await?, "save of {name} matched nothing");
                    // A replaced generation matches nothing.
                    assert!(group.begin(name, 2, 700).await?.is_none());
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let stats = group.stats();
        assert_eq!(stats.requests, 1 + 3 * N as u64);
        assert_eq!(stats.failed, 0);
        assert!(
            stats.transactions < stats.requests / 4,
            "little batching: {stats:?}"
        );
        let all = store.load_all().await.unwrap();
        assert_eq!(all.len(), N);
        for c in &all {
            assert_eq!(rt(c), format!("new-{}", c.name));
            assert_eq!(c.refresh_started_at, None);
        }
        store.close().await;
    }

    /// Spawns, in this order, a save of each credential in `saves` and a
    /// begin of each name in `begins`; on a current-thread runtime they all
    /// reach the queue before its task runs again, so they form one batch.
    fn spawn_requests(
        group: &GroupCommit,
        saves: Vec<Credential>,
        begins: Vec<&'static str>,
    ) -> tokio::task::JoinSet<Result<String, StoreError>> {
        let mut set = tokio::task::JoinSet::new();
        for c in saves {
            let group = group.clone();
            set.spawn(async move { group.save(c).await.map(|m| format!("saved {m}")) });
        }
        for name in begins {
            let group = group.clone();
            set.spawn(async move {
                let c = group.begin(name.into(), 1, 900).await?;
                Ok(format!("begun {}", c.as_ref().map_or("-", rt)))
            });
        }
        set
    }

    #[tokio::test]
    async fn group_commit_applies_a_save_before_a_later_begin_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("d.db"), None).await;
        let a = stored(&store, "a", "rt-1").await;
        let group = GroupCommit::start(store.clone(), 64);
        let tasks = spawn_requests(&group, vec![refreshed(&a, "rt-2", 600)], vec!["a"]);
        let mut answers: Vec<String> = tasks
            .join_all()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        answers.sort();
        assert_eq!(answers, ["begun rt-2", "saved true"]);
        assert_eq!(group.stats().transactions, 1, "{:?}", group.stats());
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_transaction_fails_every_request_in_it_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("f.db"), None).await;
        insert_many(&store, 20).await;
        let poison = stored(&store, "poison", "rt-p").await;
        // A write to `poison` aborts its statement, and so the transaction.
        sqlx::query(
            "CREATE TRIGGER poison BEFORE UPDATE ON credentials WHEN NEW.name = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let group = GroupCommit::start(store.clone(), 64);
        let names = vec!["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"];
        let tasks = spawn_requests(&group, vec![refreshed(&poison, "rt-q", 600)], names);
        let answers = tasks.join_all().await;
        assert_eq!(answers.len(), 11);
        for answer in answers {
            let err = answer.unwrap_err();
            assert!(matches!(err, StoreError::Shared(_)), "{err:?}");
            assert!(err.to_string().contains("poisoned by the test"), "{err}");
        }
        assert_eq!(
            group.stats(),
            GroupStats {
                transactions: 1,
                requests: 11,
                failed: 1
            }
        );
        let marked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM credentials WHERE refresh_started_at IS NOT NULL",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(marked, 0, "a failed batch wrote something");

        // The same with saves only, which go as one statement without
        // BEGIN: the statement is all or nothing.
        let saves = (0..5)
            .map(|i| {
                let mut c = Credential::new(&format!("c{i}"), "p", None, 100);
                c.generation = 1;
                refreshed(&c, "rt-new", 600)
            })
            .chain([refreshed(&poison, "rt-q", 600)])
            .collect();
        let answers = spawn_requests(&group, saves, vec![]).join_all().await;
        assert_eq!(answers.len(), 6);
        for answer in answers {
            let err = answer.unwrap_err();
            assert!(err.to_string().contains("poisoned by the test"), "{err}");
        }
        let written: i64 =
            sqlx::query_scalar("SELECT count(*) FROM credentials WHERE refresh_token = 'rt-new'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!(written, 0, "a failed statement wrote something");
        assert_eq!(group.stats().failed, 2);

        // The queue keeps serving after a failure.
        let c = group.begin("c0".into(), 1, 950).await.unwrap().unwrap();
        assert_eq!(c.refresh_started_at, Some(950));
        store.close().await;

        // A closed store: every waiter gets the error.
        let answers = spawn_requests(&group, vec![], vec!["c1", "c2", "c3"])
            .join_all()
            .await;
        for answer in answers {
            let err = answer.unwrap_err();
            assert!(err.to_string().contains("closed"), "{err}");
        }
    }

    #[tokio::test]
    async fn the_task_ends_when_the_last_handle_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("e.db"), None).await;
        let group = GroupCommit::start(store.clone(), 8);
        let counters = Arc::clone(&group.counters);
        let other = group.clone();
        drop(group);
        assert!(other.begin("x".into(), 1, 1).await.unwrap().is_none());
        drop(other);
        tokio::time::timeout(Duration::from_secs(10), async {
            while Arc::strong_count(&counters) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the queue's task is still running");
        store.close().await;
    }
}
