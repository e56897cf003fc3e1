//! The device authorization grant (RFC 8628): `POST /device/code` issues a
//! device code and a user code, and the token endpoint's
//! `urn:ietf:params:oauth:grant-type:device_code` grant answers each poll
//! from a script ([`DevicePoll`]), then from what the "user" decided through
//! [`FakeProvider::approve_device`] or [`FakeProvider::deny_device`], and
//! `expired_token` once the code's `expires_in` has passed.
//!
//! Strict as the rest: method, content type, client authentication (the
//! flavour's Basic, or a public client's `client_id` in the body) and the
//! exact set of fields, and a poll sooner than the current interval after
//! the previous one (or after the code was issued) is recorded in
//! [`FakeProvider::rejections`] and answered `slow_down`, which adds five
//! seconds to the interval, as RFC 8628 §3.5 says.

use super::*;

/// Where the device authorization endpoint is.
pub const DEVICE_PATH: &str = "/device/code";

/// The device grant's `grant_type`.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// One scripted answer to a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePoll {
    /// `authorization_pending`.
    Pending,
    /// `slow_down`: the interval grows by five seconds for good.
    SlowDown,
    /// The user approved: tokens, with a refresh token.
    Approve,
    /// `access_denied`.
    Deny,
    /// `expired_token`.
    Expire,
}

/// How the fake's device grant behaves.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// `interval` of the device authorization response; `None` leaves it out
    /// (the client must then wait five seconds).
    pub interval: Option<u64>,
    /// `expires_in` of the device authorization response.
    pub expires_in: u64,
    /// The answers to the first polls, in order; after them, pending until
    /// the user decides.
    pub script: Vec<DevicePoll>,
    /// A public client: no client authentication, `client_id` in the body.
    /// Otherwise the flavour's own client authentication (Basic).
    pub public: bool,
    /// The scope the device authorization request must send, if any (then
    /// exactly this; otherwise none may be sent).
    pub scope: Option<String>,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            interval: Some(1),
            expires_in: 600,
            script: Vec::new(),
            public: false,
            scope: None,
        }
    }
}

/// One issued device code.
#[derive(Debug)]
pub(super) struct DeviceCode {
    user_code: String,
    expires: Instant,
    interval: Duration,
    /// When the last poll (or the issue) was.
    last: Instant,
    script: VecDeque<DevicePoll>,
    /// The user's decision: approve (`true`) or deny.
    decision: Option<bool>,
    done: bool,
}

/// The device grant's part of the fake's state.
#[derive(Debug, Default)]
pub(super) struct DeviceState {
    settings: Option<DeviceSettings>,
    codes: HashMap<String, DeviceCode>,
    /// When each poll arrived.
    polls: Vec<Instant>,
    authorizations: usize,
}

impl Inner {
    /// Serves `POST /device/code`.
    pub(super) fn device_authorization(
        &self,
        parts: &Parts,
        body: Result<Bytes, String>,
    ) -> Response<RespBody> {
        let result = self.check_device_authorization(parts, body);
        match result {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(r) => self.refuse(parts, r),
        }
    }

