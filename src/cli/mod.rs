//! The command line (clap): `tokend daemon` runs the service; every other
//! command talks to a running daemon over its socket, except `check-config`,
//! which only reads the configuration, `rekey`, which re-encrypts the
//! database while the daemon is stopped, and `completions` and `man`, which
//! print what the argument definitions below generate. Exit codes: 0 success, 1 failure
//! (no token, daemon unreachable...), 2 usage or configuration error.
//!
//! Every value an option or argument takes may begin with `-`: authorization
//! codes and PKCE verifiers are base64url, and one in 64 begins with it.
//! Output goes through `outln!`, so a reader that closes the pipe early
//! (`tokend status | head -1`) ends the command quietly with status 0.
//!
//! This module holds the arguments and the dispatch; `commands` the commands
//! that talk to the socket (and `check-config`) and how they print;
//! `generate` the completions and manual; `git_credential` the git helper.

use std::ffi::OsString;
use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::runtime::Builder;

use crate::client::Client;
use crate::config::ConfigError;
use crate::daemon::{self, DaemonOptions};
use crate::logging::LogTarget;
use crate::paths;
use crate::token::Secret;

/// Prints a line on stdout; a closed stdout ends the command (see [`main`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints a line on stderr, ignoring failure: there is nowhere left to say so.
macro_rules! errln {
    ($($arg:tt)*) => {
        let _ = writeln!(io::stderr(), $($arg)*);
    };
}

mod commands;
mod device;
mod dpop;
mod exec;
mod generate;
mod git_credential;
mod login;
mod start;
mod watch;

pub use start::start;

use commands::{
    add, add_client_credentials, check_config, exchange, exchange_body, get, refresh, remove,
    status,
};

