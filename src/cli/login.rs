//! `tokend login`: an interactive login with the authorization code grant
//! and PKCE from a native app (RFC 6749 §4.1, RFC 7636, RFC 8252). The CLI
//! runs as the user: it makes the verifier and the `state`, binds the
//! loopback listener, asks the daemon for the authorization URL (only the
//! daemon knows the client, the scope and the extra parameters), sends the
//! browser there, takes the one redirect back, checks it, and hands the code
//! and verifier to the daemon's exchange in a request body, never on argv.
//!
//! The pure parts (PKCE, the redirect's parameters) are functions with
//! their own tests; `loopback` is the listener and the browser's page. All
//! of it is blocking std I/O, like every other socket command.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::Method;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use loopback::{bind, page, respond, wait_for_redirect};

use super::commands::report_added;
use crate::api::{AuthorizeUrl, CredentialStatus, ExchangeCode, LoginSettings};
use crate::client::{path_segment, Client};
use crate::provider::RedirectHost;
use crate::token::{scrub, Secret};

mod loopback;

/// How long `tokend login` waits for the browser, unless `--timeout` says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest address read from stdin with `--paste`.
const MAX_PASTED: usize = 16 * 1024;
/// Longest provider text (`error_description`) shown.
const MAX_PROVIDER_TEXT: usize = 300;

/// What `tokend login` was asked.
#[derive(Debug)]
pub(super) struct LoginOptions {
    /// Credential name.
    pub(super) name: String,
    /// Provider name.
    pub(super) provider: String,
    /// Print the URL only.
    pub(super) no_browser: bool,
    /// No listener: read the address the browser ended at from stdin.
    pub(super) paste: bool,
    /// How long to wait for the browser.
    pub(super) timeout: Option<Duration>,
}

/// Why a login failed, for the message and the browser's page.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoginError {
    /// The redirect's `state` is not ours: a forged or stale redirect.
    #[error("the redirect's state does not match this login's (a stale browser tab, or a forged redirect); nothing was exchanged; run `tokend login` again")]
    StateMismatch,
    /// RFC 9207: the redirect names another issuer than the provider's.
    #[error("the redirect comes from issuer `{got}`, not the provider's `{want}` (a mix-up attack, or a wrong issuer setting); nothing was exchanged")]
    IssuerMismatch {
        /// The `iss` of the redirect.
        got: String,
        /// The provider's issuer.
        want: String,
    },
    /// The user (or the provider) refused.
    #[error("the provider refused the login: access_denied{0}; nothing was stored")]
    AccessDenied(String),
    /// Another OAuth error.
    #[error(
        "the provider answered the login with error `{code}`{description}; nothing was stored"
    )]
    Provider {
        /// The OAuth `error` code.
        code: String,
        /// `: ` and its description, if any.
        description: String,
    },
    /// The redirect is not one an authorization server sends.
    #[error("the redirect is malformed: {0}; nothing was exchanged")]
    Malformed(String),
}

/// PKCE (RFC 7636 §4.1): 32 random bytes as base64url, 43 characters.
fn new_verifier() -> Secret {
    Secret::new(random_token())
}

/// A random `state`: 32 bytes as base64url.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of `verifier` (RFC 7636 §4.2).
pub(super) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Compares without stopping at the first difference, so the time taken
/// tells nothing about how much of `state` a forger guessed.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Provider text made fit to show: scrubbed of the login's secrets, one
/// line of printable characters, bounded.
fn provider_text(text: &str, secrets: &[&str]) -> String {
    let clean: String = scrub(text, secrets)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(MAX_PROVIDER_TEXT) {
        Some((at, _)) => format!("{}…", &clean[..at]),
        None => clean,
    }
}

/// The authorization code of a redirect's query (RFC 6749 §4.1.2), once its
/// `state` is this login's and its `iss`, if any, the provider's (RFC 9207).
/// `secrets` are scrubbed from any provider text shown.
pub(super) fn parse_redirect(
    query: &str,
    state: &str,
    issuer: Option<&str>,
    secrets: &[&str],
) -> Result<Secret, LoginError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        // RFC 6749 §3.1: no parameter may appear more than once.
        if params.iter().any(|(seen, _)| *seen == k) {
            return Err(LoginError::Malformed(format!("`{k}` appears twice")));
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if !get("state").is_some_and(|got| same(got, state)) {
        return Err(LoginError::StateMismatch);
    }
    if let (Some(want), Some(got)) = (issuer, get("iss")) {
        if got != want {
            return Err(LoginError::IssuerMismatch {
                got: provider_text(got, secrets),
                want: want.to_string(),
            });
        }
    }
    if let Some(code) = get("error") {
        let description = get("error_description")
            .map(|d| format!(": {}", provider_text(d, secrets)))
            .unwrap_or_default();
        return Err(if code == "access_denied" {
            LoginError::AccessDenied(description)
        } else {
            LoginError::Provider {
                code: provider_text(code, secrets),
                description,
            }
        });
    }
    match get("code") {
        Some(code) if !code.is_empty() => Ok(Secret::new(code)),
        _ => Err(LoginError::Malformed(
            "it has neither `code` nor `error`".into(),
        )),
    }
}

