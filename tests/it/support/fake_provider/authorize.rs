//! The authorization endpoint (RFC 6749 §4.1.1, RFC 7636 §4.3, loopback
//! redirects of RFC 8252 §7.3), as strict as the token endpoint: `GET
//! /authorize` checks the request and shows a login form; `POST /authorize`
//! takes the form and, for the right password, sends the browser back to
//! the redirect URI with a code bound to that URI and the S256 challenge
//! (the token endpoint's exchange then checks both); "deny" sends it back
//! with `error=access_denied`. A request that breaks the RFC is refused with
//! a 400 page (never redirected, §4.1.2.1) and recorded in `rejections`.

use super::*;

/// The authorization endpoint's path.
pub(super) const AUTHORIZE_PATH: &str = "/authorize";
/// The user the login form accepts.
const LOGIN_USER: &str = "user-1";
/// Their password.
const LOGIN_PASSWORD: &str = "correct horse";

/// An authorization request waiting for its login form.
#[derive(Debug, Clone)]
struct Pending {
    redirect_uri: String,
    challenge: String,
    state: String,
}

/// The authorization endpoint's share of the fake's state.
#[derive(Debug, Default)]
pub(super) struct AuthorizeState {
    /// Requests shown a form, by the form's hidden id.
    pending: HashMap<String, Pending>,
    /// Every well-formed authorization request's query, in order.
    requests: Vec<Vec<(String, String)>>,
    /// `iss` added to redirects (RFC 9207), if set.
    issuer: Option<String>,
    /// Failed password attempts.
    wrong_passwords: usize,
}

impl FakeProvider {
    /// The `{authorization_url}` of this fake.
    pub fn authorization_url(&self) -> String {
        format!("{}{AUTHORIZE_PATH}", self.base_url())
    }

    /// The user name and password the login form accepts.
    pub fn login_credentials(&self) -> (&'static str, &'static str) {
        (LOGIN_USER, LOGIN_PASSWORD)
    }

    /// The query of every well-formed authorization request so far.
    pub fn authorize_requests(&self) -> Vec<Vec<(String, String)>> {
        self.inner.lock().authorize.requests.clone()
    }

    /// Makes redirects carry `iss` (RFC 9207).
    pub fn set_redirect_issuer(&self, issuer: Option<&str>) {
        self.inner.lock().authorize.issuer = issuer.map(str::to_string);
    }

    /// How many times the login form got a wrong password.
    pub fn wrong_passwords(&self) -> usize {
        self.inner.lock().authorize.wrong_passwords
    }
}

/// Whether `uri` is a loopback redirect URI (RFC 8252 §7.3): `http`, a
/// loopback host, an explicit port, no fragment.
fn loopback_redirect(uri: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    let loopback = matches!(
        url.host(),
        Some(url::Host::Ipv4(ip)) if ip.is_loopback()
    ) || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        || url.host_str() == Some("localhost");
    url.scheme() == "http" && loopback && url.port().is_some() && url.fragment().is_none()
}

/// An HTML page.
fn html(status: StatusCode, body: &str) -> Response<RespBody> {
    response(
        status,
        "text/html; charset=utf-8",
        RespBody::full(format!("<!doctype html><html><body>{body}</body></html>").into_bytes()),
    )
}

/// The login form for request `id`.
fn form(id: &str, note: &str) -> Response<RespBody> {
    html(
        StatusCode::OK,
        &format!(
            "<p>{note}</p><form method=\"post\" action=\"{AUTHORIZE_PATH}\">\
             <input type=\"hidden\" name=\"request\" value=\"{id}\">\
             <input name=\"username\"><input type=\"password\" name=\"password\">\
             <button name=\"action\" value=\"login\">Log in</button>\
             <button name=\"action\" value=\"deny\">Deny</button></form>"
        ),
    )
}

