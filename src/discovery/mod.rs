//! Discovery at run time: keeps the metadata of every provider configured
//! with an `issuer` (fetched at start-up, every `discovery_refresh` with
//! jitter, and on SIGHUP; the stored copy when the issuer is down at
//! start-up) and turns the configuration file's [`Config`] into the one the
//! refresher runs with ([`effective`]): discovered endpoints fill the keys
//! the file leaves out, and a provider whose token endpoint is not known
//! yet is held back in `Config::pending`, so its credentials wait with a
//! clear reason instead of being sent anywhere.
//!
//! A discovered change reaches the refresher as a reload does
//! (`RefresherHandle::reload`): it is just another provider update. The
//! fetching is `provider`'s; the stored copies are `store`'s. `check` is
//! what `tokend check-config` prints of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProviderConfig};
use crate::event;
use crate::events::Kind;
use crate::provider::{Endpoint, Metadata, ProviderClient};
use crate::refresh::{RefreshError, RefresherHandle};
use crate::store::Store;
use crate::token::{duration_ms, now_ms};

mod check;

pub(crate) use check::check_lines;

/// First retry after a failed fetch; doubled up to the provider's
/// `discovery_refresh`.
const RETRY_FIRST: Duration = Duration::from_secs(10);
/// Longest a fetch at start-up or on SIGHUP may take (at most the
/// provider's `request_timeout`).
const BLOCKING_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sleep without re-reading the wall clock.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// Where the metadata in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Fetched from the issuer.
    Live,
    /// The copy kept in the database, the issuer being unreachable.
    Stored,
}

/// One provider's metadata in use.
#[derive(Debug, Clone)]
pub(crate) struct Known {
    /// What tokend takes from it.
    pub(crate) metadata: Arc<Metadata>,
    /// Where it came from.
    pub(crate) source: Source,
}

/// The configuration the refresher runs with: `file`'s, each provider with
/// an issuer filled in from `known` (keys the file sets win), and those
/// whose token endpoint is still unknown moved to `pending` with why
/// (`errors` holds the last failure of each).
pub(crate) fn effective(
    file: &Config,
    known: &BTreeMap<String, Known>,
    errors: &BTreeMap<String, String>,
) -> Config {
    let mut out = file.clone();
    for (name, p) in &file.providers {
        let Some(discovery) = p.discovery else {
            continue;
        };
        let issuer = p.endpoint.issuer.as_deref().unwrap_or_default();
        let metadata = known.get(name).map(|k| &k.metadata);
        let token_endpoint = metadata.and_then(|m| m.token_endpoint.as_ref());
        if !discovery.token_url_configured && token_endpoint.is_none() {
            let reason = match (metadata, errors.get(name)) {
                (Some(_), _) => format!("the metadata of issuer `{issuer}` names no token_endpoint; set token_url under [providers.{name}]"),
                (None, Some(e)) => format!("waiting for the metadata of issuer `{issuer}` ({e}); set token_url under [providers.{name}] to do without it"),
                (None, None) => format!("waiting for the metadata of issuer `{issuer}`"),
            };
            out.providers.remove(name);
            out.pending.insert(name.clone(), reason);
            continue;
        }
        if let Some(m) = metadata {
            let mut filled = ProviderConfig::clone(p);
            fill(&mut filled.endpoint, m, discovery.token_url_configured);
            out.providers.insert(name.clone(), Arc::new(filled));
        }
    }
    out
}

/// Fills the endpoints `e` does not configure from `m`.
fn fill(e: &mut Endpoint, m: &Arc<Metadata>, token_url_configured: bool) {
    if let Some(url) = m.token_endpoint.as_ref().filter(|_| !token_url_configured) {
        e.token_url = url.clone();
    }
    if e.revocation_url.is_none() {
        e.revocation_url.clone_from(&m.revocation_endpoint);
    }
    if e.authorization_url.is_none() {
        e.authorization_url.clone_from(&m.authorization_endpoint);
    }
    if e.device_authorization_url.is_none() {
        e.device_authorization_url
            .clone_from(&m.device_authorization_endpoint);
    }
    e.discovered = Some(Arc::clone(m));
}

/// What discovery holds between fetches.
struct State {
    /// The configuration as the file says.
    file: Arc<Config>,
    known: BTreeMap<String, Known>,
    errors: BTreeMap<String, String>,
    /// When each provider is fetched next (Unix ms), and how many fetches
    /// in a row failed.
    due: BTreeMap<String, (i64, u32)>,
}

/// The daemon's discovery: its state, and the means to fetch and keep.
pub(crate) struct Discovery {
    state: tokio::sync::Mutex<State>,
    store: Store,
    client: ProviderClient,
}

