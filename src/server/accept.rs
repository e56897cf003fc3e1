//! The accept loop and its limits. A slow or hostile client cannot starve
//! the others: connections are capped per uid and in all, request heads
//! must arrive within [`HEADER_TIMEOUT`] and fit in [`MAX_HEAD_BYTES`], and
//! at shutdown open connections get a short grace before they are cut. Each
//! connection carries the kernel-attested [`Peer`] every handler authorizes
//! on.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Extension;
use axum::http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fast_read::Connection;
use super::{HEADER_TIMEOUT, MAX_HEAD_BYTES};
use crate::access::Peer;
use crate::events::{limit, Noisy, Verdict};
use crate::refresh::RefresherHandle;
use crate::uidcap::{per_uid_limit, PerUidCap, UidSlot};

/// The connection caps: one per uid (so one uid may not hold every slot and
/// the others are still served), then the global one.
struct Caps {
    slots: Arc<Semaphore>,
    max_connections: usize,
    per_uid: PerUidCap,
}

/// What a served connection holds until it closes.
type Slots = (OwnedSemaphorePermit, UidSlot);

/// Serves the API (`super::router`, with token reads on the fast path of
/// `super::fast_read`) on `listener` until `cancel` fires, then lets open
/// requests finish (briefly) and returns. At most `max_connections` are
/// served at once (at most [`super::MAX_CONNECTIONS`], and below the
/// descriptor limit).
pub(crate) async fn serve(
    listener: UnixListener,
    handle: RefresherHandle,
    cancel: CancellationToken,
    max_connections: usize,
) {
    let caps = Caps {
        slots: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        per_uid: PerUidCap::new(
            per_uid_limit(max_connections),
            &[0, nix::unistd::geteuid().as_raw()],
        ),
    };
    let router = super::router(handle.clone());
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if let Verdict::Log { suppressed } = limit(Noisy::AcceptFailed, 0) {
                        tracing::warn!(error = %e, tokend_suppressed = suppressed, "accept failed");
                    }
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((peer, slots)) = admit(&stream, &caps) else {
            continue;
        };
        let routed = router.clone().layer(Extension(Arc::clone(&peer)));
        let service = Connection::new(handle.clone(), peer, routed);
        connections.spawn(serve_connection(stream, service, slots, cancel.clone()));
    }
    connections.close();
    if tokio::time::timeout(Duration::from_secs(3), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open API connections were cut at shutdown");
    }
}

/// Who is calling, from the kernel, and the slots their connection takes;
/// `None` (the connection is dropped) when the peer cannot be read or a cap
/// is reached.
fn admit(stream: &UnixStream, caps: &Caps) -> Option<(Arc<Peer>, Slots)> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(e) => {
            tracing::warn!(tokend_error = %e, "cannot read the peer's credentials; closing the connection");
            return None;
        }
    };
    // Per uid first, so a uid at its cap takes no global slot.
    let Some(uid_slot) = caps.per_uid.try_acquire(cred.uid()) else {
        if let Verdict::Log { suppressed } = limit(Noisy::UidCap, cred.uid()) {
            tracing::warn!(
                tokend_peer_uid = cred.uid(),
                max = caps.per_uid.limit(),
                tokend_suppressed = suppressed,
                "too many open API connections from one uid; closing a new one"
            );
        }
        return None;
    };
    let Ok(slot) = Arc::clone(&caps.slots).try_acquire_owned() else {
        if let Verdict::Log { suppressed } = limit(Noisy::ConnectionCap, 0) {
            tracing::warn!(
                max = caps.max_connections,
                tokend_suppressed = suppressed,
                "too many open API connections; closing a new one"
            );
        }
        return None;
    };
    Some((Arc::new(Peer::from_socket(stream, cred)), (slot, uid_slot)))
}

/// Serves one connection with the head limits, holding its `slots` until
/// it closes; on `cancel`, lets the request in progress finish for up to
/// two seconds.
async fn serve_connection(
    stream: UnixStream,
    service: Connection,
    slots: Slots,
    cancel: CancellationToken,
) {
    let _slots = slots;
    serve_http1(stream, service, cancel, Duration::from_secs(2)).await;
}

/// Serves one HTTP/1.1 connection, the socket's or the metrics listener's,
/// with the head limits ([`HEADER_TIMEOUT`], [`MAX_HEAD_BYTES`]); on
/// `cancel`, lets the request in progress finish for up to `grace`.
pub(super) async fn serve_http1<S, V, B>(
    stream: S,
    service: V,
    cancel: CancellationToken,
    grace: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    V: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    V::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
        }
    }
}
