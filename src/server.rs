//! HTTP/1.1 + JSON over a Unix socket (axum routes served by hyper). Owns the
//! socket file: refuses to start over a live daemon, replaces a stale socket,
//! creates it with mode 0660 and removes it on drop. Maps every
//! [`RefreshError`] to one status.
//!
//! A slow or hostile client cannot starve the others: connections are
//! capped, request heads must arrive within [`HEADER_TIMEOUT`] and fit in
//! [`MAX_HEAD_BYTES`], bodies are capped at [`MAX_BODY_BYTES`], and a request
//! is answered (or cut with 408) within [`REQUEST_TIMEOUT`].
//!
//! Admin-only routes are authorized on the request head, before any body is
//! read, so a caller who may not change anything cannot hold a request open.
//! Every error answer, including those axum and tower produce themselves, is
//! `{"error": kind, "message": ...}` ([`json_errors`]).

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{
    DefaultBodyLimit, Extension, Path as UrlPath, Query, RawPathParams, Request, State,
};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Peer;
use crate::api::{CredentialStatus, ErrorBody, ExchangeCode, Health, PutCredential, TokenResponse};
use crate::event;
use crate::events::Kind;
use crate::fsguard;
use crate::refresh::{ExchangeRequest, NewCredential, RefreshError, RefresherHandle};
use crate::token::Secret;

/// Most connections served at once; further ones are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// A request head (line and headers) must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest time to answer one request (a token wait is bounded below this).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);
/// Longest access-token lifetime a client may state when adding a credential.
pub(crate) const MAX_EXPIRES_IN_SECS: u64 = 365 * 24 * 3600;

/// Errors setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another daemon answers on the socket.
    #[error("another tokend is already listening on {0}; stop it first or use another --socket")]
    AlreadyRunning(PathBuf),
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; remove it or choose another socket path")]
    NotASocket(PathBuf),
    /// The socket's directory could be written by another user, who could
    /// then put a socket of their own in its place.
    #[error("refusing the socket {path}: {reason}")]
    Unsafe {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with its directory.
        reason: fsguard::UnsafeFile,
    },
    /// Binding failed.
    #[error("cannot listen on {path}: {reason}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: io::Error,
    },
}

/// Removes the socket file when dropped.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the API socket at `path` with mode 0660 and, if given, group `gid`
/// (the readers' group). Its directory must be owned by root or this user
/// and not writable by every user ([`fsguard::check_private_dir`]), so no
/// one else can put their own socket in its place. A missing directory is
/// created with mode 0700, or 0750 and group `gid` so the group's members
/// can reach the socket.
pub async fn bind(
    path: &Path,
    gid: Option<u32>,
) -> Result<(UnixListener, SocketFile), ServerError> {
    let bind_err = |reason| ServerError::Bind {
        path: path.to_path_buf(),
        reason,
    };
    let dir = fsguard::parent_dir(path);
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(if gid.is_some() { 0o750 } else { 0o700 })
            .create(dir)
            .map_err(bind_err)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(bind_err)?;
        }
    }
    fsguard::check_private_dir(dir).map_err(|reason| ServerError::Unsafe {
        path: path.to_path_buf(),
        reason,
    })?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket(path.to_path_buf()))
        }
        Ok(_) => match tokio::net::UnixStream::connect(path).await {
            Ok(_) => return Err(ServerError::AlreadyRunning(path.to_path_buf())),
            Err(_) => {
                tracing::info!(socket = %path.display(), "removing stale socket file");
                std::fs::remove_file(path).map_err(bind_err)?;
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    let guard = SocketFile {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_err)?;
    }
    Ok((listener, guard))
}

/// The API router.
pub fn router(handle: RefresherHandle) -> Router {
    let admin = |what: &'static str, route: MethodRouter<RefresherHandle>| {
        route.route_layer(middleware::from_fn_with_state(
            AdminGate {
                handle: handle.clone(),
                what,
            },
            require_admin,
        ))
    };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tokens/{name}", get(get_token))
        .route("/v1/credentials", get(list_credentials))
        .route(
            "/v1/credentials/{name}",
            get(get_credential)
                .merge(admin("add credentials", put(put_credential)))
                .merge(admin("remove credentials", delete(delete_credential))),
        )
        .route(
            "/v1/credentials/{name}/exchange",
            admin("add credentials", post(exchange)),
        )
        .route(
            "/v1/credentials/{name}/refresh",
            admin("refresh credentials", post(refresh)),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see README for the API",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::map_response(json_errors))
        .with_state(handle)
}

/// What an admin-only route does, for [`require_admin`]'s refusal.
#[derive(Clone)]
struct AdminGate {
    handle: RefresherHandle,
    what: &'static str,
}

