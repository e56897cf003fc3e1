//! The routes and their handlers. Every handler except `/v1/health` checks
//! the caller against `access::Policy` before it looks at anything else:
//! admin-only routes in a route layer ([`require_admin`]), before the body
//! is read, so a caller who may not change anything cannot hold a request
//! open; read handlers with [`authorize_read`], so an unreadable credential
//! answers as a missing one to non-admins.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{
    DefaultBodyLimit, Extension, MatchedPath, Path as UrlPath, Query, RawPathParams, Request, State,
};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

use super::convert::{credential_status, login_status, token_response};
use super::error::{json_errors, ApiError, ApiResult};
use super::token_read::{read_token, TokenForm, TokenRead};
use super::{MAX_BODY_BYTES, MAX_EXPIRES_IN_SECS, REQUEST_TIMEOUT};
use crate::access::Peer;
use crate::api::{
    AuthorizeQuery, AuthorizeUrl, CredentialStatus, DpopQuery, DpopTokenResponse, ErrorKind,
    ExchangeCode, GitCredential, GitCredentialQuery, GrantType, Health, HealthStatus,
    LoginSettings, LoginStatus, PutCredential, RemoveQuery, Removed, StartDeviceLogin, TokenQuery,
};
use crate::config::ProviderConfig;
use crate::credential::CredentialGrant;
use crate::event;
use crate::events::Kind;
use crate::provider::{
    authorization_url, dpop, AuthorizationRequest, AuthorizeError, RESERVED_PARAMS,
};
use crate::refresh::{
    DeviceLoginRequest, ExchangeRequest, NewCredential, RefreshError, RefresherHandle,
    RemoveOptions,
};
use crate::token::Secret;

/// The caller, attached to every request by `serve`.
type Caller = Extension<Arc<Peer>>;

/// The token read's route; `super::fast_read` answers most of them before
/// the router and counts them under this template too.
pub(super) const TOKEN_ROUTE: &str = "/v1/tokens/{name}";

/// The API router.
pub(crate) fn router(handle: RefresherHandle) -> Router {
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
        .route(TOKEN_ROUTE, get(get_token))
        .route("/v1/tokens/{name}/dpop", get(get_dpop_token))
        .route("/v1/tokens/{name}/watch", get(super::watch::watch_token))
        .route("/v1/git-credential", get(get_git_credential))
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
        .route(
            "/v1/providers/{name}/login",
            admin("log in", get(login_settings)),
        )
        .route(
            "/v1/providers/{name}/authorize",
            admin("log in", get(authorize)),
        )
        .route(
            "/v1/credentials/{name}/device",
            admin("add credentials", post(start_device_login)),
        )
        .route("/v1/logins", get(list_logins))
        .route("/metrics", admin("read metrics", get(metrics)))
        .route(
            "/v1/logins/{name}",
            admin("see device logins", get(get_login))
                .merge(admin("cancel device logins", delete(cancel_login))),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorKind::NotFound,
                "no such endpoint; see README for the API",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Times the answer's head only, not its body: a watch stream, whose
        // head goes out at once, is not cut.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::map_response(respond))
        .with_state(handle)
}

/// Every response on its way out: errors as JSON, then counted by route
/// template (never the raw path, which holds names) and status. One layer
/// for both, so a token read pays for one boxed future, not two.
async fn respond(matched: Option<MatchedPath>, resp: Response) -> Response {
    let resp = json_errors(resp).await;
    crate::metrics::socket_request(
        matched.as_ref().map(MatchedPath::as_str),
        resp.status().as_u16(),
    );
    resp
}

/// `GET /metrics`: the Prometheus page. Administrators only: it names every
/// credential and its state.
async fn metrics(State(h): State<RefresherHandle>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        h.metrics(format, crate::metrics::Audience::Administrators),
    )
        .into_response()
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
            tokend_peer_unit = peer.unit().map_or("-".into(), |u| u.rule()),
            tokend_operation = what,
            tokend_suppressed = suppressed,
            tokend_reason = %message,
            "access denied"
        );
    }
    ApiError::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
}

