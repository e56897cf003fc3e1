//! The strict wire checks: path, method, content type, client
//! authentication, headers and the exact set of body fields of each
//! flavour, every difference refused the way the real provider refuses it
//! (and recorded as a rejection). Parsing never panics: every failure
//! becomes a 400.

use super::*;

impl Inner {
    /// Handles a token-path request with no fault: check the wire format,
    /// perform the grant, render the answer, record any rejection.
    pub(super) fn process(&self, parts: &Parts, body: Result<Bytes, String>) -> Response<RespBody> {
        let result = self.check_wire(parts, body).and_then(|grant| {
            if !self.cfg.dpop {
                return self.perform(grant);
            }
            let jkt = self.dpop_check(parts, &grant)?;
            Ok(self.dpop_bind(self.perform(grant)?, &jkt))
        });
        let mut resp = self.respond(parts, result);
        if self.cfg.dpop {
            self.dpop_nonce_header(&mut resp);
        }
        resp
    }

    fn respond(&self, parts: &Parts, result: Result<Value, Reject>) -> Response<RespBody> {
        match result {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(r) => {
                if let Some(problem) = &r.record {
                    let line = format!(
                        "[{}] {} {}: {problem}",
                        self.cfg.flavor,
                        parts.method,
                        parts.uri.path()
                    );
                    self.lock().rejections.push(line);
                }
                error_response(r)
            }
        }
    }

    /// Checks everything about the request except whether its token or code
    /// is valid.
    pub(super) fn check_wire(
        &self,
        parts: &Parts,
        body: Result<Bytes, String>,
    ) -> Result<Grant, Reject> {
        if parts.method != Method::POST {
            return Err(Reject::wire(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                format!(
                    "method {} not allowed; the token endpoint takes POST",
                    parts.method
                ),
            ));
        }
        if parts.uri.query().is_some() {
            return Err(Reject::invalid_request(
                "query string on the token endpoint; parameters belong in the body",
            ));
        }
        let body = body.map_err(Reject::invalid_request)?;
        let headers = &parts.headers;
        if let Some(grant) = self.check_device_poll(headers, &body)? {
            return Ok(grant);
        }
        match self.cfg.flavor {
            Flavor::Partner => self.check_partner(headers, &body),
            Flavor::Didit => self.check_didit(headers, &body),
            Flavor::Bakrypt => self.check_bakrypt(headers, &body),
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => {
                require_media_type(headers, "application/x-www-form-urlencoded")?;
                self.check_basic(headers)?;
                let form = parse_form(&body).map_err(Reject::invalid_request)?;
                match grant_type(&form)? {
                    "refresh_token" => {}
                    "client_credentials" if self.cfg.flavor == Flavor::DigiRunner => {
                        return self.client_credentials(&form, &[]);
                    }
                    _ => {
                        return Err(Reject::unsupported_grant_type(
                            "grant_type must be refresh_token",
                        ))
                    }
                }
                let f = exact_fields(&form, &["grant_type", "refresh_token"], &[])?;
                Ok(Grant::Refresh(non_empty(&f, "refresh_token")?))
            }
        }
    }

