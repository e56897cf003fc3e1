//! The configuration file's raw serde shape: every table as written, every
//! key optional, unknown keys rejected (`deny_unknown_fields`). Nothing here
//! judges a value; that is `validate`'s job.
//!
//! Every field is optional: a table that does not read whole is read again
//! one key at a time (`Collector::table`), and a missing required key is the
//! validation's to report.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// `[credentials.NAME]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) readers: Option<Vec<String>>,
    pub(super) provider: Option<String>,
    pub(super) grant: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) params: Option<toml::Table>,
    pub(super) git_hosts: Option<Vec<String>>,
    pub(super) git_username: Option<String>,
    pub(super) sinks: Option<Vec<RawSink>>,
}

/// `[[credentials.NAME.sinks]]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub(super) path: Option<PathBuf>,
    pub(super) format: Option<String>,
    pub(super) template: Option<String>,
    /// An octal string ("0640") or an integer (0o640 in TOML).
    pub(super) mode: Option<toml::Value>,
    /// A user name or uid.
    pub(super) owner: Option<toml::Value>,
    /// A group name or gid.
    pub(super) group: Option<toml::Value>,
    pub(super) on_remove: Option<String>,
}

/// `[daemon]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) socket: Option<PathBuf>,
    /// An SQLite file's path, or a `postgres://` URL.
    pub(super) database: Option<String>,
    pub(super) database_password_file: Option<PathBuf>,
    pub(super) database_password_credential: Option<String>,
    pub(super) database_ca_file: Option<PathBuf>,
    pub(super) refresh_remaining: Option<f64>,
    pub(super) refresh_jitter: Option<f64>,
    pub(super) min_refresh_interval: Option<RawDuration>,
    pub(super) max_refresh_margin: Option<RawDuration>,
    pub(super) max_concurrent_refreshes: Option<usize>,
    pub(super) retry_initial: Option<RawDuration>,
    pub(super) retry_max: Option<RawDuration>,
    pub(super) shutdown_timeout: Option<RawDuration>,
    pub(super) read_timeout: Option<RawDuration>,
    pub(super) default_lifetime: Option<RawDuration>,
    pub(super) request_timeout: Option<RawDuration>,
    pub(super) max_response_bytes: Option<usize>,
    pub(super) admin_group: Option<String>,
    pub(super) socket_group: Option<String>,
    pub(super) metrics_credential_limit: Option<usize>,
    pub(super) metrics_listen: Option<String>,
    pub(super) encryption_key_file: Option<PathBuf>,
    pub(super) encryption_key_credential: Option<String>,
}

/// A provider's keys but its sub-tables ([`PROVIDER_TABLES`]), which are read
/// on their own so that their keys have their own lines.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) token_url: Option<String>,
    pub(super) authorization_url: Option<String>,
    pub(super) redirect_host: Option<String>,
    pub(super) redirect_port: Option<u16>,
    pub(super) redirect_path: Option<String>,
    pub(super) device_authorization_url: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) revocation_url: Option<String>,
    pub(super) revoke_on_remove: Option<bool>,
    pub(super) discovery_refresh: Option<RawDuration>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<OneOrMany>,
    pub(super) client_secret_file: Option<OneOrMany>,
    pub(super) client_secret_env: Option<OneOrMany>,
    pub(super) client_secret_credential: Option<OneOrMany>,
    pub(super) client_auth: Option<String>,
    pub(super) client_assertion_key_file: Option<PathBuf>,
    pub(super) client_assertion_key_credential: Option<String>,
    pub(super) client_assertion_alg: Option<String>,
    pub(super) client_assertion_kid: Option<String>,
    pub(super) assertion_audience: Option<String>,
    pub(super) assertion_lifetime: Option<RawDuration>,
    pub(super) send_client_id: Option<bool>,
    pub(super) scope: Option<String>,
    pub(super) reauth_errors: Option<Vec<String>>,
    pub(super) default_lifetime: Option<RawDuration>,
    pub(super) request_timeout: Option<RawDuration>,
    pub(super) max_response_bytes: Option<usize>,
    pub(super) allow_insecure_http: Option<bool>,
    pub(super) max_concurrent_refreshes: Option<usize>,
    pub(super) keepalive: Option<RawDuration>,
    pub(super) refresh_token_warning: Option<RawDuration>,
    pub(super) on_invalid_grant: Option<String>,
    pub(super) readers: Option<Vec<String>>,
    pub(super) dpop: Option<bool>,
}

/// The sub-tables of `[providers.NAME]`.
pub(super) const PROVIDER_TABLES: [&str; 6] = [
    "refresh",
    "exchange",
    "client_credentials",
    "device",
    "authorize",
    "response",
];

/// `[providers.NAME.refresh]`, `[providers.NAME.exchange]`,
/// `[providers.NAME.client_credentials]` and `[providers.NAME.device]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequest {
    pub(super) encoding: Option<String>,
    pub(super) fields: Option<toml::Table>,
    pub(super) headers: Option<toml::Table>,
}

/// `[providers.NAME.response]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponse {
    pub(super) access_token: Option<String>,
    pub(super) refresh_token: Option<String>,
    pub(super) expires_in: Option<String>,
    pub(super) token_type: Option<String>,
    pub(super) scope: Option<String>,
}

/// A string, or a list of strings in order (several client secrets, the
/// one in use first, during a rotation).
#[derive(Clone)]
pub(super) struct OneOrMany(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A duration as whole seconds or a human string ("90s", "5m", "1h 30m").
#[derive(Clone)]
pub(super) enum RawDuration {
    /// Whole seconds.
    Seconds(u64),
    /// Text for `humantime` to parse.
    Text(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: whole seconds, or a string such as \"90s\" or \"5m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration::Seconds(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawDuration, E> {
                u64::try_from(v)
                    .map(RawDuration::Seconds)
                    .map_err(|_| E::custom(format!("`{v}` is negative; a duration is 0 or more")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}