/// The caller may read this credential's token or state. To anyone but an
/// administrator, a credential they may not read answers exactly as a
/// missing one, so names cannot be probed; the denial is still logged.
pub(super) fn authorize_read(
    h: &RefresherHandle,
    peer: &Peer,
    name: &str,
) -> ApiResult<Arc<crate::refresh::View>> {
    let policy = h.policy();
    let hidden = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
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
    match policy.may_read(peer, &view.readers) {
        Ok(()) => Ok(view),
        Err(m) => {
            // Logs the denial; the caller gets the missing credential's answer.
            let _logged = forbidden(peer, "read", Some(name), m);
            Err(hidden())
        }
    }
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

/// The token answer for a view the refresher handed out as current; 503
/// if it holds none after all.
pub(super) fn held_token(view: &crate::refresh::View) -> ApiResult<crate::api::TokenResponse> {
    token_response(view).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unavailable,
            "no token held",
        )
    })
}

async fn health(State(h): State<RefresherHandle>) -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
        credentials: h.len(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn get_token(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let read = TokenRead {
        min_valid: Duration::from_secs(q.min_valid.unwrap_or(0)),
        form: TokenForm::of(&headers),
    };
    read_token(&h, &peer, &name, read).await
}

/// The credential mapped to a git host, read as [`get_token`] reads it. A
/// mapped host the caller may not read answers as an unmapped one, so the
/// mapping tells a non-reader nothing.
async fn get_git_credential(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
    Query(q): Query<GitCredentialQuery>,
) -> ApiResult<Json<GitCredential>> {
    let unmapped = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            format!(
                "no credential that you may read is mapped to git host `{}`; add it to git_hosts of a [credentials.NAME] table",
                q.host.escape_debug()
            ),
        )
    };
    let mapping = h
        .git_host(&q.host, q.path.as_deref())
        .ok_or_else(unmapped)?;
    authorize_read(&h, &peer, &mapping.credential).map_err(|_| unmapped())?;
    let view = h
        .token(
            &mapping.credential,
            Duration::from_secs(q.min_valid.unwrap_or(0)),
        )
        .await?;
    let token = held_token(&view)?;
    Ok(Json(GitCredential {
        username: mapping.username,
        token,
    }))
}

/// A token and a DPoP proof for one request of the caller's (same access
/// rule as a token read). Signing costs the daemon a database read and an
/// ECDSA signature; a caller asking for proofs in a loop is held to its
/// connections by the per-uid connection cap, like any other request.
async fn get_dpop_token(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<DpopQuery>,
) -> ApiResult<Json<DpopTokenResponse>> {
    authorize_read(&h, &peer, &name)?;
    let htm = dpop::Htm::parse(&q.htm).map_err(RefreshError::from)?;
    let htu = dpop::htu(&q.htu).map_err(RefreshError::from)?;
    if let Some(nonce) = &q.nonce {
        dpop::check_nonce(nonce).map_err(RefreshError::from)?;
    }
    let key = h.dpop_key(&name).await?;
    let view = h
        .token(&name, Duration::from_secs(q.min_valid.unwrap_or(0)))
        .await?;
    let token = held_token(&view)?;
    if !token.token_type.eq_ignore_ascii_case(dpop::TOKEN_TYPE) {
        return Err(RefreshError::NotDpopToken(name, token.token_type).into());
    }
    let what = dpop::ProofFor {
        htm: &htm,
        htu: &htu,
        nonce: q.nonce.as_deref(),
        access_token: Some(&token.access_token),
    };
    let proof = dpop::proof(&key, what, &dpop::Stamp::now()).map_err(RefreshError::from)?;
    Ok(Json(DpopTokenResponse { token, dpop: proof }))
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
            .map(|v| credential_status(v))
            .collect(),
    )
}

