//! The process's start and end, in place of std's runtime set-up.
//!
//! The binary defines C's `main` itself (`#![no_main]` in `main.rs`) and
//! calls [`start`]. Every `tokend get` is a fresh process, and std's set-up
//! before a Rust `main` costs about a tenth of a millisecond here: to place
//! the main thread's stack guard it has glibc read and parse
//! `/proc/self/maps` (which the kernel renders path by path), then it maps
//! an alternate signal stack for its stack-overflow message.
//!
//! What of that set-up tokend relies on is done here, the same way:
//! descriptors 0, 1 and 2 are made open (to `/dev/null`) so that no socket
//! or file the process opens can become its stdout; `SIGPIPE` is ignored,
//! so a closed pipe is an `EPIPE` error (std still restores the default for
//! the processes tokend spawns); a panic ends the process with status 101,
//! as a panicking Rust `main` does; stdout is flushed at the end.
//!
//! Given up: std's message for a stack overflow. A thread that overflows
//! its stack still hits the guard page and the process dies of `SIGSEGV`,
//! without the "has overflowed its stack" line first. The main thread has
//! no name in panic messages (`<unnamed>` instead of `main`).
//!
//! The process ends with `_exit`: tokend registers no exit handler of its
//! own, and those of its C libraries (aws-lc's random generator, glibc's
//! stdio, which tokend does not write through) have nothing to leave
//! behind once the kernel closes the descriptors.

use std::ffi::c_int;
use std::io::{self, Write};
use std::process::ExitCode;

/// Runs the command line and ends the process with its exit status.
pub fn start() -> ! {
    sanitize_stdio();
    // SAFETY: setting a signal's disposition to SIG_IGN, before any other
    // thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let status = match std::panic::catch_unwind(super::main) {
        Ok(code) => status_of(code),
        // The panic hook has printed the message.
        Err(_) => 101,
    };
    let _ = io::stdout().flush();
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(status) }
}

/// The number an `ExitCode` stands for (std keeps it private on stable).
fn status_of(code: ExitCode) -> c_int {
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .map_or(1, c_int::from)
}

/// Opens `/dev/null` on each of descriptors 0, 1 and 2 that is closed, as
/// std does before `main`.
fn sanitize_stdio() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes exactly the three pollfds it is given.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    if polled < 0 {
        // poll itself failed (EINTR, ENOMEM): ask each descriptor instead.
        for fd in 0..3 {
            // SAFETY: F_GETFD on any number only reads the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
                reopen_null(fd);
            }
        }
        return;
    }
    for pfd in fds {
        if pfd.revents & libc::POLLNVAL != 0 {
            reopen_null(pfd.fd);
        }
    }
}

/// Opens `/dev/null` on `fd`, which is closed, or aborts: a process whose
/// stdout could be the next socket it opens must not go on.
fn reopen_null(fd: c_int) {
    // SAFETY: open with a NUL-terminated path; the lowest free descriptor,
    // `fd` itself since every lower one is open, is the one returned.
    let opened = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    if opened != fd {
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exit_code_maps_back_to_its_number() {
        for n in 0..=u8::MAX {
            assert_eq!(status_of(ExitCode::from(n)), c_int::from(n));
        }
        assert_eq!(status_of(ExitCode::SUCCESS), 0);
        assert_eq!(status_of(ExitCode::FAILURE), 1);
    }
}
