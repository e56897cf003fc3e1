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

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::api::{ErrorBody, ErrorKind};

/// How long a whole exchange may take, by default. Above the daemon's own
/// request timeout (75 s), so its answer, even a timeout, gets through.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// Names the one more uid, besides root, the caller's own and the `tokend`
/// system user, that the client accepts as the daemon.
pub(crate) const DAEMON_UID_VAR: &str = "TOKEND_DAEMON_UID";

/// Largest response head accepted; the daemon's are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 32;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE_BYTES: u64 = 4 * 1024;

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
    /// A client for the daemon at `socket`, with [`DEFAULT_TIMEOUT`].
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

    /// Sends a request expecting no body (204) on success, blocking.
    pub(crate) fn call_empty_blocking(
        &self,
        method: Method,
        path: &str,
    ) -> Result<(), ClientError> {
        let (status, bytes) = self.raw_blocking(method, path, None, "application/json")?;
        expect_success(status, &bytes)
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
    /// [`Client::raw_blocking`] on tokio's blocking pool; if this future is
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

fn expect_success(status: StatusCode, bytes: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(api_error(status, bytes))
    }
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

// ---------------------------------------------------------------------------
// The request.

/// The whole request: head and body. The path and `Accept` value come from
/// callers of a public API, so a line break or space in them, which would
/// split or end the request line, is refused.
fn request_bytes(
    method: &Method,
    path: &str,
    accept: &str,
    body: Option<&[u8]>,
) -> Result<Vec<u8>, ClientError> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ClientError::Http(format!("invalid request path {path:?}")));
    }
    if accept
        .bytes()
        .any(|b| (b < b' ' && b != b'\t') || b == 0x7f)
    {
        return Err(ClientError::Http(format!(
            "invalid Accept value {accept:?}"
        )));
    }
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: tokend\r\nAccept: {accept}\r\nConnection: close\r\n"
    );
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    // A body's length is always sent, and so is a zero for the methods that
    // expect a body (as hyper does), so the server never waits for one.
    let expects_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if body.is_some() || expects_body {
        let len = body.map_or(0, <[u8]>::len);
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body.unwrap_or_default());
    Ok(request)
}

// ---------------------------------------------------------------------------
// The exchange, over anything readable and writable so tests can script it.

/// A stream whose reads and writes fail with `TimedOut` once `until` has
/// passed: each operation may take only the time left, so a daemon that
/// trickles bytes cannot stretch the exchange past the deadline.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Deadline<'_> {
    fn time_left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.time_left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.time_left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `request` and reads the whole response.
fn exchange<S: Read + Write>(
    mut stream: S,
    request: &[u8],
    head_request: bool,
) -> io::Result<(StatusCode, Vec<u8>)> {
    stream.write_all(request)?;
    read_response(stream, head_request)
}

/// How the body of a response ends (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
struct Head {
    status: StatusCode,
    framing: Framing,
}

/// Reads one response: the head, then the body as the head frames it.
fn read_response<R: Read>(mut reader: R, head_request: bool) -> io::Result<(StatusCode, Vec<u8>)> {
    let (head, rest) = read_head(&mut reader, head_request)?;
    // Bytes read past the head are the start of the body.
    let mut body_reader = BufReader::new(Cursor::new(rest).chain(reader));
    let body = match head.framing {
        Framing::Empty => Vec::new(),
        Framing::Length(n) => read_length(&mut body_reader, n)?,
        Framing::Chunked => read_chunked(&mut body_reader)?,
        Framing::UntilClose => {
            let mut body = Vec::new();
            body_reader.read_to_end(&mut body)?;
            body
        }
    };
    Ok((head.status, body))
}

/// Reads until the head is complete; returns it and the bytes after it.
fn read_head<R: Read>(reader: &mut R, head_request: bool) -> io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Err(malformed(if buf.is_empty() {
                "the connection closed without an answer"
            } else {
                "the connection closed in the middle of the response head"
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((head, len)) = parse_head(&buf, head_request)? {
            return Ok((head, buf.split_off(len)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(malformed("the response head is too large"));
        }
    }
}

/// Parses a response head if `buf` holds all of it; returns it and its length.
fn parse_head(buf: &[u8], head_request: bool) -> io::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(&format!("invalid response head: {e}"))),
    };
    let code = response
        .code
        .ok_or_else(|| malformed("no status code in the response"))?;
    let status = StatusCode::from_u16(code)
        .map_err(|_| malformed(&format!("invalid status code {code}")))?;
    let framing = framing(status, response.headers, head_request)?;
    Ok(Some((Head { status, framing }, len)))
}

