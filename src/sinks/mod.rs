//! File sinks: per credential, files that always hold its current token
//! (`[[credentials.NAME.sinks]]`). One task, subscribed to the refresher's
//! updates, writes every sink of a credential that has a token at start and
//! rewrites a credential's sinks on each new token; on removal it deletes,
//! empties or keeps them. Writes run on the blocking pool, off the
//! refresher's loop; a failure is logged (`sink_failed`) and the next token
//! tries again. The token itself is never logged.
//!
//! - `spec`: what a sink is and what its file holds.
//! - `write`: the atomic write and the delete.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::event;
use crate::events::Kind;
use crate::refresh::{RefresherHandle, UpdateKind, View};

pub(crate) mod spec;
pub(crate) mod write;

pub(crate) use spec::{Format, OnRemove, Sink};

/// Sinks by credential name.
pub(crate) type Sinks = BTreeMap<String, Arc<[Sink]>>;

/// Starts the sink writer, if any credential has sinks. Its first writes
/// are done before this returns, so a file exists once the daemon serves.
pub(crate) async fn start(
    sinks: Sinks,
    handle: RefresherHandle,
) -> Option<tokio::task::JoinHandle<()>> {
    if sinks.is_empty() {
        return None;
    }
    // Subscribed before the views are read: a token published in between
    // is written twice at worst, never missed.
    let mut updates = handle.subscribe()?;
    let sinks = Arc::new(sinks);
    write_all(&sinks, &handle).await;
    let shutdown = handle.shutdown();
    Some(tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = updates.recv() => r,
            };
            match received {
                Ok(update) => {
                    let Some(list) = sinks.get(&*update.name) else {
                        continue;
                    };
                    match (update.kind, update.view) {
                        (UpdateKind::Token, Some(view)) => write_view(list, view).await,
                        (UpdateKind::Removed, _) => removed(list, &update.name).await,
                        _ => {}
                    }
                }
                // Fell behind: what counts is every view now.
                Err(RecvError::Lagged(_)) => write_all(&sinks, &handle).await,
                Err(RecvError::Closed) => return,
            }
        }
    }))
}

/// Writes every sink of every credential that has a token now.
async fn write_all(sinks: &Arc<Sinks>, handle: &RefresherHandle) {
    for (name, list) in sinks.iter() {
        if let Some(view) = handle.view(name) {
            write_view(list, view).await;
        }
    }
}

/// Writes `view`'s token to each of `list`.
async fn write_view(list: &Arc<[Sink]>, view: Arc<View>) {
    if view.access_token.is_none() {
        return;
    }
    let list = Arc::clone(list);
    let done = tokio::task::spawn_blocking(move || {
        let Some(token) = view.access_token.as_ref() else {
            return;
        };
        for sink in list.iter() {
            let contents = spec::render(
                &sink.format,
                &view.name,
                token.expose(),
                &view.token_type,
                view.expires_at.map(|ms| ms / 1000),
            );
            if let Err(e) = write::write(sink, contents.as_bytes()) {
                failed(&view.name, sink, "write", &e);
            }
        }
    })
    .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "sink writer panicked");
    }
}

/// Applies each sink's `on_remove` after its credential was removed.
async fn removed(list: &Arc<[Sink]>, name: &Arc<str>) {
    let list = Arc::clone(list);
    let name = Arc::clone(name);
    let done = tokio::task::spawn_blocking(move || {
        for sink in list.iter() {
            let result = match sink.on_remove {
                OnRemove::Delete => write::delete(sink),
                OnRemove::Empty => write::write(sink, b""),
                OnRemove::Keep => Ok(()),
            };
            if let Err(e) = result {
                failed(&name, sink, sink.on_remove.name(), &e);
            }
        }
    })
    .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "sink writer panicked");
    }
}

fn failed(name: &str, sink: &Sink, action: &str, e: &write::SinkError) {
    event!(
        warn,
        Kind::SinkFailed,
        tokend_credential = %name,
        tokend_sink = %sink.path.display(),
        tokend_action = action,
        error = %e,
        "sink file not updated; tokend tries again on the next token"
    );
}
