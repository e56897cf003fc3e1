//! Start-up and shutdown of the daemon, in order: configuration, store
//! (migrations), credentials into the refresher, socket (inherited from
//! systemd or bound here), serve, then READY=1. SIGHUP reloads the
//! configuration; SIGTERM or SIGINT stop accepting, let in-flight refreshes
//! finish (bounded), close the database and remove the socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::{load_config, Config};
use crate::discovery::Discovery;
use crate::event;
use crate::events::Kind;
use crate::fsguard;
use crate::hooks::Hooks;
use crate::paths;
use crate::provider::ProviderClient;
use crate::refresh::{Refresher, RefresherHandle};
use crate::seal::{self, Key};
use crate::server;
use crate::store::{self, GroupCommit, Location, Rekeyed, Store};
use crate::systemd;

/// Most row writes committed in one transaction (one fsync). Large enough
/// that a burst of refreshes is limited by the providers, not by fsync.
const COMMIT_BATCH: usize = 512;

/// Where the daemon gets its configuration and files.
#[derive(Debug, Clone, Default)]
pub(crate) struct DaemonOptions {
    /// Configuration file; `None` means the default path, which may be absent.
    pub(crate) config: Option<PathBuf>,
    /// Socket path overriding the configuration.
    pub(crate) socket: Option<PathBuf>,
    /// Database path overriding the configuration.
    pub(crate) database: Option<PathBuf>,
}

/// Descriptors kept for everything but API connections: the database and
/// its companions, the lock, outbound HTTPS, the journal, signals.
const FD_RESERVE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd's
/// `LimitNOFILE=` sets both; a shell's default soft limit of 1024 is too low
/// for thousands of idle clients) and returns the soft limit in force.
pub(crate) fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!("cannot read the open-file limit; assuming 1024");
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                "cannot raise the open-file limit ({}); fewer API connections are served at once",
                std::io::Error::last_os_error()
            );
        }
    }
    limit.rlim_cur
}

/// The API connection cap for a descriptor limit: [`server::MAX_CONNECTIONS`], or
/// fewer so that connections never take the descriptors the database and
/// the token endpoints need.
pub(crate) fn connection_cap(fd_limit: u64) -> usize {
    let room = fd_limit.saturating_sub(FD_RESERVE).max(1);
    usize::try_from(room)
        .unwrap_or(usize::MAX)
        .min(server::MAX_CONNECTIONS)
}

/// Hands the memory freed after loading (decoded rows, SQLite's buffers)
/// back to the kernel. glibc keeps freed heap for reuse, so without this a
/// daemon that loaded a million rows would keep their transient peak
/// resident for the rest of its life.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no
    // preconditions and is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads the configuration and runs every check on the files it involves
/// ([`check_config_files`]): an explicit file must exist; the default file
/// may be absent, in which case the daemon runs with no providers. Start-up,
/// SIGHUP and `tokend check-config` all go through here, so none of them
/// accepts a configuration another refuses.
pub(crate) fn load(opts: &DaemonOptions) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let (path, explicit) = match &opts.config {
        Some(p) => (p.clone(), true),
        None => (paths::default_config(), false),
    };
    if !explicit && !path.exists() {
        return Ok((Config::default(), None));
    }
    // Checked before it is read: its directories are then trusted, so what
    // is read is what was checked. A file that cannot be read at all is
    // for `load_config` to report.
    match fsguard::check_read_file(&path) {
        Err(fsguard::UnsafeFile::Io { .. }) | Ok(()) => {}
        Err(e) => return Err(e.into()),
    }
    let config = load_config(&path)?;
    check_config_files(&path, &config)?;
    Ok((config, Some(path)))
}