impl Discovery {
    /// Fetches the metadata of every provider with an issuer (all at once,
    /// each within its provider's `request_timeout`), using the stored copy
    /// of any that cannot be fetched, and returns the configuration to start
    /// the refresher with.
    pub(crate) async fn start(
        file: Arc<Config>,
        store: Store,
        client: ProviderClient,
    ) -> (Arc<Discovery>, Config) {
        let d = Arc::new(Discovery {
            state: tokio::sync::Mutex::new(State {
                file: Arc::clone(&file),
                known: BTreeMap::new(),
                errors: BTreeMap::new(),
                due: BTreeMap::new(),
            }),
            store,
            client,
        });
        let config = d.refetch_all(file, Fallback::Stored).await;
        (d, config)
    }

    /// A new configuration file (SIGHUP): fetches every issuer again and
    /// reloads the refresher with the result. Done under the state's lock,
    /// as the periodic refetch is, so an older result never lands after a
    /// newer one.
    pub(crate) async fn reload(
        &self,
        file: Arc<Config>,
        handle: &RefresherHandle,
    ) -> Result<(), RefreshError> {
        let mut st = self.state.lock().await;
        let config = self
            .refetch_all_locked(&mut st, file, Fallback::Stored)
            .await;
        handle.reload(Arc::new(config)).await
    }

    async fn refetch_all(&self, file: Arc<Config>, fallback: Fallback) -> Config {
        let mut st = self.state.lock().await;
        self.refetch_all_locked(&mut st, file, fallback).await
    }

    async fn refetch_all_locked(
        &self,
        st: &mut State,
        file: Arc<Config>,
        fallback: Fallback,
    ) -> Config {
        st.file = Arc::clone(&file);
        let providers: Vec<Arc<ProviderConfig>> = discovered(&file).cloned().collect();
        // Metadata is kept only for a provider whose issuer is unchanged.
        st.known.retain(|name, k| {
            file.providers
                .get(name)
                .and_then(|p| p.endpoint.issuer.as_deref())
                == Some(k.metadata.issuer.as_str())
        });
        st.errors.clear();
        st.due.clear();
        let fetched = futures::future::join_all(
            providers
                .iter()
                .map(|p| self.fetch(p, st.known.get(&p.name).cloned(), fallback)),
        )
        .await;
        for (p, result) in providers.iter().zip(fetched) {
            self.record(st, p, result);
        }
        effective(&st.file, &st.known, &st.errors)
    }

