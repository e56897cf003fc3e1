//! `[credentials.NAME]` tables: who may read a credential (`readers`), the
//! git hosts it answers for (`git_hosts`, in `git`), and
//! credentials the configuration itself declares (`grant =
//! "client_credentials"`), which the daemon creates when the database does
//! not hold them yet. Nothing here talks to the database.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::collect::{Collector, Scope};
use super::git::{self, GitHosts};
use super::raw::RawCredential;
use super::{Declared, ProviderConfig};
use crate::access::Grant;
use crate::credential::{CredentialGrant, GrantKind};
use crate::provider::{ClientAuth, RESERVED_PARAMS};

/// What the `[credentials.NAME]` tables say.
#[derive(Default)]
pub(super) struct Credentials {
    /// Per-credential readers, for tables that give `readers`.
    pub(super) readers: BTreeMap<String, Arc<[Grant]>>,
    /// Credentials declared with a grant.
    pub(super) declared: BTreeMap<String, Declared>,
    /// The git hosts mapped to credentials.
    pub(super) git: GitHosts,
    /// The sink files of credentials that have some.
    pub(super) sinks: crate::sinks::Sinks,
}

/// One `[credentials.NAME]` table, read: its name, scope and keys.
pub(super) struct Table {
    pub(super) name: String,
    pub(super) scope: Scope,
    pub(super) raw: RawCredential,
}

/// Every `[credentials.NAME]`: who may read it and, if it declares a grant,
/// how the daemon acquires it. `providers` are the validated providers;
/// `provider_names` every provider table, valid or not, so that a broken
/// provider is not also reported as missing here.
pub(super) fn validate(
    c: &mut Collector<'_>,
    tables: Vec<Table>,
    providers: &BTreeMap<String, Arc<ProviderConfig>>,
    provider_names: &[String],
) -> Credentials {
    let mut out = Credentials::default();
    for Table { name, scope, raw } in tables {
        git::validate(
            c,
            &scope,
            &name,
            raw.git_hosts.as_deref(),
            raw.git_username.as_deref(),
            &mut out.git,
        );
        let list = super::sinks::validate(c, &scope, raw.sinks.as_deref().unwrap_or_default());
        if !list.is_empty() {
            out.sinks.insert(name.clone(), Arc::from(list));
        }
        let grant = declared_grant(c, &scope, &raw);
        match (&raw.readers, &grant) {
            (Some(readers), _) => {
                let grants = c.grants(&scope, "readers", readers);
                out.readers.insert(name.clone(), Arc::from(grants));
            }
            // A declared credential may leave its readers to its provider
            // (and a broken `grant` is reported on its own).
            (None, _) if raw.grant.is_some() => {}
            (None, _) => c.problem(
                &scope,
                "readers",
                "missing; list who may read this credential, e.g. readers = [\"user:backup\"]",
            ),
        }
        let Some(grant) = grant else { continue };
        let Some(provider) = raw.provider else {
            c.problem(
                &scope,
                "provider",
                "missing; a credential with a grant names its provider, e.g. provider = \"api\"",
            );
            continue;
        };
        check_provider(c, &scope, &provider, providers, provider_names);
        out.declared.insert(name, Declared { provider, grant });
    }
    out
}

/// The grant a table declares, if it declares one; keys that only a
/// declared credential takes are problems without `grant`.
fn declared_grant(
    c: &mut Collector<'_>,
    s: &Scope,
    raw: &RawCredential,
) -> Option<CredentialGrant> {
    let Some(name) = raw.grant.as_deref() else {
        for (key, given) in [
            ("provider", raw.provider.is_some()),
            ("scope", raw.scope.is_some()),
            ("params", raw.params.is_some()),
        ] {
            if given {
                c.problem(
                    s,
                    key,
                    "only a declared credential takes this; add grant = \"client_credentials\"",
                );
            }
        }
        return None;
    };
    match name.parse::<GrantKind>() {
        Ok(GrantKind::ClientCredentials) => {}
        Ok(GrantKind::RefreshToken) => {
            c.problem(s, "grant", "a refresh-token credential needs a refresh token, which does not belong in the configuration; add it with `tokend add`, or use grant = \"client_credentials\"");
            return None;
        }
        Err(_) => {
            c.problem(
                s,
                "grant",
                format!("unknown grant `{name}`; use client_credentials"),
            );
            return None;
        }
    }
    if raw.scope.as_deref().is_some_and(|v| v.trim().is_empty()) {
        c.problem(
            s,
            "scope",
            "is empty; leave it out to use the provider's scope",
        );
    }
    Some(CredentialGrant::ClientCredentials {
        scope: raw.scope.clone(),
        params: params(c, s, raw.params.clone()),
    })
}

/// The `params` table: extra body fields, each a string (integers are
/// taken as their digits), none that tokend sends itself.
fn params(c: &mut Collector<'_>, s: &Scope, table: Option<toml::Table>) -> Vec<(String, String)> {
    let line = s.line("params");
    let mut out = Vec::new();
    for (k, v) in table.unwrap_or_default() {
        let key = format!("{}.{k}", s.key("params"));
        if RESERVED_PARAMS.contains(&k.as_str()) {
            c.push(
                line,
                key,
                "tokend sends this field itself; remove it (scope has its own key)",
            );
            continue;
        }
        match v {
            toml::Value::String(v) => out.push((k, v)),
            toml::Value::Integer(i) => out.push((k, i.to_string())),
            other => c.push(
                line,
                key,
                format!("must be a string; found {}", other.type_str()),
            ),
        }
    }
    out
}

/// Whether `provider` exists and can authenticate a client_credentials
/// request.
fn check_provider(
    c: &mut Collector<'_>,
    s: &Scope,
    provider: &str,
    providers: &BTreeMap<String, Arc<ProviderConfig>>,
    provider_names: &[String],
) {
    match providers.get(provider) {
        Some(p) if p.endpoint.client_auth == ClientAuth::None => c.problem(
            s,
            "grant",
            format!("provider `{provider}` has client_auth = \"none\", but a client_credentials request must authenticate the client; give the provider a client secret and a client_auth such as basic or body"),
        ),
        Some(_) => {}
        None if provider_names.iter().any(|n| n == provider) => {}
        None => c.problem(
            s,
            "provider",
            format!("no provider `{provider}`; add a [providers.{provider}] table"),
        ),
    }
}
