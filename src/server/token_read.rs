//! The token read, `GET /v1/tokens/{name}`: the answer both the router's
//! handler (`routes::get_token`) and the connection's fast path
//! (`super::fast_read`) give, so the two cannot differ. The access check
//! comes first; a fresh token is answered without waiting (on the fast
//! path, inside the service's `call`); otherwise the owner is asked, for
//! at most `daemon.read_timeout`.

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::routes::{authorize_read, held_token};
use crate::access::Peer;
use crate::api::ErrorKind;
use crate::refresh::{RefresherHandle, View};

/// What a `GET /v1/tokens/{name}` asks besides the name. The router's
/// handler and the connection's fast path (`super::fast_read`) both answer
/// through [`read_token_now`] and [`read_token`].
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenRead {
    /// `?min_valid=SECS`.
    pub(super) min_valid: Duration,
    /// The body's form, from `Accept`.
    pub(super) form: TokenForm,
}

/// The body of a token answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenForm {
    /// The token response JSON.
    Json,
    /// The bare token and a newline (`Accept: text/plain`).
    Text,
}

impl TokenForm {
    /// `Accept: text/plain` (without JSON also being acceptable) asks for
    /// the bare token.
    pub(super) fn of(headers: &HeaderMap) -> TokenForm {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains("text/plain") && !accept.contains("application/json") {
            TokenForm::Text
        } else {
            TokenForm::Json
        }
    }
}

/// A token read answered without waiting, when it can be: the caller's
/// refusal (checked first, before the token is looked at), or a published
/// token fresh enough for `read.min_valid`. `None`: only the owner can
/// answer, so the caller must wait in [`read_token`].
pub(super) fn read_token_now(
    h: &RefresherHandle,
    peer: &Peer,
    name: &str,
    read: TokenRead,
) -> Option<Response> {
    let view = match authorize_read(h, peer, name) {
        Ok(view) => view,
        Err(e) => return Some(e.into_response()),
    };
    crate::refresh::is_fresh(&view, read.min_valid).then(|| token_answer(&view, read.form))
}

/// A token read: [`read_token_now`], else the owner's answer, waited for at
/// most `daemon.read_timeout` (which `config` bounds below
/// [`REQUEST_TIMEOUT`]).
pub(super) async fn read_token(
    h: &RefresherHandle,
    peer: &Peer,
    name: &str,
    read: TokenRead,
) -> Response {
    if let Some(answer) = read_token_now(h, peer, name, read) {
        return answer;
    }
    match h.token(name, read.min_valid).await {
        Ok(view) => token_answer(&view, read.form),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The answer for a view the refresher handed out as current.
fn token_answer(view: &View, form: TokenForm) -> Response {
    let token = match held_token(view) {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    match form {
        TokenForm::Text => {
            let mut resp = format!("{}\n", token.access_token).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        TokenForm::Json => json_body(&token),
    }
}

/// The token response as `Json` writes it, into a buffer sized for it up
/// front, so the body is one allocation that never grows or is copied.
fn json_body(token: &crate::api::TokenResponse) -> Response {
    let secrets = token.access_token.len() + token.id_token.as_ref().map_or(0, String::len);
    let mut body = Vec::with_capacity(secrets.saturating_add(256));
    if let Err(e) = serde_json::to_writer(&mut body, token) {
        // Cannot happen (strings and numbers only); answered as `Json`
        // answers once `json_errors` has rewritten it.
        tracing::error!(error = %e, "cannot write a token response");
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            "internal error; see the daemon's log",
        )
        .into_response();
    }
    let mut resp = Response::new(axum::body::Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