    /// Refetches the providers that are due, forever; any change is handed
    /// to the refresher as a reload.
    pub(crate) async fn run(self: Arc<Self>, handle: RefresherHandle, cancel: CancellationToken) {
        loop {
            let next = {
                let st = self.state.lock().await;
                st.due.values().map(|(at, _)| *at).min()
            };
            let now = now_ms();
            let wait = next.map_or(MAX_SLEEP, |at| {
                Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                    .min(MAX_SLEEP)
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let mut st = self.state.lock().await;
            if let Some(config) = self.refetch_due(&mut st).await {
                if let Err(e) = handle.reload(Arc::new(config)).await {
                    tracing::warn!(tokend_error = %e, "cannot hand the discovered endpoints to the refresher");
                }
            }
        }
    }

    /// Refetches the providers due now; the new configuration if anything
    /// the refresher sees changed.
    async fn refetch_due(&self, st: &mut State) -> Option<Config> {
        let now = now_ms();
        let file = Arc::clone(&st.file);
        let due: Vec<Arc<ProviderConfig>> = discovered(&file)
            .filter(|p| st.due.get(&p.name).is_some_and(|(at, _)| *at <= now))
            .cloned()
            .collect();
        if due.is_empty() {
            return None;
        }
        let before = effective(&st.file, &st.known, &st.errors);
        let fetched = futures::future::join_all(
            due.iter()
                .map(|p| self.fetch(p, st.known.get(&p.name).cloned(), Fallback::Keep)),
        )
        .await;
        for (p, result) in due.iter().zip(fetched) {
            self.record(st, p, result);
        }
        let after = effective(&st.file, &st.known, &st.errors);
        (!same_endpoints(&before, &after)).then_some(after)
    }

    /// Fetches `p`'s metadata and keeps a copy; on failure, falls back to
    /// what was known or (at start-up) the stored copy.
    async fn fetch(
        &self,
        p: &ProviderConfig,
        known: Option<Known>,
        fallback: Fallback,
    ) -> Result<Known, (String, Option<Known>)> {
        let issuer = p.endpoint.issuer.clone().unwrap_or_default();
        // At start-up and on SIGHUP a slow issuer must not hold up the
        // daemon for long: there is a stored copy, and a retry soon after.
        let mut endpoint = p.endpoint.clone();
        if fallback == Fallback::Stored {
            endpoint.request_timeout = endpoint.request_timeout.min(BLOCKING_FETCH_TIMEOUT);
        }
        match self.client.discover(&endpoint).await {
            Ok(fetched) => {
                let now = now_ms();
                if let Err(e) = self
                    .store
                    .save_metadata(&p.name, &issuer, &fetched.document, now)
                    .await
                {
                    tracing::warn!(tokend_provider = %p.name, tokend_error = %e, "cannot keep a copy of the metadata in the database; a restart while the issuer is down will wait for it");
                }
                if known.as_ref().map(|k| &*k.metadata) != Some(&fetched.metadata) {
                    event!(info, Kind::Discovered, tokend_provider = %p.name, tokend_source = "live", tokend_url = %fetched.url,
                        "metadata of issuer {issuer} fetched: token endpoint {}", describe(&fetched.metadata.token_endpoint));
                }
                Ok(Known {
                    metadata: Arc::new(fetched.metadata),
                    source: Source::Live,
                })
            }
            Err(e) => {
                let fallen = match (known, fallback) {
                    (Some(k), _) => Some(k),
                    (None, Fallback::Stored) => self.stored(p, &issuer).await,
                    (None, Fallback::Keep) => None,
                };
                let what = match &fallen {
                    Some(k) if k.source == Source::Stored => {
                        "using the copy stored in the database"
                    }
                    Some(_) => "keeping the metadata fetched before",
                    None if p.discovery.is_some_and(|d| d.token_url_configured) => {
                        "using the configured endpoints alone"
                    }
                    None => "its credentials wait",
                };
                event!(warn, Kind::DiscoveryFailed, tokend_provider = %p.name, tokend_error = %e, "{e}; {what}");
                Err((e.to_string(), fallen))
            }
        }
    }

    /// The copy of `p`'s metadata kept in the database, if it is still for
    /// the configured issuer and still passes the checks.
    async fn stored(&self, p: &ProviderConfig, issuer: &str) -> Option<Known> {
        let row = match self.store.load_metadata(&p.name).await {
            Ok(row) => row?,
            Err(e) => {
                tracing::warn!(tokend_provider = %p.name, tokend_error = %e, "cannot read the stored metadata");
                return None;
            }
        };
        if row.issuer != issuer {
            return None;
        }
        let metadata = Metadata::parse(
            row.document.as_bytes(),
            "the stored copy",
            issuer,
            p.endpoint.allow_insecure_http,
        )
        .map_err(|e| tracing::warn!(tokend_provider = %p.name, tokend_error = %e, "the stored metadata is refused"))
        .ok()?;
        event!(warn, Kind::Discovered, tokend_provider = %p.name, tokend_source = "stored",
            "the issuer {issuer} cannot be reached; using its metadata stored in the database, fetched {}s ago: token endpoint {}",
            now_ms().saturating_sub(row.fetched_at) / 1000, describe(&metadata.token_endpoint));
        Some(Known {
            metadata: Arc::new(metadata),
            source: Source::Stored,
        })
    }

    /// Takes a fetch's result and schedules the provider's next fetch.
    fn record(
        &self,
        st: &mut State,
        p: &ProviderConfig,
        result: Result<Known, (String, Option<Known>)>,
    ) {
        let Some(discovery) = p.discovery else {
            return;
        };
        let failures = st.due.get(&p.name).map_or(0, |(_, n)| *n);
        let refresh_ms = duration_ms(discovery.refresh);
        let (delay, failures) = match result {
            Ok(k) => {
                st.known.insert(p.name.clone(), k);
                st.errors.remove(&p.name);
                // Up to a tenth later, so many daemons do not call at once.
                let jitter = (refresh_ms as f64 * 0.1 * rand::random::<f64>()) as i64;
                (refresh_ms.saturating_add(jitter), 0)
            }
            Err((message, fallen)) => {
                match fallen {
                    Some(k) => {
                        st.known.insert(p.name.clone(), k);
                    }
                    None => {
                        st.known.remove(&p.name);
                    }
                }
                st.errors.insert(p.name.clone(), message);
                let backoff = duration_ms(RETRY_FIRST)
                    .saturating_mul(1_i64 << failures.min(20))
                    .min(refresh_ms);
                (backoff, failures.saturating_add(1))
            }
        };
        st.due
            .insert(p.name.clone(), (now_ms().saturating_add(delay), failures));
    }
}

/// What a failed fetch falls back on when nothing was known before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// The copy kept in the database (start-up, SIGHUP).
    Stored,
    /// Nothing more (a periodic refetch: the stored copy was tried before).
    Keep,
}

/// The providers of `file` that have an issuer.
fn discovered(file: &Config) -> impl Iterator<Item = &Arc<ProviderConfig>> {
    file.providers.values().filter(|p| p.discovery.is_some())
}

/// Whether the refresher would see the same providers in both.
fn same_endpoints(a: &Config, b: &Config) -> bool {
    let endpoint = |p: &ProviderConfig| {
        (
            p.endpoint.token_url.clone(),
            p.endpoint.revocation_url.clone(),
            p.endpoint.discovered.clone(),
        )
    };
    a.pending == b.pending
        && a.providers.len() == b.providers.len()
        && a.providers
            .iter()
            .zip(&b.providers)
            .all(|((na, pa), (nb, pb))| na == nb && endpoint(pa) == endpoint(pb))
}

pub(super) fn describe(url: &Option<url::Url>) -> String {
    url.as_ref()
        .map_or_else(|| "(none)".to_string(), url::Url::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    fn metadata(token: Option<&str>, revocation: Option<&str>) -> Known {
        Known {
            metadata: Arc::new(Metadata {
                issuer: "https://as.example".into(),
                token_endpoint: token.map(|u| u.parse().unwrap()),
                authorization_endpoint: None,
                device_authorization_endpoint: None,
                revocation_endpoint: revocation.map(|u| u.parse().unwrap()),
                token_endpoint_auth_methods_supported: vec![],
                dpop_signing_alg_values_supported: vec![],
                code_challenge_methods_supported: vec![],
            }),
            source: Source::Live,
        }
    }

    const FILE: &str = r#"
        [providers.only]
        issuer = "https://as.example"
        client_id = "i"
        client_secret = "s"
        [providers.both]
        issuer = "https://as.example"
        token_url = "https://configured.example/token"
        revocation_url = "https://configured.example/revoke"
        client_id = "i"
        client_secret = "s"
        [providers.plain]
        token_url = "https://plain.example/token"
        client_id = "i"
        client_secret = "s"
    "#;

    #[test]
    fn an_issuer_alone_is_a_valid_provider_that_waits_for_its_metadata() {
        let file = parse_config(FILE).unwrap();
        let errors = BTreeMap::from([("only".to_string(), "cannot fetch".to_string())]);
        let c = effective(&file, &BTreeMap::new(), &errors);
        assert!(!c.providers.contains_key("only"));
        assert!(
            c.pending["only"].contains("cannot fetch"),
            "{:?}",
            c.pending
        );
        assert!(c.pending["only"].contains("token_url"), "{:?}", c.pending);
        // Explicit endpoints work without metadata.
        assert_eq!(
            c.providers["both"].endpoint.token_url.as_str(),
            "https://configured.example/token"
        );
        assert!(c.providers.contains_key("plain"));
    }

    #[test]
    fn discovered_endpoints_fill_only_what_the_file_leaves_out() {
        let file = parse_config(FILE).unwrap();
        let m = metadata(
            Some("https://as.example/token"),
            Some("https://as.example/revoke"),
        );
        let known = BTreeMap::from([("only".to_string(), m.clone()), ("both".to_string(), m)]);
        let c = effective(&file, &known, &BTreeMap::new());
        assert!(c.pending.is_empty());
        let only = &c.providers["only"].endpoint;
        assert_eq!(only.token_url.as_str(), "https://as.example/token");
        assert_eq!(
            only.revocation_url.as_ref().unwrap().as_str(),
            "https://as.example/revoke"
        );
        assert!(only.discovered.is_some());
        let both = &c.providers["both"].endpoint;
        assert_eq!(both.token_url.as_str(), "https://configured.example/token");
        assert_eq!(
            both.revocation_url.as_ref().unwrap().as_str(),
            "https://configured.example/revoke"
        );
        assert!(same_endpoints(
            &c,
            &effective(&file, &known, &BTreeMap::new())
        ));
        assert!(!same_endpoints(
            &c,
            &effective(&file, &BTreeMap::new(), &BTreeMap::new())
        ));
    }

    #[test]
    fn metadata_without_a_token_endpoint_says_which_key_to_set() {
        let file = parse_config(FILE).unwrap();
        let known = BTreeMap::from([("only".to_string(), metadata(None, None))]);
        let c = effective(&file, &known, &BTreeMap::new());
        assert!(
            c.pending["only"].contains("names no token_endpoint"),
            "{:?}",
            c.pending
        );
    }
}
