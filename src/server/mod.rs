//! HTTP/1.1 + JSON over a Unix socket (axum routes served by hyper).
//!
//! - `socket`: the socket file (refuses to start over a live daemon,
//!   replaces a stale socket, mode 0660, removed on drop).
//! - `accept`: the accept loop and its limits (connection caps, head timeout
//!   and size), and the kernel-attested `Peer` on every connection.
//! - `fast_read`: each connection's service; token reads are answered there,
//!   through the same functions as the router's handler, and everything
//!   else goes to the router.
//! - `routes`: the router and its handlers, with the authorization checks.
//! - `token_read`: the answer to a token read, for the router's handler and
//!   the fast path alike.
//! - `error`: each [`RefreshError`](crate::refresh::RefreshError) to one
//!   status, and every error answer, axum's and tower's too, to
//!   `{"error": kind, "message": ...}`.
//! - `convert`: the refresher's views to the wire types of `api`.
//! - `watch`: a credential's tokens as server-sent events.
//! - `metrics_listener`: the optional loopback TCP listener that serves
//!   only the metrics page, without the series that name credentials.
//!
//! Bodies are capped at [`MAX_BODY_BYTES`], and a request is answered (or
//! cut with 408) within [`REQUEST_TIMEOUT`]; a token read on the fast path
//! is bounded by `daemon.read_timeout`, below it.

use std::time::Duration;

mod accept;
mod convert;
mod error;
mod fast_read;
pub(crate) mod metrics_listener;
mod routes;
mod socket;
mod token_read;
mod watch;

pub(crate) use accept::serve;
use routes::router;
pub(crate) use socket::{bind, SocketFile};

/// Most connections served at once; further ones are closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// A request head (line and headers) must arrive within this.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head.
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest time to answer one request (a token wait is bounded below this).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);
/// Longest access-token lifetime a client may state when adding a credential.
pub(crate) const MAX_EXPIRES_IN_SECS: u64 = 365 * 24 * 3600;