/// Refuses a configuration that exposes or lets others change what tokend
/// trusts: a configuration file holding an inline client secret that every
/// user may read, or a configured key file owned by another user or
/// writable by every user (client secret files are checked as they are
/// read, see `config`; the database and the socket where they are opened).
fn check_config_files(path: &Path, config: &Config) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let inline: Vec<&str> = config
        .providers
        .values()
        .filter(|p| p.inline_secret)
        .map(|p| p.name.as_str())
        .collect();
    let mode = std::fs::metadata(path)?.permissions().mode();
    if !inline.is_empty() && mode & 0o004 != 0 {
        anyhow::bail!(
            "{} holds client secrets (providers {}) but is readable by every user (mode {:o}); run `chmod o-r {}`, or move the secrets to client_secret_file or client_secret_credential",
            path.display(),
            inline.join(", "),
            mode & 0o777,
            path.display()
        );
    }
    if let Some(key) = &config.daemon.encryption_key {
        // A missing or unreadable key is for `seal` to report, in its words.
        match fsguard::check_read_file(key) {
            Err(fsguard::UnsafeFile::Io { .. }) | Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let (config, config_path) = load(&opts)?;
    let config = Arc::new(config);
    let database = database(opts.database.as_ref(), &config);
    if let Location::Postgres(pg) = &database {
        tracing::info!("using PostgreSQL: {}", pg.describe());
    }
    // Installed before anything starts, so a signal during start-up is not
    // lost to the default action.
    let signals = signal_hook_tokio::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let fd_limit = raise_fd_limit();
    let cancel = CancellationToken::new();
    let (store, refresher, handle, discovery) =
        start_store(&config, &database, cancel.clone()).await?;
    release_freed_memory();
    let (listener, socket_file, socket) = listen(&opts, &config).await?;
    if let Some(addr) = config.daemon.metrics_listen {
        let tcp = server::metrics_listener::bind(addr)
            .await
            .with_context(|| {
                format!("cannot listen for metrics on {addr} (daemon.metrics_listen)")
            })?;
        tokio::spawn(server::metrics_listener::serve(
            tcp,
            handle.clone(),
            cancel.clone(),
        ));
        tracing::info!(tokend_metrics_listen = %addr, "serving metrics on loopback TCP");
    }
    tokio::spawn(Arc::clone(&discovery).run(handle.clone(), cancel.clone()));
    let mut hooks = Hooks::start(&handle, Arc::clone(&config.hooks), cancel.clone());
    let running = Running {
        refresher: tokio::spawn(refresher.run()),
        server: tokio::spawn(server::serve(
            listener,
            handle.clone(),
            cancel.clone(),
            connection_cap(fd_limit),
        )),
        cancel,
    };
    event!(
        info,
        Kind::Started,
        tokend_socket = %socket,
        tokend_database = %database,
        tokend_config = %config_path.as_deref().map_or("(none, defaults)".into(), |p| p.display().to_string()),
        tokend_providers = config.providers.len(),
        tokend_credentials = handle.len(),
        tokend_version = env!("CARGO_PKG_VERSION"),
        "tokend started"
    );
    systemd::ready(&status_line(&handle));
    handle_signals(signals, &opts, &handle, &discovery, &config, &mut hooks).await;
    running.stop(config.daemon.shutdown_timeout).await;
    store.close().await;
    drop(socket_file);
    tracing::info!("tokend stopped");
    Ok(())
}

/// Opens the database, discovers the endpoints of providers given by their
/// issuer (or takes the stored copies) and loads the refresher; on failure
/// the store is closed again, so its lock and WAL are released in order.
async fn start_store(
    config: &Arc<Config>,
    database: &Location,
    cancel: CancellationToken,
) -> anyhow::Result<(Store, Refresher, RefresherHandle, Arc<Discovery>)> {
    let key = encryption_key(config)?;
    let store = Store::open_at(database, key).await?;
    let client = ProviderClient::new().context("cannot build the HTTP client")?;
    let (discovery, effective) =
        Discovery::start(Arc::clone(config), store.clone(), client.clone()).await;
    let commits = GroupCommit::start(store.clone(), COMMIT_BATCH);
    match Refresher::load(Arc::new(effective), store.clone(), commits, client, cancel).await {
        Ok((refresher, handle)) => Ok((store, refresher, handle, discovery)),
        Err(e) => {
            store.close().await;
            Err(e.into())
        }
    }
}

/// The tasks of a running daemon, stopped in order: decide (cancel), tell
/// (STOPPING), wait (refreshes in flight, then the server).
struct Running {
    refresher: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
}

impl Running {
    async fn stop(self, shutdown_timeout: Duration) {
        systemd::stopping();
        event!(
            info,
            Kind::Stopping,
            "shutting down: no longer accepting requests"
        );
        self.cancel.cancel();
        let grace = shutdown_timeout + Duration::from_secs(1);
        if tokio::time::timeout(grace, self.refresher).await.is_err() {
            tracing::warn!("refresher did not stop in time");
        }
        let _ = self.server.await;
    }
}

/// The API socket: inherited from systemd (socket activation), or bound at
/// the configured or default path. The returned guard removes a socket we
/// bound ourselves.
async fn listen(
    opts: &DaemonOptions,
    config: &Config,
) -> anyhow::Result<(tokio::net::UnixListener, Option<server::SocketFile>, String)> {
    if let Some(listener) =
        systemd::activated_listener().context("cannot use the socket passed by systemd")?
    {
        let name = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "(socket activation)".into());
        return Ok((listener, None, name));
    }
    let path = opts
        .socket
        .clone()
        .or_else(|| config.daemon.socket.clone())
        .unwrap_or_else(paths::default_socket);
    let (listener, guard) = server::bind(&path, config.daemon.socket_gid).await?;
    Ok((listener, Some(guard), path.display().to_string()))
}

