//! The authorization request of an interactive login (RFC 6749 §4.1.1 with
//! PKCE, RFC 7636 §4.3, from a native app, RFC 8252): where the browser is
//! sent back ([`Redirect`]), the provider's extra parameters ([`Login`]),
//! and [`authorization_url`], which renders the URL the browser opens
//! (pure, so tests check it whole). The daemon builds it because only it
//! knows the client id, scope and extra parameters; the CLI brings the
//! redirect URI it listens on, the `state` and the challenge, and keeps the
//! verifier.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

use super::Endpoint;

/// Parameters of the authorization request that tokend sends itself, which
/// `[providers.NAME.authorize]` may therefore not set (`scope` has its own
/// key).
pub(crate) const RESERVED_AUTHORIZE_PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
];

/// Length of an S256 `code_challenge`: base64url of 32 bytes, unpadded.
const CHALLENGE_LEN: usize = 43;

/// Longest `state` accepted: the CLI sends 43 characters; a little room for
/// other clients, none for a request that would not fit in a URL.
const MAX_STATE_LEN: usize = 256;

/// The loopback host of the redirect URI (RFC 8252 §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedirectHost {
    /// `127.0.0.1`, the RFC's recommendation.
    Ipv4,
    /// `localhost`, for providers that accept nothing else (Microsoft).
    Localhost,
    /// `[::1]`.
    Ipv6,
}

impl RedirectHost {
    /// The host as the configuration and the redirect URI write it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RedirectHost::Ipv4 => "127.0.0.1",
            RedirectHost::Localhost => "localhost",
            RedirectHost::Ipv6 => "[::1]",
        }
    }

    /// The host a `redirect_host` value names (`::1` without brackets too).
    pub(crate) fn from_name(name: &str) -> Option<RedirectHost> {
        match name {
            "127.0.0.1" => Some(RedirectHost::Ipv4),
            "localhost" => Some(RedirectHost::Localhost),
            "[::1]" | "::1" => Some(RedirectHost::Ipv6),
            _ => None,
        }
    }

    /// The address to listen on: `localhost` listens on 127.0.0.1.
    pub(crate) fn ip(self) -> IpAddr {
        match self {
            RedirectHost::Ipv4 | RedirectHost::Localhost => IpAddr::V4(Ipv4Addr::LOCALHOST),
            RedirectHost::Ipv6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }
}

/// Where the browser is sent back: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Redirect {
    /// The loopback host.
    pub(crate) host: RedirectHost,
    /// A fixed port, or 0 for whatever free port the CLI gets.
    pub(crate) port: u16,
    /// The path, beginning with `/`.
    pub(crate) path: String,
}

impl Redirect {
    /// The redirect URI for `port`.
    pub(crate) fn uri(&self, port: u16) -> String {
        format!("http://{}:{port}{}", self.host.as_str(), self.path)
    }

    /// Whether `uri` is this redirect, on its fixed port if it has one.
    fn check(&self, uri: &str) -> Result<(), AuthorizeError> {
        let bad = |why: &str| AuthorizeError::RedirectUri(format!("`{uri}` {why}"));
        let url = Url::parse(uri).map_err(|e| bad(&format!("is not a URL ({e})")))?;
        let port = url.port_or_known_default().unwrap_or(0);
        let ours = self.uri(port);
        if url.scheme() != "http"
            || url.host_str() != Some(self.host.as_str())
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || url.path() != self.path
            || uri != ours
        {
            return Err(bad(&format!(
                "is not the provider's redirect, http://{}:PORT{}",
                self.host.as_str(),
                self.path
            )));
        }
        if port == 0 || (self.port != 0 && port != self.port) {
            return Err(bad(&format!(
                "must use port {} (redirect_port)",
                if self.port == 0 {
                    "1-65535".to_string()
                } else {
                    self.port.to_string()
                }
            )));
        }
        Ok(())
    }
}

/// A provider's login settings: its redirect and the extra parameters of
/// its authorization request (`access_type`, `prompt`, `audience`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Login {
    /// Where the browser is sent back.
    pub(crate) redirect: Redirect,
    /// Extra query parameters, after tokend's own, as configured.
    pub(crate) params: Vec<(String, String)>,
}

/// What the CLI brings to an authorization request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthorizationRequest<'a> {
    /// The loopback URI the CLI listens on.
    pub(crate) redirect_uri: &'a str,
    /// The CLI's random `state`.
    pub(crate) state: &'a str,
    /// `BASE64URL(SHA256(verifier))`; the verifier stays with the CLI.
    pub(crate) code_challenge: &'a str,
}

