//! Errors to statuses: every [`RefreshError`] maps to one status and
//! [`ErrorKind`], and every error answer, including those axum and tower
//! produce themselves ([`json_errors`]), is `{"error": kind, "message": ...}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{MAX_BODY_BYTES, REQUEST_TIMEOUT};
use crate::api::{ErrorBody, ErrorKind};
use crate::refresh::RefreshError;

/// What a handler returns: its answer, or the error answer.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// An error response: `{"error": kind, "message": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Seconds for a `Retry-After` header, if the caller should come back.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An answer with this status, kind and message.
    pub(crate) fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: kind,
                message: message.into(),
            },
            retry_after: None,
        }
    }

    /// A 400 `bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BadRequest, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<RefreshError> for ApiError {
    fn from(e: RefreshError) -> Self {
        let (status, kind) = match &e {
            RefreshError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
            RefreshError::NeedsReauth { .. } => (StatusCode::CONFLICT, ErrorKind::NeedsReauth),
            RefreshError::Paused { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Paused),
            RefreshError::Unavailable { .. } | RefreshError::RetryLater { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable)
            }
            RefreshError::MinValidUnsatisfiable { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorKind::MinValidUnsatisfiable,
            ),
            RefreshError::UnknownProvider(_) => {
                (StatusCode::BAD_REQUEST, ErrorKind::UnknownProvider)
            }
            RefreshError::UnauthenticatedClient(_) => {
                (StatusCode::BAD_REQUEST, ErrorKind::BadRequest)
            }
            RefreshError::ExchangeFailed(_) | RefreshError::DeviceFailed(_) => {
                (StatusCode::BAD_GATEWAY, ErrorKind::ExchangeFailed)
            }
            RefreshError::NoDeviceEndpoint(_) => (StatusCode::BAD_REQUEST, ErrorKind::BadRequest),
            RefreshError::LoginNotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
            RefreshError::TooManyLogins | RefreshError::LoginReplaced(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable)
            }
            RefreshError::RevocationFailed { .. } => {
                (StatusCode::BAD_GATEWAY, ErrorKind::RevocationFailed)
            }
            RefreshError::NotDpop(_) => (StatusCode::BAD_REQUEST, ErrorKind::BadRequest),
            RefreshError::NotDpopToken(..) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable)
            }
            RefreshError::Dpop(e) if e.is_request() => {
                (StatusCode::BAD_REQUEST, ErrorKind::BadRequest)
            }
            RefreshError::Dpop(_) | RefreshError::Store(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal)
            }
            RefreshError::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::ShuttingDown)
            }
        };
        let mut err = ApiError::new(status, kind, format!("{e:#}"));
        if let RefreshError::RetryLater { retry_after, .. } = &e {
            // Whole seconds, rounded up, and at least one.
            err.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        }
        err
    }
}

/// Rewrites an error answer that is not already our JSON (axum's extractor
/// rejections, 405, tower's 408) into `{"error","message"}`, keeping its
/// status; a plain-text body becomes the message.
pub(crate) async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .unwrap_or_default();
    let text = lowercase_first(text.trim());
    let (kind, message) = match status {
        StatusCode::NOT_FOUND => (ErrorKind::NotFound, "no such endpoint; see README for the API".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorKind::MethodNotAllowed,
            "this endpoint does not take that method; see README for the API".to_string(),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            ErrorKind::Timeout,
            format!(
                "the request was not answered within {} s; retry, and see the daemon's log if it persists",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorKind::PayloadTooLarge,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        s if s.is_client_error() => (
            ErrorKind::BadRequest,
            if text.is_empty() { "malformed request; see README for the API".to_string() } else { text },
        ),
        _ => (ErrorKind::Internal, "internal error; see the daemon's log".to_string()),
    };
    let mut out = ApiError::new(status, kind, message).into_response();
    // 405 names the methods that would do.
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_lowercase().chain(chars).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn rewritten(resp: Response) -> (StatusCode, Option<String>, serde_json::Value) {
        let resp = json_errors(resp).await;
        let status = resp.status();
        let allow = resp
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        (
            status,
            allow,
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn layer_errors_become_the_documented_json() {
        // tower's timeout answers with an empty body.
        let (status, _, body) = rewritten(StatusCode::REQUEST_TIMEOUT.into_response()).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["error"], "timeout");
        assert!(body["message"].as_str().unwrap().contains("75 s"), "{body}");

        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET,HEAD"));
        let (status, allow, body) = rewritten(resp).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"], "method_not_allowed");
        assert_eq!(allow.as_deref(), Some("GET,HEAD"));

        let (status, _, body) =
            rewritten((StatusCode::BAD_REQUEST, "Failed to parse: x").into_response()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "bad_request");
        assert_eq!(body["message"], "failed to parse: x");

        let (_, _, body) = rewritten(StatusCode::INTERNAL_SERVER_ERROR.into_response()).await;
        assert_eq!(body["error"], "internal");
    }

    #[tokio::test]
    async fn successes_and_our_own_errors_pass_untouched() {
        let ours = ApiError::new(
            StatusCode::CONFLICT,
            ErrorKind::NeedsReauth,
            "add a new token",
        );
        let (status, _, body) = rewritten(ours.into_response()).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"], "needs_reauth");
        assert_eq!(body["message"], "add a new token");

        let token = json_errors("tok\n".into_response()).await;
        assert_eq!(token.status(), StatusCode::OK);
        let body = axum::body::to_bytes(token.into_body(), 64).await.unwrap();
        assert_eq!(&body[..], b"tok\n");
    }
}
