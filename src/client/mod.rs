//! The CLI's side of the socket API: one HTTP/1.1 request per connection over
//! the Unix socket. Never opens the database.
//!
//! The CLI is a short-lived process whose cost is mostly start-up, so the
//! client uses blocking std I/O: no async runtime, no thread pool. It writes
//! the request by hand (`Connection: close`), parses the answer's head with
//! `httparse`, and reads a `Content-Length`, chunked or close-delimited body.
//! One deadline covers connecting, writing and reading. The `async` methods
//! run the same code on tokio's blocking pool, for callers that have a runtime
//! (the integration tests, the benchmark).

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::api::{ErrorBody, ErrorKind};

mod events;
mod http;

pub(crate) use events::{Event, Events};

use http::{exchange, request_bytes, Deadline};

/// How long a whole exchange may take, by default. Above the daemon's own
/// request timeout (75 s), so its answer, even a timeout, gets through.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// Names the one more uid, besides root, the caller's own and the `tokend`
/// system user, that the client accepts as the daemon.
pub(crate) const DAEMON_UID_VAR: &str = "TOKEND_DAEMON_UID";

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach tokend at {path}: {reason}; is `tokend daemon` running? (set --socket or $TOKEND_SOCKET if it listens elsewhere)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The process listening on the socket is not one the client trusts
    /// with secrets; nothing was sent.
    #[error("refusing to talk to {path}: the process listening there runs as uid {uid}, which is neither root, you, nor the `tokend` system user, so it may have taken the daemon's place; nothing was sent (if that daemon is yours, set {DAEMON_UID_VAR}={uid})")]
    Untrusted {
        /// Socket path.
        path: PathBuf,
        /// The listener's uid, from the kernel.
        uid: u32,
    },
    /// The exchange broke off.
    #[error("talking to tokend failed: {0}")]
    Http(String),
    /// The daemon did not answer in time.
    #[error("tokend did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon answered with an error.
    #[error("{}", .body.message)]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The error body.
        body: ErrorBody,
    },
}

/// A client for one socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client for the daemon at `socket`, with `DEFAULT_TIMEOUT`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another limit on each whole exchange.
    #[cfg(test)]
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends a request and decodes a JSON answer (or the API error), blocking.
    pub(crate) fn call_blocking<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = json_body(body)?;
        let (status, bytes) =
            self.raw_blocking(method, path, body.as_deref(), "application/json")?;
        decode(status, &bytes)
    }

    /// Sends one request and returns the status and body, blocking for at
    /// most the client's timeout.
    pub(crate) fn raw_blocking(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        accept: &str,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let request = request_bytes(&method, path, accept, body)?;
        let deadline = Instant::now() + self.timeout;
        let stream = self.connect()?;
        let timed = Deadline {
            stream: &stream,
            until: deadline,
        };
        exchange(timed, &request, method == Method::HEAD).map_err(|e| self.io_error(e))
    }

    /// Sends a request and decodes a JSON answer (or the API error).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = json_body(body)?;
        let (status, bytes) = self.raw(method, path, body, "application/json").await?;
        decode(status, &bytes)
    }

    /// Sends one request and returns the status and body. Runs
    /// `Client::raw_blocking` on tokio's blocking pool; if this future is
    /// dropped, that thread still finishes the exchange (within the timeout).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let client = self.clone();
        let (path, accept) = (path.to_owned(), accept.to_owned());
        let joined = tokio::task::spawn_blocking(move || {
            client.raw_blocking(method, &path, body.as_deref(), &accept)
        })
        .await;
        match joined {
            Ok(answer) => answer.map(|(status, body)| (status, Bytes::from(body))),
            // A panic in the exchange is a bug: let it reach the caller as one.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ClientError::Http(e.to_string())),
        }
    }

    /// Connects to the socket, waiting at most the timeout when the daemon's
    /// accept queue is full. std's `UnixStream::connect` would wait forever
    /// then; a send timeout set before `connect` bounds it on Linux.
    fn connect(&self) -> Result<UnixStream, ClientError> {
        let connect_error = |reason| ClientError::Connect {
            path: self.socket.clone(),
            reason,
        };
        let addr = SockAddr::unix(&self.socket).map_err(connect_error)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(connect_error)?;
        socket
            .set_write_timeout(Some(self.timeout))
            .map_err(connect_error)?;
        match socket.connect(&addr) {
            Ok(()) => {
                let stream: UnixStream = socket.into();
                self.check_peer(&stream)?;
                Ok(stream)
            }
            Err(e) if is_timeout(&e) => Err(ClientError::Timeout(self.timeout)),
            Err(e) => Err(connect_error(e)),
        }
    }

    /// Checks, before anything is written, that the kernel says the socket's
    /// listener runs as a uid that may be the daemon: anyone else who got a
    /// socket of their own onto the path (a directory others can write, a
    /// squatted `/tmp/tokend-UID`) must not receive a refresh token or an
    /// authorization code.
    fn check_peer(&self, stream: &UnixStream) -> Result<(), ClientError> {
        let uid = peer_uid(stream).map_err(|reason| ClientError::Connect {
            path: self.socket.clone(),
            reason,
        })?;
        if trusted_daemon_uid(uid) {
            Ok(())
        } else {
            Err(ClientError::Untrusted {
                path: self.socket.clone(),
                uid,
            })
        }
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        if is_timeout(&e) {
            ClientError::Timeout(self.timeout)
        } else {
            ClientError::Http(e.to_string())
        }
    }
}