/// The query of an address pasted from the browser, once it is the
/// redirect URI's (same scheme, host, port and path).
pub(super) fn pasted_query(pasted: &str, redirect_uri: &str) -> Result<String, LoginError> {
    let url = url::Url::parse(pasted.trim())
        .map_err(|e| LoginError::Malformed(format!("the pasted text is not an address ({e})")))?;
    let mut base = url.clone();
    base.set_query(None);
    base.set_fragment(None);
    if base.as_str() != redirect_uri {
        return Err(LoginError::Malformed(format!(
            "the pasted address does not begin with {redirect_uri}"
        )));
    }
    Ok(url.query().unwrap_or_default().to_string())
}

/// `tokend login NAME --provider P` (without `--device`).
pub(super) fn run(client: &Client, opts: LoginOptions) -> anyhow::Result<ExitCode> {
    let provider_path = format!("/v1/providers/{}", path_segment(&opts.provider));
    let settings: LoginSettings =
        client.call_blocking(Method::GET, &format!("{provider_path}/login"), None::<&()>)?;
    let Some(host) = RedirectHost::from_name(&settings.redirect_host) else {
        bail!(
            "the daemon gave redirect host `{}`, which is not a loopback host",
            settings.redirect_host
        );
    };
    let deadline = Instant::now() + opts.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let (listener, port) = if opts.paste {
        (None, paste_port(host, settings.redirect_port)?)
    } else {
        let listener = bind(host, &settings)?;
        let port = listener.local_addr()?.port();
        (Some(listener), port)
    };
    let redirect_uri = format!("http://{}:{port}{}", host.as_str(), settings.redirect_path);
    let verifier = new_verifier();
    let state = random_token();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("state", &state)
        .append_pair("code_challenge", &s256(verifier.expose()))
        .finish();
    let AuthorizeUrl { url } = client.call_blocking(
        Method::GET,
        &format!("{provider_path}/authorize?{query}"),
        None::<&()>,
    )?;
    errln!(
        "To log in to provider {}, open this address in a browser:\n\n    {url}\n",
        opts.provider
    );
    let secrets = [state.as_str(), verifier.expose()];
    let check = |q: &str| parse_redirect(q, &state, settings.issuer.as_deref(), &secrets);
    let Some(listener) = listener else {
        let query = read_pasted(&redirect_uri, deadline)?;
        let code = check(&query)?;
        return exchange(client, &opts, code, redirect_uri, verifier);
    };
    if !opts.no_browser && open_browser(&url) {
        errln!("(a browser was started; waiting for it to come back to {redirect_uri})");
    } else {
        errln!("waiting for the browser to come back to {redirect_uri}");
    }
    let (mut browser, query) = wait_for_redirect(&listener, &settings.redirect_path, deadline)?;
    drop(listener);
    let outcome = check(&query)
        .map_err(anyhow::Error::new)
        .and_then(|code| exchange(client, &opts, code, redirect_uri, verifier));
    let answer = match &outcome {
        Ok(_) => page(
            "Logged in",
            &format!(
                "tokend stored credential {}. You can close this tab.",
                opts.name
            ),
        ),
        Err(e) => page("Login failed", &format!("{e:#}")),
    };
    // The browser's page is a courtesy: the outcome is the command's.
    let _ = respond(&mut browser, "200 OK", &answer);
    outcome
}

/// Hands the code and verifier to the daemon (a request body, never argv).
fn exchange(
    client: &Client,
    opts: &LoginOptions,
    code: Secret,
    redirect_uri: String,
    verifier: Secret,
) -> anyhow::Result<ExitCode> {
    let body = ExchangeCode {
        provider: opts.provider.clone(),
        code: code.expose().to_string(),
        redirect_uri,
        code_verifier: Some(verifier.expose().to_string()),
    };
    let path = format!("/v1/credentials/{}/exchange", path_segment(&opts.name));
    let st: CredentialStatus = client.call_blocking(Method::POST, &path, Some(&body))?;
    report_added(&st, "logged in")
}

/// The port of a `--paste` redirect URI: the fixed one, else one free now
/// (nothing listens on it: the address is read back from the browser).
fn paste_port(host: RedirectHost, fixed: u16) -> anyhow::Result<u16> {
    if fixed != 0 {
        return Ok(fixed);
    }
    let probe = TcpListener::bind(SocketAddr::new(host.ip(), 0))
        .context("cannot find a free loopback port for the redirect URI")?;
    Ok(probe.local_addr()?.port())
}

