//! The token endpoint's response: parsing it (with renamed fields for
//! providers that do not use the RFC 6749 names) and when its token expires.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value};

use super::{after_secs, duration_ms, Secret, MAX_LIFETIME_MS};

/// Where a token's lifetime came from: shown in status so an operator can tell
/// a guessed expiry from a stated one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    /// The response's `expires_in`.
    ExpiresIn,
    /// The access token is a JWT and carries `exp`.
    JwtExp,
    /// Neither: the provider's configured default lifetime.
    Default,
}

/// A successful token-endpoint response, validated and normalised. Its
/// `Debug` names the extra fields without their values: an `id_token` is as
/// much a bearer credential as the access token.
#[derive(Clone)]
pub struct TokenSet {
    /// The new access token.
    pub access_token: Secret,
    /// The rotated refresh token, if the provider sent one.
    pub refresh_token: Option<Secret>,
    /// `Bearer` for any capitalisation of bearer, otherwise as sent.
    pub token_type: String,
    /// Granted scope, if stated.
    pub scope: Option<String>,
    /// Lifetime in seconds as stated by `expires_in`, if it was.
    pub expires_in: Option<u64>,
    /// Refresh-token lifetime in seconds, if the provider states one.
    pub refresh_expires_in: Option<u64>,
    /// Every other field of the response (id_token, jti, ...).
    pub extra: Map<String, Value>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_in", &self.expires_in)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a 2xx body could not be taken as a token response.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// The body is not JSON at all (an HTML error page, say).
    #[error("token endpoint returned a body that is not JSON ({content_type}, {len} bytes)")]
    NotJson {
        /// The Content-Type header, or "no content type".
        content_type: String,
        /// Body length in bytes.
        len: usize,
    },
    /// JSON, but not an object.
    #[error("token endpoint returned JSON that is not an object")]
    NotObject,
    /// An object without a usable `access_token`.
    #[error("token endpoint response has no access_token")]
    MissingAccessToken,
    /// A field of the wrong type.
    #[error("token endpoint response field `{0}` has an unusable value")]
    BadField(&'static str),
}

/// Names of the response fields, so providers with non-standard names work
/// from configuration alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseFields {
    /// Field carrying the access token.
    pub access_token: String,
    /// Field carrying the (rotated) refresh token.
    pub refresh_token: String,
    /// Field carrying the lifetime in seconds.
    pub expires_in: String,
    /// Field carrying the token type.
    pub token_type: String,
    /// Field carrying the scope.
    pub scope: String,
}

impl Default for ResponseFields {
    fn default() -> Self {
        ResponseFields {
            access_token: "access_token".into(),
            refresh_token: "refresh_token".into(),
            expires_in: "expires_in".into(),
            token_type: "token_type".into(),
            scope: "scope".into(),
        }
    }
}

/// Refresh-token lifetime fields seen in the wild (Microsoft, Keycloak, GitHub).
const REFRESH_EXPIRY_FIELDS: [&str; 3] = [
    "refresh_token_expires_in",
    "refresh_expires_in",
    "refresh_token_expires_at_in",
];

/// Parses a 2xx token-endpoint body. Unknown fields are kept in `extra`.
pub(crate) fn parse_token_response(
    body: &[u8],
    content_type: Option<&str>,
    fields: &ResponseFields,
) -> Result<TokenSet, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ParseError::NotJson {
        content_type: content_type.unwrap_or("no content type").to_string(),
        len: body.len(),
    })?;
    token_set_of(value, fields)
}

/// As [`parse_token_response`], for a body already parsed as JSON (the
/// client looks for an `error` member first, and parses the body once).
pub(crate) fn token_set_of(value: Value, fields: &ResponseFields) -> Result<TokenSet, ParseError> {
    let Value::Object(mut obj) = value else {
        return Err(ParseError::NotObject);
    };
    let access_token = match obj.remove(&fields.access_token) {
        Some(Value::String(s)) if !s.is_empty() => Secret::new(s),
        _ => return Err(ParseError::MissingAccessToken),
    };
    let refresh_token = match obj.remove(&fields.refresh_token) {
        Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s)),
        None | Some(Value::Null) | Some(Value::String(_)) => None,
        Some(_) => return Err(ParseError::BadField("refresh_token")),
    };
    let token_type = match obj.remove(&fields.token_type) {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("bearer") => "Bearer".to_string(),
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => "Bearer".to_string(),
    };
    let scope = match obj.remove(&fields.scope) {
        Some(Value::String(s)) => Some(s),
        // Some servers send scope as an array of strings.
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    };
    let expires_in = match obj.remove(&fields.expires_in) {
        None | Some(Value::Null) => None,
        Some(v) => Some(seconds(&v).ok_or(ParseError::BadField("expires_in"))?),
    }
    .filter(|&s| s > 0);
    let refresh_expires_in = REFRESH_EXPIRY_FIELDS
        .iter()
        .find_map(|name| obj.get(*name).and_then(seconds))
        .filter(|&s| s > 0);
    Ok(TokenSet {
        access_token,
        refresh_token,
        token_type,
        scope,
        expires_in,
        refresh_expires_in,
        extra: obj,
    })
}

