//! What a finished job changes: the new tokens (committed, or held in
//! memory with a commit retry), a failure (re-authorization, pause or
//! backoff, and a provider's `Retry-After`), and the answers of the callers
//! that waited for the attempt.
//!
//! The commit-retry state machine lives here: tokens whose commit failed
//! are held in the slot ([`HeldTokens`]) and served; the commit is retried
//! with backoff, alone or before the next refresh, until it succeeds or the
//! credential is replaced.

use std::sync::Arc;

use super::job::{Durability, Outcome};
use super::slots::HeldTokens;
use super::timing::{blocked_until, failure_retry_at};
use super::{Refresher, View};
use crate::credential::Credential;
use crate::event;
use crate::events::Kind;
use crate::provider::{Failure, FailureKind};
use crate::token::Secret;

impl Refresher {
    /// Applies a job's outcome, unless the credential was replaced or
    /// removed since the job started.
    pub(super) fn on_job_done(&mut self, id: u32, generation: i64, outcome: Outcome) {
        if self
            .slots
            .get(id)
            .is_none_or(|s| s.generation != generation)
        {
            return;
        }
        let now = self.now();
        match outcome {
            Outcome::Superseded => self.edit_view(id, |v| v.refreshing = false),
            Outcome::CommitRetried(durability) => self.on_commit_retried(id, durability, now),
            Outcome::Refreshed { cred, durability } => self.on_refreshed(id, cred, durability, now),
            Outcome::Failed { cred, failure } => self.on_failed(id, cred, failure, now),
        }
    }

    /// A commit retry ended.
    fn on_commit_retried(&mut self, id: u32, durability: Durability, now: i64) {
        let committed = durability == Durability::Committed;
        if committed {
            self.slots.forget_held(id);
            let name = self.slots.get(id).map(|s| Arc::clone(&s.view.name));
            event!(info, Kind::CommitRecovered, tokend_credential = %name.unwrap_or_default(), "tokens held in memory are now committed");
        } else {
            self.hold_tokens(id, None, now);
        }
        self.edit_view(id, |v| {
            v.refreshing = false;
            v.uncommitted = !committed;
        });
    }

    /// Holds `cred` (or keeps the tokens already held) and sets when the
    /// commit is retried, counting one more failed commit.
    fn hold_tokens(&mut self, id: u32, cred: Option<Credential>, now: i64) {
        let limits = self.retry_limits();
        let Some(outstanding) = self.slots.outstanding(id) else {
            return;
        };
        let held = match (outstanding.held.take(), cred) {
            (Some(mut held), Some(cred)) => {
                held.cred = cred;
                held
            }
            (Some(held), None) => held,
            (None, Some(cred)) => HeldTokens {
                cred,
                retry_at: now,
                attempt: 0,
            },
            (None, None) => return self.slots.drop_outstanding_if_empty(id),
        };
        let delay = limits.delay_ms(held.attempt, rand::random::<f64>());
        outstanding.held = Some(HeldTokens {
            retry_at: now.saturating_add(delay),
            attempt: held.attempt.saturating_add(1),
            cred: held.cred,
        });
    }

    /// New tokens: published, and committed or held in memory.
    fn on_refreshed(&mut self, id: u32, cred: Credential, durability: Durability, now: i64) {
        let committed = durability == Durability::Committed;
        let Some(old) = self.slots.view(id) else {
            return;
        };
        let name = Arc::clone(&old.name);
        let expires_in = cred.expires_at.unwrap_or(now).saturating_sub(now) / 1000;
        event!(
            info,
            Kind::Refreshed,
            tokend_credential = %name,
            tokend_provider = %cred.provider,
            tokend_access_token = %cred.access_token.as_ref().map(Secret::fingerprint).unwrap_or_default(),
            tokend_expires_in = expires_in,
            "access token refreshed"
        );
        let mut view = self.view_of(Arc::clone(&name), &cred, now);
        view.slot = id;
        let warning = view.extras().warning.clone();
        if warning.is_some() && warning != old.extras().warning {
            event!(warn, Kind::RefreshTokenExpiring, tokend_credential = %name, tokend_provider = %cred.provider, "{}", warning.as_deref().unwrap_or_default());
        }
        // A provider removed by a reload while this refresh ran stays removed
        // (`view_of` pauses it); otherwise the refresh lifts any pause.
        self.schedule_view(&mut view, now);
        view.uncommitted = !committed;
        if let Some(slot) = self.slots.get_mut(id) {
            slot.attempt = 0;
            slot.earlier_unknown = false;
        }
        if committed {
            self.slots.forget_held(id);
            if old.uncommitted {
                event!(info, Kind::CommitRecovered, tokend_credential = %name, "tokens held in memory are now committed");
            }
        } else {
            event!(error, Kind::CommitFailed, tokend_credential = %name,
                "could not commit the new tokens to the database; serving them from memory and retrying the commit (check disk space, permissions and locks)");
            self.hold_tokens(id, Some(cred), now);
        }
        self.set_view(id, view);
        self.answer_waiters(id, now, None);
    }

