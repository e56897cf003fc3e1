//! tokend: a daemon that keeps OAuth2 access tokens fresh and hands them to
//! local programs over a Unix socket. See ARCHITECTURE.md for the map.

#![warn(missing_docs)]

pub(crate) mod access;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod credential;
pub(crate) mod daemon;
pub(crate) mod discovery;
pub mod events;
pub(crate) mod fsguard;
pub(crate) mod hooks;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod paths;
pub mod provider;
pub(crate) mod refresh;
pub(crate) mod seal;
pub(crate) mod server;
pub(crate) mod sinks;
pub mod store;
pub(crate) mod systemd;
pub mod token;
pub(crate) mod uidcap;