    fn refuse(&self, parts: &Parts, r: Reject) -> Response<RespBody> {
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

    fn check_device_authorization(
        &self,
        parts: &Parts,
        body: Result<Bytes, String>,
    ) -> Result<Value, Reject> {
        let Some(settings) = self.lock().device.settings.clone() else {
            return Err(Reject::wire(
                StatusCode::NOT_FOUND,
                "invalid_request",
                "this fake has no device authorization endpoint (enable_device)",
            ));
        };
        if parts.method != Method::POST {
            return Err(Reject::wire(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "the device authorization endpoint takes POST (RFC 8628 §3.1)",
            ));
        }
        if parts.uri.query().is_some() {
            return Err(Reject::invalid_request(
                "query string on the device authorization endpoint; parameters belong in the body",
            ));
        }
        let body = body.map_err(Reject::invalid_request)?;
        require_media_type(&parts.headers, "application/x-www-form-urlencoded")?;
        let mut required = Vec::new();
        required.extend(settings.scope.as_ref().map(|_| "scope"));
        let form = if body.is_empty() {
            Vec::new()
        } else {
            parse_form(&body).map_err(Reject::invalid_request)?
        };
        self.device_client(&parts.headers, &form, &settings, &mut required)?;
        let f = exact_fields(&form, &required, &[])?;
        if let Some(want) = &settings.scope {
            if f.get("scope").copied() != Some(want.as_str()) {
                return Err(Reject::wire(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!("scope must be {want:?}"),
                ));
            }
        }
        let device_code = format!("dc-{}", random_alnum(40));
        let user_code = format!("{}-{}", random_alnum(4), random_alnum(4)).to_uppercase();
        let interval = Duration::from_secs(settings.interval.unwrap_or(5));
        let now = Instant::now();
        let mut st = self.lock();
        st.add_secret(device_code.clone());
        st.device.authorizations += 1;
        st.device.codes.insert(
            device_code.clone(),
            DeviceCode {
                user_code: user_code.clone(),
                expires: now + Duration::from_secs(settings.expires_in),
                interval,
                last: now,
                script: settings.script.iter().copied().collect(),
                decision: None,
                done: false,
            },
        );
        let uri = format!("http://{}/device", self.addr);
        let mut v = json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": uri,
            "verification_uri_complete": format!("{uri}?user_code={user_code}"),
            "expires_in": settings.expires_in,
        });
        if let Some(i) = settings.interval {
            v["interval"] = json!(i);
        }
        Ok(v)
    }

    /// The client's authentication at either device-grant endpoint: the
    /// flavour's Basic, or a public client's `client_id` in the body (then
    /// added to `required`).
    fn device_client(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
        settings: &DeviceSettings,
        required: &mut Vec<&'static str>,
    ) -> Result<(), Reject> {
        if !settings.public {
            return self.check_basic(headers);
        }
        forbid_authorization(headers, "a public client sends only its client_id")?;
        let id = form.iter().find(|(k, _)| k == "client_id").map(|(_, v)| v);
        if id != Some(&self.cfg.client_id) {
            return Err(Reject::invalid_client(
                "a public client must send its client_id in the body",
                false,
            ));
        }
        required.push("client_id");
        Ok(())
    }

    /// A token request of the device grant, checked like the others; `None`
    /// if the body is not one (or the device grant is not enabled).
    pub(super) fn check_device_poll(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<Grant>, Reject> {
        let Some(settings) = self.lock().device.settings.clone() else {
            return Ok(None);
        };
        let is_device =
            url::form_urlencoded::parse(body).any(|(k, v)| k == "grant_type" && v == DEVICE_GRANT);
        if !is_device {
            return Ok(None);
        }
        require_media_type(headers, "application/x-www-form-urlencoded")?;
        let form = parse_form(body).map_err(Reject::invalid_request)?;
        let mut required = vec!["grant_type", "device_code"];
        self.device_client(headers, &form, &settings, &mut required)?;
        let f = exact_fields(&form, &required, &[])?;
        Ok(Some(Grant::DeviceCode(non_empty(&f, "device_code")?)))
    }

    /// Answers one poll (RFC 8628 §3.5).
    pub(super) fn device_token(&self, device_code: &str) -> Result<Value, Reject> {
        let now = Instant::now();
        let mut st = self.lock();
        st.device.polls.push(now);
        let answer = |error: &'static str, description: &str| Reject {
            status: StatusCode::BAD_REQUEST,
            error,
            description: Some(description.to_string()),
            www_authenticate_basic: false,
            record: None,
        };
        let Some(code) = st.device.codes.get_mut(device_code) else {
            return Err(Reject::invalid_grant("unknown device code"));
        };
        if code.done {
            return Err(Reject::invalid_grant("the device code was already used"));
        }
        if now >= code.expires {
            code.done = true;
            return Err(answer("expired_token", "the device code has expired"));
        }
        let since = now.duration_since(code.last);
        code.last = now;
        if since < code.interval {
            let line = format!(
                "[{}] POST {}: device poll {} ms after the previous one, sooner than the interval of {} s (RFC 8628 §3.5)",
                self.cfg.flavor,
                self.cfg.flavor.token_path(),
                since.as_millis(),
                code.interval.as_secs()
            );
            code.interval += Duration::from_secs(5);
            st.rejections.push(line);
            return Err(answer("slow_down", "polling too fast"));
        }
        let next = code.script.pop_front().unwrap_or(match code.decision {
            None => DevicePoll::Pending,
            Some(true) => DevicePoll::Approve,
            Some(false) => DevicePoll::Deny,
        });
        match next {
            DevicePoll::Pending => Err(answer("authorization_pending", "waiting for the user")),
            DevicePoll::SlowDown => {
                code.interval += Duration::from_secs(5);
                Err(answer("slow_down", "polling too fast"))
            }
            DevicePoll::Deny => {
                code.done = true;
                Err(answer("access_denied", "the user denied the request"))
            }
            DevicePoll::Expire => {
                code.done = true;
                Err(answer("expired_token", "the device code has expired"))
            }
            DevicePoll::Approve => {
                code.done = true;
                let family = st.new_family();
                let rt = self.mint_refresh_token(&mut st, SystemTime::now(), family);
                st.exchange_count += 1;
                Ok(self.token_response(&mut st, Some(rt), false))
            }
        }
    }
}

impl FakeProvider {
    /// Turns the device grant on (or changes its settings for codes issued
    /// from now on).
    pub fn enable_device(&self, settings: DeviceSettings) {
        self.inner.lock().device.settings = Some(settings);
    }

    /// `http://127.0.0.1:PORT/device/code`.
    pub fn device_authorization_url(&self) -> String {
        format!("{}{DEVICE_PATH}", self.base_url())
    }

    /// The user approves every code issued so far (once its script is done).
    pub fn approve_device(&self) {
        self.decide_device(true);
    }

    /// The user denies every code issued so far (once its script is done).
    pub fn deny_device(&self) {
        self.decide_device(false);
    }

    fn decide_device(&self, approve: bool) {
        for code in self.inner.lock().device.codes.values_mut() {
            code.decision = Some(approve);
        }
    }

    /// When each device-grant poll arrived.
    pub fn device_poll_times(&self) -> Vec<Instant> {
        self.inner.lock().device.polls.clone()
    }

    /// How many device authorization requests were answered with codes.
    pub fn device_authorizations(&self) -> usize {
        self.inner.lock().device.authorizations
    }

    /// The user codes issued so far (shown to users, not secret).
    pub fn device_user_codes(&self) -> Vec<String> {
        self.inner
            .lock()
            .device
            .codes
            .values()
            .map(|c| c.user_code.clone())
            .collect()
    }
}
