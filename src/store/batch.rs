//! Multi-row writes: the durable writes of many refreshes as a few
//! statements, so that they share one transaction and one fsync.
//!
//! A refresh writes twice: the mark that it is about to be sent and its
//! outcome. Written one row per statement, each its own fsynced commit, the
//! disk's fsync rate would cap the refresh rate. Here many rows go in one
//! multi-row statement per chunk
//! (`WITH v(...) AS (VALUES ...) UPDATE credentials ... FROM v`), because
//! sqlx hands every statement to its worker thread and per-row statements
//! would cost more than the fsync they save. The caller ([`Store`]'s
//! `begin_refreshes` and `save_outcomes`, and through them
//! [`GroupCommit`](super::GroupCommit)) owns the transaction.
//!
//! [`Store`]: super::Store

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::backend::{Conn, Row};
use super::columns::{
    select_list, state_columns, state_nulls, state_values, Bound, Shape, STATE_COUNT,
};
use crate::credential::Credential;
use crate::seal::Key;

/// Bound parameters per statement at most. SQLite's limit is 32766
/// (PostgreSQL's 65535); staying below it leaves room and keeps each statement's memory bounded.
const MAX_PARAMS: usize = 30_000;

/// Columns of one row of the mark statement: name, generation, time.
const MARK_PARAMS: usize = 3;

/// Columns of one row of the save statement: name, generation, the state
/// columns, then `updated_at`.
const SAVE_PARAMS: usize = 2 + STATE_COUNT + 1;

/// Rows per mark statement (8192).
pub(super) const MARK_ROWS: usize = rows_per_statement(MARK_PARAMS);

/// Rows per save statement (1024).
pub(super) const SAVE_ROWS: usize = rows_per_statement(SAVE_PARAMS);

const _: () = assert!(MARK_ROWS * MARK_PARAMS <= MAX_PARAMS);
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

/// One row write of a batch.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowWrite<'a> {
    /// Mark the refresh of this generation as started at `at`, and read the
    /// row back.
    MarkStarted {
        name: &'a str,
        generation: i64,
        at: i64,
    },
    /// Write the outcome of a refresh.
    SaveOutcome(&'a Credential),
}

impl RowWrite<'_> {
    fn name(&self) -> &str {
        match self {
            RowWrite::MarkStarted { name, .. } => name,
            RowWrite::SaveOutcome(c) => &c.name,
        }
    }

    /// The result of a write that matched no row.
    fn unmatched(&self) -> RowWritten {
        match self {
            RowWrite::MarkStarted { .. } => RowWritten::Marked(None),
            RowWrite::SaveOutcome(_) => RowWritten::Saved(false),
        }
    }
}

/// What one [`RowWrite`] did.
pub(super) enum RowWritten {
    /// The marked row, not yet decoded; `None` if the name and generation
    /// matched no row.
    Marked(Option<Row>),
    /// Whether the save matched its row.
    Saved(bool),
}

impl RowWritten {
    /// The row a mark read back, if any.
    pub(super) fn into_row(self) -> Option<Row> {
        match self {
            RowWritten::Marked(row) => row,
            RowWritten::Saved(_) => None,
        }
    }

    /// Whether the write matched its row.
    pub(super) fn matched(&self) -> bool {
        match self {
            RowWritten::Marked(row) => row.is_some(),
            RowWritten::Saved(saved) => *saved,
        }
    }
}