    /// Didit: Basic client authentication, a form body, a refresh or a
    /// code exchange (with an optional PKCE verifier).
    fn check_didit(&self, headers: &HeaderMap, body: &[u8]) -> Result<Grant, Reject> {
        require_media_type(headers, "application/x-www-form-urlencoded")?;
        let form = parse_form(body).map_err(Reject::invalid_request)?;
        let auth = match &self.cfg.assertion {
            Some(check) => self.check_assertion(check, headers, &form)?,
            None => self.check_basic(headers).map(|()| Vec::new())?,
        };
        let with_auth = |fields: &[&'static str]| [fields, &auth].concat();
        match grant_type(&form)? {
            "refresh_token" => {
                let f = exact_fields(&form, &with_auth(&["grant_type", "refresh_token"]), &[])?;
                Ok(Grant::Refresh(non_empty(&f, "refresh_token")?))
            }
            "authorization_code" => {
                let f = exact_fields(
                    &form,
                    &with_auth(&["code", "grant_type", "redirect_uri"]),
                    &["code_verifier"],
                )?;
                Ok(Grant::Exchange {
                    code: non_empty(&f, "code")?,
                    redirect_uri: non_empty(&f, "redirect_uri")?,
                    verifier: f.get("code_verifier").map(|v| v.to_string()),
                })
            }
            "client_credentials" => self.client_credentials(&form, &auth),
            _ => Err(Reject::unsupported_grant_type(
                "grant_type must be refresh_token, authorization_code or client_credentials",
            )),
        }
    }

    /// Bakrypt: the client's id and secret in the form body, refresh only.
    fn check_bakrypt(&self, headers: &HeaderMap, body: &[u8]) -> Result<Grant, Reject> {
        require_media_type(headers, "application/x-www-form-urlencoded")?;
        forbid_authorization(headers, "client credentials go in the body")?;
        let form = parse_form(body).map_err(Reject::invalid_request)?;
        let f = match grant_type(&form)? {
            "refresh_token" => exact_fields(
                &form,
                &["client_id", "client_secret", "refresh_token", "grant_type"],
                &[],
            )?,
            "client_credentials" => {
                self.body_client(&form)?;
                return self.client_credentials(&form, &["client_id", "client_secret"]);
            }
            _ => {
                return Err(Reject::unsupported_grant_type(
                    "grant_type must be refresh_token or client_credentials",
                ))
            }
        };
        self.body_client(&form)?;
        Ok(Grant::Refresh(non_empty(&f, "refresh_token")?))
    }

    /// Bakrypt's client authentication: id and secret in the body.
    pub(super) fn body_client(&self, form: &[(String, String)]) -> Result<(), Reject> {
        let f: HashMap<&str, &str> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if f.get("client_id").copied() != Some(self.cfg.client_id.as_str()) {
            return Err(Reject::invalid_client(
                "client_id in the body is wrong",
                false,
            ));
        }
        if f.get("client_secret").copied() != Some(self.cfg.secret()) {
            return Err(Reject::invalid_client(
                "client_secret in the body is wrong",
                false,
            ));
        }
        Ok(())
    }

    /// A client_credentials request whose client is already authenticated:
    /// exactly `grant_type`, the client's own body fields (`auth_fields`),
    /// and the configured scope and audience, nothing else.
    fn client_credentials(
        &self,
        form: &[(String, String)],
        auth_fields: &[&str],
    ) -> Result<Grant, Reject> {
        let mut required = vec!["grant_type"];
        required.extend_from_slice(auth_fields);
        required.extend(self.cfg.cc_scope.as_ref().map(|_| "scope"));
        required.extend(self.cfg.cc_audience.as_ref().map(|_| "audience"));
        let f = exact_fields(form, &required, &[])?;
        for (name, want) in [
            ("scope", &self.cfg.cc_scope),
            ("audience", &self.cfg.cc_audience),
        ] {
            if let Some(want) = want {
                if f.get(name).copied() != Some(want.as_str()) {
                    return Err(Reject::wire(
                        StatusCode::BAD_REQUEST,
                        if name == "scope" {
                            "invalid_scope"
                        } else {
                            "invalid_request"
                        },
                        format!("{name} must be {want:?}"),
                    ));
                }
            }
        }
        Ok(Grant::ClientCredentials)
    }

    pub(super) fn check_partner(&self, headers: &HeaderMap, body: &[u8]) -> Result<Grant, Reject> {
        forbid_authorization(headers, "this API takes no client authentication")?;
        let partner = single_header(headers, "partnerid")?
            .ok_or_else(|| Reject::invalid_request("missing partnerId header"))?;
        if partner != self.cfg.partner_id {
            return Err(Reject::invalid_client("partnerId header is wrong", false));
        }
        let grant = single_header(headers, "granttype")?
            .ok_or_else(|| Reject::invalid_request("missing grantType header"))?;
        if grant != "refresh_token" {
            return Err(Reject::unsupported_grant_type(
                "grantType header must be refresh_token",
            ));
        }
        require_media_type(headers, "application/json")?;
        let entries: JsonEntries = serde_json::from_slice(body).map_err(|e| {
            Reject::invalid_request(format!("body is not a single JSON object: {e}"))
        })?;
        let mut seen = HashSet::new();
        let mut refresh = None;
        for (key, value) in entries.0 {
            if !seen.insert(key.clone()) {
                return Err(Reject::invalid_request(format!(
                    "duplicate JSON key {key:?}"
                )));
            }
            if key != "refreshToken" {
                return Err(Reject::invalid_request(format!(
                    "unexpected JSON key {key:?}; the body takes only refreshToken"
                )));
            }
            refresh = Some(value);
        }
        match refresh {
            None => Err(Reject::invalid_request("Missing refresh token.")),
            Some(Value::String(s)) if s.is_empty() => {
                Err(Reject::invalid_request("Missing refresh token."))
            }
            Some(Value::String(s)) => Ok(Grant::Refresh(s)),
            Some(_) => Err(Reject::invalid_request(
                "refreshToken must be a JSON string",
            )),
        }
    }

    /// Checks `Authorization: Basic …` against the flavour's expected value,
    /// explaining near misses in the rejection line (never echoing values).
    pub(super) fn check_basic(&self, headers: &HeaderMap) -> Result<(), Reject> {
        let fail = |problem: &str| Reject::invalid_client(problem, true);
        let (user, pass) = basic_credentials(headers)?;
        let (user, pass) = (user.as_str(), pass.as_str());
        let cfg = &self.cfg;
        if user != cfg.client_id {
            if user == form_encode(&cfg.client_id) {
                return Err(fail(
                    "client id was form-urlencoded before Basic encoding; this provider expects it raw",
                ));
            }
            return Err(fail("wrong client id in Basic credentials"));
        }
        let secret = cfg.secret();
        match cfg.flavor {
            Flavor::DigiRunnerPublic => {
                if !pass.is_empty() {
                    return Err(fail(
                        "public digiRunner client must send Base64(client_id \":\") with nothing after the colon",
                    ));
                }
            }
            Flavor::DigiRunner => {
                if pass != STANDARD.encode(secret) {
                    if pass == secret {
                        return Err(fail(
                            "plain Basic id:password sent; digiRunner expects Base64(id \":\" Base64(password))",
                        ));
                    }
                    return Err(fail(
                        "wrong password part; digiRunner expects Base64(id \":\" Base64(password))",
                    ));
                }
            }
            _ => {
                if pass != secret {
                    if pass == form_encode(secret) {
                        return Err(fail(
                            "client secret was form-urlencoded before Basic encoding; this provider expects it raw",
                        ));
                    }
                    return Err(fail("wrong client secret in Basic credentials"));
                }
            }
        }
        Ok(())
    }

    /// Serves `/admin/*` (not token requests: not counted, never faulted).
    pub(super) fn admin(&self, parts: &Parts, body: Result<Bytes, String>) -> Response<RespBody> {
        let bad = |msg: String| {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": msg}),
            )
        };
        if parts.method != Method::POST {
            return bad("admin endpoints take POST".to_string());
        }
        let body = match body {
            Ok(b) => b,
            Err(e) => return bad(e),
        };
        match parts.uri.path() {
            "/admin/grant" => {
                let mut st = self.lock();
                let family = st.new_family();
                let rt = self.mint_refresh_token(&mut st, SystemTime::now(), family);
                json_response(StatusCode::OK, &json!({ "refresh_token": rt }))
            }
            "/admin/code" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct CodeRequest {
                    redirect_uri: String,
                    #[serde(default)]
                    code_challenge: Option<String>,
                    #[serde(default)]
                    offline: Option<bool>,
                }
                match serde_json::from_slice::<CodeRequest>(&body) {
                    Ok(r) => {
                        let code = self.issue_code(
                            "code-",
                            &r.redirect_uri,
                            r.code_challenge.as_deref(),
                            r.offline.unwrap_or(true),
                        );
                        json_response(StatusCode::OK, &json!({ "code": code }))
                    }
                    Err(e) => bad(format!(
                        "expected {{\"redirect_uri\": ..., \"code_challenge\"?: ..., \"offline\"?: bool}}: {e}"
                    )),
                }
            }
            "/admin/revoke" => {
                let n = self.revoke_all();
                json_response(StatusCode::OK, &json!({ "revoked": n }))
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    /// Answers a request for a path that is neither the token path nor admin.
    pub(super) fn unknown_path(&self, parts: &Parts) -> Response<RespBody> {
        let line = format!(
            "[{}] {} {}: unknown path; the token endpoint is POST {}",
            self.cfg.flavor,
            parts.method,
            parts.uri.path(),
            self.cfg.flavor.token_path()
        );
        self.lock().rejections.push(line);
        json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}))
    }
}

