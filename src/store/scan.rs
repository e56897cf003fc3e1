//! The start-up scan: every credential row read straight through SQLite's C
//! API on the pool's own connection.
//!
//! sqlx copies every value of every row and hands each row across threads,
//! which made loading a million credentials take longer than its target of
//! ten seconds; here a row costs a step and a few borrowed reads.

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
        // SAFETY: the statement was prepared by `scan` and is finalized
        // exactly once, here.
        unsafe {
            ffi::sqlite3_finalize(self.0.as_ptr());
        }
    }
}

/// The current row of a scan. Borrowed values are valid until the next step,
/// which the borrow checker enforces: `each` gets `&Columns` for one call.
pub(super) struct Columns<'s> {
    stmt: &'s Statement,
}

impl Columns<'_> {
    fn is_null(&self, i: c_int) -> bool {
        // SAFETY: the statement has a current row (`scan` only calls `each`
        // after SQLITE_ROW), and an out-of-range index yields NULL.
        unsafe { ffi::sqlite3_column_type(self.stmt.0.as_ptr(), i) == ffi::SQLITE_NULL }
    }

    /// Column `i` as text, `None` for NULL.
    pub fn text(&self, i: c_int) -> Result<Option<&str>, ScanError> {
        if self.is_null(i) {
            return Ok(None);
        }
        // SAFETY: as in `is_null`. sqlite3_column_text returns a pointer
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
    pub fn int(&self, i: c_int) -> Option<i64> {
        if self.is_null(i) {
            return None;
        }
        // SAFETY: as in `is_null`.
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
    loop {
        // SAFETY: `stmt` is a live statement of `db`.
        match unsafe { ffi::sqlite3_step(stmt.0.as_ptr()) } {
            ffi::SQLITE_ROW => each(&Columns { stmt: &stmt })?,
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
