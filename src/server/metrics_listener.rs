//! The optional metrics listener on loopback TCP (`[daemon] metrics_listen`),
//! for a Prometheus that cannot reach the Unix socket. Anyone on the machine
//! can connect to a loopback port, so it serves only `GET /metrics` and
//! leaves out the series that name credentials; configuration accepts
//! nothing but loopback addresses. A request must name a loopback host, so
//! a web page in a local browser cannot read it through DNS rebinding.
//! Connections are capped, and a request head must arrive within the API's
//! own timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
            super::accept::serve_http1(stream, service, cancel, Duration::from_secs(1)).await;
        });
    }
}

async fn page(
    axum::extract::State(h): axum::extract::State<RefresherHandle>,
    headers: HeaderMap,
) -> Response {
    if !loopback_host(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "the Host header must name a loopback address or localhost\n",
        )
            .into_response();
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        h.metrics(format, Audience::AnyLocalUser),
    )
        .into_response()
}

/// The request's `Host` names this machine's loopback (or is absent, as in
/// HTTP/1.0): a browser sends the name of the site it was pointed at.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(ip, _)| ip),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, value.parse().unwrap());
        loopback_host(&headers)
    }

    #[test]
    fn only_loopback_hosts_are_served() {
        assert!(host("127.0.0.1:9464"));
        assert!(host("[::1]:9464"));
        assert!(host("localhost:9464"));
        assert!(host("LOCALHOST"));
        assert!(!host("evil.example:9464"));
        assert!(!host("127.0.0.1.evil.example"));
        assert!(!host("[::1"));
        assert!(!host("192.0.2.1:9464"));
        assert!(loopback_host(&HeaderMap::new()));
    }
}