/// Refuses a caller who is not an administrator before the handler runs,
/// and so before the request body is read.
async fn require_admin(
    State(gate): State<AdminGate>,
    Extension(peer): Caller,
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let name = params.ok().and_then(|p| {
        p.iter()
            .find(|(key, _)| *key == "name")
            .map(|(_, value)| value.to_string())
    });
    match authorize_admin(&gate.handle, &peer, gate.what, name.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Rewrites an error answer that is not already our JSON (axum's extractor
/// rejections, 405, tower's 408) into `{"error","message"}`, keeping its
/// status; a plain-text body becomes the message.
async fn json_errors(resp: Response) -> Response {
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
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint; see README for the API".to_string()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take that method; see README for the API".to_string(),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "timeout",
            format!(
                "the request was not answered within {} s; retry, and see the daemon's log if it persists",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ),
        s if s.is_client_error() => (
            "bad_request",
            if text.is_empty() { "malformed request; see README for the API".to_string() } else { text },
        ),
        _ => ("internal", "internal error; see the daemon's log".to_string()),
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

/// Serves `router` on `listener` until `cancel` fires, then lets open
/// requests finish (briefly) and returns. At most `max_connections` are
/// served at once (at most [`MAX_CONNECTIONS`], and below the descriptor
/// limit).
pub async fn serve(
    listener: UnixListener,
    router: Router,
    cancel: CancellationToken,
    max_connections: usize,
) {
    use crate::events::{limit, Noisy, Verdict};
    let slots = Arc::new(Semaphore::new(max_connections));
    // One uid may not hold every slot: the others must still be served.
    let per_uid = crate::uidcap::PerUidCap::new(
        crate::uidcap::per_uid_limit(max_connections),
        &[0, nix::unistd::geteuid().as_raw()],
    );
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
        // Who is calling, from the kernel: every handler authorizes on it.
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(tokend_error = %e, "cannot read the peer's credentials; closing the connection");
                continue;
            }
        };
        // Per uid first, so a uid at its cap takes no global slot.
        let Some(uid_slot) = per_uid.try_acquire(cred.uid()) else {
            if let Verdict::Log { suppressed } = limit(Noisy::UidCap, cred.uid()) {
                tracing::warn!(
                    tokend_peer_uid = cred.uid(),
                    max = per_uid.limit(),
                    tokend_suppressed = suppressed,
                    "too many open API connections from one uid; closing a new one"
                );
            }
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if let Verdict::Log { suppressed } = limit(Noisy::ConnectionCap, 0) {
                tracing::warn!(
                    max = max_connections,
                    tokend_suppressed = suppressed,
                    "too many open API connections; closing a new one"
                );
            }
            continue;
        };
        let peer = Arc::new(Peer::from_cred(cred));
        let service = TowerToHyperService::new(router.clone().layer(Extension(peer)));
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slots = (slot, uid_slot);
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
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(Duration::from_secs(3), connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open API connections were cut at shutdown");
    }
}

/// An error response: `{"error": kind, "message": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Seconds for a `Retry-After` header, if the caller should come back.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: kind.to_string(),
                message: message.into(),
            },
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
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
            RefreshError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RefreshError::NeedsReauth { .. } => (StatusCode::CONFLICT, "needs_reauth"),
            RefreshError::Paused { .. } => (StatusCode::SERVICE_UNAVAILABLE, "paused"),
            RefreshError::Unavailable { .. } | RefreshError::RetryLater { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            RefreshError::MinValidUnsatisfiable { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "min_valid_unsatisfiable")
            }
            RefreshError::UnknownProvider(_) => (StatusCode::BAD_REQUEST, "unknown_provider"),
            RefreshError::ExchangeFailed(_) => (StatusCode::BAD_GATEWAY, "exchange_failed"),
            RefreshError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            RefreshError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        let mut err = ApiError::new(status, kind, format!("{e:#}"));
        if let RefreshError::RetryLater { retry_after, .. } = &e {
            // Whole seconds, rounded up, and at least one.
            err.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
        }
        err
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller, attached to every request by [`serve`].
type Caller = Extension<Arc<Peer>>;

fn forbidden(peer: &Peer, what: &str, credential: Option<&str>, message: String) -> ApiError {
    // Any socket user can be refused at will: log at a bounded rate per uid.
    let verdict = crate::events::limit(crate::events::Noisy::AccessDenied, peer.uid);
    if let crate::events::Verdict::Log { suppressed } = verdict {
        event!(
            warn,
            Kind::AccessDenied,
            tokend_credential = credential.unwrap_or("-"),
            tokend_peer_uid = peer.uid,
            tokend_peer_pid = peer.pid.unwrap_or(0),
            tokend_peer_unit = peer.unit.as_ref().map_or("-".into(), |u| u.rule()),
            tokend_operation = what,
            tokend_suppressed = suppressed,
            tokend_reason = %message,
            "access denied"
        );
    }
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The caller may read this credential's token or state. To anyone but an
/// administrator, a credential they may not read answers exactly as a
/// missing one, so names cannot be probed; the denial is still logged.
fn authorize_read(h: &RefresherHandle, peer: &Peer, name: &str) -> ApiResult<()> {
    let policy = h.policy();
    let hidden = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no credential named `{name}` that you may read"),
        )
    };
    let Some(view) = h.view(name) else {
        return Err(if policy.is_admin(peer) {
            RefreshError::NotFound(name.to_string()).into()
        } else {
            hidden()
        });
    };
    policy.may_read(peer, &view.readers).map_err(|m| {
        // Logs the denial; the caller gets the missing credential's answer.
        let _logged = forbidden(peer, "read", Some(name), m);
        hidden()
    })
}

