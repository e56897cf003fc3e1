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
use crate::event;
use crate::events::Kind;
use crate::paths;
use crate::provider::ProviderClient;
use crate::refresh::{Refresher, RefresherHandle};
use crate::seal::{self, Key};
use crate::server;
use crate::store::{GroupCommit, Rekeyed, Store};
use crate::systemd;

/// Most row writes committed in one transaction (one fsync). Large enough
/// that a burst of refreshes is limited by the providers, not by fsync.
const COMMIT_BATCH: usize = 512;

/// Where the daemon gets its configuration and files.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Configuration file; `None` means the default path, which may be absent.
    pub config: Option<PathBuf>,
    /// Socket path overriding the configuration.
    pub socket: Option<PathBuf>,
    /// Database path overriding the configuration.
    pub database: Option<PathBuf>,
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

/// Loads the configuration: an explicit file must exist; the default file
/// may be absent, in which case the daemon runs with no providers.
pub fn load(opts: &DaemonOptions) -> anyhow::Result<(Config, Option<PathBuf>)> {
    let (path, explicit) = match &opts.config {
        Some(p) => (p.clone(), true),
        None => (paths::default_config(), false),
    };
    if !explicit && !path.exists() {
        return Ok((Config::default(), None));
    }
    Ok((load_config(&path)?, Some(path)))
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(opts: DaemonOptions) -> anyhow::Result<()> {
    let (config, config_path) = load(&opts)?;
    let config = Arc::new(config);
    let database = opts
        .database
        .clone()
        .or_else(|| config.daemon.database.clone())
        .unwrap_or_else(paths::default_database);
    let signals = signal_hook_tokio::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;

    check_files(config_path.as_deref(), &config, &database)?;
    let key = encryption_key(&config)?;
    let store = Store::open_with(&database, key).await?;
    let client = ProviderClient::new().context("cannot build the HTTP client")?;
    let cancel = CancellationToken::new();
    let commits = GroupCommit::start(store.clone(), COMMIT_BATCH);
    let loaded = Refresher::load(
        Arc::clone(&config),
        store.clone(),
        commits,
        client,
        cancel.clone(),
    )
    .await;
    let (refresher, handle) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    release_freed_memory();
    let (listener, socket_file, socket) = listen(&opts, &config).await?;
    let refresher_task = tokio::spawn(refresher.run());
    let served = tokio::spawn(server::serve(
        listener,
        server::router(handle.clone()),
        cancel.clone(),
    ));
    event!(
        info,
        Kind::Started,
        tokend_socket = %socket,
        tokend_database = %database.display(),
        tokend_config = %config_path.as_deref().map_or("(none, defaults)".into(), |p| p.display().to_string()),
        tokend_providers = config.providers.len(),
        tokend_credentials = handle.len(),
        tokend_version = env!("CARGO_PKG_VERSION"),
        "tokend started"
    );
    systemd::ready(&status_line(&handle));

    handle_signals(signals, &opts, &handle, &config).await;
    systemd::stopping();
    event!(
        info,
        Kind::Stopping,
        "shutting down: no longer accepting requests"
    );
    cancel.cancel();
    let grace = config.daemon.shutdown_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, refresher_task).await.is_err() {
        tracing::warn!("refresher did not stop in time");
    }
    let _ = served.await;
    store.close().await;
    drop(socket_file);
    tracing::info!("tokend stopped");
    Ok(())
}

/// Refuses to run with secrets exposed by file modes: a world-readable
/// configuration file holding an inline client secret, or a database
/// directory others may write to (they could swap the database).
fn check_files(config_path: Option<&Path>, config: &Config, database: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(path) = config_path {
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
    }
    let dir = database.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(meta) = dir.and_then(|d| std::fs::metadata(d).ok()) {
        let mode = meta.permissions().mode();
        // World-writable without the sticky bit: anyone could replace the file.
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            anyhow::bail!(
                "the database directory {} is writable by every user (mode {:o}); run `chmod o-w` on it or choose another database path",
                dir.map(|d| d.display().to_string()).unwrap_or_default(),
                mode & 0o7777
            );
        }
    }
    Ok(())
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
    running: &Config,
) {
    while let Some(signal) = signals.next().await {
        if signal != signal_hook::consts::SIGHUP {
            tracing::info!(tokend_signal = signal, "received termination signal");
            return;
        }
        systemd::reloading();
        reload(opts, handle, running).await;
        systemd::ready(&status_line(handle));
    }
}

/// Parses and validates the configuration anew; swaps it in only if it is
/// entirely valid.
async fn reload(opts: &DaemonOptions, handle: &RefresherHandle, running: &Config) {
    match load(opts) {
        Ok((config, path)) => {
            if config.daemon.socket != running.daemon.socket
                || config.daemon.database != running.daemon.database
            {
                tracing::warn!("socket and database paths change only on restart");
            }
            if config.daemon.encryption_key != running.daemon.encryption_key {
                tracing::warn!(
                    "the database encryption key changes only with `tokend rekey` and a restart"
                );
            }
            let providers = config.providers.len();
            match handle.reload(Arc::new(config)).await {
                Ok(()) => event!(
                    info,
                    Kind::Reloaded,
                    tokend_config = %path.as_deref().map_or("(none, defaults)".into(), |p| p.display().to_string()),
                    tokend_providers = providers,
                    "configuration reloaded"
                ),
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

/// What `tokend rekey` works on.
#[derive(Debug, Clone, Default)]
pub struct RekeyOptions {
    /// Configuration file naming the database and the current key; `None`
    /// means the default path, which may be absent.
    pub config: Option<PathBuf>,
    /// Database path overriding the configuration.
    pub database: Option<PathBuf>,
    /// Current key file, overriding the configuration.
    pub key: Option<PathBuf>,
    /// New key file; `None` decrypts.
    pub new_key: Option<PathBuf>,
}

/// Re-seals every token in the database under a new key (or none), with the
/// daemon stopped. Returns a one-line report.
pub async fn rekey(opts: RekeyOptions) -> anyhow::Result<String> {
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
    let database = opts
        .database
        .clone()
        .or_else(|| config.daemon.database.clone())
        .unwrap_or_else(paths::default_database);
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
    } = Store::rekey(&database, old.as_ref(), new.as_ref()).await?;
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
