//! `tokend get NAME --dpop METHOD URL`: a DPoP credential's token and a
//! fresh proof for one request, printed as the two header lines to send.

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::bail;
use hyper::Method;

use super::commands::{is_needs_reauth, NEEDS_REAUTH_EXIT};
use super::emit;
use crate::api::DpopTokenResponse;
use crate::client::{path_segment, Client};

/// Asks the daemon for the token of `name` and a proof for `request`
/// (method, URL), and prints `Authorization:` and `DPoP:` lines (or the
/// whole answer with `json`).
pub(super) fn get(
    client: &Client,
    name: &str,
    min_valid: Option<u64>,
    json: bool,
    request: &[String],
    nonce: Option<String>,
) -> anyhow::Result<ExitCode> {
    let [method, url] = request else {
        bail!("--dpop takes a method and a URL, e.g. --dpop GET https://api.example/x");
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("htm", method).append_pair("htu", url);
    if let Some(n) = &nonce {
        query.append_pair("nonce", n);
    }
    if let Some(secs) = min_valid {
        query.append_pair("min_valid", &secs.to_string());
    }
    let path = format!("/v1/tokens/{}/dpop?{}", path_segment(name), query.finish());
    let answer: DpopTokenResponse = match client.call_blocking(Method::GET, &path, None::<&()>) {
        Ok(answer) => answer,
        Err(e) if is_needs_reauth(&e) => {
            errln!("tokend: {e:#}");
            return Ok(ExitCode::from(NEEDS_REAUTH_EXIT));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(warning) = &answer.token.warning {
        errln!("tokend: warning: {warning}");
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?)?;
    } else {
        outln!(
            "Authorization: {} {}\nDPoP: {}",
            answer.token.token_type,
            answer.token.access_token,
            answer.dpop
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
