//! What the refresher tells outputs (the watch stream and hooks): one
//! [`Update`] per new token, state change, problem (a failed refresh
//! attempt, a refresh-token warning that appears) or removal, on a
//! bounded broadcast channel. The owner never waits for a receiver: a
//! receiver that falls more than [`CAPACITY`] updates behind gets `Lagged`
//! and re-reads the published view, so a slow output costs neither the
//! owner's loop nor memory. A send with no receiver costs next to nothing.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::View;

/// Updates a receiver may fall behind before it misses some (and is told).
pub(crate) const CAPACITY: usize = 4096;

/// What changed for one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateKind {
    /// A new access token is visible (after its commit, or held in memory
    /// when the commit failed).
    Token,
    /// The state users see changed (needs reauthorization, paused, active
    /// again) without a new token.
    State,
    /// Neither the token nor the state changed, but a [`Problems`] did: a
    /// refresh attempt failed and is retried, or the refresh-token warning
    /// appeared. Outputs that only serve tokens ignore it.
    Problem,
    /// The credential was deleted.
    Removed,
}

/// One change, as published.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub(crate) name: Arc<str>,
    pub(crate) kind: UpdateKind,
    /// The view as published with this change; `None` once removed.
    pub(crate) view: Option<Arc<View>>,
    /// What went wrong with this change, whatever its kind (a warning may
    /// appear with a new token).
    pub(crate) problems: Problems,
}

/// The problems one publish brought up, for outputs that tell someone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Problems {
    /// A refresh attempt failed transiently: the credential stays active
    /// and is retried with backoff (`Extras::failed_attempts` counts them).
    /// A rejection that needs reauthorization or pauses is a state change,
    /// not this.
    pub(crate) refresh_failed: bool,
    /// The refresh-token warning appeared (not: its text changed, as it
    /// does with every refresh while it stands).
    pub(crate) warning_appeared: bool,
}

impl Problems {
    fn any(self) -> bool {
        self.refresh_failed || self.warning_appeared
    }
}

/// The owner's end of the channel.
pub(crate) struct Updates {
    tx: broadcast::Sender<Update>,
}

