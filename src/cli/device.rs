//! `tokend login --device`: asks the daemon to start a device login
//! (RFC 8628), shows the user code and where to enter it on stderr, then
//! waits for the daemon to report the outcome. The daemon does the polling,
//! so the command may go away (Ctrl-C, `--no-wait`) and the login goes on.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use hyper::{Method, StatusCode};

use super::commands::{human, report_added};
use crate::api::{CredentialStatus, LoginState, LoginStatus, StartDeviceLogin};
use crate::client::{path_segment, Client, ClientError};

/// How long the command waits when `--timeout` is not given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// How often the command asks the daemon how the login stands.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// `tokend login --device NAME --provider P [--timeout D] [--no-wait]`.
pub(super) fn run(
    client: &Client,
    name: &str,
    provider: String,
    timeout: Option<Duration>,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!("/v1/credentials/{}/device", path_segment(name));
    let login: LoginStatus =
        client.call_blocking(Method::POST, &path, Some(&StartDeviceLogin { provider }))?;
    show(&login);
    if no_wait {
        errln!(
            "the daemon polls the provider until the code expires in {}; see `tokend status`",
            human(login.expires_in.max(0))
        );
        return Ok(ExitCode::SUCCESS);
    }
    errln!("waiting for approval (Ctrl-C stops waiting; the daemon goes on polling until the code expires)");
    wait(client, name, timeout.unwrap_or(DEFAULT_TIMEOUT))
}

/// Prints what the user must do, on stderr.
fn show(login: &LoginStatus) {
    errln!(
        "to log in {} (provider {}), open {} and enter the code: {}",
        login.name,
        login.provider,
        login.verification_uri,
        login.user_code
    );
    if let Some(complete) = &login.verification_uri_complete {
        errln!("or open {complete}");
    }
    errln!("the code expires in {}", human(login.expires_in.max(0)));
}

/// Asks the daemon every second until the login ends or `timeout` passes.
fn wait(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let path = format!("/v1/logins/{}", path_segment(name));
    loop {
        std::thread::sleep(CHECK_EVERY);
        let login: LoginStatus = match client.call_blocking(Method::GET, &path, None::<&()>) {
            Ok(login) => login,
            Err(ClientError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {
                bail!("the device login for {name} was cancelled")
            }
            Err(e) => return Err(e.into()),
        };
        match login.state {
            LoginState::Pending if Instant::now() >= deadline => {
                errln!(
                    "tokend: {name}: not approved within {}; the daemon goes on polling until the code expires (see `tokend status`)",
                    humantime::format_duration(timeout)
                );
                return Ok(ExitCode::FAILURE);
            }
            LoginState::Pending => {}
            LoginState::Succeeded => {
                let path = format!("/v1/credentials/{}", path_segment(name));
                let st: CredentialStatus = client.call_blocking(Method::GET, &path, None::<&()>)?;
                return report_added(&st, "logged in");
            }
            LoginState::Failed => {
                errln!(
                    "tokend: {name}: device login failed: {}",
                    login.reason.as_deref().unwrap_or("no reason recorded")
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
}