/// The uid of the process at the other end of `stream` (`SO_PEERCRED`: for
/// a listening socket, whoever called `listen`).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is a
    // live, properly sized and aligned ucred.
    let done = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether a daemon running as `uid` may be trusted: root, the caller
/// itself, the `tokend` system user, or `$TOKEND_DAEMON_UID`. The cheap
/// cases come first, so a user's `tokend get` looks nothing up.
fn trusted_daemon_uid(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if uid == 0 || uid == unsafe { libc::geteuid() } {
        return true;
    }
    let configured = std::env::var(DAEMON_UID_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok());
    if configured == Some(uid) {
        return true;
    }
    crate::fsguard::system_user_uid() == Some(uid)
}

/// A socket timeout shows as `WouldBlock` (EAGAIN) on Linux, `TimedOut` elsewhere.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn json_body(body: Option<&impl Serialize>) -> Result<Option<Vec<u8>>, ClientError> {
    body.map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Http(e.to_string())))
        .transpose()
}

fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if !status.is_success() {
        return Err(api_error(status, bytes));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Http(format!("unexpected answer from tokend: {e}")))
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        error: ErrorKind::Other,
        message: format!(
            "tokend answered {status}: {}",
            String::from_utf8_lossy(bytes).trim()
        ),
    });
    ClientError::Api { status, body }
}

/// Percent-encodes a credential name for use in a URL path.
pub(crate) fn path_segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A socket in a fresh directory, and a thread serving one connection.
    fn serve_once(
        answer: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokend.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            answer(stream);
        });
        (dir, path, server)
    }

    /// Reads one request with a `Content-Length` body from the client.
    fn read_request(stream: &mut UnixStream) -> String {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            seen.push(byte[0]);
        }
        let head = String::from_utf8(seen).unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |n| n.parse().unwrap());
        let mut body = vec![0; len];
        stream.read_exact(&mut body).unwrap();
        head + std::str::from_utf8(&body).unwrap()
    }

    #[test]
    fn a_whole_exchange_over_a_socket() {
        let (_dir, path, server) = serve_once(|mut stream| {
            let request = read_request(&mut stream);
            assert!(
                request.starts_with("PUT /v1/credentials/c HTTP/1.1\r\n"),
                "{request}"
            );
            assert!(
                request.ends_with("\r\n\r\n{\"provider\":\"p\"}"),
                "{request}"
            );
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
            for part in [&b"5\r\n{\"a\":\r\n"[..], b"2\r\n1}\r\n", b"0\r\n\r\n"] {
                stream.write_all(part).unwrap();
                thread::sleep(Duration::from_millis(5));
            }
        });
        let answer: serde_json::Value = Client::new(&path)
            .call_blocking(
                Method::PUT,
                "/v1/credentials/c",
                Some(&serde_json::json!({"provider": "p"})),
            )
            .unwrap();
        assert_eq!(answer, serde_json::json!({"a": 1}));
        server.join().unwrap();
    }

    #[test]
    fn api_errors_carry_the_daemon_message() {
        let (_dir, path, server) = serve_once(|mut stream| {
            read_request(&mut stream);
            let body = r#"{"error":"not_found","message":"no credential named `x`"}"#;
            let head = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all((head + body).as_bytes()).unwrap();
        });
        let err = Client::new(&path)
            .call_blocking::<crate::api::Removed>(Method::DELETE, "/v1/credentials/x", None::<&()>)
            .unwrap_err();
        assert_eq!(err.to_string(), "no credential named `x`");
        assert!(matches!(err, ClientError::Api { status, .. } if status == StatusCode::NOT_FOUND));
        server.join().unwrap();
    }

    #[test]
    fn a_daemon_that_stalls_or_trickles_hits_the_deadline() {
        let (_dir, path, server) = serve_once(|mut stream| {
            read_request(&mut stream);
            // A byte every 50 ms: each read succeeds, the whole cannot.
            for byte in b"HTTP/1.1 200 OK\r\n" {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let err = Client::new(&path)
            .with_timeout(Duration::from_millis(300))
            .raw_blocking(Method::GET, "/v1/health", None, "application/json")
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        server.join().unwrap();
    }

    #[test]
    fn a_full_accept_queue_hits_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokend.sock");
        // Nobody accepts, and the queue holds one connection: the second
        // connect waits in the kernel.
        let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        listener.listen(0).unwrap();
        let client = Client::new(&path).with_timeout(Duration::from_millis(200));
        let mut queued = Vec::new();
        let started = Instant::now();
        let err = loop {
            match client.connect() {
                Ok(stream) => queued.push(stream),
                Err(e) => break e,
            }
            assert!(queued.len() < 10, "the accept queue never filled");
        };
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn no_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::new(&dir.path().join("absent.sock"))
            .raw_blocking(Method::GET, "/v1/health", None, "application/json")
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(
            err.to_string().starts_with("cannot reach tokend at "),
            "{err}"
        );
    }
}
