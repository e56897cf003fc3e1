//! The credential record: what tokend knows about one grant. Plain data shared
//! by the store (which persists it) and the refresher (which owns the live
//! copy); secrets are [`Secret`]s so a stray `{:?}` cannot leak them.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::provider::DpopKey;
use crate::token::{LifetimeSource, Secret, TokenSet};

/// Persisted lifecycle state of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Refreshed on schedule.
    Active,
    /// The provider rejected the grant; a human must authorize again.
    NeedsReauth,
}

impl State {
    /// The name used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::NeedsReauth => "needs_reauth",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(State::Active),
            "needs_reauth" => Ok(State::NeedsReauth),
            other => Err(format!("unknown credential state `{other}`")),
        }
    }
}

impl LifetimeSource {
    /// The name used in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            LifetimeSource::ExpiresIn => "expires_in",
            LifetimeSource::JwtExp => "jwt_exp",
            LifetimeSource::Default => "default",
        }
    }

    /// Parses a stored name; unknown names read as `Default`.
    pub fn parse(s: &str) -> Self {
        match s {
            "expires_in" => LifetimeSource::ExpiresIn,
            "jwt_exp" => LifetimeSource::JwtExp,
            _ => LifetimeSource::Default,
        }
    }
}

/// How a credential obtains its tokens, as the database names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GrantKind {
    /// From a refresh token (RFC 6749 §6), given by an operator or an
    /// authorization-code exchange.
    #[default]
    RefreshToken,
    /// By the client alone (RFC 6749 §4.4): no refresh token ever.
    ClientCredentials,
}

impl GrantKind {
    /// The name used in the database, the configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::RefreshToken => "refresh_token",
            GrantKind::ClientCredentials => "client_credentials",
        }
    }
}

impl FromStr for GrantKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refresh_token" => Ok(GrantKind::RefreshToken),
            "client_credentials" => Ok(GrantKind::ClientCredentials),
            other => Err(format!("unknown grant `{other}`")),
        }
    }
}

/// How a credential obtains its tokens, with what the request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialGrant {
    /// Refreshed with the refresh token on record.
    #[default]
    RefreshToken,
    /// Acquired again and again with `grant_type=client_credentials`.
    ClientCredentials {
        /// Scope to request; the provider's `scope` when `None`.
        scope: Option<String>,
        /// Extra form fields (`audience`, `resource`, ...), in order.
        params: Vec<(String, String)>,
    },
}

impl CredentialGrant {
    /// Which kind of grant this is.
    pub fn kind(&self) -> GrantKind {
        match self {
            CredentialGrant::RefreshToken => GrantKind::RefreshToken,
            CredentialGrant::ClientCredentials { .. } => GrantKind::ClientCredentials,
        }
    }
}

/// One credential as stored. Times are Unix milliseconds. Its `Debug` shows
/// fingerprints of the tokens and only the keys of `extra` (which holds the
/// id_token).
#[derive(Clone)]
pub struct Credential {
    /// Unique name chosen by the operator.
    pub name: String,
    /// Name of the provider table in the configuration.
    pub provider: String,
    /// How it obtains its tokens.
    pub grant: CredentialGrant,
    /// Bumped on every replacement; guards writes of in-flight refreshes.
    pub generation: i64,
    /// The current refresh token; `None` when the provider never issued one.
    pub refresh_token: Option<Secret>,
    /// The current access token, if one was ever obtained.
    pub access_token: Option<Secret>,
    /// Token type, normally `Bearer`.
    pub token_type: String,
    /// Granted scope.
    pub scope: Option<String>,
    /// When the access token expires.
    pub expires_at: Option<i64>,
    /// Where that expiry came from.
    pub lifetime_source: Option<LifetimeSource>,
    /// When the refresh token expires, if the provider said.
    pub refresh_expires_at: Option<i64>,
    /// Every other field of the latest token response (id_token, jti, ...).
    pub extra: Map<String, Value>,
    /// Lifecycle state.
    pub state: State,
    /// The last failure, scrubbed of secrets.
    pub last_error: Option<String>,
    /// Set while a refresh request is (or was, if we crashed) in flight.
    pub refresh_started_at: Option<i64>,
    /// When the last successful refresh was sent.
    pub last_refresh_at: Option<i64>,
    /// Its DPoP private key, if its provider uses DPoP. Like the refresh
    /// token, only read from the database when a request or a proof needs it.
    pub dpop_key: Option<DpopKey>,
    /// When the credential was first stored.
    pub created_at: i64,
    /// When the row last changed.
    pub updated_at: i64,
}

