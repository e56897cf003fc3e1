//! What the refresher does for its handle's requests: serve or refresh a
//! token ([`Refresher::ensure`]), add, replace and remove credentials,
//! exchange authorization codes and start device logins.

use std::sync::Arc;

use super::admission::Waiting;
use super::device::{DeviceLoginRequest, DeviceTask, LoginState, LoginView};
use super::job::JobKind;
use super::read_plan::{read_plan, ReadCase, ReadPlan};
use super::request::Reply;
use super::timing::secs_up;
use super::waiter::Waiter;
use super::{ExchangeRequest, ExchangeStart, NewCredential, RefreshError, Refresher, View};
use crate::credential::{Credential, GrantKind, State};
use crate::event;
use crate::events::Kind;
use crate::provider::{ClientAuth, DpopKey};
use crate::token::{after_secs, duration_ms, LifetimeSource};

/// Whether [`Refresher::ensure`] may refresh a credential that will not be
/// refreshed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Freshness {
    /// Refresh if the token is not good enough, unless the credential needs
    /// re-authorization or is paused.
    IfStale,
    /// Refresh now, even a credential that needs re-authorization or is
    /// paused (`tokend refresh`).
    Force,
}

impl Refresher {
    /// Answers `waiter` from the current token if it is good enough, else
    /// queues it on the next refresh, starting one if needed.
    pub(super) fn ensure(&mut self, name: &str, now: i64, waiter: Waiter, freshness: Freshness) {
        let Some((id, view)) = self
            .slots
            .id_of(name)
            .and_then(|id| Some((id, self.slots.view(id)?)))
        else {
            waiter.answer(Err(RefreshError::NotFound(name.to_string())));
            return;
        };
        if waiter.satisfied_by(&view, now) {
            waiter.answer(Ok(view));
            return;
        }
        let has_provider = self.config.providers.contains_key(&*view.provider);
        match freshness {
            Freshness::IfStale => {
                if let Err(err) = blocked_reason(&view) {
                    match waiter {
                        // A credential just stored for a provider that waits
                        // for its metadata: stored, and waiting with it.
                        Waiter::Settled { reply } => reply.send(Ok(view)).unwrap_or(()),
                        waiter => waiter.answer(Err(err)),
                    }
                    return;
                }
            }
            Freshness::Force => {
                if has_provider && view.paused().is_some() {
                    self.edit_view(id, |v| v.edit_extras(|n| n.paused = None));
                }
            }
        }
        let blocked_until = has_provider
            .then(|| self.admission.blocked_until(&view.provider, now))
            .flatten();
        match waiter {
            Waiter::Token { min_valid_ms, .. } => {
                self.ensure_token(id, &view, now, waiter, min_valid_ms, blocked_until)
            }
            waiter => self.ensure_attempt(id, view, now, waiter, blocked_until),
        }
    }

    /// A token read: joins the refresh schedule ([`read_plan`]).
    fn ensure_token(
        &mut self,
        id: u32,
        view: &View,
        now: i64,
        waiter: Waiter,
        min_valid_ms: i64,
        blocked_until: Option<i64>,
    ) {
        let backoff_until = self
            .slots
            .get(id)
            .filter(|s| s.attempt > 0)
            .and(view.next_refresh_at);
        let plan = read_plan(&ReadCase {
            now,
            min_valid_ms,
            view,
            backoff_until,
            blocked_until,
            min_interval_ms: duration_ms(self.config.daemon.timing.min_interval),
            read_timeout_ms: duration_ms(self.config.daemon.read_timeout),
        });
        match plan {
            ReadPlan::Refuse(err) => waiter.answer(Err(err)),
            // The scheduled attempt (or the one in flight) answers it.
            ReadPlan::Join => self.slots.add_waiter(id, waiter),
            ReadPlan::WaitFor(at) => {
                tracing::debug!(tokend_credential = %view.name, tokend_retry_in_ms = at.saturating_sub(now), "a read waits for the scheduled retry");
                self.slots.add_waiter(id, waiter);
            }
            ReadPlan::Refresh => {
                self.slots.add_waiter(id, waiter);
                self.start_job(id, JobKind::Refresh, now);
            }
        }
    }