/// Runs `writes` on `conn` (inside the caller's transaction, or as one
/// autocommitted statement when [`single_statement`] says so) and returns
/// what each did, in order. A name that comes again starts a new run of
/// statements, so two writes of one credential apply in the order given.
pub(super) async fn apply(
    conn: &mut Conn<'_>,
    writes: &[RowWrite<'_>],
    key: Option<&Key>,
) -> Result<Vec<RowWritten>, sqlx::Error> {
    let mut written: Vec<RowWritten> = writes.iter().map(RowWrite::unmatched).collect();
    let mut start = 0;
    while start < writes.len() {
        let end = segment_end(writes, start);
        apply_segment(conn, &writes[start..end], &mut written[start..end], key).await?;
        start = end;
    }
    Ok(written)
}

/// Whether [`apply`] runs `writes` as one statement: distinct names, one
/// kind of write, one chunk.
pub(super) fn single_statement(writes: &[RowWrite<'_>]) -> bool {
    let marks = writes
        .iter()
        .filter(|w| matches!(w, RowWrite::MarkStarted { .. }))
        .count();
    let fits = match (marks, writes.len() - marks) {
        (0, saves) => saves <= SAVE_ROWS,
        (marks, 0) => marks <= MARK_ROWS,
        _ => false,
    };
    fits && segment_end(writes, 0) == writes.len()
}

/// The end of the longest run of `writes` from `start` in which no name
/// repeats (at least one write, so the caller always advances).
fn segment_end(writes: &[RowWrite<'_>], start: usize) -> usize {
    let mut seen = HashSet::new();
    writes[start..]
        .iter()
        .position(|w| !seen.insert(w.name()))
        .map_or(writes.len(), |i| start + i)
}

/// Runs writes whose names are all different: their order does not matter,
/// so all marks go in one statement per chunk, and all saves in another.
async fn apply_segment(
    conn: &mut Conn<'_>,
    writes: &[RowWrite<'_>],
    written: &mut [RowWritten],
    key: Option<&Key>,
) -> Result<(), sqlx::Error> {
    let mut marks = Vec::new();
    let mut saves = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        match *write {
            RowWrite::MarkStarted {
                name,
                generation,
                at,
            } => marks.push((i, name, generation, at)),
            RowWrite::SaveOutcome(c) => saves.push((i, c)),
        }
    }
    for chunk in marks.chunks(MARK_ROWS) {
        let mut rows = mark_chunk(conn, chunk).await?;
        for &(i, name, _, _) in chunk {
            written[i] = RowWritten::Marked(rows.remove(name));
        }
    }
    for chunk in saves.chunks(SAVE_ROWS) {
        let matched = save_chunk(conn, chunk, key).await?;
        for &(i, c) in chunk {
            written[i] = RowWritten::Saved(matched.contains(&c.name));
        }
    }
    Ok(())
}

/// `(VALUES ($1, $2), ($3, $4) ...)` text: `rows` rows of `columns`
/// parameters.
fn values_sql(rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let params: Vec<String> = (1..=columns)
            .map(|c| format!("${}", r * columns + c))
            .collect();
        format!("({})", params.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// Rows a statement for `n` rows is padded to (see [`rows_per_statement`]).
fn padded(n: usize) -> usize {
    n.next_power_of_two()
}

/// The text of a mark statement for `rows` rows.
fn mark_sql(rows: usize) -> String {
    // A mark already there is an earlier attempt whose outcome is unknown:
    // it is kept, because a provider's reuse grace runs from that attempt,
    // and start-up retries interrupted refreshes oldest first by it.
    format!(
        "WITH v(k, g, t) AS (VALUES {})
         UPDATE credentials
         SET refresh_started_at = coalesce(credentials.refresh_started_at, v.t), updated_at = v.t
         FROM v WHERE credentials.name = v.k AND credentials.generation = v.g
         RETURNING {}",
        values_sql(rows, MARK_PARAMS),
        select_list(Shape::Full),
    )
}

/// The text of a save statement for `rows` rows.
fn save_sql(rows: usize) -> String {
    let columns: Vec<&str> = state_columns()
        .iter()
        .copied()
        .chain(["updated_at"])
        .collect();
    let set = columns
        .iter()
        .map(|c| format!("{c} = v.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH v(k, g, {}) AS (VALUES {})
         UPDATE credentials SET {set}
         FROM v WHERE credentials.name = v.k AND credentials.generation = v.g
         RETURNING name",
        columns.join(", "),
        values_sql(rows, SAVE_PARAMS),
    )
}

/// Statement texts by padded row count, built once for the sizes the
/// driver keeps prepared ([`CACHED_ROWS`] rows at most): a burst runs the
/// same few statements thousands of times, and building a 64-row text is a
/// few kilobytes of formatting each time.
struct SqlCache([OnceLock<String>; CACHED_SIZES]);

/// Powers of two up to [`CACHED_ROWS`].
const CACHED_SIZES: usize = CACHED_ROWS.trailing_zeros() as usize + 1;

impl SqlCache {
    const fn new() -> SqlCache {
        SqlCache([const { OnceLock::new() }; CACHED_SIZES])
    }

    /// The text for `rows` (a power of two), from the cache or made by
    /// `make`.
    fn get(&'static self, rows: usize, make: fn(usize) -> String) -> Cow<'static, str> {
        match self.0.get(rows.trailing_zeros() as usize) {
            Some(cell) if rows <= CACHED_ROWS => Cow::Borrowed(cell.get_or_init(|| make(rows))),
            _ => Cow::Owned(make(rows)),
        }
    }
}

/// Marks the refreshes of one chunk (distinct names) and returns the rows
/// that matched, by name (RETURNING gives them in no particular order).
async fn mark_chunk(
    conn: &mut Conn<'_>,
    chunk: &[(usize, &str, i64, i64)],
) -> Result<HashMap<String, Row>, sqlx::Error> {
    let rows = padded(chunk.len());
    static TEXT: SqlCache = SqlCache::new();
    let sql = TEXT.get(rows, mark_sql);
    let mut args = Vec::with_capacity(rows * MARK_PARAMS);
    for &(_, name, generation, at) in chunk {
        args.extend([
            Bound::text(name),
            Bound::Int(Some(generation)),
            Bound::Int(Some(at)),
        ]);
    }
    // Padding rows are NULL, which equals no name.
    for _ in chunk.len()..rows {
        args.extend([Bound::Text(None), Bound::Int(None), Bound::Int(None)]);
    }
    let returned = conn.fetch_all(&sql, args, rows <= CACHED_ROWS).await?;
    returned
        .into_iter()
        .map(|row| Ok((row.get_text("name")?, row)))
        .collect()
}

/// Writes the outcomes of one chunk (distinct names) and returns the names
/// whose row matched.
async fn save_chunk(
    conn: &mut Conn<'_>,
    chunk: &[(usize, &Credential)],
    key: Option<&Key>,
) -> Result<HashSet<String>, sqlx::Error> {
    let rows = padded(chunk.len());
    static TEXT: SqlCache = SqlCache::new();
    let sql = TEXT.get(rows, save_sql);
    let mut args = Vec::with_capacity(rows * SAVE_PARAMS);
    for &(_, c) in chunk {
        args.extend([Bound::text(&c.name), Bound::Int(Some(c.generation))]);
        args.extend(state_values(c, key));
        args.push(Bound::Int(Some(c.updated_at)));
    }
    // Padding rows are NULL, typed as the real ones.
    for _ in chunk.len()..rows {
        args.extend([Bound::Text(None), Bound::Int(None)]);
        args.extend(state_nulls());
        args.push(Bound::Int(None));
    }
    let returned = conn.fetch_all(&sql, args, rows <= CACHED_ROWS).await?;
    returned.iter().map(|r| r.get_text("name")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{self, SealError};
    use crate::store::test_support::{by_name, insert_many, open, refreshed, rt, stored};
    use crate::store::{Store, StoreError};
    use crate::token::Secret;

    /// Stores "a", "b" (replaced: generation 2) and "c" (removed), and
    /// returns the first two as stored.
    async fn a_and_replaced_b(store: &Store) -> (Credential, Credential) {
        let a = stored(store, "a", "rt-a").await;
        stored(store, "b", "rt-b1").await;
        let b = stored(store, "b", "rt-b2").await;
        stored(store, "c", "rt-c").await;
        assert!(store.delete("c").await.unwrap());
        (a, b)
    }

    #[tokio::test]
    async fn begin_many_marks_the_current_generations_and_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("b.db"), None).await;
        a_and_replaced_b(&store).await;
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
        store.close().await;
    }

    #[tokio::test]
    async fn save_many_writes_the_current_generations_in_input_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("b.db"), None).await;
        let (a, b) = a_and_replaced_b(&store).await;
        let marked = [("a".to_string(), 1), ("b".to_string(), 2)];
        store.begin_refreshes(&marked, 500).await.unwrap();
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
        .fetch_one(store.sqlite_pool())
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
                .fetch_all(store.sqlite_pool())
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
        .fetch_one(store.sqlite_pool())
        .await
        .unwrap();
        assert_eq!(updated, N as i64);
        store.close().await;
    }

    #[test]
    fn statements_stay_under_the_parameter_limit() {
        assert_eq!((MARK_ROWS, SAVE_ROWS), (8192, 1024));
    }

    #[test]
    fn a_repeated_name_starts_a_new_segment() {
        let c = Credential::new("a", "p", None, 0);
        let begin = |name| RowWrite::MarkStarted {
            name,
            generation: 1,
            at: 0,
        };
        let ops = [
            begin("a"),
            begin("b"),
            RowWrite::SaveOutcome(&c),
            begin("b"),
            begin("b"),
        ];
        assert_eq!(segment_end(&ops, 0), 2);
        assert_eq!(segment_end(&ops, 2), 4);
        assert_eq!(segment_end(&ops, 4), 5);
        assert!(!single_statement(&ops));
        assert!(single_statement(&ops[..2]));
        assert!(!single_statement(&ops[1..3]), "two kinds");
        assert!(!single_statement(&ops[3..5]), "a name twice");
        let saves = vec![RowWrite::SaveOutcome(&c); SAVE_ROWS + 1];
        assert!(!single_statement(&saves), "two chunks");
    }

    #[tokio::test]
    async fn writes_of_one_credential_apply_in_order_within_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("o.db"), None).await;
        let a = stored(&store, "a", "rt-1").await;
        let (s2, s3) = (refreshed(&a, "rt-2", 600), refreshed(&a, "rt-3", 700));
        let begin = |at| RowWrite::MarkStarted {
            name: "a",
            generation: 1,
            at,
        };
        let ops = [
            begin(500),
            RowWrite::SaveOutcome(&s2),
            begin(650),
            RowWrite::SaveOutcome(&s3),
            begin(750),
        ];
        let found = store.apply_committed(&ops).await.unwrap();
        let seen: Vec<(bool, Option<String>)> = found
            .into_iter()
            .map(|f| {
                let matched = f.matched();
                let c = store.decode_marked(f.into_row()).unwrap();
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
}
