//! Writing a sink file so that a reader sees the old contents or the new,
//! never a part: a temp file in the same directory (`O_CREAT|O_EXCL|
//! O_NOFOLLOW`, the sink's mode), written, given its owner, fsynced, renamed
//! over the path, and the directory fsynced so the rename survives a crash.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::spec::Sink;
use crate::fsguard::{self, UnsafeFile};

/// Why a sink file was not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// The path or its directory is unsafe to write through.
    #[error(transparent)]
    Unsafe(#[from] UnsafeFile),
    /// The path is a symbolic link.
    #[error("{0} is a symbolic link; tokend does not write a sink through one: remove the link or point the sink at the real path")]
    Symlink(PathBuf),
    /// The directory or file refused an operation.
    #[error("cannot {action} {path}: {source}; check that the directory exists and tokend may write to it (ReadWritePaths= under systemd)")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> SinkError + 'p {
    move |source| SinkError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a directory that is a symlink, or whose ancestors another user
/// could change, and a path that is a symlink or not a regular file.
fn check(path: &Path) -> Result<&Path, SinkError> {
    let dir = fsguard::parent_dir(path);
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("examine", dir))?;
    if meta.file_type().is_symlink() {
        return Err(SinkError::Symlink(dir.to_path_buf()));
    }
    fsguard::check_ancestors(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(SinkError::Symlink(path.to_path_buf())),
        Ok(m) if !m.file_type().is_file() => Err(UnsafeFile::NotRegular {
            path: path.to_path_buf(),
        }
        .into()),
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(dir),
        Err(e) => Err(io_err("examine", path)(e)),
    }
}

/// Replaces the file at `sink.path` with `contents`, atomically.
pub(crate) fn write(sink: &Sink, contents: &[u8]) -> Result<(), SinkError> {
    let dir = check(&sink.path)?;
    let base = sink
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{base}.tokend-{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = write_temp(sink, &temp, contents).and_then(|()| {
        std::fs::rename(&temp, &sink.path).map_err(io_err("rename into place", &sink.path))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result?;
    sync_dir(dir)
}

fn write_temp(sink: &Sink, temp: &Path, contents: &[u8]) -> Result<(), SinkError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(sink.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(temp)
        .map_err(io_err("create", temp))?;
    // The umask may have taken bits from the mode asked for.
    file.set_permissions(std::fs::Permissions::from_mode(sink.mode))
        .map_err(io_err("set the mode of", temp))?;
    let uid = sink.uid.filter(|&u| u != fsguard::euid());
    if uid.is_some() || sink.gid.is_some() {
        std::os::unix::fs::fchown(&file, uid, sink.gid).map_err(io_err("chown", temp))?;
        // chown clears set-id bits; the mode is set again after it.
        file.set_permissions(std::fs::Permissions::from_mode(sink.mode))
            .map_err(io_err("set the mode of", temp))?;
    }
    file.write_all(contents).map_err(io_err("write", temp))?;
    file.sync_all().map_err(io_err("fsync", temp))
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(io_err("open", dir))?;
    File::sync_all(&d).map_err(io_err("fsync", dir))
}

/// Deletes the sink file, if it is there (never through a symlink).
pub(crate) fn delete(sink: &Sink) -> Result<(), SinkError> {
    let dir = check(&sink.path)?;
    match std::fs::remove_file(&sink.path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &sink.path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::spec::{Format, OnRemove};

    fn sink(path: PathBuf) -> Sink {
        Sink {
            path,
            format: Format::Token,
            mode: 0o640,
            uid: None,
            gid: None,
            on_remove: OnRemove::Delete,
        }
    }

    #[test]
    fn writes_with_the_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path().join("t"));
        write(&s, b"one").unwrap();
        write(&s, b"two").unwrap();
        assert_eq!(std::fs::read(&s.path).unwrap(), b"two");
        let mode = std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        delete(&s).unwrap();
        assert!(!s.path.exists());
        delete(&s).unwrap();
    }

    #[test]
    fn refuses_a_symlink_and_leaves_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let s = sink(dir.path().join("link"));
        std::os::unix::fs::symlink(&target, &s.path).unwrap();
        assert!(matches!(write(&s, b"x"), Err(SinkError::Symlink(_))));
        assert!(matches!(delete(&s), Err(SinkError::Symlink(_))));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn refuses_a_directory_others_may_write() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let s = sink(open.join("t"));
        assert!(matches!(write(&s, b"x"), Err(SinkError::Unsafe(_))));
        assert!(!s.path.exists());
    }
}
