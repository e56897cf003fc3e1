//! Wire types of `tokend git-credential`'s lookup.

use serde::{Deserialize, Serialize};

use super::TokenResponse;

/// `GET /v1/git-credential?host=H[&path=P][&min_valid=SECS]`: the
/// credential mapped to git host `H` (`[credentials.NAME] git_hosts`), read
/// under the same rule as `GET /v1/tokens/{name}`. An unmapped host, and a
/// mapped one the caller may not read, answer 404 alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct GitCredentialQuery {
    /// `host` or `host:port`, as git sends it.
    pub(crate) host: String,
    /// The repository path, if git sends it (`credential.useHttpPath`).
    pub(crate) path: Option<String>,
    /// As for a token read.
    pub(crate) min_valid: Option<u64>,
}

/// The answer: the username to send and the token.
///
/// ```json
/// {"username":"x-access-token","token":{"name":"github","access_token":"...",...}}
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GitCredential {
    /// The Basic username (`git_username`, default `oauth2`).
    pub(crate) username: String,
    /// The credential's current token.
    pub(crate) token: TokenResponse,
}