// ---------------------------------------------------------------------------
// Request parsing helpers (every failure becomes a 400, never a panic)
// ---------------------------------------------------------------------------

/// The user and password of a Basic `Authorization` header, each refusal
/// an `invalid_client` with a `WWW-Authenticate` challenge.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), Reject> {
    let fail = |problem: &str| Reject::invalid_client(problem, true);
    let Some(value) = single_header(headers, "authorization")? else {
        return Err(fail(
            "missing Authorization header (Basic client authentication expected)",
        ));
    };
    let Some((scheme, b64)) = value.split_once(' ') else {
        return Err(fail("Authorization header is not `Basic <credentials>`"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(fail("Authorization scheme is not Basic"));
    }
    let Ok(raw) = STANDARD.decode(b64) else {
        return Err(fail(
            "Basic credentials are not standard padded Base64 (or have extra spaces)",
        ));
    };
    let Ok(creds) = String::from_utf8(raw) else {
        return Err(fail("Basic credentials are not UTF-8"));
    };
    let Some((user, pass)) = creds.split_once(':') else {
        return Err(fail("Basic credentials have no ':'"));
    };
    Ok((user.to_string(), pass.to_string()))
}

/// The one value of header `name`, as visible ASCII; `Ok(None)` if absent.
pub(super) fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, Reject> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Reject::invalid_request(format!(
            "header {name} sent more than once"
        )));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| Reject::invalid_request(format!("header {name} is not visible ASCII")))
}

