//! The published, immutable [`View`] of one credential and the [`Interner`]
//! that lets views share the strings many credentials have in common.
//!
//! Views are what the socket API reads without asking the refresher; they
//! never hold a refresh token.

use std::sync::Arc;

use crate::access::Grant;
use crate::config::OnInvalidGrant;
use crate::credential::{Credential, GrantKind, State};
use crate::token::{LifetimeSource, Secret};

/// A published, immutable snapshot of one credential: everything the socket
/// API serves or shows, and nothing more. It holds no refresh token: that
/// stays in the database and is read only when a refresh starts, so a
/// million credentials cost memory for their access tokens and little else.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// Credential name (shared with the published map's key).
    pub(crate) name: Arc<str>,
    /// Provider name.
    pub(crate) provider: Arc<str>,
    /// The current access token, if one was ever obtained.
    pub(crate) access_token: Option<Secret>,
    /// Token type, normally `Bearer`.
    pub(crate) token_type: Arc<str>,
    /// Granted scope.
    pub(crate) scope: Option<Arc<str>>,
    /// When the access token expires (Unix ms).
    pub(crate) expires_at: Option<i64>,
    /// When the last successful refresh was sent (Unix ms).
    pub(crate) last_refresh_at: Option<i64>,
    /// When the credential was first stored (Unix ms).
    pub(crate) created_at: i64,
    /// When its row last changed (Unix ms).
    pub(crate) updated_at: i64,
    /// When the next refresh is due (Unix ms), if one is scheduled.
    pub(crate) next_refresh_at: Option<i64>,
    /// Who may read its token (besides administrators).
    pub(crate) readers: Arc<[Grant]>,
    /// Lifecycle state as stored.
    pub(crate) state: State,
    /// Where `expires_at` came from.
    pub(crate) lifetime_source: Option<LifetimeSource>,
    /// Whether the database holds a refresh token for it.
    pub(crate) has_refresh_token: bool,
    /// How it obtains its tokens.
    pub(crate) grant: GrantKind,
    /// Whether a refresh is in flight now.
    pub(crate) refreshing: bool,
    /// Whether its token is still served once the grant was rejected (its
    /// provider's `on_invalid_grant`).
    pub(crate) on_invalid_grant: OnInvalidGrant,
    /// Newer tokens than the database holds are kept in memory because
    /// committing them failed; the commit is being retried.
    pub(crate) uncommitted: bool,
    /// Fields most credentials never have, boxed so they cost one pointer.
    pub(crate) extras: Option<Box<Extras>>,
    /// The refresher's slot number for it.
    pub(crate) slot: u32,
}

/// The rarely set part of a [`View`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    /// The OpenID Connect ID token of the last response, if any.
    pub(crate) id_token: Option<Secret>,
    /// When the refresh token expires (Unix ms), if the provider said.
    pub(crate) refresh_expires_at: Option<i64>,
    /// The last failure, scrubbed of secrets.
    pub(crate) last_error: Option<String>,
    /// Why refreshing is paused, if it is (provider missing or misconfigured).
    pub(crate) paused: Option<String>,
    /// Something the operator should know although the credential works
    /// (a refresh token about to expire).
    pub(crate) warning: Option<String>,
    /// Consecutive transient refresh failures (the slot's count, so 0 after
    /// a success, a replace, or a reload that reschedules): each one more is
    /// a failed attempt outputs hear of.
    pub(crate) failed_attempts: u32,
}

impl Extras {
    /// `None` when there is nothing to note, so the common case allocates nothing.
    pub(crate) fn boxed(self) -> Option<Box<Extras>> {
        (self != Extras::default()).then(|| Box::new(self))
    }
}

impl View {
    /// The view of a credential record (as stored or just refreshed), with
    /// no schedule and no flags yet. Strings shared by many credentials
    /// (provider, token type, scope) come from `interner`.
    pub(crate) fn of(
        name: Arc<str>,
        cred: &Credential,
        interner: &mut Interner,
        readers: Arc<[Grant]>,
    ) -> View {
        View {
            name,
            provider: interner.get(&cred.provider),
            access_token: cred.access_token.clone(),
            token_type: interner.get(&cred.token_type),
            scope: cred.scope.as_deref().map(|s| interner.get(s)),
            expires_at: cred.expires_at,
            last_refresh_at: cred.last_refresh_at,
            created_at: cred.created_at,
            updated_at: cred.updated_at,
            next_refresh_at: None,
            readers,
            state: cred.state,
            lifetime_source: cred.lifetime_source,
            has_refresh_token: cred.refresh_token.is_some(),
            grant: cred.grant.kind(),
            refreshing: false,
            on_invalid_grant: OnInvalidGrant::default(),
            uncommitted: false,
            slot: 0,
            extras: Extras {
                id_token: match cred.extra.get("id_token") {
                    Some(serde_json::Value::String(id)) => Some(Secret::new(id.as_str())),
                    _ => None,
                },
                refresh_expires_at: cred.refresh_expires_at,
                last_error: cred.last_error.clone(),
                paused: None,
                warning: None,
                failed_attempts: 0,
            }
            .boxed(),
        }
    }