    /// A `refresh` or a new credential: waits for an attempt, unless the
    /// provider's `Retry-After` forbids one.
    fn ensure_attempt(
        &mut self,
        id: u32,
        view: Arc<View>,
        now: i64,
        waiter: Waiter,
        blocked_until: Option<i64>,
    ) {
        if let Some(until) = blocked_until.filter(|_| !view.refreshing) {
            let reason = format!(
                "the provider asked tokend (Retry-After) not to call it for another {}s",
                secs_up(until.saturating_sub(now))
            );
            match waiter {
                Waiter::Settled { reply } => {
                    let view = self.slots.view(id).unwrap_or(view);
                    reply.send(Ok(view)).unwrap_or(());
                }
                other => other.answer(Err(RefreshError::Unavailable {
                    name: view.name.to_string(),
                    reason,
                })),
            }
            return;
        }
        self.slots.add_waiter(id, waiter);
        self.start_job(id, JobKind::Refresh, now);
    }

    /// Stores a new credential; returns its name.
    pub(super) async fn put(
        &mut self,
        new: NewCredential,
        now: i64,
    ) -> Result<String, RefreshError> {
        // A provider still waiting for its metadata takes the credential,
        // which waits with it.
        let provider = self.config.providers.get(&new.provider);
        if provider.is_none() && !self.config.pending.contains_key(&new.provider) {
            return Err(RefreshError::UnknownProvider(new.provider));
        }
        if new.grant.kind() == GrantKind::ClientCredentials
            && provider.is_some_and(|p| p.endpoint.client_auth == ClientAuth::None)
        {
            return Err(RefreshError::UnauthenticatedClient(new.provider));
        }
        let mut cred = Credential::new(&new.name, &new.provider, new.refresh_token, now);
        cred.grant = new.grant;
        cred.scope = new.scope;
        if let Some((token, secs)) = new.access_token {
            cred.access_token = Some(token);
            cred.expires_at = Some(after_secs(now, secs));
            cred.lifetime_source = Some(LifetimeSource::ExpiresIn);
            cred.last_refresh_at = Some(now);
        }
        self.replace(cred).await?;
        event!(info, Kind::CredentialAdded, tokend_credential = %new.name, tokend_provider = %new.provider, "credential stored");
        Ok(new.name)
    }

    /// Stores `cred` as a new generation, carrying waiters over from the
    /// credential it replaces, and schedules it.
    pub(super) async fn replace(&mut self, mut cred: Credential) -> Result<u32, RefreshError> {
        let now = self.now();
        let dpop = self
            .config
            .providers
            .get(&cred.provider)
            .is_some_and(|p| p.endpoint.dpop);
        if dpop && cred.dpop_key.is_none() {
            // Made with the credential, before its first request, so that
            // every token it is ever issued is bound to this one key.
            cred.dpop_key = Some(DpopKey::generate().map_err(RefreshError::Dpop)?);
        }
        let old = self.slots.id_of(&cred.name);
        let old_view = old.and_then(|id| self.slots.view(id));
        if let Some(v) = &old_view {
            cred.created_at = v.created_at;
        }
        cred.generation = self.store.replace(&cred).await?;
        // Before it is published: its files never lag what the socket serves.
        self.write_stored_sinks(&cred).await;
        let name = old_view.map_or_else(|| Arc::from(cred.name.as_str()), |v| Arc::clone(&v.name));
        let mut view = self.view_of(name, &cred, now);
        self.schedule_view(&mut view, now);
        let Some(id) = old else {
            return Ok(self.insert(view, cred.generation));
        };
        view.slot = id;
        if let Some(slot) = self.slots.get_mut(id) {
            // A job for the old generation may still run; its report is
            // dropped, and the new generation starts afresh.
            slot.generation = cred.generation;
            slot.attempt = 0;
            slot.earlier_unknown = false;
        }
        self.slots.forget_held(id);
        self.set_view(id, view);
        Ok(id)
    }

    /// Starts an authorization-code exchange, or queues it until its
    /// provider has room.
    pub(super) fn exchange(&mut self, req: ExchangeRequest, reply: Reply<Arc<View>>) {
        let Some(provider) = self.config.providers.get(&req.provider).cloned() else {
            let err = match self.config.pending.get(&req.provider) {
                Some(reason) => RefreshError::Unavailable {
                    name: req.name,
                    reason: reason.clone(),
                },
                None => RefreshError::UnknownProvider(req.provider),
            };
            let _ = reply.send(Err(err));
            return;
        };
        let start = ExchangeStart {
            req,
            provider,
            reply,
        };
        if self.admission.has_room(&start.provider.name) {
            self.launch_exchange(start);
        } else {
            let provider = Arc::from(start.provider.name.as_str());
            self.admission
                .queue_on_demand(provider, Waiting::Exchange(start));
        }
    }

