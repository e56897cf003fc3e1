//! The fake's revocation endpoint, strict to RFC 7009: `POST /revoke` with
//! a form body, the flavour's client authentication, `token` required and
//! `token_type_hint` optional (`refresh_token` or `access_token`), nothing
//! else. It answers 200 even for a token it does not know (§2.2). A revoked
//! refresh token is dead, with every token of its family (§2.1: revoking a
//! refresh token ends the grant); a revoked access token is forgotten.

use super::*;

/// Where the revocation endpoint is.
pub(super) const REVOKE_PATH: &str = "/revoke";

/// What the revocation endpoint has seen and how it answers.
#[derive(Debug, Default)]
pub(super) struct RevocationState {
    /// Answer every revocation with this status instead (a broken server).
    pub(super) fail_with: Option<u16>,
    /// Successful revocations: the hint sent and whether the token was known.
    pub(super) done: Vec<(Option<String>, bool)>,
}

impl Inner {
    /// Handles `POST /revoke`.
    pub(super) fn revoke(&self, parts: &Parts, body: Result<Bytes, String>) -> Response<RespBody> {
        match self.check_revocation(parts, body) {
            Ok(r) => r,
            Err(r) => {
                if let Some(problem) = &r.record {
                    let line = format!("[revoke] {} {}: {problem}", parts.method, parts.uri.path());
                    self.lock().rejections.push(line);
                }
                error_response(r)
            }
        }
    }

    fn check_revocation(
        &self,
        parts: &Parts,
        body: Result<Bytes, String>,
    ) -> Result<Response<RespBody>, Reject> {
        if parts.method != Method::POST {
            return Err(Reject::wire(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                format!("method {} not allowed; revocation takes POST", parts.method),
            ));
        }
        if parts.uri.query().is_some() {
            return Err(Reject::invalid_request(
                "query string on the revocation endpoint; parameters belong in the body",
            ));
        }
        if let Some(status) = self.lock().revocation.fail_with {
            return Ok(json_response(
                status_code(status),
                &json!({"error": "temporarily_unavailable"}),
            ));
        }
        let body = body.map_err(Reject::invalid_request)?;
        let headers = &parts.headers;
        require_media_type(headers, "application/x-www-form-urlencoded")?;
        let form = parse_form(&body).map_err(Reject::invalid_request)?;
        let auth_fields: &[&str] = match self.cfg.flavor {
            Flavor::Didit | Flavor::DigiRunner | Flavor::DigiRunnerPublic => {
                self.check_basic(headers)?;
                &[]
            }
            Flavor::Bakrypt => {
                forbid_authorization(headers, "client credentials go in the body")?;
                self.body_client(&form)?;
                &["client_id", "client_secret"]
            }
            Flavor::Partner => {
                return Err(Reject::wire(
                    StatusCode::NOT_FOUND,
                    "invalid_request",
                    "this flavour has no revocation endpoint",
                ))
            }
        };
        let mut required = vec!["token"];
        required.extend_from_slice(auth_fields);
        let f = exact_fields(&form, &required, &["token_type_hint"])?;
        let token = non_empty(&f, "token")?;
        let hint = f.get("token_type_hint").map(|h| h.to_string());
        if let Some(h) = hint.as_deref() {
            if h != "refresh_token" && h != "access_token" {
                return Err(Reject::wire(
                    StatusCode::BAD_REQUEST,
                    "unsupported_token_type",
                    format!("token_type_hint {h:?} is neither refresh_token nor access_token"),
                ));
            }
        }
        let mut st = self.lock();
        let family = st.refresh_tokens.get(&token).map(|e| e.family);
        let known = if let Some(family) = family {
            for e in st.refresh_tokens.values_mut() {
                if e.family == family {
                    e.grace_until = None;
                    if e.state == RtState::Valid {
                        e.state = RtState::Revoked;
                    }
                }
            }
            true
        } else {
            st.access_tokens.remove(&token).is_some()
        };
        st.revocation.done.push((hint, known));
        Ok(response(
            StatusCode::OK,
            "application/json",
            RespBody::full(Bytes::new()),
        ))
    }
}

impl FakeProvider {
    /// `http://127.0.0.1:PORT/revoke`.
    pub fn revocation_url(&self) -> String {
        format!("{}{REVOKE_PATH}", self.base_url())
    }

    /// Answers every revocation with `status` (e.g. 503), or normally again
    /// with `None`.
    pub fn fail_revocations(&self, status: Option<u16>) {
        self.inner.lock().revocation.fail_with = status;
    }

    /// Successful revocations so far: the `token_type_hint` sent and whether
    /// the token was one the fake had issued.
    pub fn revocations(&self) -> Vec<(Option<String>, bool)> {
        self.inner.lock().revocation.done.clone()
    }
}
