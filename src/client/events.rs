//! A server-sent event stream over the socket (`GET /v1/tokens/{name}/watch`):
//! the request, then events parsed as they arrive (the WHATWG `text/event-stream`
//! format: `event:` and `data:` fields, `:` comments, an empty line ends an
//! event). Every line is bounded, and so is the silence between lines: the
//! daemon sends a heartbeat every 15 s, so a stream quiet for
//! [`IDLE_LIMIT`] is dead.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use hyper::Method;

use super::http::{read_streamed, request_bytes};
use super::{api_error, Client, ClientError};

/// Longest silence accepted from the daemon (three missed heartbeats).
pub(crate) const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// Longest line of an event accepted; a token event is a few kilobytes.
const MAX_EVENT_LINE: u64 = 256 * 1024;
/// Largest error answer read.
const MAX_ERROR_BYTES: u64 = 64 * 1024;

/// One event: its type (`message` when unnamed) and its data lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) event: String,
    pub(crate) data: String,
}

/// The events of one open stream.
pub(crate) struct Events {
    lines: Box<dyn BufRead + Send>,
}

impl Client {
    /// Opens an event stream at `path`: the API's error if the daemon
    /// refuses it, else the events as they come.
    pub(crate) fn events_blocking(&self, path: &str) -> Result<Events, ClientError> {
        let request = request_bytes(&Method::GET, path, "text/event-stream", None)?;
        let mut stream = self.connect()?;
        let timeouts = |s: &UnixStream| {
            s.set_write_timeout(Some(self.timeout))?;
            s.set_read_timeout(Some(IDLE_LIMIT))
        };
        timeouts(&stream).map_err(|e| ClientError::Http(e.to_string()))?;
        stream.write_all(&request).map_err(|e| self.io_error(e))?;
        let (status, body) = read_streamed(stream).map_err(|e| self.io_error(e))?;
        if !status.is_success() {
            let mut bytes = Vec::new();
            body.take(MAX_ERROR_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|e| self.io_error(e))?;
            return Err(api_error(status, &bytes));
        }
        Ok(Events::new(BufReader::new(body)))
    }
}

impl Events {
    pub(crate) fn new(lines: impl BufRead + Send + 'static) -> Events {
        Events {
            lines: Box::new(lines),
        }
    }

    /// The next event; `None` when the stream ended.
    pub(crate) fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        let mut event = String::new();
        let mut data: Option<String> = None;
        loop {
            let Some(line) = self.line()? else {
                return Ok(None);
            };
            if line.is_empty() {
                if let Some(data) = data.take() {
                    let event = std::mem::take(&mut event);
                    let event = if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    };
                    return Ok(Some(Event { event, data }));
                }
                event.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => event = value.to_string(),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                _ => {}
            }
        }
    }

    /// One line without its end (`\n`, `\r\n`), `None` at the end of the stream.
    fn line(&mut self) -> Result<Option<String>, ClientError> {
        let mut line = Vec::new();
        let read = self
            .lines
            .by_ref()
            .take(MAX_EVENT_LINE)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if super::is_timeout(&e) => return Err(ClientError::Timeout(IDLE_LIMIT)),
            Err(e) => return Err(ClientError::Http(e.to_string())),
        }
        if !line.ends_with(b"\n") {
            return Err(ClientError::Http(if line.len() as u64 >= MAX_EVENT_LINE {
                "an event line from tokend is too long".into()
            } else {
                "the event stream broke off in the middle of a line".into()
            }));
        }
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| ClientError::Http("an event from tokend is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn events(raw: &str) -> Vec<Result<Option<Event>, String>> {
        let mut events = Events::new(Cursor::new(raw.as_bytes().to_vec()));
        let mut out = Vec::new();
        loop {
            let next = events.next_event().map_err(|e| e.to_string());
            let end = !matches!(next, Ok(Some(_)));
            out.push(next);
            if end {
                return out;
            }
        }
    }

    fn ev(event: &str, data: &str) -> Result<Option<Event>, String> {
        Ok(Some(Event {
            event: event.into(),
            data: data.into(),
        }))
    }

    #[test]
    fn events_comments_and_multiline_data() {
        let raw = ":\n\nevent: token\ndata: {\"a\":1}\n\n: hb\r\ndata:x\r\ndata: y\r\n\r\nevent: removed\ndata: c\n\nevent: lost\n\n";
        assert_eq!(
            events(raw),
            vec![
                ev("token", "{\"a\":1}"),
                ev("message", "x\ny"),
                ev("removed", "c"),
                Ok(None)
            ]
        );
    }

    #[test]
    fn a_cut_or_huge_line_is_an_error() {
        assert!(events("event: token\ndata: {").last().unwrap().is_err());
        let huge = format!("data: {}\n\n", "x".repeat(300 * 1024));
        assert!(events(&huge).last().unwrap().is_err());
    }
}
