//! The loopback listener of `tokend login` (RFC 8252 §7.3): bound before
//! the URL is asked for, it takes browser connections until one asks for
//! the redirect path (others, e.g. `/favicon.ico`, get a 404), reads only a
//! bounded request head within a deadline, and answers the browser a small
//! page once the outcome is known.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::api::LoginSettings;
use crate::provider::RedirectHost;

/// Largest request head read from a browser.
const MAX_HEAD: usize = 16 * 1024;
/// How long one browser connection may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Escapes text for an HTML page.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page the browser is shown at the end.
pub(super) fn page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>tokend: {t}</title></head>\n<body><h1>{t}</h1><p>{m}</p></body></html>\n",
        t = html_escape(title),
        m = html_escape(message)
    )
}

/// The loopback listener on the provider's redirect port (or any port).
pub(super) fn bind(host: RedirectHost, settings: &LoginSettings) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(host.ip(), settings.redirect_port);
    TcpListener::bind(addr).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "cannot listen on {addr} for the browser's return: the port is in use; stop what listens there, or give provider {} another redirect_port (and register its redirect URI with the provider)",
            settings.provider
        ),
        _ => anyhow::Error::new(e).context(format!("cannot listen on {addr} for the browser's return")),
    })
}

/// Accepts browser connections until one asks for `path`: the connection,
/// kept to answer, and the request's query. Others are answered 404.
pub(super) fn wait_for_redirect(
    listener: &TcpListener,
    path: &str,
    deadline: Instant,
) -> anyhow::Result<(TcpStream, String)> {
    listener.set_nonblocking(true)?;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!("the browser did not come back within the timeout; nothing was stored; run `tokend login` again (or give --timeout)");
        }
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50).min(remaining));
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context("accepting the browser's connection"))
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(HEAD_TIMEOUT.min(remaining)))?;
        stream.set_write_timeout(Some(HEAD_TIMEOUT))?;
        match read_target(&mut stream) {
            Some(("GET", target)) => {
                let (got, query) = target.split_once('?').unwrap_or((&target, ""));
                if got == path {
                    let query = query.to_string();
                    return Ok((stream, query));
                }
                let _ = respond(
                    &mut stream,
                    "404 Not Found",
                    &page("Not found", "Nothing here."),
                );
            }
            Some(_) => {
                let _ = respond(
                    &mut stream,
                    "405 Method Not Allowed",
                    &page("Method not allowed", "Only GET is served here."),
                );
            }
            None => {
                let _ = respond(
                    &mut stream,
                    "400 Bad Request",
                    &page("Bad request", "The request could not be read."),
                );
            }
        }
    }
}

/// The method and target of the request on `stream`, if its head reads
/// whole within [`MAX_HEAD`] bytes.
fn read_target(stream: &mut TcpStream) -> Option<(&'static str, String)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = match req.method? {
                    "GET" => "GET",
                    _ => "OTHER",
                };
                return Some((method, req.path?.to_string()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return None,
        }
    }
}

/// Answers the browser with `body` as an HTML page, and closes.
pub(super) fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_page_escapes_what_it_shows() {
        let p = page("Login failed", "<script>x</script> & \"q\"");
        assert!(
            p.contains("&lt;script&gt;x&lt;/script&gt; &amp; &quot;q&quot;"),
            "{p}"
        );
        assert!(!p.contains("<script>"));
    }
}
