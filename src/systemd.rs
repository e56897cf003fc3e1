//! systemd integration: readiness and status notifications (`sd_notify`),
//! the watchdog, and socket activation (`LISTEN_FDS`). Every function is a
//! no-op when not running under systemd, so the daemon behaves the same by
//! hand and as a unit.

use std::os::fd::FromRawFd;
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the service manager we are ready, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status shown by `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Announces a configuration reload; follow with [`ready`].
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading configuration"),
    ];
    // Type=notify-reload wants the time the reload began.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Announces shutdown.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pets the watchdog.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog: half its timeout, if one is set for us.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(tokend_error = %e, "cannot notify the service manager");
    }
}

/// The listening socket passed by systemd (socket activation), if any.
pub fn activated_listener() -> std::io::Result<Option<tokio::net::UnixListener>> {
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    // SAFETY: systemd passed us this descriptor (LISTEN_PID matched) and
    // nothing else in the process owns it.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener).map(Some)
}
