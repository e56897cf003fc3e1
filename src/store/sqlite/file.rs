//! The database file before SQLite sees it: its directory checked (and
//! created 0700 if missing), the `DATABASE.lock` that makes one process its
//! only user, and the database, `-wal` and `-shm` checked and tightened by
//! [`crate::fsguard`].
//!
//! Everything here runs before a connection opens, so a file another user
//! could read or replace is refused without SQLite touching it.

use std::path::{Path, PathBuf};

use crate::fsguard::{self, Create};
use crate::store::StoreError;

/// The exclusive `flock` on `DATABASE.lock` that makes one process (a daemon
/// or `tokend rekey`) the database's only user. The file holds the holder's
/// pid, so a refused process can name it. The kernel drops the lock when the
/// process dies, however it dies.
#[derive(Debug)]
pub(crate) struct DbLock {
    _file: std::fs::File,
}

impl DbLock {
    fn acquire(database: &Path) -> Result<DbLock, StoreError> {
        use std::io::{Seek, Write};
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let prepare = |reason| StoreError::Prepare {
            path: path.clone(),
            reason,
        };
        let mut file = fsguard::open_private(&path, Create::IfMissing)
            .map_err(|reason| StoreError::Unsafe {
                path: database.to_path_buf(),
                reason,
            })?
            .ok_or_else(|| prepare(std::io::ErrorKind::NotFound.into()))?;
        give_to_directory_owner(&file, fsguard::parent_dir(database)).map_err(prepare)?;
        if !fsguard::try_lock_exclusive(&file).map_err(prepare)? {
            return Err(StoreError::InUse {
                path: database.to_path_buf(),
                holder: holder(&mut file, &path),
            });
        }
        file.set_len(0).map_err(prepare)?;
        file.rewind().map_err(prepare)?;
        writeln!(file, "{}", std::process::id()).map_err(prepare)?;
        Ok(DbLock { _file: file })
    }
}

/// Who holds the lock file at `path`, from the pid it holds.
fn holder(file: &mut std::fs::File, path: &Path) -> String {
    use std::io::Read;
    let mut text = String::new();
    let _ = file.take(32).read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) => format!("tokend pid {pid}, which holds {}", path.display()),
        Err(_) => format!("another tokend, which holds {}", path.display()),
    }
}

/// When root (`tokend rekey` on the system daemon's database) creates the
/// lock file, gives it to the owner of the directory, as SQLite does with
/// the `-wal` and `-shm`, so the daemon can open it afterwards.
fn give_to_directory_owner(file: &std::fs::File, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if fsguard::euid() != 0 {
        return Ok(());
    }
    let owner = std::fs::metadata(dir)?.uid();
    if file.metadata()?.uid() != owner && fsguard::trusted(owner) {
        std::os::unix::fs::fchown(file, Some(owner), None)?;
    }
    Ok(())
}

/// Everything done before SQLite sees the file: the directory rules, the
/// lock, and the database, `-wal` and `-shm` (if present) checked and
/// tightened. Creates a missing directory with mode 0700.
pub(super) fn guard(path: &Path) -> Result<DbLock, StoreError> {
    let unsafe_file = |reason| StoreError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    let dir = fsguard::parent_dir(path);
    fsguard::create_missing_dir(dir, None).map_err(|reason| StoreError::Prepare {
        path: path.to_path_buf(),
        reason,
    })?;
    fsguard::check_private_dir(dir).map_err(unsafe_file)?;
    let lock = DbLock::acquire(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        fsguard::open_private(Path::new(&file), Create::No).map_err(unsafe_file)?;
    }
    Ok(lock)
}

/// Creates the database file with mode 0600 (`O_NOFOLLOW`, its directory
/// already checked by [`guard`]) so SQLite, which gives the WAL and shm files
/// the database's mode, never creates anything readable by others.
pub(super) fn prepare_file(path: &Path) -> Result<(), StoreError> {
    fsguard::open_private(path, Create::IfMissing)
        .map(drop)
        .map_err(|reason| StoreError::Unsafe {
            path: path.to_path_buf(),
            reason,
        })
}
