//! The start-up scan: every credential row read straight through SQLite's C
//! API, on a connection of the pool, instead of through sqlx.
//!
//! Why it exists: sqlx copies every value of every row into an owned row and
//! hands each row from its worker thread to the async caller. Loading a
//! million credentials that way took longer than the start-up target of ten
//! seconds (BENCHMARKS.md, the scale bench: 1M rows now load in about 2.7 s
//! of CPU). Here a row costs one `sqlite3_step` and a few reads that borrow
//! SQLite's own buffers. sqlx offers no borrowed, same-thread row cursor, so
//! this is the one place tokend calls SQLite directly; every other statement
//! goes through sqlx.
//!
//! The safety argument, which each `unsafe` block below narrows to its call:
//!
//! - the connection handle comes from sqlx's `lock_handle`, which holds the
//!   connection exclusively (no other statement can run on it) and keeps it
//!   open for as long as the caller holds the guard, which outlives [`scan`];
//! - the one statement is owned by [`Statement`], prepared here and
//!   finalized exactly once, in its `Drop`;
//! - values are read only while the statement has a current row (after
//!   `SQLITE_ROW`), and the text SQLite returns lives until the next step;
//!   [`Columns`] borrows the statement for one call of `each`, so the borrow
//!   checker keeps every `&str` from outliving that step;
//! - text is checked as UTF-8 before it becomes a `&str`; a row that is not
//!   fails the scan rather than being read.

use std::ffi::{c_int, CStr, CString};
use std::ptr::{null_mut, NonNull};

use libsqlite3_sys as ffi;

/// Why a scan failed: SQLite's message, or a column that is not UTF-8.
#[derive(Debug)]
pub(super) struct ScanError(pub String);

/// A prepared statement, finalized on drop.
struct Statement(NonNull<ffi::sqlite3_stmt>);

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful sqlite3_prepare_v2 in
        // `scan` and is owned by this value alone, so it is live here and
        // finalized exactly once; the connection is still open (the caller
        // of `scan` holds it for the whole call, and this drops inside it).
        unsafe {
            ffi::sqlite3_finalize(self.0.as_ptr());
        }
    }
}

/// The current row of a scan. Borrowed values are valid until the next step,
/// which the borrow checker enforces: `each` gets `&Columns` for one call.
pub(super) struct Columns<'s> {
    stmt: &'s Statement,
    /// Columns in each row (`sqlite3_column_count`).
    count: c_int,
}

impl Columns<'_> {
    /// Whether column `i` is NULL or out of range (which SQLite leaves
    /// undefined, so it is never asked).
    fn is_null(&self, i: c_int) -> bool {
        if !(0..self.count).contains(&i) {
            return true;
        }
        // SAFETY: the statement has a current row (`scan` only calls `each`
        // after SQLITE_ROW) and `i` is in range, checked above.
        unsafe { ffi::sqlite3_column_type(self.stmt.0.as_ptr(), i) == ffi::SQLITE_NULL }
    }

    /// Column `i` as text, `None` for NULL.
    pub(super) fn text(&self, i: c_int) -> Result<Option<&str>, ScanError> {
        if self.is_null(i) {
            return Ok(None);
        }
        // SAFETY: current row and index in range, as `is_null` checked.
        // sqlite3_column_text returns a pointer
        // valid until the next step or finalize, both of which need the
        // statement mutably or by value, so the borrow of `self` covers it;
        // sqlite3_column_bytes (called after it, as SQLite asks) gives its
        // length.
        let bytes = unsafe {
            let ptr = ffi::sqlite3_column_text(self.stmt.0.as_ptr(), i);
            let len = ffi::sqlite3_column_bytes(self.stmt.0.as_ptr(), i);
            if ptr.is_null() {
                return Ok(Some(""));
            }
            std::slice::from_raw_parts(ptr, len.max(0) as usize)
        };
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|e| ScanError(format!("column {i} is not UTF-8 ({e})")))
    }

    /// Column `i` as an integer, `None` for NULL.
    pub(super) fn int(&self, i: c_int) -> Option<i64> {
        if self.is_null(i) {
            return None;
        }
        // SAFETY: current row and index in range, as `is_null` checked.
        Some(unsafe { ffi::sqlite3_column_int64(self.stmt.0.as_ptr(), i) })
    }
}

/// Runs `sql` (no parameters) on `db` and calls `each` with every row, in
/// order, stopping at the first error (its own or SQLite's).
///
/// The caller must hold `db` exclusively for the call (sqlx's
/// `lock_handle` does) and keep it open throughout.
pub(super) fn scan<E: From<ScanError>>(
    db: NonNull<ffi::sqlite3>,
    sql: &str,
    mut each: impl FnMut(&Columns<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let c_sql = CString::new(sql).map_err(|e| E::from(ScanError(e.to_string())))?;
    let mut raw = null_mut();
    // SAFETY: `db` is an open connection held exclusively by the caller;
    // `c_sql` is NUL-terminated and outlives the call.
    let rc =
        unsafe { ffi::sqlite3_prepare_v2(db.as_ptr(), c_sql.as_ptr(), -1, &mut raw, null_mut()) };
    if rc != ffi::SQLITE_OK {
        return Err(E::from(ScanError(message(db))));
    }
    let Some(stmt) = NonNull::new(raw).map(Statement) else {
        return Ok(()); // An empty statement: no rows.
    };
    // SAFETY: `stmt` is a live statement of `db`.
    let count = unsafe { ffi::sqlite3_column_count(stmt.0.as_ptr()) };
    loop {
        // SAFETY: `stmt` is a live statement of `db`, which the caller holds
        // exclusively, and no `Columns` borrow of it survives the previous
        // iteration, so stepping cannot invalidate a value still in use.
        match unsafe { ffi::sqlite3_step(stmt.0.as_ptr()) } {
            ffi::SQLITE_ROW => each(&Columns { stmt: &stmt, count })?,
            ffi::SQLITE_DONE => return Ok(()),
            _ => return Err(E::from(ScanError(message(db)))),
        }
    }
}

/// SQLite's message for the last error on `db`.
fn message(db: NonNull<ffi::sqlite3>) -> String {
    // SAFETY: sqlite3_errmsg returns a NUL-terminated string owned by the
    // connection, valid until the next call on it; it is copied at once.
    unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}