/// A credential as the daemon loads it at start-up: no refresh token (the
/// database keeps it, and a refresh reads it back) and, of the response
/// extras, only the id_token (which the API serves).
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The credential, with `refresh_token` unset.
    pub cred: Credential,
    /// Whether the database holds a refresh token for it.
    pub has_refresh_token: bool,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("grant", &self.grant.kind())
            .field("generation", &self.generation)
            .field("refresh_token", &self.refresh_token)
            .field("access_token", &self.access_token)
            .field("expires_at", &self.expires_at)
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .field("state", &self.state)
            .field("dpop_key", &self.dpop_key)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A credential about to be stored for the first time (or replaced).
    pub fn new(name: &str, provider: &str, refresh_token: Option<Secret>, now: i64) -> Self {
        Credential {
            name: name.to_string(),
            provider: provider.to_string(),
            grant: CredentialGrant::RefreshToken,
            generation: 0,
            refresh_token,
            access_token: None,
            token_type: "Bearer".into(),
            scope: None,
            expires_at: None,
            lifetime_source: None,
            refresh_expires_at: None,
            extra: Map::new(),
            state: State::Active,
            last_error: None,
            refresh_started_at: None,
            last_refresh_at: None,
            dpop_key: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Applies a successful token response sent at `sent_at`. A response
    /// without a refresh token keeps the old one; fields the response omits
    /// (scope, id_token...) keep their previous values.
    pub(crate) fn apply(
        &mut self,
        mut set: TokenSet,
        sent_at: i64,
        expires_at: i64,
        source: LifetimeSource,
    ) {
        if self.grant.kind() == GrantKind::ClientCredentials {
            // RFC 6749 §4.4.3 says no refresh token should be issued here;
            // one that comes anyway is ignored, not stored: the credential
            // is re-acquired with the client's own credentials, so the
            // token would be a secret at rest that nothing ever uses.
            set.refresh_token = None;
            set.refresh_expires_in = None;
        }
        let rotated = set.refresh_token.is_some();
        if let Some(rt) = set.refresh_token {
            self.refresh_token = Some(rt);
        }
        self.refresh_expires_at = match set.refresh_expires_in {
            Some(secs) => Some(crate::token::after_secs(sent_at, secs)),
            // A new refresh token of unstated lifetime: forget the old lifetime.
            None if rotated => None,
            None => self.refresh_expires_at,
        };
        self.access_token = Some(set.access_token);
        self.token_type = set.token_type;
        if set.scope.is_some() {
            self.scope = set.scope;
        }
        self.expires_at = Some(expires_at);
        self.lifetime_source = Some(source);
        self.extra.extend(set.extra);
        self.state = State::Active;
        self.last_error = None;
        self.refresh_started_at = None;
        self.last_refresh_at = Some(sent_at);
        self.updated_at = sent_at;
    }

    /// Every secret this credential holds, for scrubbing provider text.
    pub fn secrets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = [&self.refresh_token, &self.access_token]
            .into_iter()
            .flatten()
            .map(Secret::expose)
            .collect();
        if let Some(Value::String(id)) = self.extra.get("id_token") {
            out.push(id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{parse_token_response, ResponseFields};

    fn set(json: &str) -> TokenSet {
        parse_token_response(json.as_bytes(), None, &ResponseFields::default()).unwrap()
    }

    #[test]
    fn response_without_refresh_token_keeps_the_old_one_and_the_id_token() {
        let mut c = Credential::new("c", "p", Some(Secret::new("rt-1")), 0);
        c.apply(
            set(r#"{"access_token":"a1","id_token":"idt","scope":"openid"}"#),
            10,
            1_000,
            LifetimeSource::ExpiresIn,
        );
        c.apply(
            set(r#"{"access_token":"a2"}"#),
            20,
            2_000,
            LifetimeSource::ExpiresIn,
        );
        assert_eq!(c.refresh_token.as_ref().unwrap().expose(), "rt-1");
        assert_eq!(c.access_token.as_ref().unwrap().expose(), "a2");
        assert_eq!(c.extra["id_token"], "idt");
        assert_eq!(c.scope.as_deref(), Some("openid"));
        assert_eq!(c.last_refresh_at, Some(20));
    }

    #[test]
    fn a_huge_refresh_token_lifetime_does_not_overflow() {
        let mut c = Credential::new("c", "p", Some(Secret::new("rt-1")), 0);
        c.apply(
            set(&format!(
                r#"{{"access_token":"a","refresh_expires_in":{}}}"#,
                u64::MAX
            )),
            1_000,
            5_000,
            LifetimeSource::ExpiresIn,
        );
        assert_eq!(
            c.refresh_expires_at,
            Some(1_000 + crate::token::MAX_LIFETIME_MS)
        );
    }

    #[test]
    fn rotation_replaces_refresh_token_and_its_lifetime() {
        let mut c = Credential::new("c", "p", Some(Secret::new("rt-1")), 0);
        c.apply(
            set(r#"{"access_token":"a","refresh_token":"rt-2","refresh_expires_in":60}"#),
            1_000,
            5_000,
            LifetimeSource::ExpiresIn,
        );
        assert_eq!(c.refresh_token.as_ref().unwrap().expose(), "rt-2");
        assert_eq!(c.refresh_expires_at, Some(61_000));
        c.apply(
            set(r#"{"access_token":"b","refresh_token":"rt-3"}"#),
            2_000,
            6_000,
            LifetimeSource::ExpiresIn,
        );
        assert_eq!(c.refresh_expires_at, None);
    }

    #[test]
    fn a_client_credentials_credential_ignores_a_refresh_token() {
        let mut c = Credential::new("c", "p", None, 0);
        c.grant = CredentialGrant::ClientCredentials {
            scope: None,
            params: Vec::new(),
        };
        c.apply(
            set(r#"{"access_token":"a","refresh_token":"rt-unwanted","refresh_expires_in":60}"#),
            1_000,
            5_000,
            LifetimeSource::ExpiresIn,
        );
        assert!(c.refresh_token.is_none());
        assert_eq!(c.refresh_expires_at, None);
        assert_eq!(c.access_token.as_ref().unwrap().expose(), "a");
    }

    #[test]
    fn debug_shows_no_token_and_no_id_token() {
        let mut c = Credential::new("c", "p", Some(Secret::new("rt-very-secret")), 0);
        c.apply(
            set(r#"{"access_token":"at-very-secret","id_token":"idt-very-secret"}"#),
            0,
            1,
            LifetimeSource::ExpiresIn,
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("id_token"), "{shown}");
    }
}
