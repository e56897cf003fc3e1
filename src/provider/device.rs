//! The device authorization response (RFC 8628 §3.2), read strictly: what
//! the user is shown comes from the provider and ends up on an operator's
//! terminal, so every text is bounded and free of control characters, and
//! the URIs are absolute http(s) URLs in their serialized form.

use std::fmt;

use serde_json::Value;
use url::Url;

use crate::token::Secret;

/// The polling interval when the provider states none (RFC 8628 §3.2).
pub(crate) const DEFAULT_INTERVAL_SECS: u64 = 5;

/// Longest user code shown; RFC 8628 §6.1 suggests about eight characters.
const MAX_USER_CODE_CHARS: usize = 64;

/// Longest verification URI shown.
const MAX_URI_BYTES: usize = 2048;

/// What the device authorization endpoint answered.
#[derive(Clone)]
pub(crate) struct DeviceAuthorization {
    /// Polled with; never leaves the daemon.
    pub(crate) device_code: Secret,
    /// What the user types at the verification URI.
    pub(crate) user_code: String,
    /// Where the user goes.
    pub(crate) verification_uri: String,
    /// The URI with the user code in it, if the provider gives one.
    pub(crate) verification_uri_complete: Option<String>,
    /// Seconds the codes are valid.
    pub(crate) expires_in: u64,
    /// Seconds to wait between polls.
    pub(crate) interval: u64,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &self.device_code)
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Reads a 2xx answer of the device authorization endpoint; the error says
/// which field is wrong, never its value.
pub(crate) fn parse_device_authorization(body: &[u8]) -> Result<DeviceAuthorization, String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        format!(
            "device authorization response is not JSON ({} bytes)",
            body.len()
        )
    })?;
    let Value::Object(obj) = value else {
        return Err("device authorization response is not a JSON object".into());
    };
    let text = |name: &str| match obj.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.as_str())),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(format!(
            "device authorization response: {name} is not a string"
        )),
    };
    let required = |name: &str| {
        text(name)?.ok_or_else(|| format!("device authorization response has no {name}"))
    };
    let device_code = Secret::new(required("device_code")?);
    let user_code = required("user_code")?;
    if user_code.chars().count() > MAX_USER_CODE_CHARS || user_code.chars().any(char::is_control) {
        return Err(format!(
            "device authorization response: user_code is longer than {MAX_USER_CODE_CHARS} characters or holds control characters"
        ));
    }
    // Some providers (Google) call it verification_url.
    let uri = match text("verification_uri")? {
        Some(uri) => uri,
        None => required("verification_url")
            .map_err(|_| "device authorization response has no verification_uri".to_string())?,
    };
    let verification_uri = browser_url("verification_uri", uri)?;
    let verification_uri_complete = text("verification_uri_complete")?
        .map(|u| browser_url("verification_uri_complete", u))
        .transpose()?;
    let expires_in = seconds(obj.get("expires_in"))
        .ok_or("device authorization response has no valid expires_in")?;
    let interval = match obj.get("interval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL_SECS,
        v => seconds(v).ok_or("device authorization response: interval is not a number")?,
    };
    Ok(DeviceAuthorization {
        device_code,
        user_code: user_code.to_string(),
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval,
    })
}

/// A URI to show a person: absolute http(s), bounded, as `url` serializes
/// it (which percent-encodes anything a terminal could act on).
fn browser_url(name: &str, raw: &str) -> Result<String, String> {
    let url = Url::parse(raw)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
        .ok_or_else(|| format!("device authorization response: {name} is not an http(s) URL"))?;
    if url.as_str().len() > MAX_URI_BYTES {
        return Err(format!(
            "device authorization response: {name} is longer than {MAX_URI_BYTES} bytes"
        ));
    }
    Ok(url.into())
}

/// Whole seconds as a JSON number or a numeric string (some providers send
/// strings); `None` if absent, negative or not a number.
fn seconds(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<DeviceAuthorization, String> {
        parse_device_authorization(v.to_string().as_bytes())
    }

    #[test]
    fn reads_the_rfc_8628_example() {
        let a = parse(serde_json::json!({
            "device_code": "GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS",
            "user_code": "WDJB-MJHT",
            "verification_uri": "https://example.com/device",
            "verification_uri_complete": "https://example.com/device?user_code=WDJB-MJHT",
            "expires_in": 1800,
            "interval": 5
        }))
        .unwrap();
        assert_eq!(a.user_code, "WDJB-MJHT");
        assert_eq!(a.verification_uri, "https://example.com/device");
        assert_eq!(
            a.verification_uri_complete.as_deref(),
            Some("https://example.com/device?user_code=WDJB-MJHT")
        );
        assert_eq!((a.expires_in, a.interval), (1800, 5));
        assert!(!format!("{a:?}").contains("GmRhmhcx"));
    }

    #[test]
    fn interval_defaults_to_five_seconds_and_strings_are_numbers() {
        let a = parse(serde_json::json!({
            "device_code": "d", "user_code": "u",
            "verification_url": "https://www.google.com/device", "expires_in": "900"
        }))
        .unwrap();
        assert_eq!((a.expires_in, a.interval), (900, DEFAULT_INTERVAL_SECS));
        assert_eq!(a.verification_uri, "https://www.google.com/device");
    }

    #[test]
    fn refuses_what_a_terminal_should_not_show() {
        let base = serde_json::json!({
            "device_code": "d", "user_code": "u",
            "verification_uri": "https://e.example/d", "expires_in": 60
        });
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            parse(b)
        };
        assert!(parse(base.clone()).is_ok());
        for (k, v) in [
            ("user_code", Value::from("AB\u{1b}[2J")),
            ("user_code", Value::from("x".repeat(65))),
            ("verification_uri", Value::from("javascript:alert(1)")),
            ("verification_uri", Value::from("/relative")),
            (
                "verification_uri_complete",
                Value::from("file:///etc/passwd"),
            ),
            ("expires_in", Value::from(-1)),
            ("expires_in", Value::Null),
            ("interval", Value::from("soon")),
            ("device_code", Value::from(7)),
        ] {
            let err = with(k, v.clone()).unwrap_err();
            assert!(err.contains(k) || k == "expires_in", "{k}={v}: {err}");
        }
        let escaped = with("verification_uri", Value::from("https://e.example/d\u{7}x")).unwrap();
        assert!(!escaped.verification_uri.contains('\u{7}'));
        assert!(parse_device_authorization(b"<html>").is_err());
    }
}
