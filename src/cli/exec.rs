//! `tokend exec NAME=ENVVAR... -- CMD ARGS`: runs a command with current
//! tokens in its environment and keeps them current. One watch stream per
//! credential (a thread each, reconnecting after a break); on a new token
//! the child is restarted with the new environment, sent a signal, or left
//! alone, once per burst of new tokens (`--debounce`). SIGINT, SIGTERM and
//! SIGHUP sent to exec are passed to the child, and exec exits with the
//! child's status (128 + the signal if it was killed).
//!
//! Tokens live in exec's memory and the child's environment only: never on
//! a command line and never printed.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::watch::watch_path;
use crate::api::TokenResponse;
use crate::client::{Client, ClientError, Events};

/// How often the child's exit is checked while nothing else happens.
const POLL: Duration = Duration::from_millis(20);
/// How long a restarted child has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest wait before reconnecting a broken watch stream.
const MAX_RECONNECT: Duration = Duration::from_secs(30);

/// One `NAME=ENVVAR` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) name: String,
    pub(crate) var: String,
}

/// Parses `NAME=ENVVAR`; the variable must be a portable name.
pub(crate) fn parse_mapping(arg: &str) -> Result<Mapping, String> {
    let Some((name, var)) = arg.rsplit_once('=') else {
        return Err(format!("`{arg}` is not NAME=ENVVAR"));
    };
    let portable = var
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if name.is_empty() || !portable {
        return Err(format!(
            "`{arg}`: want NAME=ENVVAR, ENVVAR made of letters, digits and `_`, not starting with a digit"
        ));
    }
    Ok(Mapping {
        name: name.to_string(),
        var: var.to_string(),
    })
}

/// What to do when a token changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnNewToken {
    /// Stop the child (SIGTERM, then SIGKILL after a grace) and start it
    /// again with the new environment.
    Restart,
    /// Send the child this signal (it re-reads its tokens itself, e.g.
    /// from `tokend get`).
    Signal(i32),
    /// Nothing: the child keeps the environment it started with.
    None,
}

/// The signals `--on-new-token signal:NAME` takes.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("TERM", libc::SIGTERM),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("ALRM", libc::SIGALRM),
    ("WINCH", libc::SIGWINCH),
];

pub(crate) fn parse_on_new_token(arg: &str) -> Result<OnNewToken, String> {
    match arg {
        "restart" => return Ok(OnNewToken::Restart),
        "none" => return Ok(OnNewToken::None),
        _ => {}
    }
    let wanted = arg
        .strip_prefix("signal:")
        .map(|s| s.strip_prefix("SIG").unwrap_or(s).to_ascii_uppercase());
    wanted
        .and_then(|w| SIGNALS.iter().find(|(n, _)| *n == w))
        .map(|(_, s)| OnNewToken::Signal(*s))
        .ok_or_else(|| {
            let names: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
            format!(
                "`{arg}`: want restart, none or signal:NAME with NAME one of {}",
                names.join(", ")
            )
        })
}

/// What exec's threads tell its main loop.
enum Note {
    /// The current token of mapping `index` (maybe the one already held).
    Token(usize, String),
    /// A signal to pass on.
    Signal(i32),
}

/// `tokend exec`'s options.
pub(super) struct ExecOptions {
    pub(super) mappings: Vec<Mapping>,
    pub(super) on_new_token: OnNewToken,
    pub(super) debounce: Duration,
    pub(super) command: Vec<OsString>,
}

pub(super) fn run(client: &Client, opts: ExecOptions) -> anyhow::Result<ExitCode> {
    let Some((program, args)) = opts.command.split_first() else {
        bail!("no command given: tokend exec NAME=ENVVAR... -- CMD [ARGS...]");
    };
    if opts.mappings.is_empty() {
        bail!("name at least one credential as NAME=ENVVAR before `--`");
    }
    let (tx, notes) = mpsc::channel();
    // Before anything is started, so no signal is lost on the way.
    forward_signals(tx.clone())?;
    for (index, m) in opts.mappings.iter().enumerate() {
        // The first event of each stream is its current token: a refused
        // or missing credential fails here, before the child starts.
        let events = client
            .events_blocking(&watch_path(&m.name))
            .with_context(|| format!("cannot watch `{}`", m.name))?;
        let (client, name, tx) = (client.clone(), m.name.clone(), tx.clone());
        thread::spawn(move || watch_thread(&client, &name, index, events, &tx));
    }
    drop(tx);
    let mut env: BTreeMap<usize, String> = BTreeMap::new();
    // Waits for every first token; signals meanwhile end exec at once.
    while env.len() < opts.mappings.len() {
        match notes.recv() {
            Ok(Note::Token(i, t)) => {
                env.insert(i, t);
            }
            Ok(Note::Signal(s)) => return Ok(ExitCode::from(exit_byte(128 + s))),
            Err(_) => bail!("the watch streams ended before every token arrived"),
        }
    }
    let spawn = |env: &BTreeMap<usize, String>| -> anyhow::Result<Child> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (i, token) in env {
            cmd.env(&opts.mappings[*i].var, token);
        }
        cmd.spawn()
            .with_context(|| format!("cannot run {}", program.to_string_lossy()))
    };
    let mut child = spawn(&env)?;
    let mut due: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the child")? {
            return Ok(ExitCode::from(exit_byte(status_code(status))));
        }
        let timeout = due.map_or(POLL, |d| {
            d.saturating_duration_since(Instant::now()).min(POLL)
        });
        match notes.recv_timeout(timeout) {
            Ok(Note::Signal(s)) => send(&child, s),
            Ok(Note::Token(i, token)) => {
                if env.get(&i) != Some(&token) {
                    env.insert(i, token);
                    if opts.on_new_token != OnNewToken::None && due.is_none() {
                        due = Some(Instant::now() + opts.debounce);
                    }
                }
            }
            Err(_) => {}
        }
        if due.is_some_and(|d| Instant::now() >= d) {
            due = None;
            match opts.on_new_token {
                OnNewToken::Restart => {
                    if let Some(status) = stop(&mut child, &notes)? {
                        return Ok(ExitCode::from(exit_byte(status_code(status))));
                    }
                    child = spawn(&env)?;
                }
                OnNewToken::Signal(s) => send(&child, s),
                OnNewToken::None => {}
            }
        }
    }
}

