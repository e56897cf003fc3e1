//! Integration tests: the real `tokend` binary, a real SQLite file, a real
//! Unix socket, and real HTTP over loopback to a strict fake provider.
//! One test binary, as ripgrep does, so the build is shared.

mod support;

mod access;
mod access_hardening;
mod api_errors;
mod cli;
mod cli_hardening;
mod client_assertion;
mod client_credentials;
mod completions;
mod crash;
mod crash_loop;
mod deb;
mod device;
mod discovery;
mod dpop;
mod encryption;
mod exec;
mod fake_selftest;
mod fast_read;
mod faults;
mod git_credential;
mod hardening;
mod hooks;
mod journal;
mod lifecycle;
mod limits;
mod login;
mod metrics;
mod notify;
mod oidc_device;
mod oidc_discovery;
mod oidc_dpop;
mod oidc_jwt;
mod oidc_login;
mod oidc_server;
mod postgres;
mod refresh_hardening;
mod robustness;
mod scale;
mod seeds;
mod sinks;
mod system;
mod units;
mod watch;
