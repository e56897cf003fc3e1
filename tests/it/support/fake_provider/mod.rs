//! A strict fake OAuth2 token endpoint, for tokend's integration tests and for
//! the runnable `fake_provider` example.
//!
//! It copies five real token endpoints (the seed documents) and is **strict on
//! purpose**: a request that differs in any detail from what the real provider
//! documents (path, method, content type, client authentication, headers,
//! the exact set of body fields, duplicate fields, a stray query string) is
//! refused the way the real provider would refuse it. Each such wire-format
//! problem is also written as a readable line to [`FakeProvider::rejections`],
//! so a test can assert the list is empty, meaning the client spoke the format
//! exactly. Refresh tokens that are only unknown, used or revoked are answered
//! as invalid but are *not* counted as rejections: a correct client can send
//! them.
//!
//! | [`Flavor`]          | endpoint                | client authentication                              |
//! |---------------------|-------------------------|----------------------------------------------------|
//! | `Didit`             | `POST /auth/v2/token`   | `Basic base64(id:secret)`, form body (seeds 000/001) |
//! | `Partner`           | `POST /v1/auth/token`   | `partnerId` + `grantType` headers, JSON body (002) |
//! | `Bakrypt`           | `POST /auth/token/`     | `client_id`/`client_secret` in the form body (003) |
//! | `DigiRunner`        | `POST /oauth/token`     | `Basic base64(id:base64(password))` (004, I)       |
//! | `DigiRunnerPublic`  | `POST /oauth/token`     | `Basic base64(id:)` (004, II)                      |
//!
//! Rotation is strict by default: a refresh token is accepted once, and a used
//! one sent again is refused and counted in
//! [`FakeProvider::reused_refresh_tokens`]. [`FakeConfig::with_reuse_grace`]
//! adds a rotation leeway (as Auth0's reuse interval or Okta's grace period):
//! a used token presented within the grace of its first use is accepted once
//! more and counted in [`FakeProvider::reused_within_grace`] instead;
//! [`FakeConfig::with_family_on_reuse`] makes a reuse after it revoke the
//! whole family, as reuse detection does. Every
//! grant (a minted refresh token, a code exchange) starts a *family*; tokens
//! rotated from it stay in that family, and
//! [`FakeProvider::family_refresh_count`] counts its successful refreshes. Faults
//! ([`Fault`]) can be queued or made sticky to imitate outages, rate limits,
//! broken bodies, hung or reset connections; a faulted request does not
//! consume its refresh token unless the fault is [`Fault::ProcessThenReset`].
//!
//! `POST /admin/grant`, `POST /admin/code` and `POST /admin/revoke` let a
//! person drive the example with curl; they are not token requests.
//!
//! Connections are served with hyper directly (not through a router) so a
//! fault can drop a socket with a TCP reset instead of answering.
//!
//! The module is self-contained: it is included by path both from the
//! integration tests and from `examples/fake_provider.rs`, and depends on no
//! code of the `tokend` crate. Its parts share these imports (`use super::*`):
//! `config` (what it is started with), `provider` (the handle tests hold),
//! `state` (token families and the grants), `wire` (the strict checks),
//! `tokens` (token shapes and the leak scan) and `http` (serving, faults).

// Each target that includes this module (the `it` binary, the benches, the
// example) uses a different part of its API, so in every one of them some
// of it is unused.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::distr::Alphanumeric;
use rand::Rng as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::task::{JoinHandle, JoinSet};

mod assertion;
mod authorize;
mod config;
mod device;
mod discovery;
mod dpop;
mod http;
mod provider;
mod revoke;
mod state;
mod tokens;
mod wire;

pub use assertion::AssertionCheck;
pub use config::{ExpiresIn, FakeConfig, FamilyOnReuse, Fault};
#[allow(unused_imports)] // only the integration tests drive the device grant
pub use device::{DevicePoll, DeviceSettings};
// Only the integration tests switch the metadata documents.
#[allow(unused_imports)]
pub use discovery::DiscoveryMode;
pub use provider::FakeProvider;
pub use tokens::find_leaks;
pub use wire::pkce_s256;

use authorize::{AuthorizeState, AUTHORIZE_PATH};
use device::*;
use discovery::*;
use dpop::DpopState;
use http::*;
use revoke::*;
use state::*;
use tokens::*;
use wire::*;

/// Largest request body read; anything longer is refused as malformed.
pub(super) const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Which real token endpoint to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Didit (seeds 000 and 001): `POST /auth/v2/token`, form body,
    /// `Authorization: Basic base64(client_id:client_secret)`; also serves the
    /// authorization-code exchange, with optional PKCE.
    Didit,
    /// The partner API (seed 002): `POST /v1/auth/token`, headers `partnerId`
    /// and `grantType: refresh_token`, JSON body `{"refreshToken": ...}`.
    Partner,
    /// Bakrypt (seed 003): `POST /auth/token/`, form body carrying
    /// `client_id` and `client_secret`.
    Bakrypt,
    /// digiRunner, confidential client (seed 004, scenario I):
    /// `POST /oauth/token`, `Authorization: Basic base64(id ":" base64(password))`.
    DigiRunner,
    /// digiRunner, public PKCE client (seed 004, scenario II):
    /// `Authorization: Basic base64(id ":")`.
    DigiRunnerPublic,
}

impl Flavor {
    /// Every flavour, in declaration order.
    pub const ALL: [Flavor; 5] = [
        Flavor::Didit,
        Flavor::Partner,
        Flavor::Bakrypt,
        Flavor::DigiRunner,
        Flavor::DigiRunnerPublic,
    ];

    /// The token endpoint's path.
    pub fn token_path(self) -> &'static str {
        match self {
            Flavor::Didit => "/auth/v2/token",
            Flavor::Partner => "/v1/auth/token",
            Flavor::Bakrypt => "/auth/token/",
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => "/oauth/token",
        }
    }

    /// The command-line name (`didit`, `partner`, `bakrypt`, `digirunner`,
    /// `digirunner-public`); [`FromStr`] accepts the same.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Didit => "didit",
            Flavor::Partner => "partner",
            Flavor::Bakrypt => "bakrypt",
            Flavor::DigiRunner => "digirunner",
            Flavor::DigiRunnerPublic => "digirunner-public",
        }
    }

    /// The `client_auth` value of a tokend provider configured for this flavour.
    pub fn client_auth(self) -> &'static str {
        match self {
            Flavor::Didit => "basic",
            Flavor::Partner => "none",
            Flavor::Bakrypt => "body",
            Flavor::DigiRunner | Flavor::DigiRunnerPublic => "digirunner",
        }
    }

    pub(super) fn is_digirunner(self) -> bool {
        matches!(self, Flavor::DigiRunner | Flavor::DigiRunnerPublic)
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Flavor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flavor::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Flavor::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown flavour {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}
