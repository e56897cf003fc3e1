//! Start-up and shutdown of the daemon, in order: configuration, store
//! (migrations), credentials into the refresher, socket, serve; on SIGTERM or
//! SIGINT: stop accepting, let in-flight refreshes finish (bounded), close the
//! database, remove the socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::{load_config, Config};
use crate::paths;
use crate::provider::ProviderClient;
use crate::refresh::Refresher;
use crate::server;
use crate::store::Store;

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
    let socket = opts
        .socket
        .or_else(|| config.daemon.socket.clone())
        .unwrap_or_else(paths::default_socket);
    let database = opts
        .database
        .or_else(|| config.daemon.database.clone())
        .unwrap_or_else(paths::default_database);
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;

    let store = Store::open(&database).await?;
    let creds = store.load_all().await?;
    let client = ProviderClient::new().context("cannot build the HTTP client")?;
    let (refresher, handle) = Refresher::new(
        Arc::clone(&config),
        store.clone(),
        client,
        creds,
        cancel.clone(),
    );
    let (listener, socket_file) = server::bind(&socket).await?;
    tracing::info!(
        socket = %socket.display(),
        database = %database.display(),
        config = %config_path.as_deref().map_or("(none, defaults)".into(), |p| p.display().to_string()),
        providers = config.providers.len(),
        credentials = handle.len(),
        version = env!("CARGO_PKG_VERSION"),
        "tokend started"
    );
    let refresher_task = tokio::spawn(refresher.run());
    let served = tokio::spawn(server::serve(
        listener,
        server::router(handle),
        cancel.clone(),
    ));
    cancel.cancelled().await;
    tracing::info!("shutting down: no longer accepting requests");
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

fn spawn_signal_handler(cancel: CancellationToken) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])
        .context("cannot install signal handlers")?;
    tokio::spawn(async move {
        if let Some(sig) = signals.next().await {
            tracing::info!(signal = sig, "received termination signal");
            cancel.cancel();
        }
    });
    Ok(())
}