fn status_line(handle: &RefresherHandle) -> String {
    handle.summary()
}

/// Waits for SIGTERM/SIGINT, reloading the configuration on each SIGHUP.
async fn handle_signals(
    mut signals: signal_hook_tokio::Signals,
    opts: &DaemonOptions,
    handle: &RefresherHandle,
    discovery: &Discovery,
    running: &Config,
    hooks: &mut Hooks,
) {
    while let Some(signal) = signals.next().await {
        if signal != signal_hook::consts::SIGHUP {
            tracing::info!(tokend_signal = signal, "received termination signal");
            return;
        }
        systemd::reloading();
        reload(opts, handle, discovery, running, hooks).await;
        systemd::ready(&status_line(handle));
    }
}

/// Parses and validates the configuration anew; swaps it in only if it is
/// entirely valid. `running` is the configuration the daemon started with,
/// for what changes only on restart.
async fn reload(
    opts: &DaemonOptions,
    handle: &RefresherHandle,
    discovery: &Discovery,
    running: &Config,
    hooks: &mut Hooks,
) {
    match load(opts) {
        Ok((config, path)) => {
            if config.daemon.socket != running.daemon.socket
                || config.daemon.database != running.daemon.database
            {
                tracing::warn!("socket and database paths change only on restart");
            }
            if config.daemon.metrics_listen != running.daemon.metrics_listen {
                tracing::warn!(
                    "the metrics listener (daemon.metrics_listen) changes only on restart"
                );
            }
            if config.daemon.encryption_key != running.daemon.encryption_key {
                tracing::warn!(
                    "the database encryption key changes only with `tokend rekey` and a restart"
                );
            }
            let providers = config.providers.len();
            let new_hooks = Arc::clone(&config.hooks);
            // Every issuer is asked again, as SIGHUP promises.
            match discovery.reload(Arc::new(config), handle).await {
                Ok(()) => {
                    if new_hooks != hooks.current() {
                        tracing::info!(
                            tokend_hooks = new_hooks.len(),
                            "hooks ([[hooks]]) changed: the next events run the new ones; hooks running now finish"
                        );
                        hooks.set(new_hooks);
                    }
                    event!(
                        info,
                        Kind::Reloaded,
                        tokend_config = %path.as_deref().map_or("(none, defaults)".into(), |p| p.display().to_string()),
                        tokend_providers = providers,
                        "configuration reloaded"
                    );
                }
                Err(e) => {
                    event!(error, Kind::ReloadFailed, tokend_error = %e, "reload not applied")
                }
            }
        }
        Err(e) => event!(
            error,
            Kind::ReloadFailed,
            tokend_error = %format!("{e:#}"),
            "new configuration rejected; keeping the old one"
        ),
    }
}