/// Why no authorization URL can be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthorizeError {
    /// The provider has no authorization endpoint.
    #[error("provider `{0}` has no authorization endpoint; set authorization_url (or issuer) under [providers.{0}]")]
    NoAuthorizationUrl(String),
    /// The provider has no client id to send.
    #[error("provider `{0}` has no client_id; set it under [providers.{0}] to log in")]
    NoClientId(String),
    /// The redirect URI is not the provider's loopback redirect.
    #[error("redirect_uri {0}")]
    RedirectUri(String),
    /// The `state` is missing or malformed.
    #[error("state must be 8-256 characters of A-Z, a-z, 0-9, '-', '.', '_' and '~'")]
    State,
    /// The challenge is not an S256 challenge.
    #[error("code_challenge must be the 43-character base64url S256 challenge (RFC 7636 §4.2)")]
    Challenge,
}

/// Whether every character of `s` is unreserved (RFC 3986 §2.3), the
/// alphabet of PKCE verifiers and of base64url.
fn unreserved(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The URL the browser opens: the provider's authorization endpoint (its
/// own query kept, RFC 6749 §3.1) with `response_type=code`, the client,
/// the redirect, the scope, the state, the S256 challenge and the extra
/// parameters.
pub(crate) fn authorization_url(
    e: &Endpoint,
    req: &AuthorizationRequest<'_>,
) -> Result<Url, AuthorizeError> {
    let mut url = e
        .authorization_url
        .clone()
        .ok_or_else(|| AuthorizeError::NoAuthorizationUrl(e.name.clone()))?;
    let client_id = e
        .client_id
        .as_deref()
        .ok_or_else(|| AuthorizeError::NoClientId(e.name.clone()))?;
    e.login.redirect.check(req.redirect_uri)?;
    if !(8..=MAX_STATE_LEN).contains(&req.state.len()) || !unreserved(req.state) {
        return Err(AuthorizeError::State);
    }
    if req.code_challenge.len() != CHALLENGE_LEN
        || !unreserved(req.code_challenge)
        || req.code_challenge.contains(['.', '~'])
    {
        return Err(AuthorizeError::Challenge);
    }
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", req.redirect_uri);
        if let Some(scope) = &e.scope {
            q.append_pair("scope", scope);
        }
        q.append_pair("state", req.state)
            .append_pair("code_challenge", req.code_challenge)
            .append_pair("code_challenge_method", "S256");
        for (k, v) in &e.login.params {
            q.append_pair(k, v);
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::request::tests::endpoint;

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn request<'a>(redirect_uri: &'a str, state: &'a str) -> AuthorizationRequest<'a> {
        AuthorizationRequest {
            redirect_uri,
            state,
            code_challenge: CHALLENGE,
        }
    }

    const PROVIDER: &str = r#"
        [providers.g]
        token_url = "https://oauth2.example/token"
        authorization_url = "https://accounts.example/o/oauth2/auth?hd=example.com"
        client_id = "the client"
        client_secret = "s"
        scope = "openid email"
        [providers.g.authorize]
        access_type = "offline"
        prompt = "consent"
        "#;

    #[test]
    fn the_url_carries_every_parameter_once_in_order() {
        let e = endpoint(PROVIDER);
        let url = authorization_url(
            &e,
            &request("http://127.0.0.1:49152/callback", "state-0123456789"),
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://accounts.example/o/oauth2/auth?hd=example.com&response_type=code\
             &client_id=the+client&redirect_uri=http%3A%2F%2F127.0.0.1%3A49152%2Fcallback\
             &scope=openid+email&state=state-0123456789\
             &code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM\
             &code_challenge_method=S256&access_type=offline&prompt=consent"
        );
    }

    #[test]
    fn only_the_configured_loopback_redirect_is_accepted() {
        let fixed = endpoint(
            "[providers.m]\ntoken_url = \"https://l.example/t\"\nauthorization_url = \"https://l.example/a\"\nclient_id = \"c\"\nclient_auth = \"none\"\nredirect_host = \"localhost\"\nredirect_port = 8400\nredirect_path = \"/oauth\"\n",
        );
        let state = "abcdefgh";
        assert!(authorization_url(&fixed, &request("http://localhost:8400/oauth", state)).is_ok());
        for bad in [
            "http://localhost:8401/oauth",
            "http://127.0.0.1:8400/oauth",
            "https://localhost:8400/oauth",
            "http://localhost:8400/oauth?x=1",
            "http://localhost:8400/oauth#f",
            "http://u@localhost:8400/oauth",
            "http://localhost:8400/oauth/",
            "http://localhost/oauth",
            "http://evil.example:8400/oauth",
            "http://localhost:08400/oauth",
            "not a url",
        ] {
            let err = authorization_url(&fixed, &request(bad, state)).unwrap_err();
            assert!(
                matches!(err, AuthorizeError::RedirectUri(_)),
                "{bad}: {err}"
            );
        }
        let any = endpoint(PROVIDER);
        assert!(authorization_url(&any, &request("http://127.0.0.1:1/callback", state)).is_ok());
        // Port 80 is written out, as the CLI writes it, though URLs elide it.
        assert!(authorization_url(&any, &request("http://127.0.0.1:80/callback", state)).is_ok());
        assert!(authorization_url(&any, &request("http://127.0.0.1:0/callback", state)).is_err());
        let v6 = endpoint(
            "[providers.m]\ntoken_url = \"https://l.example/t\"\nauthorization_url = \"https://l.example/a\"\nclient_id = \"c\"\nclient_auth = \"none\"\nredirect_host = \"::1\"\n",
        );
        assert!(authorization_url(&v6, &request("http://[::1]:5000/callback", state)).is_ok());
    }

    #[test]
    fn state_and_challenge_are_checked() {
        let e = endpoint(PROVIDER);
        let uri = "http://127.0.0.1:5000/callback";
        for bad in ["", "short", "has space x", "a&b=cdefgh", &"x".repeat(257)] {
            assert_eq!(
                authorization_url(&e, &request(uri, bad)),
                Err(AuthorizeError::State),
                "{bad:?}"
            );
        }
        for bad in [
            "",
            "plain",
            &CHALLENGE[1..],
            &format!("{}~", &CHALLENGE[1..]),
        ] {
            let req = AuthorizationRequest {
                redirect_uri: uri,
                state: "abcdefgh",
                code_challenge: bad,
            };
            assert_eq!(
                authorization_url(&e, &req),
                Err(AuthorizeError::Challenge),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_provider_without_an_authorization_endpoint_says_what_to_set() {
        let e = endpoint("[providers.d]\ntoken_url = \"https://d.example/t\"\nclient_id = \"i\"\nclient_secret = \"s\"\n");
        let err =
            authorization_url(&e, &request("http://127.0.0.1:5/callback", "abcdefgh")).unwrap_err();
        assert_eq!(err, AuthorizeError::NoAuthorizationUrl("d".into()));
        assert!(err.to_string().contains("set authorization_url"), "{err}");
    }

    #[test]
    fn login_settings_default_and_are_checked_at_their_lines() {
        let e = endpoint(PROVIDER);
        assert_eq!(
            e.login.redirect,
            Redirect {
                host: RedirectHost::Ipv4,
                port: 0,
                path: "/callback".into()
            }
        );
        let text = r#"[providers.x]
token_url = "https://x.example/t"
authorization_url = "http://x.example/auth"
client_auth = "none"
redirect_host = "example.com"
redirect_port = 70000
redirect_path = "callback?x"
[providers.x.authorize]
state = "fixed"
response_type = "token"
scope = "a"
prompt = "consent"
max_age = 0
nested = { a = 1 }
[providers.y]
token_url = "https://y.example/t"
authorization_url = "https://y.example/a#frag"
client_id = "c"
client_auth = "none"
"#;
        let err = crate::config::parse_config(text).unwrap_err().to_string();
        for want in [
            "config:3: providers.x.authorization_url: plain http",
            "config:5: providers.x.redirect_host: `example.com` is not a loopback host",
            "config:6: providers.x.redirect_port",
            "config:7: providers.x.redirect_path: must begin with '/'",
            "config:9: providers.x.authorize.state: tokend sends this parameter itself",
            "config:10: providers.x.authorize.response_type: tokend sends",
            "config:11: providers.x.authorize.scope: tokend sends",
            "config:14: providers.x.authorize.nested: must be a string",
            "config:17: providers.y.authorization_url: must not have a #fragment",
        ] {
            assert!(err.contains(want), "{want} not in:\n{err}");
        }
        assert!(!err.contains("prompt") && !err.contains("max_age"), "{err}");
        let no_client = "[providers.z]\ntoken_url = \"https://z.example/t\"\nauthorization_url = \"https://z.example/a\"\nclient_auth = \"none\"\n";
        let err = crate::config::parse_config(no_client)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("providers.z.client_id: missing; logging in"),
            "{err}"
        );
    }
}