/// tokend keeps OAuth2 access tokens fresh and hands them to local programs.
#[derive(Debug, Parser)]
#[command(name = "tokend", version, about)]
pub(crate) struct Cli {
    /// The daemon's socket [default: $TOKEND_SOCKET, else the daemon's default
    /// path, else /run/tokend/tokend.sock if that exists].
    #[arg(long, global = true, value_name = "PATH", allow_hyphen_values = true)]
    pub(crate) socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon in the foreground.
    Daemon {
        /// Configuration file [default: $CONFIGURATION_DIRECTORY/config.toml or
        /// ~/.config/tokend/config.toml; may be absent].
        #[arg(long, short, value_name = "FILE", allow_hyphen_values = true)]
        config: Option<PathBuf>,
        /// Database file, overriding the configuration.
        #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
        database: Option<PathBuf>,
        /// Where to log: the journal if stderr is connected to it (auto),
        /// the journal, or stderr.
        #[arg(long, value_enum, default_value_t = LogTarget::Auto, allow_hyphen_values = true)]
        log: LogTarget,
    },
    /// Print a credential's current access token.
    Get {
        /// Credential name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Refresh first if the token would expire within this many seconds.
        #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
        min_valid: Option<u64>,
        /// Print the whole token response as JSON.
        #[arg(long)]
        json: bool,
        /// For a DPoP credential: print `Authorization: DPoP <token>` and
        /// `DPoP: <proof>` header lines for a request with this method and URL.
        #[arg(long, num_args = 2, value_names = ["METHOD", "URL"], allow_hyphen_values = true)]
        dpop: Option<Vec<String>>,
        /// With --dpop: the nonce the resource server gave (DPoP-Nonce).
        #[arg(long, requires = "dpop", allow_hyphen_values = true)]
        nonce: Option<String>,
    },
    /// Show credentials and their state (never secrets).
    Status {
        /// Only this credential.
        #[arg(allow_hyphen_values = true)]
        name: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Add or replace a credential from a refresh token read from stdin,
    /// or (--client-credentials) one the daemon acquires by the client alone.
    Add {
        /// Credential name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Provider name from the configuration.
        #[arg(long, short, allow_hyphen_values = true)]
        provider: String,
        /// Read the refresh token from this file instead of stdin.
        #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
        refresh_token_file: Option<PathBuf>,
        /// No refresh token: the daemon acquires and re-acquires the token
        /// with the provider's client credentials (RFC 6749 §4.4).
        #[arg(long, conflicts_with = "refresh_token_file")]
        client_credentials: bool,
        /// Scope to request (with --client-credentials); the provider's if absent.
        #[arg(long, requires = "client_credentials", allow_hyphen_values = true)]
        scope: Option<String>,
        /// An extra form field of the request, e.g. --param audience=https://api.example
        /// (with --client-credentials; repeatable).
        #[arg(
            long = "param",
            value_name = "KEY=VALUE",
            requires = "client_credentials",
            allow_hyphen_values = true
        )]
        params: Vec<String>,
    },
    /// Create a credential by exchanging an authorization code, read from
    /// stdin (the PKCE verifier on a second line) unless --code is given.
    Exchange {
        /// Credential name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Provider name from the configuration.
        #[arg(long, short, allow_hyphen_values = true)]
        provider: String,
        /// The authorization code. Without it, the code is read from stdin
        /// (first line) and the PKCE code verifier from the second line, if
        /// any: other users see command-line arguments in `ps`.
        #[arg(long, allow_hyphen_values = true, value_parser = secret_arg)]
        code: Option<Secret>,
        /// The redirect URI used in the authorization request.
        #[arg(long, allow_hyphen_values = true)]
        redirect_uri: String,
        /// The PKCE code verifier, if the authorization used PKCE (better
        /// given on stdin's second line, see --code).
        #[arg(long, allow_hyphen_values = true, value_parser = secret_arg)]
        code_verifier: Option<Secret>,
    },
    /// Log in to a provider and store the credential: a browser and a loopback
    /// redirect (authorization code with PKCE), or --device (device code).
    Login {
        /// Credential name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Provider name from the configuration.
        #[arg(long, short, allow_hyphen_values = true)]
        provider: String,
        /// Device authorization grant: show a code to enter on another device.
        #[arg(long)]
        device: bool,
        /// Print the URL and do not try to open a browser.
        #[arg(long, conflicts_with = "device")]
        no_browser: bool,
        /// Headless: open the URL anywhere, then paste the address the browser
        /// was sent to at the end.
        #[arg(long, conflicts_with = "device")]
        paste: bool,
        /// Give up after this long [default: 5m].
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// With --device: return once the code is shown; the daemon goes on polling.
        #[arg(long, requires = "device")]
        no_wait: bool,
    },
    /// Print each new access token of a credential as it comes, one line
    /// each, until the credential is removed.
    Watch {
        /// Credential name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Print each whole token response as one line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a command with current access tokens in its environment, and
    /// restart or signal it on each new token.
    Exec {
        /// Which credential goes in which environment variable, e.g.
        /// mail=MAIL_TOKEN (at least one).
        #[arg(value_name = "NAME=ENVVAR", value_parser = exec::parse_mapping)]
        mappings: Vec<exec::Mapping>,
        /// On a new token: restart the command with the new environment,
        /// send it a signal (signal:HUP, signal:USR1, ...), or none.
        #[arg(long, value_name = "ACTION", default_value = "restart", value_parser = exec::parse_on_new_token, allow_hyphen_values = true)]
        on_new_token: exec::OnNewToken,
        /// Wait this long after a new token for others (several
        /// credentials refreshed together) before acting once.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
        debounce: std::time::Duration,
        /// The command and its arguments, after `--`.
        #[arg(
            last = true,
            required = true,
            value_name = "CMD",
            allow_hyphen_values = true
        )]
        command: Vec<OsString>,
    },
    /// Refresh a credential now.
    Refresh {
        /// Credential name.
        #[arg(allow_hyphen_values = true)]
        name: String,
    },
    /// Delete a credential.
    Remove {
        /// Credential name.
        #[arg(allow_hyphen_values = true)]
        name: String,
        /// Revoke its token at the provider first (RFC 7009); if that fails,
        /// the credential is kept and the command fails.
        #[arg(long)]
        revoke: bool,
        /// With --revoke: delete even if the revocation fails.
        #[arg(long, requires = "revoke")]
        force: bool,
    },
    /// Check a configuration file and report every problem.
    CheckConfig {
        /// The file [default: the daemon's default configuration path].
        #[arg(allow_hyphen_values = true)]
        file: Option<PathBuf>,
    },
    /// Act as a git credential helper: answer `get` with the token of the
    /// credential mapped to git's host (git_hosts in the configuration) or
    /// named by --credential; ignore `store` and `erase` (nothing is stored).
    GitCredential {
        /// The operation git asks for: get, store or erase.
        #[arg(allow_hyphen_values = true)]
        operation: String,
        /// Answer with this credential, whatever the host (git's
        /// configuration then chooses the hosts) [default: the one mapped to
        /// the host by the daemon's configuration].
        #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
        credential: Option<String>,
        /// The username to send with the token (Basic authentication)
        /// [default: the one in the URL, else git_username, else oauth2].
        #[arg(long, allow_hyphen_values = true)]
        username: Option<String>,
        /// Refresh first if the token would expire within this many seconds.
        #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
        min_valid: Option<u64>,
    },
    /// Print a completion script for a shell.
    Completions {
        /// The shell.
        #[arg(value_enum, allow_hyphen_values = true)]
        shell: generate::CompletionShell,
    },
    /// Print the manual page (roff), or write one page per command.
    Man {
        /// Write tokend.1, tokend-get.1... into this directory instead.
        #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
        out: Option<PathBuf>,
    },
    /// Re-encrypt every stored token under a new key (or decrypt them), in
    /// one transaction. Stop the daemon first: a database in use is refused.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["new_key", "decrypt"])))]
    Rekey {
        /// Configuration file naming the database and the current key
        /// [default: the daemon's default; may be absent].
        #[arg(long, short, value_name = "FILE", allow_hyphen_values = true)]
        config: Option<PathBuf>,
        /// Database file, overriding the configuration.
        #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
        database: Option<PathBuf>,
        /// The current key file, overriding the configuration (plaintext
        /// rows need none).
        #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
        key: Option<PathBuf>,
        /// The new key file: 32 raw bytes, 64 hex digits or base64.
        #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
        new_key: Option<PathBuf>,
        /// Store the tokens unencrypted instead.
        #[arg(long)]
        decrypt: bool,
    },
}

