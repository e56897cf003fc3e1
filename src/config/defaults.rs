//! Every value a setting takes when the configuration file leaves it out, in
//! one place. The refresh timing and the response field names have their
//! defaults beside their types (`RefreshTiming::default`,
//! `ResponseFields::default` in `token`), which these refer to.

use std::time::Duration;

use super::OnInvalidGrant;
use crate::provider::{Audience, ClientAuth, Encoding, RedirectHost, RequestTemplate};
use crate::token::{RefreshTiming, ResponseFields};

/// `[daemon] refresh_remaining`, `refresh_jitter`, `min_refresh_interval`
/// and `max_refresh_margin`.
pub(crate) fn timing() -> RefreshTiming {
    RefreshTiming::default()
}

/// `[daemon] max_concurrent_refreshes`.
pub(crate) const MAX_CONCURRENT_REFRESHES: usize = 16;
/// Credentials with an expiry series of their own on the metrics page.
pub(crate) const METRICS_CREDENTIAL_LIMIT: usize = 100;
/// `[daemon] retry_initial`.
pub(crate) const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// `[daemon] retry_max`.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(300);
/// `[daemon] shutdown_timeout`.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// `[daemon] read_timeout`.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// `default_lifetime`, of `[daemon]` (for every provider) and of a provider.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// `request_timeout`, of `[daemon]` (for every provider) and of a provider.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_response_bytes`, of `[daemon]` (for every provider) and of a provider.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A provider's `client_auth`.
pub(crate) const CLIENT_AUTH: ClientAuth = ClientAuth::Basic;
/// A provider's `assertion_audience`.
pub(crate) const ASSERTION_AUDIENCE: Audience = Audience::TokenEndpoint;
/// A provider's `assertion_lifetime`: short, as a stolen assertion is good
/// until it expires (RFC 7523 §3).
pub(crate) const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);
/// A provider's `send_client_id`.
pub(crate) const SEND_CLIENT_ID: bool = true;
/// A provider's `max_concurrent_refreshes`.
pub(crate) const PROVIDER_MAX_CONCURRENT_REFRESHES: usize = 4;
/// A provider's `refresh_token_warning`; also the warning window for a
/// credential whose provider is no longer configured.
pub(crate) const REFRESH_TOKEN_WARNING: Duration = Duration::from_secs(3 * 86_400);
/// A provider's `on_invalid_grant`.
pub(crate) const ON_INVALID_GRANT: OnInvalidGrant = OnInvalidGrant::Withhold;
/// A provider's `discovery_refresh`.
pub(crate) const DISCOVERY_REFRESH: Duration = Duration::from_secs(86_400);
/// A provider's `revoke_on_remove`.
pub(crate) const REVOKE_ON_REMOVE: bool = false;
/// A provider's `dpop`: off, as most providers do not support DPoP.
pub(crate) const DPOP: bool = false;
/// A provider's `reauth_errors`.
pub(crate) const REAUTH_ERRORS: [&str; 2] = ["invalid_grant", "invalid_token"];

/// A provider's `redirect_host`.
pub(crate) const REDIRECT_HOST: RedirectHost = RedirectHost::Ipv4;
/// A provider's `redirect_port`: any free port.
pub(crate) const REDIRECT_PORT: u16 = 0;
/// A provider's `redirect_path`.
pub(crate) const REDIRECT_PATH: &str = "/callback";

/// `[providers.NAME.refresh]`.
pub(crate) fn refresh() -> RequestTemplate {
    RequestTemplate::standard_refresh()
}

/// `[providers.NAME.exchange]`.
pub(crate) fn exchange() -> RequestTemplate {
    RequestTemplate::standard_exchange()
}

/// `[providers.NAME.client_credentials]`.
pub(crate) fn client_credentials() -> RequestTemplate {
    RequestTemplate::standard_client_credentials()
}

/// `[providers.NAME.device]`.
pub(crate) fn device() -> RequestTemplate {
    RequestTemplate::standard_device()
}

/// `encoding` of a request table that names none.
pub(crate) const ENCODING: Encoding = Encoding::Form;

/// `[providers.NAME.response]`.
pub(crate) fn response() -> ResponseFields {
    ResponseFields::default()
}
