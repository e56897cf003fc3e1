//! HTTP/1.1 by hand, over anything readable and writable so tests can
//! script it: the request bytes (`Connection: close`), a stream with one
//! deadline for the whole exchange, and the response, its head parsed by
//! hand and its body read by `Content-Length`, chunks or until close,
//! every part bounded so a server cannot make it grow without end.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use super::ClientError;

/// Largest response head accepted; the daemon's are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 32;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE_BYTES: u64 = 4 * 1024;

// ---------------------------------------------------------------------------
// The request.

/// The whole request: head and body. The path and `Accept` value come from
/// callers of a public API, so a line break or space in them, which would
/// split or end the request line, is refused.
pub(super) fn request_bytes(
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
pub(super) struct Deadline<'a> {
    pub(super) stream: &'a UnixStream,
    pub(super) until: Instant,
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
pub(super) fn exchange<S: Read + Write>(
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
    // How much of `buf` was searched for the blank line, and the line ends
    // in it: a head that trickles in byte by byte is searched once in all,
    // not once per byte.
    let (mut searched, mut newlines): (usize, usize) = (0, 0);
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
        let from = searched.saturating_sub(3);
        newlines += buf[searched..].iter().filter(|&&b| b == b'\n').count();
        searched = buf.len();
        if let Some((head, len)) = parse_head(&buf, from, newlines, head_request)? {
            return Ok((head, buf.split_off(len)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(malformed("the response head is too large"));
        }
    }
}

/// One header field of a response head, as received.
struct Header<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// Parses a response head if `buf` holds all of it; returns it and its length.
/// The blank line that ends it is looked for from `from` on; `newlines`
/// counts the line ends in `buf`.
///
/// By hand (RFC 9112: CRLF line ends, no obsolete line folding): `httparse`
/// runs std's CPU feature detection on the first header value it meets,
/// and on a VM those `cpuid`s trap to the hypervisor, which was a measurable
/// part of every `tokend get`.
fn parse_head(
    buf: &[u8],
    from: usize,
    newlines: usize,
    head_request: bool,
) -> io::Result<Option<(Head, usize)>> {
    const VERSION: &[u8] = b"HTTP/1.";
    let start = buf.len().min(VERSION.len());
    if buf[..start] != VERSION[..start] {
        return Err(invalid_head("not an HTTP/1.x status line"));
    }
    let found = buf
        .get(from..)
        .and_then(|rest| rest.windows(4).position(|w| w == b"\r\n\r\n"));
    let Some(end) = found.map(|p| p + from) else {
        // Refused as soon as it is clear, not at the size limit.
        if newlines > MAX_HEADERS + 1 {
            return Err(invalid_head("too many headers"));
        }
        return Ok(None);
    };
    // The status line and each header line, each ending in CR LF; the
    // empty line that ends the head is left out.
    let mut lines = buf[..end + 2].split_inclusive(|&b| b == b'\n').map(|line| {
        line.strip_suffix(b"\r\n")
            .ok_or_else(|| invalid_head("a line ends without CR"))
    });
    let status = match lines.next() {
        Some(line) => parse_status_line(line?)?,
        None => return Err(invalid_head("no status line")),
    };
    let mut headers = Vec::new();
    for field in lines {
        if headers.len() == MAX_HEADERS {
            return Err(invalid_head("too many headers"));
        }
        headers.push(parse_header(field?)?);
    }
    let framing = framing(status, &headers, head_request)?;
    Ok(Some((Head { status, framing }, end + 4)))
}

/// `HTTP/1.x NNN reason`.
fn parse_status_line(line: &[u8]) -> io::Result<StatusCode> {
    let (version, rest) = line.split_at_checked(9).unwrap_or((line, b""));
    if !matches!(version, b"HTTP/1.0 " | b"HTTP/1.1 ") {
        return Err(invalid_head("invalid status line"));
    }
    let (code, reason) = rest.split_at_checked(3).unwrap_or((rest, b""));
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(invalid_head("invalid status code"));
    }
    match reason.split_first() {
        None => {}
        Some((b' ', text)) if text.iter().all(|&b| is_field_byte(b)) => {}
        Some(_) => return Err(invalid_head("invalid reason phrase")),
    }
    let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    StatusCode::from_u16(code).map_err(|_| malformed(&format!("invalid status code {code}")))
}

/// `name: value`, the value without the whitespace around it.
fn parse_header(field: &[u8]) -> io::Result<Header<'_>> {
    let colon = field
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| invalid_head("a header line has no colon"))?;
    let (name, value) = (&field[..colon], &field[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_token_byte(b)) {
        return Err(invalid_head("invalid header name"));
    }
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(invalid_head("invalid header value"));
    }
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let first = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let last = value
        .iter()
        .rposition(|b| !blank(b))
        .map_or(first, |i| i + 1);
    Ok(Header {
        name,
        value: &value[first..last],
    })
}

