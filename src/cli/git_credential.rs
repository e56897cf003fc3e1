//! `tokend git-credential get|store|erase`: git's credential-helper
//! protocol (git-credential(1)), so `git push` over HTTPS sends a
//! credential's current access token and nothing is ever stored in plain.
//!
//! The daemon maps git's host (and path) to a credential
//! (`GET /v1/git-credential`, from `git_hosts`), since the CLI may not read
//! the configuration; `--credential NAME` instead leaves the choice of
//! hosts to git's configuration and makes a plain token read. Either way
//! the credential's `readers` decide. The token goes to stdout, which git
//! reads, and nowhere else.

use std::io::{self, Read};
use std::process::ExitCode;

use hyper::Method;

use super::emit;
use crate::api::{ErrorKind, GitCredential, TokenResponse};
use crate::client::{path_segment, Client, ClientError};
use crate::config::DEFAULT_GIT_USERNAME;

/// More than any request git writes; a larger one is not git's.
const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// What git asked for, from the attributes it wrote on stdin.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Request {
    protocol: Option<String>,
    host: Option<String>,
    path: Option<String>,
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
                "path" => req.path = Some(value),
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

/// The answer to `get`: the attribute lines git reads back, with `user`
/// as the Basic username.
pub(crate) fn answer(
    req: &Request,
    token: &TokenResponse,
    user: &str,
) -> Result<String, GitCredentialError> {
    // Each attribute is one line: a newline in a value would add attributes
    // of its giver's choosing (a provider's token, a URL's username).
    if [user, token.access_token.as_str()]
        .iter()
        .any(|v| v.is_empty() || v.contains(['\n', '\r', '\0']))
    {
        return Err(GitCredentialError::Unprintable);
    }
    let mut out = String::new();
    if req.bearer() {
        out.push_str("capability[]=authtype\nauthtype=Bearer\n");
        out.push_str(&format!("credential={}\nephemeral=1\n", token.access_token));
    } else {
        out.push_str(&format!(
            "username={user}\npassword={}\n",
            token.access_token
        ));
    }
    if token.expires_at > 0 {
        out.push_str(&format!("password_expiry_utc={}\n", token.expires_at));
    }
    Ok(out)
}

/// Why `get` gives git no credential.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GitCredentialError {
    #[error("the username or token is empty or holds a line break, which git's credential protocol cannot carry; check the credential with `tokend get --json`")]
    Unprintable,
    #[error("credential `{name}` holds a {kind} token, which git cannot send; map a Bearer credential to this host")]
    NotBearer { name: String, kind: String },
}

/// `tokend git-credential`'s options.
pub(crate) struct Options {
    pub(crate) credential: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) min_valid: Option<u64>,
}

/// Runs one helper operation. Every operation but `get` is accepted and
/// ignored: tokend never stores what git offers, and the protocol says a
/// helper ignores operations it does not know.
pub(crate) fn run(client: &Client, operation: &str, opts: Options) -> anyhow::Result<ExitCode> {
    let mut input = Vec::new();
    // Read all git writes, so that it never meets a closed pipe.
    io::stdin().take(MAX_INPUT_BYTES).read_to_end(&mut input)?;
    let input = String::from_utf8_lossy(&input);
    if operation != "get" {
        return Ok(ExitCode::SUCCESS);
    }
    let req = Request::parse(&input);
    let (Some(host), true) = (req.host.as_deref(), req.secure()) else {
        // Not ours to answer: git goes on to its next helper.
        return Ok(ExitCode::SUCCESS);
    };
    let (token, mapped_user) = match &opts.credential {
        Some(name) => {
            let mut path = format!("/v1/tokens/{}", path_segment(name));
            if let Some(secs) = opts.min_valid {
                path.push_str(&format!("?min_valid={secs}"));
            }
            let token: TokenResponse = client.call_blocking(Method::GET, &path, None::<&()>)?;
            (token, None)
        }
        None => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("host", host);
            if let Some(p) = &req.path {
                query.append_pair("path", p);
            }
            if let Some(secs) = opts.min_valid {
                query.append_pair("min_valid", &secs.to_string());
            }
            let path = format!("/v1/git-credential?{}", query.finish());
            match client.call_blocking::<GitCredential>(Method::GET, &path, None::<&()>) {
                Ok(found) => (found.token, Some(found.username)),
                // An unmapped host: silence, so git asks its next helper.
                Err(ClientError::Api { body, .. }) if body.error == ErrorKind::NotFound => {
                    return Ok(ExitCode::SUCCESS)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if !token.token_type.eq_ignore_ascii_case("bearer") {
        return Err(GitCredentialError::NotBearer {
            name: token.name,
            kind: token.token_type,
        }
        .into());
    }
    // `--username` first, then the URL's, then the mapping's.
    let user = opts
        .username
        .as_deref()
        .or(req.username.as_deref())
        .or(mapped_user.as_deref())
        .unwrap_or(DEFAULT_GIT_USERNAME);
    let lines = answer(&req, &token, user)?;
    emit(&lines)?;
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
    fn a_line_break_in_a_value_gives_git_nothing() {
        let mut bad = token();
        bad.access_token = "tok\nusername=evil".into();
        let req = Request::parse("protocol=https\nhost=h\n");
        assert!(answer(&req, &bad, "u").is_err());
        assert!(answer(&req, &token(), "a\rb").is_err());
        assert!(answer(&req, &token(), "").is_err());
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
            answer(&basic, &token(), "oauth2").unwrap(),
            "username=oauth2\npassword=tok\npassword_expiry_utc=1900000000\n"
        );
        let basic_only = Request::parse(
            "protocol=https\nhost=h\ncapability[]=authtype\nwwwauth[]=Basic realm=x\n",
        );
        assert!(answer(&basic_only, &token(), "u")
            .unwrap()
            .starts_with("username="));
        let bearer = Request::parse(
            "protocol=https\nhost=h\ncapability[]=authtype\nwwwauth[]=Basic realm=x\nwwwauth[]=Bearer realm=y\n",
        );
        assert_eq!(
            answer(&bearer, &token(), "u").unwrap(),
            "capability[]=authtype\nauthtype=Bearer\ncredential=tok\nephemeral=1\npassword_expiry_utc=1900000000\n"
        );
    }
}