    /// Answers the slot's waiters after an attempt.
    fn answer_waiters(&mut self, id: u32, now: i64, failure: Option<&Failure>) {
        let Some(view) = self.slots.view(id) else {
            return;
        };
        for w in self.slots.take_waiters(id) {
            w.answer_after(&view, now, failure);
        }
    }

    /// A failed refresh: re-authorization, a pause, or a retry with backoff.
    fn on_failed(&mut self, id: u32, cred: Option<Credential>, failure: Failure, now: i64) {
        let Some(old) = self.slots.view(id) else {
            return;
        };
        if let (Some(ra), FailureKind::Transient) = (failure.retry_after, failure.kind) {
            self.admission.block(&old.provider, blocked_until(now, ra));
        }
        let mut view = (*old).clone();
        view.refreshing = false;
        if let Some(c) = &cred {
            view.state = c.state;
            view.updated_at = c.updated_at;
        }
        let earlier_unknown = cred.as_ref().map_or_else(
            || failure.outcome_unknown || self.slots.get(id).is_some_and(|s| s.earlier_unknown),
            |c| c.refresh_started_at.is_some(),
        );
        view.edit_extras(|n| n.last_error = Some(failure.message.clone()));
        let attempt = self.slots.get(id).map_or(0, |s| s.attempt);
        let attempt = self.after_failure(&mut view, &failure, attempt, now);
        if failure.kind == FailureKind::Transient {
            view.edit_extras(|n| n.failed_attempts = attempt);
        }
        if let Some(slot) = self.slots.get_mut(id) {
            slot.attempt = attempt;
            slot.earlier_unknown = earlier_unknown;
        }
        if let Some(held) = self
            .slots
            .get_mut(id)
            .and_then(|s| s.outstanding.as_mut())
            .and_then(|o| o.held.as_mut())
        {
            // The job refreshed from the tokens held in memory: keep the
            // recorded error with them.
            if let Some(c) = cred {
                held.cred = c;
            }
        }
        self.set_view(id, view);
        self.answer_waiters(id, now, Some(&failure));
    }

    /// Sets what follows a failure of this kind in `view` and logs it;
    /// returns the count of consecutive transient failures.
    fn after_failure(&self, view: &mut View, failure: &Failure, attempt: u32, now: i64) -> u32 {
        let name = Arc::clone(&view.name);
        let provider = Arc::clone(&view.provider);
        match failure.kind {
            FailureKind::Reauth => {
                view.next_refresh_at = None;
                event!(
                    error, Kind::NeedsReauth,
                    tokend_credential = %name, tokend_provider = %provider,
                    tokend_error = %failure.message,
                    "the provider rejected the refresh token; credential needs re-authorization: run `tokend add {name} --provider {provider}` with a new refresh token, or `tokend exchange`"
                );
                attempt
            }
            FailureKind::Misconfigured => {
                view.next_refresh_at = None;
                view.edit_extras(|n| {
                    n.paused = Some(format!(
                        "{}; fix providers.{provider} in the configuration and restart, or run `tokend refresh {name}`",
                        failure.message
                    ))
                });
                event!(
                    error, Kind::ProviderMisconfigured,
                    tokend_credential = %name, tokend_provider = %provider,
                    tokend_error = %failure.message,
                    "the provider rejected the client itself; refreshing is paused until the provider configuration is fixed"
                );
                attempt
            }
            FailureKind::Transient => {
                let at = failure_retry_at(
                    now,
                    attempt,
                    self.retry_limits(),
                    rand::random::<f64>(),
                    view.expires_at,
                    failure.retry_after,
                );
                view.next_refresh_at = Some(at);
                let attempt = attempt.saturating_add(1);
                event!(
                    warn, Kind::RefreshFailed,
                    tokend_credential = %name, tokend_provider = %provider,
                    tokend_error = %failure.message, tokend_attempt = attempt, tokend_retry_in_ms = at.saturating_sub(now),
                    tokend_outcome_unknown = failure.outcome_unknown,
                    "refresh failed; will retry"
                );
                attempt
            }
        }
    }
}
