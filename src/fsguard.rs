//! Owner- and mode-checked access to the files and directories another user
//! could touch: the database and its companions, the lock file, the socket's
//! directory, the configuration and the secret files it names.
//!
//! The rules, for a daemon whose effective uid is `euid` (the `tokend` system
//! user, if there is one, is trusted like `euid`, so that root can run
//! `tokend rekey` on the system daemon's database):
//!
//! - a file tokend keeps (database, `-wal`, `-shm`, lock) is a regular file,
//!   never a symbolic link (opened with `O_NOFOLLOW`), owned by root or
//!   `euid`, and tightened to 0600 if found more open;
//! - a file tokend reads (configuration, client secret, key) is owned by root
//!   or `euid` and not writable by every user (`o+w`). A
//!   symbolic link on its way is followed only if it is owned by root or
//!   `euid`;
//! - every directory above either is owned by root or `euid`, and if every
//!   user may write to it, it has the sticky bit (like `/tmp`), so no one
//!   else can rename or remove what is in it;
//! - the directory holding the database or the socket is not writable by
//!   every user at all, sticky or not: others could create the files tokend
//!   is about to create (a `-wal`, the socket) before it does.
//!
//! Because no one else can change those directories, nothing can be swapped
//! between a check here and the open that follows it, even by path (SQLite
//! opens the database by name). Files under `$CREDENTIALS_DIRECTORY` are
//! systemd's and exempt.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// A file or directory tokend refuses to use.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeFile {
    /// A symbolic link where tokend keeps a file of its own.
    #[error("{path} is a symbolic link, which tokend does not follow for its own files: point the configuration at the real file")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Owned by a user other than root and the daemon's own.
    #[error("{path} is owned by uid {owner}, neither root, tokend's uid {euid} nor the `tokend` system user: that user could read or replace it; remove it or `chown {euid} {path}`, or choose another path")]
    ForeignOwner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The daemon's effective uid.
        euid: u32,
    },
    /// Writable by every user.
    #[error("{path} is writable by every user (mode {mode:04o}){why}; run `chmod o-w {path}`, or choose another path")]
    OthersMayWrite {
        /// The file or directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// What others could do with that.
        why: &'static str,
    },
    /// Not a regular file (a directory, a FIFO, a device...).
    #[error("{path} is not a regular file; remove it or choose another path")]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// It could not be examined.
    #[error("cannot check {path}: {reason}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: io::Error,
    },
}

/// Whether a missing file is created by [`open_private`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// Create it with mode 0600 if it does not exist.
    IfMissing,
    /// Only open an existing file; a missing one is `Ok(None)`.
    No,
}

/// The effective uid: the only user besides root trusted with tokend's files.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the `tokend` system user, if there is one (looked up once).
pub(crate) fn system_user_uid() -> Option<u32> {
    static UID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UID.get_or_init(|| {
        nix::unistd::User::from_name("tokend")
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

/// Root, the effective uid, or the `tokend` system user: root runs
/// `tokend rekey` on the system daemon's files, owned by that user.
pub(crate) fn trusted(owner: u32) -> bool {
    owner == 0 || owner == euid() || system_user_uid() == Some(owner)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UnsafeFile + '_ {
    move |reason| UnsafeFile::Io {
        path: path.to_path_buf(),
        reason,
    }
}

fn check_owner(path: &Path, meta: &Metadata) -> Result<(), UnsafeFile> {
    if trusted(meta.uid()) {
        Ok(())
    } else {
        Err(UnsafeFile::ForeignOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid: euid(),
        })
    }
}

/// `path` made absolute against the current directory, without resolving
/// links (the walk below checks the links themselves).
fn absolute(path: &Path) -> Result<PathBuf, UnsafeFile> {
    std::path::absolute(path).map_err(io_err(path))
}

/// The directory rule for a directory above a file: trusted owner, and
/// writable by every user only with the sticky bit.
fn check_ancestor(path: &Path, meta: &Metadata) -> Result<(), UnsafeFile> {
    check_owner(path, meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(UnsafeFile::OthersMayWrite {
            path: path.to_path_buf(),
            mode,
            why: " without the sticky bit: others could rename or replace what is in it",
        });
    }
    Ok(())
}

/// Checks every directory from `/` down to `dir` (included) with the
/// ancestor rule, both along `dir` as written (each symbolic link on the way
/// must be owned by root or tokend's uid) and along the real path the links
/// lead to.
pub(crate) fn check_ancestors(dir: &Path) -> Result<(), UnsafeFile> {
    let dir = absolute(dir)?;
    let mut prefix = PathBuf::new();
    for part in dir.components() {
        prefix.push(part);
        if matches!(part, Component::ParentDir) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&prefix).map_err(io_err(&prefix))?;
        if meta.file_type().is_symlink() {
            check_owner(&prefix, &meta)?;
        }
    }
    let real = dir.canonicalize().map_err(io_err(&dir))?;
    let mut prefix = PathBuf::new();
    for part in real.components() {
        prefix.push(part);
        let meta = std::fs::metadata(&prefix).map_err(io_err(&prefix))?;
        check_ancestor(&prefix, &meta)?;
    }
    Ok(())
}

/// The directory that holds `file` ("." for a bare file name).
pub(crate) fn parent_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates `dir` (and missing parents) if it does not exist: mode 0700, or
/// 0750 and group `gid` so that group's members can reach what is inside.
/// An existing directory is left as it is, for [`check_private_dir`] to judge.
pub(crate) fn create_missing_dir(dir: &Path, gid: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(if gid.is_some() { 0o750 } else { 0o700 })
        .create(dir)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(dir, None, Some(gid))?;
    }
    Ok(())
}