pub(super) fn forbid_authorization(headers: &HeaderMap, why: &str) -> Result<(), Reject> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(Reject::invalid_request(format!(
            "unexpected Authorization header; {why}"
        )));
    }
    Ok(())
}

/// Requires `Content-Type: <expected>`, media type compared without regard to
/// case, parameters (`; charset=utf-8`) tolerated.
pub(super) fn require_media_type(headers: &HeaderMap, expected: &str) -> Result<(), Reject> {
    let Some(value) = single_header(headers, "content-type")? else {
        return Err(Reject::invalid_request(format!(
            "missing Content-Type; expected {expected}"
        )));
    };
    let media = value.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(expected) {
        return Err(Reject::invalid_request(format!(
            "Content-Type is {media:?}; expected {expected}"
        )));
    }
    Ok(())
}

/// Parses an `application/x-www-form-urlencoded` body strictly: ASCII only, no
/// empty segments, every segment `key=value`, well-formed percent escapes
/// decoding to UTF-8.
pub(super) fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    if body.is_empty() {
        return Err("empty body".to_string());
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err("form body is not ASCII".to_string());
    };
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "form body contains {c:?} (whitespace, control or non-ASCII characters must be percent-encoded)"
        ));
    }
    for segment in text.split('&') {
        if segment.is_empty() {
            return Err("empty form segment (stray '&')".to_string());
        }
        if !segment.contains('=') {
            return Err("form segment without '='".to_string());
        }
        let bytes = segment.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'%' {
                let ok = bytes.len() > i + 2
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit();
                if !ok {
                    return Err("malformed percent escape in form body".to_string());
                }
            }
        }
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    if pairs
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        return Err("percent-encoded bytes in form body are not UTF-8".to_string());
    }
    Ok(pairs)
}

/// The single `grant_type` value.
pub(super) fn grant_type(form: &[(String, String)]) -> Result<&str, Reject> {
    let mut values = form.iter().filter(|(k, _)| k == "grant_type");
    let Some((_, v)) = values.next() else {
        return Err(Reject::invalid_request("missing field grant_type"));
    };
    if values.next().is_some() {
        return Err(Reject::invalid_request("duplicate field grant_type"));
    }
    Ok(v)
}

/// Requires exactly the `required` fields plus any of `optional`, each once.
pub(super) fn exact_fields<'f>(
    form: &'f [(String, String)],
    required: &[&str],
    optional: &[&str],
) -> Result<HashMap<&'f str, &'f str>, Reject> {
    let mut map = HashMap::new();
    for (k, v) in form {
        if !required.contains(&k.as_str()) && !optional.contains(&k.as_str()) {
            return Err(Reject::invalid_request(format!(
                "unexpected field {k:?}; expected exactly {}",
                describe_fields(required, optional)
            )));
        }
        if map.insert(k.as_str(), v.as_str()).is_some() {
            return Err(Reject::invalid_request(format!("duplicate field {k:?}")));
        }
    }
    for r in required {
        if !map.contains_key(r) {
            return Err(Reject::invalid_request(format!(
                "missing field {r:?}; expected exactly {}",
                describe_fields(required, optional)
            )));
        }
    }
    Ok(map)
}

pub(super) fn describe_fields(required: &[&str], optional: &[&str]) -> String {
    let mut s = required.join(", ");
    if !optional.is_empty() {
        s.push_str(&format!(" (optionally {})", optional.join(", ")));
    }
    s
}

pub(super) fn non_empty(fields: &HashMap<&str, &str>, name: &str) -> Result<String, Reject> {
    match fields.get(name) {
        Some(v) if !v.is_empty() => Ok((*v).to_string()),
        _ => Err(Reject::invalid_request(format!("field {name} is empty"))),
    }
}

/// A JSON object's entries in order, duplicates kept (serde_json's `Map`
/// would silently keep only the last).
pub(super) struct JsonEntries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for JsonEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonEntries;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    entries.push((k, v));
                }
                Ok(JsonEntries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`.
pub(super) fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL-NOPAD(SHA256(verifier))`, the S256 challenge of a verifier.
pub fn pkce_s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}