/// Decides how the body ends from the status and the framing headers.
fn framing(
    status: StatusCode,
    headers: &[httparse::Header<'_>],
    head_request: bool,
) -> io::Result<Framing> {
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if head_request || bodiless {
        return Ok(Framing::Empty);
    }
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    // Transfer-Encoding wins over Content-Length; a coding other than a
    // final `chunked` means the body runs until the connection closes.
    if let Some(last) = values("transfer-encoding").next_back() {
        let last = std::str::from_utf8(last).unwrap_or_default();
        let chunked = last
            .rsplit(',')
            .next()
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in values("content-length") {
        let n = parse_content_length(value)?;
        if length.is_some_and(|seen| seen != n) {
            return Err(malformed("conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

fn parse_content_length(value: &[u8]) -> io::Result<u64> {
    let text = std::str::from_utf8(value).unwrap_or_default().trim();
    // `u64::from_str` would also take a leading '+'.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(&format!(
            "invalid Content-Length {:?}",
            String::from_utf8_lossy(value)
        )));
    }
    text.parse()
        .map_err(|_| malformed(&format!("Content-Length {text} is too large")))
}

/// Reads exactly `len` body bytes. The capacity is not taken from the
/// header: a bogus length must not allocate before the bytes arrive.
fn read_length<R: Read>(reader: &mut R, len: u64) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    reader.by_ref().take(len).read_to_end(&mut body)?;
    if (body.len() as u64) < len {
        return Err(malformed("the connection closed in the middle of the body"));
    }
    Ok(body)
}

/// Decodes a chunked body, discarding chunk extensions and trailers.
fn read_chunked<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Err(malformed("the connection closed before the last chunk"));
        }
        let size = match httparse::parse_chunk_size(&line) {
            Ok(httparse::Status::Complete((_, size))) => size,
            _ => return Err(malformed("invalid chunk size line")),
        };
        if size == 0 {
            skip_trailers(reader)?;
            return Ok(body);
        }
        let before = body.len() as u64;
        reader.by_ref().take(size).read_to_end(&mut body)?;
        if body.len() as u64 - before < size {
            return Err(malformed("the connection closed in the middle of a chunk"));
        }
        if read_line(reader)? != b"\r\n" {
            return Err(malformed("a chunk does not end with CRLF"));
        }
    }
}

/// Skips trailer fields up to the empty line that ends the body. A server
/// that closes the connection right after the last chunk is forgiven.
fn skip_trailers<R: BufRead>(reader: &mut R) -> io::Result<()> {
    loop {
        let line = read_line(reader)?;
        if line.is_empty() || line == b"\r\n" || line == b"\n" {
            return Ok(());
        }
    }
}