    /// The view of `cred` alone, for tests: its own interner, no readers.
    #[cfg(test)]
    pub(crate) fn of_alone(cred: &Credential) -> View {
        View::of(
            Arc::from(cred.name.as_str()),
            cred,
            &mut Interner::default(),
            Arc::from(Vec::new()),
        )
    }

    /// The extras, or empty ones.
    pub(crate) fn extras(&self) -> &Extras {
        static NONE: Extras = Extras {
            id_token: None,
            refresh_expires_at: None,
            last_error: None,
            paused: None,
            warning: None,
            failed_attempts: 0,
        };
        self.extras.as_deref().unwrap_or(&NONE)
    }

    /// Changes the extras, dropping the box when they become empty.
    pub(crate) fn edit_extras(&mut self, edit: impl FnOnce(&mut Extras)) {
        let mut extras = self.extras.take().map(|b| *b).unwrap_or_default();
        edit(&mut extras);
        self.extras = extras.boxed();
    }

    /// Why refreshing is paused, if it is.
    pub(crate) fn paused(&self) -> Option<&str> {
        self.extras().paused.as_deref()
    }

    /// The access token if it is still valid for at least `min_valid_ms` at
    /// `now` and may be served. After the grant was rejected it is served
    /// only if the provider says `serve_until_expiry`: an access token may
    /// outlive a dead refresh token (keeping clients working while a human
    /// re-authorizes), but a provider that revokes the whole grant has killed
    /// it too, and a script must not take it for a good one.
    pub(crate) fn valid_token(&self, now: i64, min_valid_ms: i64) -> Option<&Secret> {
        if self.state == State::NeedsReauth && self.on_invalid_grant == OnInvalidGrant::Withhold {
            return None;
        }
        match (&self.access_token, self.expires_at) {
            (Some(t), Some(exp)) if exp.saturating_sub(now) > min_valid_ms => Some(t),
            _ => None,
        }
    }

    /// How long the last token the provider issued was valid for (ms), if
    /// known: no token can be valid for longer after a refresh.
    pub(crate) fn issued_lifetime_ms(&self) -> Option<i64> {
        let lifetime = self.expires_at?.saturating_sub(self.last_refresh_at?);
        (lifetime > 0).then_some(lifetime)
    }

    /// The state shown to users: `paused` overrides the stored state.
    pub(crate) fn state_name(&self) -> &'static str {
        match (self.paused(), self.state) {
            (_, State::NeedsReauth) => "needs_reauth",
            (Some(_), State::Active) => "paused",
            (None, State::Active) => "active",
        }
    }

    /// Why a token served from this view deserves a caveat, if it does: the
    /// credential needs re-authorization or is paused (its token is still
    /// served until it expires), or its refresh token is about to expire.
    pub(crate) fn caveat(&self) -> Option<String> {
        let extras = self.extras();
        match (&extras.paused, self.state) {
            (_, State::NeedsReauth) => Some(format!(
                "credential `{}` needs re-authorization ({}); this token is served until it expires: add a new refresh token with `tokend add {} --provider {}`",
                self.name,
                extras.last_error.as_deref().unwrap_or("the provider rejected the grant"),
                self.name,
                self.provider
            )),
            (Some(reason), _) => Some(format!(
                "credential `{}` is paused: {reason}; this token is served until it expires",
                self.name
            )),
            (None, State::Active) => extras.warning.clone(),
        }
    }
}

/// Shares the strings many credentials have in common (provider names,
/// token types, scopes), so each costs one reference, not one copy.
#[derive(Default)]
pub(crate) struct Interner {
    strings: std::collections::HashSet<Arc<str>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::LifetimeSource;

    fn view_of(cred: &Credential, on_invalid_grant: OnInvalidGrant) -> View {
        let mut view = View::of_alone(cred);
        view.on_invalid_grant = on_invalid_grant;
        view
    }

    #[test]
    fn valid_token_honours_min_validity_and_the_invalid_grant_policy() {
        let mut c = Credential::new("c", "p", None, 0);
        c.access_token = Some(Secret::new("a"));
        c.expires_at = Some(10_000);
        c.lifetime_source = Some(LifetimeSource::ExpiresIn);
        let v = view_of(&c, OnInvalidGrant::Withhold);
        assert!(v.valid_token(5_000, 0).is_some());
        assert!(v.valid_token(5_000, 5_000).is_none());
        assert!(v.valid_token(10_000, 0).is_none());
        c.state = State::NeedsReauth;
        assert!(view_of(&c, OnInvalidGrant::Withhold)
            .valid_token(5_000, 0)
            .is_none());
        assert!(view_of(&c, OnInvalidGrant::ServeUntilExpiry)
            .valid_token(5_000, 0)
            .is_some());
    }
}
