//! The socket file: `bind` refuses to start over a live daemon, replaces a
//! stale socket, checks its directory with `fsguard`, creates the socket with
//! mode 0660 (and the readers' group) and `SocketFile` removes it on drop.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use crate::fsguard;

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    /// Another daemon answers on the socket.
    #[error("another tokend is already listening on {0}; stop it first or use another --socket")]
    AlreadyRunning(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; remove it or choose another socket path")]
    NotASocket(PathBuf),
    /// The socket's directory could be written by another user, who could
    /// then put a socket of their own in its place.
    #[error("refusing the socket {path}: {reason}")]
    Unsafe {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with its directory.
        reason: fsguard::UnsafeFile,
    },
    /// Binding failed.
    #[error("cannot listen on {path}: {reason}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: io::Error,
    },
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the API socket at `path` with mode 0660 and, if given, group `gid`
/// (the readers' group). Its directory must be owned by root or this user
/// and not writable by every user ([`fsguard::check_private_dir`]), so no
/// one else can put their own socket in its place. A missing directory is
/// created with mode 0700, or 0750 and group `gid` so the group's members
/// can reach the socket.
pub(crate) async fn bind(
    path: &Path,
    gid: Option<u32>,
) -> Result<(UnixListener, SocketFile), ServerError> {
    let bind_err = |reason| ServerError::Bind {
        path: path.to_path_buf(),
        reason,
    };
    let dir = fsguard::parent_dir(path);
    fsguard::create_missing_dir(dir, gid).map_err(bind_err)?;
    fsguard::check_private_dir(dir).map_err(|reason| ServerError::Unsafe {
        path: path.to_path_buf(),
        reason,
    })?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match tokio::net::UnixStream::connect(path).await {
            Ok(_) => return Err(ServerError::AlreadyRunning(path.to_path_buf())),
            Err(_) => {
                tracing::info!(socket = %path.display(), "removing stale socket file");
                std::fs::remove_file(path).map_err(bind_err)?;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let guard = SocketFile {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_err)?;
    }
    Ok((listener, guard))
}