/// Reads the address the browser ended at from stdin, by `deadline`.
fn read_pasted(redirect_uri: &str, deadline: Instant) -> anyhow::Result<String> {
    if io::stdin().is_terminal() {
        errln!("After logging in, the browser ends at an address beginning with {redirect_uri} (the page itself may fail to load).\nPaste that whole address here and press Enter:");
    }
    let (tx, rx) = mpsc::channel();
    // A blocking read cannot be given a deadline; the thread is left behind
    // if it passes, and the process exits.
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = io::stdin()
            .lock()
            .take(MAX_PASTED as u64)
            .read_line(&mut line);
        let _ = tx.send(read.map(|_| line));
    });
    let wait = deadline.saturating_duration_since(Instant::now());
    let line = match rx.recv_timeout(wait) {
        Ok(read) => read.context("cannot read the pasted address from stdin")?,
        Err(_) => bail!("no address was pasted within the timeout; run `tokend login` again"),
    };
    if line.trim().is_empty() {
        bail!("no address was pasted; run `tokend login --paste` again and paste the address the browser ended at");
    }
    Ok(pasted_query(&line, redirect_uri)?)
}

/// Starts a browser on `url`: `$BROWSER` if set, else `xdg-open` when there
/// is a display. Never through a shell; the URL is one argument (it holds
/// no secret). Whether one was started.
fn open_browser(url: &str) -> bool {
    let browser = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty());
    let has_display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    // `$BROWSER` may list several programs, separated by ':'; the first is
    // taken.
    let program = match &browser {
        Some(list) => list
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        None if has_display => "xdg-open".to_string(),
        None => return false,
    };
    let started = std::process::Command::new(&program)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match started {
        Ok(mut child) => {
            // Reaped in the background, so no zombie is left while waiting.
            std::thread::spawn(move || child.wait());
            true
        }
        Err(e) => {
            errln!("tokend: cannot start the browser `{program}`: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_of_the_rfc_7636_appendix_b_verifier() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_and_states_are_43_unreserved_characters_and_differ() {
        let (a, b) = (new_verifier(), new_verifier());
        for v in [a.expose(), b.expose()] {
            assert_eq!(v.len(), 43, "{v}");
            assert!(
                v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)),
                "{v}"
            );
        }
        assert_ne!(a.expose(), b.expose());
        assert_ne!(random_token(), random_token());
    }

    const STATE: &str = "the-state-0123456789";

    fn parse(query: &str) -> Result<Secret, LoginError> {
        parse_redirect(
            query,
            STATE,
            Some("https://issuer.example"),
            &["sekrit-verifier"],
        )
    }

    #[test]
    fn a_redirect_with_our_state_gives_its_code() {
        let code = parse("code=c%2Fd&state=the-state-0123456789").unwrap();
        assert_eq!(code.expose(), "c/d");
        let code = parse("state=the-state-0123456789&code=x&iss=https%3A%2F%2Fissuer.example");
        assert_eq!(code.unwrap().expose(), "x");
        // No issuer configured: an `iss` is not checked.
        let code = parse_redirect(
            "code=x&state=the-state-0123456789&iss=other",
            STATE,
            None,
            &[],
        );
        assert_eq!(code.unwrap().expose(), "x");
    }

    #[test]
    fn a_wrong_or_missing_state_is_refused_before_anything_else() {
        for q in [
            "code=x",
            "code=x&state=",
            "code=x&state=the-state-012345678",
            "code=x&state=the-state-01234567890",
            "error=access_denied&state=other",
        ] {
            assert!(matches!(parse(q), Err(LoginError::StateMismatch)), "{q}");
        }
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn errors_and_malformed_redirects_say_what_happened() {
        let denied =
            parse("error=access_denied&error_description=User+said+no&state=the-state-0123456789");
        let msg = denied.unwrap_err().to_string();
        assert!(msg.contains("access_denied: User said no"), "{msg}");
        let other = parse("error=server_error&error_description=oops+sekrit-verifier%0Aforged+line&state=the-state-0123456789");
        let msg = other.unwrap_err().to_string();
        assert!(
            msg.contains("`server_error`: oops <redacted sha256:"),
            "{msg}"
        );
        assert!(
            !msg.contains("sekrit-verifier") && !msg.contains('\n'),
            "{msg}"
        );
        let mixed = parse("code=x&state=the-state-0123456789&iss=https%3A%2F%2Fevil.example");
        assert!(matches!(mixed, Err(LoginError::IssuerMismatch { .. })));
        for q in [
            "state=the-state-0123456789",
            "state=the-state-0123456789&code=",
            "code=a&code=b&state=the-state-0123456789",
        ] {
            assert!(matches!(parse(q), Err(LoginError::Malformed(_))), "{q}");
        }
        let long = format!(
            "error=x&error_description={}&state={STATE}",
            "y".repeat(5000)
        );
        assert!(parse(&long).unwrap_err().to_string().len() < 600);
    }

    #[test]
    fn a_pasted_address_must_be_the_redirect() {
        let uri = "http://127.0.0.1:8400/callback";
        assert_eq!(
            pasted_query(" http://127.0.0.1:8400/callback?code=c&state=s\n", uri).unwrap(),
            "code=c&state=s"
        );
        for bad in [
            "code=c&state=s",
            "http://127.0.0.1:8401/callback?code=c",
            "https://127.0.0.1:8400/callback?code=c",
            "http://127.0.0.1:8400/other?code=c",
        ] {
            assert!(pasted_query(bad, uri).is_err(), "{bad}");
        }
    }
}
