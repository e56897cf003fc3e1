//! The group-commit queue: one task that takes whatever durable writes are
//! waiting (refresh marks and outcomes from many refresh jobs), commits them
//! in one transaction ([`Store::apply_committed_on`], on a connection it
//! keeps while requests keep coming) and answers each waiter.
//! Nothing waits on a timer; see [`GroupCommit`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::backend::{PoolConn, Row};
use super::batch::{RowWrite, RowWritten};
use super::{Store, StoreError};
use crate::credential::Credential;

/// A request waiting in the queue, with where to send its answer.
enum Request {
    Begin {
        name: String,
        generation: i64,
        at: i64,
        /// The raw row: the waiter decodes it, off the queue's task.
        reply: oneshot::Sender<Result<Option<Row>, StoreError>>,
    },
    Save {
        // Boxed: a credential is several times the size of a begin.
        cred: Box<Credential>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
}

impl Request {
    fn write(&self) -> RowWrite<'_> {
        match self {
            Request::Begin {
                name,
                generation,
                at,
                ..
            } => RowWrite::MarkStarted {
                name,
                generation: *generation,
                at: *at,
            },
            Request::Save { cred, .. } => RowWrite::SaveOutcome(cred),
        }
    }

    /// Answers the waiter; one that gave up is not an error.
    fn answer(self, written: Result<RowWritten, StoreError>) {
        match self {
            Request::Begin { reply, .. } => {
                let _ = reply.send(written.map(RowWritten::into_row));
            }
            Request::Save { reply, .. } => {
                let _ = reply.send(written.map(|w| w.matched()));
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
    /// Decodes, with its key, the rows that begins read back.
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
        self.store.decode_marked(row)
    }

    /// As [`Store::save_outcomes`] for one credential, committed with
    /// whatever else is queued.
    /// Returns false, writing nothing, if the credential was replaced or
    /// removed since its refresh began.
    pub async fn save(&self, cred: Credential) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let cred = Box::new(cred);
        self.submit(Request::Save { cred, reply }, answer).await
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
///
/// It keeps one connection while requests keep coming, and puts it back in
/// the pool once the queue is empty. In WAL mode a connection that sees
/// another connection's commit drops its whole page cache, so a burst whose
/// transactions alternated between the pool's connections read the pages
/// of every transaction from the file again; on one connection they stay
/// cached. An idle daemon holds no connection here, so closing the store is
/// unchanged.
async fn run(
    store: Store,
    mut requests: mpsc::Receiver<Request>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::new();
    let mut conn = None;
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
        if !commit(&store, &mut conn, &mut batch).await {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        if requests.is_empty() {
            conn = None;
        }
    }
}

/// Commits `batch` in one transaction on `conn` (taken from the pool if
/// there is none) and answers (and removes) every request in it. Returns
/// whether the transaction committed. After a failure the connection goes
/// back to the pool, which checks it before it is used again.
async fn commit(store: &Store, conn: &mut Option<PoolConn>, batch: &mut Vec<Request>) -> bool {
    let writes: Vec<RowWrite<'_>> = batch.iter().map(Request::write).collect();
    let started = std::time::Instant::now();
    let result = match conn {
        Some(c) => store.apply_committed_on(c, &writes).await,
        None => match store.writer().await {
            Ok(c) => store.apply_committed_on(conn.insert(c), &writes).await,
            Err(e) => Err(e),
        },
    };
    crate::metrics::commit_took(started.elapsed(), writes.len());
    drop(writes);
    match result {
        Ok(written) => {
            for (request, written) in batch.drain(..).zip(written) {
                request.answer(Ok(written));
            }
            true
        }
        Err(e) => {
            *conn = None;
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

    use tokio::task::JoinSet;

    use super::*;
    use crate::store::test_support::{insert_many, open, refreshed, rt, stored};

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

    /// A store with `c0`..`c19` and `poison`, whose every update the
    /// trigger aborts, so any statement or transaction writing it fails.
    async fn poisoned(path: &Path) -> (Store, Credential) {
        let store = open(path, None).await;
        insert_many(&store, 20).await;
        let poison = stored(&store, "poison", "rt-p").await;
        sqlx::query(
            "CREATE TRIGGER poison BEFORE UPDATE ON credentials WHEN NEW.name = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned by the test'); END",
        )
        .execute(store.sqlite_pool())
        .await
        .unwrap();
        (store, poison)
    }

    /// How many rows `condition` holds for.
    async fn count(store: &Store, condition: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM credentials WHERE {condition}"
        ))
        .fetch_one(store.sqlite_pool())
        .await
        .unwrap()
    }

    /// Every request in `tasks` (there are `n`) failed with `text`.
    async fn all_failed(tasks: JoinSet<Result<String, StoreError>>, n: usize, text: &str) {
        let answers = tasks.join_all().await;
        assert_eq!(answers.len(), n);
        for answer in answers {
            let err = answer.unwrap_err();
            assert!(matches!(err, StoreError::Shared(_)), "{err:?}");
            assert!(err.to_string().contains(text), "{err}");
        }
    }

    #[tokio::test]
    async fn a_failed_transaction_fails_every_request_in_it_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, poison) = poisoned(&dir.path().join("f.db")).await;
        let group = GroupCommit::start(store.clone(), 64);
        let names = vec!["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"];
        let tasks = spawn_requests(&group, vec![refreshed(&poison, "rt-q", 600)], names);
        all_failed(tasks, 11, "poisoned by the test").await;
        let stats = GroupStats {
            transactions: 1,
            requests: 11,
            failed: 1,
        };
        assert_eq!(group.stats(), stats);
        let marked = count(&store, "refresh_started_at IS NOT NULL").await;
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
        all_failed(
            spawn_requests(&group, saves, vec![]),
            6,
            "poisoned by the test",
        )
        .await;
        let written = count(&store, "refresh_token = 'rt-new'").await;
        assert_eq!(written, 0, "a failed statement wrote something");
        assert_eq!(group.stats().failed, 2);

        // The queue keeps serving after a failure.
        let c = group.begin("c0".into(), 1, 950).await.unwrap().unwrap();
        assert_eq!(c.refresh_started_at, Some(950));
        store.close().await;

        // A closed store: every waiter gets the error.
        let tasks = spawn_requests(&group, vec![], vec!["c1", "c2", "c3"]);
        all_failed(tasks, 3, "closed").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_gives_its_connection_back_once_it_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("k.db"), None).await;
        insert_many(&store, 64).await;
        let group = GroupCommit::start(store.clone(), 256);
        let mut tasks = JoinSet::new();
        for i in 0..64 {
            let group = group.clone();
            tasks.spawn(async move {
                let c = group.begin(format!("c{i}"), 1, 500).await.unwrap().unwrap();
                assert!(group.save(refreshed(&c, "rt-new", 600)).await.unwrap());
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        assert!(group.stats().transactions < 128, "{:?}", group.stats());
        // The queue is empty and its handles alive: every connection is back
        // in the pool (the last may still be on its way).
        let all_idle = || {
            usize::try_from(store.sqlite_pool().size())
                .is_ok_and(|n| store.sqlite_pool().num_idle() >= n)
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while !all_idle() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the idle queue still holds a connection");
        // So the store closes every connection and gives up its lock.
        store.close().await;
        assert!(
            store.lock.lock().unwrap().is_none(),
            "the store kept its lock"
        );
        drop(group);
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
