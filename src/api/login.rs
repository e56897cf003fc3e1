//! Wire types of logging in: `tokend login`'s authorization request
//! (its redirect settings and URL) and device logins.

use serde::{Deserialize, Serialize};

/// `GET /v1/providers/{name}/login`: where `tokend login` listens for the
/// browser's return, so that it can bind before it asks for the URL
/// (`redirect_port` 0: any free port), and the provider's issuer, which an
/// `iss` in the redirect must equal (RFC 9207):
///
/// ```json
/// {"provider":"google","redirect_host":"127.0.0.1","redirect_port":0,
///  "redirect_path":"/callback","issuer":"https://accounts.google.com"}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoginSettings {
    /// Provider name.
    pub(crate) provider: String,
    /// `127.0.0.1`, `localhost` or `[::1]`.
    pub(crate) redirect_host: String,
    /// The fixed port, or 0 for any.
    pub(crate) redirect_port: u16,
    /// The path the browser is sent back to.
    pub(crate) redirect_path: String,
    /// The provider's issuer identifier, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) issuer: Option<String>,
}

/// The query of `GET /v1/providers/{name}/authorize`: what the CLI brings
/// to the authorization request (the PKCE verifier stays with it):
///
/// ```json
/// {"redirect_uri":"http://127.0.0.1:49152/callback","state":"Yk3...",
///  "code_challenge":"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthorizeQuery {
    /// The loopback URI the CLI listens on.
    pub(crate) redirect_uri: String,
    /// The CLI's random state.
    pub(crate) state: String,
    /// The S256 challenge of the CLI's verifier.
    pub(crate) code_challenge: String,
}

/// `GET /v1/providers/{name}/authorize`: the URL to open in a browser (it
/// holds no secret: the challenge is a hash of the verifier):
///
/// ```json
/// {"url":"https://accounts.example/auth?response_type=code&client_id=..."}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AuthorizeUrl {
    /// The full authorization URL.
    pub(crate) url: String,
}

/// `POST /v1/credentials/{name}/device`: start a device login (RFC 8628).
///
/// ```json
/// {"provider":"tv"}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartDeviceLogin {
    /// Provider name from the configuration.
    pub(crate) provider: String,
}

/// A device login, as `POST /v1/credentials/{name}/device` starts it and
/// `GET /v1/logins[/{name}]` shows it. The device code never leaves the
/// daemon.
///
/// ```json
/// {"name":"tv","provider":"tv","state":"pending","user_code":"WDJB-MJHT",
///  "verification_uri":"https://example.com/device",
///  "verification_uri_complete":"https://example.com/device?user_code=WDJB-MJHT",
///  "expires_at":1767225600,"expires_in":1800,"interval":5,"reason":null,
///  "started_at":1767223800,"finished_at":null}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoginStatus {
    /// Credential name.
    pub(crate) name: String,
    /// Provider name.
    pub(crate) provider: String,
    /// How the login stands.
    pub(crate) state: LoginState,
    /// What the user enters at `verification_uri`.
    pub(crate) user_code: String,
    /// Where the user goes to approve.
    pub(crate) verification_uri: String,
    /// The URI with the user code in it, if the provider gives one.
    #[serde(default)]
    pub(crate) verification_uri_complete: Option<String>,
    /// When the codes expire, Unix seconds.
    pub(crate) expires_at: i64,
    /// Seconds until they expire (negative once expired).
    pub(crate) expires_in: i64,
    /// Seconds between the daemon's polls.
    pub(crate) interval: u64,
    /// Why a failed login failed.
    #[serde(default)]
    pub(crate) reason: Option<String>,
    /// When the login started, Unix seconds.
    pub(crate) started_at: i64,
    /// When it ended, Unix seconds.
    #[serde(default)]
    pub(crate) finished_at: Option<i64>,
}

/// The `state` of a [`LoginStatus`]:
///
/// ```json
/// "pending"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LoginState {
    /// Waiting for the user; the daemon polls.
    Pending,
    /// Approved: the credential is stored.
    Succeeded,
    /// Ended without a credential; `reason` says why.
    Failed,
}
