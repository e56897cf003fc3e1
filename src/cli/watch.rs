//! `tokend watch NAME`: prints each new token of a credential as it comes
//! (one line each, flushed), from the daemon's event stream. State changes
//! go to stderr; the command ends with status 0 when the credential is
//! removed, and fails when the stream breaks off.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::emit;
use crate::api::{CredentialStatus, TokenResponse};
use crate::client::{path_segment, Client, Event};

/// The watch route of credential `name`.
pub(super) fn watch_path(name: &str) -> String {
    format!("/v1/tokens/{}/watch", path_segment(name))
}

pub(super) fn run(client: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut events = client.events_blocking(&watch_path(name))?;
    while let Some(event) = events.next_event()? {
        if print(&event, json)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    bail!("tokend ended the stream of `{name}` (is it shutting down?)")
}

/// Prints one event; says whether it was the last (the credential is gone).
fn print(event: &Event, json: bool) -> anyhow::Result<bool> {
    match event.event.as_str() {
        "token" => {
            let token: TokenResponse =
                serde_json::from_str(&event.data).context("unexpected token event from tokend")?;
            if let Some(warning) = &token.warning {
                errln!("tokend: warning: {warning}");
            }
            if json {
                emit(&format!("{}\n", serde_json::to_string(&token)?))?;
            } else {
                emit(&format!("{}\n", token.access_token))?;
            }
        }
        "state" => {
            let status: CredentialStatus =
                serde_json::from_str(&event.data).context("unexpected state event from tokend")?;
            let why = status
                .last_error
                .as_deref()
                .map_or(String::new(), |e| format!(": {e}"));
            errln!(
                "tokend: `{}` is now {}{why}",
                status.name,
                status.state.as_str()
            );
        }
        "removed" => {
            errln!("tokend: `{}` was removed", event.data);
            return Ok(true);
        }
        // Unknown events are for newer clients.
        _ => {}
    }
    Ok(false)
}