/// Stops the child for a restart: SIGTERM, then SIGKILL after the grace.
/// A signal for exec meanwhile is passed on and means exec ends with the
/// child: then the child's status is returned.
fn stop(child: &mut Child, notes: &mpsc::Receiver<Note>) -> anyhow::Result<Option<ExitStatus>> {
    send(child, libc::SIGTERM);
    let until = Instant::now() + STOP_GRACE;
    let mut ending = false;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the child")? {
            return Ok(ending.then_some(status));
        }
        if Instant::now() >= until {
            let _ = child.kill();
        }
        if let Ok(Note::Signal(s)) = notes.recv_timeout(POLL) {
            send(child, s);
            ending = true;
        }
    }
}

fn send(child: &Child, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; the pid is our own unreaped
    // child, so it cannot name another process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The shell's convention: the exit code, or 128 + the signal.
fn status_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn exit_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

fn forward_signals(tx: mpsc::Sender<Note>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot handle signals")?;
    thread::spawn(move || {
        for s in signals.forever() {
            if tx.send(Note::Signal(s)).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Follows one credential's stream, reconnecting after a break; ends when
/// the credential is removed or exec is done.
fn watch_thread(
    client: &Client,
    name: &str,
    index: usize,
    mut current: Events,
    tx: &mpsc::Sender<Note>,
) {
    let mut wait = Duration::from_secs(1);
    loop {
        match follow(&mut current, index, tx) {
            Ok(Follow::Removed) => {
                errln!("tokend: `{name}` was removed; the command keeps its last token");
                return;
            }
            Ok(Follow::ExecDone) => return,
            Ok(Follow::Ended) => {}
            Err(e) => {
                errln!("tokend: watching `{name}`: {e}; reconnecting");
            }
        }
        loop {
            thread::sleep(wait);
            wait = (wait * 2).min(MAX_RECONNECT);
            match client.events_blocking(&watch_path(name)) {
                Ok(e) => {
                    current = e;
                    wait = Duration::from_secs(1);
                    break;
                }
                Err(ClientError::Api { body, .. })
                    if body.error == crate::api::ErrorKind::NotFound =>
                {
                    errln!("tokend: `{name}` is gone; the command keeps its last token");
                    return;
                }
                Err(_) => {}
            }
        }
    }
}

enum Follow {
    Removed,
    Ended,
    ExecDone,
}

fn follow(
    events: &mut Events,
    index: usize,
    tx: &mpsc::Sender<Note>,
) -> Result<Follow, ClientError> {
    while let Some(event) = events.next_event()? {
        match event.event.as_str() {
            "token" => {
                let token: TokenResponse = serde_json::from_str(&event.data)
                    .map_err(|e| ClientError::Http(format!("unexpected token event: {e}")))?;
                if tx.send(Note::Token(index, token.access_token)).is_err() {
                    return Ok(Follow::ExecDone);
                }
            }
            "removed" => return Ok(Follow::Removed),
            _ => {}
        }
    }
    Ok(Follow::Ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_and_actions_parse() {
        assert_eq!(
            parse_mapping("mail=MAIL_TOKEN"),
            Ok(Mapping {
                name: "mail".into(),
                var: "MAIL_TOKEN".into()
            })
        );
        for bad in ["mail", "=X", "mail=", "mail=1X", "mail=A-B", "mail=A B"] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_on_new_token("restart"), Ok(OnNewToken::Restart));
        assert_eq!(parse_on_new_token("none"), Ok(OnNewToken::None));
        assert_eq!(
            parse_on_new_token("signal:HUP"),
            Ok(OnNewToken::Signal(libc::SIGHUP))
        );
        assert_eq!(
            parse_on_new_token("signal:SIGusr1"),
            Ok(OnNewToken::Signal(libc::SIGUSR1))
        );
        for bad in ["signal:", "signal:KILL", "reload", "signal:9"] {
            assert!(parse_on_new_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_statuses_follow_the_shell() {
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(libc::SIGTERM)), 128 + 15);
        assert_eq!(exit_byte(300), 1);
    }
}
