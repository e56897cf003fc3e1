//! systemd integration: readiness and status notifications (`sd_notify`),
//! the watchdog, and socket activation (`LISTEN_FDS`). Every function is a
//! no-op when not running under systemd, so the daemon behaves the same by
//! hand and as a unit.

use std::os::fd::FromRawFd;
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the service manager we are ready, with a status line.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the one-line status shown by `systemctl status`.
pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Announces a configuration reload; follow with [`ready`].
pub(crate) fn reloading() {
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
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pets the watchdog.
pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog: half its timeout, if one is set for us.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

fn send(states: &[NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = send_nonblocking(&path, message.as_bytes()) {
        tracing::warn!(tokend_error = %e, "cannot notify the service manager");
    }
}

/// Sends one datagram to the notify socket without ever waiting: when the
/// manager is not reading and the socket's queue is full, the message is
/// dropped with an error. (sd-notify's own send blocks, and the refresher's
/// loop, which pets the watchdog, must not wait on PID 1.) A path starting
/// with `@` names an abstract socket, as in sd_notify(3).
fn send_nonblocking(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.connect_addr(&addr)?;
        }
        None => socket.connect(path)?,
    }
    let sent = socket.send(message)?;
    if sent != message.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "notification cut short",
        ));
    }
    Ok(())
}

/// The listening socket passed by systemd (socket activation), if any.
pub(crate) fn activated_listener() -> std::io::Result<Option<tokio::net::UnixListener>> {
    let Some(fd) = sd_notify::listen_fds()?.next() else {
        return Ok(None);
    };
    // SAFETY: systemd passed us this descriptor (LISTEN_PID matched) and
    // nothing else in the process owns it.
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manager_that_does_not_read_never_blocks_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let started = std::time::Instant::now();
        let outcomes: Vec<bool> = (0..2000)
            .map(|_| send_nonblocking(path.as_os_str(), b"STATUS=busy\n").is_ok())
            .collect();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(outcomes[0], "the first message must go through");
        assert!(
            outcomes.iter().any(|ok| !ok),
            "a queue that is never read must fill up and drop messages"
        );
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=busy\n");
    }

    #[test]
    fn abstract_socket_names_are_honoured() {
        let name = format!("tokend-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let manager = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        send_nonblocking(std::ffi::OsStr::new(&format!("@{name}")), b"READY=1\n").unwrap();
        let mut buf = [0u8; 16];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }
}
