//! Default file locations: systemd's directories when running as a unit
//! (`$STATE_DIRECTORY`, `$RUNTIME_DIRECTORY`, `$CONFIGURATION_DIRECTORY`),
//! else the XDG base directories, else fallbacks that work for any user.

use std::path::{Path, PathBuf};

fn env_dir(var: &str) -> Option<PathBuf> {
    // systemd may list several directories separated by ':'; the first is ours.
    let value = std::env::var_os(var)?;
    let first = value.to_str()?.split(':').next()?.to_string();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

fn home() -> Option<PathBuf> {
    env_dir("HOME")
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The database: `$STATE_DIRECTORY/tokend.db`, `$XDG_STATE_HOME/tokend/tokend.db`,
/// `~/.local/state/tokend/tokend.db`.
pub(crate) fn default_database() -> PathBuf {
    if let Some(dir) = env_dir("STATE_DIRECTORY") {
        return dir.join("tokend.db");
    }
    let base = env_dir("XDG_STATE_HOME")
        .or_else(|| home().map(|h| h.join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tokend/tokend.db")
}

/// The socket: `$TOKEND_SOCKET`, `$RUNTIME_DIRECTORY/tokend.sock`,
/// `$XDG_RUNTIME_DIR/tokend/tokend.sock`, `/run/tokend/tokend.sock` for root,
/// else `/tmp/tokend-$UID/tokend.sock`. Another user can create that last
/// directory first: the daemon then refuses it (`server::bind`), and the CLI
/// refuses whoever listens there (`client`'s peer check).
pub(crate) fn default_socket() -> PathBuf {
    if let Some(path) = env_dir("TOKEND_SOCKET") {
        return path;
    }
    if let Some(dir) = env_dir("RUNTIME_DIRECTORY") {
        return dir.join("tokend.sock");
    }
    if let Some(dir) = env_dir("XDG_RUNTIME_DIR") {
        return dir.join("tokend/tokend.sock");
    }
    let uid = uid();
    if uid == 0 {
        PathBuf::from("/run/tokend/tokend.sock")
    } else {
        PathBuf::from(format!("/tmp/tokend-{uid}/tokend.sock"))
    }
}

/// The socket a client should try: like [`default_socket`], except that a
/// user whose own default socket does not exist falls back to the system
/// daemon's `/run/tokend/tokend.sock` when that exists (members of the
/// `tokend` group may read tokens from it).
pub(crate) fn default_client_socket() -> PathBuf {
    let own = default_socket();
    let system = Path::new("/run/tokend/tokend.sock");
    if env_dir("TOKEND_SOCKET").is_none() && !own.exists() && system.exists() {
        return system.to_path_buf();
    }
    own
}

/// The configuration file: `$CONFIGURATION_DIRECTORY/config.toml`,
/// `$XDG_CONFIG_HOME/tokend/config.toml`, `~/.config/tokend/config.toml`.
pub(crate) fn default_config() -> PathBuf {
    if let Some(dir) = env_dir("CONFIGURATION_DIRECTORY") {
        return dir.join("config.toml");
    }
    let base = env_dir("XDG_CONFIG_HOME")
        .or_else(|| home().map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tokend/config.toml")
}
