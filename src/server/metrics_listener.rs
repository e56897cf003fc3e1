//! The optional metrics listener on loopback TCP (`[daemon] metrics_listen`),
//! for a Prometheus that cannot reach the Unix socket. Anyone on the machine
//! can connect to a loopback port, so it serves only `GET /metrics` and
//! leaves out the series that name credentials; configuration accepts
//! nothing but loopback addresses. Connections are capped, and a request
//! head must arrive within the API's own timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{HEADER_TIMEOUT, MAX_HEAD_BYTES};
use crate::metrics::{Audience, Format};
use crate::refresh::RefresherHandle;

/// Most scrapers connected at once.
const MAX_CONNECTIONS: usize = 16;
/// Longest time to answer one scrape.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` (a loopback address, as configuration checked).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the metrics page on `listener` until `cancel` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    handle: RefresherHandle,
    cancel: CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(page))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(handle);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(tokend_error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A full listener drops new connections rather than queueing them.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _slot = slot;
            serve_connection(stream, service, cancel).await;
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    cancel: CancellationToken,
) {
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
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

async fn page(
    axum::extract::State(h): axum::extract::State<RefresherHandle>,
    headers: HeaderMap,
) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        h.metrics(format, Audience::AnyLocalUser),
    )
        .into_response()
}