/// One line including its `\n` (empty at the end of the stream), bounded so
/// a server cannot make it grow without end.
fn read_line<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', &mut line)?;
    if !line.is_empty() && !line.ends_with(b"\n") {
        return Err(malformed(if line.len() as u64 >= MAX_LINE_BYTES {
            "a line in the chunked body is too long"
        } else {
            "the connection closed in the middle of the chunked body"
        }));
    }
    Ok(line)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed response: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A reader that hands out at most one byte per read, so every parser
    /// step sees its input arrive in pieces.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            match buf.first_mut() {
                Some(slot) => *slot = *first,
                None => return Ok(0),
            }
            self.0 = rest;
            Ok(1)
        }
    }

    fn parse(raw: &[u8]) -> io::Result<(StatusCode, Vec<u8>)> {
        let whole = read_response(raw, false);
        let trickled = read_response(Trickle(raw), false);
        match (&whole, &trickled) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the same answer in one read or byte by byte"),
            (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
            _ => panic!("whole {whole:?} but trickled {trickled:?}"),
        }
        whole
    }

    fn malformed_message(raw: &[u8]) -> String {
        let err = parse(raw).expect_err("malformed");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        err.to_string()
    }

    #[test]
    fn content_length_body_as_the_daemon_sends_it() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\
                    connection: close\r\ndate: Mon, 23 Nov 2026 04:05:35 GMT\r\n\r\n{\"status\":1}\n";
        let (status, body) = parse(raw).unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"{\"status\":1}\n");
    }

    #[test]
    fn bytes_after_the_content_length_are_ignored() {
        let (_, body) =
            parse(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}junk").unwrap();
        assert_eq!(body, b"{}");
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5;ext=1\r\nhello\r\n7\r\n, world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        let (status, body) = parse(raw).unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"hello, world0123456789");
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                    2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(parse(raw).unwrap().1, b"{}");
    }

    #[test]
    fn chunked_body_may_end_at_close_after_the_last_chunk() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n";
        assert_eq!(parse(raw).unwrap().1, b"ok");
    }

    #[test]
    fn unframed_body_runs_until_close() {
        let raw = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nboom";
        let (status, body) = parse(raw).unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, b"boom");
    }

    #[test]
    fn no_body_for_204_or_a_head_request() {
        let (status, body) = parse(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n";
        assert_eq!(read_response(&head[..], true).unwrap().1, b"");
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert!(malformed_message(b"").contains("without an answer"));
        assert!(malformed_message(b"HTTP/1.1 200 OK\r\nContent-Le").contains("response head"));
        assert!(malformed_message(b"SSH-2.0-OpenSSH\r\n\r\n").contains("invalid response head"));
        assert!(malformed_message(b"HTTP/1.1 2000 OK\r\n\r\n").contains("invalid"));
        assert!(malformed_message(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n").contains("invalid"));
        let mut huge = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10_000, b'a');
        assert!(malformed_message(&huge).contains("too large"));
        let many = "HTTP/1.1 200 OK\r\n".to_string() + &"X-A: b\r\n".repeat(MAX_HEADERS + 1);
        assert!(malformed_message(many.as_bytes()).contains("invalid response head"));
    }

    #[test]
    fn bad_lengths_and_cut_bodies_are_refused() {
        assert!(
            malformed_message(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello")
                .contains("Content-Length")
        );
        assert!(
            malformed_message(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n")
                .contains("Content-Length")
        );
        assert!(malformed_message(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"
        )
        .contains("too large"));
        assert!(malformed_message(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
        )
        .contains("conflicting"));
        assert!(
            malformed_message(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
                .contains("middle of the body")
        );
    }

    #[test]
    fn bad_chunks_are_refused() {
        let te = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let with = |rest: &[u8]| [te.as_slice(), rest].concat();
        assert!(malformed_message(&with(b"zz\r\nab\r\n0\r\n\r\n")).contains("chunk size"));
        assert!(malformed_message(&with(b"5\r\nab")).contains("middle of a chunk"));
        assert!(malformed_message(&with(b"2\r\nabcd\r\n0\r\n\r\n")).contains("CRLF"));
        assert!(malformed_message(&with(b"2\r\nab\r\n")).contains("before the last chunk"));
        assert!(malformed_message(&with(&[b'1'; 5000])).contains("too long"));
    }

    #[test]
    fn requests_are_framed_and_checked() {
        let get = request_bytes(&Method::GET, "/v1/tokens/a%20b", "text/plain", None).unwrap();
        assert_eq!(
            get,
            b"GET /v1/tokens/a%20b HTTP/1.1\r\nHost: tokend\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        let post = request_bytes(&Method::POST, "/v1/x/refresh", "application/json", None).unwrap();
        assert!(post.ends_with(b"Content-Length: 0\r\n\r\n"));
        let put = request_bytes(&Method::PUT, "/v1/x", "application/json", Some(b"{}")).unwrap();
        assert!(put.ends_with(b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"));
        for path in ["/a b", "/a\r\nX-Evil: 1", "relative", ""] {
            assert!(
                request_bytes(&Method::GET, path, "*/*", None).is_err(),
                "{path:?}"
            );
        }
        assert!(request_bytes(&Method::GET, "/", "a\r\nX-Evil: 1", None).is_err());
    }

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
            .call_empty_blocking(Method::DELETE, "/v1/credentials/x")
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
