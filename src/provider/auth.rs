//! Client authentication at the token endpoint (RFC 6749 §2.3): every
//! method's configuration name, what it needs from the configuration and its
//! wire form live here and only here, so a new method is one new variant of
//! [`ClientAuth`] and one arm in each of its three `match`es below.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::template::{one_of, RequestTemplate};

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// `Authorization: Basic base64(id:secret)`.
    Basic,
    /// As `Basic`, but id and secret are form-urlencoded first, as RFC 6749
    /// §2.3.1 strictly requires.
    BasicUrlencoded,
    /// `client_id` and `client_secret` in the request body.
    Body,
    /// No client authentication; `client_id` is sent in the body if
    /// configured (public clients, RFC 6749 §3.2.1).
    None,
    /// digiRunner: `Basic Base64(id ":" Base64(secret))`, or `Basic Base64(id ":")`
    /// for a public PKCE client without a secret.
    DigiRunner,
    /// A JWT signed with the client's private key in the body (RFC 7523
    /// §2.2, OIDC Core §9 `private_key_jwt`).
    PrivateKeyJwt,
    /// A JWT signed with the client secret (HS256) in the body (OIDC Core
    /// §9 `client_secret_jwt`).
    ClientSecretJwt,
}

/// What a client-auth method needs from the provider's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Nothing: `client_id` is sent if configured.
    Nothing,
    /// A `client_id`; a secret is used if configured.
    Id,
    /// A `client_id` and a client secret.
    IdAndSecret,
    /// A `client_id` and a private key.
    IdAndKey,
}

/// A signed client assertion to send, and whether `client_id` goes beside it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SignedAssertion<'a> {
    /// The JWT.
    pub(crate) jwt: &'a str,
    /// Send `client_id` too (RFC 7523 §3.1 leaves it optional).
    pub(crate) with_client_id: bool,
}

impl ClientAuth {
    /// Every method, in the order messages name them.
    const ALL: [ClientAuth; 7] = [
        ClientAuth::Basic,
        ClientAuth::BasicUrlencoded,
        ClientAuth::Body,
        ClientAuth::None,
        ClientAuth::DigiRunner,
        ClientAuth::PrivateKeyJwt,
        ClientAuth::ClientSecretJwt,
    ];

    /// The names of this method in `client_auth = "..."`: tokend's own
    /// first, then the one OAuth server metadata uses (RFC 8414), if any.
    fn names(self) -> &'static [&'static str] {
        match self {
            ClientAuth::Basic => &["basic", "client_secret_basic"],
            ClientAuth::BasicUrlencoded => &["basic_urlencoded"],
            ClientAuth::Body => &["body", "client_secret_post"],
            ClientAuth::None => &["none"],
            ClientAuth::DigiRunner => &["digirunner"],
            ClientAuth::PrivateKeyJwt => &["private_key_jwt"],
            ClientAuth::ClientSecretJwt => &["client_secret_jwt"],
        }
    }

    /// tokend's own name of this method.
    pub(crate) fn name(self) -> &'static str {
        self.names()[0]
    }

    /// What this method needs from the configuration.
    pub(crate) fn needs(self) -> Needs {
        match self {
            ClientAuth::Basic
            | ClientAuth::BasicUrlencoded
            | ClientAuth::Body
            | ClientAuth::ClientSecretJwt => Needs::IdAndSecret,
            ClientAuth::PrivateKeyJwt => Needs::IdAndKey,
            ClientAuth::DigiRunner => Needs::Id,
            ClientAuth::None => Needs::Nothing,
        }
    }

    /// Whether this method signs a client assertion ([`SignedAssertion`]).
    pub(crate) fn signs(self) -> bool {
        matches!(
            self,
            ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt
        )
    }

    /// Adds this method's wire form to a request built from `template`: an
    /// `Authorization` header, or body fields the template does not already
    /// send. `assertion` is the signed JWT of the methods that [`sign`](Self::signs).
    pub(crate) fn apply(
        self,
        id: Option<&str>,
        secret: Option<&str>,
        assertion: Option<SignedAssertion<'_>>,
        template: &RequestTemplate,
        out: &mut Parts,
    ) {
        let unsent = |name: &str| !template.mentions(name);
        match self {
            ClientAuth::Basic => out.authorization(basic(id.unwrap_or(""), secret.unwrap_or(""))),
            ClientAuth::BasicUrlencoded => {
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                out.authorization(basic(&enc(id.unwrap_or("")), &enc(secret.unwrap_or(""))));
            }
            ClientAuth::DigiRunner => {
                out.authorization(digirunner_authorization(id.unwrap_or(""), secret));
            }
            ClientAuth::Body => {
                if unsent("client_id") {
                    out.field("client_id", id);
                }
                if unsent("client_secret") {
                    out.field("client_secret", secret);
                }
            }
            ClientAuth::None => {
                if unsent("client_id") {
                    out.field("client_id", id);
                }
            }
            ClientAuth::PrivateKeyJwt | ClientAuth::ClientSecretJwt => {
                let with_id = assertion.is_some_and(|a| a.with_client_id);
                if with_id && unsent("client_id") {
                    out.field("client_id", id);
                }
                out.field(
                    "client_assertion_type",
                    assertion.map(|_| super::assertion::ASSERTION_TYPE),
                );
                out.field("client_assertion", assertion.map(|a| a.jwt));
            }
        }
    }

    /// The method called `name` in a configuration.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.names().contains(&name))
    }

    /// tokend's own names of every method, as a message lists them:
    /// `basic, body or none`.
    pub(crate) fn known_names() -> String {
        one_of(&Self::ALL.map(|m| m.names()[0]))
    }
}

/// The headers and body fields of a request being built.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    /// Headers in order.
    pub(crate) headers: Vec<(String, String)>,
    /// Body fields in order.
    pub(crate) fields: Vec<(String, String)>,
}

impl Parts {
    fn authorization(&mut self, value: String) {
        self.headers.push(("Authorization".into(), value));
    }

    fn field(&mut self, name: &str, value: Option<&str>) {
        self.fields
            .extend(value.map(|v| (name.to_string(), v.to_string())));
    }
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", B64.encode(format!("{id}:{secret}")))
}

/// digiRunner's client credential: `Basic Base64(id ":" Base64(password))`, or
/// `Basic Base64(id ":")` for a public PKCE client.
fn digirunner_authorization(client_id: &str, password: Option<&str>) -> String {
    let inner = password.map(|p| B64.encode(p)).unwrap_or_default();
    format!("Basic {}", B64.encode(format!("{client_id}:{inner}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digirunner_test_vectors() {
        assert_eq!(
            digirunner_authorization("tspclient", Some("tsp123abcd")),
            "Basic dHNwY2xpZW50OmRITndNVEl6WVdKalpBPT0="
        );
        assert_eq!(
            digirunner_authorization("tspclient", None),
            "Basic dHNwY2xpZW50Og=="
        );
    }

    #[test]
    fn names_and_aliases() {
        assert_eq!(
            ClientAuth::known_names(),
            "basic, basic_urlencoded, body, none, digirunner, private_key_jwt or client_secret_jwt"
        );
        assert_eq!(
            ClientAuth::from_name("client_secret_post"),
            Some(ClientAuth::Body)
        );
        assert_eq!(
            ClientAuth::from_name("client_secret_basic"),
            Some(ClientAuth::Basic)
        );
        assert_eq!(ClientAuth::from_name("magic"), None);
    }
}
