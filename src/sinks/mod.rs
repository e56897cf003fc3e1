//! File sinks: per credential, files that always hold its current token
//! (`[[credentials.NAME.sinks]]`). A file is never older than the token
//! the socket serves: whoever makes a new token current writes it before
//! the owner publishes it. A refresh job writes after its commit, before
//! it reports; the owner writes a token it stores itself (add, code
//! exchange, device login) before it publishes it, applies `on_remove`
//! after a removal, and writes the new sinks of a reload. Writes run on
//! the blocking pool; a failure is logged (`sink_failed`) and the next
//! token tries again. The token itself is never logged.
//!
//! Those writers race (a job of a replaced generation still finishing, a
//! removal, a reload), so each write carries a [`Ticket`] the owner took
//! when it decided on it, and a credential's files only move to a later
//! ticket: a late write of an older decision is dropped, never written
//! over a newer token.
//!
//! - `spec`: what a sink is and what its file holds.
//! - `write`: the atomic write and the delete.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::credential::Credential;
use crate::event;
use crate::events::Kind;
use crate::refresh::View;
use crate::token::Secret;

pub(crate) mod spec;
pub(crate) mod write;

pub(crate) use spec::{Format, OnRemove, Sink};

/// Sinks by credential name.
pub(crate) type Sinks = BTreeMap<String, Arc<[Sink]>>;

/// The order of the owner's decisions about tokens: a write carries the
/// ticket of the decision it carries out, and loses to a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticket(u64);

/// Which sink list a write used: a reload makes a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListVersion(u64);

/// What a sink file is rendered from: one token.
#[derive(Clone)]
pub(crate) struct Current {
    token: Secret,
    token_type: Arc<str>,
    /// Unix ms.
    expires_at: Option<i64>,
}

impl Current {
    pub(crate) fn of_credential(cred: &Credential) -> Option<Current> {
        Some(Current {
            token: cred.access_token.clone()?,
            token_type: Arc::from(cred.token_type.as_str()),
            expires_at: cred.expires_at,
        })
    }

    pub(crate) fn of_view(view: &View) -> Option<Current> {
        Some(Current {
            token: view.access_token.clone()?,
            token_type: Arc::clone(&view.token_type),
            expires_at: view.expires_at,
        })
    }
}

/// What the files of one credential last became.
#[derive(Default)]
struct Written {
    /// The ticket of the last decision carried out.
    ticket: Option<Ticket>,
    /// The token the files hold; `None` before the first or after a removal.
    current: Option<Current>,
}

/// The sink lists and, per credential with sinks, what its files hold.
struct Table {
    version: u64,
    sinks: Sinks,
    /// Locked while a credential's files are written, so two writers never
    /// interleave on one credential.
    written: HashMap<String, Arc<Mutex<Written>>>,
}

/// One credential's sinks as a write finds them.
struct Entry {
    list: Arc<[Sink]>,
    written: Arc<Mutex<Written>>,
    version: ListVersion,
}

/// The one writer of sink files, shared by the owner and its jobs. Cheap to
/// clone; it holds state only for credentials that have sinks.
#[derive(Clone)]
pub(crate) struct Writer {
    table: Arc<Mutex<Table>>,
    tickets: Arc<AtomicU64>,
}

/// Sink lists that a reload added or changed, by credential.
pub(crate) type Added = Vec<(String, Vec<Sink>)>;

impl Writer {
    pub(crate) fn new(sinks: Sinks) -> Writer {
        let written = sinks.keys().map(|n| (n.clone(), Arc::default())).collect();
        Writer {
            table: Arc::new(Mutex::new(Table {
                version: 0,
                sinks,
                written,
            })),
            tickets: Arc::new(AtomicU64::new(0)),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next decision's ticket. Taken by the owner only, in the order it
    /// decides.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.tickets.fetch_add(1, Ordering::Relaxed))
    }

    /// The credentials that have sinks.
    pub(crate) fn names(&self) -> Vec<String> {
        self.table().sinks.keys().cloned().collect()
    }

    /// Whether credential `name` has sinks.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.table().sinks.contains_key(name)
    }

    /// The sink lists in use now.
    pub(crate) fn version(&self) -> ListVersion {
        ListVersion(self.table().version)
    }

    /// The sinks of `name` now, with the lock on what they hold.
    fn lookup(&self, name: &str) -> Option<Entry> {
        let table = self.table();
        Some(Entry {
            list: Arc::clone(table.sinks.get(name)?),
            written: Arc::clone(table.written.get(name)?),
            version: ListVersion(table.version),
        })
    }

