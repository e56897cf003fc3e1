//! tokend: a daemon that keeps OAuth2 access tokens fresh and hands them to
//! local programs over a Unix socket. See ARCHITECTURE.md for the map.

#![warn(missing_docs)]

pub mod config;
pub mod credential;
pub mod provider;
pub mod store;
pub mod token;