/// A 302 to `redirect_uri` with `params` added to its query.
fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> Response<RespBody> {
    let mut url = match url::Url::parse(redirect_uri) {
        Ok(url) => url,
        Err(_) => return html(StatusCode::BAD_REQUEST, "bad redirect_uri"),
    };
    url.query_pairs_mut().extend_pairs(params);
    let mut r = response(
        StatusCode::FOUND,
        "text/plain",
        RespBody::full(Bytes::new()),
    );
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

impl Inner {
    /// Serves `AUTHORIZE_PATH`.
    pub(super) fn authorize(
        &self,
        parts: &Parts,
        body: Result<Bytes, String>,
    ) -> Response<RespBody> {
        let result = match parts.method {
            Method::GET => self.authorization_request(parts.uri.query().unwrap_or("")),
            Method::POST => body
                .map_err(|e| e.to_string())
                .and_then(|b| self.login_form(&parts.headers, &b)),
            _ => Err(format!(
                "method {} not allowed on {AUTHORIZE_PATH}",
                parts.method
            )),
        };
        result.unwrap_or_else(|problem| {
            let line = format!(
                "[{}] {} {AUTHORIZE_PATH}: {problem}",
                self.cfg.flavor, parts.method
            );
            self.lock().rejections.push(line);
            html(StatusCode::BAD_REQUEST, "invalid authorization request")
        })
    }

    /// `GET /authorize?...`: the request checked, a form shown.
    fn authorization_request(&self, query: &str) -> Result<Response<RespBody>, String> {
        let mut q: Vec<(String, String)> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if q.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("parameter {k} sent more than once (RFC 6749 §3.1)"));
            }
            q.push((k.into_owned(), v.into_owned()));
        }
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("client_id").as_deref() != Some(self.cfg.client_id.as_str()) {
            return Err("client_id missing or unknown".into());
        }
        let redirect_uri = get("redirect_uri").ok_or("redirect_uri missing")?;
        if !loopback_redirect(&redirect_uri) {
            return Err(format!(
                "redirect_uri {redirect_uri:?} is not http://LOOPBACK:PORT/... (RFC 8252 §7.3)"
            ));
        }
        if get("response_type").as_deref() != Some("code") {
            return Err("response_type must be code".into());
        }
        if get("code_challenge_method").as_deref() != Some("S256") {
            return Err("code_challenge_method must be S256".into());
        }
        let challenge = get("code_challenge").ok_or("code_challenge missing")?;
        if !valid_verifier(&challenge) {
            return Err("code_challenge is not 43-128 characters of [A-Za-z0-9-._~]".into());
        }
        let state = get("state")
            .filter(|s| !s.is_empty())
            .ok_or("state missing")?;
        let id = random_alnum(24);
        let mut st = self.lock();
        st.authorize.requests.push(q);
        st.authorize.pending.insert(
            id.clone(),
            Pending {
                redirect_uri,
                challenge,
                state,
            },
        );
        Ok(form(&id, "Log in to the fake provider"))
    }

    /// `POST /authorize`: the login form, answered with a redirect.
    fn login_form(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response<RespBody>, String> {
        require_media_type(headers, "application/x-www-form-urlencoded")
            .map_err(|_| "the login form is not form-encoded".to_string())?;
        let form_fields = parse_form(body)?;
        let f: HashMap<&str, &str> = form_fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let id = f.get("request").copied().unwrap_or_default();
        let mut st = self.lock();
        let Some(p) = st.authorize.pending.get(id).cloned() else {
            return Err("unknown or spent login form".into());
        };
        let issuer = st.authorize.issuer.clone();
        let mut params = vec![("state", p.state.as_str())];
        params.extend(issuer.as_deref().map(|i| ("iss", i)));
        match f.get("action").copied() {
            Some("deny") => {
                st.authorize.pending.remove(id);
                params.insert(0, ("error", "access_denied"));
                params.insert(1, ("error_description", "The user denied the request."));
                Ok(redirect(&p.redirect_uri, &params))
            }
            Some("login")
                if f.get("username") == Some(&LOGIN_USER)
                    && f.get("password") == Some(&LOGIN_PASSWORD) =>
            {
                st.authorize.pending.remove(id);
                drop(st);
                let code = self.issue_code("code-", &p.redirect_uri, Some(&p.challenge), true);
                params.insert(0, ("code", code.as_str()));
                Ok(redirect(&p.redirect_uri, &params))
            }
            Some("login") => {
                st.authorize.wrong_passwords += 1;
                Ok(form(id, "Wrong user name or password"))
            }
            _ => Err("the login form has no action".into()),
        }
    }
}