/// Checks a directory that holds files tokend creates (the database's, the
/// socket's): the ancestor rule up to it, and not writable by every user.
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), UnsafeFile> {
    check_ancestors(dir)?;
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(UnsafeFile::OthersMayWrite {
            path: dir.to_path_buf(),
            mode,
            why: ": others could create the files tokend is about to create there",
        });
    }
    Ok(())
}

/// Checks a file tokend reads (configuration, client secret, key): trusted
/// directories above it, trusted owner, not writable by every user.
/// Files under `$CREDENTIALS_DIRECTORY` pass unchecked.
pub(crate) fn check_read_file(path: &Path) -> Result<(), UnsafeFile> {
    if under_credentials_dir(path) {
        return Ok(());
    }
    check_ancestors(parent_dir(path))?;
    let link = std::fs::symlink_metadata(path).map_err(io_err(path))?;
    if link.file_type().is_symlink() {
        check_owner(path, &link)?;
    }
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    // Not necessarily a regular file: `--key <(systemd-creds decrypt ...)`
    // hands over a pipe.
    check_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(UnsafeFile::OthersMayWrite {
            path: path.to_path_buf(),
            mode,
            why: ": anyone could change what tokend reads from it",
        });
    }
    Ok(())
}

/// Opens a file tokend keeps (read and write, `O_NOFOLLOW`), creating it
/// with mode 0600 if asked, and checks what was opened: a regular file owned
/// by root or tokend's uid. A file found readable or writable by others is
/// set to 0600. The caller has checked its directory with
/// [`check_private_dir`].
pub(crate) fn open_private(path: &Path, create: Create) -> Result<Option<File>, UnsafeFile> {
    let mut options = std::fs::OpenOptions::new();
    options
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK);
    if create == Create::IfMissing {
        options.create(true).mode(0o600);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && create == Create::No => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(UnsafeFile::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(e) => {
            // A FIFO or socket opened O_NONBLOCK may fail in other ways;
            // name a non-file as such rather than by its errno.
            return match std::fs::symlink_metadata(path) {
                Ok(meta) if !meta.is_file() && !meta.file_type().is_symlink() => {
                    Err(UnsafeFile::NotRegular {
                        path: path.to_path_buf(),
                    })
                }
                _ => Err(io_err(path)(e)),
            };
        }
    };
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(UnsafeFile::NotRegular {
            path: path.to_path_buf(),
        });
    }
    check_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "file was open to other users; setting mode 0600"
        );
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    // Back to blocking I/O: O_NONBLOCK only kept the open from hanging on a FIFO.
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(Some(file))
}

/// Takes an exclusive `flock` on `file` without waiting. `Ok(false)`: another
/// open file description holds it.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let done = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if done == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether `path` lies under `$CREDENTIALS_DIRECTORY` (systemd's, so exempt).
pub(crate) fn under_credentials_dir(path: &Path) -> bool {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return false;
    };
    let dir = Path::new(&dir);
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(p), Ok(d)) => p.starts_with(d),
        _ => path.starts_with(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, DirBuilderExt};

    fn mkdir(parent: &Path, name: &str, mode: u32) -> PathBuf {
        let dir = parent.join(name);
        std::fs::DirBuilder::new().mode(mode).create(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn a_sticky_world_writable_ancestor_is_fine_but_not_as_the_holding_dir() {
        let top = tempfile::tempdir().unwrap();
        let sticky = mkdir(top.path(), "tmp", 0o1777);
        let ours = mkdir(&sticky, "ours", 0o700);
        check_private_dir(&ours).unwrap();
        let err = check_private_dir(&sticky).unwrap_err();
        assert!(matches!(err, UnsafeFile::OthersMayWrite { .. }), "{err}");
        let open = mkdir(top.path(), "open", 0o777);
        let below = mkdir(&open, "below", 0o700);
        let err = check_ancestors(&below).unwrap_err();
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
    }

    #[test]
    fn foreign_owners_and_links_are_refused() {
        if euid() != 0 {
            return; // chown to another uid needs root; the tests run as root
        }
        let top = tempfile::tempdir().unwrap();
        let dir = mkdir(top.path(), "d", 0o700);
        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
        let err = open_private(&file, Create::No).unwrap_err();
        assert!(
            matches!(err, UnsafeFile::ForeignOwner { owner: 65534, .. }),
            "{err}"
        );
        let err = check_read_file(&file).unwrap_err();
        assert!(matches!(err, UnsafeFile::ForeignOwner { .. }), "{err}");
        let link = dir.join("link");
        let real = dir.join("real");
        std::fs::write(&real, "x").unwrap();
        symlink(&real, &link).unwrap();
        let err = open_private(&link, Create::IfMissing).unwrap_err();
        assert!(matches!(err, UnsafeFile::Symlink { .. }), "{err}");
        // A link of our own to a file of our own may be read through.
        check_read_file(&link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
        assert!(check_read_file(&link).is_err());
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        assert!(check_private_dir(&dir).is_err());
    }

    #[test]
    fn private_files_are_tightened_and_writable_read_files_refused() {
        let top = tempfile::tempdir().unwrap();
        let file = top.path().join("f");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = check_read_file(&file).unwrap_err();
        assert!(err.to_string().contains("chmod o-w"), "{err}");
        open_private(&file, Create::No).unwrap().unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        check_read_file(&file).unwrap();
        assert!(open_private(&top.path().join("none"), Create::No)
            .unwrap()
            .is_none());
    }
}
