//! What the configuration decides about a credential (its readers, the
//! pause of a missing provider, the refresh-token warning, its due time),
//! and applying a reloaded configuration to every credential.

use std::sync::Arc;

use super::admission::Caps;
use super::timing::{refresh_due_at, refresh_token_warning, Backoff};
use super::{Refresher, View};
use crate::config::{Config, ProviderConfig};
use crate::credential::{Credential, CredentialGrant, GrantKind, State};
use crate::event;
use crate::events::Kind;

impl Refresher {
    /// Applies a new configuration (see [`super::RefresherHandle::reload`]).
    /// Jobs in flight finish under the caps they started with; new starts
    /// obey the new ones.
    pub(super) fn reload(&mut self, config: Arc<Config>) {
        let now = self.now();
        for name in self.config.declared.keys() {
            if !config.declared.contains_key(name) && self.slots.id_of(name).is_some() {
                tracing::warn!(tokend_credential = %name, "credential is no longer declared in the configuration; it is kept and still acquired (tokend never deletes a credential on its own); remove it with `tokend remove {name}`");
            }
        }
        self.settings.update(&config);
        self.admission.set_caps(Caps::of(&config));
        self.config = config;
        for id in 0..self.slots.len() {
            let Some(old) = self.slots.view(id) else {
                continue;
            };
            let mut view = (*old).clone();
            // A pause is re-derived from the new configuration: a provider
            // that is back (or was fixed) resumes.
            view.edit_extras(|n| n.paused = None);
            self.configure_view(&mut view, now);
            let unchanged =
                old.paused().is_none() && view.paused().is_none() && old.next_refresh_at.is_some();
            if !unchanged {
                self.schedule_view(&mut view, now);
                view.edit_extras(|n| n.failed_attempts = 0);
                if let Some(slot) = self.slots.get_mut(id) {
                    slot.attempt = 0;
                }
            }
            // Unchanged standing: the schedule (and any backoff) is kept.
            self.set_view(id, view);
        }
    }

    /// Creates the credentials the configuration declares that the database
    /// lacks, and re-creates one whose declaration changed (its tokens were
    /// asked for with another scope or provider). A credential of the same
    /// name that was added with a refresh token is left alone.
    pub(super) async fn create_declared(&mut self) {
        let config = Arc::clone(&self.config);
        for (name, declared) in &config.declared {
            if let Some(view) = self.slots.id_of(name).and_then(|id| self.slots.view(id)) {
                if view.grant != GrantKind::ClientCredentials {
                    tracing::warn!(tokend_credential = %name, "the configuration declares this credential, but the database holds one of that name with a refresh token; it is left alone (remove it with `tokend remove {name}` to use the declaration)");
                    continue;
                }
                // A failed read must not pass for a changed declaration:
                // re-creating would drop the stored token for nothing.
                match self.store.load(name).await {
                    Ok(Some(c)) if c.provider != declared.provider || c.grant != declared.grant => {
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!(tokend_credential = %name, tokend_error = %e, "cannot read the declared credential to compare it with the configuration; it is left as it is until the next reload");
                        continue;
                    }
                }
            }
            let now = self.now();
            let mut cred = Credential::new(name, &declared.provider, None, now);
            cred.grant = declared.grant.clone();
            // The scope asked for, until a response says which was granted.
            if let CredentialGrant::ClientCredentials { scope, .. } = &declared.grant {
                cred.scope.clone_from(scope);
            }
            match self.replace(cred).await {
                Ok(_) => {
                    event!(info, Kind::CredentialAdded, tokend_credential = %name, tokend_provider = %declared.provider, "declared credential stored; acquiring its token")
                }
                Err(e) => {
                    tracing::error!(tokend_credential = %name, tokend_error = %e, "cannot store the declared credential; tokend tries again at the next reload")
                }
            }
        }
    }

    /// The view of `cred` as the configuration sees it: readers, and paused
    /// if its provider is gone. No schedule yet ([`Refresher::schedule_view`]).
    pub(super) fn view_of(&mut self, name: Arc<str>, cred: &Credential, now: i64) -> View {
        // `configure_view` sets the real readers.
        let no_readers = Arc::clone(&self.no_readers);
        let mut view = View::of(name, cred, &mut self.interner, no_readers);
        self.configure_view(&mut view, now);
        view
    }

    /// Re-derives what the configuration decides: readers, pause for a
    /// missing provider, the refresh-token warning.
    fn configure_view(&self, view: &mut View, now: i64) {
        let provider = self.provider(view);
        view.readers = self
            .config
            .readers(&view.name, &view.provider)
            .cloned()
            .unwrap_or_else(|| Arc::clone(&self.no_readers));
        view.on_invalid_grant = provider
            .as_deref()
            .map_or_else(Default::default, |p| p.on_invalid_grant);
        let warning = refresh_token_warning(provider.as_deref(), view, now);
        let paused = provider
            .is_none()
            .then(|| match self.config.pending.get(&*view.provider) {
                Some(reason) => reason.clone(),
                None => missing_provider(&view.provider),
            });
        view.edit_extras(|n| {
            n.warning = warning;
            if paused.is_some() {
                n.paused = paused;
            }
        });
    }

    /// Sets `next_refresh_at` for an active, unpaused credential.
    pub(super) fn schedule_view(&self, view: &mut View, now: i64) {
        view.next_refresh_at = (view.paused().is_none() && view.state == State::Active)
            .then(|| self.due_at(view, now));
    }

    /// The configuration of the credential's provider, if it has one.
    pub(super) fn provider(&self, view: &View) -> Option<Arc<ProviderConfig>> {
        self.config.providers.get(&*view.provider).cloned()
    }

    fn due_at(&self, view: &View, now: i64) -> i64 {
        refresh_due_at(
            &self.config.daemon.timing,
            self.config.providers.get(&*view.provider).map(|p| &**p),
            view,
            now,
            rand::random::<f64>(),
        )
    }

    /// The backoff limits of `[daemon]`.
    pub(super) fn retry_limits(&self) -> Backoff {
        Backoff {
            base: self.config.daemon.retry_initial,
            cap: self.config.daemon.retry_max,
        }
    }
}

/// Why a credential whose provider left the configuration is paused.
pub(super) fn missing_provider(provider: &str) -> String {
    format!(
        "provider `{provider}` is not in the configuration; add it back and reload (systemctl reload tokend, or SIGHUP)"
    )
}