impl Updates {
    pub(crate) fn new() -> Updates {
        Updates {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// A handle that can subscribe without keeping the channel open: once
    /// the owner is gone, receivers see the channel closed.
    pub(crate) fn downgrade(&self) -> broadcast::WeakSender<Update> {
        self.tx.downgrade()
    }

    /// Tells receivers what changed from `old` to `new`, if anything they
    /// care about did.
    pub(crate) fn published(&self, old: Option<&View>, new: &Arc<View>) {
        if let Some(kind) = change(old, new) {
            self.send(Update {
                name: Arc::clone(&new.name),
                kind,
                view: Some(Arc::clone(new)),
                problems: problems(old, new),
            });
        }
    }

    /// Tells receivers the credential `name` is gone.
    pub(crate) fn removed(&self, name: &Arc<str>) {
        self.send(Update {
            name: Arc::clone(name),
            kind: UpdateKind::Removed,
            view: None,
            problems: Problems::default(),
        });
    }

    fn send(&self, update: Update) {
        if self.tx.receiver_count() > 0 {
            // Fails only when every receiver left meanwhile.
            let _ = self.tx.send(update);
        }
    }
}

/// What a publish of `new` over `old` changed for outputs: a new token wins
/// over a state change that came with it (the token event carries the state),
/// and either wins over a problem (the update still carries it).
pub(crate) fn change(old: Option<&View>, new: &View) -> Option<UpdateKind> {
    let Some(old) = old else {
        return new.access_token.is_some().then_some(UpdateKind::Token);
    };
    if !same_token(old, new) {
        return Some(UpdateKind::Token);
    }
    if old.state != new.state || old.paused() != new.paused() {
        return Some(UpdateKind::State);
    }
    problems(Some(old), new)
        .any()
        .then_some(UpdateKind::Problem)
}

/// The problems a publish of `new` over `old` brought up. A first publish
/// (a new credential) can bring a warning, never a failure.
pub(crate) fn problems(old: Option<&View>, new: &View) -> Problems {
    let warned = |v: &View| v.extras().warning.is_some();
    Problems {
        refresh_failed: old
            .is_some_and(|o| new.extras().failed_attempts > o.extras().failed_attempts),
        warning_appeared: warned(new) && !old.is_some_and(warned),
    }
}

/// Whether two views hold the same token (value and expiry).
pub(crate) fn same_token(a: &View, b: &View) -> bool {
    let value = |v: &View| v.access_token.as_ref().map(|t| t.expose().to_owned());
    a.expires_at == b.expires_at && a.token_type == b.token_type && value(a) == value(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Credential, State};
    use crate::token::Secret;

    fn view(token: Option<&str>, expires_at: Option<i64>) -> View {
        let mut cred = Credential::new("c", "p", None, 0);
        cred.access_token = token.map(Secret::new);
        cred.expires_at = expires_at;
        View::of_alone(&cred)
    }

    #[test]
    fn a_new_token_or_expiry_is_a_token_update() {
        let old = view(Some("a"), Some(1));
        assert_eq!(change(None, &old), Some(UpdateKind::Token));
        assert_eq!(change(None, &view(None, None)), None);
        assert_eq!(
            change(Some(&old), &view(Some("b"), Some(1))),
            Some(UpdateKind::Token)
        );
        assert_eq!(
            change(Some(&old), &view(Some("a"), Some(2))),
            Some(UpdateKind::Token)
        );
        assert_eq!(change(Some(&old), &old.clone()), None);
    }

    #[test]
    fn a_state_or_pause_change_is_a_state_update() {
        let old = view(Some("a"), Some(1));
        let mut reauth = old.clone();
        reauth.state = State::NeedsReauth;
        assert_eq!(change(Some(&old), &reauth), Some(UpdateKind::State));
        let mut paused = old.clone();
        paused.edit_extras(|e| e.paused = Some("no provider".into()));
        assert_eq!(change(Some(&old), &paused), Some(UpdateKind::State));
        let mut refreshing = old.clone();
        refreshing.refreshing = true;
        assert_eq!(change(Some(&old), &refreshing), None);
    }

    #[test]
    fn a_failed_attempt_or_a_new_warning_is_a_problem_update() {
        let old = view(Some("a"), Some(1));
        let mut failed = old.clone();
        failed.edit_extras(|e| {
            e.failed_attempts = 1;
            e.last_error = Some("token endpoint answered 503".into());
        });
        assert_eq!(change(Some(&old), &failed), Some(UpdateKind::Problem));
        let only_failed = Problems {
            refresh_failed: true,
            warning_appeared: false,
        };
        assert_eq!(problems(Some(&old), &failed), only_failed);
        // Each further attempt is one, with the same error text.
        let mut again = failed.clone();
        again.edit_extras(|e| e.failed_attempts = 2);
        assert_eq!(change(Some(&failed), &again), Some(UpdateKind::Problem));
        assert_eq!(change(Some(&failed), &failed.clone()), None);
        // Success resets the count: a token update, no failure.
        let back = view(Some("b"), Some(2));
        assert_eq!(change(Some(&again), &back), Some(UpdateKind::Token));
        assert_eq!(problems(Some(&again), &back), Problems::default());
        // A rejection that needs reauthorization is a state update only.
        let mut reauth = again.clone();
        reauth.state = State::NeedsReauth;
        assert_eq!(change(Some(&again), &reauth), Some(UpdateKind::State));
        assert_eq!(problems(Some(&again), &reauth), Problems::default());

        let warn = |v: &View, text: &str| {
            let mut w = v.clone();
            w.edit_extras(|e| e.warning = Some(text.into()));
            w
        };
        let appeared = Problems {
            refresh_failed: false,
            warning_appeared: true,
        };
        let warned = warn(&old, "expires in 2h");
        assert_eq!(change(Some(&old), &warned), Some(UpdateKind::Problem));
        assert_eq!(problems(Some(&old), &warned), appeared);
        // With a new token it is a token update that carries the warning.
        let warned_token = warn(&back, "expires in 2h");
        assert_eq!(change(Some(&old), &warned_token), Some(UpdateKind::Token));
        assert_eq!(problems(Some(&old), &warned_token), appeared);
        assert_eq!(problems(None, &warned_token), appeared);
        // Once per appearance: a standing warning whose text moves on is not
        // one, and it may appear again after it went away.
        let later = warn(&view(Some("c"), Some(3)), "expires in 1h");
        assert_eq!(change(Some(&warned_token), &later), Some(UpdateKind::Token));
        assert_eq!(problems(Some(&warned_token), &later), Problems::default());
        assert_eq!(change(Some(&warned), &warn(&old, "expires in 1h")), None);
        assert_eq!(problems(Some(&old), &warned), appeared);
    }

    #[tokio::test]
    async fn receivers_hear_changes_and_a_lagging_one_is_told() {
        let updates = Updates::new();
        let weak = updates.downgrade();
        let mut rx = weak.upgrade().map(|tx| tx.subscribe()).unwrap();
        let first = Arc::new(view(Some("a"), Some(1)));
        updates.published(None, &first);
        updates.published(Some(&first), &Arc::clone(&first));
        updates.removed(&first.name);
        let got = rx.recv().await.unwrap();
        assert_eq!(got.kind, UpdateKind::Token);
        assert_eq!(rx.recv().await.unwrap().kind, UpdateKind::Removed);
        for i in 0..=CAPACITY {
            let i = i64::try_from(i).unwrap();
            updates.published(None, &Arc::new(view(Some("x"), Some(i))));
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        drop(updates);
        while rx.recv().await.is_ok() {}
        assert!(weak.upgrade().is_none());
    }
}