/// Parses arguments, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let outcome = match plain_get(std::env::args_os()) {
        // Straight to the command: `run`'s frame, with every command's
        // locals, would be more stack to fault in.
        Some(name) => get(
            &Client::new(&paths::default_client_socket()),
            &name,
            None,
            false,
        ),
        None => {
            let Cli { socket, command } = Cli::parse();
            run(socket, command)
        }
    };
    match outcome {
        Ok(code) => code,
        // The reader has all it wanted (`tokend status | head`), as ripgrep
        // treats it.
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            errln!("tokend: {e:#}");
            let usage = e.downcast_ref::<ConfigError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Stdout was closed by its reader: not a failure, nothing left to print.
#[derive(Debug, thiserror::Error)]
#[error("stdout is closed")]
struct StdoutClosed;

/// Writes `text` to stdout at once.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// Takes a secret argument (`--code`) without keeping a plain copy, so the
/// parsed command's `Debug` shows a fingerprint.
fn secret_arg(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value))
}

/// The credential name of `tokend get NAME` and nothing else, read without
/// clap, or `None`.
///
/// It is the call scripts make most, and for so short a process clap's parse
/// is costly: it builds every subcommand and argument, with tens of kilobytes
/// of heap and a stack frame of about 32 KB, which the process must fault in.
/// Any other form (any flag, a name that starts with `-`, a name that is not
/// UTF-8) goes through clap, which reads this form the same way.
fn plain_get(args: impl IntoIterator<Item = OsString>) -> Option<String> {
    let mut args = args.into_iter().skip(1);
    let (Some(command), Some(name), None) = (args.next(), args.next(), args.next()) else {
        return None;
    };
    let name = name.into_string().ok()?;
    (command == "get" && !name.starts_with('-')).then_some(name)
}

