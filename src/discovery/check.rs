//! What `tokend check-config` says of discovery and revocation: each
//! provider's settings and, for one with an issuer, its metadata fetched now
//! or else the copy the daemon stored, saying which.

use std::time::Duration;

use super::describe;
use crate::config::Config;
use crate::provider::{Metadata, ProviderClient};
use crate::token::now_ms;

/// Longest `tokend check-config` waits for one issuer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What `tokend check-config` says of each provider's discovery and
/// revocation settings: for a provider with an issuer, its metadata fetched
/// now (within a short timeout) or else the copy stored in `database`
/// (read-only, beside a running daemon), saying which.
pub(crate) async fn check_lines(config: &Config, database: &crate::store::Location) -> Vec<String> {
    let client = match ProviderClient::new() {
        Ok(c) => c,
        Err(e) => return vec![format!("  cannot build the HTTP client: {e}")],
    };
    let mut lines = Vec::new();
    for (name, p) in &config.providers {
        let e = &p.endpoint;
        let mut settings = Vec::new();
        if let Some(url) = &e.revocation_url {
            settings.push(format!("revocation_url {url}"));
        }
        if p.revoke_on_remove {
            settings.push("revoke_on_remove".to_string());
        }
        let Some(issuer) = e.issuer.as_deref() else {
            if !settings.is_empty() {
                lines.push(format!("  provider {name}: {}", settings.join(", ")));
            }
            continue;
        };
        if let Some(d) = p.discovery {
            settings.push(format!(
                "discovery_refresh {}",
                humantime::format_duration(d.refresh)
            ));
        }
        lines.push(format!(
            "  provider {name}: issuer {issuer}; {}",
            settings.join(", ")
        ));
        let mut quick = e.clone();
        quick.request_timeout = quick.request_timeout.min(CHECK_TIMEOUT);
        let (metadata, whence) = match client.discover(&quick).await {
            Ok(f) => (Some(f.metadata), format!("fetched now from {}", f.url)),
            Err(err) => {
                match crate::store::read_metadata_offline(database, name).await {
                    Ok(Some(row)) if row.issuer == issuer => {
                        match Metadata::parse(row.document.as_bytes(), "the stored copy", issuer, e.allow_insecure_http) {
                        Ok(m) => (Some(m), format!("cannot fetch it now ({err}); the copy stored in {} {}s ago", database, now_ms().saturating_sub(row.fetched_at) / 1000)),
                        Err(bad) => (None, format!("cannot fetch it now ({err}); the stored copy is refused ({bad})")),
                    }
                    }
                    Ok(_) => (
                        None,
                        format!(
                            "cannot fetch it now ({err}); no stored copy in {}",
                            database
                        ),
                    ),
                    Err(db) => (
                        None,
                        format!("cannot fetch it now ({err}); cannot read the stored copy ({db})"),
                    ),
                }
            }
        };
        lines.push(format!("    metadata: {whence}"));
        let Some(m) = metadata else {
            if !p.discovery.is_some_and(|d| d.token_url_configured) {
                lines.push("    its credentials wait until the metadata can be had".to_string());
            }
            continue;
        };
        let token_url = match p.discovery {
            Some(d) if d.token_url_configured => format!("{} (configured)", e.token_url),
            _ => describe(&m.token_endpoint),
        };
        lines.push(format!("    token endpoint: {token_url}"));
        for (what, url) in [
            ("authorization endpoint", &m.authorization_endpoint),
            (
                "device authorization endpoint",
                &m.device_authorization_endpoint,
            ),
            ("revocation endpoint", &m.revocation_endpoint),
        ] {
            if url.is_some() {
                lines.push(format!("    {what}: {}", describe(url)));
            }
        }
        for (what, list) in [
            (
                "token endpoint auth methods",
                &m.token_endpoint_auth_methods_supported,
            ),
            (
                "code challenge methods",
                &m.code_challenge_methods_supported,
            ),
            ("DPoP algorithms", &m.dpop_signing_alg_values_supported),
        ] {
            if !list.is_empty() {
                lines.push(format!("    {what}: {}", list.join(", ")));
            }
        }
    }
    lines
}