/// The database encryption key: the configured one, else the systemd
/// credential `tokend-db-key` if the unit loads one, else none (logged, with
/// how to turn encryption on).
fn encryption_key(config: &Config) -> anyhow::Result<Option<Key>> {
    match seal::resolve(config.daemon.encryption_key.as_deref())? {
        Some(found) => {
            tracing::info!(
                tokend_key = found.key.id(),
                "tokens are encrypted at rest with the key in {}{}",
                found.path.display(),
                if found.automatic {
                    " (the tokend-db-key credential)"
                } else {
                    ""
                }
            );
            Ok(Some(found.key))
        }
        None => {
            tracing::info!(
                "tokens are stored unencrypted in the database (mode 0600); to encrypt them, give a key with encryption_key_file or encryption_key_credential in [daemon], or load the systemd credential tokend-db-key (see README, Encryption at rest)"
            );
            Ok(None)
        }
    }
}

/// The database: `--database FILE`, else the configuration's, else the
/// default file for this environment.
pub(crate) fn database(file: Option<&PathBuf>, config: &Config) -> Location {
    match (file, &config.daemon.database) {
        (Some(path), _) => Location::File(path.clone()),
        (None, Some(location)) => location.clone(),
        (None, None) => Location::File(paths::default_database()),
    }
}

/// What `tokend rekey` works on.
#[derive(Debug, Clone, Default)]
pub(crate) struct RekeyOptions {
    /// Configuration file naming the database and the current key; `None`
    /// means the default path, which may be absent.
    pub(crate) config: Option<PathBuf>,
    /// Database path overriding the configuration.
    pub(crate) database: Option<PathBuf>,
    /// Current key file, overriding the configuration.
    pub(crate) key: Option<PathBuf>,
    /// New key file; `None` decrypts.
    pub(crate) new_key: Option<PathBuf>,
}

/// Re-seals every token in the database under a new key (or none), with the
/// daemon stopped. Returns a one-line report.
pub(crate) async fn rekey(opts: RekeyOptions) -> anyhow::Result<String> {
    // The configuration is needed only for what the command line leaves out.
    let config = if opts.config.is_some() || opts.key.is_none() || opts.database.is_none() {
        load(&DaemonOptions {
            config: opts.config.clone(),
            ..DaemonOptions::default()
        })?
        .0
    } else {
        Config::default()
    };
    let database = match database(opts.database.as_ref(), &config) {
        Location::File(path) => path,
        Location::Postgres(pg) => anyhow::bail!(
            "tokend rekey works on an SQLite file only, and {} is a PostgreSQL database: re-sealing there is not supported yet; nothing was changed",
            pg.url()
        ),
    };
    if !database.exists() {
        anyhow::bail!(
            "no database at {}: nothing to rekey (give --database FILE)",
            database.display()
        );
    }
    let old = match &opts.key {
        Some(path) => Some(Key::load(path)?),
        None => seal::resolve(config.daemon.encryption_key.as_deref())?.map(|k| k.key),
    };
    let new = opts.new_key.as_deref().map(Key::load).transpose()?;
    let Rekeyed {
        credentials,
        were_sealed,
        were_plaintext,
    } = store::rekey(&database, old.as_ref(), new.as_ref()).await?;
    let was = format!("{were_sealed} were encrypted, {were_plaintext} plaintext");
    Ok(match &new {
        Some(k) => format!(
            "{}: {credentials} credential(s) re-encrypted with key {} ({was}); configure that key before starting the daemon",
            database.display(),
            k.id()
        ),
        None => format!(
            "{}: {credentials} credential(s) decrypted ({was}); tokens are now stored unencrypted: remove the key (encryption_key_file, encryption_key_credential, the tokend-db-key credential) before starting the daemon, or it encrypts them again",
            database.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_stays_below_the_descriptor_limit() {
        assert_eq!(connection_cap(1024), 960);
        assert_eq!(connection_cap(20_000), server::MAX_CONNECTIONS);
        assert_eq!(connection_cap(u64::MAX), server::MAX_CONNECTIONS);
        assert_eq!(connection_cap(10), 1);
    }

    #[test]
    fn the_soft_descriptor_limit_ends_at_the_hard_one() {
        let soft = raise_fd_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and nothing else.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!((soft, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