/// A `tchar` of RFC 9110: what a header name is made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Visible characters, space, tab and obs-text: what a header value or a
/// reason phrase may hold (no control characters, so no CR or LF).
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn invalid_head(what: &str) -> io::Error {
    malformed(&format!("invalid response head: {what}"))
}

/// Decides how the body ends from the status and the framing headers.
fn framing(status: StatusCode, headers: &[Header<'_>], head_request: bool) -> io::Result<Framing> {
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if head_request || bodiless {
        return Ok(Framing::Empty);
    }
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name.as_bytes()))
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

// ---------------------------------------------------------------------------
// A body read as it arrives (an event stream).

/// A streamed body over what is left of the connection after the head.
pub(super) type StreamedBody<R> = Streamed<BufReader<io::Chain<Cursor<Vec<u8>>, R>>>;

/// Reads a response head and returns its status and a reader of its decoded
/// body, for a body the caller reads as it arrives rather than whole.
pub(super) fn read_streamed<R: Read>(mut reader: R) -> io::Result<(StatusCode, StreamedBody<R>)> {
    let (head, rest) = read_head(&mut reader, false)?;
    let inner = BufReader::new(Cursor::new(rest).chain(reader));
    let left = match head.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    Ok((
        head.status,
        Streamed {
            inner,
            framing: head.framing,
            left,
            in_chunk: false,
            done: false,
        },
    ))
}

/// The decoded body of a streamed response: chunk sizes, chunk ends and
/// trailers are taken out as they arrive, each line of them bounded.
pub(super) struct Streamed<R> {
    inner: R,
    framing: Framing,
    /// Bytes left in the body (`Length`) or in the current chunk.
    left: u64,
    /// A chunk's data was read: its CRLF comes before the next size line.
    in_chunk: bool,
    done: bool,
}

impl<R: BufRead> Read for Streamed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::UntilClose => self.inner.read(buf),
            Framing::Length(_) => {
                if self.left == 0 {
                    return Ok(0);
                }
                self.read_some(buf)
            }
            Framing::Chunked => {
                if self.left == 0 {
                    if self.in_chunk && read_line(&mut self.inner)? != b"\r\n" {
                        return Err(malformed("a chunk does not end with CRLF"));
                    }
                    self.in_chunk = false;
                    let line = read_line(&mut self.inner)?;
                    if line.is_empty() {
                        return Err(malformed("the connection closed before the last chunk"));
                    }
                    let size = match httparse::parse_chunk_size(&line) {
                        Ok(httparse::Status::Complete((_, size))) => size,
                        _ => return Err(malformed("invalid chunk size line")),
                    };
                    if size == 0 {
                        skip_trailers(&mut self.inner)?;
                        self.done = true;
                        return Ok(0);
                    }
                    self.left = size;
                    self.in_chunk = true;
                }
                self.read_some(buf)
            }
        }
    }
}

impl<R: BufRead> Streamed<R> {
    /// Up to `left` bytes of data; the stream ending first is an error.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.by_ref().take(self.left).read(buf)?;
        if n == 0 {
            return Err(malformed("the connection closed in the middle of the body"));
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
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

    fn streamed(raw: &[u8]) -> io::Result<(StatusCode, Vec<u8>)> {
        let (status, mut body) = read_streamed(Trickle(raw))?;
        let mut out = Vec::new();
        body.read_to_end(&mut out)?;
        Ok((status, out))
    }

    #[test]
    fn a_streamed_body_reads_as_the_whole_one() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: v\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello worldEXTRA",
            b"HTTP/1.1 200 OK\r\n\r\nhello world",
        ] {
            assert_eq!(streamed(raw).unwrap().1, b"hello world", "{raw:?}");
            assert_eq!(streamed(raw).unwrap().1, parse(raw).unwrap().1, "{raw:?}");
        }
    }

    #[test]
    fn a_cut_or_bad_streamed_body_is_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
        ] {
            assert!(streamed(raw).is_err(), "{raw:?}");
        }
        let long = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\n",
            "x".repeat(8192)
        );
        assert!(streamed(long.as_bytes()).is_err());
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
        for bad in [
            &b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: b\x01c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: b\rc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200OK\r\n\r\n",
            b"HTTP/1.1 200 O\x7fK\r\n\r\n",
        ] {
            let message = malformed_message(bad);
            assert!(message.contains("invalid response head"), "{message}");
        }
    }

    #[test]
    fn heads_are_read_as_sent() {
        let (status, body) =
            parse(b"HTTP/1.0 201 \r\nX-Empty:\r\ncontent-LENGTH: \t 2 \t\r\n\r\nhi").unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"hi"[..]));
        let (status, body) = parse(b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((status, &body[..]), (StatusCode::NOT_FOUND, &b""[..]));
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
}
