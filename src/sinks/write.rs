//! Writing a sink file so that a reader sees the old contents or the new,
//! never a part. The directory is opened once (`O_DIRECTORY|O_NOFOLLOW`)
//! and everything after goes through that descriptor: a temp file created
//! in it (`O_CREAT|O_EXCL|O_NOFOLLOW`, the sink's mode), written, given its
//! owner, fsynced, renamed over the name, and the directory fsynced so the
//! rename survives a crash. So the directory itself may belong to the
//! reading service: whatever its owner puts there, tokend never follows a
//! link, only replaces or removes the name. The directories above it must
//! pass `fsguard::check_ancestors`, since whoever could change one of them
//! could point the path elsewhere before the open.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use super::spec::Sink;
use crate::fsguard::{self, UnsafeFile};

/// Why a sink file was not written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// A directory above the sink is unsafe to write through.
    #[error(transparent)]
    Unsafe(#[from] UnsafeFile),
    /// The path or its directory is a symbolic link.
    #[error("{0} is a symbolic link; tokend does not write a sink through one: remove the link or point the sink at the real path")]
    Symlink(PathBuf),
    /// The directory may be written by every user and has no sticky bit.
    #[error("{path} is writable by every user without the sticky bit (mode {mode:04o}): others could replace the sink; run `chmod o-w {path}` or choose another directory")]
    OpenDir { path: PathBuf, mode: u32 },
    /// Something at the path is not a regular file.
    #[error("{0} is not a regular file; remove it or choose another path")]
    NotRegular(PathBuf),
    /// The directory or file refused an operation.
    #[error("cannot {action} {path}: {source}; check that the directory exists and tokend may write to it (ReadWritePaths= under systemd)")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(Errno) -> SinkError + 'p {
    move |e| SinkError::Io {
        action,
        path: path.to_path_buf(),
        source: io::Error::from(e),
    }
}

/// The sink's directory, opened without following a link, and its name in
/// it. Refused: directories above that `fsguard` refuses, a directory others
/// may write without the sticky bit, and a name that is a link or not a
/// regular file.
fn open_dir(path: &Path) -> Result<(OwnedFd, &std::ffi::OsStr), SinkError> {
    let dir = fsguard::parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| SinkError::NotRegular(path.to_path_buf()))?;
    fsguard::check_ancestors(fsguard::parent_dir(dir))?;
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR if is_link(dir) => SinkError::Symlink(dir.to_path_buf()),
        e => io_err("open", dir)(e),
    })?;
    let meta = nix::sys::stat::fstat(&fd).map_err(io_err("examine", dir))?;
    let mode = meta.st_mode & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(SinkError::OpenDir {
            path: dir.to_path_buf(),
            mode,
        });
    }
    match nix::sys::stat::fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(m) => match SFlag::from_bits_truncate(m.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFLNK => Err(SinkError::Symlink(path.to_path_buf())),
            SFlag::S_IFREG => Ok((fd, name)),
            _ => Err(SinkError::NotRegular(path.to_path_buf())),
        },
        Err(Errno::ENOENT) => Ok((fd, name)),
        Err(e) => Err(io_err("examine", path)(e)),
    }
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// Replaces the file at `sink.path` with `contents`, atomically.
pub(crate) fn write(sink: &Sink, contents: &[u8]) -> Result<(), SinkError> {
    let (dir, name) = open_dir(&sink.path)?;
    let temp = format!(
        ".{}.tokend-{}-{:016x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    );
    let temp_path = fsguard::parent_dir(&sink.path).join(&temp);
    let result = write_temp(sink, &dir, &temp, &temp_path, contents).and_then(|()| {
        nix::fcntl::renameat(&dir, temp.as_str(), &dir, name)
            .map_err(io_err("rename into place", &sink.path))
    });
    if result.is_err() {
        let _ = nix::unistd::unlinkat(&dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result?;
    nix::unistd::fsync(&dir).map_err(io_err("fsync", fsguard::parent_dir(&sink.path)))
}

fn write_temp(
    sink: &Sink,
    dir: &OwnedFd,
    temp: &str,
    temp_path: &Path,
    contents: &[u8],
) -> Result<(), SinkError> {
    let fd = nix::fcntl::openat(
        dir,
        temp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(sink.mode),
    )
    .map_err(io_err("create", temp_path))?;
    let mut file = File::from(fd);
    let set_mode = |f: &File| {
        f.set_permissions(std::fs::Permissions::from_mode(sink.mode))
            .map_err(|e| SinkError::Io {
                action: "set the mode of",
                path: temp_path.to_path_buf(),
                source: e,
            })
    };
    // The umask may have taken bits from the mode asked for.
    set_mode(&file)?;
    let uid = sink.uid.filter(|&u| u != fsguard::euid());
    if uid.is_some() || sink.gid.is_some() {
        std::os::unix::fs::fchown(&file, uid, sink.gid).map_err(|e| SinkError::Io {
            action: "chown",
            path: temp_path.to_path_buf(),
            source: e,
        })?;
        set_mode(&file)?;
    }
    let io = |action| {
        move |e| SinkError::Io {
            action,
            path: temp_path.to_path_buf(),
            source: e,
        }
    };
    file.write_all(contents).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))
}

/// Deletes the sink file, if it is there (never through a symlink).
pub(crate) fn delete(sink: &Sink) -> Result<(), SinkError> {
    let (dir, name) = open_dir(&sink.path)?;
    match nix::unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => {
            nix::unistd::fsync(&dir).map_err(io_err("fsync", fsguard::parent_dir(&sink.path)))
        }
        Err(Errno::ENOENT) => Ok(()),
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
        assert!(matches!(write(&s, b"x"), Err(SinkError::OpenDir { .. })));
        assert!(!s.path.exists());
        // Below it, the open directory is an unsafe ancestor.
        let below = open.join("sub");
        std::fs::create_dir(&below).unwrap();
        let s = sink(below.join("t"));
        assert!(matches!(write(&s, b"x"), Err(SinkError::Unsafe(_))));
    }

    #[test]
    fn refuses_a_symlinked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let s = sink(dir.path().join("link/t"));
        assert!(
            matches!(write(&s, b"x"), Err(SinkError::Symlink(_))),
            "{:?}",
            write(&s, b"x")
        );
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
    }

    #[test]
    fn writes_into_a_directory_another_user_owns() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        if fsguard::euid() == 0 {
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        }
        let s = Sink {
            gid: (fsguard::euid() == 0).then_some(65534),
            uid: (fsguard::euid() == 0).then_some(65534),
            ..sink(theirs.join("t"))
        };
        write(&s, b"tok").unwrap();
        assert_eq!(std::fs::read(&s.path).unwrap(), b"tok");
        if fsguard::euid() == 0 {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&s.path).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (65534, 65534, 0o640));
        }
    }
}