/// The caller may change credentials or see all of them.
fn authorize_admin(
    h: &RefresherHandle,
    peer: &Peer,
    what: &str,
    name: Option<&str>,
) -> ApiResult<()> {
    let policy = h.policy();
    if policy.is_admin(peer) {
        return Ok(());
    }
    let group = policy.admin_gid.map_or(String::new(), |g| {
        format!(", members of group {g} (admin_group)")
    });
    Err(forbidden(
        peer,
        what,
        name,
        format!(
            "{} may not {what}: only root, the daemon's uid {}{group} may",
            peer.describe(),
            policy.daemon_uid
        ),
    ))
}

async fn health(State(h): State<RefresherHandle>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        credentials: h.len(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

#[derive(Deserialize)]
struct TokenQuery {
    min_valid: Option<u64>,
}

async fn get_token(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize_read(&h, &peer, &name)?;
    let view = h
        .token(&name, Duration::from_secs(q.min_valid.unwrap_or(0)))
        .await?;
    let token = TokenResponse::from_view(&view).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no token held",
        )
    })?;
    if wants_text(&headers) {
        let mut resp = format!("{}\n", token.access_token).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(resp);
    }
    Ok(Json(token).into_response())
}

/// `Accept: text/plain` (without JSON also being acceptable) asks for the bare token.
fn wants_text(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("text/plain") && !accept.contains("application/json")
}

/// Administrators see every credential; anyone else those they may read.
async fn list_credentials(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
) -> Json<Vec<CredentialStatus>> {
    let policy = h.policy();
    Json(
        h.list()
            .iter()
            .filter(|v| policy.may_read(&peer, &v.readers).is_ok())
            .map(|v| CredentialStatus::from(&**v))
            .collect(),
    )
}

async fn get_credential(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<CredentialStatus>> {
    authorize_read(&h, &peer, &name)?;
    let view = h.view(&name).ok_or(RefreshError::NotFound(name))?;
    Ok(Json(CredentialStatus::from(&*view)))
}

fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Credential names become path segments, log fields and CLI arguments.
fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "credential names are 1-128 characters of letters, digits, '-', '_', '.' and '@'",
        ))
    }
}

/// Admin-only: behind [`require_admin`].
async fn put_credential(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CredentialStatus>)> {
    check_name(&name)?;
    let req: PutCredential = parse_body(&body)?;
    if req.refresh_token.trim().is_empty() {
        return Err(ApiError::bad_request("refresh_token is empty"));
    }
    let access_token = match (req.access_token, req.expires_in) {
        (Some(_), Some(secs)) if secs > MAX_EXPIRES_IN_SECS => {
            return Err(ApiError::bad_request(format!(
                "expires_in must be at most {MAX_EXPIRES_IN_SECS} seconds (one year)"
            )))
        }
        (Some(t), Some(secs)) => Some((Secret::new(t), secs)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give access_token and expires_in together",
            ))
        }
    };
    let view = h
        .put(NewCredential {
            name,
            provider: req.provider,
            refresh_token: Secret::new(req.refresh_token.trim()),
            access_token,
            scope: req.scope,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CredentialStatus::from(&*view))))
}

/// Admin-only: behind [`require_admin`].
async fn exchange(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<CredentialStatus>)> {
    check_name(&name)?;
    let req: ExchangeCode = parse_body(&body)?;
    let view = h
        .exchange(ExchangeRequest {
            name,
            provider: req.provider,
            code: Secret::new(req.code),
            redirect_uri: req.redirect_uri,
            code_verifier: req.code_verifier.map(Secret::new),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CredentialStatus::from(&*view))))
}

/// Admin-only: behind [`require_admin`].
async fn refresh(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<CredentialStatus>> {
    let view = h.refresh_now(&name).await?;
    Ok(Json(CredentialStatus::from(&*view)))
}

/// Admin-only: behind [`require_admin`].
async fn delete_credential(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    h.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
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
        let ours = ApiError::new(StatusCode::CONFLICT, "needs_reauth", "add a new token");
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