/// Runs one command. Only `daemon` and `rekey` start a tokio runtime and a
/// log subscriber: the commands that talk to the socket are blocking and log
/// nothing, and a CLI call's cost is mostly its start-up. (Over 60 lines
/// only as one flat arm per command, which reads best whole.)
#[inline(never)]
fn run(socket: Option<PathBuf>, command: Command) -> anyhow::Result<ExitCode> {
    // aws-lc is built without its load-time constructor (.cargo/config.toml),
    // so its CPU capabilities are read here, before any command can use it.
    // The plain `tokend get NAME` never reaches this.
    aws_lc_rs::init();
    // The socket default stats files, so it is worked out only when used.
    let client = || Client::new(&socket.clone().unwrap_or_else(paths::default_client_socket));
    match command {
        Command::Daemon {
            config,
            database,
            log,
        } => run_daemon(
            DaemonOptions {
                config,
                socket,
                database,
            },
            log,
        ),
        Command::Get {
            name,
            min_valid,
            json,
            dpop: Some(request),
            nonce,
        } => dpop::get(&client(), &name, min_valid, json, &request, nonce),
        Command::Get {
            name,
            min_valid,
            json,
            ..
        } => get(&client(), &name, min_valid, json),
        Command::Status { name, json } => status(&client(), name.as_deref(), json),
        Command::Add {
            name,
            provider,
            client_credentials: true,
            scope,
            params,
            ..
        } => add_client_credentials(&client(), &name, provider, scope, &params),
        Command::Add {
            name,
            provider,
            refresh_token_file,
            ..
        } => add(&client(), &name, provider, refresh_token_file),
        Command::Exchange {
            name,
            provider,
            code,
            redirect_uri,
            code_verifier,
        } => {
            let body = exchange_body(provider, code, redirect_uri, code_verifier)?;
            exchange(&client(), &name, &body)
        }
        Command::Login {
            name,
            provider,
            device: true,
            timeout,
            no_wait,
            ..
        } => device::run(&client(), &name, provider, timeout, no_wait),
        Command::Login {
            name,
            provider,
            no_browser,
            paste,
            timeout,
            ..
        } => login::run(
            &client(),
            login::LoginOptions {
                name,
                provider,
                no_browser,
                paste,
                timeout,
            },
        ),
        Command::Refresh { name } => refresh(&client(), &name),
        Command::Watch { name, json } => watch::run(&client(), &name, json),
        Command::Exec {
            mappings,
            on_new_token,
            debounce,
            command,
        } => exec::run(
            &client(),
            exec::ExecOptions {
                mappings,
                on_new_token,
                debounce,
                command,
            },
        ),
        Command::Remove {
            name,
            revoke,
            force,
        } => remove(&client(), &name, revoke, force),
        Command::CheckConfig { file } => check_config(file),
        Command::GitCredential {
            operation,
            credential,
            username,
            min_valid,
        } => git_credential::run(
            &client(),
            &operation,
            git_credential::Options {
                credential,
                username,
                min_valid,
            },
        ),
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { out } => generate::man(out.as_deref()),
        Command::Rekey {
            config,
            database,
            key,
            new_key,
            ..
        } => rekey(daemon::RekeyOptions {
            config,
            database,
            key,
            new_key,
        }),
    }
}

/// `tokend rekey`: prints what was re-sealed.
fn rekey(options: daemon::RekeyOptions) -> anyhow::Result<ExitCode> {
    outln!("{}", run_rekey(options)?)?;
    Ok(ExitCode::SUCCESS)
}

/// `tokend daemon`: logs as asked, on a multi-threaded runtime.
fn run_daemon(options: DaemonOptions, log: LogTarget) -> anyhow::Result<ExitCode> {
    crate::logging::init(log);
    block_on(Builder::new_multi_thread(), daemon::run(options))?;
    Ok(ExitCode::SUCCESS)
}

/// `tokend rekey`: logs to stderr, on one thread.
fn run_rekey(options: daemon::RekeyOptions) -> anyhow::Result<String> {
    crate::logging::init(LogTarget::Stderr);
    block_on(Builder::new_current_thread(), daemon::rekey(options))
}

/// Runs `task` on a runtime made by `builder` with every driver enabled.
fn block_on<T>(
    mut builder: Builder,
    task: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(task)
}

#[cfg(test)]
mod tests;