    /// Stores the credential an exchange produced.
    pub(super) async fn store_exchanged(
        &mut self,
        name: &str,
        cred: Credential,
    ) -> Result<Arc<View>, RefreshError> {
        warn_if_no_refresh_token(name, &cred);
        let id = self.replace(cred).await?;
        event!(info, Kind::CredentialExchanged, tokend_credential = %name, "authorization code exchanged");
        self.slots
            .view(id)
            .ok_or_else(|| RefreshError::NotFound(name.to_string()))
    }

    /// Starts a device login as a task of its own, which answers `reply`
    /// once the provider gave its codes and then polls; the owner only
    /// stores what it produces ([`Refresher::store_device_login`]).
    pub(super) fn device_login(&mut self, req: DeviceLoginRequest, reply: Reply<LoginView>) {
        let Some(provider) = self.config.providers.get(&req.provider).cloned() else {
            let _ = reply.send(Err(RefreshError::UnknownProvider(req.provider)));
            return;
        };
        if provider.endpoint.device_authorization_url.is_none() {
            let _ = reply.send(Err(RefreshError::NoDeviceEndpoint(req.provider)));
            return;
        }
        let task = DeviceTask {
            client: self.client.clone(),
            provider,
            name: req.name,
            logins: Arc::clone(&self.logins),
            cancel: self.cancel.child_token(),
            reports: self.reports_tx.clone(),
        };
        match task.reserve() {
            Ok(id) => {
                self.tasks.spawn(task.run(id, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Stores the credential of an approved device login, unless the login
    /// was replaced or cancelled while its last poll was answered.
    pub(super) async fn store_device_login(&mut self, name: &str, login: u64, cred: Credential) {
        if !self.logins.is_pending(name, login) {
            tracing::info!(tokend_credential = %name, "a replaced or cancelled device login was approved; its tokens are dropped");
            return;
        }
        warn_if_no_refresh_token(name, &cred);
        let state = match self.replace(cred).await {
            Ok(_) => {
                event!(info, Kind::CredentialExchanged, tokend_credential = %name, "device login approved; credential stored");
                LoginState::Succeeded
            }
            Err(e) => {
                tracing::error!(tokend_credential = %name, tokend_error = %e, "device login approved, but the credential could not be stored");
                LoginState::Failed(format!(
                    "approved, but the credential could not be stored: {e}"
                ))
            }
        };
        self.logins.finish(name, login, state);
    }

    /// Deletes a credential; its waiters hear it is gone.
    pub(super) async fn remove(&mut self, name: &str) -> Result<(), RefreshError> {
        let Some(id) = self.slots.id_of(name) else {
            return Err(RefreshError::NotFound(name.to_string()));
        };
        self.store.delete(name).await?;
        if let Some(slot) = self.slots.remove(id) {
            for w in slot.outstanding.map(|o| o.waiters).unwrap_or_default() {
                w.answer(Err(RefreshError::NotFound(name.to_string())));
            }
        }
        self.schedule.set(id, None);
        self.remove_sinks(name).await;
        event!(info, Kind::CredentialRemoved, tokend_credential = %name, "credential removed");
        Ok(())
    }
}

/// Warns that a new credential came without a refresh token.
fn warn_if_no_refresh_token(name: &str, cred: &Credential) {
    if cred.refresh_token.is_none() {
        event!(warn, Kind::NoRefreshToken, tokend_credential = %name, tokend_provider = %cred.provider,
            "the provider issued no refresh token (was offline access requested?); the access token is served until it expires, then the credential needs re-authorization");
    }
}

/// Why a credential will not be refreshed on its own, if it will not.
fn blocked_reason(view: &View) -> Result<(), RefreshError> {
    if view.state == State::NeedsReauth {
        return Err(RefreshError::NeedsReauth {
            name: view.name.to_string(),
            provider: view.provider.to_string(),
            reason: view.extras().last_error.clone().unwrap_or_default(),
        });
    }
    if let Some(reason) = view.paused() {
        return Err(RefreshError::Paused {
            name: view.name.to_string(),
            reason: reason.to_string(),
        });
    }
    Ok(())
}
