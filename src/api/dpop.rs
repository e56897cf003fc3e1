//! Wire types of DPoP: a token with a proof for one request of the caller's.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{redacted, TokenResponse};

/// The query of `GET /v1/tokens/{name}/dpop`: the method and URL of the
/// request the proof is for, the resource server's nonce if it gave one,
/// and `min_valid` as for a token.
///
/// ```json
/// {"htm":"GET","htu":"https://api.example/x","nonce":"eyJ7S_zG","min_valid":60}
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DpopQuery {
    /// HTTP method of the request (`GET`, `POST`...), as sent.
    pub(crate) htm: String,
    /// Its URL; query and fragment are left out of the proof (RFC 9449 §4.2).
    pub(crate) htu: String,
    /// The resource server's `DPoP-Nonce`, if it asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) nonce: Option<String>,
    /// Seconds the token must still be valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) min_valid: Option<u64>,
}

/// `GET /v1/tokens/{name}/dpop`: the token answer and a fresh proof for
/// one request, to send as `Authorization: DPoP <access_token>` and
/// `DPoP: <dpop>`:
///
/// ```json
/// {"name":"api","access_token":"eyJ...","token_type":"DPoP","expires_at":1767225600,
///  "expires_in":3312,"state":"active","dpop":"eyJ0eXAiOiJkcG9wK2p3dCIs..."}
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct DpopTokenResponse {
    /// The token, as `GET /v1/tokens/{name}` answers it.
    #[serde(flatten)]
    pub(crate) token: TokenResponse,
    /// The DPoP proof (a JWT) for that request, with `ath` of the token.
    pub(crate) dpop: String,
}

impl fmt::Debug for DpopTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopTokenResponse")
            .field("token", &self.token)
            .field("dpop", &redacted(&self.dpop))
            .finish()
    }
}
