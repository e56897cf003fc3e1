//! The commands that talk to the daemon over its socket (and
//! `check-config`), and how their answers are printed: the status table,
//! durations for humans, and the exit code of each outcome.

use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use hyper::Method;

use super::emit;
use crate::api::{
    CredentialState, CredentialStatus, ErrorKind, ExchangeCode, GrantType, LoginState, LoginStatus,
    PutCredential, Removed, Revocation, TokenResponse,
};
use crate::client::{path_segment, Client, ClientError};
use crate::config::{ConfigError, ProviderConfig};
use crate::daemon::{self, DaemonOptions};
use crate::paths;
use crate::store;
use crate::token::{now_ms, Secret};

/// `tokend exchange`, with the body from [`exchange_body`].
pub(super) fn exchange(
    client: &Client,
    name: &str,
    body: &ExchangeCode,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/credentials/{}/exchange", path_segment(name));
    let st: CredentialStatus = client.call_blocking(Method::POST, &path, Some(body))?;
    report_added(&st, "created")
}

/// `tokend refresh`.
pub(super) fn refresh(client: &Client, name: &str) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/credentials/{}/refresh", path_segment(name));
    let st: CredentialStatus = client.call_blocking(Method::POST, &path, None::<&()>)?;
    outln!(
        "{}: refreshed, expires in {}",
        st.name,
        human_in(st.expires_in)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `tokend remove`.
pub(super) fn remove(
    client: &Client,
    name: &str,
    revoke: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let query = match (revoke, force) {
        (false, _) => "",
        (true, false) => "?revoke=true",
        (true, true) => "?revoke=true&force=true",
    };
    let path = format!("/v1/credentials/{}{query}", path_segment(name));
    let removed: Removed = client.call_blocking(Method::DELETE, &path, None::<&()>)?;
    match removed.revocation {
        Revocation::Revoked => outln!("{name}: token revoked at the provider; removed")?,
        Revocation::NothingToRevoke => outln!("{name}: held no token to revoke; removed")?,
        Revocation::Failed => {
            outln!("{name}: removed")?;
            errln!(
                "warning: {name}: {}; the grant may still be live at the provider",
                removed
                    .revocation_error
                    .as_deref()
                    .unwrap_or("revocation failed")
            );
            // Asked for and forced: removed, but the revocation did not happen.
            if revoke {
                return Ok(ExitCode::from(1));
            }
        }
        Revocation::NotRequested | Revocation::Other => outln!("{name}: removed")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `tokend get`'s exit status when the credential needs re-authorization
/// and its token is withheld (`on_invalid_grant = "withhold"`).
pub(super) const NEEDS_REAUTH_EXIT: u8 = 3;

pub(super) fn get(
    client: &Client,
    name: &str,
    min_valid: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut path = format!("/v1/tokens/{}", path_segment(name));
    if let Some(secs) = min_valid {
        path.push_str(&format!("?min_valid={secs}"));
    }
    let token: TokenResponse = match client.call_blocking(Method::GET, &path, None::<&()>) {
        Ok(token) => token,
        // Its own exit code, so a script can tell a dead grant (a human must
        // act) from a passing failure.
        Err(e) if is_needs_reauth(&e) => {
            errln!("tokend: {e:#}");
            return Ok(ExitCode::from(NEEDS_REAUTH_EXIT));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(warning) = &token.warning {
        errln!("tokend: warning: {warning}");
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&token)?)?;
    } else {
        outln!("{}", token.access_token)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the daemon answered "needs re-authorization".
pub(super) fn is_needs_reauth(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { body, .. } if body.error == ErrorKind::NeedsReauth)
}

pub(super) fn status(client: &Client, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let list: Vec<CredentialStatus> = match name {
        Some(n) => {
            let path = format!("/v1/credentials/{}", path_segment(n));
            match client.call_blocking(Method::GET, &path, None::<&()>) {
                Ok(st) => vec![st],
                // A credential a device login is still getting.
                Err(e) if !json && is_not_found(&e) => {
                    let logins = unfinished_logins(client, Some(n));
                    if logins.is_empty() {
                        return Err(e.into());
                    }
                    emit(&logins)?;
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => client.call_blocking(Method::GET, "/v1/credentials", None::<&()>)?,
    };
    if json {
        let out = match name {
            Some(_) => serde_json::to_string_pretty(&list[0])?,
            None => serde_json::to_string_pretty(&list)?,
        };
        outln!("{out}")?;
    } else if list.is_empty() {
        outln!("no credentials; add one with `tokend add NAME --provider P`")?;
        emit(&unfinished_logins(client, name))?;
    } else {
        emit(&status_table(&list))?;
        emit(&unfinished_logins(client, name))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the daemon answered "not found".
fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { body, .. } if body.error == ErrorKind::NotFound)
}

/// One line per device login (of `name`, or all) that is pending or
/// failed, for an administrator; nothing for anyone else, who may not see
/// them.
fn unfinished_logins(client: &Client, name: Option<&str>) -> String {
    let logins: Vec<LoginStatus> = client
        .call_blocking(Method::GET, "/v1/logins", None::<&()>)
        .unwrap_or_default();
    let mut out = String::new();
    for l in logins.iter().filter(|l| name.is_none_or(|n| n == l.name)) {
        match l.state {
            LoginState::Pending => out.push_str(&format!(
                "device login {} (provider {}): pending, enter {} at {}, expires in {}\n",
                l.name,
                l.provider,
                l.user_code,
                l.verification_uri,
                human(l.expires_in.max(0))
            )),
            LoginState::Failed => out.push_str(&format!(
                "device login {} (provider {}): failed: {}\n",
                l.name,
                l.provider,
                l.reason.as_deref().unwrap_or("no reason recorded")
            )),
            LoginState::Succeeded => {}
        }
    }
    out
}

/// Renders the status table.
fn status_table(list: &[CredentialStatus]) -> String {
    let header = [
        "NAME",
        "PROVIDER",
        "STATE",
        "EXPIRES IN",
        "LAST REFRESH",
        "LAST ERROR",
    ];
    let now = now_ms() / 1000;
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.provider.clone(),
                s.state.to_string(),
                human_in(s.expires_in),
                s.last_refresh_at
                    .map_or("never".into(), |t| format!("{} ago", human(now - t))),
                s.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

fn human_in(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 0 => format!("expired {} ago", human(-s)),
        Some(s) => human(s),
    }
}

pub(super) fn human(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub(super) fn add(
    client: &Client,
    name: &str,
    provider: String,
    file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let token = match file {
        Some(path) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                errln!("paste the refresh token, then press Enter and Ctrl-D:");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the refresh token from stdin")?;
            s
        }
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("no refresh token given: pipe it on stdin or use --refresh-token-file");
    }
    let body = PutCredential {
        provider,
        grant: GrantType::RefreshToken,
        params: BTreeMap::new(),
        refresh_token: token.to_string(),
        access_token: None,
        expires_in: None,
        scope: None,
    };
    let path = format!("/v1/credentials/{}", path_segment(name));
    let st: CredentialStatus = client.call_blocking(Method::PUT, &path, Some(&body))?;
    report_added(&st, "added")
}

/// `tokend add --client-credentials`: a credential with no refresh token,
/// which the daemon acquires at once and again before each expiry.
pub(super) fn add_client_credentials(
    client: &Client,
    name: &str,
    provider: String,
    scope: Option<String>,
    params: &[String],
) -> anyhow::Result<ExitCode> {
    let mut fields = BTreeMap::new();
    for p in params {
        let Some((k, v)) = p.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!("--param {p}: give KEY=VALUE, e.g. --param audience=https://api.example");
        };
        fields.insert(k.to_string(), v.to_string());
    }
    let body = PutCredential {
        provider,
        grant: GrantType::ClientCredentials,
        refresh_token: String::new(),
        params: fields,
        access_token: None,
        expires_in: None,
        scope,
    };
    let path = format!("/v1/credentials/{}", path_segment(name));
    let st: CredentialStatus = client.call_blocking(Method::PUT, &path, Some(&body))?;
    report_added(&st, "added")
}

pub(super) fn report_added(st: &CredentialStatus, verb: &str) -> anyhow::Result<ExitCode> {
    let usable = st.state == CredentialState::Active && st.expires_in.is_some_and(|s| s > 0);
    if usable {
        outln!(
            "{}: {verb} (provider {}), access token expires in {}",
            st.name,
            st.provider,
            human_in(st.expires_in)
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        errln!(
            "tokend: {}: stored, but no token yet: {} ({})",
            st.name,
            st.state,
            st.last_error.as_deref().unwrap_or("no error recorded")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The body of `tokend exchange`, with the code and verifier from
/// [`exchange_secrets`].
pub(super) fn exchange_body(
    provider: String,
    code: Option<Secret>,
    redirect_uri: String,
    code_verifier: Option<Secret>,
) -> anyhow::Result<ExchangeCode> {
    let (code, code_verifier) = exchange_secrets(code, code_verifier)?;
    Ok(ExchangeCode {
        provider,
        code: code.expose().to_string(),
        redirect_uri,
        code_verifier: code_verifier.map(|v| v.expose().to_string()),
    })
}

/// The code and verifier of `tokend exchange`: from the options, else from
/// stdin, the code on the first line and the verifier on the second.
fn exchange_secrets(
    code: Option<Secret>,
    verifier: Option<Secret>,
) -> anyhow::Result<(Secret, Option<Secret>)> {
    if let Some(code) = code {
        return Ok((code, verifier));
    }
    if io::stdin().is_terminal() {
        errln!("paste the authorization code, and on a second line the PKCE code verifier if the authorization used PKCE, then press Enter and Ctrl-D:");
    }
    let mut text = String::new();
    io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the authorization code from stdin")?;
    let (code, from_stdin) = split_code_input(&text)?;
    match (from_stdin, verifier) {
        (Some(_), Some(_)) => {
            bail!("two PKCE code verifiers given, on stdin and with --code-verifier; give one")
        }
        (v, given) => Ok((code, v.or(given))),
    }
}

/// Splits `tokend exchange`'s stdin: the code, then the verifier if present.
fn split_code_input(text: &str) -> anyhow::Result<(Secret, Option<Secret>)> {
    let mut lines = text.lines().map(str::trim);
    let code = lines.next().unwrap_or_default();
    let verifier = lines.next().filter(|v| !v.is_empty());
    if code.is_empty() {
        bail!("no authorization code given: pipe it on stdin (the PKCE verifier, if any, on a second line) or use --code");
    }
    if lines.any(|l| !l.is_empty()) {
        bail!("stdin holds more than two lines: give the authorization code on the first and the PKCE code verifier, if any, on the second");
    }
    Ok((Secret::new(code), verifier.map(Secret::new)))
}

pub(super) fn check_config(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let path = file.unwrap_or_else(paths::default_config);
    // The daemon's own loading, file checks included: what passes here, the
    // daemon accepts.
    let options = DaemonOptions {
        config: Some(path.clone()),
        ..DaemonOptions::default()
    };
    match daemon::load(&options) {
        Ok((cfg, _)) => {
            let names: Vec<_> = cfg.providers.keys().map(String::as_str).collect();
            outln!(
                "{}: ok, {} provider(s){}{}",
                path.display(),
                names.len(),
                if names.is_empty() { "" } else { ": " },
                names.join(", ")
            )?;
            outln!(
                "  metrics: GET /metrics on the socket (administrators), expiry series for up to {} credential(s)",
                cfg.daemon.metrics_credential_limit
            )?;
            if let Some(addr) = cfg.daemon.metrics_listen {
                outln!("  metrics: also on http://{addr}/metrics for any local user, without credential names")?;
            }
            for (name, provider) in &cfg.providers {
                outln!("  provider {name}: {}", provider.endpoint.describe_auth())?;
                if let Some(line) = login_line(provider) {
                    outln!("  provider {name}: {line}")?;
                }
                if let Some(url) = &provider.endpoint.device_authorization_url {
                    outln!("  provider {name}: device authorization at {url}")?;
                }
                if provider.endpoint.dpop {
                    outln!("  provider {name}: DPoP-bound tokens (ES256, one key per credential)")?;
                }
            }
            let database = daemon::database(None, &cfg);
            match &database {
                store::Location::File(path) => outln!("  database: {} (SQLite)", path.display())?,
                store::Location::Postgres(pg) => outln!("  database: {}", pg.describe())?,
            }
            if cfg.providers.values().any(|p| {
                p.endpoint.issuer.is_some()
                    || p.endpoint.revocation_url.is_some()
                    || p.revoke_on_remove
            }) {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start the async runtime")?;
                for line in runtime.block_on(crate::discovery::check_lines(&cfg, &database)) {
                    outln!("{line}")?;
                }
            }
            for hook in cfg.hooks.iter() {
                outln!("  hook: {}", hook.describe())?;
            }
            for (name, declared) in &cfg.declared {
                outln!(
                    "  credential {name}: {} from provider {}",
                    declared.grant.kind().as_str(),
                    declared.provider
                )?;
            }
            for (name, sinks) in &cfg.sinks {
                for sink in sinks.iter() {
                    outln!("  credential {name}: {}", sink.describe())?;
                }
            }
            for git in cfg.git_hosts.iter() {
                outln!(
                    "  credential {}: git host {} (username {})",
                    git.credential,
                    git.pattern(),
                    git.username
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(ConfigError::Invalid(errors)) => {
                errln!("{errors}");
                errln!("{}: {} problem(s)", path.display(), errors.problems.len());
                Ok(ExitCode::from(2))
            }
            _ => Err(e),
        },
    }
}

/// What `check-config` says of a provider one may log in to.
fn login_line(provider: &ProviderConfig) -> Option<String> {
    let e = &provider.endpoint;
    // With an issuer, the authorization endpoint may come from its metadata.
    let url = match (&e.authorization_url, &e.issuer) {
        (Some(url), _) => url.to_string(),
        (None, Some(_)) => "the endpoint of the issuer's metadata".to_string(),
        (None, None) => return None,
    };
    let redirect = &e.login.redirect;
    let port = match redirect.port {
        0 => "PORT".to_string(),
        port => port.to_string(),
    };
    let mut line = format!(
        "login at {url}, redirect http://{}:{port}{}",
        redirect.host.as_str(),
        redirect.path
    );
    if !e.login.params.is_empty() {
        let params: Vec<String> = e
            .login
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        line.push_str(&format!(", authorize params {}", params.join(" ")));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_stdin_holds_the_code_then_the_verifier() {
        let (code, verifier) = split_code_input("-tABC\n").unwrap();
        assert_eq!((code.expose(), verifier), ("-tABC", None));
        let (code, verifier) = split_code_input("-tABC\r\n-v~.\n\n").unwrap();
        assert_eq!(
            (code.expose(), verifier.as_ref().map(Secret::expose)),
            ("-tABC", Some("-v~."))
        );
        for bad in ["", "\n", "a\nb\nc\n", "a\n\nc"] {
            assert!(split_code_input(bad).is_err(), "{bad:?}");
        }
    }
}