    /// Takes the sink lists of a reload. Returns the sinks to write at once
    /// (new ones, and those whose settings changed); a sink that left the
    /// list keeps its file as it is.
    pub(crate) fn set(&self, sinks: &Sinks) -> Added {
        let mut table = self.table();
        if table.sinks == *sinks {
            return Vec::new();
        }
        let mut added = Vec::new();
        for (name, list) in sinks {
            let old = table.sinks.get(name);
            let new: Vec<Sink> = list
                .iter()
                .filter(|s| old.is_none_or(|o| !o.contains(s)))
                .cloned()
                .collect();
            if !new.is_empty() {
                added.push((name.clone(), new));
            }
        }
        table.written.retain(|name, _| sinks.contains_key(name));
        for name in sinks.keys() {
            table.written.entry(name.clone()).or_default();
        }
        table.sinks = sinks.clone();
        table.version = table.version.wrapping_add(1);
        added
    }

    /// Writes `current` to every sink of `name` under `ticket`, on the
    /// blocking pool; `None` (a credential stored without a token yet)
    /// leaves the files but still outranks older decisions. Returns the
    /// list version written, or `None` if `name` has no sinks.
    pub(crate) async fn write(
        &self,
        name: &str,
        ticket: Ticket,
        current: Option<Current>,
    ) -> Option<ListVersion> {
        let Entry {
            list,
            written,
            version,
        } = self.lookup(name)?;
        blocking(name, move |name| {
            let mut w = written.lock().unwrap_or_else(PoisonError::into_inner);
            if w.ticket.is_some_and(|t| t > ticket) {
                return;
            }
            w.ticket = Some(ticket);
            // Without a token the files keep the last one, but a sink a
            // reload adds does not get it.
            if let Some(current) = &current {
                write_list(name, &list, current);
            }
            w.current = current;
        })
        .await;
        Some(version)
    }

    /// Applies each sink's `on_remove` after `name` was removed, unless a
    /// later decision (a new credential of that name) wrote meanwhile.
    pub(crate) async fn removed(&self, name: &str, ticket: Ticket) {
        let Some(Entry { list, written, .. }) = self.lookup(name) else {
            return;
        };
        blocking(name, move |name| {
            let mut w = written.lock().unwrap_or_else(PoisonError::into_inner);
            if w.ticket.is_some_and(|t| t > ticket) {
                return;
            }
            w.ticket = Some(ticket);
            w.current = None;
            for sink in list.iter() {
                let result = match sink.on_remove {
                    OnRemove::Delete => write::delete(sink),
                    OnRemove::Empty => write::write(sink, b""),
                    OnRemove::Keep => Ok(()),
                };
                if let Err(e) = result {
                    failed(name, sink, sink.on_remove.name(), &e);
                }
            }
        })
        .await;
    }

    /// Writes a reload's new sinks of `name`: with the token its other
    /// files hold if there is one (it may be newer than `published`, whose
    /// publish is still on its way), else with `published`.
    pub(crate) async fn write_added(
        &self,
        name: &str,
        added: Vec<Sink>,
        published: Option<Current>,
    ) {
        let Some(Entry { written, .. }) = self.lookup(name) else {
            return;
        };
        blocking(name, move |name| {
            let mut w = written.lock().unwrap_or_else(PoisonError::into_inner);
            if w.current.is_none() && w.ticket.is_none() {
                w.current = published;
            }
            if let Some(current) = &w.current {
                write_list(name, &added, current);
            }
        })
        .await;
    }
}

/// How long a job or the owner waits for one credential's sink files. A
/// local file system takes milliseconds; one that hangs (a network or FUSE
/// mount under the sink) must not stop refreshes or the owner for good.
/// (Short in unit tests, which hold a write up on purpose.)
const WAIT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(10)
};

/// Runs `f` (the writes of credential `name`) on the blocking pool and
/// waits for it, at most [`WAIT`]. A write that takes longer goes on, still
/// holding the credential's lock, so the writes after it stay in order.
async fn blocking(name: &str, f: impl FnOnce(&str) + Send + 'static) {
    let owned = name.to_owned();
    let task = tokio::task::spawn_blocking(move || f(&owned));
    match tokio::time::timeout(WAIT, task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(tokend_credential = %name, error = %e, "sink writer panicked")
        }
        Err(_) => event!(
            warn,
            Kind::SinkFailed,
            tokend_credential = %name,
            tokend_action = "wait",
            "the sink files are still being written after {}s (is their file system stuck?); the token is served without waiting, and the write goes on",
            WAIT.as_secs()
        ),
    }
}

/// Writes `current` to each of `list`, logging each failure.
fn write_list(name: &str, list: &[Sink], current: &Current) {
    for sink in list {
        let contents = spec::render(
            &sink.format,
            name,
            current.token.expose(),
            &current.token_type,
            current.expires_at.map(|ms| ms / 1000),
        );
        if let Err(e) = write::write(sink, contents.as_bytes()) {
            failed(name, sink, "write", &e);
        }
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

#[cfg(test)]
mod tests;