async fn get_credential(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<CredentialStatus>> {
    let view = authorize_read(&h, &peer, &name)?;
    Ok(Json(credential_status(&view)))
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

/// The grant of a `PUT` and its refresh token, which only the
/// `refresh_token` grant has.
fn put_grant(req: &PutCredential) -> ApiResult<(CredentialGrant, Option<Secret>)> {
    let token = req.refresh_token.trim();
    match req.grant {
        GrantType::RefreshToken if token.is_empty() => {
            Err(ApiError::bad_request("refresh_token is empty"))
        }
        GrantType::RefreshToken if !req.params.is_empty() => Err(ApiError::bad_request(
            "params are for the client_credentials grant only",
        )),
        GrantType::RefreshToken => Ok((CredentialGrant::RefreshToken, Some(Secret::new(token)))),
        GrantType::ClientCredentials if !token.is_empty() => Err(ApiError::bad_request(
            "a client_credentials credential has no refresh token; leave refresh_token out",
        )),
        GrantType::ClientCredentials if req.access_token.is_some() => Err(ApiError::bad_request(
            "a client_credentials credential acquires its own access token; leave access_token out",
        )),
        GrantType::ClientCredentials => {
            if let Some(k) = req
                .params
                .keys()
                .find(|k| RESERVED_PARAMS.contains(&k.as_str()))
            {
                return Err(ApiError::bad_request(format!(
                    "params.{k}: tokend sends this field itself; leave it out (scope has its own key)"
                )));
            }
            Ok((
                CredentialGrant::ClientCredentials {
                    scope: req.scope.clone(),
                    params: req.params.clone().into_iter().collect(),
                },
                None,
            ))
        }
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
    let (grant, refresh_token) = put_grant(&req)?;
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
            grant,
            refresh_token,
            access_token,
            scope: req.scope,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(credential_status(&view))))
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
    Ok((StatusCode::CREATED, Json(credential_status(&view))))
}

/// Admin-only: behind [`require_admin`].
async fn refresh(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<CredentialStatus>> {
    let view = h.refresh_now(&name).await?;
    Ok(Json(credential_status(&view)))
}

/// Admin-only: behind [`require_admin`].
async fn delete_credential(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<Json<Removed>> {
    let opts = RemoveOptions {
        revoke: q.revoke.unwrap_or(false),
        force: q.force.unwrap_or(false),
    };
    Ok(Json(h.remove_with(&name, opts).await?))
}

/// A provider one may log in to: configured, with an authorization endpoint.
fn login_provider(h: &RefresherHandle, name: &str) -> ApiResult<Arc<ProviderConfig>> {
    let provider = h.provider(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            format!("no provider named `{name}` in the configuration"),
        )
    })?;
    if provider.endpoint.authorization_url.is_none() {
        return Err(ApiError::bad_request(
            AuthorizeError::NoAuthorizationUrl(name.to_string()).to_string(),
        ));
    }
    Ok(provider)
}

/// Admin-only: behind [`require_admin`].
async fn login_settings(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<LoginSettings>> {
    let provider = login_provider(&h, &name)?;
    let redirect = &provider.endpoint.login.redirect;
    Ok(Json(LoginSettings {
        provider: name,
        redirect_host: redirect.host.as_str().to_string(),
        redirect_port: redirect.port,
        redirect_path: redirect.path.clone(),
        issuer: provider.endpoint.issuer.clone(),
    }))
}

/// Admin-only: behind [`require_admin`].
async fn authorize(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<AuthorizeQuery>,
) -> ApiResult<Json<AuthorizeUrl>> {
    let provider = login_provider(&h, &name)?;
    let req = AuthorizationRequest {
        redirect_uri: &q.redirect_uri,
        state: &q.state,
        code_challenge: &q.code_challenge,
    };
    let url = authorization_url(&provider.endpoint, &req)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(AuthorizeUrl { url: url.into() }))
}

/// Admin-only: behind [`require_admin`]. Answers once the provider gave
/// the codes; the daemon then polls on its own.
async fn start_device_login(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<LoginStatus>)> {
    check_name(&name)?;
    let req: StartDeviceLogin = parse_body(&body)?;
    let login = h
        .device_login(DeviceLoginRequest {
            name,
            provider: req.provider,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(login_status(&login))))
}

/// Device logins are an administrator's: anyone else sees none, as a
/// credential list shows only what its caller may read (so `tokend status`
/// by any user asks without being refused and logged).
async fn list_logins(
    State(h): State<RefresherHandle>,
    Extension(peer): Caller,
) -> Json<Vec<LoginStatus>> {
    if !h.policy().is_admin(&peer) {
        return Json(Vec::new());
    }
    Json(h.logins().list().iter().map(login_status).collect())
}

/// Admin-only: behind [`require_admin`].
async fn get_login(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<LoginStatus>> {
    let login = h
        .logins()
        .get(&name)
        .ok_or(RefreshError::LoginNotFound(name))?;
    Ok(Json(login_status(&login)))
}

/// Admin-only: behind [`require_admin`]. The poller stops; a credential it
/// already stored stays.
async fn cancel_login(
    State(h): State<RefresherHandle>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    if h.logins().cancel(&name) {
        tracing::info!(tokend_credential = %name, "device login cancelled");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(RefreshError::LoginNotFound(name).into())
    }
}
