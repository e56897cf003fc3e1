//! The CLI's side of the socket API: one HTTP/1.1 request per connection over
//! the Unix socket (hyper). Never opens the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ErrorBody;

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
    /// A client for the daemon at `socket`.
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
            timeout: Duration::from_secs(90),
        }
    }

    /// Sends a request and decodes a JSON answer (or the API error).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Http(e.to_string())))
            .transpose()?;
        let (status, bytes) = self.raw(method, path, body, "application/json").await?;
        decode(status, &bytes)
    }

    /// Sends a request expecting no body (204) on success.
    pub async fn call_empty(&self, method: Method, path: &str) -> Result<(), ClientError> {
        let (status, bytes) = self.raw(method, path, None, "application/json").await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_error(status, &bytes))
        }
    }

    /// Sends one request and returns the status and body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        tokio::time::timeout(self.timeout, self.send(method, path, body, accept))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &str,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|reason| ClientError::Connect {
                path: self.socket.clone(),
                reason,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "tokend")
            .header(hyper::header::ACCEPT, accept);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }
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
        error: "http".into(),
        message: format!(
            "tokend answered {status}: {}",
            String::from_utf8_lossy(bytes).trim()
        ),
    });
    ClientError::Api { status, body }
}

/// Percent-encodes a credential name for use in a URL path.
pub fn path_segment(name: &str) -> String {
    url::form_urlencoded::byte_serialize(name.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