/// A number of seconds given as a JSON number or a numeric string.
fn seconds(v: &Value) -> Option<u64> {
    match v {
        // A negative lifetime counts as zero (absent): failing the whole
        // response would lose the refresh token it rotated.
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| *f >= 0.0)
            .map(|f| f as u64),
        _ => None,
    }
}

/// The `exp` claim of a JWT access token, in Unix seconds, without verifying
/// anything: it is only used to guess a lifetime the provider did not state.
pub fn jwt_exp(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_f64().map(|f| f as i64)
}

/// Works out when a freshly issued access token expires, counting from
/// `sent_at_ms` (when the request left, so network delay never makes us late).
/// A JWT's `exp` is what resource servers enforce, so when it is earlier than
/// `expires_in` implies (it has whole-second precision) it wins; an `exp`
/// already in the past is taken for clock skew and ignored.
pub(crate) fn expires_at_ms(
    set: &TokenSet,
    sent_at_ms: i64,
    default_lifetime: Duration,
) -> (i64, LifetimeSource) {
    let longest = sent_at_ms.saturating_add(MAX_LIFETIME_MS);
    let jwt = jwt_exp(set.access_token.expose())
        .map(|exp| exp.saturating_mul(1000).min(longest))
        .filter(|exp_ms| *exp_ms > sent_at_ms);
    if let Some(secs) = set.expires_in {
        let stated = after_secs(sent_at_ms, secs);
        return match jwt {
            Some(exp_ms) if exp_ms < stated => (exp_ms, LifetimeSource::JwtExp),
            _ => (stated, LifetimeSource::ExpiresIn),
        };
    }
    if let Some(exp_ms) = jwt {
        return (exp_ms, LifetimeSource::JwtExp);
    }
    (
        sent_at_ms.saturating_add(duration_ms(default_lifetime).min(MAX_LIFETIME_MS)),
        LifetimeSource::Default,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<TokenSet, ParseError> {
        parse_token_response(
            body.as_bytes(),
            Some("application/json"),
            &ResponseFields::default(),
        )
    }

    #[test]
    fn token_set_debug_shows_no_token() {
        let set = parse(
            r#"{"access_token":"the-access-token","refresh_token":"the-refresh-token","id_token":"the-id-token","expires_in":60}"#,
        )
        .unwrap();
        let debug = format!("{set:?}");
        for secret in ["the-access-token", "the-refresh-token", "the-id-token"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("id_token"), "{debug}");
    }

    #[test]
    fn parses_a_response_with_extra_fields_and_lowercase_bearer() {
        let set = parse(
            r#"{"access_token":"a.b.c","expires_in":86399,"jti":"41fa","node":"executor1",
               "org_id":"100000","refresh_token":"r.s.t","scope":"2000000006",
               "stime":1684742522981,"token_type":"bearer"}"#,
        )
        .unwrap();
        assert_eq!(set.token_type, "Bearer");
        assert_eq!(set.expires_in, Some(86399));
        assert_eq!(set.refresh_token.unwrap().expose(), "r.s.t");
        assert_eq!(set.extra["jti"], "41fa");
        assert_eq!(set.extra["stime"], 1684742522981u64);
        assert!(!set.extra.contains_key("access_token"));
    }

    #[test]
    fn expires_in_as_numeric_string_and_missing_refresh_token() {
        let set =
            parse(r#"{"access_token":"x","expires_in":"3600","token_type":"Bearer"}"#).unwrap();
        assert_eq!(set.expires_in, Some(3600));
        assert!(set.refresh_token.is_none());
    }

    #[test]
    fn bad_expires_in_is_an_error_not_a_guess() {
        assert_eq!(
            parse(r#"{"access_token":"x","expires_in":"soon"}"#).unwrap_err(),
            ParseError::BadField("expires_in")
        );
    }

    #[test]
    fn non_json_and_missing_token_are_clear_errors() {
        let err = parse_token_response(b"<html>502</html>", Some("text/html"), &Default::default())
            .unwrap_err();
        assert!(err.to_string().contains("not JSON (text/html, 16 bytes)"));
        assert_eq!(parse("[]").unwrap_err(), ParseError::NotObject);
        assert_eq!(
            parse(r#"{"token_type":"Bearer"}"#).unwrap_err(),
            ParseError::MissingAccessToken
        );
    }

    #[test]
    fn refresh_token_lifetime_is_recorded() {
        let set = parse(r#"{"access_token":"x","refresh_expires_in":1800}"#).unwrap();
        assert_eq!(set.refresh_expires_in, Some(1800));
    }

    #[test]
    fn custom_field_names() {
        let fields = ResponseFields {
            access_token: "accessToken".into(),
            expires_in: "expiresIn".into(),
            ..Default::default()
        };
        let set =
            parse_token_response(br#"{"accessToken":"x","expiresIn":5}"#, None, &fields).unwrap();
        assert_eq!(set.access_token.expose(), "x");
        assert_eq!(set.expires_in, Some(5));
    }

    fn jwt_with_exp(exp: i64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(r#"{"alg":"none"}"#),
            b64.encode(format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn expiry_prefers_expires_in_then_jwt_then_default() {
        let default = Duration::from_secs(3600);
        let mut set = parse(r#"{"access_token":"opaque","expires_in":60}"#).unwrap();
        assert_eq!(
            expires_at_ms(&set, 1_000, default),
            (61_000, LifetimeSource::ExpiresIn)
        );
        set.expires_in = None;
        assert_eq!(
            expires_at_ms(&set, 1_000, default),
            (3_601_000, LifetimeSource::Default)
        );
        set.access_token = Secret::new(jwt_with_exp(1_700_000_000));
        assert_eq!(
            expires_at_ms(&set, 1_000, default),
            (1_700_000_000_000, LifetimeSource::JwtExp)
        );
        // exp in the past (clock skew): ignored.
        assert_eq!(
            expires_at_ms(&set, 1_800_000_000_000, default),
            (1_800_003_600_000, LifetimeSource::Default)
        );
    }

    #[test]
    fn an_earlier_jwt_exp_beats_expires_in() {
        let default = Duration::from_secs(3600);
        let mut set = parse(r#"{"access_token":"x","expires_in":3}"#).unwrap();
        set.access_token = Secret::new(jwt_with_exp(102));
        // Sent at 100.5 s: expires_in says 103.5 s, the JWT says 102 s.
        assert_eq!(
            expires_at_ms(&set, 100_500, default),
            (102_000, LifetimeSource::JwtExp)
        );
        set.access_token = Secret::new(jwt_with_exp(200));
        assert_eq!(
            expires_at_ms(&set, 100_500, default),
            (103_500, LifetimeSource::ExpiresIn)
        );
    }

    #[test]
    fn zero_expires_in_counts_as_absent() {
        let set = parse(r#"{"access_token":"x","expires_in":0}"#).unwrap();
        assert_eq!(set.expires_in, None);
    }

    #[test]
    fn huge_or_negative_lifetimes_do_not_overflow() {
        let default = Duration::from_secs(3600);
        let sent = 1_700_000_000_000;
        let longest = sent + MAX_LIFETIME_MS;
        for body in [
            format!(r#"{{"access_token":"x","expires_in":{}}}"#, u64::MAX),
            format!(r#"{{"access_token":"x","expires_in":{}}}"#, i64::MAX),
            r#"{"access_token":"x","expires_in":1e300}"#.to_string(),
            r#"{"access_token":"x","expires_in":"1e400"}"#.to_string(),
        ] {
            let set = parse(&body).unwrap();
            assert_eq!(
                expires_at_ms(&set, sent, default),
                (longest, LifetimeSource::ExpiresIn),
                "{body}"
            );
            assert_eq!(expires_at_ms(&set, i64::MAX, default).0, i64::MAX);
        }
        // Negative: as absent, so the rotated refresh token is kept.
        let set = parse(r#"{"access_token":"x","expires_in":-5,"refresh_token":"r"}"#).unwrap();
        assert_eq!(set.expires_in, None);
        assert!(set.refresh_token.is_some());
        let set = parse(r#"{"access_token":"x","refresh_expires_in":-1.5}"#).unwrap();
        assert_eq!(set.refresh_expires_in, None);
        // A JWT `exp` far in the future, and the default lifetime, are cut too.
        let mut set = parse(r#"{"access_token":"x"}"#).unwrap();
        set.access_token = Secret::new(jwt_with_exp(i64::MAX));
        assert_eq!(
            expires_at_ms(&set, sent, default),
            (longest, LifetimeSource::JwtExp)
        );
        set.access_token = Secret::new("opaque");
        assert_eq!(expires_at_ms(&set, sent, Duration::MAX).0, longest);
        assert_eq!(after_secs(i64::MAX - 1, 10), i64::MAX);
        assert_eq!(after_secs(0, u64::MAX), MAX_LIFETIME_MS);
    }
}
