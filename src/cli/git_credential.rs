//! `tokend git-credential NAME get|store|erase`: git's credential-helper
//! protocol (git-credential(1)), so `git push` over HTTPS sends a
//! credential's current access token and nothing is ever stored in plain.
//!
//! git picks the helper by URL (`credential.https://host/path.helper`), so
//! the host-to-credential mapping lives in git's configuration and the
//! daemon only answers a normal token read, under the credential's
//! `readers`. The token goes to stdout, which git reads, and nowhere else.

use std::io::{self, Read};
use std::process::ExitCode;

use hyper::Method;

use super::emit;
use crate::api::TokenResponse;
use crate::client::{path_segment, Client};

/// More than any request git writes; a larger one is not git's.
const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// Username sent with the token when neither git nor `--username` gives
/// one; GitLab takes any name with an OAuth2 token, GitHub wants
/// `x-access-token`.
pub(crate) const DEFAULT_USERNAME: &str = "oauth2";

/// What git asked for, from the attributes it wrote on stdin.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Request {
    protocol: Option<String>,
    host: Option<String>,
    username: Option<String>,
    /// `capability[]=authtype`: git (≥ 2.46) takes `authtype` + `credential`.
    authtype: bool,
    /// The server's `WWW-Authenticate` challenges, as git passed them on.
    wwwauth: Vec<String>,
}

impl Request {
    /// Reads `key=value` lines up to a blank line or the end; unknown keys
    /// are ignored, as the protocol asks of a helper.
    pub(crate) fn parse(input: &str) -> Self {
        let mut req = Request::default();
        for line in input.lines() {
            if line.is_empty() {
                break;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.to_string();
            match key {
                "protocol" => req.protocol = Some(value),
                "host" => req.host = Some(value),
                "username" => req.username = Some(value),
                "capability[]" if value == "authtype" => req.authtype = true,
                "wwwauth[]" => req.wwwauth.push(value),
                _ => {}
            }
        }
        req
    }

    /// Whether a token may be sent: over https, or over http only to this
    /// machine's loopback (a token in clear on a network is a token given
    /// away).
    fn secure(&self) -> bool {
        match self.protocol.as_deref() {
            Some("https") => true,
            Some("http") => self.host.as_deref().is_some_and(is_loopback),
            _ => false,
        }
    }

    /// Whether to answer with a Bearer credential rather than Basic: git
    /// must understand it, and the server must accept Bearer, if it said
    /// what it accepts.
    fn bearer(&self) -> bool {
        self.authtype
            && (self.wwwauth.is_empty()
                || self.wwwauth.iter().any(|c| {
                    c.split_whitespace()
                        .next()
                        .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
                }))
    }
}

/// `host` or `host:port` names a loopback address.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The answer to `get`: the attribute lines git reads back.
pub(crate) fn answer(req: &Request, token: &TokenResponse, username: Option<&str>) -> String {
    let mut out = String::new();
    if req.bearer() {
        out.push_str("capability[]=authtype\nauthtype=Bearer\n");
        out.push_str(&format!("credential={}\nephemeral=1\n", token.access_token));
    } else {
        let user = username
            .or(req.username.as_deref())
            .unwrap_or(DEFAULT_USERNAME);
        out.push_str(&format!(
            "username={user}\npassword={}\n",
            token.access_token
        ));
    }
    if token.expires_at > 0 {
        out.push_str(&format!("password_expiry_utc={}\n", token.expires_at));
    }
    out
}

/// Runs one helper operation. Every operation but `get` is accepted and
/// ignored: tokend never stores what git offers, and the protocol says a
/// helper ignores operations it does not know.
pub(crate) fn run(
    client: &Client,
    name: &str,
    operation: &str,
    username: Option<&str>,
    min_valid: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut input = String::new();
    // Read all git writes, so that it never meets a closed pipe.
    io::stdin()
        .take(MAX_INPUT_BYTES)
        .read_to_string(&mut input)?;
    if operation != "get" {
        return Ok(ExitCode::SUCCESS);
    }
    let req = Request::parse(&input);
    if !req.secure() {
        // Not ours to answer: git goes on to its next helper.
        return Ok(ExitCode::SUCCESS);
    }
    let mut path = format!("/v1/tokens/{}", path_segment(name));
    if let Some(secs) = min_valid {
        path.push_str(&format!("?min_valid={secs}"));
    }
    let token: TokenResponse = client.call_blocking(Method::GET, &path, None::<&()>)?;
    if !token.token_type.eq_ignore_ascii_case("bearer") {
        anyhow::bail!(
            "credential `{name}` holds a {} token, which git cannot send; use a Bearer credential",
            token.token_type
        );
    }
    emit(&answer(&req, &token, username))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CredentialState;

    fn token() -> TokenResponse {
        TokenResponse {
            name: "c".into(),
            access_token: "tok".into(),
            token_type: "Bearer".into(),
            expires_at: 1_900_000_000,
            expires_in: 60,
            scope: None,
            id_token: None,
            state: CredentialState::Active,
            warning: None,
        }
    }

    #[test]
    fn parse_stops_at_the_blank_line_and_ignores_unknown_keys() {
        let req = Request::parse(
            "protocol=https\nhost=example.com\npath=a/b\nfoo=bar\ncapability[]=authtype\nwwwauth[]=Basic realm=\"x\"\n\nhost=evil\n",
        );
        assert_eq!(req.host.as_deref(), Some("example.com"));
        assert!(req.authtype);
        assert_eq!(req.wwwauth, ["Basic realm=\"x\""]);
    }

    #[test]
    fn only_https_or_loopback_http_is_answered() {
        for (input, want) in [
            ("protocol=https\nhost=example.com\n", true),
            ("protocol=http\nhost=127.0.0.1:8080\n", true),
            ("protocol=http\nhost=[::1]:8080\n", true),
            ("protocol=http\nhost=localhost\n", true),
            ("protocol=http\nhost=example.com\n", false),
            ("protocol=http\nhost=127.0.0.1.example.com\n", false),
            ("protocol=ssh\nhost=example.com\n", false),
            ("host=example.com\n", false),
        ] {
            assert_eq!(Request::parse(input).secure(), want, "{input}");
        }
    }

    #[test]
    fn basic_unless_git_and_the_server_take_bearer() {
        let basic = Request::parse("protocol=https\nhost=h\n");
        assert_eq!(
            answer(&basic, &token(), None),
            "username=oauth2\npassword=tok\npassword_expiry_utc=1900000000\n"
        );
        let named = Request::parse("protocol=https\nhost=h\nusername=me\n");
        assert!(answer(&named, &token(), None).starts_with("username=me\n"));
        assert!(answer(&named, &token(), Some("x-access-token"))
            .starts_with("username=x-access-token\n"));
        let basic_only = Request::parse(
            "protocol=https\nhost=h\ncapability[]=authtype\nwwwauth[]=Basic realm=x\n",
        );
        assert!(answer(&basic_only, &token(), None).starts_with("username="));
        let bearer = Request::parse(
            "protocol=https\nhost=h\ncapability[]=authtype\nwwwauth[]=Basic realm=x\nwwwauth[]=Bearer realm=y\n",
        );
        assert_eq!(
            answer(&bearer, &token(), None),
            "capability[]=authtype\nauthtype=Bearer\ncredential=tok\nephemeral=1\npassword_expiry_utc=1900000000\n"
        );
    }
}
