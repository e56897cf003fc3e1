//! The per-connection service of the socket: a token read
//! (`GET /v1/tokens/{name}`, the request a busy daemon answers most) is
//! answered here, before axum's router; every other request goes through
//! the router.
//!
//! Under many keep-alive clients the router's share of a token read
//! (matching, extensions, the request timer, the response layer's boxed
//! future) costs more than the read itself. The fast path answers through
//! the same functions as the router's handler (`token_read::read_token_now`
//! and `token_read::read_token`), so the access check comes first and the status,
//! headers and body are the router's. It takes only requests it can read
//! exactly as the router would (a plain name, no query or `min_valid=SECS`
//! alone); anything else, even a valid request it could serve, falls through
//! to the router, whose answer is then the only one.
//!
//! It needs no request timer: a fresh token is answered without waiting,
//! and a wait for the owner is bounded by `daemon.read_timeout`, which
//! `config` bounds below [`super::REQUEST_TIMEOUT`]. The head's own limits
//! ([`super::HEADER_TIMEOUT`], [`super::MAX_HEAD_BYTES`]) are hyper's,
//! before any service runs.

use std::convert::Infallible;
use std::future::Ready;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method, Request};
use axum::response::Response;
use axum::Router;
use futures::future::{BoxFuture, Either};
use hyper::body::{Body as _, Incoming};
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};

use super::routes::TOKEN_ROUTE;
use super::token_read::{read_token, read_token_now, TokenForm, TokenRead};
use crate::access::Peer;
use crate::refresh::RefresherHandle;

/// [`TOKEN_ROUTE`] up to its name.
const TOKEN_PREFIX: &str = "/v1/tokens/";

/// One connection's service: the caller, and the router for everything but
/// a token read.
#[derive(Clone)]
pub(crate) struct Connection {
    handle: RefresherHandle,
    peer: Arc<Peer>,
    router: TowerToHyperService<Router>,
}

impl Connection {
    /// The service for a connection from `peer`; `router` must already
    /// carry `peer` as an extension.
    pub(super) fn new(handle: RefresherHandle, peer: Arc<Peer>, router: Router) -> Connection {
        Connection {
            handle,
            peer,
            router: TowerToHyperService::new(router),
        }
    }
}

/// The answer's future: at once, after a wait for the owner, or the
/// router's.
type Answer = Either<
    Either<Ready<Result<Response, Infallible>>, BoxFuture<'static, Result<Response, Infallible>>>,
    TowerToHyperServiceFuture<Router, Request<Incoming>>,
>;

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        let Some((name, read)) = token_read(&req) else {
            return Either::Right(self.router.call(req));
        };
        if let Some(answer) = read_token_now(&self.handle, &self.peer, name, read) {
            return Either::Left(Either::Left(std::future::ready(Ok(counted(answer)))));
        }
        let (handle, peer, name) = (self.handle.clone(), Arc::clone(&self.peer), name.to_owned());
        Either::Left(Either::Right(Box::pin(async move {
            Ok(counted(read_token(&handle, &peer, &name, read).await))
        })))
    }
}

/// Finishes the answer as the router does: a `Content-Length` for a body
/// of known size (axum's route sets it before hyper writes the head, which
/// puts it before hyper's own `Connection`), and the count its response
/// layer would make.
fn counted(mut answer: Response) -> Response {
    if !answer.headers().contains_key(header::CONTENT_LENGTH) {
        if let Some(size) = answer.body().size_hint().exact() {
            answer
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
    }
    crate::metrics::socket_request(Some(TOKEN_ROUTE), answer.status().as_u16());
    answer
}

/// A token read the fast path can take: `GET /v1/tokens/NAME` with NAME
/// of the characters a credential name may hold (so it needs no percent
/// decoding), and no query or `min_valid=SECS` alone. `None` for anything
/// else, which the router answers.
fn token_read(req: &Request<Incoming>) -> Option<(&str, TokenRead)> {
    if req.method() != Method::GET {
        return None;
    }
    let (name, min_valid) = parse_target(req.uri().path(), req.uri().query())?;
    let read = TokenRead {
        min_valid: Duration::from_secs(min_valid),
        form: TokenForm::of(req.headers()),
    };
    Some((name, read))
}

/// The name and `min_valid` seconds of a token read's path and query, when
/// the router would read them the same way without decoding anything.
fn parse_target<'a>(path: &'a str, query: Option<&str>) -> Option<(&'a str, u64)> {
    let name = path.strip_prefix(TOKEN_PREFIX)?;
    let plain = |c: u8| c.is_ascii_alphanumeric() || b"-_.@".contains(&c);
    if name.is_empty() || !name.bytes().all(plain) {
        return None;
    }
    let min_valid = match query {
        None => 0,
        Some(q) => {
            let secs = q.strip_prefix("min_valid=")?;
            if secs.is_empty() || !secs.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            secs.parse().ok()?
        }
    };
    Some((name, min_valid))
}

#[cfg(test)]
mod tests {
    use super::{parse_target, TOKEN_PREFIX, TOKEN_ROUTE};

    #[test]
    fn the_prefix_is_the_routes() {
        assert_eq!(format!("{TOKEN_PREFIX}{{name}}"), TOKEN_ROUTE);
    }

    #[test]
    fn takes_only_what_the_router_reads_the_same_way() {
        assert_eq!(parse_target("/v1/tokens/c", None), Some(("c", 0)));
        assert_eq!(
            parse_target("/v1/tokens/a.b-c_d@e", Some("min_valid=60")),
            Some(("a.b-c_d@e", 60))
        );
        assert_eq!(
            parse_target("/v1/tokens/c", Some("min_valid=007")),
            Some(("c", 7))
        );
        for (path, query) in [
            ("/v1/tokens/", None),
            ("/v1/tokens", None),
            ("/v1/tokens/c/", None),
            ("/v1/tokens/c/dpop", None),
            ("/v1/tokens/c/watch", None),
            ("/v1/tokens/%63", None),
            ("/v1/tokens/c+d", None),
            ("/v1/tokensc", None),
            ("/v1/credentials/c", None),
            ("/v1/tokens/c", Some("")),
            ("/v1/tokens/c", Some("min_valid=")),
            ("/v1/tokens/c", Some("min_valid=abc")),
            ("/v1/tokens/c", Some("min_valid=+5")),
            ("/v1/tokens/c", Some("min_valid=-1")),
            ("/v1/tokens/c", Some("min_valid=18446744073709551616")),
            ("/v1/tokens/c", Some("min_valid=1&min_valid=2")),
            ("/v1/tokens/c", Some("x=1")),
            ("/v1/tokens/c", Some("min_valid=1&x=1")),
        ] {
            assert_eq!(parse_target(path, query), None, "{path} {query:?}");
        }
    }
}
