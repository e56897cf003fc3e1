//! From the refresher's published [`View`]s to the wire types of `api`. The
//! conversions live here, not in `api`, so the protocol types know nothing
//! of the daemon. Times go from milliseconds to the API's seconds.

use crate::api::{
    CredentialState, CredentialStatus, GrantType, LifetimeSource, LoginStatus, TokenResponse,
};
use crate::credential::{GrantKind, State};
use crate::refresh::{LoginState, LoginView, View};
use crate::token::{self, now_ms};

/// The state shown to users: a pause overrides the stored state, a dead
/// grant overrides a pause (as `View::state_name` says it).
pub(crate) fn state(view: &View) -> CredentialState {
    match (view.paused(), view.state) {
        (_, State::NeedsReauth) => CredentialState::NeedsReauth,
        (Some(_), State::Active) => CredentialState::Paused,
        (None, State::Active) => CredentialState::Active,
    }
}

/// The wire name of where a lifetime came from.
fn lifetime_source(source: token::LifetimeSource) -> LifetimeSource {
    match source {
        token::LifetimeSource::ExpiresIn => LifetimeSource::ExpiresIn,
        token::LifetimeSource::JwtExp => LifetimeSource::JwtExp,
        token::LifetimeSource::Default => LifetimeSource::Default,
    }
}

/// The wire form of a device login.
pub(crate) fn login_status(login: &LoginView) -> LoginStatus {
    let (state, reason) = match &login.state {
        LoginState::Pending => (crate::api::LoginState::Pending, None),
        LoginState::Succeeded => (crate::api::LoginState::Succeeded, None),
        LoginState::Failed(reason) => (crate::api::LoginState::Failed, Some(reason.clone())),
    };
    LoginStatus {
        name: login.name.clone(),
        provider: login.provider.clone(),
        state,
        user_code: login.user_code.clone(),
        verification_uri: login.verification_uri.clone(),
        verification_uri_complete: login.verification_uri_complete.clone(),
        expires_at: login.expires_at / 1000,
        expires_in: login.expires_at.saturating_sub(now_ms()) / 1000,
        interval: login.interval.as_secs(),
        reason,
        started_at: login.started_at / 1000,
        finished_at: login.finished_at.map(|t| t / 1000),
    }
}

/// The token answer for a view holding a token with a known expiry, or
/// `None` when it holds none.
pub(crate) fn token_response(view: &View) -> Option<TokenResponse> {
    let expires_at_ms = view.expires_at?;
    Some(TokenResponse {
        name: view.name.to_string(),
        access_token: view.access_token.as_ref()?.expose().to_string(),
        token_type: view.token_type.to_string(),
        expires_at: expires_at_ms / 1000,
        expires_in: expires_at_ms.saturating_sub(now_ms()).max(0) / 1000,
        scope: view.scope.as_deref().map(str::to_string),
        id_token: view
            .extras()
            .id_token
            .as_ref()
            .map(|t| t.expose().to_string()),
        state: state(view),
        warning: view.caveat(),
    })
}

/// A credential's state as `GET /v1/credentials` shows it: no secrets.
pub(crate) fn credential_status(view: &View) -> CredentialStatus {
    let secs = |ms: i64| ms.div_euclid(1000);
    let extras = view.extras();
    CredentialStatus {
        name: view.name.to_string(),
        provider: view.provider.to_string(),
        state: state(view),
        expires_at: view.expires_at.map(secs),
        expires_in: view.expires_at.map(|e| secs(e.saturating_sub(now_ms()))),
        refresh_token_expires_at: extras.refresh_expires_at.map(secs),
        last_refresh_at: view.last_refresh_at.map(secs),
        next_refresh_at: view.next_refresh_at.map(secs),
        refreshing: view.refreshing,
        last_error: extras.paused.clone().or_else(|| extras.last_error.clone()),
        lifetime_source: view.lifetime_source.map(lifetime_source),
        scope: view.scope.as_deref().map(str::to_string),
        token_type: view.token_type.to_string(),
        has_refresh_token: view.has_refresh_token,
        grant: match view.grant {
            GrantKind::RefreshToken => GrantType::RefreshToken,
            GrantKind::ClientCredentials => GrantType::ClientCredentials,
        },
        uncommitted: view.uncommitted,
        warning: extras.warning.clone(),
        created_at: secs(view.created_at),
        updated_at: secs(view.updated_at),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::credential::Credential;

    fn view(state: State, paused: bool) -> View {
        let mut cred = Credential::new("c", "p", None, 0);
        cred.state = state;
        let mut view = View::of_alone(&cred);
        view.edit_extras(|n| n.paused = paused.then(|| "x".to_string()));
        view
    }

    #[test]
    fn the_wire_state_is_the_state_shown_to_users() {
        for state in [State::Active, State::NeedsReauth] {
            for paused in [false, true] {
                let view = view(state, paused);
                let status = serde_json::to_value(credential_status(&view)).unwrap();
                assert_eq!(status["state"], view.state_name(), "{state:?} {paused}");
            }
        }
    }

    #[test]
    fn wire_names_match_the_domain_names() {
        for source in [
            token::LifetimeSource::ExpiresIn,
            token::LifetimeSource::JwtExp,
            token::LifetimeSource::Default,
        ] {
            let wire = serde_json::to_value(lifetime_source(source)).unwrap();
            assert_eq!(wire, source.as_str(), "{source:?}");
        }
        for (domain, wire) in [
            (State::Active, CredentialState::Active),
            (State::NeedsReauth, CredentialState::NeedsReauth),
        ] {
            assert_eq!(serde_json::to_value(wire).unwrap(), domain.as_str());
        }
    }
}
